//! What every role shares without the proxy stack: config loading
//! ([`config`]), metrics and logs, request ids, credentials, heartbeats to
//! control, and the HTTP server loop of the axum roles ([`serve_router`]).
//! Origin and control depend on this crate alone; the proxy tiers get it
//! through `cascade-serve`, which adds Pingora, QUIC and the caches.

#![warn(unreachable_pub)]

pub mod config;
mod files;
mod heartbeat;
mod metrics;
mod operators;
mod server;
pub mod steering;

use std::time::{SystemTime, UNIX_EPOCH};

pub use files::{private_dir, private_file, private_sqlite};
pub use heartbeat::{
    fleet_client, spawn_heartbeat, Heartbeat, HeartbeatReply, NodeLoad, Pathway, QualityCap,
};
pub use metrics::{init_logging, ConnectionGuard, LogGuard, Metrics};
pub use operators::{
    check_networks, default_operator_networks, metrics_answer, MetricsAccess,
    DEFAULT_OPERATOR_NETWORKS,
};
pub use server::{json_errors, serve_router, HttpLimits};

/// The header that carries a request id across tiers.
pub const REQUEST_ID: &str = "x-request-id";

/// Writes an access-log line (target `access`) with the given fields: at
/// info, or at debug for machine polling (health checks, scrapes, fleet
/// heartbeats), whose lines every few seconds would drown the console.
/// The first argument is the request's path.
#[macro_export]
macro_rules! access_log {
    ($path:expr, $($field:tt)*) => {
        if $crate::is_routine($path) {
            ::tracing::debug!(target: "access", $($field)*)
        } else {
            ::tracing::info!(target: "access", $($field)*)
        }
    };
}

/// Whether a path is machine polling (health checks, metric scrapes, fleet
/// heartbeats and key refreshes), whose access-log lines are kept at debug.
pub fn is_routine(path: &str) -> bool {
    matches!(
        path,
        "/healthz"
            | "/metrics"
            | "/api/v1/fleet/heartbeat"
            | "/api/v1/fleet/partners"
            | "/api/v1/fleet/revocations"
            | "/api/v1/fleet/reactions"
    )
}

/// Whether a caller's request id may be reused: short and plain.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether an `Authorization: Bearer …` value carries the configured
/// credential, compared in constant time. An empty credential matches nothing.
pub fn bearer_matches(authorization: Option<&str>, configured: &str) -> bool {
    let presented = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if !configured.is_empty() => {
            use subtle::ConstantTimeEq;
            p.as_bytes().ct_eq(configured.as_bytes()).into()
        }
        _ => false,
    }
}

/// The token of `Authorization: Bearer <token>`: trimmed, not empty, at
/// most 4096 bytes (longer is no token of ours).
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 4096)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cres"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
        assert!(!bearer_matches(Some("Bearer "), ""));
    }

    #[test]
    fn polling_is_routine_and_viewers_are_not() {
        for p in ["/healthz", "/metrics", "/api/v1/fleet/heartbeat"] {
            assert!(is_routine(p), "{p}");
        }
        for p in [
            "/vod/a/master.m3u8",
            "/api/v1/playback/a",
            "/healthz/x",
            "/",
        ] {
            assert!(!is_routine(p), "{p}");
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id("abc-123"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"a".repeat(65)));
    }
}
