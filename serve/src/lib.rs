//! What the proxy tiers share: the HTTP listener (Pingora's HTTP/1.1 and
//! HTTP/2 sessions driven by our own accept loop), the request and response
//! types the pipeline works on, the upstream client, `Cache-Status`,
//! request ids, metrics and logs.
//!
//! A listener turns a request into a [`Request`], drives the role's
//! [`Pipeline`] (through the erased [`Handler`]) and writes the
//! [`Response`] back with the one writer every protocol shares; it holds no
//! policy. The
//! TCP listener (HTTP/1.1 and HTTP/2, in clear or over TLS) and the HTTP/3
//! listener (quinn and h3) share everything around the handler.

#![warn(unreachable_pub)]

mod body;
mod coalesce;
pub mod fleet;
mod heartbeat;
mod listener;
mod pipeline;
pub mod priority;
mod proxy;
mod quic;
mod ranges;
mod tier;
pub mod tls;
mod upstream;
mod writer;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

pub use body::{shared_body, BodyReader, BodyWriter, SharedBody};
pub use coalesce::{Flights, Hold, Role};
// What every role shares, re-exported so that the proxy tiers have one
// place to import from.
pub use cascade_common::{
    access_log, bearer_matches, config, init_logging, is_routine, spawn_heartbeat, unix_now,
    unix_now_ms, valid_request_id, Heartbeat, Metrics, MetricsAccess, REQUEST_ID,
};
pub use heartbeat::{spawn_node_heartbeat, FleetState, NodeIdentity};
pub use listener::{cache_outcome, serve, ListenerConfig, ServerHandle};
pub use pipeline::{run, Delivered, Exchange, Handler, PhaseLog, Pipeline, Step};
pub use proxy::{cache_key, cached_response, mark_collapsed, to_object, CachingFetcher};
pub use quic::{serve_h3, H3Config, H3Handle};
pub use ranges::{apply_range, parse_range, ByteSpan};
pub use tier::CacheTier;
pub use upstream::{StreamingResponse, Upstream, UpstreamError, UpstreamResponse};

/// A request as the pipeline sees it, whatever the protocol.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path and query, as received.
    pub uri: Uri,
    /// Request headers.
    pub headers: HeaderMap,
    /// The body, already read within the listener's limit.
    pub body: Bytes,
    /// The peer's address.
    pub client: Option<SocketAddr>,
    /// A request id: the caller's when it sent a well-formed one, else new.
    pub request_id: String,
    /// `http/1.1`, `h2` or `h3`.
    pub protocol: &'static str,
    /// Whether it came over TLS (HTTPS on TCP, or QUIC).
    pub secure: bool,
}

/// A response as the pipeline makes it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers; the listener adds `content-length` and `x-request-id`.
    pub headers: HeaderMap,
    /// The body, when it is whole.
    pub body: Bytes,
    /// Or a body still arriving from upstream, shared with every request
    /// that joined the same fetch; `body` is then empty.
    pub stream: Option<SharedBody>,
}

impl Response {
    /// A response with a body and content type.
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        Response {
            status,
            headers,
            body: body.into(),
            stream: None,
        }
    }

    /// The whole body, waiting for a streamed one to arrive.
    pub async fn into_whole(mut self) -> Result<Response, String> {
        if let Some(s) = self.stream.take() {
            self.body = s.collect().await?;
        }
        Ok(self)
    }

    /// A small JSON error body: `{"error": code, "message": text}`.
    pub fn error(status: StatusCode, code: &str, message: &str) -> Self {
        let mut body = serde_json::json!({ "error": code, "message": message }).to_string();
        body.push('\n');
        Response::new(status, "application/json", body)
    }

    /// Sets a header, ignoring values that are not valid header text.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(HeaderName::from_static(name), v);
        }
        self
    }
}

/// What a cache did with a request, for `Cache-Status` (RFC 9211).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from cache; the detail names the tier.
    Hit(&'static str),
    /// Fetched; `stored` says whether the response was cached.
    Miss {
        /// Whether the fetched response went into the cache.
        stored: bool,
    },
    /// Stale content served because the upstream failed.
    StaleOnError,
    /// Stale content served while a refresh runs in the background.
    StaleWhileRevalidate,
    /// Not cacheable by rule (API calls, errors).
    Bypass,
    /// A stale stored answer the upstream confirmed (304): served from
    /// cache with a new lifetime.
    Revalidated {
        /// Whether the refreshed answer went back into the cache.
        stored: bool,
    },
}

impl CacheOutcome {
    /// This cache's `Cache-Status` entry.
    pub fn entry(&self, cache: &str) -> String {
        match self {
            CacheOutcome::Hit(detail) => format!("{cache}; hit; detail={detail}"),
            CacheOutcome::Miss { stored: true } => format!("{cache}; fwd=miss; stored"),
            CacheOutcome::Miss { stored: false } => format!("{cache}; fwd=miss"),
            CacheOutcome::StaleOnError => format!("{cache}; fwd=stale; detail=stale-if-error"),
            CacheOutcome::StaleWhileRevalidate => {
                format!("{cache}; hit; detail=stale-while-revalidate")
            }
            CacheOutcome::Bypass => format!("{cache}; fwd=bypass"),
            CacheOutcome::Revalidated { stored } => format!(
                "{cache}; fwd=stale; fwd-status=304{}",
                if *stored { "; stored" } else { "" }
            ),
        }
    }

    /// The label used in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CacheOutcome::Hit(_) => "hit",
            CacheOutcome::Miss { .. } => "miss",
            CacheOutcome::StaleOnError | CacheOutcome::StaleWhileRevalidate => "stale",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::Revalidated { .. } => "revalidated",
        }
    }
}

/// Sets `Cache-Status` to the upstream's entries (if any) followed by ours.
pub fn set_cache_status(headers: &mut HeaderMap, upstream: Option<&str>, ours: &str) {
    let value = match upstream {
        Some(up) if !up.is_empty() => format!("{up}, {ours}"),
        _ => ours.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static("cache-status"), v);
    }
}

/// Adds the CORS headers that let players on other sites read media.
pub fn add_cors(headers: &mut HeaderMap) {
    headers.insert(
        HeaderName::from_static("access-control-allow-origin"),
        HeaderValue::from_static("*"),
    );
    headers.insert(
        HeaderName::from_static("access-control-expose-headers"),
        HeaderValue::from_static("cache-status, cmsd-dynamic, cmsd-static, content-length, content-range, retry-after, x-request-id"),
    );
}

/// The answer to a CORS preflight for media.
pub fn cors_preflight() -> Response {
    let mut r = Response::new(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
    add_cors(&mut r.headers);
    r.headers.insert(
        HeaderName::from_static("access-control-allow-methods"),
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    r.headers.insert(
        HeaderName::from_static("access-control-allow-headers"),
        HeaderValue::from_static("range, cmcd-request, cmcd-object, cmcd-session, cmcd-status"),
    );
    r.headers.insert(
        HeaderName::from_static("access-control-max-age"),
        HeaderValue::from_static("86400"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_entries() {
        assert_eq!(
            CacheOutcome::Hit("memory").entry("cascade-edge"),
            "cascade-edge; hit; detail=memory"
        );
        let mut h = HeaderMap::new();
        set_cache_status(
            &mut h,
            Some("cascade-shield; fwd=miss; stored"),
            "cascade-edge; fwd=miss; stored",
        );
        assert_eq!(
            h["cache-status"],
            "cascade-shield; fwd=miss; stored, cascade-edge; fwd=miss; stored"
        );
    }

    #[test]
    fn error_bodies_escape() {
        // Escaped by serde_json now: what matters is that any message
        // comes back out of a JSON parser unchanged.
        let message = "no \"x\"\n\u{1}\\";
        let r = Response::error(StatusCode::NOT_FOUND, "not_found", message);
        assert_eq!(
            &r.body[..],
            b"{\"error\":\"not_found\",\"message\":\"no \\\"x\\\"\\n\\u0001\\\\\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_slice(&r.body).expect("valid JSON");
        assert_eq!(parsed["message"], message);
    }
}
