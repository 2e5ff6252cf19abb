//! Purge through control: by URL, by prefix and by tag, at the edge and at
//! the shield behind it. A registered node that went down is reported as
//! down, not waited for.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use cascade_control::ControlConfig;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-0123456789";
use common::FLEET;

/// `POST /api/v1/purge` with the admin credential: status, answer, wall time.
async fn purge(control: &str, body: Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = common::client()
        .post(format!("{control}/api/v1/purge"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let answer = r.json().await.unwrap();
    (status, answer, started.elapsed())
}

/// Requests `path` at the edge with a token; its `Cache-Status`.
async fn cache_status(edge: &str, path: &str, token: &str) -> String {
    let r = common::client()
        .get(format!("{edge}{path}?__token__={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let cs = r
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    r.bytes().await.unwrap();
    cs
}

/// One cache's entry in a `Cache-Status` value.
fn entry<'a>(cache_status: &'a str, cache: &str) -> Option<&'a str> {
    cache_status
        .split(", ")
        .find(|e| e.split(';').next() == Some(cache))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_by_url_prefix_and_tag_reaches_edge_and_shield() {
    let dir = tempfile::tempdir().unwrap();
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        admin_token: ADMIN.into(),
        fleet_token: FLEET.into(),
        node_down_after_secs: 3,
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let control_url = format!("http://{}", control.addr);
    let stack = common::Stack::start().await;
    let asset = common::ingest_clip(&stack, 2).await;

    // A shield and an edge behind it, both registered with control.
    let shield =
        common::registered_shield(&stack.origin_url, &control_url, "shield-p1", "r1").await;
    let edge = common::registered_edge(
        vec![format!("http://{}", shield.addr)],
        &stack.origin_url,
        &control_url,
        "edge-p1",
        "r1",
    )
    .await;
    let edge_url = format!("http://{}", edge.addr);
    common::wait_health(&control_url, &["edge-p1", "shield-p1"], "up").await;

    let manifest = cascade_packager::AssetManifest::from_json(
        common::text(format!("{}/mezz/{asset}/manifest.json", stack.origin_url))
            .await
            .as_bytes(),
    )
    .unwrap();
    let video = manifest.videos().next().unwrap().id.clone();
    let token = common::sign_for(&asset);
    let playlist = format!("/vod/{asset}/master.m3u8");
    let segment = format!("/vod/{asset}/{video}/1.m4s");
    for path in [&playlist, &segment] {
        cache_status(&edge_url, path, &token).await;
        let cs = cache_status(&edge_url, path, &token).await;
        assert!(cs.contains("cascade-edge; hit"), "{path}: {cs}");
    }

    // By URL: the segment goes, the playlist stays.
    let (status, r, _) = purge(&control_url, json!({ "urls": [segment] })).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["acknowledged"], json!(["edge-p1", "shield-p1"]), "{r}");
    assert_eq!(r["down"], json!([]));
    let cs = cache_status(&edge_url, &segment, &token).await;
    assert!(cs.contains("cascade-edge; fwd=miss"), "{cs}");
    let cs = cache_status(&edge_url, &playlist, &token).await;
    assert!(cs.contains("cascade-edge; hit"), "{cs}");

    // By prefix, given as a full URL with a query: reduced to /vod/{asset}/.
    let prefix = format!("{edge_url}/vod/{asset}/?__token__={token}");
    let (status, r, _) = purge(&control_url, json!({ "prefixes": [prefix] })).await;
    assert_eq!(status, 200, "{r}");
    let cs = cache_status(&edge_url, &playlist, &token).await;
    assert!(cs.contains("cascade-edge; fwd=miss"), "{cs}");

    // By tag: both tiers drop the title. The segment is cached at the edge
    // and (as mezzanine) at the shield first.
    cache_status(&edge_url, &segment, &token).await;
    let cs = cache_status(&edge_url, &segment, &token).await;
    assert!(cs.contains("cascade-edge; hit"), "{cs}");
    let (status, r, _) = purge(&control_url, json!({ "tags": [format!("asset-{asset}")] })).await;
    assert_eq!(status, 200, "{r}");
    let cs = cache_status(&edge_url, &segment, &token).await;
    let at_edge = entry(&cs, "cascade-edge").unwrap_or_default();
    let at_shield = entry(&cs, "cascade-shield").unwrap_or_default();
    assert!(at_edge.contains("fwd=miss"), "{cs}");
    assert!(
        at_shield.contains("fwd=miss"),
        "the shield did not miss: {cs}"
    );

    let metrics = common::text(format!("{control_url}/metrics")).await;
    assert_eq!(
        common::metric_value(
            &metrics,
            "cascade_control_purges_total{result=\"complete\"}"
        ),
        3,
        "{metrics}"
    );

    // A registered shield that stops and goes down is reported, not waited for.
    let gone = common::registered_shield(&stack.origin_url, &control_url, "shield-p2", "r1").await;
    common::wait_health(&control_url, &["shield-p2"], "up").await;
    gone.shutdown().await;
    common::wait_health(&control_url, &["shield-p2"], "down").await;
    let (status, r, took) = purge(&control_url, json!({ "urls": [segment] })).await;
    assert_eq!(status, 207, "{r}");
    assert_eq!(r["complete"], false);
    assert_eq!(r["down"], json!(["shield-p2"]), "{r}");
    assert_eq!(r["acknowledged"], json!(["edge-p1", "shield-p1"]), "{r}");
    assert_eq!(r["failed"], json!([]), "{r}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // The admin credential is required, and at least one rule.
    let r = common::client()
        .post(format!("{control_url}/api/v1/purge"))
        .json(&json!({ "urls": [segment] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, r, _) = purge(&control_url, json!({})).await;
    assert_eq!(status, 400, "{r}");
    let r = common::client()
        .post(format!("{control_url}/api/v1/purge"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    edge.shutdown().await;
    shield.shutdown().await;
    stack.shutdown().await;
    control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_channel_is_purged_by_its_tag_at_edge_and_shield() {
    let dir = tempfile::tempdir().unwrap();
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        admin_token: ADMIN.into(),
        fleet_token: FLEET.into(),
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let control_url = format!("http://{}", control.addr);
    let stack = common::Stack::start_full(
        |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![];
        },
        |_| {},
    )
    .await;
    let shield =
        common::registered_shield(&stack.origin_url, &control_url, "shield-l1", "r1").await;
    let edge = common::registered_edge(
        vec![format!("http://{}", shield.addr)],
        &stack.origin_url,
        &control_url,
        "edge-l1",
        "r1",
    )
    .await;
    let edge_url = format!("http://{}", edge.addr);
    common::wait_health(&control_url, &["edge-l1", "shield-l1"], "up").await;
    let made: Value = common::create_channel(&stack.origin_url, json!({ "name": "final" })).await;
    let key = made["stream_key"].as_str().unwrap();
    let ffmpeg = common::ffmpeg_publish(
        &format!("rtmp://{}/live/{key}", stack.origin.rtmp_addr.unwrap()),
        "flv",
        "320x180",
        30,
        "libx264",
    );
    let token = common::sign_acl("/live/final/*");
    let init = "/live/final/v0/init-0.mp4";
    // Once the channel is on air, its init segment is fetched, then a hit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = common::client()
            .get(format!("{edge_url}{init}?__token__={token}"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never on air: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cs = cache_status(&edge_url, init, &token).await;
    assert!(cs.contains("cascade-edge; hit"), "{cs}");
    // The channel's tag, `live-{name}`, clears both tiers.
    let (status, r, _) = purge(&control_url, json!({ "tags": ["live-final"] })).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["complete"], true, "{r}");
    let cs = cache_status(&edge_url, init, &token).await;
    assert!(
        entry(&cs, "cascade-edge")
            .unwrap_or_default()
            .contains("fwd=miss"),
        "{cs}"
    );
    assert!(
        entry(&cs, "cascade-shield")
            .unwrap_or_default()
            .contains("fwd=miss"),
        "{cs}"
    );
    common::stop_child(ffmpeg);
    stack.shutdown().await;
}
