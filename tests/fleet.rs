//! Edges and shields register with control and heartbeat; a node that goes
//! quiet is marked down.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use cascade_control::ControlConfig;
use serde_json::Value;

use common::FLEET;

fn find<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|n| n["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_register_heartbeat_and_go_down() {
    let dir = tempfile::tempdir().unwrap();
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        fleet_token: FLEET.into(),
        node_down_after_secs: 4,
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let control_url = format!("http://{}", control.addr);
    let cu = control_url.clone();
    let stack = common::Stack::start_full(
        |_| {},
        move |e| {
            e.control_url = cu;
            e.fleet_token = FLEET.into();
            e.node_name = "edge-mum-1".into();
            e.region = "in-west".into();
            e.heartbeat_secs = 1;
            e.capacity_connections = 1000;
            e.capacity_egress_mbps = 100.0;
        },
    )
    .await;
    // A second shield, registered, that we will stop.
    let shield =
        common::registered_shield(&stack.origin_url, &control_url, "shield-mum-1", "in-west").await;
    // Some traffic so the edge has a hit ratio: the page, twice (a miss, then a hit).
    for _ in 0..2 {
        common::text(format!("{}/", stack.edge_url)).await;
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = common::nodes(&control_url).await;
        let ready = matches!(
            (find(&list, "edge-mum-1"), find(&list, "shield-mum-1")),
            (Some(e), Some(s)) if e["health"] == "up" && s["health"] == "up" && e["hit_ratio"].as_f64().is_some()
        );
        if ready {
            let e = find(&list, "edge-mum-1").unwrap();
            assert_eq!(e["role"], "edge");
            assert_eq!(e["region"], "in-west");
            assert!(e["hit_ratio"].as_f64().unwrap() > 0.0, "{e}");
            assert!(e["cache_entries"].as_u64().unwrap() >= 1, "{e}");
            // Its capacity and load come with its heartbeats.
            assert_eq!(e["load"]["capacity_connections"], 1000, "{e}");
            assert_eq!(e["load"]["capacity_egress_bps"], 100_000_000, "{e}");
            assert_eq!(e["load"]["shed_level"], 0, "{e}");
            assert!(e["load"]["utilisation"].as_f64().unwrap() < 0.5, "{e}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes never registered: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The shield stops; control marks it down, and the edge stays up.
    shield.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = common::nodes(&control_url).await;
        if find(&list, "shield-mum-1").unwrap()["health"] == "down" {
            assert_eq!(find(&list, "edge-mum-1").unwrap()["health"], "up");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped shield was never marked down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Heartbeats need the fleet credential.
    let r = common::client()
        .post(format!("{control_url}/api/v1/fleet/heartbeat"))
        .json(&serde_json::json!({"name": "x", "role": "edge", "region": "r", "url": "http://x", "cache_memory_bytes": 0, "cache_entries": 0, "requests_hit": 0, "requests_total": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    stack.shutdown().await;
    control.shutdown().await;
}

/// A client whose requests come from `ip` (loopback, but outside the
/// operator network the test configures).
fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_the_node_list_are_for_operators_only() {
    let dir = tempfile::tempdir().unwrap();
    let operators = vec!["127.0.0.1/32".to_string()];
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        fleet_token: FLEET.into(),
        metrics_networks: operators.clone(),
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let control_url = format!("http://{}", control.addr);
    let (o1, o2) = (operators.clone(), operators.clone());
    let stack = common::Stack::start_full(
        move |o| o.metrics_networks = o1,
        move |e| {
            e.fleet_token = FLEET.into();
            e.metrics_networks = o2;
        },
    )
    .await;
    let outsider = from("127.0.0.3");
    let operator = from("127.0.0.1");
    for base in [&stack.edge_url, &stack.origin_url, &control_url] {
        let url = format!("{base}/metrics");
        let r = outsider.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 403, "{url} from outside");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
        let r = operator.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url} from an operator network");
        assert!(r.text().await.unwrap().contains("# TYPE"));
    }
    // From outside, the fleet credential opens the edge's and control's.
    for base in [&stack.edge_url, &control_url] {
        let r = outsider
            .get(format!("{base}/metrics"))
            .bearer_auth(FLEET)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{base} with the credential");
    }
    // The node list (internal URLs, live health checks) needs a credential.
    let r = operator
        .get(format!("{control_url}/api/v1/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = operator
        .get(format!("{control_url}/api/v1/nodes"))
        .bearer_auth(FLEET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stack.shutdown().await;
    control.shutdown().await;
}
