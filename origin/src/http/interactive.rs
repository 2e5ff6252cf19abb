//! Comments, reactions, polls and news flashes: the viewer API, the
//! moderators' and operators' API, and the edges' reaction batches.
//! Real-time delivery is the edges' (`/events/…` on their events
//! listener); these are the writes and the history.

use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cascade_bus::Scope;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::http::error::{ErrorBody, JsonBody};
use crate::http::extract::{bearer, is_admin, require_admin, require_fleet, Viewer};
use crate::http::no_store;
use crate::service::interactive::{
    self as svc, Comment, CommentPage, EdgeReactions, Flash, Flashes, NewComment, NewFlash,
    NewMute, NewPoll, NewReport, NewVote, Poll, Polls, ReportedComment, Totals,
};
use crate::service::state::State;
use crate::storage::Error;

/// A page of comments.
#[derive(Deserialize, IntoParams)]
pub(crate) struct PageQuery {
    /// The `next` of the previous page.
    before: Option<String>,
    /// 1 to 200 (default 50).
    limit: Option<i64>,
}

fn scope(kind: &str, id: &str) -> Result<Scope, Error> {
    Scope::new(kind, id)
        .ok_or_else(|| Error::not_found(if kind == "live" { "channel" } else { "asset" }))
}

async fn moderator(state: &State, headers: &HeaderMap) -> Result<String, Error> {
    svc::moderator(state, is_admin(state, headers), bearer(headers)).await
}

/// A live channel's comments, newest first.
#[utoipa::path(get, path = "/api/v1/live/{name}/comments", tag = "together",
    params(("name" = String, Path, description = "channel name"), PageQuery),
    responses((status = 200, body = CommentPage), (status = 400, description = "bad_cursor, bad_limit", body = ErrorBody)))]
pub(crate) async fn live_comments(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, Error> {
    let page =
        svc::list_comments(&state, &scope("live", &name)?, q.before.as_deref(), q.limit).await?;
    Ok(no_store(Json(page)))
}

/// An on-demand asset's comments, newest first.
#[utoipa::path(get, path = "/api/v1/vod/{asset}/comments", tag = "together",
    params(("asset" = String, Path, description = "asset id"), PageQuery),
    responses((status = 200, body = CommentPage), (status = 400, body = ErrorBody)))]
pub(crate) async fn vod_comments(
    AxState(state): AxState<Arc<State>>,
    Path(asset): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, Error> {
    let page =
        svc::list_comments(&state, &scope("vod", &asset)?, q.before.as_deref(), q.limit).await?;
    Ok(no_store(Json(page)))
}

/// Comment on a live channel (logged in). It is pushed to every viewer.
#[utoipa::path(post, path = "/api/v1/live/{name}/comments", tag = "together",
    params(("name" = String, Path, description = "channel name")),
    request_body = NewComment, security(("bearer" = [])),
    responses((status = 201, body = Comment),
              (status = 400, description = "bad_length, bad_text", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, description = "muted", body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, description = "blocked_word", body = ErrorBody),
              (status = 429, description = "too_many_comments", body = ErrorBody)))]
pub(crate) async fn post_live_comment(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
    Path(name): Path<String>,
    JsonBody(new): JsonBody<NewComment>,
) -> Result<Response, Error> {
    let c = svc::post_comment(&state, &viewer.user, &scope("live", &name)?, new).await?;
    Ok(no_store((StatusCode::CREATED, Json(c))))
}

/// Comment on an on-demand asset (logged in).
#[utoipa::path(post, path = "/api/v1/vod/{asset}/comments", tag = "together",
    params(("asset" = String, Path, description = "asset id")),
    request_body = NewComment, security(("bearer" = [])),
    responses((status = 201, body = Comment), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub(crate) async fn post_vod_comment(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
    Path(asset): Path<String>,
    JsonBody(new): JsonBody<NewComment>,
) -> Result<Response, Error> {
    let c = svc::post_comment(&state, &viewer.user, &scope("vod", &asset)?, new).await?;
    Ok(no_store((StatusCode::CREATED, Json(c))))
}

/// Delete a comment (a moderator, or the admin credential); viewers see it
/// retracted.
#[utoipa::path(delete, path = "/api/v1/comments/{id}", tag = "together",
    params(("id" = String, Path, description = "comment id")), security(("bearer" = []), ("admin" = [])),
    responses((status = 204), (status = 401, body = ErrorBody),
              (status = 403, description = "not_moderator", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_comment(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let actor = moderator(&state, &headers).await?;
    svc::delete_comment(&state, &actor, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Report a comment to the moderators (logged in; once per comment).
#[utoipa::path(post, path = "/api/v1/comments/{id}/report", tag = "together",
    params(("id" = String, Path, description = "comment id")), request_body = NewReport,
    security(("bearer" = [])),
    responses((status = 202, description = "reported"), (status = 200, description = "already reported"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn report(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
    Path(id): Path<String>,
    JsonBody(new): JsonBody<NewReport>,
) -> Result<Response, Error> {
    let fresh = svc::report(&state, &viewer.user, &id, new).await?;
    Ok(if fresh {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    }
    .into_response())
}

/// Reported comments, most reported first (moderators).
#[utoipa::path(get, path = "/api/v1/admin/comments/reports", tag = "together",
    security(("bearer" = []), ("admin" = [])),
    responses((status = 200, body = Vec<ReportedComment>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn reports(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    moderator(&state, &headers).await?;
    Ok(no_store(Json(svc::reported(&state).await?)))
}

/// Mute a viewer for some minutes (moderators).
#[utoipa::path(post, path = "/api/v1/admin/mutes", tag = "together", request_body = NewMute,
    security(("bearer" = []), ("admin" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn mute(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewMute>,
) -> Result<Response, Error> {
    let actor = moderator(&state, &headers).await?;
    svc::mute(&state, &actor, new).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lift a viewer's mute (moderators).
#[utoipa::path(delete, path = "/api/v1/admin/mutes/{email}", tag = "together",
    params(("email" = String, Path, description = "the viewer's e-mail")),
    security(("bearer" = []), ("admin" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn unmute(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> Result<Response, Error> {
    moderator(&state, &headers).await?;
    svc::unmute(&state, &email).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Make a viewer a moderator (admin credential).
#[utoipa::path(put, path = "/api/v1/admin/moderators/{email}", tag = "together",
    params(("email" = String, Path, description = "the viewer's e-mail")), security(("admin" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn add_moderator(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    svc::set_moderator(&state, &email, true).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Make a moderator a viewer again (admin credential).
#[utoipa::path(delete, path = "/api/v1/admin/moderators/{email}", tag = "together",
    params(("email" = String, Path, description = "the viewer's e-mail")), security(("admin" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_moderator(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    svc::set_moderator(&state, &email, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/fleet/reactions` (fleet credential): an edge's counts per
/// scope and window. Each batch counts once, however often it is sent.
pub(crate) async fn edge_reactions(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EdgeReactions>,
) -> Result<Response, Error> {
    require_fleet(&state, &headers)?;
    let added = svc::add_reactions(&state, body).await?;
    Ok(no_store(Json(serde_json::json!({ "added": added }))))
}

/// A live channel's reaction totals.
#[utoipa::path(get, path = "/api/v1/live/{name}/reactions", tag = "together",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = Totals), (status = 404, body = ErrorBody)))]
pub(crate) async fn live_totals(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    Ok(no_store(Json(
        svc::totals(&state, &scope("live", &name)?).await?,
    )))
}

/// An on-demand asset's reaction totals.
#[utoipa::path(get, path = "/api/v1/vod/{asset}/reactions", tag = "together",
    params(("asset" = String, Path, description = "asset id")),
    responses((status = 200, body = Totals), (status = 404, body = ErrorBody)))]
pub(crate) async fn vod_totals(
    AxState(state): AxState<Arc<State>>,
    Path(asset): Path<String>,
) -> Result<Response, Error> {
    Ok(no_store(Json(
        svc::totals(&state, &scope("vod", &asset)?).await?,
    )))
}

/// A live channel's newest polls, with results.
#[utoipa::path(get, path = "/api/v1/live/{name}/polls", tag = "together",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = Polls), (status = 404, body = ErrorBody)))]
pub(crate) async fn live_polls(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    Ok(no_store(Json(
        svc::polls(&state, &scope("live", &name)?).await?,
    )))
}

/// Vote in a poll (logged in; once per poll, while it is open).
#[utoipa::path(post, path = "/api/v1/polls/{id}/vote", tag = "together",
    params(("id" = String, Path, description = "poll id")), request_body = NewVote,
    security(("bearer" = [])),
    responses((status = 200, body = Poll), (status = 400, description = "bad_option", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "already_voted, poll_closed", body = ErrorBody)))]
pub(crate) async fn vote(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
    Path(id): Path<String>,
    JsonBody(v): JsonBody<NewVote>,
) -> Result<Response, Error> {
    Ok(no_store(Json(
        svc::vote(&state, &viewer.user, &id, v).await?,
    )))
}

/// Open a poll on a live channel (admin credential).
#[utoipa::path(post, path = "/api/v1/admin/polls", tag = "together", request_body = NewPoll,
    security(("admin" = [])),
    responses((status = 201, body = Poll),
              (status = 400, description = "bad_question, bad_options, bad_duration", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn create_poll(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewPoll>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store((
        StatusCode::CREATED,
        Json(svc::create_poll(&state, new).await?),
    )))
}

/// Close a poll now (admin credential).
#[utoipa::path(post, path = "/api/v1/admin/polls/{id}/close", tag = "together",
    params(("id" = String, Path, description = "poll id")), security(("admin" = [])),
    responses((status = 200, body = Poll), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "poll_closed", body = ErrorBody)))]
pub(crate) async fn close_poll(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store(Json(svc::close_poll(&state, &id).await?)))
}

/// Publish a news flash to everyone, a region or a channel (admin
/// credential).
#[utoipa::path(post, path = "/api/v1/admin/flashes", tag = "together", request_body = NewFlash,
    security(("admin" = [])),
    responses((status = 201, body = Flash),
              (status = 400, description = "bad_text, bad_priority, bad_target, bad_region, bad_expiry", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn create_flash(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewFlash>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store((
        StatusCode::CREATED,
        Json(svc::create_flash(&state, new).await?),
    )))
}

/// End a flash now (admin credential).
#[utoipa::path(delete, path = "/api/v1/admin/flashes/{id}", tag = "together",
    params(("id" = String, Path, description = "flash id")), security(("admin" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn end_flash(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    svc::end_flash(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Flashes not expired.
#[utoipa::path(get, path = "/api/v1/flashes", tag = "together",
    responses((status = 200, body = Flashes)))]
pub(crate) async fn flashes(AxState(state): AxState<Arc<State>>) -> Result<Response, Error> {
    Ok(no_store(Json(svc::active_flashes(&state).await?)))
}
