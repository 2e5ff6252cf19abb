//! The edge: the viewer-facing tier. One request pipeline, whatever the
//! protocol:
//!
//! ```text
//! route ─┬─ /vod/…  → cache ─ hit → answer
//!        │                 └ miss → asset manifest ─ mezzanine range ─ package → store → answer
//!        ├─ /api/…  → origin, uncached
//!        └─ /…      → origin, cached per Cache-Control (the web page)
//! ```
//!
//! Upstream for media is the object's shield by rendezvous hashing, then
//! the other shields, then the origin (see [`shields`]). Tokens and
//! geo-fencing run before the cache step. A stale playlist is served while
//! it is refreshed, and when every upstream fails. Control reaches the edge
//! under `/fleet/` (purge, pre-warm), and a player's CMCD `nor` makes the
//! edge fetch the next segment before it is asked for.

#![warn(unreachable_pub)]

mod cmcd;
mod shields;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cascade_cache::{CacheConfig, CachedObject, TieredCache};
use cascade_packager::{
    default_profiles, is_safe_id, package, with_query, AssetManifest, Output, Profile, View,
};
use cascade_serve::config::{
    build_token_keys, check_addr, check_url, TokenKeyConfig, Validate, TOKEN_KEYS_ENV,
};
use cascade_serve::fleet::{fleet_authorized, fleet_unauthorized, handle_purge};
use cascade_serve::{
    add_cors, apply_range, cached_response, cors_preflight, serve, set_cache_status, unix_now,
    unix_now_ms, CacheOutcome, CacheTier, CachingFetcher, H3Config, H3Handle, Handler,
    ListenerConfig, Metrics, Request, Response, ServerHandle, Upstream, UpstreamError,
    UpstreamResponse,
};
use cascade_token::{acl_matches, normalize_path, Rejection, Verifier};
use http::{Method, StatusCode};
use prometheus::{IntCounterVec, Opts};
use serde::Deserialize;

/// The edge's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Address to listen on.
    pub listen: String,
    /// The region's shields; each object goes to one of them by rendezvous
    /// hashing, then to the others if it fails.
    pub shields: Vec<String>,
    /// Seconds between active health checks of the shields.
    pub shield_health_secs: u64,
    /// Seconds a shield is passed over after a request to it failed.
    pub shield_eject_secs: u64,
    /// Origin base URL: the web page and API, and media when every shield fails.
    pub origin: String,
    /// Whether media may be fetched from the origin directly when no shield answers.
    pub origin_fallback: bool,
    /// RAM cache size in MiB.
    pub cache_memory_mib: u64,
    /// Disk cache directory; empty for RAM only.
    pub cache_dir: String,
    /// Disk cache size in MiB.
    pub cache_disk_mib: u64,
    /// Seconds to wait for an upstream.
    pub upstream_timeout_secs: u64,
    /// Seconds playlists and MPDs stay fresh in the cache.
    pub manifest_ttl_secs: u64,
    /// Name of the token's query parameter, cookie and header.
    pub token_name: String,
    /// The CDN's token keys; `CASCADE_TOKEN_KEYS` overrides them.
    pub token_keys: Vec<TokenKeyConfig>,
    /// Seconds of clock skew allowed on a token's `st` and `exp`.
    pub token_skew_secs: u64,
    /// Paths served without a token (`*` matches any run of characters).
    /// Everything else, media included, needs one.
    pub open_paths: Vec<String>,
    /// Control's URL, to learn partners' signing keys; empty for none.
    pub control_url: String,
    /// The credential for control's fleet API.
    pub fleet_token: String,
    /// Seconds between partner-key refreshes.
    pub partner_refresh_secs: u64,
    /// This node's name in control's registry (with `control_url`).
    pub node_name: String,
    /// This node's region.
    pub region: String,
    /// The URL control and operators reach this node at; empty: from `listen`.
    pub public_url: String,
    /// Seconds between heartbeats to control.
    pub heartbeat_secs: u64,
    /// MaxMind database (GeoLite2/GeoIP2 Country or City); `CASCADE_GEOIP_DB`
    /// overrides; empty: every country unknown.
    pub geoip_db: String,
    /// Seconds between checks of the database file for a new version.
    pub geoip_reload_secs: u64,
    /// Viewers of unknown country, where a rule applies: `allow` or `deny`.
    pub geo_unknown: cascade_geo::UnknownPolicy,
    /// Country rules by path prefix.
    pub geo_rules: Vec<cascade_geo::PathRule>,
    /// Proxies (CIDRs) whose `X-Forwarded-For`/`Forwarded` is believed.
    pub trusted_proxies: Vec<String>,
    /// Pre-warm fetches run at once; viewers' requests are never held back.
    pub prewarm_concurrency: usize,
    /// Fetch the next segment a player names in CMCD `nor`.
    pub cmcd_prefetch: bool,
    /// Prefetches in flight per viewer address.
    pub cmcd_prefetch_per_viewer: usize,
    /// Address for HTTPS: HTTP/1.1 and HTTP/2 over TLS on TCP, and HTTP/3
    /// on UDP, on the same port. Empty: no TLS listener.
    pub tls_listen: String,
    /// Certificate chain file (PEM), leaf first.
    pub tls_cert: String,
    /// Private key file (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: String,
    /// Seconds between checks of the certificate files; a changed pair is
    /// loaded without a restart.
    pub tls_reload_secs: u64,
    /// Serve HTTP/3 beside TLS on TCP, announced with `Alt-Svc`.
    pub http3: bool,
    /// Accept QUIC 0-RTT. Replayable: GET and HEAD are answered at once,
    /// other methods wait for the handshake.
    pub h3_allow_0rtt: bool,
    /// Concurrent request streams per HTTP/3 connection.
    pub h3_max_streams: u32,
    /// Seconds an HTTP/3 connection may sit idle.
    pub h3_idle_secs: u64,
    /// Largest HTTP/3 request header section, in bytes.
    pub h3_max_header_bytes: u64,
    /// Most HTTP/3 connections open at once.
    pub h3_max_connections: usize,
    /// Device profiles (`?profile=NAME` on a manifest): filters and a
    /// segment format. These add to, or replace by name, the built-in
    /// `web`, `mobile`, `tv` and `legacy-ts`.
    pub profiles: std::collections::BTreeMap<String, Profile>,
    /// `ma` of the `Alt-Svc` header, in seconds: how long a browser may
    /// remember that HTTP/3 is here.
    pub alt_svc_max_age_secs: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: "127.0.0.1:8080".into(),
            shields: vec!["http://127.0.0.1:8081".into()],
            origin: "http://127.0.0.1:8082".into(),
            origin_fallback: true,
            shield_health_secs: 2,
            shield_eject_secs: 10,
            cache_memory_mib: 512,
            cache_dir: "data/cache/edge".into(),
            cache_disk_mib: 4096,
            upstream_timeout_secs: 30,
            manifest_ttl_secs: 300,
            token_name: "__token__".into(),
            token_keys: Vec::new(),
            token_skew_secs: 30,
            open_paths: vec![
                "/".into(),
                "/static/*".into(),
                "/api/*".into(),
                "/favicon.ico".into(),
            ],
            control_url: String::new(),
            fleet_token: String::new(),
            partner_refresh_secs: 5,
            node_name: "edge-1".into(),
            region: "local".into(),
            public_url: String::new(),
            heartbeat_secs: 5,
            geoip_db: String::new(),
            geoip_reload_secs: 2,
            geo_unknown: cascade_geo::UnknownPolicy::Allow,
            geo_rules: Vec::new(),
            trusted_proxies: Vec::new(),
            prewarm_concurrency: 2,
            cmcd_prefetch: true,
            cmcd_prefetch_per_viewer: 2,
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_reload_secs: 30,
            http3: true,
            h3_allow_0rtt: false,
            h3_max_streams: 100,
            h3_idle_secs: 30,
            h3_max_header_bytes: 16 * 1024,
            h3_max_connections: 10_000,
            alt_svc_max_age_secs: 86_400,
            profiles: std::collections::BTreeMap::new(),
        }
    }
}

impl Validate for EdgeConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_addr("listen", &self.listen, errors);
        check_url("origin", &self.origin, errors);
        for (i, s) in self.shields.iter().enumerate() {
            check_url(&format!("shields[{i}]"), s, errors);
        }
        if self.shields.is_empty() && !self.origin_fallback {
            errors.push("shields: empty, and origin_fallback is off: media has no upstream".into());
        }
        if self.cache_memory_mib == 0 {
            errors.push("cache_memory_mib: must be at least 1".into());
        }
        if self.upstream_timeout_secs == 0 {
            errors.push("upstream_timeout_secs: must be at least 1".into());
        }
        if self.shield_health_secs == 0 {
            errors.push("shield_health_secs: must be at least 1".into());
        }
        if self.prewarm_concurrency == 0 || self.prewarm_concurrency > 64 {
            errors.push("prewarm_concurrency: 1 to 64".into());
        }
        if self.cmcd_prefetch_per_viewer > 16 {
            errors.push("cmcd_prefetch_per_viewer: at most 16".into());
        }
        if self.token_name.is_empty()
            || !self
                .token_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            errors.push("token_name: use letters, digits, _ and -".into());
        }
        if let Err(e) = build_token_keys("token_keys", &self.token_keys, None) {
            errors.extend(e);
        }
        if !self.control_url.is_empty() {
            check_url("control_url", &self.control_url, errors);
            if self.fleet_token.is_empty() {
                errors.push("fleet_token: needed with control_url".into());
            }
        }
        cascade_geo::check_config(&self.trusted_proxies, &self.geo_rules, errors);
        if self.geoip_reload_secs == 0 {
            errors.push("geoip_reload_secs: must be at least 1".into());
        }
        if self.partner_refresh_secs == 0 {
            errors.push("partner_refresh_secs: must be at least 1".into());
        }
        if !self.tls_listen.is_empty() {
            check_addr("tls_listen", &self.tls_listen, errors);
            if self.tls_cert.is_empty() {
                errors.push("tls_cert: needed with tls_listen".into());
            }
            if self.tls_key.is_empty() {
                errors.push("tls_key: needed with tls_listen".into());
            }
        }
        if self.tls_reload_secs == 0 {
            errors.push("tls_reload_secs: must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.h3_max_streams) {
            errors.push("h3_max_streams: 1 to 10000".into());
        }
        if !(1..=600).contains(&self.h3_idle_secs) {
            errors.push("h3_idle_secs: 1 to 600".into());
        }
        if !(1024..=1 << 20).contains(&self.h3_max_header_bytes) {
            errors.push("h3_max_header_bytes: 1024 to 1048576".into());
        }
        if self.h3_max_connections == 0 {
            errors.push("h3_max_connections: must be at least 1".into());
        }
        for (name, p) in &self.profiles {
            if !is_safe_id(name) {
                errors.push(format!("profiles.{name}: use letters, digits, _ and -"));
            }
            for c in p.codecs.iter().flatten() {
                if !cascade_packager::CODEC_FAMILIES.contains(&c.as_str()) {
                    errors.push(format!(
                        "profiles.{name}.codecs: unknown codec {c:?} (avc, hevc, av1)"
                    ));
                }
            }
            for l in p.audio.iter().chain(&p.subtitles).flatten() {
                if !cascade_packager::is_safe_lang(l) {
                    errors.push(format!("profiles.{name}: {l:?} is not a language tag"));
                }
            }
        }
        for (i, p) in self.open_paths.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(format!("open_paths[{i}]: {p:?} must start with /"));
            }
            if p.starts_with("/vod/") || p == "/vod*" || p == "/*" || p == "*" {
                errors.push(format!(
                    "open_paths[{i}]: {p:?} would open media to everyone"
                ));
            }
        }
    }
}

/// A running edge.
pub struct Edge {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Where it serves HTTPS (TCP) and HTTP/3 (UDP), when configured.
    pub tls_addr: Option<std::net::SocketAddr>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    server: ServerHandle,
    tls_server: Option<ServerHandle>,
    h3_server: Option<H3Handle>,
    tls_task: Option<tokio::task::JoinHandle<()>>,
    cache: TieredCache,
    partner_task: Option<tokio::task::JoinHandle<()>>,
    geo_task: Option<tokio::task::JoinHandle<()>>,
    heartbeat_task: Option<tokio::task::JoinHandle<()>>,
    health_task: Option<tokio::task::JoinHandle<()>>,
}

impl Edge {
    /// Stops the edge and flushes its disk cache.
    pub async fn shutdown(self) {
        for t in [
            &self.partner_task,
            &self.geo_task,
            &self.heartbeat_task,
            &self.health_task,
            &self.tls_task,
        ]
        .into_iter()
        .flatten()
        {
            t.abort();
        }
        let tls = async {
            if let Some(s) = self.tls_server {
                s.shutdown().await;
            }
        };
        let h3 = async {
            if let Some(s) = self.h3_server {
                s.shutdown().await;
            }
        };
        tokio::join!(self.server.shutdown(), tls, h3);
        self.cache.close().await;
    }
}

/// This tier's name in `Cache-Status` and logs.
const CACHE_NAME: &str = "cascade-edge";
/// Largest mezzanine range or API answer fetched.
const MAX_UPSTREAM_BYTES: usize = 15 << 20;
/// Packaged media never changes for a published title.
const MEDIA_TTL: u64 = 365 * 24 * 3600;
/// Parsed asset manifests kept in RAM.
const MANIFEST_ENTRIES: u64 = 10_000;
/// How long a playlist may stand in for a fresh one while every upstream
/// fails: a day, so viewers keep watching through an origin outage.
const MANIFEST_STALE_IF_ERROR: u32 = 24 * 3600;
/// Most paths in one pre-warm request.
const MAX_WARM_PATHS: usize = 64;

struct EdgeHandler {
    verifier: Arc<arc_swap::ArcSwap<Verifier>>,
    geo: Arc<cascade_geo::Geo>,
    geo_rules: Vec<cascade_geo::PathRule>,
    geo_unknown: cascade_geo::UnknownPolicy,
    trusted: Vec<ipnet::IpNet>,
    /// Titles' country rules, fetched with their metadata.
    title_meta: moka::future::Cache<String, Arc<cascade_geo::CountryRule>>,
    geo_lookups: IntCounterVec,
    geo_blocked: IntCounterVec,
    token_name: String,
    open_paths: Vec<String>,
    token_rejections: IntCounterVec,
    token_accepted: IntCounterVec,
    media: Media,
    origin: Upstream,
    page: CachingFetcher,
    fleet_token: String,
    node: String,
    prewarm: Arc<tokio::sync::Semaphore>,
    prewarm_concurrency: usize,
    prefetch: Option<cmcd::Prefetcher>,
    /// Built-in device profiles with the configured ones over them.
    profiles: std::collections::BTreeMap<String, Profile>,
}

#[async_trait::async_trait]
impl Handler for EdgeHandler {
    async fn handle(&self, req: Request) -> Response {
        // Control's calls carry the fleet credential, not a viewer token.
        match req.uri.path() {
            "/fleet/purge" => return self.purge(&req).await,
            "/fleet/warm" => return self.warm(&req).await,
            _ => {}
        }
        // What is authorised is what is served: one decoded, checked path.
        let Some(path) = normalize_path(req.uri.path()) else {
            return Response::error(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "the path is not acceptable",
            );
        };
        let is_media = path.starts_with("/vod/");
        if is_media && req.method == Method::OPTIONS {
            return cors_preflight();
        }
        let mut token_query = None;
        if !self.open_paths.iter().any(|p| acl_matches(p, &path)) {
            match self.check_token(&req, &path) {
                Ok(q) => token_query = q,
                Err(why) => {
                    // The reason only: never the token, the key or the expected MAC.
                    let body = format!("{{\"error\":\"token\",\"reason\":\"{}\"}}\n", why.code());
                    let mut r = Response::new(StatusCode::FORBIDDEN, "application/json", body);
                    if is_media {
                        add_cors(&mut r.headers);
                    }
                    return r;
                }
            }
        }
        if is_media {
            if let Some(mut blocked) = self.geo_check(&req, &path).await {
                add_cors(&mut blocked.headers);
                return blocked;
            }
            let mut resp = self.vod(&req, &path, token_query.as_deref()).await;
            add_cors(&mut resp.headers);
            return resp;
        }
        if path.starts_with("/api/") {
            return self.api(&req).await;
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "method", "GET or HEAD only");
        }
        let pq = req
            .uri
            .path_and_query()
            .map_or(req.uri.path(), |p| p.as_str());
        self.page.get(pq, None, &req.request_id).await
    }
}

impl EdgeHandler {
    /// Finds and verifies the viewer's token: query parameter, else cookie,
    /// else header. On success, returns the query to write into child URLs
    /// when the token came in the query (players resend cookies and headers).
    fn check_token(&self, req: &Request, path: &str) -> Result<Option<String>, Rejection> {
        let name = self.token_name.as_str();
        let from_query = req.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        });
        let from_cookie = || {
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    c.trim()
                        .strip_prefix(name)
                        .and_then(|r| r.strip_prefix('='))
                })
        };
        let from_header = || req.headers.get(name).and_then(|v| v.to_str().ok());
        let token = from_query.or_else(from_cookie).or_else(from_header);
        let verify = |t: &str| {
            self.verifier
                .load()
                .verify(t, path, req.client.map(|a| a.ip()), unix_now())
        };
        let verdict = match token {
            None | Some("") => Err(Rejection::Missing),
            Some(t) => match verify(t) {
                // Players that rebuild URLs (hls.js and dash.js adding CMCD)
                // percent-encode the token's `~`, `=`, `/` and `*`. Tried
                // as received first: escape-early tokens carry `%xx` of
                // their own.
                Err(first) if t.contains('%') => {
                    match percent_encoding::percent_decode_str(t).decode_utf8() {
                        Ok(decoded) if decoded != t => verify(&decoded).map_err(|_| first),
                        _ => Err(first),
                    }
                }
                v => v,
            },
        };
        match verdict {
            Ok(grant) => {
                self.token_accepted.with_label_values(&[&grant.kid]).inc();
                Ok(from_query.map(|t| format!("{name}={t}")))
            }
            Err(why) => {
                self.token_rejections.with_label_values(&[why.code()]).inc();
                Err(why)
            }
        }
    }

    /// The viewer's address: the peer, or what a trusted proxy says.
    fn client_ip(&self, req: &Request) -> Option<std::net::IpAddr> {
        let peer = req.client?.ip();
        let get = |name: &str| -> Vec<&str> {
            req.headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        Some(cascade_geo::client_ip(
            peer,
            &get("x-forwarded-for"),
            &get("forwarded"),
            &self.trusted,
        ))
    }

    /// 451 when the viewer's country may not watch this path or title.
    async fn geo_check(&self, req: &Request, path: &str) -> Option<Response> {
        let asset = path["/vod/".len()..]
            .split('/')
            .next()
            .filter(|a| is_safe_id(a))?;
        let country = self
            .client_ip(req)
            .and_then(|ip| self.geo.lookup(ip).country);
        self.geo_lookups
            .with_label_values(&[if country.is_some() {
                "found"
            } else {
                "unknown"
            }])
            .inc();
        let title = self.title_rule(asset, &req.request_id).await;
        let verdict = cascade_geo::decide(
            country.as_deref(),
            path,
            &self.geo_rules,
            title.as_deref(),
            self.geo_unknown,
        );
        match verdict {
            cascade_geo::Verdict::Allow => None,
            cascade_geo::Verdict::Block { country, rule } => {
                self.geo_blocked.with_label_values(&[&country, &rule]).inc();
                let body = serde_json::json!({ "error": "geo_blocked", "message": "this title is not available in your country", "country": country, "rule": rule });
                Some(Response::new(
                    StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
                    "application/json",
                    format!("{body}\n"),
                ))
            }
        }
    }

    /// A title's country rules, from its metadata (through the shields,
    /// kept in RAM briefly). A title whose metadata cannot be had is judged
    /// by the path rules alone; its media will not be found either.
    async fn title_rule(
        &self,
        asset: &str,
        request_id: &str,
    ) -> Option<Arc<cascade_geo::CountryRule>> {
        // Concurrent misses for one title share one fetch (moka coalesces).
        let fetch = async {
            let r = self
                .media
                .fetch_media(&format!("/mezz/{asset}/meta.json"), None, request_id)
                .await
                .map_err(|_| ())?;
            if r.status != StatusCode::OK {
                return Err(());
            }
            #[derive(serde::Deserialize)]
            struct Meta {
                geo: cascade_geo::CountryRule,
            }
            let meta: Meta = serde_json::from_slice(&r.body).map_err(|_| ())?;
            Ok::<_, ()>(Arc::new(meta.geo))
        };
        self.title_meta
            .try_get_with(asset.to_string(), fetch)
            .await
            .ok()
    }

    async fn vod(&self, req: &Request, path: &str, token_query: Option<&str>) -> Response {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "method", "GET or HEAD only");
        }
        let Some(output) = media_output(path) else {
            return not_found();
        };
        // Filters, profile, clip and format; only manifests read them.
        let view = if output.is_manifest() {
            match View::from_query(req.uri.query().unwrap_or(""), &self.profiles) {
                Ok(v) => v,
                Err(e) => return Response::error(StatusCode::BAD_REQUEST, "bad_filter", &e.0),
            }
        } else {
            View::default()
        };
        if let Some(p) = &self.prefetch {
            p.consider(req, path);
        }
        let r = self.media.get(path, &output, &view, &req.request_id).await;
        let range = req
            .headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok());
        apply_range(tokenize(r, &output, token_query), range)
    }

    /// `POST /fleet/purge` (fleet credential): purges the cache, and the
    /// parsed manifests and title rules kept beside it.
    async fn purge(&self, req: &Request) -> Response {
        let (resp, rules) =
            handle_purge(req, &self.fleet_token, &self.node, self.media.tier.cache()).await;
        if !rules.is_empty() {
            // Cheap to fetch again, and a purge may mean a title changed.
            self.media.manifests.invalidate_all();
            self.title_meta.invalidate_all();
        }
        resp
    }

    /// `POST /fleet/warm` (fleet credential): fetches media paths into the
    /// cache through the usual pipeline (so the shields warm too), a few at
    /// a time, and says how each went.
    async fn warm(&self, req: &Request) -> Response {
        if !fleet_authorized(req, &self.fleet_token) {
            return fleet_unauthorized();
        }
        if req.method != Method::POST {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "method", "POST only");
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Warm {
            urls: Vec<String>,
        }
        let warm: Warm = match serde_json::from_slice(&req.body) {
            Ok(w) => w,
            Err(e) => return Response::error(StatusCode::BAD_REQUEST, "bad_warm", &e.to_string()),
        };
        if warm.urls.len() > MAX_WARM_PATHS {
            return Response::error(
                StatusCode::BAD_REQUEST,
                "bad_warm",
                &format!("at most {MAX_WARM_PATHS} paths at once"),
            );
        }
        use futures::StreamExt;
        let results: Vec<serde_json::Value> = futures::stream::iter(warm.urls)
            .map(|u| async move {
                let path = normalize_path(cascade_serve::fleet::url_path(&u));
                let output = path.as_deref().and_then(media_output);
                let (Some(path), Some(output)) = (path, output) else {
                    return serde_json::json!({"url": u, "status": 404, "bytes": 0, "cache": "none"});
                };
                // A manifest may be warmed as a profile or filter shows it.
                let query = u.split_once('?').map_or("", |(_, q)| q);
                let Ok(view) = View::from_query(query, &self.profiles) else {
                    return serde_json::json!({"url": u, "status": 400, "bytes": 0, "cache": "none"});
                };
                // Viewers never wait on this: pre-warm has its own few permits.
                let Ok(_permit) = self.prewarm.acquire().await else {
                    return serde_json::json!({"url": u, "status": 503, "bytes": 0, "cache": "none"});
                };
                let r = self.media.get(&path, &output, &view, &req.request_id).await;
                let cache = r
                    .headers
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("none", cascade_serve::cache_outcome);
                serde_json::json!({"url": u, "status": r.status.as_u16(), "bytes": r.body.len(), "cache": cache})
            })
            .buffered(self.prewarm_concurrency)
            .collect()
            .await;
        let body = serde_json::json!({ "node": self.node, "results": results });
        Response::new(StatusCode::OK, "application/json", format!("{body}\n"))
    }

    /// `/api/…`: passed to the origin, never cached.
    async fn api(&self, req: &Request) -> Response {
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = Vec::new();
        for name in ["content-type", "authorization", "accept"] {
            if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                headers.push((name, v));
            }
        }
        // The origin judges the viewer (geo) by this; it trusts the edges.
        let forwarded_for = self
            .client_ip(req)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        if !forwarded_for.is_empty() {
            headers.push(("x-forwarded-for", forwarded_for.as_str()));
        }
        let body = (!req.body.is_empty()).then(|| req.body.clone());
        let mut r = match self
            .origin
            .send(req.method.clone(), pq, &headers, body, &req.request_id)
            .await
        {
            Ok(up) => {
                let mut r = Response {
                    status: up.status,
                    headers: http::HeaderMap::new(),
                    body: up.body,
                    stream: None,
                };
                for name in ["content-type", "cache-control", "location", "retry-after"] {
                    if let Some(v) = up.headers.get(name) {
                        r.headers.insert(name, v.clone());
                    }
                }
                r
            }
            Err(e) => {
                tracing::warn!(request_id = %req.request_id, error = %e, "origin unreachable for API");
                Response::error(
                    StatusCode::BAD_GATEWAY,
                    "origin_unreachable",
                    "the origin did not answer",
                )
            }
        };
        set_cache_status(
            &mut r.headers,
            None,
            &CacheOutcome::Bypass.entry(CACHE_NAME),
        );
        r
    }
}

/// The packager output a `/vod/{asset}/…` path names.
fn media_output(path: &str) -> Option<Output> {
    let (asset, rest) = path.strip_prefix("/vod/")?.split_once('/')?;
    is_safe_id(asset).then(|| Output::parse(rest)).flatten()
}

fn header_str(r: &UpstreamResponse, name: &str) -> Option<String> {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn not_found() -> Response {
    Response::error(StatusCode::NOT_FOUND, "not_found", "no such title or file")
}

fn upstream_failure(status: StatusCode) -> Response {
    if status == StatusCode::NOT_FOUND {
        return not_found();
    }
    Response::error(
        StatusCode::BAD_GATEWAY,
        "upstream_status",
        &format!("upstream answered {status}"),
    )
}

/// Reloads the geo database when its file changes (replaced by rename, so
/// its inode, size or time changes) or on SIGHUP. A bad file is refused and
/// logged; the database in use stays.
async fn watch_geo(geo: Arc<cascade_geo::Geo>, every: Duration, reloads: IntCounterVec) {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = geo.path().map(|p| p.to_path_buf()) else {
        return;
    };
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
    };
    let mut last = stamp(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let by_signal = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = stamp(&path);
        if now == last && !by_signal {
            continue;
        }
        last = now;
        let g = geo.clone();
        match tokio::task::spawn_blocking(move || g.reload()).await {
            Ok(Ok(())) => {
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!(path = %path.display(), "geo database reloaded");
            }
            Ok(Err(e)) => {
                reloads.with_label_values(&["refused"]).inc();
                tracing::error!(error = %e, "new geo database refused; keeping the one in use");
            }
            Err(e) => tracing::error!(error = %e, "geo reload crashed"),
        }
    }
}

#[derive(serde::Deserialize)]
struct FleetPartners {
    partners: Vec<FleetPartner>,
}

#[derive(serde::Deserialize)]
struct FleetPartner {
    name: String,
    scope: Vec<String>,
    keys: Vec<FleetKey>,
}

#[derive(serde::Deserialize)]
struct FleetKey {
    kid: String,
    key: String,
}

/// Polls control for partners' scopes and signing keys and swaps them into
/// the verifier. On failure the last good set stays in use.
async fn refresh_partners(
    verifier: Arc<arc_swap::ArcSwap<Verifier>>,
    control: String,
    fleet_token: String,
    every: Duration,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "partner refresh client");
            return;
        }
    };
    let url = format!("{control}/api/v1/fleet/partners");
    loop {
        let fetched = async {
            let r = client.get(&url).bearer_auth(&fleet_token).send().await?;
            r.error_for_status()?.json::<FleetPartners>().await
        }
        .await;
        match fetched {
            Ok(list) => {
                let mut partners = std::collections::HashMap::new();
                for p in list.partners {
                    let keys = p
                        .keys
                        .iter()
                        .filter_map(|k| cascade_token::Key::from_hex(&k.kid, &k.key).ok())
                        .collect();
                    partners.insert(
                        p.name,
                        cascade_token::Partner {
                            keys,
                            scope: p.scope,
                        },
                    );
                }
                let current = verifier.load();
                verifier.store(Arc::new(Verifier {
                    cdn_keys: current.cdn_keys.clone(),
                    partners,
                    skew_secs: current.skew_secs,
                }));
            }
            // Without the URL: none of it is secret, but keep logs uniform.
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "partner key refresh failed; keeping the last set")
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The part of the edge that makes media on a miss; cheap to clone into
/// the task of a coalesced fetch.
#[derive(Clone)]
struct Media {
    tier: CacheTier,
    pool: Arc<shields::ShieldPool>,
    manifests: moka::future::Cache<String, Arc<AssetManifest>>,
    manifest_ttl: u64,
}

impl Media {
    /// A packaged output by its path (`/vod/{asset}/…`, already checked) as
    /// `view` shows it: from cache, or made once however many viewers ask
    /// at once. The key is the path and the canonical query of the part of
    /// the view the output depends on (manifests only): never the token or
    /// other query parameters.
    async fn get(&self, path: &str, output: &Output, view: &View, request_id: &str) -> Response {
        let view = output.relevant_view(view);
        let canonical = view.canonical();
        let key = if canonical.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{canonical}")
        };
        // A hit needs none of the fill's clones.
        if let Some(hit) = self.tier.fresh_hit(&key).await {
            return hit;
        }
        let Some((asset, _)) = path["/vod/".len()..].split_once('/') else {
            return not_found();
        };
        let media = self.clone();
        let (a, o, k, rid) = (
            asset.to_string(),
            output.clone(),
            key.clone(),
            request_id.to_string(),
        );
        self.tier
            .serve(&key, move || async move {
                media.miss(&a, &o, &view, &k, &rid).await
            })
            .await
    }

    /// Makes an output on a cache miss: manifest, mezzanine ranges, package, store.
    async fn miss(
        &self,
        asset: &str,
        output: &Output,
        view: &View,
        key: &str,
        request_id: &str,
    ) -> Response {
        let req_id = request_id;
        let started_ms = unix_now_ms();
        let now = started_ms / 1000;
        let manifest = match self.manifest(asset, req_id).await {
            Ok(m) => m,
            Err(r) => return r,
        };
        let mut upstream_status = None;
        let sources = match output.sources(&manifest) {
            Ok(s) => s,
            Err(_) => return not_found(),
        };
        // A TS segment needs four ranges (two inits, two fragments): fetched
        // at once; each goes through the shields and their caches.
        let fetches = sources.iter().map(|src| {
            let mezz = format!("/mezz/{asset}/{}", src.file);
            let range = src.range.http_range();
            async move { self.fetch_media(&mezz, Some(&range), req_id).await }
        });
        let mut parts = Vec::with_capacity(sources.len());
        for r in futures::future::join_all(fetches).await {
            match r {
                Ok(r) if r.status == StatusCode::PARTIAL_CONTENT => {
                    if upstream_status.is_none() {
                        upstream_status = header_str(&r, "cache-status");
                    }
                    parts.push(r.body);
                }
                Ok(r) => return upstream_failure(r.status),
                Err(r) => return r,
            }
        }
        let slices: Vec<&[u8]> = parts.iter().map(|b| b.as_ref()).collect();
        let body = match package(&manifest, output, view, &slices) {
            Ok(b) => Bytes::from(b),
            Err(e @ cascade_packager::Error::EmptyView(_)) => {
                return Response::error(StatusCode::NOT_FOUND, "no_rendition", &e.to_string());
            }
            Err(cascade_packager::Error::NotFound) => return not_found(),
            Err(e) => {
                tracing::error!(request_id = %req_id, error = %e, key, "packaging failed");
                return Response::error(
                    StatusCode::BAD_GATEWAY,
                    "packaging",
                    "the mezzanine could not be packaged",
                );
            }
        };
        let (ttl, stale_while_revalidate, stale_if_error) = if output.is_manifest() {
            let ttl = u32::try_from(self.manifest_ttl).unwrap_or(u32::MAX);
            (self.manifest_ttl, ttl, MANIFEST_STALE_IF_ERROR)
        } else {
            (MEDIA_TTL, 0, 0)
        };
        let cache_control = if output.is_manifest() {
            format!("public, max-age={}", self.manifest_ttl.min(60))
        } else {
            "public, max-age=31536000, immutable".to_string()
        };
        let obj = CachedObject {
            status: 200,
            headers: vec![
                (
                    "content-type".into(),
                    output.content_type(Some(&manifest)).into(),
                ),
                ("cache-control".into(), cache_control),
                ("surrogate-key".into(), format!("asset-{asset}")),
            ],
            body,
            stored_at_ms: started_ms,
            fresh_until: now.saturating_add(ttl),
            stale_while_revalidate,
            stale_if_error,
        };
        let stored = self.tier.store(key, &obj).await;
        let mut r = from_cache(&obj, CacheOutcome::Miss { stored });
        set_cache_status(
            &mut r.headers,
            upstream_status.as_deref(),
            &CacheOutcome::Miss { stored }.entry(CACHE_NAME),
        );
        r
    }

    /// The parsed asset manifest, from RAM or fetched through the shields.
    async fn manifest(
        &self,
        asset: &str,
        request_id: &str,
    ) -> Result<Arc<AssetManifest>, Response> {
        if let Some(m) = self.manifests.get(asset).await {
            return Ok(m);
        }
        let path = format!("/mezz/{asset}/manifest.json");
        let r = self.fetch_media(&path, None, request_id).await?;
        if r.status == StatusCode::NOT_FOUND {
            return Err(not_found());
        }
        if r.status != StatusCode::OK {
            return Err(upstream_failure(r.status));
        }
        let m = AssetManifest::from_json(&r.body).map_err(|e| {
            tracing::error!(request_id, asset, error = %e, "bad asset manifest");
            Response::error(
                StatusCode::BAD_GATEWAY,
                "bad_manifest",
                "the asset manifest is unreadable",
            )
        })?;
        if m.asset != asset {
            return Err(Response::error(
                StatusCode::BAD_GATEWAY,
                "bad_manifest",
                "the asset manifest names another asset",
            ));
        }
        let m = Arc::new(m);
        self.manifests.insert(asset.to_string(), m.clone()).await;
        Ok(m)
    }

    /// Fetches from the object's shield, then the others, then the origin.
    async fn fetch_media(
        &self,
        path: &str,
        range: Option<&str>,
        request_id: &str,
    ) -> Result<UpstreamResponse, Response> {
        let mut last: Option<UpstreamError> = None;
        let mut last_answer = None;
        for (index, up) in self.pool.order(path) {
            match up.get(path, range, request_id).await {
                Ok(r) if r.status.is_server_error() => {
                    tracing::warn!(
                        upstream = up.base(),
                        status = r.status.as_u16(),
                        request_id,
                        "upstream error, trying next"
                    );
                    last_answer = Some(r);
                }
                Ok(r) => return Ok(r),
                Err(e) if e.retryable() => {
                    tracing::warn!(upstream = up.base(), error = %e, request_id, "upstream unreachable, trying next");
                    if let Some(i) = index {
                        self.pool.failed(i);
                    }
                    last = Some(e);
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        if let Some(r) = last_answer {
            return Ok(r);
        }
        let (status, code) = match last {
            Some(UpstreamError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
        };
        Err(Response::error(status, code, "no upstream could answer"))
    }
}

/// Writes the viewer's token into the child URLs of a playlist or MPD.
fn tokenize(mut r: Response, output: &Output, token_query: Option<&str>) -> Response {
    if let Some(q) = token_query {
        if output.is_manifest() {
            r.body = Bytes::from(with_query(output, &r.body, q));
            // A tokenised playlist is the viewer's own: shared caches must not keep it.
            r.headers.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("private, max-age=60"),
            );
        }
    }
    r
}

fn from_cache(obj: &CachedObject, outcome: CacheOutcome) -> Response {
    cached_response(obj, outcome, CACHE_NAME)
}

/// Starts an edge on `cfg.listen`.
pub async fn start(cfg: &EdgeConfig) -> anyhow::Result<Edge> {
    let cache = TieredCache::open(&CacheConfig {
        memory_bytes: cfg.cache_memory_mib << 20,
        disk_dir: (!cfg.cache_dir.is_empty()).then(|| PathBuf::from(&cfg.cache_dir)),
        disk_bytes: cfg.cache_disk_mib << 20,
        max_object_bytes: MAX_UPSTREAM_BYTES as u64,
    })
    .await?;
    let timeout = Duration::from_secs(cfg.upstream_timeout_secs);
    let origin = Upstream::new(&cfg.origin, timeout, MAX_UPSTREAM_BYTES);
    let env_keys = std::env::var(TOKEN_KEYS_ENV).ok();
    let cdn_keys = build_token_keys("token_keys", &cfg.token_keys, env_keys.as_deref())
        .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    if cdn_keys.is_empty() {
        anyhow::bail!("token_keys: no CDN token keys: set token_keys or {TOKEN_KEYS_ENV}; every media request would be refused");
    }
    let metrics = Arc::new(Metrics::new("edge"));
    let token_rejections = IntCounterVec::new(
        Opts::new(
            "edge_token_rejections_total",
            "Requests refused for their token, by reason",
        ),
        &["reason"],
    )?;
    for r in Rejection::ALL {
        token_rejections.with_label_values(&[r.code()]);
    }
    let token_accepted = IntCounterVec::new(
        Opts::new(
            "edge_token_accepted_total",
            "Requests whose token verified, by the key that matched",
        ),
        &["kid"],
    )?;
    metrics
        .registry()
        .register(Box::new(token_rejections.clone()))?;
    metrics
        .registry()
        .register(Box::new(token_accepted.clone()))?;
    let verifier = Arc::new(arc_swap::ArcSwap::from_pointee(Verifier {
        cdn_keys,
        partners: Default::default(),
        skew_secs: cfg.token_skew_secs,
    }));
    let partner_task = (!cfg.control_url.is_empty()).then(|| {
        tokio::spawn(refresh_partners(
            verifier.clone(),
            cfg.control_url.trim_end_matches('/').to_string(),
            cfg.fleet_token.clone(),
            Duration::from_secs(cfg.partner_refresh_secs),
        ))
    });
    let geo_path = std::env::var("CASCADE_GEOIP_DB").unwrap_or_else(|_| cfg.geoip_db.clone());
    let geo = Arc::new(if geo_path.is_empty() {
        cascade_geo::Geo::none()
    } else {
        cascade_geo::Geo::open(std::path::Path::new(&geo_path))?
    });
    let geo_reloads = IntCounterVec::new(
        Opts::new("edge_geo_reloads_total", "Geo database reloads, by result"),
        &["result"],
    )?;
    metrics.registry().register(Box::new(geo_reloads.clone()))?;
    let geo_task = (!geo_path.is_empty()).then(|| {
        tokio::spawn(watch_geo(
            geo.clone(),
            Duration::from_secs(cfg.geoip_reload_secs),
            geo_reloads,
        ))
    });
    let geo_lookups = IntCounterVec::new(
        Opts::new("edge_geo_lookups_total", "Country lookups, by result"),
        &["result"],
    )?;
    let geo_blocked = IntCounterVec::new(
        Opts::new(
            "edge_geo_blocked_total",
            "Requests refused for the viewer's country, by country and rule",
        ),
        &["country", "rule"],
    )?;
    metrics.registry().register(Box::new(geo_lookups.clone()))?;
    metrics.registry().register(Box::new(geo_blocked.clone()))?;
    let shield_events = IntCounterVec::new(
        Opts::new(
            "edge_shield_health_events_total",
            "Shields marked up or down by health checks, or ejected after a failed request",
        ),
        &["shield", "state"],
    )?;
    metrics
        .registry()
        .register(Box::new(shield_events.clone()))?;
    let pool = Arc::new(shields::ShieldPool::new(
        cfg.shields
            .iter()
            .map(|s| Upstream::new(s, timeout, MAX_UPSTREAM_BYTES))
            .collect(),
        cfg.origin_fallback.then(|| origin.clone()),
        Duration::from_secs(cfg.shield_eject_secs),
        shield_events,
    ));
    let health_task = (!cfg.shields.is_empty()).then(|| {
        pool.clone()
            .spawn_health_checks(Duration::from_secs(cfg.shield_health_secs))
    });
    let media = Media {
        tier: CacheTier::new(cache.clone(), CACHE_NAME, timeout * 2),
        pool,
        manifests: moka::future::Cache::builder()
            .max_capacity(MANIFEST_ENTRIES)
            .time_to_live(Duration::from_secs(cfg.manifest_ttl_secs.max(1)))
            .build(),
        manifest_ttl: cfg.manifest_ttl_secs,
    };
    let prefetch = if cfg.cmcd_prefetch {
        let counter = IntCounterVec::new(
            Opts::new(
                "edge_cmcd_prefetch_total",
                "Next segments named by CMCD nor, by what the edge did",
            ),
            &["result"],
        )?;
        metrics.registry().register(Box::new(counter.clone()))?;
        Some(cmcd::Prefetcher::new(
            media.clone(),
            cfg.cmcd_prefetch_per_viewer,
            counter,
        ))
    } else {
        None
    };
    let handler = EdgeHandler {
        geo,
        geo_rules: cfg.geo_rules.clone(),
        geo_unknown: cfg.geo_unknown,
        trusted: cfg
            .trusted_proxies
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect(),
        title_meta: moka::future::Cache::builder()
            .max_capacity(MANIFEST_ENTRIES)
            .time_to_live(Duration::from_secs(30))
            .build(),
        geo_lookups,
        geo_blocked,
        verifier,
        token_name: cfg.token_name.clone(),
        open_paths: cfg.open_paths.clone(),
        token_rejections,
        token_accepted,
        media,
        fleet_token: cfg.fleet_token.clone(),
        node: cfg.node_name.clone(),
        prewarm: Arc::new(tokio::sync::Semaphore::new(cfg.prewarm_concurrency)),
        prewarm_concurrency: cfg.prewarm_concurrency,
        prefetch,
        profiles: {
            let mut p = default_profiles();
            p.extend(cfg.profiles.clone());
            p
        },
        page: CachingFetcher::new(cache.clone(), vec![origin.clone()], CACHE_NAME, timeout * 2),
        origin,
    };
    let handler: Arc<dyn Handler> = Arc::new(handler);
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let server = serve(
        listener,
        handler.clone(),
        metrics.clone(),
        ListenerConfig::new(CACHE_NAME),
    )?;
    tracing::info!(addr = %server.addr, "edge listening");
    let (tls_server, h3_server, tls_task) = if cfg.tls_listen.is_empty() {
        (None, None, None)
    } else {
        let (tls, h3, task) = start_tls(cfg, handler.clone(), metrics.clone()).await?;
        (Some(tls), h3, Some(task))
    };
    let heartbeat_task = (!cfg.control_url.is_empty()).then(|| {
        let url = if cfg.public_url.is_empty() {
            format!("http://{}", server.addr)
        } else {
            cfg.public_url.clone()
        };
        cascade_serve::spawn_node_heartbeat(
            cfg.control_url.clone(),
            cfg.fleet_token.clone(),
            Duration::from_secs(cfg.heartbeat_secs.max(1)),
            cascade_serve::NodeIdentity {
                name: cfg.node_name.clone(),
                role: "edge",
                region: cfg.region.clone(),
                url,
            },
            metrics.clone(),
            cache.clone(),
        )
    });
    Ok(Edge {
        addr: server.addr,
        tls_addr: tls_server.as_ref().map(|s| s.addr),
        metrics,
        server,
        tls_server,
        h3_server,
        tls_task,
        cache,
        partner_task,
        geo_task,
        heartbeat_task,
        health_task,
    })
}

/// Starts the HTTPS listeners: TLS on TCP and, unless switched off, HTTP/3
/// on UDP at the same port, both over one certificate store that reloads
/// itself. Returns the TCP listener, the QUIC one and the reload task.
async fn start_tls(
    cfg: &EdgeConfig,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(ServerHandle, Option<H3Handle>, tokio::task::JoinHandle<()>)> {
    let certs = cascade_serve::tls::CertStore::load(
        std::path::Path::new(&cfg.tls_cert),
        std::path::Path::new(&cfg.tls_key),
    )
    .map_err(|e| anyhow::anyhow!("tls_cert/tls_key: {e}"))?;
    let reloads = IntCounterVec::new(
        Opts::new(
            "edge_tls_reloads_total",
            "Certificate reloads after the files changed, by result",
        ),
        &["result"],
    )?;
    metrics.registry().register(Box::new(reloads.clone()))?;
    let addr: std::net::SocketAddr = cfg.tls_listen.parse()?;
    let (tcp, udp) = bind_tcp_and_udp(addr)?;
    // Only once bound: a failed start must not leave a reloader running.
    let task = certs
        .clone()
        .spawn_reloader(Duration::from_secs(cfg.tls_reload_secs), reloads);
    let port = tcp.local_addr()?.port();
    let alt_svc = cfg
        .http3
        .then(|| {
            http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma={}", cfg.alt_svc_max_age_secs))
                .ok()
        })
        .flatten();
    let mut tcp_cfg = ListenerConfig::new(CACHE_NAME);
    tcp_cfg.tls = Some(certs.clone());
    tcp_cfg.alt_svc = alt_svc.clone();
    let tls_server = serve(tcp, handler.clone(), metrics.clone(), tcp_cfg)?;
    let h3_server = if cfg.http3 {
        let mut h3_cfg = H3Config::new(CACHE_NAME);
        h3_cfg.max_streams = cfg.h3_max_streams;
        h3_cfg.idle_timeout = Duration::from_secs(cfg.h3_idle_secs);
        h3_cfg.max_header_bytes = cfg.h3_max_header_bytes;
        h3_cfg.max_connections = cfg.h3_max_connections;
        h3_cfg.allow_0rtt = cfg.h3_allow_0rtt;
        h3_cfg.alt_svc = alt_svc;
        Some(cascade_serve::serve_h3(
            udp,
            certs.clone(),
            handler,
            metrics,
            h3_cfg,
        )?)
    } else {
        None
    };
    tracing::info!(
        addr = %tls_server.addr,
        http3 = cfg.http3,
        zero_rtt = cfg.h3_allow_0rtt,
        cert_sha256 = %certs.fingerprint(),
        "edge serving HTTPS"
    );
    Ok((tls_server, h3_server, task))
}

/// Binds TCP and UDP on the same port. With port 0 the kernel picks the TCP
/// port, which may be taken for UDP: then another pair is tried.
fn bind_tcp_and_udp(
    addr: std::net::SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, std::net::UdpSocket)> {
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let tcp = socket.listen(1024)?;
        let mut udp_addr = addr;
        udp_addr.set_port(tcp.local_addr()?.port());
        match std::net::UdpSocket::bind(udp_addr) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "tls_listen: cannot bind UDP beside TCP on {addr}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}
