//! Reactions at the edge: each viewer within a token bucket, counted per
//! scope in atomic counters, and sent to the origin as one batch per scope
//! per interval. The origin adds batches to the durable totals and pushes
//! the swarm; no viewer ever sees one message per reaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cascade_bus::{Scope, REACTIONS};
use prometheus::{IntCounter, IntCounterVec};

/// Batches kept while the origin cannot be reached; past this the oldest
/// are dropped (and counted).
const MAX_PENDING: usize = 10_000;
/// Batches sent in one call.
const BATCHES_PER_CALL: usize = 500;

/// One scope's counts since the last flush.
pub(crate) struct Counts([AtomicU64; REACTIONS.len()]);

impl Counts {
    /// Adds `n` of reaction `i`.
    pub(crate) fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.0.get(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// A viewer's allowance.
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The edge's reaction counters.
pub(crate) struct Reactions {
    scopes: RwLock<HashMap<Scope, Arc<Counts>>>,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
    per_sec: f64,
    burst: f64,
    pending: Mutex<Vec<serde_json::Value>>,
    node: String,
    /// Makes batch ids unique across restarts of this edge.
    nonce: String,
    window: AtomicU64,
    pub(crate) accepted: IntCounter,
    pub(crate) refused: IntCounterVec,
    pub(crate) dropped_batches: IntCounter,
}

impl Reactions {
    pub(crate) fn new(
        node: &str,
        per_sec: u32,
        burst: u32,
        accepted: IntCounter,
        refused: IntCounterVec,
        dropped_batches: IntCounter,
    ) -> Reactions {
        Reactions {
            scopes: RwLock::new(HashMap::new()),
            buckets: moka::sync::Cache::builder()
                .max_capacity(2_000_000)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            pending: Mutex::new(Vec::new()),
            node: node.to_string(),
            nonce: format!("{:x}", cascade_serve::unix_now_ms()),
            window: AtomicU64::new(0),
            accepted,
            refused,
            dropped_batches,
        }
    }

    /// The counters of a scope.
    pub(crate) fn counts(&self, scope: &Scope) -> Arc<Counts> {
        if let Some(c) = read(&self.scopes).get(scope) {
            return c.clone();
        }
        write(&self.scopes)
            .entry(scope.clone())
            .or_insert_with(|| Arc::new(Counts(Default::default())))
            .clone()
    }

    /// A viewer's bucket (shared by all of that viewer's connections).
    pub(crate) fn bucket(&self, viewer: &str) -> Arc<Mutex<Bucket>> {
        self.buckets.get_with(viewer.to_string(), || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                at: Instant::now(),
            }))
        })
    }

    /// Takes `n` reactions from a viewer's allowance; false when over it
    /// (none of the `n` is counted then).
    pub(crate) fn allow(&self, bucket: &Mutex<Bucket>, n: u32, now: Instant) -> bool {
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= f64::from(n) {
            b.tokens -= f64::from(n);
            true
        } else {
            false
        }
    }

    /// Takes every scope's counts into batches waiting to go.
    fn take(&self) {
        let window = self.window.fetch_add(1, Ordering::Relaxed);
        let mut batches = Vec::new();
        for (scope, counts) in read(&self.scopes).iter() {
            let mut by_name = serde_json::Map::new();
            for (name, c) in REACTIONS.iter().zip(counts.0.iter()) {
                let n = c.swap(0, Ordering::Relaxed);
                if n > 0 {
                    by_name.insert((*name).to_string(), n.into());
                }
            }
            if !by_name.is_empty() {
                batches.push(serde_json::json!({
                    "id": format!("{}:{}:{}:{}", self.node, self.nonce, scope.key(), window),
                    "scope": scope.key(),
                    "counts": by_name,
                }));
            }
        }
        if batches.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(batches);
        if pending.len() > MAX_PENDING {
            let over = pending.len() - MAX_PENDING;
            pending.drain(..over);
            self.dropped_batches.inc_by(over as u64);
            tracing::error!(
                dropped = over,
                "reaction batches dropped: the origin has not taken them"
            );
        }
    }
}

/// Every `every`: takes the counts and sends what waits to the origin;
/// what the origin did not take is sent again with the same ids.
pub(crate) async fn run_flusher(
    reactions: Arc<Reactions>,
    origin: String,
    fleet_token: String,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let url = format!("{}/api/v1/fleet/reactions", origin.trim_end_matches('/'));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        reactions.take();
        loop {
            let batch: Vec<serde_json::Value> = {
                let p = reactions.pending.lock().unwrap_or_else(|e| e.into_inner());
                p.iter().take(BATCHES_PER_CALL).cloned().collect()
            };
            if batch.is_empty() {
                break;
            }
            let sent = client
                .post(&url)
                .bearer_auth(&fleet_token)
                .json(&serde_json::json!({ "batches": batch }))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let mut p = reactions.pending.lock().unwrap_or_else(|e| e.into_inner());
                    let n = batch.len().min(p.len());
                    p.drain(..n);
                }
                Ok(r) if r.status().is_client_error() => {
                    // Refused as malformed: sending it again cannot help.
                    tracing::error!(status = %r.status(), "origin refused reaction batches; dropped");
                    let mut p = reactions.pending.lock().unwrap_or_else(|e| e.into_inner());
                    let n = batch.len().min(p.len());
                    p.drain(..n);
                    reactions.dropped_batches.inc_by(n as u64);
                }
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "reaction batches not taken; will retry");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reaction batches not sent; will retry");
                    break;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reactions() -> Reactions {
        Reactions::new(
            "e1",
            10,
            20,
            IntCounter::new("a", "a").unwrap(),
            IntCounterVec::new(prometheus::Opts::new("b", "b"), &["r"]).unwrap(),
            IntCounter::new("c", "c").unwrap(),
        )
    }

    #[test]
    fn a_viewer_gets_the_burst_then_the_rate() {
        let r = reactions();
        let b = r.bucket("v");
        let t0 = Instant::now();
        assert!(r.allow(&b, 20, t0));
        assert!(!r.allow(&b, 1, t0));
        assert!(r.allow(&b, 5, t0 + Duration::from_millis(500)));
        assert!(!r.allow(&b, 1, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn counts_become_one_batch_per_scope_and_reset() {
        let r = reactions();
        let s = Scope::Live("final".into());
        r.counts(&s).add(0, 3);
        r.counts(&s).add(1, 2);
        r.take();
        r.take();
        let p = r.pending.lock().unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["counts"]["clap"], 3);
        assert_eq!(p[0]["counts"]["fire"], 2);
        assert_eq!(p[0]["scope"], "live/final");
    }
}
