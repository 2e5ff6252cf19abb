//! Control's calls to the edge, under `/fleet/` with the fleet credential
//! (not a viewer token): purge, pre-warm, and the fleet state (quality
//! caps and drain) control pushes when an operator changes it.

use cascade_packager::{Output, ProtectedOutput, Scheme, View};
use cascade_serve::fleet::{fleet_authorized, fleet_unauthorized, handle_purge};
use cascade_serve::{Request, Response};
use cascade_token::normalize_path;
use cascade_watermark::Variant;
use http::{Method, StatusCode};

use crate::media::{media_output, Media};
use crate::pipeline::EdgePipeline;

/// Most paths in one pre-warm request.
const MAX_WARM_PATHS: usize = 64;

/// A call from control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FleetCall {
    /// `POST /fleet/purge`.
    Purge,
    /// `POST /fleet/warm`.
    Warm,
    /// `POST /fleet/state`: quality caps and drain, as a heartbeat's answer.
    State,
}

impl FleetCall {
    /// The call a path names.
    pub(crate) fn from_path(path: &str) -> Option<FleetCall> {
        match path {
            "/fleet/purge" => Some(FleetCall::Purge),
            "/fleet/warm" => Some(FleetCall::Warm),
            "/fleet/state" => Some(FleetCall::State),
            _ => None,
        }
    }
}

impl EdgePipeline {
    /// `POST /fleet/purge` (fleet credential): purges the cache, and the
    /// parsed manifests and title rules kept beside it.
    pub(crate) async fn purge(&self, req: &Request) -> Response {
        let (resp, rules) =
            handle_purge(req, &self.fleet_token, &self.node, self.media.tier.cache()).await;
        if !rules.is_empty() {
            // Cheap to fetch again, and a purge may mean a title changed.
            self.media.manifests.invalidate_all();
            self.geofence.forget_titles();
            self.protection.forget();
        }
        resp
    }

    /// `POST /fleet/state` (fleet credential): control's quality caps and
    /// drain, applied at once (heartbeats carry the same, every few seconds).
    pub(crate) fn fleet_state(&self, req: &Request) -> Response {
        if !fleet_authorized(req, &self.fleet_token) {
            return fleet_unauthorized();
        }
        if req.method != Method::POST {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "method", "POST only");
        }
        match serde_json::from_slice::<cascade_common::HeartbeatReply>(&req.body) {
            Ok(state) => {
                self.governor.apply_fleet_state(state);
                Response::new(StatusCode::NO_CONTENT, "text/plain", "")
            }
            Err(e) => Response::error(StatusCode::BAD_REQUEST, "bad_state", &e.to_string()),
        }
    }

    /// `POST /fleet/warm` (fleet credential): fetches media paths into the
    /// cache through the usual pipeline (so the shields warm too), a few at
    /// a time, and says how each went.
    pub(crate) async fn warm(&self, req: &Request) -> Response {
        if !fleet_authorized(req, &self.fleet_token) {
            return fleet_unauthorized();
        }
        if req.method != Method::POST {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "method", "POST only");
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Warm {
            urls: Vec<String>,
        }
        let warm: Warm = match serde_json::from_slice(&req.body) {
            Ok(w) => w,
            Err(e) => return Response::error(StatusCode::BAD_REQUEST, "bad_warm", &e.to_string()),
        };
        if warm.urls.len() > MAX_WARM_PATHS {
            return Response::error(
                StatusCode::BAD_REQUEST,
                "bad_warm",
                &format!("at most {MAX_WARM_PATHS} paths at once"),
            );
        }
        // Pre-warm is the first thing shed as load nears capacity.
        if !self.governor.allows_optional("prewarm") {
            return Response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shedding",
                "this edge is shedding load: pre-warm is paused",
            )
            .header("retry-after", "10");
        }
        use futures::StreamExt;
        let results = futures::stream::iter(warm.urls)
            .map(|u| async move {
                let path = normalize_path(cascade_serve::fleet::url_path(&u));
                // A live channel: its playlists and init segments (what every
                // viewer asks for first when the event starts).
                if let Some((channel, Some(output))) = path.as_deref().and_then(crate::live::live_output) {
                    let Ok(_permit) = self.prewarm.acquire().await else {
                        return serde_json::json!({"url": u, "status": 503, "bytes": 0, "cache": "none"});
                    };
                    let p = path.as_deref().unwrap_or_default();
                    let b = cascade_packager::live::Blocking::default();
                    let key = crate::live::live_key(p, &output, &b);
                    let r = self.media.live_fill(&key, &channel, &output, b, &req.request_id).await;
                    let cache = r
                        .headers
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .map_or("none", cascade_serve::cache_outcome);
                    let bytes = match &r.stream {
                        Some(s) => s.expected_len().unwrap_or(0) as usize,
                        None => r.body.len(),
                    };
                    return serde_json::json!({"url": u, "status": r.status.as_u16(), "bytes": bytes, "cache": cache});
                }
                let output = path.as_deref().and_then(media_output);
                let (Some(path), Some(output)) = (path, output) else {
                    return serde_json::json!({"url": u, "status": 404, "bytes": 0, "cache": "none"});
                };
                // A manifest may be warmed as a profile or filter shows it.
                let query = u.split_once('?').map_or("", |(_, q)| q);
                let Ok(view) = View::from_query(query, &self.profiles) else {
                    return serde_json::json!({"url": u, "status": 400, "bytes": 0, "cache": "none"});
                };
                // Viewers never wait on this: pre-warm has its own few permits.
                let Ok(_permit) = self.prewarm.acquire().await else {
                    return serde_json::json!({"url": u, "status": 503, "bytes": 0, "cache": "none"});
                };
                let r = self.warm_one(&path, &output, &view, Variant::A, &req.request_id).await;
                // A watermarked title's segment: both copies, as its
                // sessions will ask for either.
                if r.status == StatusCode::OK && self.is_marked(&path, &output, &req.request_id).await {
                    let b = self.warm_one(&path, &output, &view, Variant::B, &req.request_id).await;
                    if b.status != StatusCode::OK {
                        return serde_json::json!({"url": u, "status": b.status.as_u16(), "bytes": 0, "cache": "none"});
                    }
                }
                let cache = r
                    .headers
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("none", cascade_serve::cache_outcome);
                serde_json::json!({"url": u, "status": r.status.as_u16(), "bytes": r.body.len(), "cache": cache})
            })
            .buffered(self.prewarm_concurrency)
            .collect();
        // Upstream, pre-warm waits behind viewers' live and on-demand fetches.
        let results: Vec<serde_json::Value> =
            cascade_serve::priority::with(cascade_serve::priority::Priority::Prewarm, results)
                .await;
        let body = serde_json::json!({ "node": self.node, "results": results });
        Response::new(StatusCode::OK, "application/json", format!("{body}\n"))
    }

    /// Pre-warms one output (one watermark copy of a segment).
    async fn warm_one(
        &self,
        path: &str,
        output: &Output,
        view: &View,
        variant: Variant,
        request_id: &str,
    ) -> Response {
        if let Some(r) = self
            .warm_protected(path, output, view, variant, request_id)
            .await
        {
            return r;
        }
        if variant == Variant::A {
            return self.media.get(path, output, view, request_id).await;
        }
        let key = format!("{}#wb", Media::key(path, output, view));
        self.media
            .fill(&key, path, output, view, variant, request_id)
            .await
    }

    /// Whether `output` is a segment of a watermarked track.
    async fn is_marked(&self, path: &str, output: &Output, request_id: &str) -> bool {
        let Some((track, _)) = crate::pipeline::marked_segment(output) else {
            return false;
        };
        let Some((asset, _)) = path.strip_prefix("/vod/").and_then(|p| p.split_once('/')) else {
            return false;
        };
        match self.media.manifest(asset, request_id).await {
            Ok(m) => m.track(track).is_some_and(|t| t.marked.is_some()),
            Err(_) => false,
        }
    }

    /// Pre-warms a protected title's output as its viewers ask for it:
    /// media and media playlists in `cbcs` (what its HLS and DASH list), the
    /// rest at the top level, under the protected outputs' cache keys.
    /// `None` for a title in the clear (or whose metadata says nothing).
    async fn warm_protected(
        &self,
        path: &str,
        output: &Output,
        view: &View,
        variant: Variant,
        request_id: &str,
    ) -> Option<Response> {
        let (asset, rest) = path.strip_prefix("/vod/")?.split_once('/')?;
        if !self
            .geofence
            .title_protected(asset, &self.media, request_id)
            .await
        {
            return None;
        }
        let drm = match self.protection.drm(asset, request_id).await {
            Ok(d) => d,
            Err(r) => return Some(r),
        };
        let (scheme, path) = match output {
            Output::Init(_)
            | Output::Segment(..)
            | Output::KeySegment(..)
            | Output::MediaPlaylist(_) => (Some(Scheme::Cbcs), format!("/vod/{asset}/cbcs/{rest}")),
            Output::IframePlaylist(_) => return Some(crate::media::not_found()),
            _ => (None, path.to_string()),
        };
        let mut key = Media::key(&path, output, view);
        key.push_str("#p");
        key.push_str(&crate::protection::fingerprint(&drm));
        if variant == Variant::B {
            key.push_str("#wb");
        }
        let p = ProtectedOutput {
            scheme,
            output: output.clone(),
        };
        Some(
            self.media
                .fill_protected(&key, &path, &p, drm, view, variant, request_id)
                .await,
        )
    }
}
