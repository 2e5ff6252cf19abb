//! Each live channel's ingest health (what `cascade live status` shows)
//! and the ingest counters. Kept apart from the listener's side
//! (`service::live`) so that the app state and the channel views can hold
//! and read it without importing the ingest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use prometheus::IntCounterVec;
use serde::Serialize;
use utoipa::ToSchema;

/// Ingest health of the channels being published, by channel name.
pub(crate) struct LiveHealth {
    pub(crate) channels: Mutex<HashMap<String, Health>>,
    pub(crate) refusals: IntCounterVec,
    pub(crate) media_bytes: IntCounterVec,
}

pub(crate) struct Health {
    pub(crate) peer: SocketAddr,
    pub(crate) since: u64,
    pub(crate) started: Instant,
    pub(crate) video_frames: u64,
    pub(crate) keyframes: u64,
    pub(crate) audio_frames: u64,
    pub(crate) bytes: u64,
    pub(crate) last_keyframe: Option<Instant>,
    pub(crate) has_video_config: bool,
    pub(crate) has_audio_config: bool,
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

    /// Whether an encoder publishes to channel `name` now.
    pub(crate) fn publishing(&self, name: &str) -> bool {
        self.channels
            .lock()
            .map(|c| c.contains_key(name))
            .unwrap_or(false)
    }
}
