//! `POST /api/v1/uploads`: media streamed to disk within the size limit,
//! then handed to ingest. Errors here are [`Plain`], like the proxy tiers'.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::http::error::Plain;
use crate::http::extract::is_admin;
use crate::service::ingest::{self, UploadForm};
use crate::service::state::State;
use crate::storage::{Error, Kind};

/// How long a refused upload's body is still read (and thrown away)
/// before the refusal is sent, and how much of it at most.
const REFUSAL_LINGER: Duration = Duration::from_secs(10);
const REFUSAL_LINGER_BYTES: usize = 256 << 20;

/// Why a body was not received whole.
pub(crate) enum ReceiveError {
    /// Over the limit.
    TooLarge,
    /// The connection broke off, or the disk failed.
    Io(String),
}

/// `POST /api/v1/uploads?title=T`: the body is the media file. It is
/// streamed to disk within the size limit, probed, and queued; a file FFmpeg
/// cannot read is answered 422 and recorded as a failed job.
pub(crate) async fn upload(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<UploadForm>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Uploads publish titles: they need the admin (editor) credential.
    if !is_admin(&state, &headers) {
        let refusal = Plain(Error::new(
            Kind::Unauthorized,
            "unauthorized",
            "uploads need the admin credential (Authorization: Bearer <admin_token>)",
        ));
        return refuse_upload(body, refusal.into_response()).await;
    }
    let limit = state.cfg.max_upload_mib << 20;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Reading a body over the limit to say so would cost more than it
        // is worth: answer now, and close.
        let mut refusal = Plain(too_large(&state)).into_response();
        refusal
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return refusal;
    }
    // Bounded work: a few uploads at once, and a bounded queue behind the worker.
    let Ok(_permit) = state.uploads.try_acquire() else {
        let refusal = Plain(ingest::busy(
            "too many uploads in progress; try again shortly",
        ));
        return refuse_upload(body, refusal.into_response()).await;
    };
    match receive_and_queue(&state, q, body, limit).await {
        Ok(queued) => (StatusCode::ACCEPTED, Json(queued)).into_response(),
        Err(e) => Plain(e).into_response(),
    }
}

/// Streams a body to a file, up to `limit` bytes; answers its length.
pub(crate) async fn receive(body: Body, path: &Path, limit: u64) -> Result<u64, ReceiveError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ReceiveError::Io(e.to_string()))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ReceiveError::Io(e.to_string()))?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ReceiveError::TooLarge);
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ReceiveError::Io(e.to_string()))?;
    }
    file.flush()
        .await
        .map_err(|e| ReceiveError::Io(e.to_string()))?;
    Ok(total)
}

/// 400 `incomplete`: the body broke off (the cause is logged).
pub(crate) fn incomplete(cause: &str, what: &str) -> Error {
    tracing::warn!(error = %cause, "{what} broke off");
    Error::bad_request("incomplete", "the upload did not complete")
}

/// Checks the form, receives the media, and queues it.
async fn receive_and_queue(
    state: &State,
    q: UploadForm,
    body: Body,
    limit: u64,
) -> Result<serde_json::Value, Error> {
    let upload = ingest::plan(state, q).await?;
    let dir = ingest::incoming_dir(state).await?;
    let path = ingest::upload_path(&dir, &upload);
    let received = receive(body, &path, limit).await;
    let refused = match received {
        Ok(0) => Error::bad_request("empty", "the upload is empty"),
        Ok(_) => return ingest::accept(state, upload, &path).await,
        Err(ReceiveError::TooLarge) => too_large(state),
        Err(ReceiveError::Io(e)) => incomplete(&e, "upload"),
    };
    let _ = tokio::fs::remove_file(&path).await;
    Err(refused)
}

fn too_large(state: &State) -> Error {
    Error::new(
        Kind::TooLarge,
        "too_large",
        format!("uploads are limited to {} MiB", state.cfg.max_upload_mib),
    )
}

/// Answers `refusal` to an upload whose body has not been read (a wrong
/// credential, a full queue), after reading and discarding that body for a
/// while (a lingering close, as nginx does): a client still sending would
/// otherwise meet a reset connection and never see why it was refused.
async fn refuse_upload(body: Body, refusal: Response) -> Response {
    let mut stream = body.into_data_stream();
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > REFUSAL_LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
    refusal
}
