//! The origin's end of the bus: the bus itself, the ordered outbox that
//! publishes stored events (and waits out a bus that is away), the
//! reactions and poll votes gathered between two pushes, and the counters.
//! Kept apart from the operations (`service::interactive`) so that the
//! shared state can hold it without naming them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cascade_bus::{Bus, REACTIONS};
use prometheus::IntCounterVec;

/// How long a stored event may wait for the bus before it is given up
/// (it is still stored, and in the paginated history).
const OUTBOX_PATIENCE: Duration = Duration::from_secs(600);
/// Stored events waiting for the bus at most.
const OUTBOX_CAPACITY: usize = 100_000;

/// The origin's side of the real-time features.
pub(crate) struct Interactive {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) outbox: tokio::sync::mpsc::Sender<Outgoing>,
    /// Reactions received since the last swarm, per scope key.
    pub(crate) swarm: Mutex<HashMap<String, [u64; REACTIONS.len()]>>,
    /// Polls with votes since their last results notice.
    pub(crate) dirty_polls: Mutex<HashSet<String>>,
    /// Events published, by kind.
    pub(crate) published: IntCounterVec,
    /// Requests refused, by reason.
    pub(crate) refused: IntCounterVec,
}

impl Interactive {
    pub(crate) fn new(
        bus: Arc<dyn Bus>,
        published: IntCounterVec,
        refused: IntCounterVec,
    ) -> Interactive {
        let (outbox, rx) = tokio::sync::mpsc::channel(OUTBOX_CAPACITY);
        tokio::spawn(run_outbox(bus.clone(), published.clone(), rx));
        Interactive {
            outbox,
            bus,
            swarm: Mutex::new(HashMap::new()),
            dirty_polls: Mutex::new(HashSet::new()),
            published,
            refused,
        }
    }
}

/// A stored event waiting for the bus.
pub(crate) struct Outgoing {
    subject: String,
    payload: Bytes,
    id: String,
    kind: &'static str,
    queued: std::time::Instant,
}

impl Outgoing {
    /// An event for `subject`, deduplicated by `id`, counted as `kind`.
    pub(crate) fn new(subject: &str, payload: Bytes, id: &str, kind: &'static str) -> Outgoing {
        Outgoing {
            subject: subject.to_string(),
            payload,
            id: id.to_string(),
            kind,
            queued: std::time::Instant::now(),
        }
    }
}

/// Publishes queued events in order, retrying each until the bus takes
/// it or it has waited [`OUTBOX_PATIENCE`].
pub(crate) async fn run_outbox(
    bus: Arc<dyn Bus>,
    published: IntCounterVec,
    mut rx: tokio::sync::mpsc::Receiver<Outgoing>,
) {
    while let Some(item) = rx.recv().await {
        let mut wait = Duration::from_millis(100);
        loop {
            match bus
                .publish(&item.subject, item.payload.clone(), Some(&item.id))
                .await
            {
                Ok(_) => {
                    published.with_label_values(&[item.kind]).inc();
                    break;
                }
                Err(e) if item.queued.elapsed() < OUTBOX_PATIENCE => {
                    tracing::warn!(subject = %item.subject, error = %e, "publish failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(subject = %item.subject, error = %e, "publish given up; viewers learn of it from the history");
                    break;
                }
            }
        }
    }
}
