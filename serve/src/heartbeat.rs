//! A caching node's heartbeats to control: its identity, its RAM cache
//! fill and its hit ratio.

use std::time::Duration;

use std::sync::Arc;

use cascade_common::{spawn_heartbeat, Heartbeat, HeartbeatReply, NodeLoad};

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

/// What a node tells control about its load, and how it applies control's
/// answer. Shields have none.
pub trait FleetState: Send + Sync + 'static {
    /// Capacity and load now.
    fn load(&self) -> Option<NodeLoad>;
    /// Applies control's answer to a heartbeat.
    fn apply(&self, reply: HeartbeatReply);
}

/// Heartbeats for a caching node: its identity, its RAM cache fill, its
/// hit ratio from its listener metrics and, for an edge, its load; control's
/// answers go to `state`.
pub fn spawn_node_heartbeat(
    control_url: String,
    fleet_token: String,
    every: Duration,
    node: NodeIdentity,
    metrics: std::sync::Arc<crate::Metrics>,
    cache: cascade_cache::TieredCache,
    state: Option<Arc<dyn FleetState>>,
) -> tokio::task::JoinHandle<()> {
    let applier = state.clone();
    let on_reply = move |reply: HeartbeatReply| {
        if let Some(s) = &applier {
            s.apply(reply);
        }
    };
    let beat = move || {
        let (node, metrics, cache) = (node.clone(), metrics.clone(), cache.clone());
        let load = state.as_ref().and_then(|s| s.load());
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
                load,
            }
        }
    };
    spawn_heartbeat(control_url, fleet_token, every, beat, on_reply)
}
