//! Live to on-demand: when a live event ends, its segments (in the media
//! store since they completed) become a title in the catalog, with no
//! re-transcode. Each track's segments are joined into one mezzanine file:
//! the init segment, then one fragment per segment (its parts' samples
//! merged, times rebased to start at zero), indexed like an upload.
//!
//! Segments of the event's last encoder configuration are used (an event
//! whose encoder changed resolution mid-way keeps its last stretch).

use std::sync::Arc;

use bytes::Bytes;
use cascade_packager::cmaf::{fragment, split_fragments, OutSample};
use cascade_packager::fmp4::{composition_shift, parse_fragment, parse_init, shift_composition};
use cascade_packager::{index_bytes, AssetManifest, BoxHeader, Track, TrackKind};
use tokio::sync::mpsc;

use crate::repo::{assets, catalog, channels};
use crate::service::live_media::{live_object, ChannelMedia};
use crate::service::state::State;
use crate::storage::{ids, objects};

/// Records every event that ends, one at a time.
pub(crate) async fn run(state: Arc<State>, mut rx: mpsc::UnboundedReceiver<Arc<ChannelMedia>>) {
    while let Some(media) = rx.recv().await {
        match record(&state, &media).await {
            Ok(Some(asset)) => tracing::info!(
                channel = media.channel,
                event = media.event,
                asset,
                "live event recorded as a title"
            ),
            Ok(None) => tracing::info!(channel = media.channel, "live event too short to record"),
            Err(e) => tracing::warn!(channel = media.channel, error = %e, "recording a live event"),
        }
    }
}

async fn record(state: &State, media: &ChannelMedia) -> anyhow::Result<Option<String>> {
    // Every completed segment first reaches the store.
    media.settled(std::time::Duration::from_secs(60)).await;
    let m = media
        .manifest()
        .ok_or_else(|| anyhow::anyhow!("no manifest"))?;
    let stored = media.stored();
    let Some(&(_, generation)) = stored.last() else {
        return Ok(None);
    };
    // Every track from the first segment all of them have.
    let from = m.tracks.iter().map(|t| t.first_msn).max().unwrap_or(0);
    let segments: Vec<u64> = stored
        .iter()
        .filter(|(msn, g)| *g == generation && *msn >= from)
        .map(|(msn, _)| *msn)
        .collect();
    if segments.is_empty() {
        return Ok(None);
    }
    let Some(channel) = channels::by_name(&state.db, &m.channel).await? else {
        return Ok(None);
    };
    let asset = ids::new_id();
    // The event id ends with its start, in Unix milliseconds.
    let when = media
        .event
        .rsplit('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| {
            let t = cascade_packager::live::iso_time(ms);
            format!(" {} {} UTC", &t[..10], &t[11..16])
        })
        .unwrap_or_default();
    let meta = catalog::UploadMeta {
        name: format!("{} (recorded{})", channel.title, when),
        synopsis: channel.synopsis.clone(),
        year: None,
        genres: vec!["live".into()],
        languages: vec![],
        premium: channel.premium,
    };
    let geo = cascade_geo::CountryRule {
        allow: split(&channel.allow_countries),
        deny: split(&channel.deny_countries),
    };
    assets::create_recording(&state.db, &asset, &meta, &geo).await?;
    match build(state, media, &asset, generation, &segments, &m.tracks).await {
        Ok(duration) => {
            assets::set_ready(&state.db, &asset, duration).await?;
            // The recording has its own copy; the event's objects go.
            delete_prefix(state, &format!("live/{}/{}", media.channel, media.event)).await;
            Ok(Some(asset))
        }
        Err(e) => {
            objects::delete_asset(&state.store, &asset).await;
            let _ = assets::set_failed(&state.db, &asset, &e.to_string()).await;
            Err(e)
        }
    }
}

/// Writes each track's file and the asset manifest; answers the duration.
async fn build(
    state: &State,
    media: &ChannelMedia,
    asset: &str,
    generation: u32,
    segments: &[u64],
    tracks: &[cascade_packager::live::LiveTrack],
) -> anyhow::Result<f64> {
    let mut out = Vec::new();
    // Video starts at zero; audio is shifted by the same time.
    let mut origin_secs: Option<f64> = None;
    let mut ordered: Vec<&cascade_packager::live::LiveTrack> = tracks.iter().collect();
    ordered.sort_by_key(|t| t.kind != TrackKind::Video);
    for t in ordered {
        let get = |file: String| {
            let path = live_object(&media.channel, &media.event, &file);
            async move {
                let r = state.store.get(&path).await?;
                r.bytes().await
            }
        };
        let init = get(format!("{}/init-{generation}.mp4", t.id)).await?;
        let cfg = parse_init(&init)?;
        let mut file = init.to_vec();
        let mut fragments = Vec::with_capacity(segments.len());
        let mut origin: Option<u64> = None;
        for (i, msn) in segments.iter().enumerate() {
            let seg = get(format!("{}/{msn}.m4s", t.id)).await?;
            let mut samples = Vec::new();
            for part in split_fragments(&seg)? {
                for s in parse_fragment(&cfg, part)? {
                    let data = part
                        .get(s.offset..s.offset + s.size)
                        .ok_or_else(|| anyhow::anyhow!("a sample outside its part"))?;
                    samples.push((s, data));
                }
            }
            let Some(first) = samples.first() else {
                continue;
            };
            let base = *origin.get_or_insert_with(|| match origin_secs {
                Some(secs) => (secs * f64::from(cfg.timescale)) as u64,
                None => first.0.dts,
            });
            if t.kind == TrackKind::Video && origin_secs.is_none() {
                origin_secs = Some(base as f64 / f64::from(cfg.timescale));
            }
            let out_samples: Vec<OutSample<'_>> = samples
                .iter()
                .map(|(s, data)| OutSample {
                    duration: s.duration,
                    cts_offset: i32::try_from(s.cts_offset).unwrap_or(0),
                    keyframe: s.keyframe,
                    data,
                })
                .collect();
            let dts = first.0.dts.saturating_sub(base);
            let frag = fragment(u32::try_from(i + 1).unwrap_or(u32::MAX), dts, &out_samples)?;
            fragments.push(frag);
        }
        // As for uploads: each video segment's first frame is presented at
        // its decode time.
        if t.kind == TrackKind::Video {
            if let Some(first) = fragments.first() {
                let shift = composition_shift(&cfg, first)?;
                if shift > 0 {
                    for f in &mut fragments {
                        let moof_len = BoxHeader::parse(f)?
                            .size
                            .ok_or_else(|| anyhow::anyhow!("moof without a size"))?;
                        let moof_len = usize::try_from(moof_len)?.min(f.len());
                        shift_composition(&mut f[..moof_len], shift)?;
                    }
                }
            }
        }
        for f in fragments {
            file.extend_from_slice(&f);
        }
        let index = index_bytes(&file)?;
        let name = format!("{}.mp4", t.id);
        state
            .store
            .put(
                &objects::object_path(asset, &name),
                Bytes::from(file).into(),
            )
            .await?;
        out.push(Track::from_index(&t.id, &name, &index));
    }
    let manifest = AssetManifest::new(asset, out);
    manifest.validate()?;
    state
        .store
        .put(
            &objects::object_path(asset, "manifest.json"),
            manifest.to_json().into(),
        )
        .await?;
    Ok(manifest.duration)
}

async fn delete_prefix(state: &State, prefix: &str) {
    use futures::StreamExt;
    let prefix = object_store::path::Path::from(prefix);
    let paths: Vec<_> = state
        .store
        .list(Some(&prefix))
        .filter_map(|m| async move { m.ok().map(|m| m.location) })
        .collect()
        .await;
    for p in paths {
        let _ = state.store.delete(&p).await;
    }
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}
