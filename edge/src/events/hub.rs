//! The edge's side of the bus: one subscription per scope that has
//! viewers here (stored events and notices), fanned out to every viewer's
//! connection through a broadcast channel, with the newest stored events
//! kept for reconnecting viewers; and the board of news flashes, which
//! every viewer and the live playlists read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use cascade_bus::{Bus, Event, FlashTarget, Scope, FLASH_FILTER};
use futures::StreamExt;
use tokio::sync::{broadcast, watch};

/// Messages a viewer may be behind before it is dropped as too slow.
pub(crate) const CHANNEL_CAPACITY: usize = 256;
/// Stored events kept per scope for reconnecting viewers.
const RING: usize = 512;
/// How long a scope's subscription outlives its last viewer (viewers
/// reconnect; a flapping network should not flap subscriptions).
const LINGER: Duration = Duration::from_secs(30);
/// Pause before following again after the bus failed.
const RETRY: Duration = Duration::from_secs(1);

/// One message for viewers, rendered once for all of them.
#[derive(Debug)]
pub(crate) struct Msg {
    /// The bus sequence of a stored event; 0 for a notice.
    pub(crate) seq: u64,
    /// The event's `type` (`comment`, `swarm`, …).
    pub(crate) kind: String,
    /// The event, as JSON.
    pub(crate) json: Bytes,
    /// For a flash: whom it is for, and when it expires (Unix ms).
    pub(crate) flash: Option<(FlashTarget, i64)>,
}

impl Msg {
    fn from_event(e: &Event) -> Option<Msg> {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            flash: Option<FlashHead>,
        }
        #[derive(serde::Deserialize)]
        struct FlashHead {
            target: String,
            expires_at: i64,
        }
        // The bus is ours, but a payload that is not an event is skipped
        // rather than passed on to viewers.
        let head: Head = serde_json::from_slice(&e.payload).ok()?;
        let flash = match head.flash {
            Some(f) => Some((FlashTarget::parse(&f.target)?, f.expires_at)),
            None => None,
        };
        Some(Msg {
            seq: e.seq,
            kind: head.kind,
            json: e.payload.clone(),
            flash,
        })
    }
}

/// Everything real-time at this edge.
pub(crate) struct Hub {
    bus: Arc<dyn Bus>,
    topics: Mutex<HashMap<Scope, Arc<Topic>>>,
    pub(crate) flashes: Arc<FlashBoard>,
    fanout: Fanout,
}

/// How reaction batches reach viewers under load: while the governor slows
/// fan-out, a scope's batches are merged and sent once per `slow_every`
/// (the counts are all there, in fewer messages); comments, polls and
/// flashes are never held back.
#[derive(Clone)]
pub(crate) struct Fanout {
    pub(crate) governor: Arc<crate::governor::Governor>,
    pub(crate) slow_every: Duration,
}

/// Reaction batches held back while fan-out is slowed.
#[derive(Default)]
struct SwarmMerge {
    counts: BTreeMap<String, u64>,
    total: u64,
    /// When the first batch held back arrived.
    since: Option<std::time::Instant>,
    last_sent: Option<std::time::Instant>,
}

/// One scope's subscription and its viewers.
pub(crate) struct Topic {
    pub(crate) scope: Scope,
    pub(crate) tx: broadcast::Sender<Arc<Msg>>,
    /// Messages sent so far (a viewer's lag is this minus what it read).
    pub(crate) sent: AtomicU64,
    ring: Mutex<Ring>,
    viewers: AtomicUsize,
    /// Becomes true once the subscription is made.
    ready: watch::Receiver<bool>,
    fanout: Fanout,
    swarm: Mutex<SwarmMerge>,
}

struct Ring {
    /// Every stored event of the scope with a sequence at or past this is
    /// in `events` or was evicted past `covered_from` (which moves up).
    covered_from: u64,
    /// The last sequence seen.
    last: u64,
    events: VecDeque<Arc<Msg>>,
}

/// A viewer's hold on a topic; the last one gone lets the subscription end.
pub(crate) struct Membership {
    pub(crate) topic: Arc<Topic>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.topic.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    /// A hub on `bus`; starts the flash board.
    pub(crate) fn new(bus: Arc<dyn Bus>, fanout: Fanout) -> Arc<Hub> {
        let flashes = FlashBoard::start(bus.clone());
        Arc::new(Hub {
            bus,
            topics: Mutex::new(HashMap::new()),
            flashes,
            fanout,
        })
    }

    /// Joins a scope's topic, subscribing when this is its first viewer.
    pub(crate) fn join(self: &Arc<Self>, scope: &Scope) -> Membership {
        let mut topics = lock(&self.topics);
        let topic = topics
            .entry(scope.clone())
            .or_insert_with(|| self.start_topic(scope.clone()))
            .clone();
        topic.viewers.fetch_add(1, Ordering::AcqRel);
        Membership { topic }
    }

    /// Scopes subscribed here.
    pub(crate) fn topics(&self) -> usize {
        lock(&self.topics).len()
    }

    /// The bus, for replays past what a topic keeps.
    pub(crate) fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    fn start_topic(self: &Arc<Self>, scope: Scope) -> Arc<Topic> {
        let (ready_tx, ready) = watch::channel(false);
        let topic = Arc::new(Topic {
            scope: scope.clone(),
            tx: broadcast::channel(CHANNEL_CAPACITY).0,
            sent: AtomicU64::new(0),
            ring: Mutex::new(Ring {
                covered_from: u64::MAX,
                last: 0,
                events: VecDeque::new(),
            }),
            viewers: AtomicUsize::new(0),
            ready,
            fanout: self.fanout.clone(),
            swarm: Mutex::new(SwarmMerge::default()),
        });
        tokio::spawn(run_topic(
            Arc::downgrade(self),
            Arc::downgrade(&topic),
            self.bus.clone(),
            ready_tx,
        ));
        topic
    }
}

impl Topic {
    /// Waits until the subscription is made, at most `wait`.
    pub(crate) async fn ready(&self, wait: Duration) -> bool {
        let mut rx = self.ready.clone();
        let ready = tokio::time::timeout(wait, rx.wait_for(|r| *r))
            .await
            .is_ok();
        ready
    }

    /// The newest sequence a viewer is taken to have seen.
    pub(crate) fn head(&self) -> u64 {
        let ring = lock(&self.ring);
        ring.last.max(ring.covered_from.saturating_sub(1))
    }

    /// A new viewer's subscription and the sequence it starts after, taken
    /// together under the ring's lock (stored events are sent under it):
    /// every later event is in the subscription and past the sequence.
    pub(crate) fn subscribe_at_head(&self) -> (broadcast::Receiver<Arc<Msg>>, u64) {
        let ring = lock(&self.ring);
        let head = ring.last.max(ring.covered_from.saturating_sub(1));
        (self.tx.subscribe(), head)
    }

    /// Stored events after `after` from what this edge keeps, or `None`
    /// when it does not reach back that far.
    pub(crate) fn kept_after(&self, after: u64) -> Option<Vec<Arc<Msg>>> {
        let ring = lock(&self.ring);
        if after.saturating_add(1) < ring.covered_from {
            return None;
        }
        Some(
            ring.events
                .iter()
                .filter(|m| m.seq > after)
                .cloned()
                .collect(),
        )
    }

    fn push(&self, msg: Msg) {
        if msg.seq == 0 && msg.kind == "swarm" {
            if let Some(m) = self.swarm(msg) {
                self.sent.fetch_add(1, Ordering::Relaxed);
                let _ = self.tx.send(Arc::new(m));
            }
            return;
        }
        let msg = Arc::new(msg);
        if msg.seq > 0 {
            let mut ring = lock(&self.ring);
            if msg.seq <= ring.last {
                // Already seen (a re-follow overlapping what was read).
                return;
            }
            ring.last = msg.seq;
            ring.events.push_back(msg.clone());
            if ring.events.len() > RING {
                if let Some(old) = ring.events.pop_front() {
                    ring.covered_from = old.seq + 1;
                }
            }
            // Sent under the ring's lock: a viewer that subscribes and then
            // reads the ring sees each event once, in one place or the other.
            self.sent.fetch_add(1, Ordering::Relaxed);
            let _ = self.tx.send(msg);
            return;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(msg);
    }
}

impl Topic {
    /// A reaction batch to send now: this one, or those held back merged
    /// with it once `slow_every` has passed; `None` while holding back.
    fn swarm(&self, msg: Msg) -> Option<Msg> {
        let now = std::time::Instant::now();
        let slowed = self.fanout.governor.slows_fanout();
        let mut st = lock(&self.swarm);
        if !slowed && st.since.is_none() {
            st.last_sent = Some(now);
            return Some(msg);
        }
        #[derive(serde::Deserialize)]
        struct Batch {
            #[serde(default)]
            counts: BTreeMap<String, u64>,
            #[serde(default)]
            total: u64,
        }
        // The origin's batch; one that does not read is passed on as it is.
        let Ok(b) = serde_json::from_slice::<Batch>(&msg.json) else {
            return Some(msg);
        };
        for (k, n) in b.counts {
            *st.counts.entry(k).or_insert(0) += n;
        }
        st.total += b.total;
        let since = *st.since.get_or_insert(now);
        let due = st
            .last_sent
            .is_none_or(|t| now.duration_since(t) >= self.fanout.slow_every);
        if slowed && !due {
            self.fanout.governor.count_fanout_shed();
            return None;
        }
        let merged = serde_json::json!({
            "type": "swarm",
            "scope": self.scope.key(),
            "interval_ms": now.duration_since(st.last_sent.unwrap_or(since)).as_millis() as u64,
            "counts": std::mem::take(&mut st.counts),
            "total": std::mem::take(&mut st.total),
        });
        st.since = None;
        st.last_sent = Some(now);
        Some(Msg {
            seq: 0,
            kind: "swarm".into(),
            json: Bytes::from(merged.to_string()),
            flash: None,
        })
    }
}

/// Follows a scope's stored events and notices until the topic has had no
/// viewers for [`LINGER`]; follows again from the last sequence after the
/// bus fails, so that nothing is skipped.
async fn run_topic(
    hub: Weak<Hub>,
    topic: Weak<Topic>,
    bus: Arc<dyn Bus>,
    ready: watch::Sender<bool>,
) {
    let Some(scope) = topic.upgrade().map(|t| t.scope.clone()) else {
        return;
    };
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        let after = topic.upgrade().and_then(|t| {
            let ring = lock(&t.ring);
            (ring.covered_from != u64::MAX).then_some(ring.last.max(ring.covered_from - 1))
        });
        let follow = bus.follow(&scope.stored_subject(), after).await;
        let notices = bus.notices(&scope.notice_subject()).await;
        let (mut follow, mut notices) = match (follow, notices) {
            (Ok(f), Ok(n)) => (f, n),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(scope = %scope.key(), error = %e, "cannot follow the bus; retrying");
                tokio::time::sleep(RETRY).await;
                if topic.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        if let Some(t) = topic.upgrade() {
            let mut ring = lock(&t.ring);
            if ring.covered_from == u64::MAX {
                ring.covered_from = follow.from;
            }
        }
        let _ = ready.send(true);
        let mut check = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                e = follow.events.next() => match e {
                    Some(Ok(e)) => {
                        let Some(t) = topic.upgrade() else { return };
                        if let Some(m) = Msg::from_event(&e) { t.push(m); }
                    }
                    Some(Err(err)) => {
                        tracing::warn!(scope = %scope.key(), error = %err, "bus follow failed; following again");
                        break;
                    }
                    None => break,
                },
                e = notices.next() => match e {
                    Some(Ok(e)) => {
                        let Some(t) = topic.upgrade() else { return };
                        if let Some(m) = Msg::from_event(&e) { t.push(m); }
                    }
                    Some(Err(_)) | None => break,
                },
                _ = check.tick() => {
                    let Some(t) = topic.upgrade() else { return };
                    if t.viewers.load(Ordering::Acquire) > 0 {
                        idle_since = None;
                        continue;
                    }
                    let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= LINGER {
                        if let Some(h) = hub.upgrade() {
                            let mut topics = lock(&h.topics);
                            // Still unwatched under the lock: no join raced in.
                            if t.viewers.load(Ordering::Acquire) == 0 {
                                topics.remove(&scope);
                                tracing::debug!(scope = %scope.key(), "unsubscribed");
                                return;
                            }
                        } else {
                            return;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// News flashes not expired, by sequence; every edge keeps all of them
/// (they are few), for viewers and for live playlists.
pub(crate) struct FlashBoard {
    active: Mutex<BTreeMap<u64, Arc<Msg>>>,
    /// New flashes (and ends of flashes), for connected viewers.
    pub(crate) tx: broadcast::Sender<Arc<Msg>>,
    last: AtomicU64,
}

impl FlashBoard {
    fn start(bus: Arc<dyn Bus>) -> Arc<FlashBoard> {
        let board = Arc::new(FlashBoard {
            active: Mutex::new(BTreeMap::new()),
            tx: broadcast::channel(CHANNEL_CAPACITY).0,
            last: AtomicU64::new(0),
        });
        tokio::spawn(run_board(Arc::downgrade(&board), bus));
        board
    }

    /// The last flash sequence seen.
    pub(crate) fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Flashes for a viewer in `country` watching `scope`, not expired at
    /// `now_ms`, with a sequence after `after`, oldest first.
    pub(crate) fn for_viewer(
        &self,
        country: Option<&str>,
        scope: &Scope,
        after: u64,
        now_ms: i64,
    ) -> Vec<Arc<Msg>> {
        lock(&self.active)
            .range(after.saturating_add(1)..)
            .map(|(_, m)| m)
            .filter(|m| {
                m.flash
                    .as_ref()
                    .is_some_and(|(t, exp)| *exp > now_ms && t.reaches(country, scope))
            })
            .cloned()
            .collect()
    }

    /// The flashes a live playlist shows a viewer in `country` watching
    /// `channel`.
    pub(crate) fn in_stream(
        &self,
        country: Option<&str>,
        channel: &str,
        now_ms: i64,
    ) -> Vec<cascade_packager::live::StreamFlash> {
        #[derive(serde::Deserialize)]
        struct F {
            id: String,
            text: String,
            priority: String,
            #[serde(default)]
            title_id: Option<String>,
            at: i64,
            expires_at: i64,
        }
        #[derive(serde::Deserialize)]
        struct E {
            flash: F,
        }
        self.for_viewer(country, &Scope::Live(channel.to_string()), 0, now_ms)
            .iter()
            .filter_map(|m| {
                let e: E = serde_json::from_slice(&m.json).ok()?;
                Some(cascade_packager::live::StreamFlash {
                    seq: m.seq,
                    id: e.flash.id,
                    at_ms: u64::try_from(e.flash.at).ok()?,
                    expires_ms: u64::try_from(e.flash.expires_at).ok()?,
                    text: e.flash.text,
                    priority: e.flash.priority,
                    title_id: e.flash.title_id,
                })
            })
            .collect()
    }

    fn add(&self, msg: Msg, now_ms: i64) {
        let Some((_, expires)) = &msg.flash else {
            return;
        };
        let expires = *expires;
        let msg = Arc::new(msg);
        let mut active = lock(&self.active);
        if msg.seq <= self.last.load(Ordering::Acquire) {
            return;
        }
        self.last.store(msg.seq, Ordering::Release);
        // A flash published again (ended early) replaces its first version.
        let id = flash_id(&msg.json);
        active.retain(|_, m| {
            m.flash.as_ref().is_some_and(|(_, e)| *e > now_ms) && flash_id(&m.json) != id
        });
        if expires > now_ms {
            active.insert(msg.seq, msg.clone());
        }
        let _ = self.tx.send(msg);
    }
}

fn flash_id(json: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    Some(v.get("flash")?.get("id")?.as_str()?.to_string())
}

/// Follows every flash stored within the bus's retention, then new ones.
async fn run_board(board: Weak<FlashBoard>, bus: Arc<dyn Bus>) {
    loop {
        let after = board.upgrade().map_or(0, |b| b.last());
        let mut follow = match bus.follow(FLASH_FILTER, Some(after)).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow flashes; retrying");
                tokio::time::sleep(RETRY).await;
                if board.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        while let Some(e) = follow.events.next().await {
            let Some(b) = board.upgrade() else { return };
            match e {
                Ok(e) => {
                    if let Some(m) = Msg::from_event(&e) {
                        b.add(m, cascade_serve::unix_now_ms() as i64);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "flash follow failed; following again");
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swarm(counts: &[(&str, u64)]) -> Msg {
        let counts: BTreeMap<&str, u64> = counts.iter().copied().collect();
        let total: u64 = counts.values().sum();
        Msg {
            seq: 0,
            kind: "swarm".into(),
            json: Bytes::from(
                serde_json::json!({"type": "swarm", "scope": "live/final", "interval_ms": 1000, "counts": counts, "total": total})
                    .to_string(),
            ),
            flash: None,
        }
    }

    fn sent(rx: &mut broadcast::Receiver<Arc<Msg>>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(serde_json::from_slice(&m.json).unwrap_or_default());
        }
        out
    }

    #[tokio::test]
    async fn reaction_batches_are_merged_while_fanout_is_slowed_and_comments_are_not() {
        let metrics = cascade_common::Metrics::new("edge");
        let mut cfg = crate::EdgeConfig {
            capacity_connections: 10,
            ..crate::EdgeConfig::default()
        }
        .governor();
        cfg.policy.hold = Duration::ZERO;
        let governor =
            crate::governor::Governor::new(cfg, &metrics).unwrap_or_else(|e| panic!("{e}"));
        let bus = Arc::new(cascade_bus::MemoryBus::new(100, Duration::from_secs(60)));
        let hub = Hub::new(
            bus,
            Fanout {
                governor: governor.clone(),
                slow_every: Duration::from_millis(300),
            },
        );
        let scope = Scope::parse("live/final").unwrap_or_else(|| panic!("scope"));
        let member = hub.join(&scope);
        let topic = member.topic.clone();
        let mut rx = topic.tx.subscribe();

        // Normal: every batch goes out as it comes.
        topic.push(swarm(&[("clap", 2)]));
        assert_eq!(sent(&mut rx).len(), 1);

        // Fan-out slowed (85% of capacity): batches are held and merged.
        governor.sample(
            crate::overload::Load {
                connections: 9,
                ..Default::default()
            },
            Duration::from_secs(1),
        );
        assert!(governor.slows_fanout());
        topic.push(swarm(&[("clap", 1)]));
        topic.push(swarm(&[("clap", 3), ("wow", 1)]));
        // A comment is never held back.
        topic.push(Msg {
            seq: 7,
            kind: "comment".into(),
            json: Bytes::from_static(b"{\"type\":\"comment\"}"),
            flash: None,
        });
        let now = sent(&mut rx);
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(now[0]["type"], "comment");
        tokio::time::sleep(Duration::from_millis(350)).await;
        topic.push(swarm(&[("wow", 2)]));
        let merged = sent(&mut rx);
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged[0]["counts"]["clap"], 4);
        assert_eq!(merged[0]["counts"]["wow"], 3);
        assert_eq!(merged[0]["total"], 7);
        assert!(merged[0]["interval_ms"].as_u64().unwrap_or(0) >= 300);
    }
}
