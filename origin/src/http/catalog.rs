//! `/api/v1/titles`, `/api/v1/browse` and the catalog's admin API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::http::error::{ErrorBody, JsonBody};
use crate::http::extract::{require_admin, MaybeViewer};
use crate::service::browse::{self, Browse, TitlePage};
use crate::service::catalog::{self, TitleEdit};
use crate::service::state::State;
use crate::service::titles::Title;
use crate::storage::Error;

/// `GET /api/v1/titles` parameters.
#[derive(Deserialize, IntoParams)]
pub(crate) struct TitleQuery {
    /// Words to search for; the last one matches as a prefix.
    q: Option<String>,
    /// Only this genre.
    genre: Option<String>,
    /// From 1.
    page: Option<i64>,
    /// 1 to 100; 20 if absent.
    per_page: Option<i64>,
}

/// `GET /api/v1/browse` parameters.
#[derive(Deserialize, IntoParams)]
pub(crate) struct BrowseQuery {
    /// The profile whose continue-watching rail to include (needs a login).
    profile: Option<String>,
}

/// List or search the catalog (movies and series).
#[utoipa::path(get, path = "/api/v1/titles", tag = "catalog", params(TitleQuery),
    responses((status = 200, body = TitlePage), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<TitleQuery>,
) -> Result<Response, Error> {
    let page = browse::list(
        &state,
        q.q.as_deref(),
        q.genre.as_deref(),
        q.page,
        q.per_page,
    )
    .await?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=30")], Json(page)).into_response())
}

/// One title; a series with its seasons and episodes.
#[utoipa::path(get, path = "/api/v1/titles/{id}", tag = "catalog",
    params(("id" = String, Path, description = "title id")),
    responses((status = 200, body = Title), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_title(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let title = browse::title(&state, &id).await?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=30")], Json(title)).into_response())
}

/// Rails for the home page: continue watching (with a login and a
/// profile), new, and the biggest genres.
#[utoipa::path(get, path = "/api/v1/browse", tag = "catalog", params(BrowseQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = Browse)))]
pub(crate) async fn browse(
    AxState(state): AxState<Arc<State>>,
    MaybeViewer(viewer): MaybeViewer,
    Query(q): Query<BrowseQuery>,
) -> Result<Response, Error> {
    let user = viewer.as_ref().map(|v| v.user.as_str());
    let rails = browse::browse(&state, user, q.profile.as_deref()).await?;
    let cache = if user.is_some() && q.profile.is_some() {
        "private, no-store"
    } else {
        "public, max-age=30"
    };
    Ok(([(header::CACHE_CONTROL, cache)], Json(rails)).into_response())
}

/// A title's artwork.
#[utoipa::path(get, path = "/api/v1/titles/{id}/artwork", tag = "catalog",
    params(("id" = String, Path, description = "title id")),
    responses((status = 200, description = "the image", content_type = "image/*"),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn artwork(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let (bytes, kind) = browse::artwork(&state, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        bytes,
    )
        .into_response())
}

/// Create a title (admin).
#[utoipa::path(post, path = "/api/v1/admin/titles", tag = "admin", request_body = TitleEdit,
    security(("admin" = [])),
    responses((status = 201, body = Title), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn create(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(edit): JsonBody<TitleEdit>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    let title = catalog::create(&state, edit).await?;
    Ok((StatusCode::CREATED, Json(title)).into_response())
}

/// Change a title (admin).
#[utoipa::path(patch, path = "/api/v1/admin/titles/{id}", tag = "admin", request_body = TitleEdit,
    security(("admin" = [])), params(("id" = String, Path, description = "title id")),
    responses((status = 200, body = Title), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn update(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(edit): JsonBody<TitleEdit>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(Json(catalog::update(&state, &id, edit).await?).into_response())
}

/// Delete a title and what is below it (admin). Assets stay.
#[utoipa::path(delete, path = "/api/v1/admin/titles/{id}", tag = "admin",
    security(("admin" = [])), params(("id" = String, Path, description = "title id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    require_admin(&state, &headers)?;
    catalog::delete(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a title's artwork (admin): a JPEG, PNG or WebP body up to 8 MiB,
/// kept in the object store.
#[utoipa::path(put, path = "/api/v1/admin/titles/{id}/artwork", tag = "admin",
    security(("admin" = [])), params(("id" = String, Path, description = "title id")),
    request_body(content = Vec<u8>, content_type = "image/jpeg"),
    responses((status = 200, body = Title), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
pub(crate) async fn put_artwork(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(Json(catalog::put_artwork(&state, &id, body).await?).into_response())
}
