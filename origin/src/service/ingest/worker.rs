//! The transcode worker: takes queued jobs one at a time, transcodes,
//! indexes, stores the mezzanine and publishes the asset manifest last, so a
//! published title never points at missing files.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_packager::{AssetManifest, MarkedCopy, Track};
use cascade_watermark::Variant;

use crate::repo::jobs::{self, Job};
use crate::service::ingest::transcode::{self, ExtraAudio, Source, Spec};
use crate::service::ingest::{index, sidecars};
use crate::service::state::State;
use crate::storage::objects as store;

/// Jobs that fail this many times (a crash each time, say) are given up.
const MAX_ATTEMPTS: i64 = 3;

/// Runs the worker until `stop` is set.
pub(crate) async fn run(state: Arc<State>, stop: Arc<AtomicBool>) {
    match jobs::requeue_interrupted(&state.db).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "resuming jobs interrupted by a restart"),
        Err(e) => tracing::error!(error = %e, "requeueing interrupted jobs"),
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let job = match jobs::claim_next(&state.db).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                // Woken by a new upload, or poll now and then.
                let _ = tokio::time::timeout(Duration::from_secs(2), state.jobs_notify.notified())
                    .await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "claiming a job");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        run_one(&state, &job, &stop).await;
    }
}

async fn run_one(state: &Arc<State>, job: &Job, stop: &Arc<AtomicBool>) {
    tracing::info!(job = %job.id, asset = %job.asset, attempt = job.attempts, "transcode starts");
    let work = PathBuf::from(&state.cfg.data_dir)
        .join("work")
        .join(&job.id);
    let result = if job.attempts > MAX_ATTEMPTS {
        Err(format!("gave up after {MAX_ATTEMPTS} attempts"))
    } else {
        transcode_and_publish(state, job, &work, stop).await
    };
    let _ = tokio::fs::remove_dir_all(&work).await;
    match result {
        Ok(()) => {
            state.metrics_jobs.with_label_values(&["done"]).inc();
            if job.source_kind == "file" {
                let _ = tokio::fs::remove_file(&job.source).await;
            }
            if let Ok(extras) = sidecars::read_extras(&state.cfg.data_dir, &job.id).await {
                sidecars::remove_extras(&state.cfg.data_dir, &job.id, &extras).await;
            }
        }
        Err(reason) if stop.load(std::sync::atomic::Ordering::Relaxed) => {
            // Shutting down: leave it running; the next start requeues it.
            tracing::info!(job = %job.id, reason, "transcode interrupted by shutdown");
        }
        Err(reason) => {
            tracing::warn!(job = %job.id, reason, "transcode failed");
            state.metrics_jobs.with_label_values(&["failed"]).inc();
            store::delete_asset(&state.store, &job.asset).await;
            if let Err(e) = jobs::fail(&state.db, &job.id, &job.asset, &reason).await {
                tracing::error!(error = %e, "recording a failed job");
            }
            if job.source_kind == "file" {
                let _ = tokio::fs::remove_file(&job.source).await;
            }
            if let Ok(extras) = sidecars::read_extras(&state.cfg.data_dir, &job.id).await {
                sidecars::remove_extras(&state.cfg.data_dir, &job.id, &extras).await;
            }
        }
    }
}

async fn transcode_and_publish(
    state: &Arc<State>,
    job: &Job,
    work: &std::path::Path,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    let _ = tokio::fs::remove_dir_all(work).await;
    tokio::fs::create_dir_all(work)
        .await
        .map_err(|e| format!("work dir: {e}"))?;
    let source = match job.source_kind.as_str() {
        "lavfi" => Source::Lavfi(job.source.clone()),
        _ => Source::File(job.source.clone().into()),
    };
    let extras = sidecars::read_extras(&state.cfg.data_dir, &job.id).await?;
    let watermarked = !job.fill_ladder
        && crate::repo::watermarks::is_watermarked(&state.db, &job.asset)
            .await
            .map_err(|e| format!("reading the title: {e}"))?;
    let spec = Spec {
        watermark: watermarked.then_some(state.cfg.watermark_strength),
        fill_ladder: job.fill_ladder,
        // A creative plays between titles: as loud as they are meant to be.
        loudness_lufs: job.fill_ladder.then_some(state.cfg.ads_loudness_lufs),
        source,
        out_dir: work.to_path_buf(),
        ladder: state.cfg.ladder.clone(),
        preset: state.cfg.preset.clone(),
        segment_secs: state.cfg.segment_secs,
        // A creative is made in every codec the titles it goes into use.
        extra_codecs: if job.fill_ladder {
            state
                .cfg
                .ads_creative_codecs
                .iter()
                .filter_map(|c| transcode::VideoCodec::parse(c))
                .collect()
        } else {
            extras.codecs.clone()
        },
        extra_audio: extras
            .audio
            .iter()
            .map(|s| ExtraAudio {
                language: s.language.clone(),
                path: s.path.clone(),
            })
            .collect(),
    };
    let started = Instant::now();
    let pool = state.db.clone();
    let job_id = job.id.clone();
    let stop2 = stop.clone();
    let handle = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut last = Instant::now();
        let mut progress = |p: f64| {
            if last.elapsed() >= Duration::from_millis(500) {
                last = Instant::now();
                let _ = handle.block_on(jobs::set_progress(&pool, &job_id, p));
            }
        };
        transcode::transcode(&spec, &mut progress, &stop2)
    })
    .await
    .map_err(|e| format!("transcoder crashed: {e}"))?
    .map_err(|e| e.to_string())?;
    let wall = started.elapsed().as_secs_f64();

    // Index each file, then store it; the manifest goes last.
    let mut tracks: Vec<Track> = Vec::new();
    for w in &outcome.files {
        let path = work.join(&w.file);
        let (index, media_time, init) = tokio::task::spawn_blocking(move || {
            let index = index::index_file(&path).map_err(|e| e.to_string())?;
            let init = index::read_range(&path, index.init_range).map_err(|e| e.to_string())?;
            let cfg = cascade_packager::fmp4::parse_init(&init).map_err(|e| e.to_string())?;
            // Each video segment's first frame is presented at its start,
            // with the audio. Sizes and times stay, so the index holds.
            index::normalize_composition(&path, &index, &cfg).map_err(|e| e.to_string())?;
            // The edit list says which decode tick is presentation zero; TS
            // timestamps and subtitle timestamp maps count from it.
            Ok::<_, String>((index, u64::try_from(cfg.media_time).unwrap_or(0), init))
        })
        .await
        .map_err(|e| format!("indexer crashed: {e}"))?
        .map_err(|e| format!("indexing {}: {e}", w.file))?;
        if w.mark == Some(Variant::B) {
            // The B copy joins its A track, whose init segment it must
            // decode with and whose fragment times it must keep.
            let a = tracks
                .iter_mut()
                .find(|t| t.id == w.track)
                .ok_or_else(|| format!("watermark copy {} without its track", w.file))?;
            let a_init = index::read_range(&work.join(&a.file), a.init)
                .map_err(|e| format!("reading {}: {e}", a.file))?;
            if a_init != init {
                return Err(format!(
                    "watermark copies of {} differ in their init segments",
                    w.track
                ));
            }
            a.marked = Some(MarkedCopy {
                b: true,
                file: w.file.clone(),
                fragments: index.fragments.clone(),
            });
            store::upload_file(
                &state.store,
                &work.join(&w.file),
                &store::object_path(&job.asset, &w.file),
            )
            .await
            .map_err(|e| format!("storing {}: {e}", w.file))?;
            continue;
        }
        let mut track = Track::from_index(&w.track, &w.file, &index);
        track.media_time = media_time;
        if let Some(lang) = &w.language {
            track.language = lang.clone();
        }
        tracks.push(track);
        store::upload_file(
            &state.store,
            &work.join(&w.file),
            &store::object_path(&job.asset, &w.file),
        )
        .await
        .map_err(|e| format!("storing {}: {e}", w.file))?;
    }
    // Subtitles go as they were checked and normalised at upload.
    for (i, s) in extras.subtitles.iter().enumerate() {
        let file = format!("s{i}.vtt");
        let len = tokio::fs::metadata(&s.path)
            .await
            .map_err(|e| format!("subtitles {}: {e}", s.language))?
            .len();
        store::upload_file(
            &state.store,
            &s.path,
            &store::object_path(&job.asset, &file),
        )
        .await
        .map_err(|e| format!("storing {file}: {e}"))?;
        tracks.push(Track::subtitle(&format!("s{i}"), &file, &s.language, len));
    }
    let manifest = AssetManifest::new(&job.asset, tracks);
    manifest.validate().map_err(|e| e.to_string())?;
    state
        .store
        .put(
            &store::object_path(&job.asset, "manifest.json"),
            manifest.to_json().into(),
        )
        .await
        .map_err(|e| format!("storing manifest: {e}"))?;
    jobs::finish(&state.db, job, manifest.duration, outcome.media_secs, wall)
        .await
        .map_err(|e| format!("publishing: {e}"))?;
    tracing::info!(
        job = %job.id,
        asset = %job.asset,
        media_secs = outcome.media_secs,
        wall_secs = wall,
        speed = outcome.media_secs / wall.max(1e-9),
        "transcode done"
    );
    Ok(())
}
