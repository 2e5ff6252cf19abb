//! Viewers together, across a fleet: two origins on one PostgreSQL and two
//! edges, all on one NATS JetStream server; viewers on Server-Sent Events
//! and WebSocket; comments, retractions, reactions, polls and flashes.

#![allow(clippy::unwrap_used)]

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

/// A GET's JSON answer, with the bearer if given.
async fn get_json(url: &str, bearer: Option<&str>) -> Value {
    let mut r = client().get(url);
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    r.send().await.unwrap().json().await.unwrap()
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
    let on_sse = collect(&mut sse, "comment", 3, WAIT).await;
    let on_ws = collect(&mut ws, "comment", 3, WAIT).await;
    assert_eq!(texts(&on_sse), ["first", "second", "third"]);
    assert_eq!(texts(&on_ws), ["first", "second", "third"]);
    // Exactly once: nothing more comes.
    assert!(collect(&mut sse, "comment", 1, Duration::from_millis(700))
        .await
        .is_empty());
    assert!(collect(&mut ws, "comment", 1, Duration::from_millis(300))
        .await
        .is_empty());
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
    let r1 = collect(&mut sse, "retract", 1, WAIT).await;
    let r2 = collect(&mut ws, "retract", 1, WAIT).await;
    assert_eq!(r1[0].event["id"], second);
    assert_eq!(r2[0].event["id"], second);
    // And it is gone from the history on either origin.
    let page = get_json(
        &format!("{}/api/v1/live/{channel}/comments", fleet.origin(1)),
        None,
    )
    .await;
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
    let again = collect(&mut back, "comment", 2, WAIT).await;
    assert_eq!(texts(&again), ["fourth", "fifth"]);
    assert!(
        collect(&mut back, "comment", 1, Duration::from_millis(700))
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
    let replayed = collect(&mut from_start, "comment", 4, WAIT).await;
    assert_eq!(texts(&replayed), ["second", "third", "fourth", "fifth"]);
    fleet.shutdown().await;
}

/// The sum of a counter over the edges' `/metrics`.
async fn edge_metric(fleet: &Fleet, series: &str) -> u64 {
    let mut sum = 0;
    for e in &fleet.edges {
        let m = common::text(format!("http://{}/metrics", e.addr)).await;
        sum += common::metric_value(&m, series);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reactions_of_a_thousand_viewers_are_pushed_as_aggregates_that_sum_exactly() {
    let nats = nats_url();
    let fleet = Fleet::start(1, 2, &nats, |_| {}, |e| e.events_max_per_address = 2000).await;
    let channel = unique("cheer");
    create_channel(
        &fleet.origin(0),
        json!({ "name": channel, "title": "Cheer" }),
    )
    .await;
    let path = format!("/events/live/{channel}");
    let listen_token = sign_session(&format!("/live/{channel}/*"), "listener");
    let mut listener = SseViewer::connect(
        &fleet.events(0, &format!("{path}?__token__={listen_token}")),
        None,
    )
    .await;
    assert_eq!(listener.status, 200);

    // 1,000 viewers, half on each edge, each sending 40 reactions as fast
    // as it can: more than the burst of 30 each is allowed.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for v in 0..1000 {
        let token = sign_session(&format!("/live/{channel}/*"), &format!("viewer-{v}"));
        let url = fleet.ws(v % 2, &format!("{path}?__token__={token}"));
        tasks.push(tokio::spawn(async move {
            let mut ws = WsViewer::connect(&url).await;
            let names = ["clap", "fire", "laugh", "wow", "sad", "heart"];
            for i in 0..10 {
                ws.send(&format!(
                    "{{\"react\":\"{}\",\"count\":4}}",
                    names[(v + i) % 6]
                ))
                .await;
            }
            ws
        }));
    }
    let mut viewers = Vec::new();
    for t in tasks {
        viewers.push(t.await.unwrap());
    }
    let requested: u64 = 1000 * 40;
    // Every reaction was judged once it shows in the counters.
    let deadline = std::time::Instant::now() + WAIT;
    let (accepted, refused) = loop {
        let a = edge_metric(&fleet, "cascade_edge_reactions_accepted_total").await;
        let r = edge_metric(
            &fleet,
            "cascade_edge_reactions_refused_total{reason=\"rate_limited\"}",
        )
        .await;
        if a + r * 4 >= requested || std::time::Instant::now() > deadline {
            break (a, r * 4);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        accepted + refused,
        requested,
        "each reaction counted or refused"
    );
    assert!(
        accepted >= 1000 * 28,
        "the burst was let through: {accepted}"
    );
    assert!(refused > 0, "the per-viewer limit refused some");

    // The listener sees swarms whose counts add up to exactly what was
    // accepted, in a handful of messages.
    let mut summed = 0u64;
    let mut swarms = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while summed < accepted {
        let Some(p) = listener
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        else {
            break;
        };
        assert_eq!(p.kind(), "swarm", "only aggregates: {:?}", p.event);
        swarms += 1;
        summed += p.event["counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>();
        assert!(p.event["total"].as_u64().unwrap() > 0);
    }
    assert_eq!(summed, accepted, "the swarms add up to what was accepted");
    let secs = started.elapsed().as_secs() + 3;
    assert!(
        swarms as u64 <= secs,
        "{swarms} swarm messages in {secs} s: never one per reaction"
    );
    // Nothing more: no reaction is counted twice.
    assert!(listener.next(Duration::from_millis(2500)).await.is_none());
    // Reacting viewers got aggregates (and their rate-limit errors) only.
    for ws in viewers.iter_mut().take(20) {
        while let Some(p) = ws.next(Duration::from_millis(50)).await {
            assert!(["swarm", "error"].contains(&p.kind()), "{:?}", p.event);
        }
    }
    // The totals are durable at the origin, and the same.
    let totals = get_json(
        &format!("{}/api/v1/live/{channel}/reactions", fleet.origin(0)),
        None,
    )
    .await;
    let stored: u64 = totals["totals"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(stored, accepted);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_takes_one_vote_each_pushes_results_and_closes_on_time() {
    let fleet = Fleet::start(
        1,
        1,
        &format!("memory://{}", unique("poll")),
        |_| {},
        |_| {},
    )
    .await;
    let channel = unique("poll");
    create_channel(
        &fleet.origin(0),
        json!({ "name": channel, "title": "Poll" }),
    )
    .await;
    let token = sign_session(&format!("/live/{channel}/*"), "p");
    let mut ws =
        WsViewer::connect(&fleet.ws(0, &format!("/events/live/{channel}?__token__={token}"))).await;
    let origin = fleet.origin(0);
    let (status, poll) = post(
        &format!("{origin}/api/v1/admin/polls"),
        Some(ORIGIN_ADMIN),
        json!({ "channel": channel, "question": "Who wins?", "options": ["Home", "Away"], "duration_secs": 60 }),
    )
    .await;
    assert_eq!(status, 201, "{poll}");
    let id = poll["id"].as_str().unwrap().to_string();
    let opened = collect(&mut ws, "poll", 1, WAIT).await;
    assert_eq!(opened[0].event["poll"]["state"], "open");
    assert_eq!(opened[0].event["poll"]["options"], json!(["Home", "Away"]));

    let a = common::viewer(&origin, &fleet.outbox).await;
    let b = common::viewer(&origin, &fleet.outbox).await;
    let c = common::viewer(&origin, &fleet.outbox).await;
    let vote = |who: String, option: i64| {
        let url = format!("{origin}/api/v1/polls/{id}/vote");
        async move { post(&url, Some(&who), json!({ "option": option })).await }
    };
    assert_eq!(vote(a.clone(), 0).await.0, 200);
    let (status, body) = vote(a.clone(), 1).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("already_voted"))
    );
    assert_eq!(vote(b.clone(), 1).await.0, 200);
    assert_eq!(vote(c.clone(), 1).await.0, 200);
    let (status, body) = vote(c.clone(), 7).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_option")));
    let (status, _) = post(
        &format!("{origin}/api/v1/polls/{id}/vote"),
        None,
        json!({ "option": 0 }),
    )
    .await;
    assert_eq!(status, 401, "voting needs a login");

    // Results are pushed aggregated; the newest says 1 to 2.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let p = ws
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
            .expect("results pushed");
        if p.kind() == "poll_results" && p.event["total"] == 3 {
            assert_eq!(p.event["counts"], json!([1, 2]));
            break;
        }
    }
    // Closed by the operator: a closed poll takes no vote.
    let (status, closed) = post(
        &format!("{origin}/api/v1/admin/polls/{id}/close"),
        Some(ORIGIN_ADMIN),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["counts"], json!([1, 2]));
    let pushed = collect(&mut ws, "poll", 1, WAIT).await;
    assert_eq!(pushed[0].event["poll"]["state"], "closed");
    let d = common::viewer(&origin, &fleet.outbox).await;
    let (status, body) = vote(d.clone(), 0).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("poll_closed")));

    // A poll closes by itself at its time.
    let (_, short) = post(
        &format!("{origin}/api/v1/admin/polls"),
        Some(ORIGIN_ADMIN),
        json!({ "channel": channel, "question": "Next over?", "options": ["Yes", "No"], "duration_secs": 10 }),
    )
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let p = ws.next(WAIT).await.expect("events keep coming");
            if p.kind() == "poll"
                && p.event["poll"]["id"] == short["id"]
                && p.event["poll"]["state"] == "closed"
            {
                return p;
            }
        }
    })
    .await
    .expect("closed at its time");
    assert_eq!(closed.event["poll"]["total"], 0);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_harms_no_one_else() {
    let bus = format!("memory://{}", unique("bad"));
    let fleet = Fleet::start(
        1,
        1,
        &bus,
        |o| {
            o.comments_per_minute = 3;
            o.comment_max_chars = 50;
            o.comment_blocklist = vec!["spoiler".into()];
        },
        |e| {
            e.events_max_per_address = 4;
            e.events_send_timeout_secs = 1;
        },
    )
    .await;
    let origin = fleet.origin(0);
    let channel = unique("bad");
    create_channel(&origin, json!({ "name": channel, "title": "Bad" })).await;
    let path = format!("/events/live/{channel}");
    let token = sign_session(&format!("/live/{channel}/*"), "good");
    let mut good = WsViewer::connect(&fleet.ws(0, &format!("{path}?__token__={token}"))).await;

    // Comments: no login, too long, blocked words, too many, muted.
    let url = format!("{origin}/api/v1/live/{channel}/comments");
    let (status, body) = post(&url, None, json!({ "text": "hi" })).await;
    assert_eq!(status, 401, "{body}");
    let email = format!("{}@example.test", unique("muted"));
    let viewer = common::viewer_as(&origin, &fleet.outbox, &email).await;
    let (status, body) = post(&url, Some(&viewer), json!({ "text": "x".repeat(51) })).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_length")));
    let (status, body) = post(&url, Some(&viewer), json!({ "text": "   " })).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_length")));
    let (status, body) = post(&url, Some(&viewer), json!({ "text": "no SPOILER here" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("blocked_word"))
    );
    let (status, body) = post(&url, Some(&viewer), json!({ "text": "x", "extra": 1 })).await;
    assert_eq!(status, 400, "unknown fields refused: {body}");
    for i in 0..3 {
        comment(&origin, &channel, &viewer, &format!("ok {i}")).await;
    }
    let (status, body) = post(&url, Some(&viewer), json!({ "text": "one too many" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_comments"))
    );
    let (status, _) = post(
        &format!("{origin}/api/v1/admin/mutes"),
        Some(ORIGIN_ADMIN),
        json!({ "email": email, "minutes": 10 }),
    )
    .await;
    assert_eq!(status, 204);
    let other = common::viewer(&origin, &fleet.outbox).await;
    let (status, _) = post(
        &format!("{origin}/api/v1/admin/mutes"),
        Some(&other),
        json!({ "email": email, "minutes": 10 }),
    )
    .await;
    assert_eq!(status, 403, "viewers are not moderators");
    // A report, once each.
    let reported = comment(&origin, &channel, &other, "report me").await;
    let rurl = format!(
        "{origin}/api/v1/comments/{}/report",
        reported["id"].as_str().unwrap()
    );
    assert_eq!(
        post(&rurl, Some(&viewer), json!({ "reason": "rude" }))
            .await
            .0,
        202
    );
    assert_eq!(
        post(&rurl, Some(&viewer), json!({ "reason": "rude" }))
            .await
            .0,
        200
    );
    let list = get_json(
        &format!("{origin}/api/v1/admin/comments/reports"),
        Some(ORIGIN_ADMIN),
    )
    .await;
    assert_eq!(list[0]["reports"], 1);
    assert_eq!(list[0]["comment"]["text"], "report me");

    // Connections: no token, a token for another channel, too many from
    // one address.
    assert_eq!(
        WsViewer::try_connect(&fleet.ws(0, &path)).await.err(),
        Some(403)
    );
    let elsewhere = sign_session("/live/other/*", "x");
    assert_eq!(
        WsViewer::try_connect(&fleet.ws(0, &format!("{path}?__token__={elsewhere}")))
            .await
            .err(),
        Some(403)
    );
    let sse = SseViewer::connect(
        &fleet.events(0, &format!("/events/radio/x?__token__={token}")),
        None,
    )
    .await;
    assert_eq!(sse.status, 404);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(WsViewer::connect(&fleet.ws(0, &format!("{path}?__token__={token}"))).await);
    }
    assert_eq!(
        WsViewer::try_connect(&fleet.ws(0, &format!("{path}?__token__={token}")))
            .await
            .err(),
        Some(503),
        "a fifth connection from one address"
    );
    drop(held);
    // Their slots are free once the edge has let them go.
    let deadline = std::time::Instant::now() + WAIT;
    while edge_metric(
        &fleet,
        "cascade_edge_events_connections{transport=\"websocket\"}",
    )
    .await
        > 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connections were never let go"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Reactions: unknown emoji and bad counts, over POST and WebSocket.
    let react = fleet.events(0, &format!("{path}/react?__token__={token}"));
    let post_react = |body: Vec<u8>| {
        let r = client()
            .post(&react)
            .header("content-type", "application/json")
            .body(body)
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };
    assert_eq!(post_react(br#"{"react":"poop"}"#.to_vec()).await, 400);
    assert_eq!(
        post_react(br#"{"react":"clap","count":0}"#.to_vec()).await,
        400
    );
    assert_eq!(post_react(vec![b'x'; 5000]).await, 413);
    assert_eq!(post_react(br#"{"react":"clap"}"#.to_vec()).await, 204);
    good.send("{\"react\":\"poop\"}").await;
    let err = collect(&mut good, "error", 1, WAIT).await;
    assert_eq!(err[0].event["error"], "bad_reaction");

    // A message larger than the limit ends that connection only.
    let mut big = WsViewer::connect(&fleet.ws(0, &format!("{path}?__token__={token}"))).await;
    big.send(&"x".repeat(4096)).await;
    assert!(
        big.closed_within(WAIT).await,
        "an oversized message closes the connection"
    );

    // A viewer who never reads is dropped; the others get everything.
    let bus_handle = cascade_bus::connect(&bus, Default::default())
        .await
        .unwrap();
    let slow = tokio::net::TcpSocket::new_v4().unwrap();
    slow.set_recv_buffer_size(4096).unwrap();
    let mut slow = slow
        .connect(fleet.edges[0].events_addr.unwrap())
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    slow.write_all(format!("GET {path}?__token__={token} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The flood starts once the edge holds the slow viewer (its only SSE
    // connection).
    let deadline = std::time::Instant::now() + WAIT;
    while edge_metric(&fleet, "cascade_edge_events_connections{transport=\"sse\"}").await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow viewer was never let in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More than the socket buffers hold, at a pace a reading viewer keeps.
    let filler = "y".repeat(16_000);
    let reader = tokio::spawn(async move {
        let got = collect(&mut good, "comment", 600, Duration::from_secs(60)).await;
        (good, got.len())
    });
    for i in 0..600 {
        let payload =
            json!({ "type": "comment", "comment": { "id": format!("f{i}"), "text": filler } });
        bus_handle
            .publish(
                &format!("cascade.rt.live.{channel}"),
                payload.to_string().into(),
                None,
            )
            .await
            .unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (_good, got) = reader.await.unwrap();
    assert_eq!(got, 600, "the reading viewer got them all");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let dropped = edge_metric(&fleet, "cascade_edge_events_dropped_total{reason=\"slow\"}")
            .await
            + edge_metric(
                &fleet,
                "cascade_edge_events_dropped_total{reason=\"lagged\"}",
            )
            .await;
        if dropped >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow viewer was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(slow);
    fleet.shutdown().await;
}

/// A NATS server with JetStream of this test's own, on `port`, storing in
/// `dir`: one the test may stop and start.
fn nats_server(port: u16, dir: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server is installed (make deps installs it)");
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_nats_restarts_edges_and_origins_reconnect_and_nothing_is_lost() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = tempfile::tempdir().unwrap();
    let nats = nats_server(port, store.path());
    let url = format!("nats://127.0.0.1:{port}");
    let fleet = Fleet::start(1, 1, &url, |_| {}, |_| {}).await;
    let origin = fleet.origin(0);
    let channel = unique("restart");
    create_channel(&origin, json!({ "name": channel, "title": "Restart" })).await;
    let viewer = common::viewer(&origin, &fleet.outbox).await;
    let token = sign_session(&format!("/live/{channel}/*"), "r");
    let mut sse = SseViewer::connect(
        &fleet.events(0, &format!("/events/live/{channel}?__token__={token}")),
        None,
    )
    .await;
    comment(&origin, &channel, &viewer, "before").await;
    assert_eq!(
        texts(&collect(&mut sse, "comment", 1, WAIT).await),
        ["before"]
    );

    common::stop_child(nats);
    // Posted while the bus is away: stored, and pushed once it is back.
    comment(&origin, &channel, &viewer, "during").await;
    let nats = nats_server(port, store.path());
    comment(&origin, &channel, &viewer, "after").await;
    let got = collect(&mut sse, "comment", 2, Duration::from_secs(40)).await;
    assert_eq!(texts(&got), ["during", "after"], "in order, none lost");
    assert!(
        collect(&mut sse, "comment", 1, Duration::from_millis(700))
            .await
            .is_empty(),
        "none twice"
    );
    fleet.shutdown().await;
    common::stop_child(nats);
}
