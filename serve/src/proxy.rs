//! A caching fetcher: the shield's whole pipeline, and the edge's for the
//! web page. Looks in the tiered cache, else fetches from the first upstream
//! that answers, stores what `Cache-Control` allows, and says what it did in
//! `Cache-Status`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cascade_cache::{freshness, CachedObject, TieredCache};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::{set_cache_status, CacheOutcome, Flights, Response, Role, Upstream, UpstreamError};

/// Response headers kept in the cache and replayed on hits.
const KEPT_HEADERS: [&str; 8] = [
    "content-type",
    "content-range",
    "cache-control",
    "etag",
    "last-modified",
    "surrogate-key",
    "accept-ranges",
    "access-control-allow-origin",
];

/// Looks up and fills one tiered cache from an ordered list of upstreams;
/// concurrent misses for one key make one upstream fetch.
#[derive(Clone)]
pub struct CachingFetcher {
    cache: TieredCache,
    upstreams: Vec<Upstream>,
    name: &'static str,
    flights: Arc<Flights<Response>>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The cache key of a GET: path, query and range.
pub fn cache_key(path_and_query: &str, range: Option<&str>) -> String {
    match range {
        Some(r) => format!("{path_and_query}|{}", r.trim()),
        None => path_and_query.to_string(),
    }
}

impl CachingFetcher {
    /// A fetcher over `cache` from `upstreams` (tried in order), named `name`
    /// in `Cache-Status`; a fetch taking longer than `timeout` is abandoned.
    pub fn new(
        cache: TieredCache,
        upstreams: Vec<Upstream>,
        name: &'static str,
        timeout: Duration,
    ) -> Self {
        CachingFetcher {
            cache,
            upstreams,
            name,
            flights: Arc::new(Flights::new(timeout)),
        }
    }

    /// Answers a GET of `path_and_query` (with an optional `Range`).
    pub async fn get(
        &self,
        path_and_query: &str,
        range: Option<&str>,
        request_id: &str,
    ) -> Response {
        let key = cache_key(path_and_query, range);
        let now = unix_now();
        if let Some((obj, tier)) = self.cache.get(&key).await {
            if obj.fresh_until > now {
                return self.replay(&obj, CacheOutcome::Hit(tier.as_str()));
            }
        }
        let this = self.clone();
        let (k, pq, r, rid) = (
            key.clone(),
            path_and_query.to_string(),
            range.map(str::to_string),
            request_id.to_string(),
        );
        let (resp, role) = self
            .flights
            .run(&key, async move {
                this.fetch(&k, &pq, r.as_deref(), &rid, now).await
            })
            .await;
        let mut resp = resp.unwrap_or_else(|| {
            let mut r = Response::error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream fetch took too long",
            );
            let entry = CacheOutcome::Miss { stored: false }.entry(self.name);
            set_cache_status(&mut r.headers, None, &entry);
            r
        });
        if role == Role::Joined {
            mark_collapsed(&mut resp.headers);
        }
        resp
    }

    /// The one upstream fetch of a coalesced miss.
    async fn fetch(
        &self,
        key: &str,
        path_and_query: &str,
        range: Option<&str>,
        request_id: &str,
        now: u64,
    ) -> Response {
        let mut last_err = None;
        for up in &self.upstreams {
            match up.get(path_and_query, range, request_id).await {
                Ok(resp) => return self.store_and_answer(key, resp, now).await,
                Err(e) if e.retryable() => {
                    tracing::warn!(upstream = up.base(), error = %e, request_id, "upstream failed, trying next");
                    last_err = Some(e);
                }
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        let (status, code) = match &last_err {
            Some(UpstreamError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Some(UpstreamError::TooLarge(_)) => (StatusCode::BAD_GATEWAY, "upstream_too_large"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
        };
        let mut r = Response::error(status, code, "no upstream could answer");
        set_cache_status(
            &mut r.headers,
            None,
            &CacheOutcome::Miss { stored: false }.entry(self.name),
        );
        r
    }

    async fn store_and_answer(
        &self,
        key: &str,
        resp: crate::UpstreamResponse,
        now: u64,
    ) -> Response {
        let cc = resp
            .headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok());
        let fresh = freshness(cc, None);
        let cacheable_status = matches!(resp.status.as_u16(), 200 | 206);
        let upstream_status = resp
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let headers: Vec<(String, String)> = KEPT_HEADERS
            .iter()
            .filter_map(|h| {
                resp.headers
                    .get(*h)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (h.to_string(), v.to_string()))
            })
            .collect();
        let obj = CachedObject {
            status: resp.status.as_u16(),
            headers,
            body: resp.body,
            stored_at: now,
            fresh_until: now.saturating_add(fresh.ttl.unwrap_or(0)),
        };
        let stored = cacheable_status
            && matches!(fresh.ttl, Some(t) if t > 0)
            && self.cache.put(key, obj.clone()).await;
        let mut r = self.replay(&obj, CacheOutcome::Miss { stored });
        set_cache_status(
            &mut r.headers,
            upstream_status.as_deref(),
            &CacheOutcome::Miss { stored }.entry(self.name),
        );
        r
    }

    fn replay(&self, obj: &CachedObject, outcome: CacheOutcome) -> Response {
        cached_response(obj, outcome, self.name)
    }
}

/// Marks this tier's `Cache-Status` entry (the last) as served from a
/// fetch another request started (RFC 9211 `collapsed`).
pub fn mark_collapsed(headers: &mut HeaderMap) {
    let Some(v) = headers.get("cache-status").and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{v}; collapsed")) {
        headers.insert(HeaderName::from_static("cache-status"), v);
    }
}

/// Replays a cached object, with this cache's `Cache-Status` entry.
pub fn cached_response(obj: &CachedObject, outcome: CacheOutcome, cache_name: &str) -> Response {
    let mut headers = HeaderMap::with_capacity(obj.headers.len() + 1);
    for (k, v) in &obj.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            headers.insert(k, v);
        }
    }
    set_cache_status(&mut headers, None, &outcome.entry(cache_name));
    Response {
        status: StatusCode::from_u16(obj.status).unwrap_or(StatusCode::OK),
        headers,
        body: obj.body.clone(),
    }
}
