//! Ingest: uploads are streamed to disk (by the HTTP layer), checked,
//! probed and queued; one worker transcodes them into CMAF mezzanine with
//! an asset manifest. Sidecars (subtitles, dubs) come before their upload;
//! the sample titles are FFmpeg test sources.

pub(crate) mod index;
pub(crate) mod sidecars;
pub mod transcode;
pub(crate) mod worker;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::repo::catalog::UploadMeta;
use crate::repo::{assets, jobs, settings};
use crate::service::catalog::check_metadata;
use crate::service::state::State;
use crate::storage::{ids, Error, Kind, Result};
use sidecars::Extras;
use transcode::Source;

/// Jobs waiting for the transcoder before uploads are turned away.
const MAX_QUEUED_JOBS: i64 = 100;

/// The sample titles: FFmpeg test sources with a moving picture and a tone.
const SAMPLES: [(&str, &str); 2] = [
    (
        "Sample: test pattern 1080p",
        "testsrc2=s=1920x1080:r=30:d=30[out0];sine=f=440:beep_factor=4:sample_rate=48000:d=30[out1]",
    ),
    (
        "Sample: colour bars 720p",
        "testsrc=s=1280x720:r=30:d=30[out0];sine=f=660:sample_rate=48000:d=30[out1]",
    ),
];

/// What an upload says besides its media (`POST /api/v1/uploads?…`).
#[derive(Deserialize)]
pub(crate) struct UploadForm {
    title: Option<String>,
    /// `IN,NP`: only these countries may watch.
    allow_countries: Option<String>,
    /// `US,GB`: these countries may not.
    deny_countries: Option<String>,
    /// Catalog synopsis.
    synopsis: Option<String>,
    /// Comma-separated genres.
    genres: Option<String>,
    /// Comma-separated languages.
    languages: Option<String>,
    /// Release year.
    year: Option<i64>,
    /// Needs the premium plan: `true` or `false`.
    premium: Option<bool>,
    /// Subtitle and audio files sent before, by id: `ID,ID`.
    sidecars: Option<String>,
    /// Video codecs beside H.264: `hevc,av1`.
    codecs: Option<String>,
    /// Ad breaks in seconds: `0,600,1200`.
    ad_breaks: Option<String>,
    /// Serve the title encrypted only (`true`), played with a license.
    protect: Option<bool>,
    /// Make the title in two forensically watermarked copies (`true`), so
    /// each playback session's stream carries its own mark.
    watermark: Option<bool>,
}

/// An upload whose form was accepted, before its media has arrived.
pub(crate) struct Upload {
    pub(crate) asset: String,
    pub(crate) job: String,
    title: String,
    meta: UploadMeta,
    geo: cascade_geo::CountryRule,
    sidecars: Option<String>,
    codecs: Option<String>,
    extras: Extras,
    /// Ad breaks as stored (`0,600,1200`), or empty.
    ad_breaks: String,
    /// Served encrypted only.
    protect: bool,
    /// Made in two watermarked copies.
    watermark: bool,
}

/// 503 `busy`, to retry in 30 seconds.
pub(crate) fn busy(message: &str) -> Error {
    Error::new(
        Kind::Unavailable {
            retry_after: Some(30),
        },
        "busy",
        message,
    )
}

/// 500 for an upload the origin could not keep on disk (the cause is logged).
pub(crate) fn storage_error(cause: impl fmt::Display) -> Error {
    Error::internal("storage", "cannot store uploads", cause)
}

/// Checks an upload's form before its media is read: the queue has room,
/// the countries, title and catalog fields are valid, its sidecars and
/// codecs are known.
pub(crate) async fn plan(state: &State, q: UploadForm) -> Result<Upload> {
    if jobs::queued_jobs(&state.db).await? >= MAX_QUEUED_JOBS {
        return Err(busy("the transcode queue is full; try again later"));
    }
    let geo = match (
        cascade_geo::CountryRule::parse_list(q.allow_countries.as_deref().unwrap_or("")),
        cascade_geo::CountryRule::parse_list(q.deny_countries.as_deref().unwrap_or("")),
    ) {
        (Ok(allow), Ok(deny)) => cascade_geo::CountryRule { allow, deny },
        (Err(e), _) | (_, Err(e)) => return Err(Error::bad_request("bad_countries", e)),
    };
    let title = q.title.unwrap_or_default();
    let title = title.trim();
    if title.chars().count() > 200 || title.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "bad_title",
            "title must be at most 200 printable characters",
        ));
    }
    let list = |s: &Option<String>| -> Vec<String> {
        s.as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect()
    };
    let synopsis = q.synopsis.clone().unwrap_or_default();
    let (genres, languages) = (list(&q.genres), list(&q.languages));
    check_metadata(Some(&synopsis), q.year, &[&genres, &languages])?;
    let extras =
        sidecars::extras_for_upload(state, q.sidecars.as_deref(), q.codecs.as_deref()).await?;
    let ad_breaks = cascade_ads::parse_breaks(q.ad_breaks.as_deref().unwrap_or(""))
        .map_err(|e| Error::bad_request("bad_breaks", format!("ad_breaks: {e}")))?
        .iter()
        .map(|ms| format!("{}", *ms as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(",");
    let protect = q.protect.unwrap_or(false);
    if protect {
        // Refused before the media is read: without a KEK no key can be kept.
        state.keys.kek()?;
    }
    let asset = ids::short_id();
    let job = ids::short_id();
    let title = if title.is_empty() {
        format!("Untitled {asset}")
    } else {
        title.to_string()
    };
    let meta = UploadMeta {
        name: title.clone(),
        synopsis,
        year: q.year,
        genres,
        languages,
        premium: q.premium.unwrap_or(false),
    };
    Ok(Upload {
        asset,
        job,
        title,
        meta,
        geo,
        sidecars: q.sidecars,
        codecs: q.codecs,
        extras,
        ad_breaks,
        protect,
        watermark: q.watermark.unwrap_or(false),
    })
}

/// The directory uploads and sidecars are received in, made if need be.
pub(crate) async fn incoming_dir(state: &State) -> Result<PathBuf> {
    let dir = sidecars::incoming(state);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| storage_error(format_args!("creating upload dir: {e}")))?;
    Ok(dir)
}

/// Where an upload's media is received.
pub(crate) fn upload_path(dir: &Path, upload: &Upload) -> PathBuf {
    dir.join(format!("{}.upload", upload.job))
}

/// Queues an upload whose media is at `path`: its sidecars become its own,
/// the asset, job and title are recorded, and the media is probed. A file
/// FFmpeg cannot read is refused (422) and recorded as a failed job.
/// Answers `{asset, job, status, source: {…}}`.
pub(crate) async fn accept(state: &State, upload: Upload, path: &Path) -> Result<Value> {
    let Upload {
        asset,
        job,
        title,
        meta,
        geo,
        sidecars: named,
        codecs,
        extras,
        ad_breaks,
        protect,
        watermark,
    } = upload;
    let source = path.to_string_lossy().to_string();
    // The sidecars become this upload's alone, now that its media is here.
    let extras = if extras == Extras::default() {
        extras
    } else {
        match sidecars::claim(state, named.as_deref(), codecs.as_deref()).await {
            Ok(e) => e,
            Err(e) => {
                let _ = tokio::fs::remove_file(path).await;
                return Err(e);
            }
        }
    };
    // The worker reads the extras before it transcodes: written before the job exists.
    if extras != Extras::default() {
        let file = sidecars::extras_path(&state.cfg.data_dir, &job);
        let bytes = serde_json::to_vec(&extras).unwrap_or_default();
        if let Err(e) = tokio::fs::write(&file, bytes).await {
            let _ = tokio::fs::remove_file(path).await;
            return Err(storage_error(format_args!(
                "recording an upload's extras: {e}"
            )));
        }
    }
    if let Err(e) =
        assets::create_asset_and_job(&state.db, &asset, &job, &title, "file", &source, &meta).await
    {
        let _ = tokio::fs::remove_file(path).await;
        return Err(Error::internal(
            "database",
            "cannot record the upload",
            format_args!("recording an upload: {e}"),
        ));
    }
    if !geo.is_empty() {
        assets::set_geo(&state.db, &asset, &geo).await?;
    }
    if protect {
        crate::repo::keys::set_protected(&state.db, &asset, true).await?;
    }
    if watermark {
        crate::repo::watermarks::set_watermarked(&state.db, &asset, true).await?;
    }
    if !ad_breaks.is_empty() {
        crate::repo::ads::set_asset_ads(&state.db, &asset, &ad_breaks, "").await?;
    }
    let probe_path = path.to_path_buf();
    let probe =
        tokio::task::spawn_blocking(move || transcode::probe(&Source::File(probe_path))).await;
    match probe {
        Ok(Ok(p)) => {
            state.jobs_notify.notify_one();
            Ok(json!({
                "asset": asset, "job": job, "status": "queued",
                "source": { "width": p.width, "height": p.height, "duration": p.duration, "audio": p.has_audio, "audio_streams": p.audio_streams },
            }))
        }
        other => {
            let reason = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "the probe crashed".to_string(),
            };
            // Claim the job first so the worker never picks it up.
            let _ = jobs::fail(&state.db, &job, &asset, &reason).await;
            state.metrics_jobs.with_label_values(&["failed"]).inc();
            let _ = tokio::fs::remove_file(path).await;
            Err(Error::new(Kind::Unprocessable, "unreadable_media", reason)
                .with(json!({ "asset": asset, "job": job, "status": "failed" })))
        }
    }
}

/// Queues the two sample titles once per data directory.
pub(crate) async fn ensure_samples(state: &State) -> anyhow::Result<Vec<String>> {
    if settings::setting(&state.db, "samples").await?.is_some() {
        return Ok(Vec::new());
    }
    let mut queued = Vec::new();
    for (title, graph) in SAMPLES {
        let asset = ids::short_id();
        let job = ids::short_id();
        let meta = UploadMeta {
            name: title.to_string(),
            synopsis: "An FFmpeg test source with a moving picture and a tone.".into(),
            genres: vec!["sample".into()],
            ..Default::default()
        };
        assets::create_asset_and_job(&state.db, &asset, &job, title, "lavfi", graph, &meta).await?;
        queued.push(asset);
    }
    settings::set_setting(&state.db, "samples", &queued.join(",")).await?;
    state.jobs_notify.notify_one();
    Ok(queued)
}
