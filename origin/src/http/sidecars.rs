//! `POST /api/v1/uploads/sidecars?kind=subtitles|audio&language=L`: a
//! subtitle or audio file sent before the upload that names it. Errors here
//! are [`Plain`], like the proxy tiers'.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::http::error::Plain;
use crate::http::extract::is_admin;
use crate::http::uploads::{incomplete, receive, ReceiveError};
use crate::service::ingest::{self, sidecars};
use crate::service::state::State;
use crate::storage::{Error, Kind};

/// The query of a sidecar upload.
#[derive(Deserialize)]
pub(crate) struct SidecarQuery {
    kind: Option<String>,
    language: Option<String>,
}

/// The body is the file. Answers 201 with the sidecar's id.
pub(crate) async fn upload_sidecar(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<SidecarQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Plain> {
    if !is_admin(&state, &headers) {
        return Err(Error::new(
            Kind::Unauthorized,
            "unauthorized",
            "uploads need the admin credential (Authorization: Bearer <admin_token>)",
        )
        .into());
    }
    let kind = q.kind.unwrap_or_default();
    let (limit, ext) = sidecars::limits(&state, &kind)?;
    let Some(language) = sidecars::normalize_tag(&q.language.unwrap_or_default()) else {
        return Err(Error::bad_request(
            "bad_language",
            "language must be a language tag such as en, hin or pt-BR",
        )
        .into());
    };
    let Ok(_permit) = state.uploads.try_acquire() else {
        return Err(ingest::busy("too many uploads in progress; try again shortly").into());
    };
    let dir = ingest::incoming_dir(&state).await?;
    let (id, path) = sidecars::new_file(&dir, ext);
    let refused = match receive(body, &path, limit).await {
        Ok(0) => Some(Error::bad_request("empty", "the file is empty")),
        Ok(_) => None,
        Err(ReceiveError::TooLarge) => Some(Error::new(
            Kind::TooLarge,
            "too_large",
            format!("{kind} files are limited to {} KiB", limit >> 10),
        )),
        Err(ReceiveError::Io(e)) => Some(incomplete(&e, "sidecar upload")),
    };
    if let Some(e) = refused {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e.into());
    }
    let detail = sidecars::check_and_record(&dir, &id, &kind, &language, &path).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "sidecar": id, "kind": kind, "language": language, "detail": detail })),
    )
        .into_response())
}
