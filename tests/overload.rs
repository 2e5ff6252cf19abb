//! Graceful degradation: an edge with a small capacity taken to twice it
//! keeps serving the sessions that were playing, caps then refuses new
//! ones, and returns to normal when the load stops; CMSD says so, read back
//! by an independent parser. Operators' quality caps (`cascade ctl
//! degrade`) reach every edge within a second, each way; drains too.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_control::ControlConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::FLEET;

/// Rung heights a multivariant playlist offers.
fn heights(playlist: &str) -> Vec<u32> {
    playlist
        .lines()
        .filter(|l| l.starts_with("#EXT-X-STREAM-INF:"))
        .filter_map(|l| l.split("RESOLUTION=").nth(1))
        .filter_map(|r| r.split(',').next()?.split_once('x')?.1.parse().ok())
        .collect()
}

/// A connection held open to `addr` after one request (what a crowd of
/// viewers costs an edge in connections).
async fn held_connection(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    s
}

/// A new session's first request: its multivariant playlist.
async fn start_session(edge: &str, asset: &str, session: &str) -> reqwest::Response {
    let t = common::sign_session(asset, session);
    common::client()
        .get(format!("{edge}/vod/{asset}/master.m3u8?__token__={t}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_caps_then_refuses_new_sessions_and_never_playing_ones() {
    let stack = common::Stack::start_with(|e| {
        e.capacity_connections = 40;
        // Capping from 70% of the connections, refusing from 100%: a wide
        // band, so the test's own connections coming and going cannot
        // skip it.
        e.shed_at = vec![0.5, 0.6, 0.7, 1.0];
        e.shed_hold_ms = 300;
        e.shed_max_height = 120;
        e.shed_retry_after_secs = 3;
    })
    .await;
    let clip = common::make_clip(stack.dir.path(), 8);
    let asset = common::ingest_with(&stack, &clip, &[]).await;
    let edge = stack.edge_url.clone();

    // Three sessions start while the edge is idle: the whole ladder.
    let mut players = Vec::new();
    for i in 0..3 {
        let r = start_session(&edge, &asset, &format!("playing-{i}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(heights(&r.text().await.unwrap()), [180, 120]);
        players.push(format!("playing-{i}"));
    }
    // They keep playing, one segment after another, through everything below.
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for s in players {
        let (edge, asset, failures, served, stop) = (
            edge.clone(),
            asset.clone(),
            failures.clone(),
            served.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t = common::sign_session(&asset, &s);
            let client = common::client();
            for n in (1..=4).cycle() {
                let url = format!("{edge}/vod/{asset}/v0/{n}.m4s?__token__={t}");
                tokio::select! {
                    r = client.get(&url).send() => match r {
                        Ok(r) if r.status() == 200 => { served.fetch_add(1, Ordering::Relaxed); }
                        Ok(r) => failures.lock().unwrap().push(format!("{s}: {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(format!("{s}: {e}")),
                    },
                    _ = stop.notified() => return,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    // A crowd arrives: with the players, about 75% of the connections the
    // edge can hold.
    let addr = stack.edge.addr;
    let mut crowd = Vec::new();
    for _ in 0..30 {
        crowd.push(held_connection(addr).await);
    }
    let mut cmsd = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let capped = loop {
        n += 1;
        let r = start_session(&edge, &asset, &format!("new-{n}")).await;
        assert_eq!(r.status(), 200, "new sessions are capped before refused");
        let h = r.headers().clone();
        let body = r.text().await.unwrap();
        if heights(&body) == [120] {
            cmsd.push(serde_json::json!({
                "static": h["cmsd-static"].to_str().unwrap(),
                "dynamic": h["cmsd-dynamic"].to_str().unwrap(),
            }));
            assert!(h["cache-control"].to_str().unwrap().contains("private"));
            break format!("new-{n}");
        }
        if Instant::now() > deadline {
            let m = common::text(format!("{edge}/metrics")).await;
            let m: Vec<&str> = m
                .lines()
                .filter(|l| l.contains("connections") || l.contains("shed_level"))
                .collect();
            panic!("no capped manifest: {body}\n{m:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Twice the capacity: new sessions are refused, with Retry-After.
    for _ in 30..80 {
        crowd.push(held_connection(addr).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let r = start_session(&edge, &asset, &format!("late-{n}")).await;
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "3");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "overloaded");
            break;
        }
        assert!(Instant::now() < deadline, "new sessions were never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The session that started capped keeps its cap, and is served.
    let r = start_session(&edge, &asset, &capped).await;
    assert_eq!(r.status(), 200);
    assert_eq!(heights(&r.text().await.unwrap()), [120]);
    // The playing sessions still get the whole ladder, and CMSD says the
    // edge is under duress.
    let r = start_session(&edge, &asset, "playing-0").await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(heights(&r.text().await.unwrap()), [180, 120]);
    cmsd.push(serde_json::json!({
        "static": h["cmsd-static"].to_str().unwrap(),
        "dynamic": h["cmsd-dynamic"].to_str().unwrap(),
    }));
    let before = served.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.load(Ordering::Relaxed) < before + 6 {
        assert!(Instant::now() < deadline, "playing sessions stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seg = common::client()
        .get(format!(
            "{edge}/vod/{asset}/v0/1.m4s?__token__={}",
            common::sign_session(&asset, "playing-1")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(seg.status(), 200);
    cmsd.push(serde_json::json!({
        "static": seg.headers()["cmsd-static"].to_str().unwrap(),
        "dynamic": seg.headers()["cmsd-dynamic"].to_str().unwrap(),
    }));

    // The crowd leaves: shedding lets go a step at a time, and new
    // sessions get the whole ladder again.
    drop(crowd);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let r = start_session(&edge, &asset, &format!("after-{n}")).await;
        if r.status() == 200 {
            let h = r.headers().clone();
            if heights(&r.text().await.unwrap()) == [180, 120] {
                let dynamic = h["cmsd-dynamic"].to_str().unwrap();
                if !dynamic.contains("du") && !dynamic.contains("mb") {
                    cmsd.push(serde_json::json!({
                        "static": h["cmsd-static"].to_str().unwrap(),
                        "dynamic": dynamic,
                    }));
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the edge never returned to normal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_waiters();
    for t in tasks {
        t.abort();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "a playing session's segment failed: {failures:?}"
    );
    assert!(served.load(Ordering::Relaxed) >= 12);

    // Every step was counted, down to normal.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = common::text(format!("{edge}/metrics")).await;
        if m.lines().any(|l| l == "cascade_edge_shed_level 0") {
            break m;
        }
        assert!(Instant::now() < deadline, "shedding never stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for line in [
        "cascade_edge_shed_transitions_total{level=\"cap_new\"}",
        "cascade_edge_shed_transitions_total{level=\"refuse_new\"}",
        "cascade_edge_shed_transitions_total{level=\"normal\"}",
        "cascade_edge_shed_total{kind=\"capped_session\"}",
        "cascade_edge_shed_total{kind=\"refused_session\"}",
    ] {
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{line} never counted:\n{metrics}");
    }
    assert!(metrics.contains("cascade_edge_capacity{resource=\"connections\"} 40"));
    assert!(metrics.contains("cascade_edge_load{resource=\"connections\"}"));

    // CMSD, read by an independent parser.
    let decoded = cmsd_decode(&cmsd);
    assert_eq!(decoded.len(), 4);
    let stat = |i: usize, k: &str| decoded[i]["static"][k].clone();
    let dynp = |i: usize| decoded[i]["dynamic"][0]["params"].clone();
    // A manifest while capping: a text object of an on-demand HLS stream,
    // from an edge under duress.
    assert_eq!(stat(0, "ot"), "m");
    assert_eq!(stat(0, "sf"), "h");
    assert_eq!(stat(0, "st"), "v");
    assert_eq!(decoded[0]["dynamic"][0]["value"], "edge-1");
    assert_eq!(dynp(0)["du"], true);
    assert_eq!(dynp(1)["du"], true);
    // A video segment under duress.
    assert_eq!(stat(2, "ot"), "v");
    assert_eq!(dynp(2)["du"], true);
    // Back to normal: no duress.
    assert!(dynp(3).get("du").is_none(), "{}", decoded[3]);
    stack.shutdown().await;
}

/// Decodes CMSD headers with `@svta/cml-cmsd` (npm).
fn cmsd_decode(headers: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("node")
        .arg(root.join("web/tests/cmsd.mjs"))
        .current_dir(root.join("web"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(headers).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the CMSD parser refused our headers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `cascade ctl` against control: whether it succeeded, and what it
/// printed (stdout when it did, stderr when not).
fn run_ctl(control: &str, token_file: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["ctl", "--control", control, "--admin-token-file"])
        .arg(token_file)
        .args(args)
        .output()
        .unwrap();
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    (out.status.success(), String::from_utf8(text).unwrap())
}

/// `cascade ctl` that succeeds; answers stdout.
fn ctl(control: &str, token_file: &Path, args: &[&str]) -> String {
    let (ok, text) = run_ctl(control, token_file, args);
    assert!(ok, "cascade ctl {args:?}: {text}");
    text
}

/// `cascade ctl` that fails; answers stderr.
fn ctl_fails(control: &str, token_file: &Path, args: &[&str]) -> String {
    let (ok, text) = run_ctl(control, token_file, args);
    assert!(!ok, "cascade ctl {args:?} succeeded: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_cap_reaches_every_edge_within_a_second_each_way() {
    const ADMIN: &str = "control-admin-for-tests";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).unwrap();
    let stack = common::Stack::start().await;
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        fleet_token: FLEET.into(),
        admin_token: ADMIN.into(),
        origin_url: stack.origin_url.clone(),
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let control_url = format!("http://{}", control.addr);
    let shield = format!("http://{}", stack.shield.addr);
    // Heartbeats every 30 s: what reaches this edge within a second is
    // control's push.
    let first = cascade_edge::start(&cascade_edge::EdgeConfig {
        listen: "127.0.0.1:0".into(),
        shields: vec![shield.clone()],
        origin: stack.origin_url.clone(),
        cache_dir: String::new(),
        cache_memory_mib: 64,
        token_keys: vec![common::test_key("test", common::TEST_KEY_HEX)],
        control_url: control_url.clone(),
        fleet_token: FLEET.into(),
        node_name: "edge-in-1".into(),
        region: "IN".into(),
        heartbeat_secs: 30,
        ..cascade_edge::EdgeConfig::default()
    })
    .await
    .unwrap();
    let second = common::registered_edge(
        vec![shield.clone()],
        &stack.origin_url,
        &control_url,
        "edge-in-2",
        "IN",
    )
    .await;
    let other = common::registered_edge(
        vec![shield],
        &stack.origin_url,
        &control_url,
        "edge-uk-1",
        "UK",
    )
    .await;
    let edges = [
        format!("http://{}", first.addr),
        format!("http://{}", second.addr),
        format!("http://{}", other.addr),
    ];
    let clip = common::make_clip(stack.dir.path(), 4);
    let asset = common::ingest_with(&stack, &clip, &[]).await;
    let t = common::sign_for(&asset);
    let fetch = |edge: String| {
        let (asset, t) = (asset.clone(), t.clone());
        async move {
            let r = common::client()
                .get(format!("{edge}/vod/{asset}/master.m3u8?__token__={t}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            heights(&r.text().await.unwrap())
        }
    };
    // Registered (the first heartbeat goes at start), each edge serves the whole ladder.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !common::nodes(&control_url)
        .await
        .iter()
        .filter(|n| n["role"] == "edge")
        .count()
        .eq(&3)
    {
        assert!(Instant::now() < deadline, "edges never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for e in &edges {
        assert_eq!(fetch(e.clone()).await, [180, 120]);
    }

    // Bad input first: nothing changes.
    for (args, want) in [
        (
            &["degrade", "--region", "MARS", "--max-height", "120"][..],
            "no edge is in that region",
        ),
        (
            &["degrade", "--channel", "nope", "--max-height", "120"],
            "no such live channel",
        ),
        (
            &["degrade", "--region", "IN", "--max-height", "100"],
            "remove every rung",
        ),
        (
            &[
                "degrade",
                "--region",
                "IN",
                "--max-height",
                "120",
                "--for",
                "10x",
            ],
            "--for",
        ),
        (&["degrade", "--clear", "--region", "IN"], "no cap is set"),
        (&["drain", "edge-nowhere"], "no edge of that name"),
    ] {
        let err = ctl_fails(&control_url, &token_file, args);
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // Region IN capped at 144 lines: both Indian edges within a second, the
    // British one not at all.
    let out = ctl(
        &control_url,
        &token_file,
        &[
            "degrade",
            "--region",
            "IN",
            "--max-height",
            "144",
            "--for",
            "10m",
        ],
    );
    let applied = Instant::now();
    assert!(
        out.contains("capped region IN at 144 lines for 10m"),
        "{out}"
    );
    assert!(
        out.contains("edge-in-1") && out.contains("edge-in-2"),
        "{out}"
    );
    for e in &edges[..2] {
        assert_eq!(fetch(e.clone()).await, [120], "{e}");
    }
    assert!(applied.elapsed() < Duration::from_secs(1));
    assert_eq!(fetch(edges[2].clone()).await, [180, 120]);
    let list = ctl(&control_url, &token_file, &["degrade"]);
    assert!(list.contains("region IN") && list.contains("144"), "{list}");
    // A segment of the top rung cached before stays valid.
    let seg = common::client()
        .get(format!("{}/vod/{asset}/v0/1.m4s?__token__={t}", edges[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(seg.status(), 200);

    // Lifted: the whole ladder again, everywhere, within a second.
    let out = ctl(
        &control_url,
        &token_file,
        &["degrade", "--clear", "--region", "IN"],
    );
    let lifted = Instant::now();
    assert!(out.contains("cap lifted for region IN"), "{out}");
    for e in &edges {
        assert_eq!(fetch(e.clone()).await, [180, 120], "{e}");
    }
    assert!(lifted.elapsed() < Duration::from_secs(1));

    // A drain: the drained edge starts no new session; the others do.
    let out = ctl(&control_url, &token_file, &["drain", "edge-in-2"]);
    assert!(out.contains("draining edge-in-2"), "{out}");
    let r = start_session(&edges[1], &asset, "someone-new").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "draining"
    );
    let r = start_session(&edges[0], &asset, "someone-new").await;
    assert_eq!(r.status(), 200);
    ctl(
        &control_url,
        &token_file,
        &["drain", "edge-in-2", "--clear"],
    );
    let r = start_session(&edges[1], &asset, "someone-new").await;
    assert_eq!(r.status(), 200);

    // Caps and drains are kept by control: a restart keeps them.
    ctl(
        &control_url,
        &token_file,
        &["degrade", "--max-height", "144"],
    );
    control.shutdown().await;
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        fleet_token: FLEET.into(),
        admin_token: ADMIN.into(),
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let restarted = format!("http://{}", control.addr);
    let list = ctl(&restarted, &token_file, &["degrade"]);
    assert!(list.contains("region *") && list.contains("144"), "{list}");
    control.shutdown().await;
    first.shutdown().await;
    second.shutdown().await;
    other.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_over_its_egress_threshold_is_capped_until_it_falls() {
    let dir = tempfile::tempdir().unwrap();
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("control").to_str().unwrap().into(),
        fleet_token: FLEET.into(),
        // 40 kbit/s of egress in the region starts the cap; under 32 lifts it.
        auto_degrade: vec![cascade_control::AutoDegrade {
            region: "IN".into(),
            egress_mbps: 0.04,
            max_height: 144,
        }],
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let cu = format!("http://{}", control.addr);
    let stack = common::Stack::start_with(move |e| {
        e.control_url = cu;
        e.fleet_token = FLEET.into();
        e.region = "IN".into();
        e.heartbeat_secs = 1;
    })
    .await;
    let clip = common::make_clip(stack.dir.path(), 4);
    let asset = common::ingest_with(&stack, &clip, &[]).await;
    let t = common::sign_for(&asset);
    let master = || {
        let url = format!("{}/vod/{asset}/master.m3u8?__token__={t}", stack.edge_url);
        async move { heights(&common::text(url).await) }
    };
    assert_eq!(master().await, [180, 120]);
    // Viewers fetch segments: the region's egress passes the threshold,
    // and within a few heartbeats the region's manifests lose the top rung.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for n in 1..=2 {
            let r = common::client()
                .get(format!(
                    "{}/vod/{asset}/v0/{n}.m4s?__token__={t}",
                    stack.edge_url
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
        if master().await == [120] {
            break;
        }
        assert!(Instant::now() < deadline, "the region was never capped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The viewers stop: egress falls, the automatic cap goes. (Polled once
    // a second: the playlist itself is a few kbit/s, well under the 32
    // that lift the cap.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while master().await != [180, 120] {
        assert!(
            Instant::now() < deadline,
            "the automatic cap was never lifted"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    control.shutdown().await;
    stack.shutdown().await;
}
