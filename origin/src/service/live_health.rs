//! Each live channel's ingest health (what `cascade live status` shows)
//! and the ingest counters. Kept apart from the listener's side
//! (`service::live`) so that the app state and the channel views can hold
//! and read it without importing the ingest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use cascade_live::Role;
use prometheus::IntCounterVec;
use serde::Serialize;
use utoipa::ToSchema;

/// Ingest health of the channels being published, by publication (the
/// channel name, and `{name}/backup` for its backup encoder).
pub(crate) struct LiveHealth {
    pub(crate) channels: Mutex<HashMap<String, Health>>,
    /// Which encoder's media each channel uses now.
    pub(crate) active: Mutex<HashMap<String, Role>>,
    pub(crate) refusals: IntCounterVec,
    pub(crate) media_bytes: IntCounterVec,
    pub(crate) failovers: IntCounterVec,
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
    /// The address of the encoder whose media is used.
    encoder: String,
    /// `primary` or `backup`: which encoder that is.
    role: &'static str,
    /// The other encoder's address, when both publish.
    standby: Option<String>,
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
    /// CMAF parts published for the channel (all tracks).
    pub(crate) parts_published: u64,
    /// Frames dropped because the channel's segmenter fell behind.
    pub(crate) dropped_frames: u64,
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
        let failovers = IntCounterVec::new(
            prometheus::Opts::new(
                "origin_live_failovers_total",
                "Times a channel's standby encoder took over, by channel",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(failovers.clone()))?;
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(media_bytes.clone()))?;
        Ok(LiveHealth {
            channels: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            refusals,
            media_bytes,
            failovers,
        })
    }

    /// The ingest of channel `name`, if an encoder is publishing.
    pub(crate) fn status(&self, name: &str) -> Option<IngestStatus> {
        let role = self.active.lock().ok()?.get(name).copied()?;
        let other = match role {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
        };
        let channels = self.channels.lock().ok()?;
        let h = channels.get(&publication(name, role))?;
        let standby = channels
            .get(&publication(name, other))
            .map(|o| o.peer.to_string());
        let secs = h.started.elapsed().as_secs_f64().max(0.001);
        Some(IngestStatus {
            encoder: h.peer.to_string(),
            role: role.as_str(),
            standby,
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
            parts_published: 0,
            dropped_frames: 0,
        })
    }

    /// Whether an encoder publishes publication `name` now.
    pub(crate) fn publishing(&self, name: &str) -> bool {
        self.channels
            .lock()
            .map(|c| c.contains_key(name))
            .unwrap_or(false)
    }
}

/// The name of a channel's publication by `role`: the channel's name for
/// its primary encoder, `{name}/backup` for its backup.
pub(crate) fn publication(channel: &str, role: Role) -> String {
    match role {
        Role::Primary => channel.to_string(),
        Role::Backup => format!("{channel}/backup"),
    }
}

/// The channel and role a publication names.
pub(crate) fn parse_publication(name: &str) -> (&str, Role) {
    match name.strip_suffix("/backup") {
        Some(channel) => (channel, Role::Backup),
        None => (name, Role::Primary),
    }
}
