//! A caching fetcher: the shield's whole pipeline. Looks in the tiered
//! cache, else fetches from the first upstream that answers, stores what
//! RFC 9111 allows a shared cache to store, and says what it did in
//! `Cache-Status`.
//!
//! - Freshness from `s-maxage`, `max-age` or `Expires`, less the answer's
//!   `Age` on arrival; `Age` is sent on every answer from the cache.
//! - `no-store`, `private` and `Vary: *` are never stored; `no-cache` is
//!   stored and revalidated on every reuse; `must-revalidate` (and
//!   `s-maxage`) close the stale windows.
//! - A stale answer with a validator is revalidated with `If-None-Match` /
//!   `If-Modified-Since`: a 304 refreshes the stored headers and lifetime
//!   and keeps the body, so the bytes are not fetched again.
//! - Only `Range` is forwarded, so a `Vary` on any other request header
//!   names a header the upstream never sees: one stored answer serves all.

use std::sync::Arc;
use std::time::Duration;

use cascade_common::unix_now_ms;

use cascade_cache::{shared_lifetime, AnswerHeaders, CachedObject, TieredCache};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::{set_cache_status, CacheOutcome, CacheTier, Response, Upstream, UpstreamError};

/// Response headers kept in the cache and replayed on hits.
const KEPT_HEADERS: [&str; 17] = [
    "expires",
    "vary",
    "content-encoding",
    "content-language",
    "content-type",
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "permissions-policy",
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
    tier: CacheTier,
    upstreams: Arc<Vec<Upstream>>,
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
            tier: CacheTier::new(cache, name, timeout),
            upstreams: Arc::new(upstreams),
        }
    }

    /// The cache tier.
    pub fn tier(&self) -> &CacheTier {
        &self.tier
    }

    /// Answers a GET of `path_and_query` (with an optional `Range`).
    pub async fn get(
        &self,
        path_and_query: &str,
        range: Option<&str>,
        request_id: &str,
    ) -> Response {
        self.get_keyed(
            &cache_key(path_and_query, range),
            path_and_query,
            range,
            request_id,
        )
        .await
    }

    /// Answers a GET of `path_and_query` (with an optional `Range`) stored
    /// under `key`.
    pub async fn get_keyed(
        &self,
        key: &str,
        path_and_query: &str,
        range: Option<&str>,
        request_id: &str,
    ) -> Response {
        let this = self.clone();
        let (k, pq, r, rid) = (
            key.to_string(),
            path_and_query.to_string(),
            range.map(str::to_string),
            request_id.to_string(),
        );
        self.tier
            .serve(key, move || async move {
                this.fetch(&k, &pq, r.as_deref(), &rid).await
            })
            .await
    }

    /// The one upstream fetch of a coalesced miss.
    async fn fetch(
        &self,
        key: &str,
        path_and_query: &str,
        range: Option<&str>,
        request_id: &str,
    ) -> Response {
        let started_ms = unix_now_ms();
        // A stored answer past its freshness is revalidated, not fetched again.
        let stale = self
            .tier
            .cache()
            .get(key)
            .await
            .map(|(o, _)| o)
            .filter(|o| matches!(o.status, 200 | 206));
        let conditional: Vec<(&str, &str)> = stale
            .iter()
            .flat_map(|o| {
                [
                    ("if-none-match", o.header("etag")),
                    ("if-modified-since", o.header("last-modified")),
                ]
            })
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        let mut last_err = None;
        for up in self.upstreams.iter() {
            let (tier, k) = (self.tier.clone(), key.to_string());
            let (tx, rx) = tokio::sync::oneshot::channel::<CachedObject>();
            let store = move |whole: bytes::Bytes| async move {
                if let Ok(mut obj) = rx.await {
                    obj.body = whole;
                    tier.store(&k, &obj).await;
                }
            };
            match up
                .get_streaming(path_and_query, range, &conditional, request_id, store)
                .await
            {
                Ok(Ok(streaming)) => {
                    return self.answer_streaming(streaming, started_ms, tx);
                }
                Ok(Err(resp)) if resp.status == StatusCode::NOT_MODIFIED => {
                    if let Some(stale) = &stale {
                        return self.refresh(key, stale, resp, started_ms).await;
                    }
                    // Not asked conditionally: an upstream's mistake.
                    return self.store_and_answer(key, resp, started_ms).await;
                }
                Ok(Err(resp)) => return self.store_and_answer(key, resp, started_ms).await,
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
            &CacheOutcome::Miss { stored: false }.entry(self.tier.name()),
        );
        r
    }

    /// The answer to a fetch whose body is still arriving: headers now, the
    /// body as it comes; the object is stored when complete (by the
    /// upstream's pump, through `store`).
    fn answer_streaming(
        &self,
        resp: crate::StreamingResponse,
        started_ms: u64,
        store: tokio::sync::oneshot::Sender<CachedObject>,
    ) -> Response {
        let upstream_status = resp
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let len = resp.body.expected_len().unwrap_or(0);
        let (template, may_store) = to_object(
            crate::UpstreamResponse {
                status: resp.status,
                headers: resp.headers,
                body: bytes::Bytes::new(),
            },
            started_ms,
        );
        let stored = may_store && self.tier.storable(&template, len);
        let mut r = cached_response(&template, CacheOutcome::Miss { stored }, self.tier.name());
        set_cache_status(
            &mut r.headers,
            upstream_status.as_deref(),
            &CacheOutcome::Miss { stored }.entry(self.tier.name()),
        );
        r.stream = Some(resp.body);
        if stored {
            let _ = store.send(template);
        }
        r
    }

    async fn store_and_answer(
        &self,
        key: &str,
        resp: crate::UpstreamResponse,
        started_ms: u64,
    ) -> Response {
        let upstream_status = resp
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (obj, may_store) = to_object(resp, started_ms);
        let stored = may_store && self.tier.store(key, &obj).await;
        let mut r = cached_response(&obj, CacheOutcome::Miss { stored }, self.tier.name());
        set_cache_status(
            &mut r.headers,
            upstream_status.as_deref(),
            &CacheOutcome::Miss { stored }.entry(self.tier.name()),
        );
        r
    }
    /// A 304 to a revalidation: the stored answer with the 304's headers
    /// over its own (RFC 9111 §4.3.4) and a new lifetime; the body is the
    /// stored one.
    async fn refresh(
        &self,
        key: &str,
        stale: &CachedObject,
        not_modified: crate::UpstreamResponse,
        started_ms: u64,
    ) -> Response {
        let upstream_status = not_modified
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut headers = HeaderMap::new();
        for (k, v) in &stale.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
                headers.insert(k, v);
            }
        }
        // The stored age is replaced by what the 304 says.
        headers.remove(http::header::AGE);
        for (k, v) in not_modified.headers.iter() {
            if k != http::header::CONTENT_LENGTH && k != http::header::CONTENT_RANGE {
                headers.insert(k.clone(), v.clone());
            }
        }
        let (obj, may_store) = to_object(
            crate::UpstreamResponse {
                status: StatusCode::from_u16(stale.status).unwrap_or(StatusCode::OK),
                headers,
                body: stale.body.clone(),
            },
            started_ms,
        );
        let stored = may_store && self.tier.store(key, &obj).await;
        if !stored {
            // No longer storable: what is stored is stale for good.
            self.tier.cache().remove(key).await;
        }
        let outcome = CacheOutcome::Revalidated { stored };
        let mut r = cached_response(&obj, outcome, self.tier.name());
        set_cache_status(
            &mut r.headers,
            upstream_status.as_deref(),
            &outcome.entry(self.tier.name()),
        );
        r
    }
}

/// An upstream answer as a cache object, with the lifetime RFC 9111 gives
/// it in a shared cache, and whether it may be stored at all. Its age on
/// arrival is kept as `age`, to which replays add the time it was held.
pub fn to_object(resp: crate::UpstreamResponse, started_ms: u64) -> (CachedObject, bool) {
    let text =
        |name: http::header::HeaderName| resp.headers.get(name).and_then(|v| v.to_str().ok());
    let cache_control = resp
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let received = crate::unix_now();
    let lifetime = shared_lifetime(
        &AnswerHeaders {
            cache_control: (!cache_control.is_empty()).then_some(cache_control.as_str()),
            expires: text(http::header::EXPIRES),
            date: text(http::header::DATE),
            age: text(http::header::AGE),
            vary: text(http::header::VARY),
        },
        started_ms / 1000,
        received,
    );
    let fresh = lifetime.freshness;
    let may_store = fresh.ttl.is_some();
    let mut headers: Vec<(String, String)> = KEPT_HEADERS
        .iter()
        .filter_map(|h| {
            resp.headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect();
    headers.push(("age".into(), lifetime.initial_age.to_string()));
    let window = |s: u64| u32::try_from(s).unwrap_or(u32::MAX);
    let obj = CachedObject {
        status: resp.status.as_u16(),
        headers,
        body: resp.body,
        stored_at_ms: started_ms,
        // Freshness counts from arrival; `stored_at_ms` stays the start of
        // the fetch, so that a purge made meanwhile still applies.
        fresh_until: received.saturating_add(fresh.ttl.unwrap_or(0)),
        stale_while_revalidate: window(fresh.stale_while_revalidate),
        stale_if_error: window(fresh.stale_if_error),
    };
    (obj, may_store)
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

/// Replays a cached object, with this cache's `Cache-Status` entry. An
/// object that came from an upstream (it keeps its `age` on arrival) is
/// answered with its current `Age`; one this tier made itself (the edge's
/// packaged media: the edge is its origin) without.
pub fn cached_response(obj: &CachedObject, outcome: CacheOutcome, cache_name: &str) -> Response {
    // Room for what the way out adds (Cache-Status, CORS, the request id,
    // Content-Length…), so the map is not grown on every hit.
    let mut headers = HeaderMap::with_capacity(obj.headers.len() + 10);
    for (k, v) in &obj.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            headers.insert(k, v);
        }
    }
    if let Some(arrived) = obj.header("age").and_then(|a| a.parse::<u64>().ok()) {
        let held = match outcome {
            CacheOutcome::Miss { .. } | CacheOutcome::Revalidated { .. } => 0,
            _ => crate::unix_now().saturating_sub(obj.stored_at_ms / 1000),
        };
        headers.insert(
            http::header::AGE,
            HeaderValue::from(arrived.saturating_add(held)),
        );
    }
    set_cache_status(&mut headers, None, &outcome.entry(cache_name));
    Response {
        status: StatusCode::from_u16(obj.status).unwrap_or(StatusCode::OK),
        headers,
        body: obj.body.clone(),
        stream: None,
    }
}
