//! The origin: upload, transcode, catalog and mezzanine serving.
//!
//! Uploads are streamed to disk, probed, and queued; one worker transcodes
//! them into CMAF mezzanine with an asset manifest; published titles are
//! served to shields as byte ranges under `/mezz/`.

#![warn(unreachable_pub)]

pub mod config;
mod http;
mod repo;
mod service;
mod storage;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cascade_common::Metrics;
use object_store::ObjectStore;
use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::sync::Notify;

use repo::catalog;
use service::ingest::worker as jobs;
use service::{accounts, playback};
use storage::db;
use storage::objects as store;

pub use http::{app, parse_range, RangeRequest};
pub use cascade_token::webhook::sign as sign_webhook;
pub use config::OriginConfig;
pub use http::openapi::openapi_json;
pub use service::ingest::transcode;

/// Shared state of a running origin.
pub struct State {
    cfg: OriginConfig,
    db: db::Db,
    /// Token signing and the login throttle.
    accounts: accounts::Accounts,
    /// Heartbeats waiting to be written.
    heartbeats: playback::Heartbeats,
    auth_events: IntCounterVec,
    billing_events: IntCounterVec,
    playback_results: IntCounterVec,
    store: Arc<dyn ObjectStore>,
    jobs_notify: Notify,
    /// Signs playback URLs; `None` when no key is configured.
    signer: Option<cascade_token::Key>,
    /// Country lookups for the playback API.
    geo: cascade_geo::Geo,
    /// Proxies whose forwarded-for headers are believed.
    trusted: Vec<ipnet::IpNet>,
    uploads: tokio::sync::Semaphore,
    metrics: Metrics,
    metrics_jobs: IntCounterVec,
    http_requests: IntCounterVec,
    mezz_bytes: IntCounter,
    mezz_repeat_bytes: IntCounter,
    mezz_requests: IntCounter,
    served: Mutex<HashMap<String, Vec<(u64, u64)>>>,
}

/// Uploads received at once; more are answered 503 with `Retry-After`.
const MAX_CONCURRENT_UPLOADS: usize = 4;

/// Objects whose served ranges are tracked; past this the record restarts.
const SERVED_TRACKED_OBJECTS: usize = 10_000;

impl State {
    /// Counts mezzanine bytes served, and the bytes of them served before:
    /// with shields in front, a byte should leave the origin once.
    fn account_mezzanine(&self, key: &str, start: u64, end: u64) {
        self.mezz_bytes.inc_by(end - start);
        self.mezz_requests.inc();
        let Ok(mut served) = self.served.lock() else {
            return;
        };
        if served.len() >= SERVED_TRACKED_OBJECTS && !served.contains_key(key) {
            served.clear();
        }
        let ranges = served.entry(key.to_string()).or_default();
        let overlap: u64 = ranges
            .iter()
            .map(|&(a, b)| b.min(end).saturating_sub(a.max(start)))
            .sum();
        self.mezz_repeat_bytes.inc_by(overlap);
        ranges.push((start, end));
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(a, b) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *ranges = merged;
    }
}

/// A running origin.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
    flusher: tokio::task::JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Origin {
    /// Mezzanine bytes served so far, and how many of them were repeats.
    pub fn mezzanine_bytes(&self) -> (u64, u64) {
        (
            self.state.mezz_bytes.get(),
            self.state.mezz_repeat_bytes.get(),
        )
    }

    /// Requests for mezzanine media files (ranges or whole) answered so far.
    pub fn mezzanine_requests(&self) -> u64 {
        self.state.mezz_requests.get()
    }

    /// Queues the two sample titles once per data directory.
    pub async fn ensure_samples(&self) -> anyhow::Result<Vec<String>> {
        ensure_samples(&self.state).await
    }

    /// Stops serving and lets the worker stop; an interrupted job resumes on
    /// the next start.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.jobs_notify.notify_one();
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        let _ = self.worker.await;
        // The last heartbeats are written before the pool closes.
        let _ = self.flusher.await;
        self.state.db.close().await;
    }
}

/// Starts an origin: database, store, worker and HTTP listener.
pub async fn start(cfg: &OriginConfig) -> anyhow::Result<Origin> {
    transcode::init();
    // The database holds the token secret: owner-only, like its directory.
    cascade_common::private_dir(std::path::Path::new(&cfg.data_dir))?;
    cascade_common::private_sqlite(&cfg.database_url())?;
    let db = db::open(&cfg.database_url(), cfg.database_max_connections).await?;
    let store = store::open_local(&cfg.media_dir())?;
    let metrics = Metrics::new("origin");
    let metrics_jobs = IntCounterVec::new(
        Opts::new("origin_jobs_total", "Transcode jobs ended, by outcome"),
        &["outcome"],
    )?;
    let http_requests = IntCounterVec::new(
        Opts::new(
            "origin_http_requests_total",
            "Requests answered by the origin",
        ),
        &["status"],
    )?;
    let mezz_bytes = IntCounter::new(
        "origin_mezzanine_bytes_total",
        "Mezzanine bytes served to shields and edges",
    )?;
    let mezz_repeat_bytes = IntCounter::new(
        "origin_mezzanine_repeat_bytes_total",
        "Mezzanine bytes served that had been served before",
    )?;
    metrics
        .registry()
        .register(Box::new(metrics_jobs.clone()))?;
    metrics
        .registry()
        .register(Box::new(http_requests.clone()))?;
    metrics.registry().register(Box::new(mezz_bytes.clone()))?;
    let mezz_requests = IntCounter::new(
        "origin_mezzanine_requests_total",
        "Requests for mezzanine media files answered",
    )?;
    metrics
        .registry()
        .register(Box::new(mezz_requests.clone()))?;
    metrics
        .registry()
        .register(Box::new(mezz_repeat_bytes.clone()))?;
    let env_keys = std::env::var(cascade_common::config::TOKEN_KEYS_ENV).ok();
    let signer = cascade_common::config::build_token_keys(
        "token_keys",
        &cfg.token_keys,
        env_keys.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!(e.join("; ")))?
    .into_iter()
    .next();
    if signer.is_none() {
        tracing::warn!("no token keys: the playback API cannot sign URLs");
    }
    let geo_path = std::env::var("CASCADE_GEOIP_DB").unwrap_or_else(|_| cfg.geoip_db.clone());
    let geo = if geo_path.is_empty() {
        cascade_geo::Geo::none()
    } else {
        cascade_geo::Geo::open(std::path::Path::new(&geo_path))?
    };
    let trusted = cfg
        .trusted_proxies
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let counter = |name: &str, help: &str, label: &str| -> anyhow::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
        metrics.registry().register(Box::new(c.clone()))?;
        Ok(c)
    };
    let auth_events = counter(
        "origin_auth_events_total",
        "Sign-ups, logins, refreshes and refusals",
        "event",
    )?;
    let billing_events = counter(
        "origin_billing_webhooks_total",
        "Payment webhooks, by outcome",
        "outcome",
    )?;
    let playback_results = counter(
        "origin_playback_total",
        "Playback API answers: started, or why not",
        "result",
    )?;
    let heartbeats = playback::Heartbeats::new(cfg.history_buffer_max, metrics.registry())?;
    let secret = jwt_secret(cfg, &db).await?;
    let state = Arc::new(State {
        accounts: accounts::Accounts::new(&secret),
        heartbeats,
        auth_events,
        billing_events,
        playback_results,
        signer,
        geo,
        trusted,
        cfg: {
            let mut cfg = cfg.clone();
            if let Ok(secret) = std::env::var("CASCADE_BILLING_WEBHOOK_SECRET") {
                cfg.billing_webhook_secret = secret;
            }
            cfg
        },
        db,
        store,
        jobs_notify: Notify::new(),
        uploads: tokio::sync::Semaphore::new(MAX_CONCURRENT_UPLOADS),
        metrics,
        metrics_jobs,
        http_requests,
        mezz_bytes,
        mezz_repeat_bytes,
        mezz_requests,
        served: Mutex::new(HashMap::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(jobs::run(state.clone(), stop.clone()));
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(playback::run_flusher(
        state.clone(),
        std::time::Duration::from_millis(cfg.history_flush_ms),
        tx.subscribe(),
    ));
    let router = app(state.clone());
    let server = tokio::spawn(cascade_common::serve_router(
        listener,
        router,
        cascade_common::HttpLimits::default(),
        async move {
            let _ = rx.changed().await;
        },
    ));
    tracing::info!(%addr, "origin listening");
    Ok(Origin {
        addr,
        state,
        stop,
        server,
        worker,
        flusher,
        shutdown: tx,
    })
}

/// The sample titles: FFmpeg test sources with a moving picture and a tone.
const SAMPLES: [(&str, &str); 2] = [
    (
        "Sample: test pattern 1080p",
        "testsrc2=s=1920x1080:r=30:d=30[out0];sine=f=440:beep_factor=4:sample_rate=48000:d=30[out1]",
    ),
    (
        "Sample: colour bars 720p",
        "testsrc=s=1280x720:r=30:d=30[out0];sine=f=660:sample_rate=48000:d=30[out1]",
    ),
];

async fn ensure_samples(state: &Arc<State>) -> anyhow::Result<Vec<String>> {
    if db::setting(&state.db, "samples").await?.is_some() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::new();
    for (title, graph) in SAMPLES {
        let asset = storage::ids::short_id();
        let job = storage::ids::short_id();
        let meta = catalog::UploadMeta {
            name: title.to_string(),
            synopsis: "An FFmpeg test source with a moving picture and a tone.".into(),
            genres: vec!["sample".into()],
            ..Default::default()
        };
        db::create_asset_and_job(&state.db, &asset, &job, title, "lavfi", graph, &meta).await?;
        ids.push(asset);
    }
    db::set_setting(&state.db, "samples", &ids.join(",")).await?;
    state.jobs_notify.notify_one();
    Ok(ids)
}

/// The secret that signs access and stream tokens: the configured one, or
/// one made once and kept in the database so every origin of a fleet shares
/// it.
async fn jwt_secret(cfg: &OriginConfig, db: &db::Db) -> anyhow::Result<Vec<u8>> {
    let configured = std::env::var("CASCADE_JWT_SECRET").unwrap_or_else(|_| cfg.jwt_secret.clone());
    if !configured.is_empty() {
        if configured.len() < 32 {
            anyhow::bail!("jwt_secret: must be at least 32 characters");
        }
        return Ok(configured.into_bytes());
    }
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| anyhow::anyhow!("no randomness for the token secret"))?;
    let fresh: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ('jwt_secret', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind(&fresh)
    .execute(&db.pool)
    .await?;
    let kept = db::setting(db, "jwt_secret")
        .await?
        .ok_or_else(|| anyhow::anyhow!("the token secret was not kept"))?;
    Ok(kept.into_bytes())
}

/// The viewer's address: the peer, or the address trusted proxies (the
/// edges) forwarded.
pub(crate) struct ClientIp(pub(crate) std::net::IpAddr);

impl axum::extract::FromRequestParts<Arc<State>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<State>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        let values = |name: &str| -> Vec<&str> {
            parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        let xff = values("x-forwarded-for");
        let fwd = values("forwarded");
        Ok(ClientIp(cascade_geo::client_ip(
            peer,
            &xff,
            &fwd,
            &state.trusted,
        )))
    }
}
