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
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "heartbeat client");
                return;
            }
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
