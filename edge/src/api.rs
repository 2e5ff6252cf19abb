//! The API, passed to the origin and never cached.

use cascade_serve::{set_cache_status, CacheOutcome, Request, Response};
use http::StatusCode;

use crate::pipeline::EdgePipeline;
use crate::CACHE_NAME;

impl EdgePipeline {
    /// `/api/…`: passed to the origin, never cached.
    pub(crate) async fn api(&self, req: &Request) -> Response {
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = Vec::new();
        for name in ["content-type", "authorization", "accept"] {
            if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                headers.push((name, v));
            }
        }
        // The origin judges the viewer (geo) by this; it trusts the edges.
        let forwarded_for = self
            .geofence
            .client_ip(req)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        if !forwarded_for.is_empty() {
            headers.push(("x-forwarded-for", forwarded_for.as_str()));
        }
        let body = (!req.body.is_empty()).then(|| req.body.clone());
        let mut r = match self
            .origin
            .send(req.method.clone(), pq, &headers, body, &req.request_id)
            .await
        {
            Ok(up) => {
                let mut r = Response {
                    status: up.status,
                    headers: http::HeaderMap::new(),
                    body: up.body,
                    stream: None,
                };
                for name in [
                    "content-type",
                    "cache-control",
                    "location",
                    "retry-after",
                    "x-content-type-options",
                    "referrer-policy",
                    "www-authenticate",
                ] {
                    if let Some(v) = up.headers.get(name) {
                        r.headers.insert(name, v.clone());
                    }
                }
                r
            }
            Err(e) => {
                tracing::warn!(request_id = %req.request_id, error = %e, "origin unreachable for API");
                Response::error(
                    StatusCode::BAD_GATEWAY,
                    "origin_unreachable",
                    "the origin did not answer",
                )
            }
        };
        set_cache_status(
            &mut r.headers,
            None,
            &CacheOutcome::Bypass.entry(CACHE_NAME),
        );
        r
    }
}
