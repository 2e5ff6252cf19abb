//! The HTTP layer: the router, extractors, handlers per area, mezzanine
//! serving, the web page and the OpenAPI document, and the mapping of the
//! one error type to statuses and JSON bodies. Nothing below names it.

pub(crate) mod accounts;
pub(crate) mod ads;
pub(crate) mod assets;
pub(crate) mod billing;
pub(crate) mod catalog;
pub(crate) mod channels;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod interactive;
pub(crate) mod keys;
pub(crate) mod live;
pub(crate) mod mezzanine;
pub(crate) mod openapi;
pub(crate) mod playback;
pub(crate) mod sidecars;
pub(crate) mod uploads;
pub(crate) mod web;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State as AxState};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::Router;

use crate::http::error::Plain;
use crate::service::catalog::MAX_ARTWORK_BYTES;
use crate::service::state::State;
use crate::storage::{ids, Error};

/// Largest JSON request body (the payment webhook's events are the biggest).
const MAX_JSON_BODY: usize = 256 << 10;

/// An answer no cache may keep: one viewer's, or an operator's.
pub(crate) fn no_store<T: axum::response::IntoResponse>(body: T) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// Builds the router; tests call it in-process.
pub fn app(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/api/v1/uploads",
            post(uploads::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/uploads/sidecars",
            post(sidecars::upload_sidecar).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/jobs/{id}", get(assets::job))
        .route("/api/v1/assets", get(assets::list_assets))
        .route("/api/v1/assets/{id}", get(assets::asset))
        .route("/api/v1/assets/{id}/geo", put(assets::set_geo))
        .route("/api/v1/auth/signup", post(accounts::signup))
        .route("/api/v1/auth/verify", post(accounts::verify))
        .route("/api/v1/auth/login", post(accounts::login))
        .route("/api/v1/auth/refresh", post(accounts::refresh))
        .route("/api/v1/auth/logout", post(accounts::logout))
        .route("/api/v1/me", get(accounts::me))
        .route(
            "/api/v1/profiles",
            get(accounts::list_profiles).post(accounts::create_profile),
        )
        .route("/api/v1/profiles/{id}", delete(accounts::delete_profile))
        .route("/api/v1/titles", get(catalog::list))
        .route("/api/v1/titles/{id}", get(catalog::get_title))
        .route("/api/v1/titles/{id}/artwork", get(catalog::artwork))
        .route("/api/v1/browse", get(catalog::browse))
        .route("/api/v1/admin/titles", post(catalog::create))
        .route(
            "/api/v1/admin/titles/{id}",
            patch(catalog::update).delete(catalog::delete),
        )
        .route(
            "/api/v1/admin/titles/{id}/artwork",
            put(catalog::put_artwork).layer(DefaultBodyLimit::max(MAX_ARTWORK_BYTES)),
        )
        .route(
            "/api/v1/admin/channels",
            post(channels::create).get(channels::list),
        )
        .route("/api/v1/admin/channels/{name}", get(channels::get))
        .route("/api/v1/live", get(channels::live_list))
        .route(
            "/api/v1/live/{name}/playback",
            post(channels::live_playback),
        )
        .route(
            "/api/v1/admin/channels/{name}/rotate-key",
            post(channels::rotate_key),
        )
        .route("/api/v1/admin/channels/{name}/stop", post(channels::stop))
        .route(
            "/api/v1/admin/channels/{name}/breaks",
            post(channels::ad_break),
        )
        .route(
            "/api/v1/live/{name}/comments",
            get(interactive::live_comments).post(interactive::post_live_comment),
        )
        .route(
            "/api/v1/vod/{asset}/comments",
            get(interactive::vod_comments).post(interactive::post_vod_comment),
        )
        .route("/api/v1/comments/{id}", delete(interactive::delete_comment))
        .route("/api/v1/comments/{id}/report", post(interactive::report))
        .route("/api/v1/admin/comments/reports", get(interactive::reports))
        .route("/api/v1/admin/mutes", post(interactive::mute))
        .route("/api/v1/admin/mutes/{email}", delete(interactive::unmute))
        .route(
            "/api/v1/admin/moderators/{email}",
            put(interactive::add_moderator).delete(interactive::remove_moderator),
        )
        .route("/api/v1/fleet/reactions", post(interactive::edge_reactions))
        .route(
            "/api/v1/live/{name}/reactions",
            get(interactive::live_totals),
        )
        .route(
            "/api/v1/vod/{asset}/reactions",
            get(interactive::vod_totals),
        )
        .route("/api/v1/live/{name}/polls", get(interactive::live_polls))
        .route("/api/v1/polls/{id}/vote", post(interactive::vote))
        .route("/api/v1/admin/polls", post(interactive::create_poll))
        .route(
            "/api/v1/admin/polls/{id}/close",
            post(interactive::close_poll),
        )
        .route("/api/v1/admin/flashes", post(interactive::create_flash))
        .route("/api/v1/admin/flashes/{id}", delete(interactive::end_flash))
        .route("/api/v1/flashes", get(interactive::flashes))
        .route("/api/v1/ads/vast", get(ads::vast))
        .route("/api/v1/admin/ads", post(ads::add).get(ads::list))
        .route("/api/v1/admin/ads/creatives", get(ads::list_creatives))
        .route("/api/v1/admin/ads/report", get(ads::report))
        .route("/api/v1/admin/ads/{id}", delete(ads::remove))
        .route("/api/v1/admin/assets/{id}/ads", put(ads::set_breaks))
        .route(
            "/api/v1/fleet/ads/sessions/{stream}",
            get(ads::session_plan),
        )
        .route(
            "/api/v1/fleet/ads/sessions/{stream}/live/{event}/{brk}",
            get(ads::live_break),
        )
        .route("/api/v1/fleet/ads/progress", post(ads::progress))
        .route("/api/v1/streams/{id}/ads", get(ads::client_tracking))
        .route("/api/v1/plans", get(billing::plans))
        .route("/api/v1/billing/webhook", post(billing::webhook))
        .route("/api/v1/playback/{id}", post(playback::playback))
        .route("/api/v1/streams/{id}/heartbeat", post(playback::heartbeat))
        .route("/api/v1/streams/{id}/stop", post(playback::stop))
        .route("/api/v1/history", get(playback::history))
        .route("/api/v1/fleet/revocations", get(playback::revocations))
        .route("/api/v1/fleet/protection/{asset}", get(keys::protection))
        .route(
            "/api/v1/fleet/protection/live/{channel}",
            get(keys::live_protection),
        )
        .route("/api/v1/fleet/license", post(keys::license))
        .route(
            "/api/v1/admin/assets/{id}/protection",
            put(keys::set_protection),
        )
        .route(
            "/api/v1/admin/assets/{id}/keys",
            get(keys::export_keys).put(keys::import_keys),
        )
        .route(
            "/api/v1/admin/watermarks/{mark}",
            get(keys::watermark_holders),
        )
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/mezz/{asset}/{file}", get(mezzanine::mezzanine))
        .route("/live-mezz/{channel}/manifest.json", get(live::manifest))
        .route("/live-mezz/{channel}/meta.json", get(live::meta))
        .route("/live-mezz/{channel}/{track}/{file}", get(live::media))
        .route("/", get(web::index))
        .route("/static/{file}", get(web::asset_file))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { Plain(Error::not_found("path")).into_response() })
        // JSON bodies are small; uploads and artwork set their own limits.
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn(cascade_common::json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Request id in and out, access log, request metrics.
async fn observe(AxState(state): AxState<Arc<State>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(cascade_common::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| cascade_common::valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(ids::new_id);
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(cascade_common::REQUEST_ID, v);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(cascade_common::REQUEST_ID, v);
    }
    // Every answer: no content sniffing, no referrer (media URLs carry
    // tokens).
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    state
        .http_requests
        .with_label_values(&[&status.to_string()])
        .inc();
    cascade_common::access_log!(
        &path,
        role = "cascade-origin",
        request_id = %id,
        method = %method,
        path,
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
    );
    resp
}

async fn metrics(AxState(state): AxState<Arc<State>>, req: Request) -> Response {
    let access =
        cascade_common::MetricsAccess::new(&state.cfg.metrics_networks, &[&state.cfg.admin_token])
            .unwrap_or_default();
    cascade_common::metrics_answer(&access, &state.metrics, &req)
}
