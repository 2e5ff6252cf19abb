//! The caching nodes control can reach: configured ones and registered ones,
//! merged into one list that purge and pre-warm fan out to. Pure: the
//! registry snapshot and each node's quiet time come in, targets go out.

use std::time::Duration;

use cascade_common::Heartbeat;

use crate::Node;

/// An edge or shield that a fan-out may contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Its unique name.
    pub(crate) name: String,
    /// `edge` or `shield`.
    pub(crate) role: String,
    /// Its region, for registered nodes; configured nodes have none.
    pub(crate) region: Option<String>,
    /// Its base URL, without a trailing `/`.
    pub(crate) url: String,
    /// Registered, but silent longer than `node_down_after_secs`: not contacted.
    pub(crate) down: bool,
}

/// Every edge and shield, sorted by name: the configured ones (never down:
/// control has no heartbeat to judge them by), then the registered ones,
/// which replace configured nodes of the same name. `registered` pairs each
/// heartbeat with the time since it arrived.
pub(crate) fn targets(
    configured: &[Node],
    registered: &[(Heartbeat, Duration)],
    down_after: Duration,
) -> Vec<Target> {
    let mut out: Vec<Target> = configured
        .iter()
        .filter(|n| is_caching_role(&n.role))
        .filter(|n| !registered.iter().any(|(b, _)| b.name == n.name))
        .map(|n| Target {
            name: n.name.clone(),
            role: n.role.clone(),
            region: None,
            url: n.url.trim_end_matches('/').to_string(),
            down: false,
        })
        .collect();
    out.extend(
        registered
            .iter()
            .filter(|(b, _)| is_caching_role(&b.role))
            .map(|(b, quiet)| Target {
                name: b.name.clone(),
                role: b.role.clone(),
                region: Some(b.region.clone()),
                url: b.url.trim_end_matches('/').to_string(),
                down: *quiet > down_after,
            }),
    );
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn is_caching_role(role: &str) -> bool {
    matches!(role, "edge" | "shield")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(name: &str, role: &str, url: &str) -> Heartbeat {
        Heartbeat {
            name: name.into(),
            role: role.into(),
            region: "r1".into(),
            url: url.into(),
            cache_memory_bytes: 0,
            cache_entries: 0,
            requests_hit: 0,
            requests_total: 0,
            load: None,
        }
    }

    fn node(name: &str, role: &str, url: &str) -> Node {
        Node {
            name: name.into(),
            role: role.into(),
            url: url.into(),
        }
    }

    #[test]
    fn registered_nodes_replace_configured_ones_and_go_down() {
        let configured = [
            node("edge-1", "edge", "http://old:1/"),
            node("shield-1", "shield", "http://s:1"),
            node("origin-1", "origin", "http://o:1"),
        ];
        let registered = [
            (
                beat("edge-1", "edge", "http://new:1/"),
                Duration::from_secs(1),
            ),
            (
                beat("edge-2", "edge", "http://e2:1"),
                Duration::from_secs(30),
            ),
        ];
        let t = targets(&configured, &registered, Duration::from_secs(15));
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["edge-1", "edge-2", "shield-1"]);
        assert_eq!(t[0].url, "http://new:1");
        assert_eq!(t[0].region.as_deref(), Some("r1"));
        assert!(!t[0].down);
        assert!(t[1].down);
        assert_eq!(t[2].region, None);
        assert!(!t[2].down);
    }
}
