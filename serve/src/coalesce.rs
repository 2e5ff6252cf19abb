//! Request coalescing: concurrent misses for one key share one upstream
//! fetch. The fetch runs in its own task, so a viewer who hangs up does not
//! cancel it for the others, and it is bounded by a timeout, after which the
//! next request starts a fresh one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};

type Flight<V> = Shared<BoxFuture<'static, Option<V>>>;
/// Flights by key, each with a number of its own, so that a flight's
/// removal never removes a newer one under the same key.
type InFlight<V> = Arc<Mutex<HashMap<String, (u64, Flight<V>)>>>;

/// What keeps a finished fetch joinable: for a response whose body is still
/// streaming in, the end of that body.
pub type Hold<V> = fn(&V) -> Option<BoxFuture<'static, ()>>;

/// Fetches in flight, by key.
pub struct Flights<V: Clone + Send + Sync + 'static> {
    inflight: InFlight<V>,
    timeout: Duration,
    hold: Option<Hold<V>>,
}

/// Whether this caller led the fetch or joined one in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started the fetch.
    Leader,
    /// Joined a fetch already under way.
    Joined,
}

impl<V: Clone + Send + Sync + 'static> Flights<V> {
    /// Flights that give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Flights {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            timeout,
            hold: None,
        }
    }

    /// Flights whose results stay joinable until `hold` of the result ends:
    /// a request that comes while a fetched body still streams in joins it
    /// rather than fetching again.
    pub fn with_hold(timeout: Duration, hold: Hold<V>) -> Self {
        Flights {
            hold: Some(hold),
            ..Flights::new(timeout)
        }
    }

    /// Runs `fetch` for `key` unless a fetch for it is already in flight, in
    /// which case it waits for that one. `None` when the fetch timed out or
    /// its task failed.
    pub async fn run<F>(&self, key: &str, fetch: F) -> (Option<V>, Role)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (flight, role) = {
            let Ok(mut map) = self.inflight.lock() else {
                return (None, Role::Leader);
            };
            match map.get(key) {
                // A flight whose answer is whole (or failed) is over even if
                // its removal has not run yet: joining it would hand its
                // answer, uncacheable as it may be, to a later request.
                Some((_, f)) if !spent(f, self.hold) => (f.clone(), Role::Joined),
                _ => {
                    static GENERATION: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let timeout = self.timeout;
                    let hold = self.hold;
                    // The leader's priority goes with the fetch into its own task.
                    let task =
                        tokio::spawn(crate::priority::carry(tokio::time::timeout(timeout, fetch)));
                    let inflight = self.inflight.clone();
                    let owned_key = key.to_string();
                    let flight = async move {
                        let out = match task.await {
                            Ok(Ok(v)) => Some(v),
                            _ => None,
                        };
                        let held = out.as_ref().zip(hold).and_then(|(v, h)| h(v));
                        let remove = move || {
                            if let Ok(mut map) = inflight.lock() {
                                if map.get(&owned_key).is_some_and(|(g, _)| *g == generation) {
                                    map.remove(&owned_key);
                                }
                            }
                        };
                        match held {
                            Some(until) => {
                                tokio::spawn(async move {
                                    until.await;
                                    remove();
                                });
                            }
                            None => remove(),
                        }
                        out
                    }
                    .boxed()
                    .shared();
                    map.insert(key.to_string(), (generation, flight.clone()));
                    (flight, Role::Leader)
                }
            }
        };
        (flight.await, role)
    }

    /// Fetches in flight now.
    pub fn len(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a flight is over: its fetch has ended, and so has what holds it
/// (its body, for a streamed answer).
fn spent<V: Clone + Send + Sync + 'static>(f: &Flight<V>, hold: Option<Hold<V>>) -> bool {
    match f.peek() {
        None => false,
        Some(None) => true,
        Some(Some(v)) => match hold.and_then(|h| h(v)) {
            None => true,
            Some(until) => until.now_or_never().is_some(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let flights = Arc::new(Flights::<u32>::new(Duration::from_secs(5)));
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (flights, calls, mut rx) = (flights.clone(), calls.clone(), rx.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run("k", async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = rx.wait_for(|go| *go).await;
                        7
                    })
                    .await
            }));
        }
        // Let every caller join before the one fetch may finish.
        while flights.is_empty() {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        let _ = tx.send(true);
        let mut leaders = 0;
        for t in tasks {
            let (v, role) = t.await.unwrap();
            assert_eq!(v, Some(7));
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_stuck_fetch_times_out_and_the_next_request_starts_anew() {
        let flights = Flights::<u32>::new(Duration::from_millis(50));
        let (v, _) = flights.run("k", std::future::pending::<u32>()).await;
        assert_eq!(v, None);
        let (v, role) = flights.run("k", async { 3 }).await;
        assert_eq!((v, role), (Some(3), Role::Leader));
    }

    #[tokio::test]
    async fn a_request_after_an_answer_was_whole_starts_anew() {
        // The answer is whole at once (its hold is already over), but its
        // removal is a task that has not run yet: the next request must not
        // get the same answer.
        fn held(_: &u32) -> Option<BoxFuture<'static, ()>> {
            Some(async {}.boxed())
        }
        let flights = Flights::<u32>::with_hold(Duration::from_secs(5), held);
        let (v, role) = flights.run("k", async { 1 }).await;
        assert_eq!((v, role), (Some(1), Role::Leader));
        let (v, role) = flights.run("k", async { 2 }).await;
        assert_eq!((v, role), (Some(2), Role::Leader));
        // The first flight's late removal leaves the second alone until its
        // own runs.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(flights.is_empty());
    }
}
