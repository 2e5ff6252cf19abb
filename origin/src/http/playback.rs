//! `/api/v1/playback`, stream heartbeats and stops, watch history, and the
//! fleet's list of ended playback sessions.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::http::error::{ErrorBody, JsonBody};
use crate::http::extract::{require_fleet, stream_token, ClientIp, Viewer};
use crate::http::no_store;
use crate::service::history::{self, History};
use crate::service::playback::{self, Beat, PlaybackAnswer, PlaybackRequest};
use crate::service::state::State;
use crate::storage::Error;

/// `GET /api/v1/history` parameters.
#[derive(Deserialize, IntoParams)]
pub(crate) struct HistoryQuery {
    /// The profile.
    profile: String,
}

/// The query of `GET /api/v1/fleet/revocations`.
#[derive(Debug, Deserialize)]
pub(crate) struct RevocationsQuery {
    /// The last `next` seen; 0 (or absent) for every current revocation.
    #[serde(default)]
    after: i64,
}

/// Start watching: checks the login, the title's availability window, the
/// viewer's country, the plan (premium titles need premium) and the plan's
/// concurrent-stream limit; answers signed edge URLs, the resume position,
/// and a stream to report heartbeats on.
#[utoipa::path(post, path = "/api/v1/playback/{asset}", tag = "playback",
    security(("bearer" = [])), params(("asset" = String, Path, description = "asset id")),
    request_body = PlaybackRequest,
    responses((status = 200, body = PlaybackAnswer),
              (status = 401, description = "unauthorized or token_expired", body = ErrorBody),
              (status = 403, description = "not_available (outside its window) or premium_required", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "not_ready", body = ErrorBody),
              (status = 429, description = "too_many_streams: the plan's limit is reached; lists the active streams", body = ErrorBody),
              (status = 451, description = "geo_blocked", body = ErrorBody)))]
pub(crate) async fn playback(
    AxState(state): AxState<Arc<State>>,
    Path(asset_id): Path<String>,
    ClientIp(ip): ClientIp,
    viewer: Viewer,
    body: Bytes,
) -> Result<Response, Error> {
    // The body is optional: an empty one means the first profile and a new device.
    let req: PlaybackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PlaybackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request("bad_json", format!("the body is not valid: {e}")))?
    };
    let answer = playback::start(&state, asset_id, ip, &viewer.user, req).await?;
    Ok(no_store(Json(answer)))
}

/// Report the position of a stream; keeps its slot.
#[utoipa::path(post, path = "/api/v1/streams/{id}/heartbeat", tag = "playback",
    security(("stream" = [])), params(("id" = String, Path, description = "stream id")),
    request_body = Beat,
    responses((status = 204), (status = 400, body = ErrorBody),
              (status = 401, description = "bad_stream_token or token_expired", body = ErrorBody),
              (status = 503, description = "busy: retry", body = ErrorBody)))]
pub(crate) async fn heartbeat(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(beat): JsonBody<Beat>,
) -> Result<StatusCode, Error> {
    playback::heartbeat(&state, &id, stream_token(&headers), &beat).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stop a stream: records the position and frees the slot at once.
#[utoipa::path(post, path = "/api/v1/streams/{id}/stop", tag = "playback",
    security(("stream" = [])), params(("id" = String, Path, description = "stream id")),
    request_body = Beat,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn stop(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(beat): JsonBody<Beat>,
) -> Result<StatusCode, Error> {
    playback::stop(&state, id, stream_token(&headers), &beat).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A profile's watch history, newest first.
#[utoipa::path(get, path = "/api/v1/history", tag = "playback", params(HistoryQuery),
    security(("bearer" = [])),
    responses((status = 200, body = History), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn history(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, Error> {
    let items = history::of_profile(&state, &viewer.user, &q.profile).await?;
    Ok(no_store(Json(items)))
}

/// `GET /api/v1/fleet/revocations?after=N` (fleet credential): the ended
/// playback sessions since `N`, oldest first, with the `next` to ask from.
pub(crate) async fn revocations(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Query(q): Query<RevocationsQuery>,
) -> Result<Response, Error> {
    require_fleet(&state, &headers)?;
    let list = playback::revocations(&state, q.after).await?;
    Ok(no_store(Json(list)))
}
