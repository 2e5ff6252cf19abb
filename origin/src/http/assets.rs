//! The operator API's reads of jobs and assets, and assets' country rules.
//! Errors here are [`Plain`], like the proxy tiers'.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::error::Plain;
use crate::http::extract::{is_admin, require_admin};
use crate::http::no_store;
use crate::service::assets;
use crate::service::state::State;

/// `GET /api/v1/jobs/{id}`: a job's state and progress; its failure's cause
/// (FFmpeg's words) only with the admin credential.
pub(crate) async fn job(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Plain> {
    let job = assets::job(&state, &id, is_admin(&state, &headers)).await?;
    Ok(Json(job).into_response())
}

/// `GET /api/v1/assets`: every asset for operators (admin credential);
/// for anyone else, the ones that are not failed, without their private
/// fields.
pub(crate) async fn list_assets(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
) -> Result<Response, Plain> {
    let list = assets::list(&state, is_admin(&state, &headers)).await?;
    Ok(no_store(Json(list)))
}

/// `GET /api/v1/assets/{id}`: in full for operators; as in the list for
/// anyone else (a failed asset is not found).
pub(crate) async fn asset(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Plain> {
    let body = assets::get(&state, &id, is_admin(&state, &headers)).await?;
    Ok(no_store(Json(body)))
}

/// `PUT /api/v1/assets/{id}/geo` (admin): a title's country rules.
pub(crate) async fn set_geo(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(rule): Json<cascade_geo::CountryRule>,
) -> Result<Response, Plain> {
    require_admin(&state, &headers)?;
    Ok(Json(assets::set_geo(&state, &id, rule).await?).into_response())
}
