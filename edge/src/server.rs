//! Starting and stopping an edge: the cache, the parts of the pipeline,
//! the background tasks (partner keys, geo database, shield health,
//! heartbeats) and the listeners (HTTP on TCP; HTTPS on TCP and HTTP/3 on
//! UDP at one port).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cascade_cache::{CacheConfig, TieredCache};
use cascade_packager::default_profiles;
use cascade_serve::config::{build_token_keys, TOKEN_KEYS_ENV};
use cascade_serve::{
    serve, CacheTier, H3Config, H3Handle, Handler, ListenerConfig, Metrics, ServerHandle, Upstream,
};
use cascade_token::Verifier;

use crate::auth::{poll_revocations, refresh_partners, revoked_sessions, Auth};
use crate::cmcd::Prefetcher;
use crate::config::EdgeConfig;
use crate::generic::Generic;
use crate::geofence::{watch_geo, Geofence};
use crate::media::{Media, MANIFEST_ENTRIES};
use crate::metrics::EdgeMetrics;
use crate::pipeline::EdgePipeline;
use crate::{shields, CACHE_NAME, MAX_UPSTREAM_BYTES};

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
    governor_task: tokio::task::JoinHandle<()>,
    health_task: Option<tokio::task::JoinHandle<()>>,
    revocation_task: Option<tokio::task::JoinHandle<()>>,
    /// Where viewers' real-time connections come, when configured.
    pub events_addr: Option<std::net::SocketAddr>,
    events: Option<Arc<crate::events::Events>>,
    events_task: Option<tokio::task::JoinHandle<()>>,
    flusher_task: Option<tokio::task::JoinHandle<()>>,
    /// Sends sessions' ad segment fetches to the origin.
    ads_task: tokio::task::JoinHandle<()>,
    /// Stops the events listener, its connections and the reaction flusher.
    events_stop: tokio::sync::watch::Sender<bool>,
}

impl Edge {
    /// Real-time connections held now.
    pub fn events_connections(&self) -> usize {
        self.events.as_ref().map_or(0, |e| e.connections())
    }

    /// Scopes this edge follows on the bus now.
    pub fn events_topics(&self) -> usize {
        self.events.as_ref().map_or(0, |e| e.hub.topics())
    }

    /// Stops the edge and flushes its disk cache.
    pub async fn shutdown(self) {
        self.governor_task.abort();
        for t in [
            &self.partner_task,
            &self.geo_task,
            &self.heartbeat_task,
            &self.health_task,
            &self.tls_task,
            &self.revocation_task,
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
        // Held connections close, and the last reaction counts go out.
        let _ = self.events_stop.send(true);
        if let Some(t) = self.events_task {
            let _ = t.await;
        }
        if let Some(t) = self.flusher_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ads_task).await;
        tokio::join!(self.server.shutdown(), tls, h3);
        self.cache.close().await;
    }
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
    let metrics = Arc::new(Metrics::new("edge"));
    // One concurrency limit per upstream, shared by every client of it.
    let limiter_metrics = cascade_serve::priority::LimiterMetrics::register(metrics.registry());
    let limited = |base: &str| {
        Upstream::new(base, timeout, MAX_UPSTREAM_BYTES).with_limiter(
            cascade_serve::priority::Limiter::new(
                base,
                cfg.upstream_concurrency,
                limiter_metrics.clone(),
            ),
        )
    };
    let origin = limited(&cfg.origin);
    let shield_upstreams: Vec<Upstream> = cfg.shields.iter().map(|s| limited(s)).collect();
    let env_keys = std::env::var(TOKEN_KEYS_ENV).ok();
    let cdn_keys = build_token_keys("token_keys", &cfg.token_keys, env_keys.as_deref())
        .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    if cdn_keys.is_empty() {
        anyhow::bail!("token_keys: no CDN token keys: set token_keys or {TOKEN_KEYS_ENV}; every media request would be refused");
    }
    let counters = EdgeMetrics::register(&metrics)?;
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
    let geo_task = (!geo_path.is_empty()).then(|| {
        tokio::spawn(watch_geo(
            geo.clone(),
            Duration::from_secs(cfg.geoip_reload_secs),
            counters.geo_reloads.clone(),
        ))
    });
    let pool = Arc::new(shields::ShieldPool::new(
        shield_upstreams.clone(),
        cfg.origin_fallback.then(|| origin.clone()),
        Duration::from_secs(cfg.shield_eject_secs),
        counters.shield_events.clone(),
    ));
    let health_task = (!cfg.shields.is_empty()).then(|| {
        pool.clone()
            .spawn_health_checks(Duration::from_secs(cfg.shield_health_secs))
    });
    let live_upstreams: Vec<Upstream> = shield_upstreams
        .into_iter()
        .chain(cfg.origin_fallback.then(|| origin.clone()))
        .collect();
    let media = Media {
        live: cascade_serve::CachingFetcher::new(
            cache.clone(),
            live_upstreams,
            CACHE_NAME,
            timeout * 2,
        ),
        tier: CacheTier::new(cache.clone(), CACHE_NAME, timeout * 2),
        pool,
        manifests: moka::future::Cache::builder()
            .max_capacity(MANIFEST_ENTRIES)
            .time_to_live(Duration::from_secs(cfg.manifest_ttl_secs.max(1)))
            .build(),
        manifest_ttl: cfg.manifest_ttl_secs,
    };
    let prefetch = cfg.cmcd_prefetch.then(|| {
        Prefetcher::new(
            media.clone(),
            cfg.cmcd_prefetch_per_viewer,
            counters.cmcd_prefetch.clone(),
        )
    });
    let revoked = revoked_sessions();
    let revocation_task = if cfg.fleet_token.is_empty() {
        tracing::warn!(
            "no fleet_token: ended playback sessions are not refused before their tokens expire"
        );
        None
    } else {
        Some(tokio::spawn(poll_revocations(
            revoked.clone(),
            cfg.origin.trim_end_matches('/').to_string(),
            cfg.fleet_token.clone(),
            Duration::from_secs(cfg.revocation_poll_secs),
        )))
    };
    // The bus: real-time connections, and the flashes live playlists show.
    let bus = cascade_bus::connect(
        &cfg.nats_url,
        cascade_bus::JetStreamConfig {
            client_name: format!("cascade-edge-{}", cfg.node_name),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("nats_url: {e}"))?;
    let governor = crate::governor::Governor::new(cfg.governor(), &metrics)?;
    let governor_task = governor.clone().spawn_sampler(metrics.clone());
    let hub = crate::events::Hub::new(
        bus,
        crate::events::Fanout {
            governor: governor.clone(),
            slow_every: Duration::from_millis(cfg.shed_fanout_ms),
        },
    );
    let ads = Arc::new(crate::ads::Ads::new(
        &cfg.origin,
        &cfg.fleet_token,
        Duration::from_millis(cfg.ads_plan_timeout_ms),
        counters.ad_events.clone(),
    ));
    let pipeline = EdgePipeline {
        protection: Arc::new(crate::protection::Protection::new(
            &cfg.origin,
            &cfg.fleet_token,
            timeout,
            counters.licenses.clone(),
        )),
        ads: ads.clone(),
        flashes: hub.flashes.clone(),
        auth: Auth {
            verifier,
            revoked,
            token_name: cfg.token_name.clone(),
            open_paths: cfg.open_paths.clone(),
            rejections: counters.token_rejections.clone(),
            accepted: counters.token_accepted.clone(),
        },
        geofence: Geofence::new(
            geo,
            cfg.geo_rules.clone(),
            cfg.geo_unknown,
            cfg.trusted_proxies
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            counters.geo_lookups.clone(),
            counters.geo_blocked.clone(),
        ),
        media,
        fleet_token: cfg.fleet_token.clone(),
        node: cfg.node_name.clone(),
        prewarm: tokio::sync::Semaphore::new(cfg.prewarm_concurrency),
        prewarm_concurrency: cfg.prewarm_concurrency,
        prefetch,
        route_seconds: counters.route_seconds.clone(),
        hsts: (cfg.hsts_max_age_secs > 0)
            .then(|| {
                http::HeaderValue::from_str(&format!("max-age={}", cfg.hsts_max_age_secs)).ok()
            })
            .flatten(),
        profiles: {
            let mut p = default_profiles();
            p.extend(cfg.profiles.clone());
            p
        },
        governor: governor.clone(),
        cmsd: cfg.cmsd,
        steering: (!cfg.steering_url.is_empty())
            .then(|| (cfg.steering_url.clone(), cfg.steering_ticket_secs)),
        generic: Generic::new(
            cache.clone(),
            origin.clone(),
            cfg.cache_query_paths.clone(),
            timeout * 2,
        ),
        origin,
    };
    let pipeline = Arc::new(pipeline);
    let handler: Arc<dyn Handler> = pipeline.clone();
    let (events_stop, events_stop_rx) = tokio::sync::watch::channel(false);
    let (events, events_addr, events_task, flusher_task) = if cfg.events_listen.is_empty() {
        (None, None, None, None)
    } else {
        let reactions = Arc::new(crate::events::Reactions::new(
            &cfg.node_name,
            cfg.reactions_per_sec,
            cfg.reactions_burst,
            counters.reactions_accepted.clone(),
            counters.reactions_refused.clone(),
            counters.reaction_batches_dropped.clone(),
        ));
        let events = Arc::new(crate::events::Events::new(
            hub.clone(),
            reactions.clone(),
            pipeline.clone(),
            crate::events::Limits {
                max_connections: cfg.events_max_connections,
                max_per_address: cfg.events_max_per_address,
                keepalive: Duration::from_secs(cfg.events_keepalive_secs),
                send_timeout: Duration::from_secs(cfg.events_send_timeout_secs),
                replay_limit: cfg.events_replay_limit,
            },
            crate::events::EventsMetrics::register(&metrics)?,
        ));
        let l = tokio::net::TcpListener::bind(&cfg.events_listen)
            .await
            .map_err(|e| anyhow::anyhow!("events_listen {}: {e}", cfg.events_listen))?;
        let addr = l.local_addr()?;
        tracing::info!(%addr, "events listening");
        let task = crate::events::serve(l, events.clone(), events_stop_rx.clone());
        let flusher = tokio::spawn(crate::events::run_flusher(
            reactions,
            cfg.origin.clone(),
            cfg.fleet_token.clone(),
            Duration::from_millis(cfg.reaction_flush_ms),
            events_stop_rx,
        ));
        (Some(events), Some(addr), Some(task), Some(flusher))
    };
    let ads_task = tokio::spawn(ads.run_flusher(
        Duration::from_millis(cfg.ads_report_ms),
        events_stop.subscribe(),
    ));
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let metrics_access = metrics_access(cfg)?;
    let mut plain_cfg = ListenerConfig::new(CACHE_NAME);
    plain_cfg.metrics_access = metrics_access.clone();
    plain_cfg.threads = cfg.connection_threads;
    let server = serve(listener, handler.clone(), metrics.clone(), plain_cfg)?;
    tracing::info!(addr = %server.addr, "edge listening");
    let (tls_server, h3_server, tls_task) = if cfg.tls_listen.is_empty() {
        (None, None, None)
    } else {
        let (tls, h3, task) = start_tls(cfg, handler.clone(), metrics.clone(), &counters).await?;
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
            Some(governor.clone() as Arc<dyn cascade_serve::FleetState>),
        )
    });
    Ok(Edge {
        governor_task,
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
        revocation_task,
        events_addr,
        events,
        events_task,
        flusher_task,
        ads_task,
        events_stop,
    })
}

/// Starts the HTTPS listeners: TLS on TCP and, unless switched off, HTTP/3
/// on UDP at the same port, both over one certificate store that reloads
/// itself. Returns the TCP listener, the QUIC one and the reload task.
async fn start_tls(
    cfg: &EdgeConfig,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
    counters: &EdgeMetrics,
) -> anyhow::Result<(ServerHandle, Option<H3Handle>, tokio::task::JoinHandle<()>)> {
    let certs = cascade_serve::tls::CertStore::load(
        std::path::Path::new(&cfg.tls_cert),
        std::path::Path::new(&cfg.tls_key),
    )
    .map_err(|e| anyhow::anyhow!("tls_cert/tls_key: {e}"))?;
    let reloads = counters.tls_reloads.clone();
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
    tcp_cfg.metrics_access = metrics_access(cfg)?;
    tcp_cfg.tls = Some(certs.clone());
    tcp_cfg.alt_svc = alt_svc.clone();
    tcp_cfg.threads = cfg.connection_threads;
    let tls_server = serve(tcp, handler.clone(), metrics.clone(), tcp_cfg)?;
    let h3_server = if cfg.http3 {
        let mut h3_cfg = H3Config::new(CACHE_NAME);
        h3_cfg.max_streams = cfg.h3_max_streams;
        h3_cfg.idle_timeout = Duration::from_secs(cfg.h3_idle_secs);
        h3_cfg.max_header_bytes = cfg.h3_max_header_bytes;
        h3_cfg.max_connections = cfg.h3_max_connections;
        h3_cfg.allow_0rtt = cfg.h3_allow_0rtt;
        h3_cfg.alt_svc = alt_svc;
        h3_cfg.metrics_access = metrics_access(cfg)?;
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

/// Who may read `/metrics`: the operators' networks, or the fleet credential.
fn metrics_access(cfg: &EdgeConfig) -> anyhow::Result<cascade_common::MetricsAccess> {
    cascade_common::MetricsAccess::new(&cfg.metrics_networks, &[&cfg.fleet_token])
        .map_err(|e| anyhow::anyhow!("metrics_networks: {e}"))
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
