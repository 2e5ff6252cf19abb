//! The regional shield: a caching proxy for mezzanine between edges and the
//! origin, so that each object leaves the origin once per region.

#![warn(unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cascade_cache::{CacheConfig, TieredCache};
use cascade_serve::config::{check_addr, check_url, Validate};
use cascade_serve::{
    serve, CachingFetcher, Handler, ListenerConfig, Metrics, Request, Response, ServerHandle,
    Upstream,
};
use http::{Method, StatusCode};
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
        }
    }
}

impl Validate for ShieldConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_addr("listen", &self.listen, errors);
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
        if self.upstream_timeout_secs == 0 {
            errors.push("upstream_timeout_secs: must be at least 1".into());
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
}

#[async_trait::async_trait]
impl Handler for ShieldHandler {
    async fn handle(&self, req: Request) -> Response {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Response::error(StatusCode::METHOD_NOT_ALLOWED, "method", "GET or HEAD only");
        }
        let path = req.uri.path();
        if !path.starts_with("/mezz/") || path.contains("..") {
            return Response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "shields serve /mezz/ only",
            );
        }
        let range = req
            .headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok());
        self.fetcher.get(path, range, &req.request_id).await
    }
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
    let fetcher = CachingFetcher::new(
        cache.clone(),
        cfg.origins
            .iter()
            .map(|o| Upstream::new(o, timeout, max))
            .collect(),
        "cascade-shield",
        timeout * 2,
    );
    let metrics = Arc::new(Metrics::new("shield"));
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let server = serve(
        listener,
        Arc::new(ShieldHandler { fetcher }),
        metrics.clone(),
        ListenerConfig::new("cascade-shield"),
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
