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

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::service::ingest::storage_error;
use crate::service::ingest::transcode::{normalize_language, probe_audio, VideoCodec};
use crate::service::state::State;
use crate::storage::{ids, Error, Kind, Result};

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

/// Where uploads and sidecars wait for their job.
pub(crate) fn incoming(state: &State) -> PathBuf {
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
    let primary = normalize_language(primary);
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

/// The limit on a sidecar of a kind (`subtitles` or `audio`), and the
/// extension it is kept under.
pub(crate) fn limits(state: &State, kind: &str) -> Result<(u64, &'static str)> {
    match kind {
        "subtitles" => Ok((cascade_packager::vtt::MAX_VTT_BYTES as u64, "vtt")),
        "audio" => Ok((state.cfg.max_upload_mib << 20, "upload")),
        _ => Err(Error::bad_request(
            "bad_kind",
            "kind must be subtitles or audio",
        )),
    }
}

/// A new sidecar's id and the file its body goes to.
pub(crate) fn new_file(dir: &Path, ext: &str) -> (String, PathBuf) {
    let id = ids::short_id();
    let path = dir.join(format!("sidecar-{id}.{ext}"));
    (id, path)
}

/// Checks a received sidecar and records it under its id: subtitles are
/// parsed (refused with the line at fault) and kept normalised; audio must
/// be readable. Answers what was found (`cues`, or `duration`). A sidecar
/// refused or not recorded is removed.
pub(crate) async fn check_and_record(
    dir: &Path,
    id: &str,
    kind: &str,
    language: &str,
    path: &Path,
) -> Result<Value> {
    let recorded = check_and_record_inner(dir, id, kind, language, path).await;
    if recorded.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    recorded
}

async fn check_and_record_inner(
    dir: &Path,
    id: &str,
    kind: &str,
    language: &str,
    path: &Path,
) -> Result<Value> {
    let detail = if kind == "subtitles" {
        // Checked now, with the line at fault, and stored normalised.
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| storage_error(format_args!("reading a sidecar back: {e}")))?;
        let parsed = cascade_packager::vtt::parse(&bytes)
            .map_err(|e| Error::bad_request("bad_subtitles", format!("not a WebVTT file: {e}")))?;
        let cues = parsed.cues.len();
        let text = cascade_packager::vtt::serialize(&parsed);
        tokio::fs::write(path, text)
            .await
            .map_err(|e| storage_error(format_args!("writing a sidecar: {e}")))?;
        json!({ "cues": cues })
    } else {
        let probe_path = path.to_path_buf();
        match tokio::task::spawn_blocking(move || probe_audio(&probe_path)).await {
            Ok(Ok(secs)) => json!({ "duration": secs }),
            Ok(Err(e)) => {
                return Err(Error::new(
                    Kind::Unprocessable,
                    "unreadable_media",
                    format!("no readable audio: {e}"),
                ))
            }
            Err(_) => {
                return Err(Error::new(
                    Kind::Unprocessable,
                    "unreadable_media",
                    "the probe crashed",
                ))
            }
        }
    };
    let record = Sidecar {
        kind: kind.to_string(),
        language: language.to_string(),
        path: path.to_path_buf(),
    };
    let meta = serde_json::to_vec(&record).unwrap_or_default();
    tokio::fs::write(dir.join(format!("sidecar-{id}.json")), meta)
        .await
        .map_err(|e| storage_error(format_args!("recording a sidecar: {e}")))?;
    Ok(detail)
}

/// The sidecars an upload names (`ID,ID`) and its codecs (`hevc,av1`), as
/// the extras of its job; a clear error for any unknown id or codec.
pub(crate) async fn extras_for_upload(
    state: &State,
    sidecars: Option<&str>,
    codecs: Option<&str>,
) -> Result<Extras> {
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
) -> Result<Extras> {
    let (extras, records) = read_sidecars(state, sidecars, codecs).await?;
    let mut taken: Vec<(PathBuf, PathBuf)> = Vec::new();
    for record in records {
        let claimed = record.with_extension("claimed");
        if tokio::fs::rename(&record, &claimed).await.is_err() {
            for (from, to) in taken {
                let _ = tokio::fs::rename(&to, &from).await;
            }
            return Err(Error::conflict(
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
) -> Result<(Extras, Vec<PathBuf>)> {
    let mut extras = Extras::default();
    let mut records = Vec::new();
    let ids: Vec<&str> = sidecars
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > MAX_SIDECARS {
        return Err(Error::bad_request(
            "bad_sidecars",
            format!("at most {MAX_SIDECARS} sidecars per upload"),
        ));
    }
    for id in ids {
        let unknown = || {
            Error::bad_request(
                "bad_sidecars",
                format!("no sidecar {}", id.chars().take(32).collect::<String>()),
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
            Error::bad_request("bad_codecs", "codecs must be a list of hevc and av1")
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
