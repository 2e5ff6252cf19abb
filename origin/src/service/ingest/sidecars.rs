//! Files that come with an upload: WebVTT subtitles and extra audio tracks
//! (dubs, commentary). Each is sent first, on its own, to
//! `POST /api/v1/uploads/sidecars?kind=subtitles&language=en`, checked at
//! once (a subtitle file that does not parse is refused with the line at
//! fault), and named by id in the media upload (`sidecars=ID,ID`). The
//! upload then records what its job needs beside the media in
//! `incoming/{job}.extras.json`, which the worker reads before transcoding.
//!
//! Two steps rather than one multipart body: each file streams to disk
//! within its own limit, and a bad subtitle file is refused before the
//! (much larger) media is sent at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::error;
use crate::transcode::VideoCodec;
use crate::State;

/// What a job needs beside its media file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Extras {
    /// WebVTT files, normalised, with their languages.
    #[serde(default)]
    pub(crate) subtitles: Vec<Sidecar>,
    /// Audio files, each one more audio track.
    #[serde(default)]
    pub(crate) audio: Vec<Sidecar>,
    /// Video codecs beside H.264.
    #[serde(default)]
    pub(crate) codecs: Vec<VideoCodec>,
}

/// One file sent before the upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    /// `subtitles` or `audio`.
    pub(crate) kind: String,
    /// BCP 47 language.
    pub(crate) language: String,
    /// Where it is on this origin's disk.
    pub(crate) path: PathBuf,
}

/// Most sidecars one upload may name.
pub(crate) const MAX_SIDECARS: usize = 16;

#[derive(Deserialize)]
pub(crate) struct SidecarQuery {
    kind: Option<String>,
    language: Option<String>,
}

fn incoming(state: &State) -> PathBuf {
    Path::new(&state.cfg.data_dir).join("incoming")
}

/// The extras file of a job.
pub(crate) fn extras_path(data_dir: &str, job: &str) -> PathBuf {
    Path::new(data_dir)
        .join("incoming")
        .join(format!("{job}.extras.json"))
}

/// Reads a job's extras; none when the upload named none.
pub(crate) async fn read_extras(data_dir: &str, job: &str) -> Result<Extras, String> {
    match tokio::fs::read(extras_path(data_dir, job)).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("extras file: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Extras::default()),
        Err(e) => Err(format!("extras file: {e}")),
    }
}

/// A language tag as tracks carry it: the primary language as its short
/// ISO 639 code (`eng` and `en` are `en`), any region or script after it
/// kept, lower case (`pt-br`). `None` for what is not a known language.
pub(crate) fn normalize_tag(tag: &str) -> Option<String> {
    let tag = tag.trim().to_ascii_lowercase();
    if !cascade_packager::is_safe_lang(&tag) {
        return None;
    }
    let (primary, rest) = match tag.split_once('-') {
        Some((p, r)) => (p, Some(r)),
        None => (tag.as_str(), None),
    };
    let primary = crate::transcode::normalize_language(primary);
    if primary == "und" {
        return None;
    }
    Some(match rest {
        Some(r) => format!("{primary}-{r}"),
        None => primary,
    })
}

/// Removes a finished job's extras and the sidecar files they name.
pub(crate) async fn remove_extras(data_dir: &str, job: &str, extras: &Extras) {
    for s in extras.subtitles.iter().chain(&extras.audio) {
        let _ = tokio::fs::remove_file(&s.path).await;
        let _ = tokio::fs::remove_file(s.path.with_extension("json")).await;
        let _ = tokio::fs::remove_file(s.path.with_extension("claimed")).await;
    }
    let _ = tokio::fs::remove_file(extras_path(data_dir, job)).await;
}

/// `POST /api/v1/uploads/sidecars?kind=subtitles|audio&language=L`: the
/// body is the file. Answers 201 with the sidecar's id.
pub(crate) async fn upload_sidecar(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<SidecarQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !cascade_common::bearer_matches(auth, &state.cfg.admin_token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "uploads need the admin credential (Authorization: Bearer <admin_token>)",
        );
    }
    let kind = q.kind.unwrap_or_default();
    let (limit, ext) = match kind.as_str() {
        "subtitles" => (cascade_packager::vtt::MAX_VTT_BYTES as u64, "vtt"),
        "audio" => (state.cfg.max_upload_mib << 20, "upload"),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_kind",
                "kind must be subtitles or audio",
            )
        }
    };
    let Some(language) = normalize_tag(&q.language.unwrap_or_default()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_language",
            "language must be a language tag such as en, hin or pt-BR",
        );
    };
    let Ok(_permit) = state.uploads.try_acquire() else {
        return crate::http::busy("too many uploads in progress; try again shortly");
    };
    let dir = incoming(&state);
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        tracing::error!(error = %e, "creating upload dir");
        return crate::http::storage_error();
    }
    let id = crate::storage::ids::short_id();
    let path = dir.join(format!("sidecar-{id}.{ext}"));
    let fail = |status, code: &str, msg: &str| {
        let path = path.clone();
        let r = error(status, code, msg);
        async move {
            let _ = tokio::fs::remove_file(&path).await;
            r
        }
    };
    match crate::http::receive(body, &path, limit).await {
        Ok(0) => return fail(StatusCode::BAD_REQUEST, "empty", "the file is empty").await,
        Ok(_) => {}
        Err(crate::http::ReceiveError::TooLarge) => {
            let msg = format!("{kind} files are limited to {} KiB", limit >> 10);
            return fail(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &msg).await;
        }
        Err(crate::http::ReceiveError::Io(e)) => {
            tracing::warn!(error = %e, "sidecar upload broke off");
            return fail(
                StatusCode::BAD_REQUEST,
                "incomplete",
                "the upload did not complete",
            )
            .await;
        }
    }
    let detail = if kind == "subtitles" {
        // Checked now, with the line at fault, and stored normalised.
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading a sidecar back");
                return storage(&path).await;
            }
        };
        let parsed = match cascade_packager::vtt::parse(&bytes) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("not a WebVTT file: {e}");
                return fail(StatusCode::BAD_REQUEST, "bad_subtitles", &msg).await;
            }
        };
        let cues = parsed.cues.len();
        let text = cascade_packager::vtt::serialize(&parsed);
        if let Err(e) = tokio::fs::write(&path, text).await {
            tracing::error!(error = %e, "writing a sidecar");
            return storage(&path).await;
        }
        json!({ "cues": cues })
    } else {
        let probe_path = path.clone();
        match tokio::task::spawn_blocking(move || crate::transcode::probe_audio(&probe_path)).await
        {
            Ok(Ok(secs)) => json!({ "duration": secs }),
            Ok(Err(e)) => {
                let msg = format!("no readable audio: {e}");
                return fail(StatusCode::UNPROCESSABLE_ENTITY, "unreadable_media", &msg).await;
            }
            Err(_) => {
                return fail(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unreadable_media",
                    "the probe crashed",
                )
                .await
            }
        }
    };
    let record = Sidecar {
        kind: kind.clone(),
        language: language.clone(),
        path: path.clone(),
    };
    let meta = serde_json::to_vec(&record).unwrap_or_default();
    if let Err(e) = tokio::fs::write(dir.join(format!("sidecar-{id}.json")), meta).await {
        tracing::error!(error = %e, "recording a sidecar");
        return storage(&path).await;
    }
    (
        StatusCode::CREATED,
        Json(json!({ "sidecar": id, "kind": kind, "language": language, "detail": detail })),
    )
        .into_response()
}

/// Removes a half-stored sidecar and answers 500.
async fn storage(path: &Path) -> Response {
    let _ = tokio::fs::remove_file(path).await;
    crate::http::storage_error()
}

/// The sidecars an upload names (`ID,ID`) and its codecs (`hevc,av1`), as
/// the extras of its job; a clear error for any unknown id or codec.
pub(crate) async fn extras_for_upload(
    state: &State,
    sidecars: Option<&str>,
    codecs: Option<&str>,
) -> Result<Extras, Response> {
    let (extras, _) = read_sidecars(state, sidecars, codecs).await?;
    Ok(extras)
}

/// Takes the sidecars of an accepted upload for its job alone: each one's
/// record is renamed, so a second upload naming the same id is refused
/// instead of losing the file when the first job ends. On failure, the
/// ones already taken are given back.
pub(crate) async fn claim(
    state: &State,
    sidecars: Option<&str>,
    codecs: Option<&str>,
) -> Result<Extras, Response> {
    let (extras, records) = read_sidecars(state, sidecars, codecs).await?;
    let mut taken: Vec<(PathBuf, PathBuf)> = Vec::new();
    for record in records {
        let claimed = record.with_extension("claimed");
        if tokio::fs::rename(&record, &claimed).await.is_err() {
            for (from, to) in taken {
                let _ = tokio::fs::rename(&to, &from).await;
            }
            return Err(error(
                StatusCode::CONFLICT,
                "sidecar_taken",
                "a sidecar was taken by another upload at the same time; send it again",
            ));
        }
        taken.push((record, claimed));
    }
    Ok(extras)
}

/// The extras an upload names, and the record file of each sidecar.
async fn read_sidecars(
    state: &State,
    sidecars: Option<&str>,
    codecs: Option<&str>,
) -> Result<(Extras, Vec<PathBuf>), Response> {
    let mut extras = Extras::default();
    let mut records = Vec::new();
    let ids: Vec<&str> = sidecars
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > MAX_SIDECARS {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_sidecars",
            &format!("at most {MAX_SIDECARS} sidecars per upload"),
        ));
    }
    for id in ids {
        let unknown = || {
            error(
                StatusCode::BAD_REQUEST,
                "bad_sidecars",
                &format!("no sidecar {}", id.chars().take(32).collect::<String>()),
            )
        };
        if !cascade_packager::is_safe_id(id) {
            return Err(unknown());
        }
        let meta = incoming(state).join(format!("sidecar-{id}.json"));
        let bytes = tokio::fs::read(&meta).await.map_err(|_| unknown())?;
        let s: Sidecar = serde_json::from_slice(&bytes).map_err(|_| unknown())?;
        records.push(meta);
        match s.kind.as_str() {
            "subtitles" => extras.subtitles.push(s),
            _ => extras.audio.push(s),
        }
    }
    for c in codecs
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let codec = VideoCodec::parse(c).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_codecs",
                "codecs must be a list of hevc and av1",
            )
        })?;
        if codec != VideoCodec::H264 && !extras.codecs.contains(&codec) {
            extras.codecs.push(codec);
        }
    }
    Ok((extras, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags_normalise_or_are_refused() {
        assert_eq!(normalize_tag("en").as_deref(), Some("en"));
        assert_eq!(normalize_tag("eng").as_deref(), Some("en"));
        assert_eq!(normalize_tag(" pt-BR ").as_deref(), Some("pt-br"));
        assert_eq!(normalize_tag("hin").as_deref(), Some("hi"));
        assert_eq!(normalize_tag("und"), None);
        assert_eq!(normalize_tag("english"), None);
        assert_eq!(normalize_tag("e n"), None);
        assert_eq!(normalize_tag(""), None);
    }
}
