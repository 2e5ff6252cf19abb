//! The in-process bus of `cascade dev`: a bounded log of stored events and
//! two broadcast channels. Same contract as JetStream, in one process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::{
    check_filter, check_publish, subject_matches, Bus, BusError, Event, Events, Follow, Replay,
    NOTICE_PREFIX, STORED_PREFIX,
};

/// Events a follower may be behind before it must re-read the log.
const CHANNEL_CAPACITY: usize = 4096;
/// How long a deduplication id is remembered (as JetStream's window).
const DEDUPE_WINDOW: Duration = Duration::from_secs(120);

/// The in-process bus. Cloning shares it.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus").finish_non_exhaustive()
    }
}

struct Inner {
    log: Mutex<Log>,
    stored: broadcast::Sender<Event>,
    notices: broadcast::Sender<Event>,
}

struct Log {
    last: u64,
    events: VecDeque<(Instant, Event)>,
    max_events: usize,
    max_age: Duration,
    dedupe: HashMap<String, (u64, Instant)>,
}

impl MemoryBus {
    /// A bus keeping at most `max_events` stored events, none older than
    /// `max_age`.
    pub fn new(max_events: usize, max_age: Duration) -> MemoryBus {
        MemoryBus {
            inner: Arc::new(Inner {
                log: Mutex::new(Log {
                    last: 0,
                    events: VecDeque::new(),
                    max_events: max_events.max(1),
                    max_age,
                    dedupe: HashMap::new(),
                }),
                stored: broadcast::channel(CHANNEL_CAPACITY).0,
                notices: broadcast::channel(CHANNEL_CAPACITY).0,
            }),
        }
    }

    /// The process's in-process bus called `name`: every caller of the
    /// same name in this process shares it (the roles of `cascade dev`).
    pub fn named(name: &str) -> MemoryBus {
        static BUSES: std::sync::OnceLock<Mutex<HashMap<String, MemoryBus>>> =
            std::sync::OnceLock::new();
        let mut buses = BUSES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        buses
            .entry(name.to_string())
            .or_insert_with(|| MemoryBus::new(100_000, Duration::from_secs(24 * 3600)))
            .clone()
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock leaves the log consistent (every
        // change is a single push or pop), so a poisoned lock is used as is.
        self.inner.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Log {
    fn prune(&mut self, now: Instant) {
        while self.events.len() > self.max_events
            || self
                .events
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.max_age)
        {
            self.events.pop_front();
        }
        if self.dedupe.len() > 10_000 {
            self.dedupe
                .retain(|_, (_, at)| now.duration_since(*at) < DEDUPE_WINDOW);
        }
    }

    fn after<'a>(&'a self, filter: &'a str, after: u64) -> impl Iterator<Item = &'a Event> + 'a {
        // Sequences are dense in the log, so the start is found by offset.
        let first = self.events.front().map_or(u64::MAX, |(_, e)| e.seq);
        let skip = after.saturating_add(1).saturating_sub(first) as usize;
        self.events
            .iter()
            .skip(skip)
            .map(|(_, e)| e)
            .filter(move |e| e.seq > after && subject_matches(filter, &e.subject))
    }
}

#[async_trait::async_trait]
impl Bus for MemoryBus {
    async fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        dedupe: Option<&str>,
    ) -> Result<u64, BusError> {
        check_publish(STORED_PREFIX, subject, &payload)?;
        let now = Instant::now();
        let mut log = self.log();
        if let Some(id) = dedupe {
            if let Some((seq, at)) = log.dedupe.get(id) {
                if now.duration_since(*at) < DEDUPE_WINDOW {
                    return Ok(*seq);
                }
            }
        }
        log.last += 1;
        let event = Event {
            seq: log.last,
            subject: subject.to_string(),
            payload,
        };
        if let Some(id) = dedupe {
            log.dedupe.insert(id.to_string(), (event.seq, now));
        }
        log.events.push_back((now, event.clone()));
        log.prune(now);
        let seq = event.seq;
        // Sent under the lock, so that followers see sequence order.
        let _ = self.inner.stored.send(event);
        Ok(seq)
    }

    async fn notify(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        check_publish(NOTICE_PREFIX, subject, &payload)?;
        let _ = self.inner.notices.send(Event {
            seq: 0,
            subject: subject.to_string(),
            payload,
        });
        Ok(())
    }

    async fn follow(&self, filter: &str, after: Option<u64>) -> Result<Follow, BusError> {
        check_filter(STORED_PREFIX, filter)?;
        let (from, backlog, rx) = {
            let log = self.log();
            let after = after.unwrap_or(log.last);
            let backlog: VecDeque<Event> = log.after(filter, after).cloned().collect();
            (after + 1, backlog, self.inner.stored.subscribe())
        };
        let state = FollowState {
            bus: self.clone(),
            filter: filter.to_string(),
            last: from - 1,
            backlog,
            rx,
        };
        let events = futures::stream::unfold(state, |mut s| async move {
            let next = s.next().await;
            Some((next, s))
        });
        Ok(Follow {
            from,
            events: Box::pin(events),
        })
    }

    async fn notices(&self, filter: &str) -> Result<Events, BusError> {
        check_filter(NOTICE_PREFIX, filter)?;
        let filter = filter.to_string();
        let rx = self.inner.notices.subscribe();
        let events = futures::stream::unfold((rx, filter), |(mut rx, filter)| async move {
            loop {
                match rx.recv().await {
                    Ok(e) if subject_matches(&filter, &e.subject) => {
                        return Some((Ok(e), (rx, filter)))
                    }
                    Ok(_) => {}
                    // Notices are aggregates: a slow listener skips to the
                    // newest rather than failing.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Box::pin(events))
    }

    async fn replay(&self, filter: &str, after: u64, limit: usize) -> Result<Replay, BusError> {
        check_filter(STORED_PREFIX, filter)?;
        let log = self.log();
        let mut events: Vec<Event> = log.after(filter, after).take(limit + 1).cloned().collect();
        let truncated = events.len() > limit;
        events.truncate(limit);
        Ok(Replay { events, truncated })
    }

    async fn last_seq(&self) -> Result<u64, BusError> {
        Ok(self.log().last)
    }
}

struct FollowState {
    bus: MemoryBus,
    filter: String,
    last: u64,
    backlog: VecDeque<Event>,
    rx: broadcast::Receiver<Event>,
}

impl FollowState {
    async fn next(&mut self) -> Result<Event, BusError> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                self.last = e.seq;
                return Ok(e);
            }
            match self.rx.recv().await {
                Ok(e) if e.seq > self.last && subject_matches(&self.filter, &e.subject) => {
                    self.last = e.seq;
                    return Ok(e);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Re-read what was missed from the log; past retention
                    // it is gone, as with JetStream.
                    let log = self.bus.log();
                    self.backlog = log.after(&self.filter, self.last).cloned().collect();
                    self.rx = self.bus.inner.stored.subscribe();
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(BusError::Unavailable("the bus was dropped".into()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_PAYLOAD;
    use futures::StreamExt;

    fn bus() -> MemoryBus {
        MemoryBus::new(1000, Duration::from_secs(3600))
    }

    #[tokio::test]
    async fn followers_get_stored_events_in_order_from_where_they_were() {
        let bus = bus();
        let a = bus
            .publish("cascade.rt.live.a", "1".into(), None)
            .await
            .unwrap();
        bus.publish("cascade.rt.live.b", "x".into(), None)
            .await
            .unwrap();
        let mut f = bus.follow("cascade.rt.live.a", Some(0)).await.unwrap();
        assert_eq!(f.from, 1);
        let b = bus
            .publish("cascade.rt.live.a", "2".into(), None)
            .await
            .unwrap();
        let got: Vec<u64> = (&mut f.events)
            .take(2)
            .map(|e| e.unwrap().seq)
            .collect()
            .await;
        assert_eq!(got, vec![a, b]);
        let replay = bus.replay("cascade.rt.live.a", a, 10).await.unwrap();
        assert_eq!(replay.events.len(), 1);
        assert_eq!(replay.events[0].payload, Bytes::from("2"));
        assert!(!replay.truncated);
    }

    #[tokio::test]
    async fn a_duplicate_id_is_stored_once() {
        let bus = bus();
        let a = bus
            .publish("cascade.rt.x", "1".into(), Some("id-1"))
            .await
            .unwrap();
        let b = bus
            .publish("cascade.rt.x", "1".into(), Some("id-1"))
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(bus.last_seq().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_lagging_follower_reads_what_it_missed_from_the_log() {
        let bus = bus();
        let mut f = bus.follow("cascade.rt.>", None).await.unwrap();
        for i in 0..(CHANNEL_CAPACITY + 10) {
            bus.publish("cascade.rt.x", i.to_string().into(), None)
                .await
                .unwrap();
        }
        // The log keeps 1000: the follower resumes within it, in order.
        let mut prev = 0;
        for _ in 0..1000 {
            let e = f.events.next().await.unwrap().unwrap();
            assert!(e.seq > prev);
            prev = e.seq;
        }
        assert_eq!(prev, (CHANNEL_CAPACITY + 10) as u64);
    }

    #[tokio::test]
    async fn bad_subjects_and_large_payloads_are_refused() {
        let bus = bus();
        assert!(matches!(
            bus.publish("other.x", "1".into(), None).await,
            Err(BusError::BadSubject(_))
        ));
        assert!(matches!(
            bus.publish("cascade.rt.a b", "1".into(), None).await,
            Err(BusError::BadSubject(_))
        ));
        assert!(matches!(
            bus.notify("cascade.rt.x", "1".into()).await,
            Err(BusError::BadSubject(_))
        ));
        assert!(matches!(
            bus.publish("cascade.rt.x", vec![0; MAX_PAYLOAD + 1].into(), None)
                .await,
            Err(BusError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn notices_reach_listeners_and_are_not_stored() {
        let bus = bus();
        let mut n = bus.notices("cascade.now.live.*").await.unwrap();
        bus.notify("cascade.now.live.a", "c".into()).await.unwrap();
        let e = n.next().await.unwrap().unwrap();
        assert_eq!((e.seq, e.payload), (0, Bytes::from("c")));
        assert_eq!(bus.last_seq().await.unwrap(), 0);
    }
}
