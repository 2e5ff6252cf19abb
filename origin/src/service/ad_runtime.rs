//! What the origin's advertising keeps while it runs: the HTTP client for
//! ad servers, creatives and beacons; decided plans in RAM; the metrics.
//! The logic is in `service::ads`; this sits apart so the shared state can
//! hold it without importing the services that use the state.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::Notify;

/// Plans kept in RAM (each is a few hundred bytes).
const PLAN_ENTRIES: u64 = 100_000;
/// Beacon keys remembered as recorded (about 80 bytes each).
const RECORDED_ENTRIES: u64 = 1_000_000;

/// Advertising's running parts.
pub(crate) struct AdRuntime {
    /// For ad servers, VMAP schedules, creatives' media and beacons. No
    /// redirects past a few, a connect timeout; each call sets its own
    /// deadline.
    pub(crate) http: reqwest::Client,
    /// Sessions' plans (JSON as stored), by stream.
    pub(crate) plans: moka::future::Cache<String, Arc<String>>,
    /// Sessions' live breaks as decided (`{stream}/{event}/{break}`; the
    /// answer's JSON), so the edges of a session asking at once share one
    /// decision.
    pub(crate) live: moka::future::Cache<String, Arc<String>>,
    /// Woken when beacons are recorded.
    pub(crate) beacons_due: Notify,
    /// Beacons recorded (`{stream}/{break}/{ad}/{event}`): a report that
    /// reaches only these needs no database write.
    pub(crate) recorded: moka::sync::Cache<String, ()>,
    /// Breaks asked to be filled.
    pub(crate) avails: IntCounter,
    /// Breaks that got at least one ad.
    pub(crate) avails_filled: IntCounter,
    /// Ads placed in breaks.
    pub(crate) ads_placed: IntCounter,
    /// Ad server (and VMAP) answers, by outcome.
    pub(crate) server_answers: IntCounterVec,
    /// Ad server latency.
    pub(crate) server_seconds: Histogram,
    /// Creatives, by what happened (`fetch_started`, `conditioning`,
    /// `fetch_failed`, `not_ready`).
    pub(crate) creatives: IntCounterVec,
    /// Beacons, by outcome (`sent`, `retried`, `failed`).
    pub(crate) beacons: IntCounterVec,
    /// Live channels' SCTE-35 cues and operators' breaks, by what they did.
    pub(crate) live_cues: IntCounterVec,
}

impl AdRuntime {
    /// Builds the client and registers the metrics.
    pub(crate) fn new(registry: &Registry) -> anyhow::Result<AdRuntime> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("cascade-origin/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let avails = IntCounter::new(
            "origin_ad_avails_total",
            "Ad breaks (avails) the origin was asked to fill",
        )?;
        let avails_filled = IntCounter::new(
            "origin_ad_avails_filled_total",
            "Ad breaks that got at least one ad (fill rate: this over origin_ad_avails_total)",
        )?;
        let ads_placed = IntCounter::new("origin_ads_placed_total", "Ads placed in breaks")?;
        let server_answers = IntCounterVec::new(
            Opts::new(
                "origin_ad_server_answers_total",
                "Ad server and VMAP answers, by outcome (ok, timeout, http_error, garbage, no_ad, wrapper_limit)",
            ),
            &["outcome"],
        )?;
        let server_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "origin_ad_server_seconds",
                "Time an ad server or VMAP took to answer",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]),
        )?;
        let creatives = IntCounterVec::new(
            Opts::new(
                "origin_ad_creatives_total",
                "Creatives by what happened to them (fetch_started, conditioning, fetch_failed, not_ready)",
            ),
            &["event"],
        )?;
        let beacons = IntCounterVec::new(
            Opts::new(
                "origin_ad_beacons_total",
                "Tracking beacons by outcome (sent, retried, failed, recorded)",
            ),
            &["outcome"],
        )?;
        let live_cues = IntCounterVec::new(
            Opts::new(
                "origin_live_cues_total",
                "Live ad break cues: SCTE-35 from encoders (break, return, ignored, bad) and operators' calls (operator_break, operator_return)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(live_cues.clone()))?;
        registry.register(Box::new(avails.clone()))?;
        registry.register(Box::new(avails_filled.clone()))?;
        registry.register(Box::new(ads_placed.clone()))?;
        registry.register(Box::new(server_answers.clone()))?;
        registry.register(Box::new(server_seconds.clone()))?;
        registry.register(Box::new(creatives.clone()))?;
        registry.register(Box::new(beacons.clone()))?;
        Ok(AdRuntime {
            http,
            plans: moka::future::Cache::builder()
                .max_capacity(PLAN_ENTRIES)
                .time_to_idle(Duration::from_secs(6 * 3600))
                .build(),
            live: moka::future::Cache::builder()
                .max_capacity(PLAN_ENTRIES)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            beacons_due: Notify::new(),
            recorded: moka::sync::Cache::builder()
                .max_capacity(RECORDED_ENTRIES)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            avails,
            avails_filled,
            ads_placed,
            server_answers,
            server_seconds,
            creatives,
            beacons,
            live_cues,
        })
    }
}
