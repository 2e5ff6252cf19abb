//! One cache tier in front of a fill: fresh hits, stale serving and
//! coalesced misses. Both the shield (fill: fetch from the origin) and the
//! edge (fill: fetch mezzanine and package) answer through it.
//!
//! ```text
//! fresh                       → hit
//! stale, in stale-while-revalidate → hit now, one refresh in the background
//! else                        → one fill per key (coalesced)
//!   fill failed (5xx, timeout) and stale-if-error allows → the stale copy
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cascade_cache::{CachedObject, TieredCache};
use http::StatusCode;

use crate::proxy::{cached_response, mark_collapsed};
use crate::unix_now;
use crate::{set_cache_status, CacheOutcome, Flights, Response, Role};

/// For a response still streaming in: the end of its body, until which
/// new requests join it.
fn body_end(r: &Response) -> Option<futures::future::BoxFuture<'static, ()>> {
    use futures::FutureExt;
    let body = r.stream.clone()?;
    Some(async move { body.finished().await }.boxed())
}

/// A cache and the fills in flight for it.
#[derive(Clone)]
pub struct CacheTier {
    cache: TieredCache,
    flights: Arc<Flights<Response>>,
    name: &'static str,
}

impl CacheTier {
    /// A tier over `cache`, named `name` in `Cache-Status`; a fill taking
    /// longer than `timeout` is abandoned and the next request starts anew.
    pub fn new(cache: TieredCache, name: &'static str, timeout: Duration) -> Self {
        CacheTier {
            cache,
            flights: Arc::new(Flights::with_hold(timeout, body_end)),
            name,
        }
    }

    /// The cache.
    pub fn cache(&self) -> &TieredCache {
        &self.cache
    }

    /// The name in `Cache-Status`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Fills in flight now.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// A fresh hit for `key`, if there is one: the fast path, checked
    /// before a caller builds its fill.
    pub async fn fresh_hit(&self, key: &str) -> Option<Response> {
        let (obj, tier) = self.cache.get(key).await?;
        obj.is_fresh(unix_now())
            .then(|| cached_response(&obj, CacheOutcome::Hit(tier.as_str()), self.name))
    }

    /// Answers `key` from the cache or from `fill`, which fetches, stores
    /// what may be stored, and answers (with its own `Cache-Status`).
    /// Concurrent misses for one key run one fill; an error answer from the
    /// fill is never stored, and a stale copy stands in for it where the
    /// object's `stale-if-error` allows.
    pub async fn serve<F, Fut>(&self, key: &str, fill: F) -> Response
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let now = unix_now();
        let cached = self.cache.get(key).await;
        if let Some((obj, tier)) = &cached {
            if obj.is_fresh(now) {
                return cached_response(obj, CacheOutcome::Hit(tier.as_str()), self.name);
            }
            if obj.may_revalidate_stale(now) {
                // Refresh once in the background; this viewer does not wait.
                let flights = self.flights.clone();
                let k = key.to_string();
                tokio::spawn(async move {
                    let _ = flights.run(&k, fill()).await;
                });
                return cached_response(obj, CacheOutcome::StaleWhileRevalidate, self.name);
            }
        }
        // The leader looks again once it leads: a fill that finished (and
        // stored) between our look above and now must not be repeated.
        let tier = self.clone();
        let k = key.to_string();
        let guarded = async move {
            match tier.fresh_hit(&k).await {
                Some(hit) => hit,
                None => fill().await,
            }
        };
        let (resp, role) = self.flights.run(key, guarded).await;
        let failed = resp.as_ref().is_none_or(|r| r.status.is_server_error());
        if failed {
            if let Some((obj, _)) = &cached {
                if obj.may_serve_on_error(now) {
                    let status = resp.as_ref().map(|r| r.status.as_u16());
                    tracing::warn!(
                        key,
                        upstream_status = ?status,
                        "upstream failed; serving stale within stale-if-error"
                    );
                    return cached_response(obj, CacheOutcome::StaleOnError, self.name);
                }
            }
        }
        let mut resp = resp.unwrap_or_else(|| {
            let mut r = Response::error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream fetch took too long",
            );
            set_cache_status(
                &mut r.headers,
                None,
                &CacheOutcome::Miss { stored: false }.entry(self.name),
            );
            r
        });
        if role == Role::Joined {
            mark_collapsed(&mut resp.headers);
        }
        resp
    }

    /// Stores `obj` under `key` when its status and freshness allow; says
    /// whether it did.
    pub async fn store(&self, key: &str, obj: &CachedObject) -> bool {
        self.storable(obj, obj.body.len() as u64) && self.cache.put(key, obj.clone()).await
    }

    /// Whether an object like `obj`, of `len` bytes, would be stored: it
    /// must be of use later, fresh, servable stale, or revalidatable.
    pub fn storable(&self, obj: &CachedObject, len: u64) -> bool {
        matches!(obj.status, 200 | 206)
            && len <= self.cache.max_object_bytes()
            && (obj.fresh_until > unix_now()
                || obj.stale_while_revalidate > 0
                || obj.stale_if_error > 0
                || obj.header("etag").is_some()
                || obj.header("last-modified").is_some())
    }
}
