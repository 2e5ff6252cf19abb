//! Protecting the tiers behind: at most so many requests in flight to one
//! upstream, and when that many are, live goes before on-demand, and
//! on-demand before pre-warm. A request's priority is its path's (live
//! media, anything else on demand) unless the work that makes it says
//! otherwise ([`with`]: pre-warm and CMCD prefetch at the edge, and a
//! shield serving a fetch an edge marked as pre-warm). Pre-warm is marked
//! on the wire ([`HEADER`]) so the next tier queues it last too.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::oneshot;

/// The request header that marks pre-warm fetches between tiers.
pub const HEADER: &str = "x-cascade-priority";

/// How urgent an upstream fetch is; lower goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Live media and playlists: late is useless.
    Live = 0,
    /// On-demand media: viewers wait for it.
    OnDemand = 1,
    /// Pre-warm and prefetch: nobody waits for it.
    Prewarm = 2,
}

tokio::task_local! {
    static PRIORITY: Priority;
}

impl Priority {
    /// The priority of a path when nothing else says: live media by its
    /// prefix, anything else on demand.
    pub fn of_path(path: &str) -> Priority {
        if path.starts_with("/live-mezz/") || path.starts_with("/live/") {
            Priority::Live
        } else {
            Priority::OnDemand
        }
    }

    /// The name in metrics and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Live => "live",
            Priority::OnDemand => "vod",
            Priority::Prewarm => "prewarm",
        }
    }

    /// The priority a request's [`HEADER`] asks for, if any.
    pub fn from_header(value: Option<&str>) -> Option<Priority> {
        match value? {
            "prewarm" => Some(Priority::Prewarm),
            _ => None,
        }
    }

    /// The priority of the work running now, if it set one.
    pub fn current() -> Option<Priority> {
        PRIORITY.try_with(|p| *p).ok()
    }
}

/// Runs `f` with upstream fetches at priority `p`.
pub async fn with<F: Future>(p: Priority, f: F) -> F::Output {
    PRIORITY.scope(p, f).await
}

/// Runs `f` at the priority the caller runs at (if any): for work handed
/// to a task of its own (task-locals do not cross `tokio::spawn`).
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let p = Priority::current();
    async move {
        match p {
            Some(p) => PRIORITY.scope(p, f).await,
            None => f.await,
        }
    }
}

/// At most `max` fetches in flight to one upstream; the rest wait in a
/// queue per priority (each at most `max_queue` long), served best first.
pub struct Limiter {
    name: String,
    max: usize,
    max_queue: usize,
    state: Mutex<State>,
    metrics: LimiterMetrics,
}

struct State {
    in_flight: usize,
    queues: [VecDeque<oneshot::Sender<()>>; 3],
}

/// Gauges and counters of every limiter of a role.
#[derive(Clone)]
pub struct LimiterMetrics {
    waiting: IntGaugeVec,
    in_flight: IntGaugeVec,
    refused: IntCounterVec,
}

impl LimiterMetrics {
    /// Registers them with a role's registry.
    pub fn register(registry: &prometheus::Registry) -> LimiterMetrics {
        let waiting = IntGaugeVec::new(
            Opts::new(
                "upstream_waiting",
                "Fetches waiting for an upstream's concurrency limit, by upstream and priority",
            ),
            &["upstream", "priority"],
        )
        .expect("static metric definition");
        let in_flight = IntGaugeVec::new(
            Opts::new("upstream_in_flight", "Fetches in flight, by upstream"),
            &["upstream"],
        )
        .expect("static metric definition");
        let refused = IntCounterVec::new(
            Opts::new(
                "upstream_refused_total",
                "Fetches refused because an upstream's queue was full, by upstream and priority",
            ),
            &["upstream", "priority"],
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(waiting.clone()));
        let _ = registry.register(Box::new(in_flight.clone()));
        let _ = registry.register(Box::new(refused.clone()));
        LimiterMetrics {
            waiting,
            in_flight,
            refused,
        }
    }
}

/// A fetch's place under the limit; the next waiter goes when it drops.
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.name)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter for the upstream `name`.
    pub fn new(name: &str, max: usize, metrics: LimiterMetrics) -> Arc<Limiter> {
        Arc::new(Limiter {
            name: name.to_string(),
            max: max.max(1),
            max_queue: max.max(1) * 8,
            state: Mutex::new(State {
                in_flight: 0,
                queues: Default::default(),
            }),
            metrics,
        })
    }

    /// Waits for a place at priority `p`; `None` when that priority's
    /// queue is full (the upstream is saturated: fail now rather than
    /// queue without end).
    pub async fn acquire(self: &Arc<Self>, p: Priority) -> Option<Permit> {
        let rx = {
            let mut st = self.state.lock().ok()?;
            if st.in_flight < self.max {
                st.in_flight += 1;
                self.metrics
                    .in_flight
                    .with_label_values(&[&self.name])
                    .set(st.in_flight as i64);
                return Some(Permit {
                    limiter: self.clone(),
                });
            }
            let q = &mut st.queues[p as usize];
            if q.len() >= self.max_queue {
                self.metrics
                    .refused
                    .with_label_values(&[&self.name, p.name()])
                    .inc();
                return None;
            }
            let (tx, rx) = oneshot::channel();
            q.push_back(tx);
            self.metrics
                .waiting
                .with_label_values(&[&self.name, p.name()])
                .inc();
            Waiting {
                rx: Some(rx),
                limiter: self.clone(),
                priority: p,
            }
        };
        let mut waiting = rx;
        let granted = match waiting.rx.as_mut() {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        // A grant hands over the releasing fetch's place as it is.
        waiting.rx = None;
        granted.then(|| Permit {
            limiter: self.clone(),
        })
    }

    /// Hands a freed place to the best waiter still waiting, or frees it.
    fn release(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        for q in st.queues.iter_mut() {
            while let Some(tx) = q.pop_front() {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        st.in_flight = st.in_flight.saturating_sub(1);
        self.metrics
            .in_flight
            .with_label_values(&[&self.name])
            .set(st.in_flight as i64);
    }
}

/// A fetch waiting for a place. Dropped before it is granted (its
/// request gave up), it leaves the queue; granted but never taken, it gives
/// the place back.
struct Waiting {
    rx: Option<oneshot::Receiver<()>>,
    limiter: Arc<Limiter>,
    priority: Priority,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.limiter
            .metrics
            .waiting
            .with_label_values(&[&self.limiter.name, self.priority.name()])
            .dec();
        if let Some(mut rx) = self.rx.take() {
            if rx.try_recv().is_ok() {
                self.limiter.release();
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize) -> Arc<Limiter> {
        Limiter::new(
            "shield-1",
            max,
            LimiterMetrics::register(&prometheus::Registry::new()),
        )
    }

    #[tokio::test]
    async fn live_goes_before_on_demand_before_prewarm() {
        let l = limiter(1);
        let first = l.acquire(Priority::OnDemand).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for p in [Priority::Prewarm, Priority::OnDemand, Priority::Live] {
            let (lim, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = lim.acquire(p).await.unwrap();
                order.lock().unwrap().push(p);
                tokio::task::yield_now().await;
                drop(permit);
            }));
            // Each is queued before the next starts.
            while l.state.lock().unwrap().queues[p as usize].is_empty() {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            [Priority::Live, Priority::OnDemand, Priority::Prewarm]
        );
        assert_eq!(l.state.lock().unwrap().in_flight, 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_gone_waiter_is_skipped() {
        let l = limiter(1);
        let held = l.acquire(Priority::Live).await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let l = l.clone();
            waiters.push(tokio::spawn(async move {
                l.acquire(Priority::Prewarm).await.is_some()
            }));
        }
        while l.state.lock().unwrap().queues[2].len() < 8 {
            tokio::task::yield_now().await;
        }
        assert!(l.acquire(Priority::Prewarm).await.is_none(), "queue full");
        // A waiter that gave up is passed over.
        for w in waiters.drain(..4) {
            w.abort();
            let _ = w.await;
        }
        drop(held);
        for w in waiters {
            assert!(w.await.unwrap());
        }
        assert_eq!(l.state.lock().unwrap().in_flight, 0);
    }

    #[tokio::test]
    async fn priority_follows_the_work_and_the_path() {
        assert_eq!(Priority::current(), None);
        let inner = with(Priority::Prewarm, async {
            tokio::spawn(carry(async { Priority::current() }))
                .await
                .unwrap()
        })
        .await;
        assert_eq!(inner, Some(Priority::Prewarm));
        assert_eq!(
            Priority::of_path("/live-mezz/final/v1/3.0.m4s"),
            Priority::Live
        );
        assert_eq!(Priority::of_path("/mezz/abc/v0.mp4"), Priority::OnDemand);
        assert_eq!(
            Priority::from_header(Some("prewarm")),
            Some(Priority::Prewarm)
        );
        assert_eq!(Priority::from_header(Some("live")), None);
    }
}
