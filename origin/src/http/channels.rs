//! `/api/v1/admin/channels`: live channels for operators (admin credential);
//! `/api/v1/live`: the channels viewers see, and playing one.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;

use crate::http::error::{ErrorBody, JsonBody};
use crate::http::extract::require_admin;
use crate::http::extract::{ClientIp, Viewer};
use crate::http::no_store;
use crate::service::channels::{self, Channel, ChannelWithKey, Channels, LiveChannels, NewChannel};
use crate::service::playback::{self, PlaybackAnswer, PlaybackRequest};
use crate::service::state::State;
use crate::storage::Error;

/// Make a live channel and its first stream key (shown only here).
#[utoipa::path(post, path = "/api/v1/admin/channels", tag = "live", request_body = NewChannel,
    security(("admin" = [])),
    responses((status = 201, body = ChannelWithKey),
              (status = 400, description = "bad_name, bad_country, bad_dvr, bad_schedule, bad_title", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, description = "name_taken", body = ErrorBody)))]
pub(crate) async fn create(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewChannel>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    let made = channels::create(&state, new).await?;
    Ok(no_store((StatusCode::CREATED, Json(made))))
}

/// Every live channel (never their keys).
#[utoipa::path(get, path = "/api/v1/admin/channels", tag = "live", security(("admin" = [])),
    responses((status = 200, body = Channels), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store(Json(channels::list(&state).await?)))
}

/// One channel's status.
#[utoipa::path(get, path = "/api/v1/admin/channels/{name}", tag = "live", security(("admin" = [])),
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = Channel), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store(Json(channels::get(&state, &name).await?)))
}

/// A new stream key; the old one is refused from now on.
#[utoipa::path(post, path = "/api/v1/admin/channels/{name}/rotate-key", tag = "live",
    security(("admin" = [])), params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = ChannelWithKey), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn rotate_key(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store(Json(channels::rotate_key(&state, &name).await?)))
}

/// Stop a channel: its key is refused until rotated.
#[utoipa::path(post, path = "/api/v1/admin/channels/{name}/stop", tag = "live",
    security(("admin" = [])), params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = Channel), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn stop(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store(Json(channels::stop(&state, &name).await?)))
}

/// The live channels viewers may watch: the "Live now" rail.
#[utoipa::path(get, path = "/api/v1/live", tag = "catalog",
    responses((status = 200, body = LiveChannels)))]
pub(crate) async fn live_list(AxState(state): AxState<Arc<State>>) -> Result<Response, Error> {
    Ok(no_store(Json(channels::public_list(&state).await?)))
}

/// Start watching a live channel: the same checks as a title (premium,
/// countries, the stream limit); URLs signed for `/live/{name}/`.
#[utoipa::path(post, path = "/api/v1/live/{name}/playback", tag = "playback",
    security(("bearer" = [])), params(("name" = String, Path, description = "channel name")),
    request_body = PlaybackRequest,
    responses((status = 200, body = PlaybackAnswer), (status = 401, body = ErrorBody),
              (status = 403, description = "premium_required", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 429, description = "too_many_streams", body = ErrorBody),
              (status = 451, description = "geo_blocked", body = ErrorBody)))]
pub(crate) async fn live_playback(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
    ClientIp(ip): ClientIp,
    viewer: Viewer,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req: PlaybackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PlaybackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request("bad_json", format!("the body is not valid: {e}")))?
    };
    let answer = playback::start_live(&state, &name, ip, &viewer.user, req).await?;
    Ok(no_store(Json(answer)))
}

/// A break's length, or none to end the one running.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct NewBreak {
    /// Seconds (1 to 3600); absent: the break running ends with the next
    /// segment.
    duration_secs: Option<f64>,
}

/// Call an ad break on a live channel now (it starts with the next
/// segment), or end the one running (`cascade live break NAME --secs 30`,
/// `--end`).
#[utoipa::path(post, path = "/api/v1/admin/channels/{name}/breaks", tag = "live",
    params(("name" = String, Path, description = "channel name")), request_body = NewBreak,
    security(("admin" = [])),
    responses((status = 201, body = crate::service::live_breaks::Break),
              (status = 204, description = "the running break ends (or there was none)"),
              (status = 400, description = "bad_duration", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "not_live", body = ErrorBody)))]
pub(crate) async fn ad_break(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<NewBreak>,
) -> Result<Response, Error> {
    use axum::response::IntoResponse;
    require_admin(&state, &headers)?;
    match crate::service::live_breaks::operator_break(&state, &name, b.duration_secs).await? {
        Some(made) => Ok(no_store((StatusCode::CREATED, Json(made)))),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
