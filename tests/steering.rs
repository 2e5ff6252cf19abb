//! Content steering between two edges: the playlists name both pathways
//! and control's steering server; the steering server refuses a request
//! without a valid ticket and ranks the edges; the playback API starts
//! sessions on the best edge; and hls.js and dash.js in Chromium, playing
//! from edge A, move to edge B with no error when A is drained (`cascade
//! ctl drain`), after which A sees none of their requests.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cascade_control::ControlConfig;
use serde_json::{json, Value};

use common::FLEET;

const ADMIN: &str = "control-admin-for-tests";

/// The value of `NAME="…"` in a playlist.
fn quoted<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let at = text.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&text[at..at + text[at..].find('"')?])
}

/// Segments edge `metrics` says it served (its `segment` route).
fn segments_served(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("cascade_edge_route_seconds_count{route=\"segment\"}"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn players_move_to_another_edge_when_theirs_is_drained() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).unwrap();
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        fleet_token: FLEET.into(),
        admin_token: ADMIN.into(),
        steering_ttl_secs: 2,
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let control_url = format!("http://{}", control.addr);
    let (cu, cu2) = (control_url.clone(), control_url.clone());
    let stack = common::Stack::start_full(
        move |o| {
            o.control_url = cu;
            o.fleet_token = FLEET.into();
        },
        move |e| {
            e.control_url = cu2.clone();
            e.steering_url = cu2;
            e.fleet_token = FLEET.into();
            e.node_name = "edge-a".into();
            e.region = "IN".into();
            e.heartbeat_secs = 1;
        },
    )
    .await;
    let b = cascade_edge::start(&cascade_edge::EdgeConfig {
        listen: "127.0.0.1:0".into(),
        shields: vec![format!("http://{}", stack.shield.addr)],
        origin: stack.origin_url.clone(),
        cache_dir: String::new(),
        cache_memory_mib: 64,
        token_keys: vec![common::test_key("test", common::TEST_KEY_HEX)],
        control_url: control_url.clone(),
        steering_url: control_url.clone(),
        fleet_token: FLEET.into(),
        node_name: "edge-b".into(),
        region: "IN".into(),
        heartbeat_secs: 1,
        ..cascade_edge::EdgeConfig::default()
    })
    .await
    .unwrap();
    let (edge_a, edge_b) = (stack.edge_url.clone(), format!("http://{}", b.addr));
    let clip = common::make_clip(stack.dir.path(), 40);
    let asset = common::ingest_with(&stack, &clip, &[]).await;

    // Once both edges have registered, A's playlists name both pathways.
    let t = common::sign_for(&asset);
    let deadline = Instant::now() + Duration::from_secs(15);
    let playlist = loop {
        let p = common::text(format!("{edge_a}/vod/{asset}/master.m3u8?__token__={t}")).await;
        if p.contains("PATHWAY-ID=\"edge-b\"") {
            break p;
        }
        assert!(Instant::now() < deadline, "no pathways: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        playlist.contains("#EXT-X-CONTENT-STEERING:SERVER-URI=\""),
        "{playlist}"
    );
    assert_eq!(
        quoted(&playlist, "#EXT-X-CONTENT-STEERING:SERVER-URI")
            .map(|u| u.starts_with(&format!("{control_url}/steer/hls?t="))),
        Some(true)
    );
    assert!(playlist.contains(&format!("{edge_b}/vod/{asset}/v0.m3u8?__token__={t}")));
    let mpd = common::text(format!("{edge_a}/vod/{asset}/manifest.mpd?__token__={t}")).await;
    assert!(
        mpd.contains(&format!(
            "<BaseURL serviceLocation=\"edge-a\">{edge_a}/vod/{asset}/</BaseURL>"
        )),
        "{mpd}"
    );
    assert!(mpd.contains(&format!(
        "<BaseURL serviceLocation=\"edge-b\">{edge_b}/vod/{asset}/</BaseURL>"
    )));
    assert!(mpd.contains("<ContentSteering defaultServiceLocation=\"edge-a\""));

    // The steering server: a ticket from the playlist is needed.
    let server = quoted(&playlist, "#EXT-X-CONTENT-STEERING:SERVER-URI")
        .unwrap()
        .to_string();
    for bad in [
        format!("{control_url}/steer/hls"),
        format!("{control_url}/steer/hls?t=1~IN~x~00"),
        server.replace("~IN~", "~UK~"),
    ] {
        let r = common::client().get(&bad).send().await.unwrap();
        assert_eq!(r.status(), 403, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_ticket");
    }
    let ask = |url: String| async move {
        let r = common::client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        r.json::<Value>().await.unwrap()
    };
    let m = ask(format!("{server}&_HLS_pathway=edge-b")).await;
    assert_eq!(m["VERSION"], 1);
    assert_eq!(m["TTL"], 2);
    assert_eq!(
        m["PATHWAY-PRIORITY"],
        json!(["edge-b", "edge-a"]),
        "stays put"
    );
    assert!(m["RELOAD-URI"]
        .as_str()
        .unwrap()
        .starts_with("/steer/hls?t="));
    let m = ask(format!("{server}&_HLS_pathway=edge-a")).await;
    assert_eq!(m["PATHWAY-PRIORITY"], json!(["edge-a", "edge-b"]));
    let dash_server = mpd
        .split("<ContentSteering")
        .nth(1)
        .and_then(|s| s.split('>').nth(1))
        .and_then(|s| s.split('<').next())
        .unwrap()
        .replace("&amp;", "&");
    let m = ask(format!("{dash_server}&_DASH_pathway=%22edge-b,edge-a%22")).await;
    assert_eq!(m["PATHWAY-PRIORITY"], json!(["edge-b", "edge-a"]));

    // hls.js and dash.js play from A.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut node = Command::new("node")
        .arg(root.join("web/tests/steer.mjs"))
        .args([
            &edge_a,
            &edge_b,
            &asset,
            &format!("__token__={}", common::sign_session(&asset, "steer-hls")),
            &format!("__token__={}", common::sign_session(&asset, "steer-dash")),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut expect = |word: &str| -> Value {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the players ended before {word}"))
            .unwrap();
        let rest = line
            .strip_prefix(word)
            .unwrap_or_else(|| panic!("expected {word}, got {line}"));
        serde_json::from_str(rest.trim()).unwrap()
    };
    let before = tokio::task::block_in_place(|| expect("READY"));
    println!("playing from A: {before}");

    // A is drained: the next steering answers put B first, and the
    // playback API starts new sessions on B.
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["ctl", "--control", &control_url, "--admin-token-file"])
        .arg(&token_file)
        .args(["drain", "edge-a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("draining edge-a"), "{printed}");
    writeln!(stdin, "drained").unwrap();
    let m = ask(format!("{server}&_HLS_pathway=edge-a")).await;
    assert_eq!(m["PATHWAY-PRIORITY"], json!(["edge-b", "edge-a"]));

    let moved = tokio::task::block_in_place(|| expect("MOVED"));
    println!("moved to B: {moved}");
    let a_at_move = segments_served(&common::text(format!("{edge_a}/metrics")).await);
    writeln!(stdin, "go on").unwrap();
    let done = tokio::task::block_in_place(|| expect("DONE"));
    println!("after: {done}");
    let a_at_end = segments_served(&common::text(format!("{edge_a}/metrics")).await);
    let status = tokio::task::block_in_place(|| node.wait()).unwrap();
    assert!(status.success());
    assert_eq!(done["errors"], json!([]));
    assert_eq!(done["from_a_after_moving"], json!({"hls": 0, "dash": 0}));
    assert!(
        done["from_b_after_moving"]["hls"].as_u64().unwrap() >= 1,
        "{done}"
    );
    assert!(
        done["from_b_after_moving"]["dash"].as_u64().unwrap() >= 1,
        "{done}"
    );
    // A's own count: no segment served after the players left.
    assert_eq!(a_at_move, a_at_end, "edge A still served segments");

    // The playback API starts new sessions on B while A is drained.
    let access = common::viewer(&stack.origin_url, &stack.outbox).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = common::post_json_ok(
            &format!("{}/api/v1/playback/{asset}", stack.origin_url),
            &access,
            &json!({ "device_type": "web", "device_id": "steer-test" }),
        )
        .await;
        let hls = v["hls"].as_str().unwrap().to_string();
        if hls.starts_with(&edge_b) {
            break;
        }
        assert!(Instant::now() < deadline, "the playback API kept {hls}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    control.shutdown().await;
    b.shutdown().await;
    stack.shutdown().await;
}
