//! The endpoints control calls on edges and shields, under `/fleet/`, with
//! the fleet credential: purge (both roles) and pre-warm (edges).

use cascade_cache::{PurgeRule, TieredCache};
use http::StatusCode;
use serde::Deserialize;

use crate::{bearer_matches, Request, Response};

/// Most rules in one purge.
pub const MAX_PURGE_RULES: usize = 1000;
/// Longest rule.
pub const MAX_RULE_BYTES: usize = 2048;

/// A purge as control sends it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Exact URL paths.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Path prefixes.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Surrogate-key tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The path of a URL or path: scheme, host and query dropped.
pub fn url_path(u: &str) -> &str {
    let rest = match u.find("://") {
        Some(i) => {
            let after = &u[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => u,
    };
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// Whether a surrogate-key tag is well formed.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 256
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl PurgeRequest {
    /// The rules, checked: all errors at once.
    pub fn rules(&self) -> Result<Vec<PurgeRule>, Vec<String>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let total = self.urls.len() + self.prefixes.len() + self.tags.len();
        if total == 0 {
            errors.push("give at least one of urls, prefixes, tags".to_string());
        }
        if total > MAX_PURGE_RULES {
            errors.push(format!("at most {MAX_PURGE_RULES} rules in one purge"));
            return Err(errors);
        }
        for (field, list) in [("urls", &self.urls), ("prefixes", &self.prefixes)] {
            for (i, u) in list.iter().enumerate() {
                let p = url_path(u);
                if u.len() > MAX_RULE_BYTES || !p.starts_with('/') {
                    errors.push(format!(
                        "{field}[{i}]: a path starting with / (or a URL), under {MAX_RULE_BYTES} bytes"
                    ));
                } else if field == "urls" {
                    rules.push(PurgeRule::Url(p.to_string()));
                } else {
                    rules.push(PurgeRule::Prefix(p.to_string()));
                }
            }
        }
        for (i, t) in self.tags.iter().enumerate() {
            if valid_tag(t) {
                rules.push(PurgeRule::Tag(t.clone()));
            } else {
                errors.push(format!("tags[{i}]: letters, digits and . _ : -"));
            }
        }
        if errors.is_empty() {
            Ok(rules)
        } else {
            Err(errors)
        }
    }
}

/// Whether the request carries the fleet credential (none configured: no).
pub fn fleet_authorized(req: &Request, fleet_token: &str) -> bool {
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    bearer_matches(auth, fleet_token)
}

/// The answer to a request without the fleet credential.
pub fn fleet_unauthorized() -> Response {
    Response::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "fleet credential required",
    )
}

/// `POST /fleet/purge`: reads and checks the rules, applies them to
/// `cache`, and answers with what was applied. The rules are returned too,
/// so the role can drop what else it keeps (parsed manifests).
pub async fn handle_purge(
    req: &Request,
    fleet_token: &str,
    node: &str,
    cache: &TieredCache,
) -> (Response, Vec<PurgeRule>) {
    if !fleet_authorized(req, fleet_token) {
        return (fleet_unauthorized(), Vec::new());
    }
    if req.method != http::Method::POST {
        return (
            Response::error(StatusCode::METHOD_NOT_ALLOWED, "method", "POST only"),
            Vec::new(),
        );
    }
    let parsed: PurgeRequest = match serde_json::from_slice(&req.body) {
        Ok(p) => p,
        Err(e) => {
            return (
                Response::error(StatusCode::BAD_REQUEST, "bad_purge", &e.to_string()),
                Vec::new(),
            )
        }
    };
    let rules = match parsed.rules() {
        Ok(r) => r,
        Err(errors) => {
            return (
                Response::error(StatusCode::BAD_REQUEST, "bad_purge", &errors.join("; ")),
                Vec::new(),
            )
        }
    };
    match cache.purge(&rules).await {
        Ok(n) => {
            tracing::info!(node, rules = n, request_id = %req.request_id, "purged");
            let body = serde_json::json!({ "node": node, "rules": n });
            (
                Response::new(StatusCode::OK, "application/json", format!("{body}\n")),
                rules,
            )
        }
        Err(e) => {
            // The bans are in force in RAM; only saving them failed.
            tracing::error!(error = %e, "saving purge bans");
            (
                Response::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "purge_not_saved",
                    "the purge applies now but could not be saved for a restart",
                ),
                rules,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_paths_and_bad_rules_are_named() {
        assert_eq!(
            url_path("http://e:8080/vod/a/m.m3u8?__token__=x"),
            "/vod/a/m.m3u8"
        );
        assert_eq!(url_path("https://e"), "/");
        assert_eq!(url_path("/vod/a/"), "/vod/a/");
        let r = PurgeRequest {
            urls: vec!["http://e/vod/a/1.m4s?t=1".into()],
            prefixes: vec!["vod/".into()],
            tags: vec!["asset a".into()],
        };
        let errors = r.rules().unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(PurgeRequest::default().rules().is_err());
        let ok = PurgeRequest {
            tags: vec!["asset-a".into()],
            ..PurgeRequest::default()
        };
        assert_eq!(ok.rules().unwrap(), vec![PurgeRule::Tag("asset-a".into())]);
    }
}
