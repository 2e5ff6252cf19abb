//! The heartbeat batcher: each heartbeat is folded into an in-memory map
//! (one entry per profile and title, one per stream) that a flusher writes
//! every `history_flush_ms` as multi-row upserts in one transaction.
//! Thousands of viewers a second cost a few statements a second. Reads of
//! this origin see the unflushed entries too; other origins of a fleet see
//! them after the next flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};

use crate::repo::history::{self, Position};
use crate::storage::db::Db;

#[derive(Default)]
struct Pending {
    positions: Positions,
    /// stream → last heartbeat.
    streams: HashMap<String, i64>,
}

/// Heartbeats waiting for the next flush.
/// profile → asset → latest position.
type Positions = HashMap<String, HashMap<String, Position>>;

/// The heartbeat batcher.
pub(crate) struct Heartbeats {
    pending: Mutex<Pending>,
    /// The positions of the flush in progress: readers see them until the
    /// flush has committed, so there is no moment when a position is
    /// neither pending nor in the database.
    flushing: Mutex<Arc<Positions>>,
    /// Streams whose slot is gone (stopped, replaced, timed out, or taken
    /// over): their heartbeats are answered 410 so the player stops.
    ended: moka::sync::Cache<String, ()>,
    entries: AtomicUsize,
    max_entries: usize,
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) beats: IntCounterVec,
    pub(crate) flush_rows: Histogram,
}

impl Heartbeats {
    pub(crate) fn new(max_entries: usize, registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let beats = IntCounterVec::new(
            Opts::new(
                "origin_heartbeats_total",
                "Stream heartbeats, by outcome (accepted, busy, bad_token, ended, flushed, flush_failed)",
            ),
            &["result"],
        )?;
        let flush_rows = Histogram::with_opts(
            HistogramOpts::new(
                "origin_history_flush_rows",
                "Rows written per watch-history flush",
            )
            .buckets(vec![1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]),
        )?;
        registry.register(Box::new(beats.clone()))?;
        registry.register(Box::new(flush_rows.clone()))?;
        Ok(Heartbeats {
            pending: Mutex::new(Pending::default()),
            flushing: Mutex::new(Arc::new(HashMap::new())),
            ended: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(7 * 24 * 3600))
                .build(),
            entries: AtomicUsize::new(0),
            max_entries: max_entries.max(1),
            wake: tokio::sync::Notify::new(),
            beats,
            flush_rows,
        })
    }

    /// Folds a heartbeat in; false when the buffer is full (the flusher is
    /// behind: the caller answers 503 and the player retries).
    pub(crate) fn record(&self, stream: &str, profile: &str, asset: &str, p: Position) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            return false;
        };
        let per_profile = pending.positions.entry(profile.to_string()).or_default();
        let new_position = !per_profile.contains_key(asset);
        if new_position && self.entries.load(Ordering::Relaxed) >= self.max_entries {
            return false;
        }
        per_profile.insert(asset.to_string(), p);
        let new_stream = pending.streams.insert(stream.to_string(), p.at).is_none();
        let added = usize::from(new_position) + usize::from(new_stream);
        let n = self.entries.fetch_add(added, Ordering::Relaxed) + added;
        if n >= self.max_entries / 2 {
            self.wake.notify_one();
        }
        true
    }

    /// Marks streams as ended.
    pub(crate) fn end(&self, streams: impl IntoIterator<Item = String>) {
        for id in streams {
            self.ended.insert(id, ());
        }
    }

    pub(crate) fn has_ended(&self, stream: &str) -> bool {
        self.ended.contains_key(stream)
    }

    /// The unflushed position of a profile in a title.
    pub(crate) fn pending_position(&self, profile: &str, asset: &str) -> Option<Position> {
        let waiting = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.positions.get(profile)?.get(asset).copied());
        waiting.or_else(|| {
            let flushing = self.flushing.lock().ok()?.clone();
            flushing.get(profile)?.get(asset).copied()
        })
    }

    /// The unflushed positions of a profile (being flushed, then newer).
    pub(crate) fn pending_of(&self, profile: &str) -> HashMap<String, Position> {
        let mut out = self
            .flushing
            .lock()
            .ok()
            .and_then(|f| f.get(profile).cloned())
            .unwrap_or_default();
        if let Some(newer) = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.positions.get(profile).cloned())
        {
            out.extend(newer);
        }
        out
    }

    /// Drops the unflushed positions of a deleted profile (a flush would
    /// otherwise trip on the missing profile).
    pub(crate) fn forget_profile(&self, profile: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.positions.remove(profile);
        }
    }

    /// Takes what is pending for a flush; it stays readable as `flushing`
    /// until [`Heartbeats::flushed`].
    fn take(&self) -> (Arc<Positions>, HashMap<String, i64>) {
        let Ok(mut pending) = self.pending.lock() else {
            return Default::default();
        };
        self.entries.store(0, Ordering::Relaxed);
        let batch = std::mem::take(&mut *pending);
        let positions = Arc::new(batch.positions);
        if let Ok(mut f) = self.flushing.lock() {
            *f = positions.clone();
        }
        (positions, batch.streams)
    }

    fn flushed(&self) {
        if let Ok(mut f) = self.flushing.lock() {
            *f = Arc::new(HashMap::new());
        }
    }

    /// Writes what is pending: positions as multi-row upserts, stream
    /// liveness as `UPDATE … WHERE id IN (…)`, all in one transaction.
    pub(crate) async fn flush(&self, db: &Db) {
        let (positions, streams) = self.take();
        if positions.is_empty() && streams.is_empty() {
            return;
        }
        let rows: Vec<(String, String, Position)> = positions
            .iter()
            .flat_map(|(profile, m)| m.iter().map(move |(a, p)| (profile.clone(), a.clone(), *p)))
            .collect();
        let streams: Vec<(String, i64)> = streams.into_iter().collect();
        let n = rows.len();
        match history::write_batch(db, &rows, &streams).await {
            Ok(gone) => {
                self.end(gone);
                self.beats.with_label_values(&["flushed"]).inc_by(n as u64);
                self.flush_rows.observe(n as f64);
            }
            Err(e) => {
                // One bad row (a profile deleted on another origin) must not
                // lose the batch: write the rows one by one. What still
                // fails is refreshed by the next heartbeat.
                tracing::warn!(error = %e, rows = n, "flushing watch history; retrying row by row");
                let mut written = 0u64;
                for row in &rows {
                    if history::write_batch(db, std::slice::from_ref(row), &[])
                        .await
                        .is_ok()
                    {
                        written += 1;
                    }
                }
                match history::write_batch(db, &[], &streams).await {
                    Ok(gone) => self.end(gone),
                    Err(e) => tracing::error!(error = %e, "recording stream heartbeats"),
                }
                self.beats.with_label_values(&["flushed"]).inc_by(written);
                self.beats
                    .with_label_values(&["flush_failed"])
                    .inc_by(n as u64 - written);
            }
        }
        self.flushed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batcher_keeps_the_latest_position_and_bounds_itself() {
        let reg = prometheus::Registry::new();
        let h = Heartbeats::new(4, &reg).unwrap();
        let at = |position| Position {
            position,
            duration: None,
            at: 1,
        };
        assert!(h.record("s1", "p1", "a1", at(10.0)));
        assert!(h.record("s1", "p1", "a1", at(20.0)));
        assert_eq!(h.pending_position("p1", "a1").unwrap().position, 20.0);
        assert!(h.record("s2", "p1", "a2", at(5.0)));
        // Four entries (two positions, two streams): a new title is refused,
        // an update of a known one is not.
        assert!(!h.record("s3", "p2", "a3", at(1.0)));
        assert!(h.record("s1", "p1", "a1", at(30.0)));
        let (taken, _) = h.take();
        assert_eq!(taken["p1"]["a1"].position, 30.0);
        // While the flush runs, readers still see the position...
        assert_eq!(h.pending_position("p1", "a1").unwrap().position, 30.0);
        assert!(h.record("s1", "p1", "a1", at(31.0)));
        assert_eq!(h.pending_position("p1", "a1").unwrap().position, 31.0);
        assert_eq!(
            h.pending_of("p1")["a1"].position,
            31.0,
            "the newer one wins"
        );
        // ...and after it, the database has it.
        h.flushed();
        assert!(h.pending_position("p1", "a2").is_none());
        assert!(h.record("s3", "p2", "a3", at(1.0)));
    }
}
