//! Viewers together, across a fleet: two origins on one PostgreSQL and two
//! edges, all on one NATS JetStream server; viewers on Server-Sent Events
//! and WebSocket; comments, retractions, reactions, polls and flashes.

mod common;

use std::time::Duration;

use cascade_edge::{Edge, EdgeConfig};
use cascade_origin::Origin;
use common::together::*;
use common::{client, create_channel, origin_config, test_key, ORIGIN_ADMIN, TEST_KEY_HEX};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

struct Fleet {
    origins: Vec<Origin>,
    edges: Vec<Edge>,
    outbox: std::path::PathBuf,
    pg: Option<PgSchema>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// `origins` origins (on one PostgreSQL schema when more than one) and
    /// `edges` edges, edge *i* in front of origin *i mod origins*, all on
    /// the bus at `bus`.
    async fn start(
        origins: usize,
        edges: usize,
        bus: &str,
        tweak_origin: impl Fn(&mut cascade_origin::OriginConfig),
        tweak_edge: impl Fn(&mut EdgeConfig),
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let pg = if origins > 1 {
            Some(PgSchema::new().await)
        } else {
            None
        };
        let mut started = Vec::new();
        let mut outbox = None;
        for i in 0..origins {
            let data = dir.path().join(format!("o{i}"));
            let mut cfg = origin_config(data.to_str().unwrap());
            cfg.nats_url = bus.to_string();
            if let Some(pg) = &pg {
                cfg.database_url = pg.url.clone();
            }
            // One mail outbox for both, so a sign-up on either is found.
            cfg.mail_outbox = dir.path().join("outbox").display().to_string();
            tweak_origin(&mut cfg);
            outbox.get_or_insert_with(|| cfg.mail_outbox());
            started.push(cascade_origin::start(&cfg).await.expect("origin starts"));
        }
        let mut edge_list = Vec::new();
        for i in 0..edges {
            let origin = &started[i % origins];
            let mut cfg = EdgeConfig {
                listen: "127.0.0.1:0".into(),
                events_listen: "127.0.0.1:0".into(),
                nats_url: bus.to_string(),
                node_name: format!("edge-{i}"),
                shields: Vec::new(),
                origin: format!("http://{}", origin.addr),
                origin_fallback: true,
                cache_dir: dir.path().join(format!("e{i}")).display().to_string(),
                cache_memory_mib: 32,
                cache_disk_mib: 64,
                token_keys: vec![test_key("test", TEST_KEY_HEX)],
                fleet_token: common::FLEET.into(),
                ..EdgeConfig::default()
            };
            tweak_edge(&mut cfg);
            edge_list.push(cascade_edge::start(&cfg).await.expect("edge starts"));
        }
        Fleet {
            origins: started,
            edges: edge_list,
            outbox: outbox.unwrap(),
            pg,
            _dir: dir,
        }
    }

    fn origin(&self, i: usize) -> String {
        format!("http://{}", self.origins[i].addr)
    }

    fn events(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.edges[i].events_addr.unwrap())
    }

    fn ws(&self, i: usize, path: &str) -> String {
        format!("ws://{}{path}", self.edges[i].events_addr.unwrap())
    }

    async fn shutdown(self) {
        for e in self.edges {
            e.shutdown().await;
        }
        for o in self.origins {
            o.shutdown().await;
        }
        if let Some(pg) = self.pg {
            pg.drop().await;
        }
    }
}

async fn post(url: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = client().post(url).json(&body);
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    let r = r.send().await.expect("answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn comment(origin: &str, channel: &str, viewer: &str, text: &str) -> Value {
    let (status, body) = post(
        &format!("{origin}/api/v1/live/{channel}/comments"),
        Some(viewer),
        json!({ "text": text }),
    )
    .await;
    assert_eq!(status, 201, "comment {text:?}: {body}");
    body
}

fn texts(events: &[Pushed]) -> Vec<String> {
    events
        .iter()
        .map(|p| {
            p.event["comment"]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn comments_reach_sse_and_websocket_viewers_on_two_edges_in_order_once_and_deletions_retract_them(
) {
    let nats = nats_url();
    let fleet = Fleet::start(2, 3, &nats, |_| {}, |_| {}).await;
    let channel = unique("talk");
    create_channel(
        &fleet.origin(0),
        json!({ "name": channel, "title": "Talk" }),
    )
    .await;
    let viewer = common::viewer(&fleet.origin(0), &fleet.outbox).await;
    let token = sign_session(&format!("/live/{channel}/*"), "s-sse");
    let ws_token = sign_session(&format!("/live/{channel}/*"), "s-ws");
    let path = format!("/events/live/{channel}");
    let mut sse =
        SseViewer::connect(&fleet.events(0, &format!("{path}?__token__={token}")), None).await;
    assert_eq!(sse.status, 200);
    let mut ws = WsViewer::connect(&fleet.ws(1, &format!("{path}?__token__={ws_token}"))).await;

    // Posted through origin A; the first on edge 1 over SSE, the second
    // on edge 2 over WebSocket.
    let mut ids = Vec::new();
    for text in ["first", "second", "third"] {
        ids.push(comment(&fleet.origin(0), &channel, &viewer, text).await["id"].clone());
    }
    let on_sse = collect_sse(&mut sse, "comment", 3, WAIT).await;
    let on_ws = collect_ws(&mut ws, "comment", 3, WAIT).await;
    assert_eq!(texts(&on_sse), ["first", "second", "third"]);
    assert_eq!(texts(&on_ws), ["first", "second", "third"]);
    // Exactly once: nothing more comes.
    assert!(
        collect_sse(&mut sse, "comment", 1, Duration::from_millis(700))
            .await
            .is_empty()
    );
    assert!(
        collect_ws(&mut ws, "comment", 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    // Stored events carry ids that only grow.
    let seqs: Vec<u64> = on_sse
        .iter()
        .map(|p| {
            p.id.as_ref()
                .unwrap()
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // A moderator's deletion, through origin B, retracts it at both edges.
    let second = ids[1].as_str().unwrap();
    let r = client()
        .delete(format!("{}/api/v1/comments/{second}", fleet.origin(1)))
        .bearer_auth(ORIGIN_ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r1 = collect_sse(&mut sse, "retract", 1, WAIT).await;
    let r2 = collect_ws(&mut ws, "retract", 1, WAIT).await;
    assert_eq!(r1[0].event["id"], second);
    assert_eq!(r2[0].event["id"], second);
    // And it is gone from the history on either origin.
    let page: Value = client()
        .get(format!(
            "{}/api/v1/live/{channel}/comments",
            fleet.origin(1)
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = page["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["third", "first"],
        "newest first, the deleted one gone"
    );

    // The SSE viewer drops; three more events happen; it comes back with
    // its Last-Event-ID and gets exactly those, in order.
    let last_id = r1[0].id.clone().expect("a retraction has an id");
    drop(sse);
    for text in ["fourth", "fifth"] {
        comment(&fleet.origin(1), &channel, &viewer, text).await;
    }
    let mut back = SseViewer::connect(
        &fleet.events(0, &format!("{path}?__token__={token}")),
        Some(&last_id),
    )
    .await;
    let again = collect_sse(&mut back, "comment", 2, WAIT).await;
    assert_eq!(texts(&again), ["fourth", "fifth"]);
    assert!(
        collect_sse(&mut back, "comment", 1, Duration::from_millis(700))
            .await
            .is_empty(),
        "no duplicates"
    );

    // At an edge that was not following the channel then: the replay
    // comes from JetStream, without duplicates.
    let mut from_start = SseViewer::connect(
        &fleet.events(2, &format!("{path}?__token__={token}")),
        Some(on_sse[0].id.as_deref().unwrap()),
    )
    .await;
    let replayed = collect_sse(&mut from_start, "comment", 4, WAIT).await;
    assert_eq!(texts(&replayed), ["second", "third", "fourth", "fifth"]);
    fleet.shutdown().await;
}
