//! The state of a running origin that services and handlers share: the
//! config, the database and the object store, token keys, the heartbeat
//! batcher, the mailer, the geo database, limits and metrics.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cascade_common::Metrics;
use object_store::ObjectStore;
use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::sync::Notify;

use crate::config::OriginConfig;
use crate::repo::settings;
use crate::service::auth::Accounts;
use crate::service::heartbeats::Heartbeats;
use crate::service::mail::{self, Mailer};
use crate::storage::db::{self, Db};
use crate::storage::objects;

/// Uploads received at once; more are answered 503 with `Retry-After`.
const MAX_CONCURRENT_UPLOADS: usize = 4;

/// Objects whose served ranges are tracked; past this the record restarts.
const SERVED_TRACKED_OBJECTS: usize = 10_000;

/// Shared state of a running origin.
pub struct State {
    pub(crate) cfg: OriginConfig,
    pub(crate) db: Db,
    /// Token signing and the login throttle.
    pub(crate) accounts: Accounts,
    /// Heartbeats waiting to be written.
    pub(crate) heartbeats: Heartbeats,
    /// Where sign-up mail goes: the outbox, and the SMTP relay if any.
    pub(crate) mailer: Box<dyn Mailer>,
    /// The `From` of that mail.
    pub(crate) mail_from: lettre::message::Mailbox,
    pub(crate) auth_events: IntCounterVec,
    pub(crate) billing_events: IntCounterVec,
    pub(crate) playback_results: IntCounterVec,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) jobs_notify: Notify,
    /// Signs playback URLs; `None` when no key is configured.
    pub(crate) signer: Option<cascade_token::Key>,
    /// Country lookups for the playback API.
    pub(crate) geo: cascade_geo::Geo,
    /// Proxies whose forwarded-for headers are believed.
    pub(crate) trusted: Vec<ipnet::IpNet>,
    pub(crate) uploads: tokio::sync::Semaphore,
    pub(crate) metrics: Metrics,
    pub(crate) metrics_jobs: IntCounterVec,
    pub(crate) http_requests: IntCounterVec,
    pub(crate) mezz_bytes: IntCounter,
    pub(crate) mezz_repeat_bytes: IntCounter,
    pub(crate) mezz_requests: IntCounter,
    /// Comments, reactions, polls and flashes, and the bus they go out on.
    pub(crate) interactive: crate::service::realtime::Interactive,
    /// Advertising's client, plans in RAM and metrics.
    pub(crate) ads: crate::service::ad_runtime::AdRuntime,
    /// Live channels' ingest health and counters.
    pub(crate) live: crate::service::live_health::LiveHealth,
    /// Live channels' parts, init segments and manifests.
    pub(crate) live_media: Arc<crate::service::live_media::LiveMedia>,
    /// Ended live events, for the recorder (taken once at start).
    pub(crate) recordings: Mutex<
        Option<tokio::sync::mpsc::UnboundedReceiver<Arc<crate::service::live_media::ChannelMedia>>>,
    >,
    served: Mutex<HashMap<String, Vec<(u64, u64)>>>,
    /// The key-encryption key and the license counters.
    pub(crate) keys: crate::service::kek::KeyService,
    /// The first edge of a playback session (from control, when configured).
    pub(crate) edges: crate::service::edges::EdgeChooser,
}

impl State {
    /// Opens the database (running its migrations) and the object store,
    /// and registers the metrics.
    pub(crate) async fn open(cfg: &OriginConfig) -> anyhow::Result<State> {
        let db = db::open(&cfg.database_url(), cfg.database_max_connections).await?;
        let store = objects::open_local(&cfg.media_dir())?;
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
            cascade_geo::Geo::open(Path::new(&geo_path))?
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
        let heartbeats = Heartbeats::new(cfg.history_buffer_max, metrics.registry())?;
        let secret = jwt_secret(cfg, &db).await?;
        let mail_from = cfg.mail_from.parse().map_err(|_| {
            anyhow::anyhow!("mail_from: not a mailbox like `Name <user@example.com>`")
        })?;
        let outbox = cfg.mail_outbox();
        let mailer = mail::from_config(&outbox, &cfg.smtp_url)
            .map_err(|e| anyhow::anyhow!("mail_outbox {}: {e}", outbox.display()))?;
        let bus = cascade_bus::connect(
            &cfg.nats_url,
            cascade_bus::JetStreamConfig {
                retention: std::time::Duration::from_secs(cfg.bus_retention_secs),
                client_name: "cascade-origin".into(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("nats_url: {e}"))?;
        let interactive = crate::service::realtime::Interactive::new(
            bus,
            counter(
                "origin_realtime_published_total",
                "Real-time events published to the bus, by kind",
                "kind",
            )?,
            counter(
                "origin_realtime_refused_total",
                "Comments, votes and reports refused, by reason",
                "reason",
            )?,
        );
        let live = crate::service::live_health::LiveHealth::new(metrics.registry())?;
        let (live_media, recordings) =
            crate::service::live_media::LiveMedia::new(metrics.registry(), cfg, store.clone())?;
        let live_media = Arc::new(live_media);
        let ads = crate::service::ad_runtime::AdRuntime::new(metrics.registry())?;
        let keys = crate::service::kek::KeyService::new(cfg, metrics.registry())?;
        Ok(State {
            edges: crate::service::edges::EdgeChooser::new(
                &cfg.control_url,
                &cfg.fleet_token,
                &cfg.public_edge_url,
            ),
            keys,
            ads,
            interactive,
            live,
            live_media,
            recordings: Mutex::new(Some(recordings)),
            accounts: Accounts::new(&secret),
            heartbeats,
            mailer,
            mail_from,
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
        })
    }

    /// Counts mezzanine bytes served, and the bytes of them served before:
    /// with shields in front, a byte should leave the origin once.
    pub(crate) fn account_mezzanine(&self, key: &str, start: u64, end: u64) {
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

/// The secret that signs access and stream tokens: the configured one, or
/// one made once and kept in the database so every origin of a fleet shares
/// it.
async fn jwt_secret(cfg: &OriginConfig, db: &Db) -> anyhow::Result<Vec<u8>> {
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
    settings::offer_jwt_secret(db, &fresh).await?;
    let kept = settings::setting(db, "jwt_secret")
        .await?
        .ok_or_else(|| anyhow::anyhow!("the token secret was not kept"))?;
    Ok(kept.into_bytes())
}
