//! Content protection: the edges' key and license calls (fleet
//! credential), and the operator's protection switch and CPIX exchange
//! (admin credential). Keys travel only in `no-store` answers and never
//! into logs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::http::error::{ErrorBody, JsonBody};
use crate::http::extract::{require_admin, require_fleet};
use crate::http::no_store;
use crate::service::keys::{self as svc, LicenseRequest};
use crate::service::state::State;
use crate::storage::Error;

/// `GET /api/v1/fleet/protection/{asset}` (fleet credential): whether the
/// title is protected and, if so, each track's key for the edge to
/// encrypt with.
pub(crate) async fn protection(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(asset): Path<String>,
) -> Result<Response, Error> {
    require_fleet(&state, &headers)?;
    if !cascade_packager::is_safe_id(&asset) {
        return Err(Error::not_found("asset"));
    }
    Ok(no_store(Json(
        svc::protection_for_edge(&state, &asset).await?,
    )))
}

/// Which key periods of a live channel an edge wants.
#[derive(Deserialize)]
pub(crate) struct PeriodsQuery {
    #[serde(default)]
    periods: String,
}

/// `GET /api/v1/fleet/protection/live/{channel}?periods=P,P` (fleet
/// credential): whether the channel is protected and, if so, the keys of
/// those key periods (made on first use).
pub(crate) async fn live_protection(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PeriodsQuery>,
) -> Result<Response, Error> {
    require_fleet(&state, &headers)?;
    if !cascade_packager::is_safe_id(&channel) {
        return Err(Error::not_found("channel"));
    }
    Ok(no_store(Json(
        svc::live_protection_for_edge(&state, &channel, &q.periods).await?,
    )))
}

/// `POST /api/v1/fleet/license` (fleet credential): the keys a viewer's
/// playback session asks for, if it may play.
pub(crate) async fn license(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LicenseRequest>,
) -> Result<Response, Error> {
    require_fleet(&state, &headers)?;
    Ok(no_store(Json(svc::license(&state, req).await?)))
}

/// Whether a title is protected.
#[derive(Deserialize, ToSchema)]
pub(crate) struct ProtectionSetting {
    /// `true`: its media is served encrypted only, and played with a license.
    protected: bool,
}

/// Protect a title, or serve it in the clear again (admin). Purge the
/// title's cached outputs afterwards so edges pick the change up at once.
#[utoipa::path(put, path = "/api/v1/admin/assets/{id}/protection", tag = "admin",
    params(("id" = String, Path, description = "asset id")), request_body = ProtectionSetting,
    security(("admin" = [])),
    responses((status = 200, description = "{asset, protected}"), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, description = "no_kek: the origin has no key-encryption key", body = ErrorBody)))]
pub(crate) async fn set_protection(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(s): JsonBody<ProtectionSetting>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    svc::set_protected(&state, &id, s.protected).await?;
    Ok(no_store(Json(
        json!({ "asset": id, "protected": s.protected }),
    )))
}

/// A title's content keys as a CPIX 2.3 document (admin), for a
/// commercial DRM service to serve the same keys.
#[utoipa::path(get, path = "/api/v1/admin/assets/{id}/keys", tag = "admin",
    params(("id" = String, Path, description = "asset id")), security(("admin" = [])),
    responses((status = 200, description = "CPIX", content_type = "application/xml"),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn export_keys(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    let doc = svc::export_cpix(&state, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/xml; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc,
    )
        .into_response())
}

/// Replace a title's content keys with those of a CPIX document (admin):
/// each key replaces the one of its track type (`SD`, `HD`, `UHD`,
/// `AUDIO`, or every track without a usage rule).
#[utoipa::path(put, path = "/api/v1/admin/assets/{id}/keys", tag = "admin",
    params(("id" = String, Path, description = "asset id")), security(("admin" = [])),
    request_body(content = String, content_type = "application/xml"),
    responses((status = 200, description = "{asset, imported}"),
              (status = 400, description = "bad_cpix", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn import_keys(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    let doc = std::str::from_utf8(&body)
        .map_err(|_| Error::bad_request("bad_cpix", "a CPIX document is UTF-8 XML"))?;
    let n = svc::import_cpix(&state, &id, doc).await?;
    Ok((
        StatusCode::OK,
        no_store(Json(json!({ "asset": id, "imported": n }))),
    )
        .into_response())
}

/// The sessions that held a forensic watermark's mark (admin), newest
/// first: what `cascade watermark detect` prints after the mark it read.
#[utoipa::path(get, path = "/api/v1/admin/watermarks/{mark}", tag = "admin",
    params(("mark" = String, Path, description = "the mark: 0 to 65535, or 0x0000 to 0xffff")),
    security(("admin" = [])),
    responses((status = 200, description = "{mark, mark_hex, holders: [{stream, user, email, profile, asset, issued_at}]}"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn watermark_holders(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(mark): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &headers)?;
    Ok(no_store(Json(svc::watermark_holders(&state, &mark).await?)))
}
