//! Creative conditioning: each creative (a VAST `MediaFile` URL) is
//! fetched once and transcoded like a title, at every rung of the ladder
//! with the same codecs, segment duration and audio layout, into
//! mezzanine that shields and edges cache like any title's. A creative
//! that is not ready yet is skipped by the breaks that want it, never
//! waited for.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::repo::ads as repo;
use crate::repo::assets;
use crate::service::ingest::{self, transcode};
use crate::service::state::State;
use crate::storage::{clock, ids};

/// How long a creative's media may take to arrive.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// A failed creative is tried again after this long.
const RETRY_AFTER_MS: i64 = 10 * 60 * 1000;

/// The id a creative's URL is kept under.
pub(crate) fn creative_id(url: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    d.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The conditioned asset of the creative at `url` if it is ready; else
/// `None`, with its fetch started if nobody has started it.
pub(crate) async fn ready(state: &Arc<State>, url: &str) -> Option<String> {
    let id = creative_id(url);
    match repo::creative_by_id(&state.db, &id).await {
        Ok(Some(c)) if c.status == "ready" => return c.asset_id,
        Ok(Some(c)) if c.status != "failed" => {
            state.ads.creatives.with_label_values(&["not_ready"]).inc();
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "reading a creative");
            return None;
        }
    }
    state.ads.creatives.with_label_values(&["not_ready"]).inc();
    let now = clock::now_ms() as i64;
    match repo::claim_creative(&state.db, &id, url, now, RETRY_AFTER_MS).await {
        Ok(true) => {
            state
                .ads
                .creatives
                .with_label_values(&["fetch_started"])
                .inc();
            let st = state.clone();
            let url = url.to_string();
            tokio::spawn(async move { fetch_and_queue(&st, &id, &url).await });
        }
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "claiming a creative"),
    }
    None
}

/// Fetches a creative's media (within the upload size limit) and queues
/// its transcode.
async fn fetch_and_queue(state: &Arc<State>, id: &str, url: &str) {
    let fail = |why: String| async move {
        tracing::warn!(creative = %id, reason = %why, "a creative could not be fetched");
        state
            .ads
            .creatives
            .with_label_values(&["fetch_failed"])
            .inc();
        let _ = repo::creative_failed(&state.db, id, &why, clock::now_ms() as i64).await;
    };
    let dir = match ingest::incoming_dir(state).await {
        Ok(d) => d,
        Err(e) => return fail(e.message().to_string()).await,
    };
    let path = dir.join(format!("creative-{id}.upload"));
    let limit = state.cfg.max_upload_mib << 20;
    let got = tokio::time::timeout(FETCH_TIMEOUT, async {
        let mut resp = state
            .ads
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetching the media: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the media answered {}", resp.status()));
        }
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("storing the media: {e}"))?;
        let mut size = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("fetching the media: {e}"))?
        {
            size += chunk.len() as u64;
            if size > limit {
                return Err(format!("the media is larger than {} MiB", limit >> 20));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("storing the media: {e}"))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("storing the media: {e}"))?;
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err("the media took too long to arrive".into()));
    if let Err(why) = got {
        let _ = tokio::fs::remove_file(&path).await;
        return fail(why).await;
    }
    let probe_path = path.clone();
    let probe =
        tokio::task::spawn_blocking(move || transcode::probe(&transcode::Source::File(probe_path)))
            .await;
    if !matches!(probe, Ok(Ok(_))) {
        let _ = tokio::fs::remove_file(&path).await;
        return fail("FFmpeg cannot read the media".into()).await;
    }
    let (asset, job) = (ids::short_id(), ids::short_id());
    let source = path.to_string_lossy().to_string();
    let name = format!("Ad creative {id}");
    if let Err(e) = assets::create_ad_asset_and_job(&state.db, &asset, &job, &name, &source).await {
        let _ = tokio::fs::remove_file(&path).await;
        return fail(format!("recording the creative: {e}")).await;
    }
    if let Err(e) = repo::creative_conditioning(&state.db, id, &asset, clock::now_ms() as i64).await
    {
        tracing::error!(error = %e, "recording a creative's asset");
    }
    state
        .ads
        .creatives
        .with_label_values(&["conditioning"])
        .inc();
    state.jobs_notify.notify_one();
    tracing::info!(creative = %id, asset = %asset, "conditioning a creative");
}

/// Every creative and its state.
pub(crate) async fn list(state: &State) -> crate::storage::Result<Vec<repo::Creative>> {
    repo::list_creatives(&state.db).await
}
