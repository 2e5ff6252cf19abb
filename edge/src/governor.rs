//! The edge's load governor, the shell around `overload.rs`: it samples
//! egress, connections and CPU four times a second, moves the shedding
//! level, and answers the pipeline's questions: may this session start
//! here, what is the tallest rung it may be offered, what CMSD to send.
//! It also holds what control says (quality caps, drain) and reports the
//! load in heartbeats.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cascade_common::{HeartbeatReply, Metrics, NodeLoad, Pathway, QualityCap};
use cascade_serve::Response;
use http::StatusCode;
use prometheus::{Gauge, GaugeVec, IntCounterVec, IntGauge, Opts};

use crate::overload::{fair_share_kbps, Capacity, Level, Load, Policy, Shedder};

/// How often load is sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// The window egress is averaged over (responses are counted as they end).
const EGRESS_WINDOW: Duration = Duration::from_secs(2);
/// Most sessions the governor remembers; past it the least recent go
/// (and would count as new if they came back).
const MAX_SESSIONS: u64 = 1_000_000;

/// What the governor is configured with.
#[derive(Debug, Clone)]
pub(crate) struct GovernorConfig {
    pub(crate) capacity: Capacity,
    pub(crate) policy: Policy,
    /// The tallest rung new sessions are offered while capping.
    pub(crate) shed_max_height: u32,
    /// `Retry-After` of a refused session, in seconds.
    pub(crate) retry_after_secs: u64,
    /// A session not heard from for this long is new when it comes back.
    pub(crate) session_idle: Duration,
    /// This edge's region (for quality caps) and name (CMSD `n`).
    pub(crate) region: String,
    pub(crate) node: String,
    /// CMSD `mb` never suggests less than this, in kbit/s.
    pub(crate) mb_floor_kbps: u64,
}

/// What admission decided for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    /// The tallest rung it is offered, when it started while capping.
    pub(crate) cap: Option<u32>,
    /// It started with this request.
    pub(crate) new: bool,
}

/// The governor.
pub(crate) struct Governor {
    cfg: GovernorConfig,
    shedder: Mutex<Shedder>,
    level: AtomicU8,
    draining: AtomicBool,
    /// The version of control's caps and drain applied (see `HeartbeatReply`).
    state_version: std::sync::atomic::AtomicU64,
    sessions: moka::sync::Cache<String, Option<u32>>,
    caps: RwLock<Vec<QualityCap>>,
    /// The edges this edge's players may be steered to, itself first.
    pathways: RwLock<Arc<Vec<Pathway>>>,
    sampler: Mutex<Sampler>,
    last: Mutex<(Load, f64)>,
    started: Instant,
    metrics: GovernorMetrics,
}

/// The governor's metrics.
struct GovernorMetrics {
    capacity: GaugeVec,
    load: GaugeVec,
    utilisation: Gauge,
    level: IntGauge,
    transitions: IntCounterVec,
    shed: IntCounterVec,
    sessions: IntGauge,
    draining: IntGauge,
}

impl GovernorMetrics {
    fn register(m: &Metrics) -> anyhow::Result<GovernorMetrics> {
        let g = GovernorMetrics {
            capacity: GaugeVec::new(
                Opts::new(
                    "edge_capacity",
                    "Configured capacity, by resource (egress_bps, connections, cpu share); 0: not limited",
                ),
                &["resource"],
            )?,
            load: GaugeVec::new(
                Opts::new(
                    "edge_load",
                    "Measured load, by resource (egress_bps, connections, cpu share)",
                ),
                &["resource"],
            )?,
            utilisation: Gauge::new(
                "edge_utilisation",
                "The highest share of any configured capacity in use (1: full)",
            )?,
            level: IntGauge::new(
                "edge_shed_level",
                "Shedding level: 0 normal, 1 no prefetch/pre-warm, 2 slow fan-out, 3 new sessions capped, 4 new sessions refused",
            )?,
            transitions: IntCounterVec::new(
                Opts::new(
                    "edge_shed_transitions_total",
                    "Changes of the shedding level, by the level entered",
                ),
                &["level"],
            )?,
            shed: IntCounterVec::new(
                Opts::new(
                    "edge_shed_total",
                    "Work shed, by kind: prefetch, prewarm, fanout (reaction batches merged), capped_session, refused_session, drained_session",
                ),
                &["kind"],
            )?,
            sessions: IntGauge::new(
                "edge_sessions",
                "Playback sessions seen recently (playing)",
            )?,
            draining: IntGauge::new("edge_draining", "1 while an operator drains this edge")?,
        };
        let r = m.registry();
        r.register(Box::new(g.capacity.clone()))?;
        r.register(Box::new(g.load.clone()))?;
        r.register(Box::new(g.utilisation.clone()))?;
        r.register(Box::new(g.level.clone()))?;
        r.register(Box::new(g.transitions.clone()))?;
        r.register(Box::new(g.shed.clone()))?;
        r.register(Box::new(g.sessions.clone()))?;
        r.register(Box::new(g.draining.clone()))?;
        Ok(g)
    }
}

impl Governor {
    pub(crate) fn new(cfg: GovernorConfig, metrics: &Metrics) -> anyhow::Result<Arc<Governor>> {
        let m = GovernorMetrics::register(metrics)?;
        m.capacity
            .with_label_values(&["egress_bps"])
            .set(cfg.capacity.egress_bps as f64);
        m.capacity
            .with_label_values(&["connections"])
            .set(cfg.capacity.connections as f64);
        m.capacity.with_label_values(&["cpu"]).set(cfg.capacity.cpu);
        for l in Level::ALL {
            m.transitions.with_label_values(&[l.name()]);
        }
        if !cfg.capacity.is_limited() {
            tracing::info!("no capacity configured (capacity_*): this edge never sheds load");
        }
        Ok(Arc::new(Governor {
            shedder: Mutex::new(Shedder::new(cfg.policy.clone())),
            sessions: moka::sync::Cache::builder()
                .max_capacity(MAX_SESSIONS)
                .time_to_idle(cfg.session_idle)
                .build(),
            cfg,
            level: AtomicU8::new(0),
            draining: AtomicBool::new(false),
            state_version: std::sync::atomic::AtomicU64::new(0),
            caps: RwLock::new(Vec::new()),
            pathways: RwLock::new(Arc::new(Vec::new())),
            sampler: Mutex::new(Sampler::default()),
            last: Mutex::new((Load::default(), 0.0)),
            started: Instant::now(),
            metrics: m,
        }))
    }

    /// The shedding level now.
    pub(crate) fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Whether this kind of optional work (prefetch, pre-warm) may run now;
    /// counted when it may not.
    pub(crate) fn allows_optional(&self, kind: &str) -> bool {
        if self.level() >= Level::NoPrefetch {
            self.metrics.shed.with_label_values(&[kind]).inc();
            return false;
        }
        true
    }

    /// Whether reaction batches are sent to viewers less often now.
    pub(crate) fn slows_fanout(&self) -> bool {
        self.level() >= Level::SlowFanout
    }

    /// Counts one merged reaction batch.
    pub(crate) fn count_fanout_shed(&self) {
        self.metrics.shed.with_label_values(&["fanout"]).inc();
    }

    /// Admits a request of the session `key`: a session seen recently
    /// always is (the last thing an edge refuses is video to a viewer
    /// already watching); a new one is capped or refused as the level says,
    /// and refused while the edge is drained.
    pub(crate) fn admit(&self, key: &str) -> Result<Admission, Box<Response>> {
        if let Some(cap) = self.sessions.get(key) {
            return Ok(Admission { cap, new: false });
        }
        let level = self.level();
        let draining = self.draining.load(Ordering::Relaxed);
        if level >= Level::RefuseNew || draining {
            let (kind, message) = if draining {
                (
                    "drained_session",
                    "this edge is being drained for maintenance; start playback elsewhere",
                )
            } else {
                (
                    "refused_session",
                    "this edge is at capacity; retry shortly or start playback elsewhere",
                )
            };
            self.metrics.shed.with_label_values(&[kind]).inc();
            let code = if draining { "draining" } else { "overloaded" };
            let resp = Response::error(StatusCode::SERVICE_UNAVAILABLE, code, message)
                .header("retry-after", &self.cfg.retry_after_secs.to_string())
                .header("cache-control", "no-store");
            return Err(Box::new(resp));
        }
        let cap = (level >= Level::CapNew).then_some(self.cfg.shed_max_height);
        if cap.is_some() {
            self.metrics
                .shed
                .with_label_values(&["capped_session"])
                .inc();
        }
        self.sessions.insert(key.to_string(), cap);
        Ok(Admission { cap, new: true })
    }

    /// The tallest rung a manifest may offer: the session's own cap and
    /// the operators' caps for this edge's region and `channel` (or for
    /// everything), whichever is lowest.
    pub(crate) fn max_height(
        &self,
        admission: Option<Admission>,
        channel: Option<&str>,
    ) -> Option<u32> {
        let now = cascade_serve::unix_now();
        let panic = self
            .caps
            .read()
            .map(|caps| {
                caps.iter()
                    .filter(|c| c.until.is_none_or(|u| u > now))
                    .filter(|c| c.region.as_deref().is_none_or(|r| r == self.cfg.region))
                    .filter(|c| c.channel.is_none() || c.channel.as_deref() == channel)
                    .map(|c| c.max_height)
                    .min()
            })
            .ok()
            .flatten();
        match (admission.and_then(|a| a.cap), panic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `CMSD-Dynamic` for an answer now (CTA-5006): this edge, with `du`
    /// (duress) while it sheds new sessions and `mb` (the most a player
    /// should fetch, kbit/s) while it sheds anything, from an even share
    /// of the egress capacity, and from `cap_kbps` when a cap applies.
    pub(crate) fn cmsd_dynamic(&self, cap_kbps: Option<u64>) -> String {
        let level = self.level();
        let mut out = format!("\"{}\"", self.cfg.node);
        let share = (level > Level::Normal)
            .then(|| {
                fair_share_kbps(
                    &self.cfg.capacity,
                    self.sessions.entry_count(),
                    self.cfg.mb_floor_kbps,
                )
            })
            .flatten();
        let mb = match (share, cap_kbps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(mb) = mb {
            out.push_str(&format!(";mb={mb}"));
        }
        if level >= Level::CapNew || self.draining.load(Ordering::Relaxed) {
            out.push_str(";du");
        }
        out
    }

    /// Takes a load sample; moves the level, logging and counting a change.
    pub(crate) fn sample(&self, load: Load, now: Duration) {
        let u = self.cfg.capacity.utilisation(&load);
        if let Ok(mut last) = self.last.lock() {
            *last = (load, u);
        }
        let m = &self.metrics;
        m.load
            .with_label_values(&["egress_bps"])
            .set(load.egress_bps as f64);
        m.load
            .with_label_values(&["connections"])
            .set(load.connections as f64);
        m.load.with_label_values(&["cpu"]).set(load.cpu);
        m.utilisation.set(u);
        self.sessions.run_pending_tasks();
        m.sessions.set(self.sessions.entry_count() as i64);
        let changed = self.shedder.lock().ok().and_then(|mut s| s.sample(u, now));
        if let Some(level) = changed {
            let before = self.level();
            self.level.store(level as u8, Ordering::Relaxed);
            m.level.set(level as i64);
            m.transitions.with_label_values(&[level.name()]).inc();
            let line = if level > before {
                "shedding more"
            } else {
                "shedding less"
            };
            tracing::warn!(
                from = before.name(),
                to = level.name(),
                utilisation = format!("{u:.2}"),
                egress_bps = load.egress_bps,
                connections = load.connections,
                cpu = format!("{:.2}", load.cpu),
                "{line}"
            );
        }
    }

    /// Samples the listener metrics and the process's CPU every
    /// [`SAMPLE_EVERY`] until aborted.
    pub(crate) fn spawn_sampler(
        self: Arc<Self>,
        metrics: Arc<Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = self.started.elapsed();
                let load = match self.sampler.lock() {
                    Ok(mut s) => s.measure(&metrics, now),
                    Err(_) => continue,
                };
                self.sample(load, now);
            }
        })
    }

    /// Whether an operator drains this edge.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The steering pathways from control: this edge first, then others.
    pub(crate) fn pathways(&self) -> Arc<Vec<Pathway>> {
        self.pathways.read().map(|p| p.clone()).unwrap_or_default()
    }

    /// This edge's region.
    pub(crate) fn region(&self) -> &str {
        &self.cfg.region
    }

    /// Applies control's state: the quality caps in force, the drain and
    /// the steering pathways.
    pub(crate) fn apply_fleet_state(&self, reply: HeartbeatReply) {
        // Only a list that starts with this edge is its own.
        let pathways = if reply
            .pathways
            .first()
            .is_some_and(|p| p.name == self.cfg.node)
        {
            reply.pathways
        } else {
            Vec::new()
        };
        if let Ok(mut p) = self.pathways.write() {
            if **p != pathways {
                tracing::info!(pathways = pathways.len(), "steering pathways from control");
                *p = Arc::new(pathways);
            }
        }
        // An answer made before a change already pushed is not applied.
        // (Control restarted with an older database starts again from 0.)
        let known = self.state_version.load(Ordering::Relaxed);
        if reply.version < known && reply.version != 0 {
            return;
        }
        self.state_version.store(reply.version, Ordering::Relaxed);
        let was = self.draining.swap(reply.draining, Ordering::Relaxed);
        if was != reply.draining {
            tracing::warn!(
                draining = reply.draining,
                "control changed this edge's drain"
            );
        }
        self.metrics.draining.set(i64::from(reply.draining));
        if let Ok(mut caps) = self.caps.write() {
            if *caps != reply.caps {
                tracing::warn!(caps = reply.caps.len(), "quality caps from control applied");
                *caps = reply.caps;
            }
        }
    }
}

impl cascade_serve::FleetState for Governor {
    fn load(&self) -> Option<NodeLoad> {
        let (load, u) = self.last.lock().map(|l| *l).ok()?;
        Some(NodeLoad {
            capacity_egress_bps: self.cfg.capacity.egress_bps,
            capacity_connections: self.cfg.capacity.connections,
            capacity_cpu: self.cfg.capacity.cpu,
            egress_bps: load.egress_bps,
            connections: load.connections,
            cpu: load.cpu,
            utilisation: u,
            shed_level: self.level() as u8,
            draining: self.draining(),
        })
    }

    fn apply(&self, reply: HeartbeatReply) {
        self.apply_fleet_state(reply);
    }
}

/// Turns counters into rates: egress over a sliding window, CPU since the
/// last sample.
#[derive(Default)]
struct Sampler {
    egress: VecDeque<(Duration, u64)>,
    cpu: Option<(Duration, u64)>,
}

impl Sampler {
    fn measure(&mut self, metrics: &Metrics, now: Duration) -> Load {
        let bytes = metrics.egress_bytes();
        self.egress.push_back((now, bytes));
        while self
            .egress
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > EGRESS_WINDOW)
        {
            self.egress.pop_front();
        }
        let egress_bps = match self.egress.front() {
            Some((t0, b0)) if now > *t0 => {
                ((bytes - b0) as f64 * 8.0 / (now - *t0).as_secs_f64()) as u64
            }
            _ => 0,
        };
        let cpu = match (cpu_ticks(), self.cpu) {
            (Some(ticks), Some((t0, ticks0))) if now > t0 => {
                self.cpu = Some((now, ticks));
                let busy = ticks.saturating_sub(ticks0) as f64 / TICKS_PER_SEC;
                busy / (now - t0).as_secs_f64() / cores()
            }
            (Some(ticks), _) => {
                self.cpu = Some((now, ticks));
                0.0
            }
            (None, _) => 0.0,
        };
        Load {
            egress_bps,
            connections: metrics.connections_open(),
            cpu,
        }
    }
}

/// Clock ticks per second of `/proc/self/stat`'s CPU times: `USER_HZ`,
/// which Linux fixes at 100 for user space on every architecture we run.
const TICKS_PER_SEC: f64 = 100.0;

/// User and system CPU ticks of this process so far.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces, in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn governor() -> Arc<Governor> {
        Governor::new(
            GovernorConfig {
                capacity: Capacity {
                    connections: 10,
                    ..Capacity::default()
                },
                policy: Policy::default(),
                shed_max_height: 360,
                retry_after_secs: 7,
                session_idle: Duration::from_secs(60),
                region: "in".into(),
                node: "edge-a".into(),
                mb_floor_kbps: 300,
            },
            &Metrics::new("edge"),
        )
        .unwrap()
    }

    fn conns(n: u64) -> Load {
        Load {
            connections: n,
            ..Load::default()
        }
    }

    #[test]
    fn sessions_playing_are_served_while_new_ones_are_capped_then_refused() {
        let g = governor();
        let playing = g.admit("old").unwrap();
        assert_eq!(
            playing,
            Admission {
                cap: None,
                new: true
            }
        );
        g.sample(conns(9), Duration::from_secs(1));
        assert_eq!(g.level(), Level::CapNew);
        assert_eq!(g.admit("capped").unwrap().cap, Some(360));
        assert!(g.cmsd_dynamic(None).ends_with(";du"));
        g.sample(conns(20), Duration::from_secs(2));
        let refused = g.admit("late").unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers["retry-after"], "7");
        assert_eq!(
            g.admit("old").unwrap(),
            Admission {
                cap: None,
                new: false
            }
        );
        assert_eq!(
            g.admit("capped").unwrap().cap,
            Some(360),
            "a cap stays with its session"
        );
        assert!(!g.allows_optional("prefetch"));
    }

    #[test]
    fn caps_apply_by_region_and_channel_and_lapse() {
        let g = governor();
        let now = cascade_serve::unix_now();
        let cap = |region: Option<&str>, channel: Option<&str>, h, until| QualityCap {
            region: region.map(Into::into),
            channel: channel.map(Into::into),
            max_height: h,
            until,
            source: "operator".into(),
        };
        g.apply_fleet_state(HeartbeatReply {
            pathways: Vec::new(),
            version: 1,
            caps: vec![
                cap(Some("in"), None, 480, None),
                cap(Some("us"), None, 240, None),
                cap(None, Some("final"), 360, Some(now + 60)),
                cap(None, None, 144, Some(now - 1)),
            ],
            draining: false,
        });
        assert_eq!(g.max_height(None, None), Some(480));
        assert_eq!(g.max_height(None, Some("final")), Some(360));
        let capped = Some(Admission {
            cap: Some(240),
            new: false,
        });
        assert_eq!(g.max_height(capped, None), Some(240));
        g.apply_fleet_state(HeartbeatReply {
            version: 2,
            ..HeartbeatReply::default()
        });
        assert_eq!(g.max_height(None, Some("final")), None);
        g.apply_fleet_state(HeartbeatReply {
            version: 1,
            caps: vec![cap(None, None, 144, None)],
            ..HeartbeatReply::default()
        });
        assert_eq!(g.max_height(None, None), None, "a stale answer is ignored");
    }

    #[test]
    fn a_drained_edge_starts_no_session() {
        let g = governor();
        g.admit("old").unwrap();
        g.apply_fleet_state(HeartbeatReply {
            caps: Vec::new(),
            draining: true,
            pathways: Vec::new(),
            version: 1,
        });
        assert!(g.admit("old").is_ok());
        let r = g.admit("new").unwrap_err();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn cpu_ticks_are_read() {
        assert!(cpu_ticks().is_some());
    }
}
