//! Live ingest: encoders publish to the origin over RTMP or SRT; each
//! publish is checked against its channel's stream key and its media is
//! handed to the origin, which owns channels and (next) the real-time
//! ladder.
//!
//! The listener knows nothing of channels: an [`Ingest`] (the origin)
//! authorizes keys, receives media and counts refusals.

#![warn(unreachable_pub)]

pub mod es;
pub mod flv;
pub mod frame;
#[cfg(feature = "ladder")]
pub mod ladder;
pub mod rtmp;
pub mod rtmp_cues;
pub mod segmenter;
pub mod srt;
pub mod ts;

use std::net::SocketAddr;

/// Why a publisher was refused or dropped.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// The stream key is not a channel's current key.
    BadKey,
    /// The channel already has a publisher (and this one is not its backup).
    Busy,
    /// A codec we do not take.
    Codec(flv::Unsupported),
    /// Not the protocol, or not within its limits.
    Protocol(String),
    /// Nothing sent for too long.
    Idle,
}

impl Refusal {
    /// A short label for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadKey => "bad_key",
            Refusal::Busy => "busy",
            Refusal::Codec(_) => "codec",
            Refusal::Protocol(_) => "protocol",
            Refusal::Idle => "idle",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::BadKey => f.write_str("the stream key is not valid"),
            Refusal::Busy => f.write_str("the channel already has a publisher"),
            Refusal::Codec(u) => write!(f, "{u}"),
            Refusal::Protocol(why) => f.write_str(why),
            Refusal::Idle => f.write_str("the encoder went silent"),
        }
    }
}

/// Media from a publisher, as it arrived (FLV tag bodies).
#[derive(Debug)]
pub enum Media {
    /// An H.264 tag.
    Video {
        kind: flv::Video,
        timestamp_ms: u32,
        data: bytes::Bytes,
    },
    /// An AAC tag.
    Audio {
        kind: flv::Audio,
        timestamp_ms: u32,
        data: bytes::Bytes,
    },
    /// Stream bytes as they came (SRT's transport stream); the frames they
    /// begin follow as `Video` and `Audio` with empty data (for counting).
    Data(bytes::Bytes),
    /// A frame read out of a transport stream.
    Frame(frame::Frame),
    /// An SCTE-35 splice information section from the stream (untrusted
    /// bytes: the origin parses them).
    Cue(bytes::Bytes),
}

/// Which encoder of a channel a publisher is: channels take a primary and
/// a backup at once; the backup's media is used when the primary fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `rtmp://…/live/{key}`, SRT stream id `publish:{key}`.
    Primary,
    /// `rtmp://…/backup/{key}`, SRT stream id `backup:{key}` (or
    /// `#!::r={key},m=publish,role=backup`).
    Backup,
}

impl Role {
    /// `primary` or `backup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

/// A publish the ingest accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The publication: an opaque name passed back with each call.
    pub name: String,
    /// The SRT passphrase the channel requires, if any (RTMP ignores it).
    pub passphrase: Option<String>,
}

/// What the listener hands publishes to.
#[async_trait::async_trait]
pub trait Ingest: Send + Sync + 'static {
    /// The publication `key` (as encoder `role`) makes, or why not.
    async fn authorize(&self, key: &str, role: Role, peer: SocketAddr) -> Result<Publish, Refusal>;
    /// A publish to `channel` began.
    fn started(&self, channel: &str, peer: SocketAddr);
    /// Media arrived for `channel`.
    fn media(&self, channel: &str, media: Media);
    /// The publish to `channel` ended.
    fn ended(&self, channel: &str);
    /// A connection was refused or dropped.
    fn refused(&self, why: &Refusal);
}
