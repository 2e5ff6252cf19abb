//! The fan-out bus for real-time events: comments, retractions, polls and
//! news flashes (stored, replayable by sequence) and aggregates such as
//! reaction swarms and poll results (notices, never stored).
//!
//! One trait, [`Bus`], two implementations: [`MemoryBus`] in one process
//! (`cascade dev`, unit tests) and [`JetStreamBus`] over NATS JetStream (a
//! fleet of origins and edges). Stored events carry the sequence the bus
//! gave them; a follower that saw sequence `n` asks again from `n` and
//! misses nothing, which is how a viewer's `Last-Event-ID` is honoured.
//!
//! Subjects are NATS subjects (`cascade.rt.live.final`); filters may use
//! `*` (one token) and `>` (the rest), in both implementations.

#![warn(unreachable_pub)]

mod jetstream;
mod memory;
mod scope;
mod subject;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use jetstream::{JetStreamBus, JetStreamConfig};
pub use memory::MemoryBus;
pub use scope::{reaction_index, FlashTarget, Scope, FLASH_FILTER, REACTIONS};
pub use subject::{is_valid_subject, is_valid_token, subject_matches};

/// Stored events live under this prefix (the JetStream stream's subjects).
pub const STORED_PREFIX: &str = "cascade.rt.";
/// Notices (aggregates) live under this prefix; never stored.
pub const NOTICE_PREFIX: &str = "cascade.now.";
/// Largest payload the bus carries.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// One event from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The sequence the bus stored it under; 0 for a notice.
    pub seq: u64,
    /// Where it was published.
    pub subject: String,
    /// What was published (JSON, by convention).
    pub payload: Bytes,
}

/// Events as they arrive.
pub type Events = Pin<Box<dyn Stream<Item = Result<Event, BusError>> + Send>>;

/// A follower of stored events.
pub struct Follow {
    /// Every stored event matching the filter with a sequence at or past
    /// this one is delivered, in order, exactly once.
    pub from: u64,
    /// The events.
    pub events: Events,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow").field("from", &self.from).finish()
    }
}

/// Stored events after a sequence, as [`Bus::replay`] found them.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Oldest first.
    pub events: Vec<Event>,
    /// More matched than the limit; the newest were left out.
    pub truncated: bool,
}

/// Why the bus could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The subject or filter is not one this bus takes.
    #[error("not a valid subject: {0}")]
    BadSubject(String),
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is larger than the bus carries")]
    TooLarge(usize),
    /// The bus server could not be reached or refused; a retry may help.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A follower fell so far behind that events it had not read were
    /// dropped; follow again from the last sequence read.
    #[error("follower fell behind")]
    Lagged,
}

/// The interface both buses offer.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Stores an event under a `cascade.rt.…` subject and returns its
    /// sequence. With `dedupe`, a second publish of the same id within the
    /// bus's duplicate window is not stored again (its first sequence is
    /// returned).
    async fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        dedupe: Option<&str>,
    ) -> Result<u64, BusError>;

    /// Sends a notice under a `cascade.now.…` subject to whoever listens
    /// now; it is not stored.
    async fn notify(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;

    /// Stored events matching `filter`, in sequence order: those after
    /// `after` first (still within retention), then new ones as they come.
    /// With `after` = `None`, only events stored from now on.
    async fn follow(&self, filter: &str, after: Option<u64>) -> Result<Follow, BusError>;

    /// Notices matching `filter` from now on.
    async fn notices(&self, filter: &str) -> Result<Events, BusError>;

    /// Stored events matching `filter` with a sequence after `after`, at
    /// most `limit` of them, oldest first.
    async fn replay(&self, filter: &str, after: u64, limit: usize) -> Result<Replay, BusError>;

    /// The last sequence stored (0 when none).
    async fn last_seq(&self) -> Result<u64, BusError>;
}

/// Checks what every publish must satisfy.
fn check_publish(prefix: &str, subject: &str, payload: &Bytes) -> Result<(), BusError> {
    if !subject.starts_with(prefix) || !is_valid_subject(subject, false) {
        return Err(BusError::BadSubject(subject.to_string()));
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(BusError::TooLarge(payload.len()));
    }
    Ok(())
}

/// Checks a filter.
fn check_filter(prefix: &str, filter: &str) -> Result<(), BusError> {
    if !filter.starts_with(prefix) || !is_valid_subject(filter, true) {
        return Err(BusError::BadSubject(filter.to_string()));
    }
    Ok(())
}

/// The bus a URL names: `nats://host:port[,nats://…]` for JetStream, or
/// `memory://{name}` (and the empty string, `memory://local`) for the
/// in-process bus of that name, shared by every role in this process.
pub async fn connect(
    url: &str,
    mut cfg: JetStreamConfig,
) -> Result<std::sync::Arc<dyn Bus>, BusError> {
    if url.is_empty() {
        return Ok(std::sync::Arc::new(MemoryBus::named("local")));
    }
    if let Some(name) = url.strip_prefix("memory://") {
        return Ok(std::sync::Arc::new(MemoryBus::named(name)));
    }
    if url.starts_with("nats://") || url.starts_with("tls://") {
        cfg.url = url.to_string();
        return Ok(std::sync::Arc::new(JetStreamBus::connect(&cfg).await?));
    }
    Err(BusError::Unavailable(format!(
        "{url:?} is neither nats://… nor memory://…"
    )))
}

/// Whether `url` is one [`connect`] takes (for config checks).
pub fn is_bus_url(url: &str) -> bool {
    url.is_empty()
        || url.starts_with("memory://")
        || url
            .split(',')
            .all(|u| u.starts_with("nats://") || u.starts_with("tls://"))
}
