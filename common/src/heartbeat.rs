//! Registration with control: a node says who it is and how its cache is
//! doing, every few seconds. Control marks a node down when it goes quiet.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Unique node name.
    pub name: String,
    /// `edge` or `shield`.
    pub role: String,
    /// Region, such as `in-west`.
    pub region: String,
    /// Base URL.
    pub url: String,
    /// Bytes in the RAM cache.
    pub cache_memory_bytes: u64,
    /// Objects in the RAM cache.
    pub cache_entries: u64,
    /// Requests answered from cache so far.
    pub requests_hit: u64,
    /// Requests answered so far.
    pub requests_total: u64,
    /// An edge's capacity and load; absent from shields and older edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<NodeLoad>,
}

/// An edge's configured capacity and measured load, as its heartbeat
/// carries them: what control steers viewers and caps regions by.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Configured egress capacity, bits per second; 0: not limited.
    pub capacity_egress_bps: u64,
    /// Configured most client connections; 0: not limited.
    pub capacity_connections: u64,
    /// Configured CPU capacity, as a share of all cores (0 to 1); 0: not limited.
    pub capacity_cpu: f64,
    /// Egress now, bits per second.
    pub egress_bps: u64,
    /// Client connections open now.
    pub connections: u64,
    /// CPU in use now, as a share of all cores.
    pub cpu: f64,
    /// The highest share of any configured capacity in use (1.0: full).
    pub utilisation: f64,
    /// The shedding level: 0 none, 1 prefetch and pre-warm, 2 interactive
    /// fan-out slowed, 3 new sessions capped, 4 new sessions refused.
    pub shed_level: u8,
    /// The operator drained this edge (`cascade ctl drain`).
    #[serde(default)]
    pub draining: bool,
}

/// What control answers a heartbeat with: the fleet state a node applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Quality caps in force (panic controls), for edges.
    #[serde(default)]
    pub caps: Vec<QualityCap>,
    /// Whether an operator drained this node.
    #[serde(default)]
    pub draining: bool,
    /// The edges an edge offers its players as steering pathways, itself
    /// first, then the best others for its region.
    #[serde(default)]
    pub pathways: Vec<Pathway>,
    /// The version of the caps and drain: it grows with every change, so a
    /// node keeps a pushed change over a heartbeat answer made before it.
    #[serde(default)]
    pub version: u64,
}

/// An edge players may be steered to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pathway {
    /// Its node name: the HLS pathway id and the DASH service location.
    pub name: String,
    /// Its base URL for viewers.
    pub url: String,
}

/// A cap on the rungs new manifests offer: for one region's edges, one
/// channel, or everyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityCap {
    /// The region whose edges apply it; `None`: every region.
    #[serde(default)]
    pub region: Option<String>,
    /// The live channel it applies to; `None`: every title and channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// Rungs taller than this many lines are left out of manifests.
    pub max_height: u32,
    /// Unix seconds at which it lapses by itself; `None`: until cleared.
    #[serde(default)]
    pub until: Option<u64>,
    /// `operator` or `auto` (a region's egress over its threshold).
    #[serde(default)]
    pub source: String,
}

/// The HTTP client of a node's calls to control and the origin (heartbeats,
/// key and revocation polls): a short timeout, no proxy, and pooled
/// connections dropped after 20 s idle, before the axum roles close them at
/// 30 s, so a call never lands on a connection the server is closing.
/// `None` (logged) if it cannot be built.
pub fn fleet_client(what: &str) -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .inspect_err(|e| tracing::error!(error = %e, "{what} client"))
        .ok()
}

/// Sends a heartbeat made by `beat` to control every `every`, until aborted,
/// and hands control's answer (caps, drain) to `on_reply`. A failed send is
/// logged and retried at the next beat.
pub fn spawn_heartbeat<F>(
    control_url: String,
    fleet_token: String,
    every: Duration,
    beat: impl Fn() -> F + Send + 'static,
    on_reply: impl Fn(HeartbeatReply) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = Heartbeat> + Send,
{
    tokio::spawn(async move {
        let Some(client) = fleet_client("heartbeat") else {
            return;
        };
        let url = format!(
            "{}/api/v1/fleet/heartbeat",
            control_url.trim_end_matches('/')
        );
        loop {
            let hb = beat().await;
            let sent = client
                .post(&url)
                .bearer_auth(&fleet_token)
                .json(&hb)
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    // Control's answer is small; a larger one is not its.
                    match r.bytes().await.map(|b| {
                        (b.len() <= MAX_REPLY_BYTES)
                            .then(|| serde_json::from_slice::<HeartbeatReply>(&b).ok())
                            .flatten()
                    }) {
                        Ok(Some(reply)) => on_reply(reply),
                        _ => tracing::warn!("control's heartbeat answer is unreadable"),
                    }
                }
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(
                    status = r.status().as_u16(),
                    "control refused the heartbeat"
                ),
                Err(e) => tracing::warn!(error = %e.without_url(), "heartbeat to control failed"),
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Largest heartbeat answer read.
const MAX_REPLY_BYTES: usize = 1 << 20;
