//! Who may read a role's `/metrics`: callers from the operators' networks
//! (loopback by default, where a local Prometheus or agent scrapes), or a
//! caller with the role's credential. Metrics name partners' key ids,
//! internal addresses and traffic; they are not for viewers.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks operators scrape from when none are configured.
pub const DEFAULT_OPERATOR_NETWORKS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// The default `metrics_networks` of every role's config.
pub fn default_operator_networks() -> Vec<String> {
    DEFAULT_OPERATOR_NETWORKS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Who may read `/metrics`.
#[derive(Debug, Clone)]
pub struct MetricsAccess {
    networks: Vec<IpNet>,
    credentials: Vec<String>,
}

impl Default for MetricsAccess {
    /// Loopback only, no credential.
    fn default() -> Self {
        MetricsAccess::new(&default_operator_networks(), &[]).unwrap_or(MetricsAccess {
            networks: Vec::new(),
            credentials: Vec::new(),
        })
    }
}

impl MetricsAccess {
    /// Callers from `networks` (CIDRs), or with a bearer credential among
    /// `credentials` (empty ones are ignored). A bad CIDR is an error that
    /// names it.
    pub fn new(networks: &[String], credentials: &[&str]) -> Result<MetricsAccess, String> {
        let networks = networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .map_err(|_| format!("{n:?} is not a CIDR like 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MetricsAccess {
            networks,
            credentials: credentials
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| c.to_string())
                .collect(),
        })
    }

    /// Whether a caller at `peer` with this `Authorization` may read.
    pub fn allows(&self, peer: Option<IpAddr>, authorization: Option<&str>) -> bool {
        let from_operators = peer.is_some_and(|ip| {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            self.networks.iter().any(|n| n.contains(&ip))
        });
        from_operators
            || self
                .credentials
                .iter()
                .any(|c| crate::bearer_matches(authorization, c))
    }
}

/// `GET /metrics` of an axum role: the registry's text for a caller
/// `access` allows (by its address, or its credential), else a JSON 403.
pub fn metrics_answer(
    access: &MetricsAccess,
    metrics: &crate::Metrics,
    req: &axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !access.allows(peer, authorization) {
        let body = serde_json::json!({
            "error": "forbidden",
            "message": "metrics are for operators: scrape from an operator network or with the credential",
        });
        return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response()
}

/// Checks a `metrics_networks` config key.
pub fn check_networks(key: &str, networks: &[String], errors: &mut Vec<String>) {
    if let Err(e) = MetricsAccess::new(networks, &[]) {
        errors.push(format!("{key}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_or_a_credential() {
        let access =
            MetricsAccess::new(&default_operator_networks(), &["s3cret", ""]).expect("valid");
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert!(access.allows(ip("127.0.0.1"), None));
        assert!(access.allows(ip("::1"), None));
        assert!(access.allows(ip("::ffff:127.0.0.1"), None));
        assert!(!access.allows(ip("192.0.2.7"), None));
        assert!(!access.allows(None, None));
        assert!(access.allows(ip("192.0.2.7"), Some("Bearer s3cret")));
        assert!(!access.allows(ip("192.0.2.7"), Some("Bearer ")));
        assert!(!access.allows(ip("192.0.2.7"), Some("Bearer wrong")));
        assert!(MetricsAccess::new(&["10.0.0.0/33".into()], &[]).is_err());
    }
}
