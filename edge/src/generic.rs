//! The generic path: everything that is neither media, nor the API, nor a
//! fleet call (the web page, its files, whatever else the origin serves) —
//! an RFC 9111 shared cache in front of the origin.
//!
//! - Request headers are forwarded (less hop-by-hop ones); response headers
//!   come back end to end.
//! - What may be stored, for how long, when a stored answer may be reused
//!   and how to revalidate it come from `http-cache-semantics` (a shared
//!   cache: `private` and `no-store` are never stored, `s-maxage` wins,
//!   `no-cache` and `must-revalidate` revalidate, `Age` is kept, a request
//!   with `Authorization` is stored only where the answer allows it).
//! - `Vary`: the stored answer names the request headers it varies on; each
//!   set of their values is its own variant (`Vary: *` is never stored).
//! - A stale answer with a validator is revalidated with `If-None-Match` /
//!   `If-Modified-Since`; a 304 refreshes the stored headers and keeps the
//!   body. `stale-while-revalidate` serves it while a refresh runs;
//!   `stale-if-error` serves it when the origin fails.
//! - The client's own conditional and range requests are answered from the
//!   stored answer (304, 206); fills ask the origin for the whole answer.
//! - Other methods pass through uncached; a successful unsafe one
//!   invalidates what is stored for its URL.
//! - The key is the path, and the query only under `cache_query_paths`
//!   (as CDNs do: `/static/x.js?cb=1`, `?cb=2`, … are one entry, so no one
//!   can fill the cache by varying a query the origin ignores).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use cascade_cache::{freshness, CachedObject, PurgeRule, TieredCache};
use cascade_serve::{
    apply_range, mark_collapsed, set_cache_status, unix_now, unix_now_ms, CacheOutcome, Flights,
    Request, Response, Role, Upstream, UpstreamError, UpstreamResponse,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};

use crate::CACHE_NAME;

/// The stored policy (request and response headers, times) of an answer,
/// kept with it and never sent.
const POLICY: &str = "x-cascade-policy";
/// On the entry under a URL's key when its answer varies: the request
/// header names, and the variants live under keys of their values.
const VARY: &str = "x-cascade-vary";

/// Where an upstream's `Cache-Status` waits until ours is added after it.
const UPSTREAM_STATUS: &str = "x-cascade-upstream-cache-status";

/// Headers of one connection, never forwarded (RFC 9110 §7.6.1), and
/// those the listener sets itself.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The generic cache.
pub(crate) struct Generic {
    cache: TieredCache,
    origin: Upstream,
    flights: Arc<Flights<Response>>,
    /// Path prefixes whose query is part of the key.
    query_paths: Vec<String>,
}

/// What a request is, for the cache.
struct Asked<'a> {
    req: &'a Request,
    /// The key of the URL: the path, and the query where it counts.
    key: String,
    /// The same as a URI, for the policy.
    uri: Uri,
}

impl http_cache_semantics::RequestLike for Asked<'_> {
    fn uri(&self) -> Uri {
        self.uri.clone()
    }
    fn is_same_uri(&self, other: &Uri) -> bool {
        &self.uri == other
    }
    fn method(&self) -> &Method {
        // A HEAD is answered from, and fills, the GET's entry.
        &Method::GET
    }
    fn headers(&self) -> &HeaderMap {
        &self.req.headers
    }
}

/// An upstream answer as the policy sees it.
struct Answered<'a>(&'a UpstreamResponse);

impl http_cache_semantics::ResponseLike for Answered<'_> {
    fn status(&self) -> StatusCode {
        self.0.status
    }
    fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }
}

impl Generic {
    pub(crate) fn new(
        cache: TieredCache,
        origin: Upstream,
        query_paths: Vec<String>,
        timeout: std::time::Duration,
    ) -> Generic {
        Generic {
            cache,
            origin,
            flights: Arc::new(Flights::new(timeout)),
            query_paths,
        }
    }

    /// Answers a request on the generic path.
    pub(crate) async fn serve(&self, req: &Request, path: &str) -> Response {
        if req.method != Method::GET && req.method != Method::HEAD {
            return self.pass(req).await;
        }
        let asked = self.asked(req, path);
        let now = SystemTime::now();
        let found = self.find(&asked).await;
        let Some((obj, tier, policy, variant_key)) = found else {
            return self.fill(&asked).await;
        };
        match policy.before_request(&asked, now) {
            BeforeRequest::Fresh(parts) => {
                let r = replay(&obj, parts.status, parts.headers);
                self.finish(
                    &asked,
                    r,
                    &CacheOutcome::Hit(tier.as_str()).entry(CACHE_NAME),
                )
            }
            BeforeRequest::Stale { matches: false, .. } => self.fill(&asked).await,
            BeforeRequest::Stale { request, .. } => {
                let unix = unix_now();
                let revalidation =
                    self.revalidation(&variant_key, &asked, &request.headers, &obj, &policy);
                if obj.may_revalidate_stale(unix) {
                    // Serve it now; refresh once in the background, however
                    // many ask meanwhile (they join the same flight).
                    let (flights, flight) =
                        (self.flights.clone(), format!("{variant_key}|revalidate"));
                    tokio::spawn(async move {
                        let _ = flights.run(&flight, revalidation).await;
                    });
                    let r = stale_replay(&obj, &policy, now);
                    return self.finish(
                        &asked,
                        r,
                        &CacheOutcome::StaleWhileRevalidate.entry(CACHE_NAME),
                    );
                }
                // One conditional request per variant however many ask at
                // once; the others are answered from its result.
                let flight = format!("{variant_key}|revalidate");
                let (answer, role) = self.flights.run(&flight, revalidation).await;
                match answer {
                    Some(r) if !r.status.is_server_error() => {
                        let mut r = r;
                        if role == Role::Joined {
                            mark_collapsed(&mut r.headers);
                        }
                        let entry = r
                            .headers
                            .remove("cache-status")
                            .and_then(|v| v.to_str().ok().map(str::to_string))
                            .unwrap_or_default();
                        self.finish(&asked, r, &entry)
                    }
                    _ if obj.may_serve_on_error(unix) => {
                        let r = stale_replay(&obj, &policy, now);
                        self.finish(&asked, r, &CacheOutcome::StaleOnError.entry(CACHE_NAME))
                    }
                    Some(r) => r,
                    None => upstream_error(&UpstreamError::Timeout(String::new())),
                }
            }
        }
    }

    /// The revalidation of a stale answer, ready to run in a flight: the
    /// refreshed (or new) answer with its `Cache-Status` entry in
    /// `cache-status`, or the origin's failure (a 5xx).
    fn revalidation(
        &self,
        key: &str,
        asked: &Asked<'_>,
        conditional: &HeaderMap,
        stale: &Arc<CachedObject>,
        policy: &CachePolicy,
    ) -> impl std::future::Future<Output = Response> + Send + 'static {
        let filler = self.clone_parts();
        let (key, uri, asked_headers, conditional, stale, policy, rid) = (
            key.to_string(),
            asked.uri.clone(),
            asked.req.headers.clone(),
            conditional.clone(),
            stale.clone(),
            policy.clone(),
            asked.req.request_id.clone(),
        );
        async move {
            match filler
                .revalidate(
                    &key,
                    &uri,
                    &asked_headers,
                    &conditional,
                    &stale,
                    &policy,
                    &rid,
                )
                .await
            {
                Ok((mut r, entry)) => {
                    if let Ok(v) = HeaderValue::from_str(&entry) {
                        r.headers.insert(HeaderName::from_static("cache-status"), v);
                    }
                    r
                }
                Err(r) => r,
            }
        }
    }

    /// The parts a background task needs.
    fn clone_parts(&self) -> Filler {
        Filler {
            cache: self.cache.clone(),
            origin: self.origin.clone(),
        }
    }

    fn asked<'a>(&self, req: &'a Request, path: &str) -> Asked<'a> {
        let keep_query = self
            .query_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()));
        let key = match (keep_query, req.uri.query()) {
            (true, Some(q)) if !q.is_empty() => {
                let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
                pairs.sort_unstable();
                format!("{path}?{}", pairs.join("&"))
            }
            _ => path.to_string(),
        };
        let uri = key.parse().unwrap_or_else(|_| Uri::from_static("/"));
        Asked { req, key, uri }
    }

    /// The stored answer for a request: its object, tier, policy and key.
    async fn find(
        &self,
        asked: &Asked<'_>,
    ) -> Option<(Arc<CachedObject>, cascade_cache::Tier, CachePolicy, String)> {
        let (mut obj, mut tier) = self.cache.get(&asked.key).await?;
        let mut key = asked.key.clone();
        if let Some(names) = obj.header(VARY) {
            key = variant_key(&asked.key, names, &asked.req.headers);
            (obj, tier) = self.cache.get(&key).await?;
        }
        let policy = obj
            .header(POLICY)
            .and_then(|p| serde_json::from_str::<CachePolicy>(p).ok())?;
        Some((obj, tier, policy, key))
    }

    /// A miss: one fetch of the whole answer per key (and encoding) however
    /// many ask at once, stored when the policy allows.
    async fn fill(&self, asked: &Asked<'_>) -> Response {
        let encoding = asked
            .req
            .headers
            .get(http::header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let flight = format!("{}|{encoding}", asked.key);
        let filler = self.clone_parts();
        let (key, uri, headers, rid, pq) = (
            asked.key.clone(),
            asked.uri.clone(),
            asked.req.headers.clone(),
            asked.req.request_id.clone(),
            path_and_query(asked.req).to_string(),
        );
        let client = asked.req.client;
        let fetch = async move {
            let forwarded = forward_headers(&headers, true, client);
            let sent = filler
                .origin
                .send(Method::GET, &pq, &as_pairs(&forwarded), None, &rid)
                .await;
            match sent {
                Ok(up) => filler.store_answer(&key, &uri, &headers, up).await,
                Err(e) => upstream_error(&e),
            }
        };
        let (resp, role) = self.flights.run(&flight, fetch).await;
        let mut resp = resp.unwrap_or_else(|| {
            let mut r = Response::error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the origin took too long",
            );
            set_cache_status(
                &mut r.headers,
                None,
                &CacheOutcome::Miss { stored: false }.entry(CACHE_NAME),
            );
            r
        });
        if role == Role::Joined {
            mark_collapsed(&mut resp.headers);
        }
        let entry = resp
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.finish(asked, resp, &entry)
    }

    /// Other methods: to the origin with their body, never stored; a
    /// successful unsafe one invalidates the URL's entries.
    async fn pass(&self, req: &Request) -> Response {
        let forwarded = forward_headers(&req.headers, false, req.client);
        let body = (!req.body.is_empty()).then(|| req.body.clone());
        let pq = path_and_query(req);
        let mut r = match self
            .origin
            .send(
                req.method.clone(),
                pq,
                &as_pairs(&forwarded),
                body,
                &req.request_id,
            )
            .await
        {
            Ok(up) => {
                let safe = matches!(req.method, Method::OPTIONS | Method::TRACE);
                if !safe && (up.status.is_success() || up.status.is_redirection()) {
                    let rule = PurgeRule::Url(req.uri.path().to_string());
                    if let Err(e) = self.cache.purge(&[rule]).await {
                        tracing::warn!(error = %e, "invalidating after an unsafe method");
                    }
                }
                from_upstream(up)
            }
            Err(e) => upstream_error(&e),
        };
        set_entry(&mut r, &CacheOutcome::Bypass.entry(CACHE_NAME));
        r
    }

    /// Sets this cache's `Cache-Status` entry (after the origin's, if it
    /// sent one), then answers the client's own conditions and range.
    fn finish(&self, asked: &Asked<'_>, mut r: Response, entry: &str) -> Response {
        set_entry(&mut r, entry);
        if r.status != StatusCode::OK {
            return r;
        }
        if not_modified(&asked.req.headers, &r.headers) {
            let mut nm = Response::new(StatusCode::NOT_MODIFIED, "text/plain", Bytes::new());
            nm.headers = HeaderMap::new();
            for name in [
                "cache-control",
                "content-location",
                "date",
                "etag",
                "expires",
                "vary",
                "last-modified",
                "cache-status",
                "age",
            ] {
                if let Some(v) = r.headers.get(name) {
                    nm.headers.insert(HeaderName::from_static(name), v.clone());
                }
            }
            return nm;
        }
        let range = asked
            .req
            .headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok());
        apply_range(r, range)
    }
}

/// What fills and revalidations need, cheap to move into a task.
#[derive(Clone)]
struct Filler {
    cache: TieredCache,
    origin: Upstream,
}

impl Filler {
    /// Stores an answer from the origin when its policy allows; answers it.
    async fn store_answer(
        &self,
        key: &str,
        uri: &Uri,
        asked_headers: &HeaderMap,
        up: UpstreamResponse,
    ) -> Response {
        let started_ms = unix_now_ms();
        let probe = probe(uri, asked_headers);
        let asked = Asked {
            req: &probe,
            key: key.to_string(),
            uri: uri.clone(),
        };
        let policy = CachePolicy::new_options(&asked, &Answered(&up), SystemTime::now(), options());
        let vary = up
            .headers
            .get_all(http::header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>();
        let storable = policy.is_storable()
            && !vary.iter().any(|v| v == "*")
            && (up.body.len() as u64) <= self.cache.max_object_bytes();
        let mut stored = false;
        if storable {
            let obj = to_object(&up, &policy, started_ms);
            if vary.is_empty() {
                stored = self.cache.put(key, obj).await;
            } else {
                let mut names = vary.clone();
                names.sort();
                names.dedup();
                let names = names.join(",");
                let marker = CachedObject {
                    status: 200,
                    headers: vec![(VARY.into(), names.clone())],
                    body: Bytes::new(),
                    stored_at_ms: started_ms,
                    fresh_until: obj.fresh_until,
                    stale_while_revalidate: u32::MAX,
                    stale_if_error: u32::MAX,
                };
                let variant = variant_key(key, &names, asked_headers);
                stored = self.cache.put(&variant, obj).await && self.cache.put(key, marker).await;
            }
        }
        let mut r = from_upstream(up);
        let entry = CacheOutcome::Miss { stored }.entry(CACHE_NAME);
        r.headers.insert(
            HeaderName::from_static("cache-status"),
            HeaderValue::from_str(&entry).unwrap_or(HeaderValue::from_static("")),
        );
        r
    }

    /// Asks the origin whether a stale answer still holds; on a 304 the
    /// stored answer gets the new headers and keeps its body, else the new
    /// answer replaces it. `Err` when the origin failed (5xx or no answer).
    #[allow(clippy::too_many_arguments)]
    async fn revalidate(
        &self,
        key: &str,
        uri: &Uri,
        asked_headers: &HeaderMap,
        conditional: &HeaderMap,
        stale: &CachedObject,
        policy: &CachePolicy,
        request_id: &str,
    ) -> Result<(Response, String), Response> {
        let forwarded = forward_headers(conditional, false, None);
        let up = self
            .origin
            .send(
                Method::GET,
                &uri.to_string(),
                &as_pairs(&forwarded),
                None,
                request_id,
            )
            .await
            .map_err(|e| upstream_error(&e))?;
        if up.status.is_server_error() {
            return Err(from_upstream(up));
        }
        let probe = probe(uri, asked_headers);
        let asked = Asked {
            req: &probe,
            key: key.to_string(),
            uri: uri.clone(),
        };
        let started_ms = unix_now_ms();
        match policy.after_response(&asked, &Answered(&up), SystemTime::now()) {
            AfterResponse::NotModified(new_policy, parts) => {
                let fresh = UpstreamResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: stale.body.clone(),
                };
                let obj = to_object(&fresh, &new_policy, started_ms);
                let stored = self.cache.put(key, obj).await;
                let r = from_upstream(fresh);
                let entry = format!(
                    "{CACHE_NAME}; fwd=stale; fwd-status=304{}",
                    if stored { "; stored" } else { "" }
                );
                Ok((r, entry))
            }
            AfterResponse::Modified(..) => {
                let r = self.store_answer(key, uri, asked_headers, up).await;
                let entry = r
                    .headers
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                Ok((r, entry))
            }
        }
    }
}

/// The request an answer is judged against, outside the request's own
/// task (a fill or a background revalidation): its URI and headers.
fn probe(uri: &Uri, headers: &HeaderMap) -> Request {
    Request {
        method: Method::GET,
        uri: uri.clone(),
        headers: headers.clone(),
        body: Bytes::new(),
        client: None,
        request_id: String::new(),
        protocol: "",
        secure: false,
    }
}

/// A shared cache's view.
fn options() -> CacheOptions {
    CacheOptions {
        shared: true,
        ..CacheOptions::default()
    }
}

/// The object stored for an answer: its headers, the policy beside them,
/// and lifetimes from the policy and `Cache-Control`'s stale windows.
fn to_object(up: &UpstreamResponse, policy: &CachePolicy, started_ms: u64) -> CachedObject {
    let now = started_ms / 1000;
    let ttl = policy.time_to_live(SystemTime::now()).as_secs();
    let cc = up
        .headers
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok());
    let windows = freshness(cc, None);
    let window = |s: u64| u32::try_from(s).unwrap_or(u32::MAX);
    let mut headers: Vec<(String, String)> = up
        .headers
        .iter()
        .filter(|(n, _)| !is_hop_by_hop(n.as_str()) && n.as_str() != "content-length")
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    headers.push((
        POLICY.into(),
        serde_json::to_string(policy).unwrap_or_default(),
    ));
    CachedObject {
        status: up.status.as_u16(),
        headers,
        body: up.body.clone(),
        stored_at_ms: started_ms,
        fresh_until: now.saturating_add(ttl),
        stale_while_revalidate: window(windows.stale_while_revalidate),
        stale_if_error: window(windows.stale_if_error),
    }
}

/// A stored answer with the headers the policy gives it now.
fn replay(obj: &CachedObject, status: StatusCode, headers: HeaderMap) -> Response {
    let mut h = HeaderMap::with_capacity(headers.len() + 1);
    for (n, v) in headers.iter() {
        if n.as_str() != POLICY && !is_hop_by_hop(n.as_str()) {
            h.append(n.clone(), v.clone());
        }
    }
    Response {
        status,
        headers: h,
        body: obj.body.clone(),
        stream: None,
    }
}

/// A stale stored answer, with its `Age`.
fn stale_replay(obj: &CachedObject, policy: &CachePolicy, now: SystemTime) -> Response {
    let mut headers = HeaderMap::new();
    for (k, v) in &obj.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            headers.append(k, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&policy.age(now).as_secs().to_string()) {
        headers.insert(http::header::AGE, v);
    }
    let status = StatusCode::from_u16(obj.status).unwrap_or(StatusCode::OK);
    replay(obj, status, headers)
}

/// An origin's answer, with only its end-to-end headers.
fn from_upstream(up: UpstreamResponse) -> Response {
    let mut headers = HeaderMap::with_capacity(up.headers.len());
    for (n, v) in up.headers.iter() {
        if is_hop_by_hop(n.as_str()) || n.as_str() == "content-length" {
            continue;
        }
        if n.as_str() == "cache-status" {
            // The origin's (or an upstream cache's) entries come first.
            headers.insert(HeaderName::from_static(UPSTREAM_STATUS), v.clone());
            continue;
        }
        headers.append(n.clone(), v.clone());
    }
    Response {
        status: up.status,
        headers,
        body: up.body,
        stream: None,
    }
}

/// Sets this cache's `Cache-Status` entry after the upstream's, if any.
fn set_entry(r: &mut Response, entry: &str) {
    let upstream = r
        .headers
        .remove(UPSTREAM_STATUS)
        .and_then(|v| v.to_str().ok().map(str::to_string));
    if !entry.is_empty() {
        set_cache_status(&mut r.headers, upstream.as_deref(), entry);
    }
}

fn upstream_error(e: &UpstreamError) -> Response {
    let (status, code) = match e {
        UpstreamError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        UpstreamError::TooLarge(_) => (StatusCode::BAD_GATEWAY, "upstream_too_large"),
        _ => (StatusCode::BAD_GATEWAY, "origin_unreachable"),
    };
    Response::error(status, code, "the origin did not answer")
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// The request headers sent to the origin: all end-to-end ones, with the
/// viewer's address. A fill (`whole`) asks for the whole answer, whatever
/// the client's own conditions and range, so that it can be stored.
fn forward_headers(
    headers: &HeaderMap,
    whole: bool,
    client: Option<std::net::SocketAddr>,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 1);
    for (n, v) in headers.iter() {
        let name = n.as_str();
        if is_hop_by_hop(name) || name == cascade_serve::REQUEST_ID {
            continue;
        }
        if whole
            && matches!(
                name,
                "if-none-match"
                    | "if-modified-since"
                    | "if-match"
                    | "if-unmodified-since"
                    | "if-range"
                    | "range"
            )
        {
            continue;
        }
        out.append(n.clone(), v.clone());
    }
    if let Some(c) = client {
        if let Ok(v) = HeaderValue::from_str(&c.ip().to_string()) {
            out.append(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    out
}

fn as_pairs(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect()
}

fn path_and_query(req: &Request) -> &str {
    req.uri
        .path_and_query()
        .map_or(req.uri.path(), |p| p.as_str())
}

/// The key of one variant: the URL's key and the request's values of the
/// headers the answer varies on.
fn variant_key(key: &str, names: &str, headers: &HeaderMap) -> String {
    let mut out = format!("{key}|vary");
    for name in names.split(',') {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        out.push('|');
        out.push_str(name);
        out.push('=');
        out.push_str(&values.join(","));
    }
    out
}

/// Whether the client's `If-None-Match` (else `If-Modified-Since`) holds
/// for an answer with these headers (RFC 9110 §13.1.2, §13.1.3).
fn not_modified(request: &HeaderMap, answer: &HeaderMap) -> bool {
    let etag = answer
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|e| e.trim().trim_start_matches("W/"));
    if let Some(inm) = request
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        // Weak comparison: either side may be weak.
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || etag.is_some_and(|e| t.trim_start_matches("W/") == e));
    }
    let since = request
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = answer
        .get(http::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn conditions_follow_rfc_9110() {
        let answer = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        assert!(not_modified(
            &headers(&[("if-none-match", "\"v1\"")]),
            &answer
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "W/\"v1\"")]),
            &answer
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "\"x\", \"v1\"")]),
            &answer
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &answer
        ));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &headers(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")
            ]),
            &answer
        ));
        assert!(not_modified(
            &headers(&[("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")]),
            &answer
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")]),
            &answer
        ));
        assert!(!not_modified(&headers(&[]), &answer));
    }

    #[test]
    fn fills_ask_for_the_whole_answer_and_drop_hop_by_hop_headers() {
        let h = headers(&[
            ("connection", "close"),
            ("range", "bytes=0-1"),
            ("if-none-match", "\"v1\""),
            ("accept-encoding", "gzip"),
            ("cookie", "a=b"),
        ]);
        let fill = forward_headers(&h, true, None);
        assert!(fill.get("range").is_none() && fill.get("if-none-match").is_none());
        assert!(fill.get("connection").is_none());
        assert_eq!(fill["accept-encoding"], "gzip");
        let pass = forward_headers(&h, false, None);
        assert_eq!(pass["if-none-match"], "\"v1\"");
    }

    #[test]
    fn variants_are_keyed_by_the_values_named() {
        let a = variant_key(
            "/x",
            "accept-encoding",
            &headers(&[("accept-encoding", "gzip")]),
        );
        let b = variant_key(
            "/x",
            "accept-encoding",
            &headers(&[("accept-encoding", "br")]),
        );
        let none = variant_key("/x", "accept-encoding", &headers(&[]));
        assert_ne!(a, b);
        assert_ne!(a, none);
        assert!(a.starts_with("/x|"), "purge by URL reaches variants: {a}");
    }
}
