//! Which shield to ask for an object: rendezvous (highest random weight)
//! hashing on the object's path, so each object is cached in one shield of
//! the region and every edge picks the same one; a shield that fails its
//! health check, or fails a request, drops to the back of the order until
//! it recovers. After the shields, the origin, when allowed.
//!
//! Rendezvous rather than a ring: with a handful of shields per region it
//! needs no virtual nodes, spreads evenly, and moves only the failed
//! shield's objects when one goes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascade_serve::{unix_now_ms, Upstream};
use prometheus::IntCounterVec;
use twox_hash::XxHash64;

struct Shield {
    upstream: Upstream,
    seed: u64,
    /// The last active health check passed.
    healthy: AtomicBool,
    /// Ejected after a failed request, until this time (Unix ms).
    ejected_until_ms: AtomicU64,
}

impl Shield {
    fn usable(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }
}

/// The shields of the edge's region, and the origin behind them.
pub(crate) struct ShieldPool {
    shields: Vec<Shield>,
    origin: Option<Upstream>,
    eject_for: Duration,
    /// Health changes by shield and new state.
    pub(crate) events: IntCounterVec,
}

/// An upstream in the order to try, with its index in the pool (`None`
/// for the origin).
pub(crate) type Candidate<'a> = (Option<usize>, &'a Upstream);

impl ShieldPool {
    pub(crate) fn new(
        shields: Vec<Upstream>,
        origin: Option<Upstream>,
        eject_for: Duration,
        events: IntCounterVec,
    ) -> ShieldPool {
        let shields = shields
            .into_iter()
            .map(|upstream| Shield {
                seed: XxHash64::oneshot(0, upstream.base().as_bytes()),
                upstream,
                healthy: AtomicBool::new(true),
                ejected_until_ms: AtomicU64::new(0),
            })
            .collect();
        ShieldPool {
            shields,
            origin,
            eject_for,
            events,
        }
    }

    /// The upstreams to try for `key`, best first: usable shields in
    /// rendezvous order, then the unusable ones in the same order (a last
    /// resort better than failing), then the origin if allowed.
    pub(crate) fn order(&self, key: &str) -> Vec<Candidate<'_>> {
        let now = unix_now_ms();
        let mut ranked: Vec<(bool, u64, usize)> = self
            .shields
            .iter()
            .enumerate()
            .map(|(i, s)| (s.usable(now), XxHash64::oneshot(s.seed, key.as_bytes()), i))
            .collect();
        // Usable first, then by weight, highest first.
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        let mut out: Vec<Candidate<'_>> = ranked
            .into_iter()
            .map(|(_, _, i)| (Some(i), &self.shields[i].upstream))
            .collect();
        if let Some(o) = &self.origin {
            out.push((None, o));
        }
        out
    }

    /// The preferred shield for `key` by hashing alone, whatever its health.
    #[cfg(test)]
    fn home(&self, key: &str) -> Option<usize> {
        (0..self.shields.len())
            .max_by_key(|&i| XxHash64::oneshot(self.shields[i].seed, key.as_bytes()))
    }

    /// Passive ejection: a request to shield `i` failed.
    pub(crate) fn failed(&self, i: usize) {
        let Some(s) = self.shields.get(i) else {
            return;
        };
        let until = unix_now_ms() + self.eject_for.as_millis() as u64;
        let before = s.ejected_until_ms.swap(until, Ordering::Relaxed);
        if before <= unix_now_ms() {
            tracing::warn!(
                shield = s.upstream.base(),
                secs = self.eject_for.as_secs(),
                "shield ejected after a failed request"
            );
            self.events
                .with_label_values(&[s.upstream.base(), "ejected"])
                .inc();
        }
    }

    /// Checks every shield's `/healthz` every `every`, until aborted.
    pub(crate) fn spawn_health_checks(
        self: Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let client = match reqwest::Client::builder()
                .timeout(every.max(Duration::from_millis(500)))
                .no_proxy()
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "health check client");
                    return;
                }
            };
            let pool: &ShieldPool = &self;
            loop {
                let checks = pool.shields.iter().map(|s| {
                    let client = client.clone();
                    async move {
                        let url = format!("{}/healthz", s.upstream.base());
                        let ok = matches!(client.get(&url).send().await, Ok(r) if r.status().is_success());
                        let was = s.healthy.swap(ok, Ordering::Relaxed);
                        if was != ok {
                            let state = if ok { "up" } else { "down" };
                            tracing::warn!(shield = s.upstream.base(), state, "shield health changed");
                            pool.events
                                .with_label_values(&[s.upstream.base(), state])
                                .inc();
                        }
                        if ok && was {
                            // Healthy twice running: forgive an ejection early.
                            s.ejected_until_ms.store(0, Ordering::Relaxed);
                        }
                    }
                });
                futures::future::join_all(checks).await;
                tokio::time::sleep(every).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn pool(n: usize, origin: bool) -> ShieldPool {
        let ups = (0..n)
            .map(|i| {
                Upstream::new(
                    &format!("http://10.0.0.{i}:8081"),
                    Duration::from_secs(1),
                    1,
                )
            })
            .collect();
        let events = IntCounterVec::new(Opts::new("e", "e"), &["shield", "state"]).unwrap();
        ShieldPool::new(
            ups,
            origin.then(|| Upstream::new("http://origin", Duration::from_secs(1), 1)),
            Duration::from_secs(10),
            events,
        )
    }

    #[test]
    fn objects_spread_and_each_has_one_home() {
        let p = pool(4, true);
        let mut per = [0usize; 4];
        for i in 0..4000 {
            let key = format!("/mezz/a{i}/v1.mp4");
            let order = p.order(&key);
            assert_eq!(order.len(), 5);
            assert_eq!(order[0].0, p.home(&key));
            assert_eq!(order[4].0, None, "origin last");
            per[order[0].0.unwrap()] += 1;
        }
        // About 1000 each.
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
    }

    #[test]
    fn a_failed_shield_moves_only_its_objects_and_goes_last() {
        let p = pool(3, false);
        let keys: Vec<String> = (0..300).map(|i| format!("/mezz/t{i}/a.mp4")).collect();
        let before: Vec<usize> = keys.iter().map(|k| p.order(k)[0].0.unwrap()).collect();
        p.failed(1);
        for (k, b) in keys.iter().zip(&before) {
            let order = p.order(k);
            assert_ne!(order[0].0, Some(1));
            if *b != 1 {
                assert_eq!(order[0].0, Some(*b), "objects of healthy shields stay");
            } else {
                assert_eq!(order[2].0, Some(1), "the ejected shield is the last resort");
            }
        }
    }
}
