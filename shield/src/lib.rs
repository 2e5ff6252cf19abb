//! The regional shield: a caching proxy for mezzanine between edges and the
//! origin, so that each object leaves the origin once per region.
//!
//! Mezzanine files are cached in aligned slices (1 MiB by default): a range
//! request is answered from the slices that cover it, and a miss fetches
//! only the slices it lacks, each once however many edges ask. Small
//! files (the asset manifest, title metadata) are cached whole.

#![warn(unreachable_pub)]

use std::path::PathBuf;

use cascade_serve::priority::Priority;
use std::sync::Arc;
use std::time::Duration;

use cascade_cache::{CacheConfig, TieredCache};
use cascade_serve::config::{check_addr, check_url, Validate};
use cascade_serve::fleet::handle_purge;
use cascade_serve::{
    apply_range, parse_range, serve, shared_body, BodyWriter, ByteSpan, CachingFetcher,
    ListenerConfig, Metrics, Pipeline, Request, Response, ServerHandle, Step, Upstream,
};
use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;

/// The shield's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShieldConfig {
    /// Address to listen on.
    pub listen: String,
    /// Origin base URLs, tried in order.
    pub origins: Vec<String>,
    /// RAM cache size in MiB.
    pub cache_memory_mib: u64,
    /// Disk cache directory; empty for RAM only.
    pub cache_dir: String,
    /// Disk cache size in MiB.
    pub cache_disk_mib: u64,
    /// Seconds to wait for the origin.
    pub upstream_timeout_secs: u64,
    /// Largest object fetched, in MiB.
    pub max_object_mib: u64,
    /// Control's URL, for registration and heartbeats; empty for none.
    pub control_url: String,
    /// The credential for control's fleet API.
    pub fleet_token: String,
    /// This node's name in control's registry.
    pub node_name: String,
    /// This node's region.
    pub region: String,
    /// The URL control and operators reach this node at; empty: from `listen`.
    pub public_url: String,
    /// Seconds between heartbeats to control.
    pub heartbeat_secs: u64,
    /// Size of the slices mezzanine is cached in, in KiB; 0 caches each
    /// requested range as it comes.
    pub slice_kib: u64,
    /// Networks (CIDRs) that may read `/metrics` without a credential;
    /// anyone else needs the fleet credential. Loopback by default.
    pub metrics_networks: Vec<String>,
    /// Fetches in flight to each origin at once; more wait, live first,
    /// then on-demand, then pre-warm (as the edge marks it).
    pub origin_concurrency: usize,
}

impl Default for ShieldConfig {
    fn default() -> Self {
        ShieldConfig {
            listen: "127.0.0.1:8081".into(),
            origins: vec!["http://127.0.0.1:8082".into()],
            cache_memory_mib: 512,
            cache_dir: "data/cache/shield".into(),
            cache_disk_mib: 4096,
            upstream_timeout_secs: 30,
            max_object_mib: 15,
            control_url: String::new(),
            fleet_token: String::new(),
            node_name: "shield-1".into(),
            region: "local".into(),
            public_url: String::new(),
            heartbeat_secs: 5,
            slice_kib: 1024,
            metrics_networks: cascade_common::default_operator_networks(),
            origin_concurrency: 256,
        }
    }
}

impl Validate for ShieldConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_addr("listen", &self.listen, errors);
        cascade_common::check_networks("metrics_networks", &self.metrics_networks, errors);
        if self.origins.is_empty() {
            errors.push("origins: at least one origin URL is needed".into());
        }
        for (i, o) in self.origins.iter().enumerate() {
            check_url(&format!("origins[{i}]"), o, errors);
        }
        if self.cache_memory_mib == 0 {
            errors.push("cache_memory_mib: must be at least 1".into());
        }
        if self.max_object_mib == 0 || self.max_object_mib > 15 {
            errors.push("max_object_mib: must be 1 to 15".into());
        }
        if self.slice_kib != 0
            && (self.slice_kib < 64 || self.slice_kib > self.max_object_mib * 1024)
        {
            errors.push("slice_kib: 0 (off), or 64 up to max_object_mib × 1024".into());
        }
        if self.upstream_timeout_secs == 0 {
            errors.push("upstream_timeout_secs: must be at least 1".into());
        }
        if !(1..=100_000).contains(&self.origin_concurrency) {
            errors.push("origin_concurrency: 1 to 100000".into());
        }
        if !self.control_url.is_empty() {
            check_url("control_url", &self.control_url, errors);
            if self.fleet_token.is_empty() {
                errors.push("fleet_token: needed with control_url".into());
            }
        }
    }
}

/// A running shield.
pub struct Shield {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    server: ServerHandle,
    cache: TieredCache,
    heartbeat_task: Option<tokio::task::JoinHandle<()>>,
}

impl Shield {
    /// Stops the shield and flushes its disk cache.
    pub async fn shutdown(self) {
        if let Some(t) = &self.heartbeat_task {
            t.abort();
        }
        self.server.shutdown().await;
        self.cache.close().await;
    }
}

struct ShieldHandler {
    fetcher: CachingFetcher,
    slice_bytes: u64,
    max_bytes: u64,
    fleet_token: String,
    node: String,
}

#[async_trait::async_trait]
impl Pipeline for ShieldHandler {
    type Ctx = ();

    fn new_ctx(&self, _req: &Request) {}

    /// Fleet calls, and only `/mezz/` reads.
    fn route(&self, req: &Request, _ctx: &mut ()) -> Step {
        if req.uri.path() == "/fleet/purge" {
            return Step::Continue;
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return Step::Answer(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "GET or HEAD only",
            ));
        }
        let path = req.uri.path();
        if !(path.starts_with("/mezz/") || path.starts_with("/live-mezz/")) || path.contains("..") {
            return Step::Answer(Response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "shields serve /mezz/ and /live-mezz/ only",
            ));
        }
        Step::Continue
    }

    async fn produce(&self, req: &Request, _ctx: &mut ()) -> Response {
        let path = req.uri.path();
        if path == "/fleet/purge" {
            let cache = self.fetcher.tier().cache();
            return handle_purge(req, &self.fleet_token, &self.node, cache)
                .await
                .0;
        }
        let range = req
            .headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok());
        // An edge's pre-warm fetch waits behind viewers' at the origin too.
        if let Some(p) = Priority::from_header(
            req.headers
                .get(cascade_serve::priority::HEADER)
                .and_then(|v| v.to_str().ok()),
        ) {
            return cascade_serve::priority::with(p, self.fetch(req, path, range)).await;
        }
        self.fetch(req, path, range).await
    }
}

impl ShieldHandler {
    /// A media object from the cache or the origins.
    async fn fetch(&self, req: &Request, path: &str, range: Option<&str>) -> Response {
        if path.starts_with("/live-mezz/") {
            // Live: the query (a blocking request's part) is part of the key,
            // so waiters for one part share one request to the origin.
            let pq = req.uri.path_and_query().map_or(path, |pq| pq.as_str());
            return self.fetcher.get(pq, range, &req.request_id).await;
        }
        if self.slice_bytes > 0 && path.ends_with(".mp4") {
            return self.sliced(path, range, &req.request_id).await;
        }
        self.fetcher.get(path, range, &req.request_id).await
    }
}

impl ShieldHandler {
    /// One slice of a mezzanine file, from cache or the origin.
    async fn slice(&self, path: &str, index: u64, request_id: &str) -> Response {
        let first = index * self.slice_bytes;
        let range = format!("bytes={first}-{}", first + self.slice_bytes - 1);
        let key = format!("{path}#slice={index}");
        self.fetcher
            .get_keyed(&key, path, Some(&range), request_id)
            .await
    }

    /// Answers a GET of a mezzanine file (or a range of it) from slices.
    async fn sliced(&self, path: &str, range: Option<&str>, request_id: &str) -> Response {
        // The slice holding the first byte asked for; it also tells the size.
        let lead_index = range
            .and_then(|r| r.trim().strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, _)| a.trim().parse::<u64>().ok())
            .map_or(0, |first| first / self.slice_bytes);
        let lead = self.slice(path, lead_index, request_id).await;
        let total = match lead.status {
            StatusCode::PARTIAL_CONTENT => content_range_total(&lead),
            StatusCode::OK => {
                // The origin sent the whole file: serve the range from it.
                return apply_range(lead, range);
            }
            StatusCode::RANGE_NOT_SATISFIABLE => return lead,
            _ => return lead,
        };
        let Some(total) = total else {
            return bad_slice("the origin's Content-Range is missing or malformed");
        };
        // Only a satisfiable single range is answered 206; no range, one we
        // ignore (several ranges, last before first, another unit) is the
        // whole file with 200, as RFC 9110 §14.2 allows.
        let (span, partial) = match parse_range(range, total) {
            Ok(Some(span)) => (span, true),
            Ok(None) if total > 0 => (
                ByteSpan {
                    first: 0,
                    last: total - 1,
                },
                false,
            ),
            Ok(None) => return bad_slice("the file is empty"),
            Err(()) => {
                let mut r = Response::error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "bad_range",
                    "the range lies outside the file",
                );
                r.headers.insert(
                    http::header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{total}"))
                        .unwrap_or(HeaderValue::from_static("bytes */0")),
                );
                return r;
            }
        };
        if span.len() > self.max_bytes {
            return Response::error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_too_large",
                "ask for a smaller range",
            );
        }
        let (first_index, last_index) =
            (span.first / self.slice_bytes, span.last / self.slice_bytes);
        let others = (first_index..=last_index)
            .filter(|i| *i != lead_index)
            .map(|i| async move { (i, self.slice(path, i, request_id).await) });
        let mut slices: Vec<(u64, Response)> = futures::future::join_all(others).await;
        if (first_index..=last_index).contains(&lead_index) {
            slices.push((lead_index, lead.clone()));
        }
        slices.sort_by_key(|(i, _)| *i);
        let mut parts = Vec::with_capacity(slices.len());
        for (i, r) in &slices {
            if r.status != StatusCode::PARTIAL_CONTENT {
                return r.clone();
            }
            if content_range_total(r) != Some(total) {
                return bad_slice("a slice of the file has the wrong size");
            }
            let start = i * self.slice_bytes;
            let expect = (start + self.slice_bytes).min(total) - start;
            let from = span.first.saturating_sub(start);
            let to = (span.last + 1).min(start + expect) - start;
            parts.push(Part {
                slice: r.clone(),
                expect,
                from,
                to,
            });
        }
        // The answer streams as its slices arrive, in order.
        let (body, writer) = shared_body(Some(span.len()));
        tokio::spawn(assemble(parts, writer, span.len()));
        // Headers of the file from one slice; Cache-Status from the least cached.
        let status_of = slices
            .iter()
            .map(|(_, r)| r)
            .find(|r| !is_hit(r))
            .unwrap_or(&lead);
        let mut resp = Response {
            status: if partial {
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            },
            headers: lead.headers.clone(),
            body: bytes::Bytes::new(),
            stream: Some(body),
        };
        resp.headers.remove(http::header::CONTENT_RANGE);
        if partial {
            if let Ok(v) =
                HeaderValue::from_str(&format!("bytes {}-{}/{total}", span.first, span.last))
            {
                resp.headers.insert(http::header::CONTENT_RANGE, v);
            }
        }
        if let Some(cs) = status_of.headers.get("cache-status") {
            resp.headers.insert("cache-status", cs.clone());
        }
        resp
    }
}

/// The bytes `from..to` of one slice of `expect` bytes.
struct Part {
    slice: Response,
    expect: u64,
    from: u64,
    to: u64,
}

/// Writes the parts of each slice, in order, as they arrive; fails the body
/// if a slice is not the size it should be.
async fn assemble(parts: Vec<Part>, mut writer: BodyWriter, len: u64) {
    for p in parts {
        let mut pos = 0u64;
        let mut take = |chunk: bytes::Bytes, writer: &mut BodyWriter| {
            let (a, b) = (pos, pos + chunk.len() as u64);
            let (lo, hi) = (p.from.max(a), p.to.min(b));
            if lo < hi {
                writer.push(chunk.slice((lo - a) as usize..(hi - a) as usize));
            }
            pos = b;
        };
        match &p.slice.stream {
            None => take(p.slice.body.clone(), &mut writer),
            Some(stream) => {
                let mut reader = stream.reader();
                while let Some(chunk) = reader.next().await {
                    match chunk {
                        Ok(c) => take(c, &mut writer),
                        Err(e) => return writer.fail(&e),
                    }
                }
            }
        }
        if pos != p.expect {
            tracing::error!(
                got = pos,
                expected = p.expect,
                "a mezzanine slice has the wrong size"
            );
            return writer.fail("a slice of the file has the wrong size");
        }
    }
    if writer.len() as u64 == len {
        writer.finish();
    } else {
        writer.fail("the assembled range has the wrong size");
    }
}

/// The total size in a `Content-Range: bytes a-b/total`.
fn content_range_total(r: &Response) -> Option<u64> {
    r.headers
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit_once('/'))
        .and_then(|(_, t)| t.trim().parse().ok())
}

fn is_hit(r: &Response) -> bool {
    r.headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| cascade_serve::cache_outcome(v) == "hit")
}

fn bad_slice(why: &str) -> Response {
    tracing::error!(why, "slicing mezzanine");
    Response::error(StatusCode::BAD_GATEWAY, "bad_slice", why)
}

/// Starts a shield on `cfg.listen`.
pub async fn start(cfg: &ShieldConfig) -> anyhow::Result<Shield> {
    let cache = TieredCache::open(&CacheConfig {
        memory_bytes: cfg.cache_memory_mib << 20,
        disk_dir: (!cfg.cache_dir.is_empty()).then(|| PathBuf::from(&cfg.cache_dir)),
        disk_bytes: cfg.cache_disk_mib << 20,
        max_object_bytes: cfg.max_object_mib << 20,
    })
    .await?;
    let timeout = Duration::from_secs(cfg.upstream_timeout_secs);
    let max = (cfg.max_object_mib << 20) as usize;
    let metrics = Arc::new(Metrics::new("shield"));
    let limiter_metrics = cascade_serve::priority::LimiterMetrics::register(metrics.registry());
    let fetcher = CachingFetcher::new(
        cache.clone(),
        cfg.origins
            .iter()
            .map(|o| {
                Upstream::new(o, timeout, max).with_limiter(cascade_serve::priority::Limiter::new(
                    o,
                    cfg.origin_concurrency,
                    limiter_metrics.clone(),
                ))
            })
            .collect(),
        "cascade-shield",
        timeout * 2,
    );
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let server = serve(
        listener,
        Arc::new(ShieldHandler {
            fetcher,
            slice_bytes: cfg.slice_kib << 10,
            max_bytes: max as u64,
            fleet_token: cfg.fleet_token.clone(),
            node: cfg.node_name.clone(),
        }),
        metrics.clone(),
        {
            let mut l = ListenerConfig::new("cascade-shield");
            l.metrics_access =
                cascade_common::MetricsAccess::new(&cfg.metrics_networks, &[&cfg.fleet_token])
                    .map_err(|e| anyhow::anyhow!("metrics_networks: {e}"))?;
            l
        },
    )?;
    tracing::info!(addr = %server.addr, "shield listening");
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
                role: "shield",
                region: cfg.region.clone(),
                url,
            },
            metrics.clone(),
            cache.clone(),
            None,
        )
    });
    Ok(Shield {
        addr: server.addr,
        metrics,
        server,
        cache,
        heartbeat_task,
    })
}
