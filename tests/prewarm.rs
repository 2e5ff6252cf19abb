//! Pre-warm through control: two edges in front of two shields, all cold,
//! are warmed for a title; afterwards every pre-warmed URL is an edge hit.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use cascade_control::ControlConfig;
use cascade_edge::Edge;
use cascade_shield::Shield;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-0123456789";
use common::FLEET;

async fn admin_post(control: &str, path: &str, body: Value) -> (u16, Value) {
    let r = common::client()
        .post(format!("{control}{path}"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn admin_get(control: &str, path: &str) -> (u16, Value) {
    let r = common::client()
        .get(format!("{control}{path}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Requests `path` at an edge with a token: status, `Cache-Status`, body.
async fn fetch(edge: &str, path: &str, token: &str) -> (u16, String, String) {
    let r = common::client()
        .get(format!("{edge}{path}?__token__={token}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = String::from_utf8_lossy(&r.bytes().await.unwrap()).to_string();
    (status, cs, body)
}

struct Fleet {
    shields: Vec<Shield>,
    edges: Vec<Edge>,
    edge_urls: Vec<String>,
}

/// Two shields and two edges (each behind both shields), registered in region r1.
async fn fleet(control_url: &str, origin_url: &str) -> Fleet {
    let mut shields = Vec::new();
    for name in ["shield-w1", "shield-w2"] {
        shields.push(common::registered_shield(origin_url, control_url, name, "r1").await);
    }
    let shield_urls: Vec<String> = shields
        .iter()
        .map(|s| format!("http://{}", s.addr))
        .collect();
    let mut edges = Vec::new();
    for name in ["edge-w1", "edge-w2"] {
        edges.push(
            common::registered_edge(shield_urls.clone(), origin_url, control_url, name, "r1").await,
        );
    }
    let edge_urls = edges.iter().map(|e| format!("http://{}", e.addr)).collect();
    Fleet {
        shields,
        edges,
        edge_urls,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarm_warms_every_edge_of_a_region() {
    let stack = common::Stack::start().await;
    let asset = common::ingest_clip(&stack, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        admin_token: ADMIN.into(),
        fleet_token: FLEET.into(),
        origin_url: stack.origin_url.clone(),
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let control_url = format!("http://{}", control.addr);
    let fleet = fleet(&control_url, &stack.origin_url).await;
    common::wait_health(
        &control_url,
        &["edge-w1", "edge-w2", "shield-w1", "shield-w2"],
        "up",
    )
    .await;

    let manifest = cascade_packager::AssetManifest::from_json(
        common::text(format!("{}/mezz/{asset}/manifest.json", stack.origin_url))
            .await
            .as_bytes(),
    )
    .unwrap();
    let paths =
        cascade_packager::prewarm_paths(&manifest, &cascade_packager::WarmSelection::default());

    // The whole title, on the cold edges of region r1.
    let (status, r) = admin_post(
        &control_url,
        "/api/v1/prewarm",
        json!({ "titles": [asset], "regions": ["r1"] }),
    )
    .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["objects"], paths.len(), "{r}");
    assert_eq!(r["nodes"], json!(["edge-w1", "edge-w2"]), "{r}");
    assert_eq!(r["down"], json!([]), "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let p = loop {
        let (status, p) = admin_get(&control_url, &format!("/api/v1/prewarm/{id}")).await;
        assert_eq!(status, 200, "{p}");
        if p["state"] == "done" {
            break p;
        }
        assert!(Instant::now() < deadline, "the job did not end: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(p["percent"], 100, "{p}");
    assert_eq!(p["failures"], 0, "{p}");
    assert_eq!(p["objects_done"], 2 * paths.len(), "{p}");
    assert!(p["bytes"].as_u64().unwrap() > 0, "{p}");
    for n in p["nodes"].as_array().unwrap() {
        assert_eq!(n["objects_done"], paths.len(), "{p}");
        assert_eq!(n["down"], false, "{p}");
    }

    // Every pre-warmed URL is now a hit at both edges.
    let token = common::sign_for(&asset);
    for edge in &fleet.edge_urls {
        for path in &paths {
            let (status, cs, _) = fetch(edge, path, &token).await;
            assert_eq!(status, 200, "{edge}{path}");
            assert!(cs.contains("cascade-edge; hit"), "{edge}{path}: {cs}");
        }
    }
    // And they are the URLs players ask for: every segment the playlists name.
    for t in &manifest.tracks {
        let (_, _, playlist) = fetch(
            &fleet.edge_urls[0],
            &format!("/vod/{asset}/{}.m3u8", t.id),
            &token,
        )
        .await;
        for uri in playlist.lines().filter(|l| !l.starts_with('#')) {
            let path = format!("/vod/{asset}/{}", uri.split('?').next().unwrap());
            assert!(paths.contains(&path), "{path} was not pre-warmed");
        }
    }

    // The event stream of a second job ends with a `done` event.
    let (status, r) = admin_post(
        &control_url,
        "/api/v1/prewarm",
        json!({ "titles": [asset], "edges": ["edge-w2"], "first_segments": 1, "formats": ["dash"] }),
    )
    .await;
    assert_eq!(status, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let resp = common::client()
        .get(format!("{control_url}/api/v1/prewarm/{id}/events"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("the event stream ends when the job does")
        .unwrap();
    let events: Vec<(&str, Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event, serde_json::from_str(data).unwrap()))
        })
        .collect();
    let (last, figures) = events.last().unwrap();
    assert_eq!(*last, "done", "{text}");
    assert_eq!(figures["state"], "done");
    assert_eq!(figures["percent"], 100);
    assert_eq!(figures["failures"], 0, "{figures}");
    assert!(events[..events.len() - 1]
        .iter()
        .all(|(e, _)| *e == "progress"));

    // Refusals: an unknown title, a region without edges, no credential.
    let (status, r) = admin_post(
        &control_url,
        "/api/v1/prewarm",
        json!({ "titles": ["no-such-title"] }),
    )
    .await;
    assert_eq!(status, 404, "{r}");
    assert!(r["message"].as_str().unwrap().contains("no-such-title"));
    let (status, r) = admin_post(
        &control_url,
        "/api/v1/prewarm",
        json!({ "titles": [asset], "regions": ["mars"] }),
    )
    .await;
    assert_eq!(status, 400, "{r}");
    let r = common::client()
        .post(format!("{control_url}/api/v1/prewarm"))
        .json(&json!({ "titles": [asset] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    for e in fleet.edges {
        e.shutdown().await;
    }
    for s in fleet.shields {
        s.shutdown().await;
    }
    stack.shutdown().await;
    control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarm_warms_a_live_channel() {
    let stack = common::Stack::start_full(
        |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![];
        },
        |_| {},
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        admin_token: ADMIN.into(),
        fleet_token: FLEET.into(),
        origin_url: stack.origin_url.clone(),
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let control_url = format!("http://{}", control.addr);
    let fleet = fleet(&control_url, &stack.origin_url).await;
    common::wait_health(
        &control_url,
        &["edge-w1", "edge-w2", "shield-w1", "shield-w2"],
        "up",
    )
    .await;

    // Not live yet: nothing to warm, and control says so.
    let made: Value = common::create_channel(&stack.origin_url, json!({ "name": "final" })).await;
    let (status, r) = admin_post(
        &control_url,
        "/api/v1/prewarm",
        json!({ "channels": ["final"] }),
    )
    .await;
    assert_eq!(status, 404, "{r}");
    assert_eq!(r["error"], "not_live", "{r}");

    let key = made["stream_key"].as_str().unwrap();
    let ffmpeg = common::ffmpeg_publish(
        &format!("rtmp://{}/live/{key}", stack.origin.rtmp_addr.unwrap()),
        "flv",
        "320x180",
        30,
        "libx264",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, r) = loop {
        let (status, r) = admin_post(
            &control_url,
            "/api/v1/prewarm",
            json!({ "channels": ["final"] }),
        )
        .await;
        if status == 202 {
            break (status, r);
        }
        assert!(Instant::now() < deadline, "never warmable: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 202);
    // Both playlists (HLS and DASH) and the init segments of v0 and a0.
    assert_eq!(r["objects"], 4, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, p) = admin_get(&control_url, &format!("/api/v1/prewarm/{id}")).await;
        if p["state"] == "done" {
            assert_eq!(p["failures"], 0, "{p}");
            break;
        }
        assert!(Instant::now() < deadline, "the job did not end: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The init segments are hits at every edge now.
    let token = common::sign_acl("/live/final/*");
    for edge in &fleet.edge_urls {
        for track in ["v0", "a0"] {
            let path = format!("/live/final/{track}/init-0.mp4");
            let (status, cs, _) = fetch(edge, &path, &token).await;
            assert_eq!(status, 200, "{edge}{path}");
            assert!(cs.contains("cascade-edge; hit"), "{edge}{path}: {cs}");
        }
    }
    common::stop_child(ffmpeg);
    stack.shutdown().await;
}
