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

/// Sends a heartbeat made by `beat` to control every `every`, until aborted.
/// A failed send is logged and retried at the next beat.
pub fn spawn_heartbeat<F>(
    control_url: String,
    fleet_token: String,
    every: Duration,
    beat: impl Fn() -> F + Send + 'static,
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
