//! A caching node's heartbeats to control: its identity, its RAM cache
//! fill and its hit ratio.

use std::time::Duration;

use cascade_common::{spawn_heartbeat, Heartbeat};

/// Who a caching node (edge or shield) is, for its heartbeats.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Unique node name.
    pub name: String,
    /// `edge` or `shield`.
    pub role: &'static str,
    /// Region.
    pub region: String,
    /// Base URL.
    pub url: String,
}

/// Heartbeats for a caching node: its identity, its RAM cache fill and its
/// hit ratio from its listener metrics.
pub fn spawn_node_heartbeat(
    control_url: String,
    fleet_token: String,
    every: Duration,
    node: NodeIdentity,
    metrics: std::sync::Arc<crate::Metrics>,
    cache: cascade_cache::TieredCache,
) -> tokio::task::JoinHandle<()> {
    spawn_heartbeat(control_url, fleet_token, every, move || {
        let (node, metrics, cache) = (node.clone(), metrics.clone(), cache.clone());
        async move {
            let (bytes, entries) = cache.memory_usage().await;
            Heartbeat {
                name: node.name,
                role: node.role.into(),
                region: node.region,
                url: node.url,
                cache_memory_bytes: bytes,
                cache_entries: entries,
                requests_hit: metrics.requests_with_cache("hit"),
                requests_total: metrics.requests_total(),
            }
        }
    })
}
