//! Advertising: the built-in ad decision service's VAST endpoint and
//! inventory, titles' breaks, creatives, the report, and the edges'
//! session plans and ad segment fetches.

use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::http::error::{ErrorBody, JsonBody};
use crate::http::extract::{require_admin, require_fleet, stream_token};
use crate::http::no_store;
use crate::service::ads::beacons::{self, Progress};
use crate::service::ads::builtin::{self, NewAd, VastQuery};
use crate::service::ads::{self as svc, creatives};
use crate::service::state::State;
use crate::storage::Error;

/// VAST 4.2 from the built-in ad decision service for one break.
#[utoipa::path(get, path = "/api/v1/ads/vast", tag = "ads", params(VastQuery),
    responses((status = 200, description = "a VAST document (empty when no ad matches)", content_type = "application/xml")))]
pub(crate) async fn vast(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<VastQuery>,
) -> Result<Response, Error> {
    let doc = builtin::vast_for_query(&state, q).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/xml; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc,
    )
        .into_response())
}

/// Add an ad to the built-in inventory (admin); its creative is
/// conditioned at once.
#[utoipa::path(post, path = "/api/v1/admin/ads", tag = "ads", request_body = NewAd,
    security(("admin" = [])),
    responses((status = 201, body = crate::service::ads::InventoryAd),
              (status = 400, description = "bad_name, bad_media_url, bad_duration, bad_targeting, bad_cap, bad_weight", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, description = "name_taken", body = ErrorBody)))]
pub(crate) async fn add(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewAd>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    let ad = builtin::add(&state, new).await?;
    Ok(no_store((StatusCode::CREATED, Json(ad))))
}

/// The built-in inventory (admin).
#[utoipa::path(get, path = "/api/v1/admin/ads", tag = "ads", security(("admin" = [])),
    responses((status = 200, body = [crate::service::ads::InventoryAd]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store(Json(builtin::list(&state).await?)))
}

/// Remove an ad from the inventory by id or name (admin).
#[utoipa::path(delete, path = "/api/v1/admin/ads/{id}", tag = "ads",
    params(("id" = String, Path, description = "ad id or name")), security(("admin" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    builtin::remove(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Creatives and their conditioning (admin).
#[utoipa::path(get, path = "/api/v1/admin/ads/creatives", tag = "ads", security(("admin" = [])),
    responses((status = 200, body = [crate::service::ads::Creative]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_creatives(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store(Json(creatives::list(&state).await?)))
}

/// The report's days.
#[derive(Deserialize, IntoParams)]
pub(crate) struct ReportQuery {
    /// First day, `YYYY-MM-DD` (default: six days ago).
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (default: today).
    to: Option<String>,
}

/// Impressions and completion rate per day, creative and title (admin).
#[utoipa::path(get, path = "/api/v1/admin/ads/report", tag = "ads", params(ReportQuery),
    security(("admin" = [])),
    responses((status = 200, body = [crate::service::ads::ReportRow]),
              (status = 400, description = "bad_day, bad_range", body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn report(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    let rows = beacons::report(&state, q.from.as_deref(), q.to.as_deref()).await?;
    Ok(no_store(Json(rows)))
}

/// A title's ad breaks.
#[derive(Deserialize, ToSchema)]
pub(crate) struct TitleBreaks {
    /// Seconds into the title (0: a pre-roll; at or past the end: a post-roll).
    #[serde(default)]
    breaks: Vec<f64>,
    /// A VMAP schedule to use instead, with macros.
    #[serde(default)]
    vmap_url: String,
}

/// Set a title's ad breaks or VMAP (admin, the editors' API).
#[utoipa::path(put, path = "/api/v1/admin/assets/{id}/ads", tag = "ads",
    params(("id" = String, Path, description = "asset id")), request_body = TitleBreaks,
    security(("admin" = [])),
    responses((status = 200, description = "the breaks as stored"),
              (status = 400, description = "bad_breaks, bad_vmap_url", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_breaks(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<TitleBreaks>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    let v = svc::set_title_breaks(&state, &id, &b.breaks, &b.vmap_url).await?;
    Ok(no_store(Json(v)))
}

/// A session's ad breaks and, when its player tracks ads itself, the
/// beacons to send (the stream's heartbeat token).
#[utoipa::path(get, path = "/api/v1/streams/{id}/ads", tag = "ads",
    security(("stream" = [])), params(("id" = String, Path, description = "stream id")),
    responses((status = 200, body = crate::service::ads::ClientTracking),
              (status = 401, description = "bad_stream_token or token_expired", body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn client_tracking(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let t = svc::client_tracking(&state, &id, stream_token(&headers)).await?;
    Ok(no_store(Json(t)))
}

/// Where the viewer is, as the edge saw it.
#[derive(Deserialize)]
pub(crate) struct PlanQuery {
    #[serde(default)]
    country: String,
}

/// `GET /api/v1/fleet/ads/sessions/{stream}` (fleet credential): the
/// session's ad plan, decided on the first call.
pub(crate) async fn session_plan(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(stream): Path<String>,
    Query(q): Query<PlanQuery>,
) -> Result<Response, Error> {
    require_fleet(&state, &headers)?;
    let plan = svc::session_plan(&state, &stream, &country_code(&q.country)).await?;
    Ok(json_text(&plan))
}

/// What an edge says of a live break.
#[derive(Deserialize)]
pub(crate) struct LiveBreakQuery {
    #[serde(default)]
    country: String,
    duration_ms: u64,
}

/// `GET /api/v1/fleet/ads/sessions/{stream}/live/{event}/{break}` (fleet
/// credential): the session's ads for a live break, decided on the first
/// call.
pub(crate) async fn live_break(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path((stream, event, brk)): Path<(String, String, u32)>,
    Query(q): Query<LiveBreakQuery>,
) -> Result<Response, Error> {
    require_fleet(&state, &headers)?;
    let country = country_code(&q.country);
    let ads = svc::live_break(&state, &stream, &event, brk, q.duration_ms, &country).await?;
    Ok(json_text(&ads))
}

/// The two letters of a country an edge passed on (nothing else of it).
fn country_code(given: &str) -> String {
    given
        .chars()
        .filter(char::is_ascii_alphabetic)
        .take(2)
        .collect()
}

/// JSON already made (a stored plan or decision), never cached.
fn json_text(text: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text.to_string(),
    )
        .into_response()
}

/// `POST /api/v1/fleet/ads/progress` (fleet credential): ad segments
/// sessions' players fetched at an edge; the beacons they reach are sent.
pub(crate) async fn progress(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(p): JsonBody<Progress>,
) -> Result<Response, Error> {
    require_fleet(&state, &headers)?;
    Ok(no_store(Json(beacons::progress(&state, p).await?)))
}
