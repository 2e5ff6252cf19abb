//! Live ingest at the origin: the [`cascade_live::Ingest`] the RTMP
//! listener hands publishes to. It checks stream keys against channels,
//! keeps each channel's ingest health (what `cascade live status` shows),
//! and counts media and refusals. The real-time ladder that turns this
//! media into CMAF parts is the next step.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cascade_live::{flv, Ingest, Media, Refusal};
use prometheus::IntCounterVec;
use serde::Serialize;
use utoipa::ToSchema;

use crate::repo::channels;
use crate::service::channels::authorize_publish;
use crate::service::state::State;
use crate::storage::{clock, Kind};

/// Ingest health of the channels being published, by channel name.
pub(crate) struct LiveHealth {
    channels: Mutex<HashMap<String, Health>>,
    pub(crate) refusals: IntCounterVec,
    pub(crate) media_bytes: IntCounterVec,
}

struct Health {
    peer: SocketAddr,
    since: u64,
    started: Instant,
    video_frames: u64,
    keyframes: u64,
    audio_frames: u64,
    bytes: u64,
    last_keyframe: Option<Instant>,
    has_video_config: bool,
    has_audio_config: bool,
}

/// A channel's ingest, as operators see it.
#[derive(Serialize, ToSchema)]
pub(crate) struct IngestStatus {
    /// The encoder's address.
    encoder: String,
    /// When it began publishing (Unix seconds).
    since: u64,
    video_frames: u64,
    keyframes: u64,
    audio_frames: u64,
    bytes: u64,
    /// Input bit rate since it began, in kbit/s.
    kbps: u64,
    /// Frames per second since it began.
    fps: f64,
    /// Milliseconds since the last keyframe; none yet if absent.
    last_keyframe_age_ms: Option<u64>,
    /// Whether the H.264 and AAC configurations have arrived.
    video_config: bool,
    audio_config: bool,
}

impl LiveHealth {
    pub(crate) fn new(registry: &prometheus::Registry) -> anyhow::Result<LiveHealth> {
        let refusals = IntCounterVec::new(
            prometheus::Opts::new(
                "origin_live_refusals_total",
                "Live publishers refused or dropped, by reason",
            ),
            &["reason"],
        )?;
        let media_bytes = IntCounterVec::new(
            prometheus::Opts::new(
                "origin_live_media_bytes_total",
                "Live media received from encoders, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(media_bytes.clone()))?;
        Ok(LiveHealth {
            channels: Mutex::new(HashMap::new()),
            refusals,
            media_bytes,
        })
    }

    /// The ingest of channel `name`, if an encoder is publishing.
    pub(crate) fn status(&self, name: &str) -> Option<IngestStatus> {
        let channels = self.channels.lock().ok()?;
        let h = channels.get(name)?;
        let secs = h.started.elapsed().as_secs_f64().max(0.001);
        Some(IngestStatus {
            encoder: h.peer.to_string(),
            since: h.since,
            video_frames: h.video_frames,
            keyframes: h.keyframes,
            audio_frames: h.audio_frames,
            bytes: h.bytes,
            kbps: (h.bytes as f64 * 8.0 / 1000.0 / secs) as u64,
            fps: (h.video_frames as f64 / secs * 10.0).round() / 10.0,
            last_keyframe_age_ms: h.last_keyframe.map(|t| t.elapsed().as_millis() as u64),
            video_config: h.has_video_config,
            audio_config: h.has_audio_config,
        })
    }

    fn publishing(&self, name: &str) -> bool {
        self.channels
            .lock()
            .map(|c| c.contains_key(name))
            .unwrap_or(false)
    }
}

/// The origin's side of the RTMP listener.
pub(crate) struct LiveIngest {
    pub(crate) state: Arc<State>,
}

#[async_trait::async_trait]
impl Ingest for LiveIngest {
    async fn authorize(&self, key: &str, _peer: SocketAddr) -> Result<String, Refusal> {
        let channel = match authorize_publish(&self.state, key).await {
            Ok(c) => c,
            Err(e) if e.kind() == Kind::Unauthorized => return Err(Refusal::BadKey),
            Err(e) => {
                tracing::error!(error = %e, "checking a stream key");
                return Err(Refusal::Protocol(
                    "the origin could not check the key".into(),
                ));
            }
        };
        // One publisher per channel (a backup encoder is the next step).
        if self.state.live.publishing(&channel.name) {
            return Err(Refusal::Busy);
        }
        Ok(channel.name)
    }

    fn started(&self, channel: &str, peer: SocketAddr) {
        if let Ok(mut c) = self.state.live.channels.lock() {
            c.insert(
                channel.to_string(),
                Health {
                    peer,
                    since: clock::now(),
                    started: Instant::now(),
                    video_frames: 0,
                    keyframes: 0,
                    audio_frames: 0,
                    bytes: 0,
                    last_keyframe: None,
                    has_video_config: false,
                    has_audio_config: false,
                },
            );
        }
        tracing::info!(channel, encoder = %peer, "live publish began");
        let (state, name) = (self.state.clone(), channel.to_string());
        tokio::spawn(async move {
            if let Err(e) = channels::set_live(&state.db, &name, true, clock::now() as i64).await {
                tracing::warn!(error = %e, channel = name, "marking a channel live");
            }
        });
    }

    fn media(&self, channel: &str, media: Media) {
        let Ok(mut c) = self.state.live.channels.lock() else {
            return;
        };
        let Some(h) = c.get_mut(channel) else {
            return;
        };
        match &media {
            Media::Video { kind, data, .. } => {
                h.bytes += data.len() as u64;
                self.state
                    .live
                    .media_bytes
                    .with_label_values(&["video"])
                    .inc_by(data.len() as u64);
                match kind {
                    flv::Video::AvcConfig => h.has_video_config = true,
                    flv::Video::Avc { keyframe } => {
                        h.video_frames += 1;
                        if *keyframe {
                            h.keyframes += 1;
                            h.last_keyframe = Some(Instant::now());
                        }
                    }
                    flv::Video::AvcEnd => {}
                }
            }
            Media::Audio { kind, data, .. } => {
                h.bytes += data.len() as u64;
                self.state
                    .live
                    .media_bytes
                    .with_label_values(&["audio"])
                    .inc_by(data.len() as u64);
                match kind {
                    flv::Audio::AacConfig => h.has_audio_config = true,
                    flv::Audio::Aac => h.audio_frames += 1,
                }
            }
        }
    }

    fn ended(&self, channel: &str) {
        if let Ok(mut c) = self.state.live.channels.lock() {
            c.remove(channel);
        }
        tracing::info!(channel, "live publish ended");
        let (state, name) = (self.state.clone(), channel.to_string());
        tokio::spawn(async move {
            if let Err(e) = channels::set_live(&state.db, &name, false, clock::now() as i64).await {
                tracing::warn!(error = %e, channel = name, "marking a channel idle");
            }
        });
    }

    fn refused(&self, why: &Refusal) {
        self.state
            .live
            .refusals
            .with_label_values(&[why.code()])
            .inc();
    }
}
