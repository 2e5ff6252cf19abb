//! Caching for event scale: stale serving through an origin outage, a
//! shield killed under load, ranges from slices, and CMCD prefetch.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_edge::EdgeConfig;

use common::FLEET;

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// GET with the viewer token in the query; status, Cache-Status, body.
async fn get(url: &str, token: &str, headers: &[(&str, &str)]) -> (u16, String, bytes::Bytes) {
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut req = common::client().get(format!("{url}{sep}__token__={token}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let cs = cache_status(&r);
    (status, cs, r.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_if_error_through_an_origin_outage_then_normal_service() {
    let stack = common::Stack::start_full(
        |o| {
            o.metadata_max_age_secs = 1;
            o.metadata_stale_while_revalidate_secs = 0;
            o.metadata_stale_if_error_secs = 3600;
        },
        |e| e.manifest_ttl_secs = 1,
    )
    .await;
    let asset = common::ingest_clip(&stack, 4).await;
    let token = common::sign_for(&asset);
    let shield_url = format!("http://{}", stack.shield.addr);
    let manifest = format!("{shield_url}/mezz/{asset}/manifest.json");
    let playlist = format!("{}/vod/{asset}/v0.m3u8", stack.edge_url);
    let segment = format!("{}/vod/{asset}/v0/1.m4s", stack.edge_url);
    for url in [&playlist, &segment] {
        assert_eq!(get(url, &token, &[]).await.0, 200);
    }
    let r = common::client().get(&manifest).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The origin goes away.
    let origin_addr = stack.origin.addr;
    let common::Stack {
        origin,
        shield,
        edge,
        dir,
        ..
    } = stack;
    origin.shutdown().await;

    // Once the manifest is past its one second, the shield serves it stale,
    // and says so; viewers never see an error.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = common::client().get(&manifest).send().await.unwrap();
        assert_eq!(r.status(), 200, "the shield serves through the outage");
        let cs = cache_status(&r);
        for url in [&playlist, &segment] {
            let (status, edge_cs, _) = get(url, &token, &[]).await;
            assert_eq!(
                status, 200,
                "viewers are served through the outage: {edge_cs}"
            );
        }
        if cs.contains("fwd=stale") && cs.contains("stale-if-error") {
            break;
        }
        assert!(Instant::now() < deadline, "never served stale: {cs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The edge too serves its expired playlist when its upstreams fail:
    // here the shield answers (stale), so the edge repackages; both are 200.
    let (status, _, body) = get(&playlist, &token, &[]).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("#EXTM3U"));

    // The origin returns on the same address: normal service resumes.
    let mut cfg = common::origin_config(dir.path().to_str().unwrap());
    cfg.listen = origin_addr.to_string();
    cfg.metadata_max_age_secs = 1;
    cfg.metadata_stale_while_revalidate_secs = 0;
    let origin = cascade_origin::start(&cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = common::client().get(&manifest).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let cs = cache_status(&r);
        // Fetched again, or (the manifest has an ETag) revalidated: a 304
        // from the origin refreshes the shield's copy.
        if cs.contains("cascade-shield; fwd=miss; stored")
            || cs.contains("cascade-shield; fwd=stale; fwd-status=304; stored")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never fetched fresh again: {cs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    edge.shutdown().await;
    shield.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_serves_its_own_stale_playlist_when_every_upstream_is_gone() {
    let stack = common::Stack::start_full(|_| {}, |e| e.manifest_ttl_secs = 1).await;
    let asset = common::ingest_clip(&stack, 2).await;
    let token = common::sign_for(&asset);
    let playlist = format!("{}/vod/{asset}/master.m3u8", stack.edge_url);
    assert_eq!(get(&playlist, &token, &[]).await.0, 200);
    let common::Stack {
        origin,
        shield,
        edge,
        edge_url,
        ..
    } = stack;
    shield.shutdown().await;
    origin.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, cs, _) = get(&playlist, &token, &[]).await;
        assert_eq!(status, 200, "{cs}");
        if cs.contains("cascade-edge; fwd=stale; detail=stale-if-error") {
            break;
        }
        assert!(Instant::now() < deadline, "never served stale: {cs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing fresh can be made: an uncached output is an honest error.
    let (status, _, _) = get(&format!("{edge_url}/vod/{asset}/v1/1.m4s"), &token, &[]).await;
    assert!(status >= 500, "{status}");
    edge.shutdown().await;
}

/// A shield in its own process, so it can be killed outright.
struct ShieldProcess {
    child: Child,
    url: String,
}

impl ShieldProcess {
    async fn start(dir: &std::path::Path, name: &str, origin: &str) -> ShieldProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\norigins = [\"{origin}\"]\ncache_dir = \"\"\ncache_memory_mib = 32\nnode_name = \"{name}\"\n"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cascade"))
            .args(["shield", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(common::client().get(format!("{url}/healthz")).send().await, Ok(r) if r.status() == 200)
        {
            assert!(Instant::now() < deadline, "shield {name} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ShieldProcess { child, url }
    }

    async fn requests(&self) -> u64 {
        let m = common::text(format!("{}/metrics", self.url)).await;
        m.lines()
            .filter(|l| l.starts_with("cascade_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ShieldProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shield_killed_under_load_fails_no_viewer() {
    // The stack's own shield is not used: the edge gets two shield processes.
    let stack = common::Stack::start().await;
    let asset = common::ingest_clip(&stack, 6).await;
    let token = common::sign_for(&asset);
    let mut a = ShieldProcess::start(stack.dir.path(), "shield-a", &stack.origin_url).await;
    let mut b = ShieldProcess::start(stack.dir.path(), "shield-b", &stack.origin_url).await;
    let mut cfg = EdgeConfig {
        listen: "127.0.0.1:0".into(),
        shields: vec![a.url.clone(), b.url.clone()],
        origin: stack.origin_url.clone(),
        origin_fallback: false,
        cache_dir: String::new(),
        cache_memory_mib: 32,
        shield_health_secs: 1,
        fleet_token: FLEET.into(),
        token_keys: vec![common::test_key("test", common::TEST_KEY_HEX)],
        ..EdgeConfig::default()
    };
    cfg.node_name = "edge-load".into();
    let edge = cascade_edge::start(&cfg).await.unwrap();
    let edge_url = format!("http://{}", edge.addr);
    let mut list = Vec::new();
    for t in ["v0", "v1", "a0"] {
        list.push(format!("{edge_url}/vod/{asset}/{t}.m3u8"));
        for n in 1..=3 {
            list.push(format!("{edge_url}/vod/{asset}/{t}/{n}.m4s"));
        }
    }
    let urls = Arc::new(list);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (urls, stop, ok, failed, token) = (
            urls.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            token.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for u in urls.iter() {
                    let (status, cs, _) = get(u, &token, &[]).await;
                    if status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("failed: {u} {status} {cs}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Keep the edge missing, so its traffic keeps reaching the shields.
    let purger = {
        let (stop, edge_url) = (stop.clone(), edge_url.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = common::client()
                    .post(format!("{edge_url}/fleet/purge"))
                    .bearer_auth(FLEET)
                    .body(r#"{"prefixes":["/vod/"]}"#)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Steady load on both shields, then kill the busier one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.requests().await + b.requests().await < 40 {
        assert!(Instant::now() < deadline, "no load reached the shields");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ra, rb) = (a.requests().await, b.requests().await);
    let (victim, survivor) = if ra >= rb { (&mut a, &b) } else { (&mut b, &a) };
    victim.kill();
    let killed_at = ok.load(Ordering::Relaxed);
    let survivor_before = survivor.requests().await;
    // The load goes on until the survivor has taken over the victim's share.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok.load(Ordering::Relaxed) < killed_at + 300
        || survivor.requests().await < survivor_before + 40
    {
        assert!(Instant::now() < deadline, "load stalled after the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    purger.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no viewer request failed"
    );
    let metrics = common::text(format!("{edge_url}/metrics")).await;
    assert!(
        metrics.contains("cascade_edge_shield_health_events_total{"),
        "the edge noticed: {metrics}"
    );
    edge.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_are_served_from_cache_and_slices() {
    let stack = common::Stack::start().await;
    let asset = common::ingest_clip(&stack, 4).await;
    let token = common::sign_for(&asset);
    // A shield with small slices, so one file spans several.
    let shield = cascade_shield::start(&cascade_shield::ShieldConfig {
        listen: "127.0.0.1:0".into(),
        origins: vec![stack.origin_url.clone()],
        cache_dir: String::new(),
        cache_memory_mib: 16,
        slice_kib: 64,
        ..cascade_shield::ShieldConfig::default()
    })
    .await
    .unwrap();
    let file = format!("/mezz/{asset}/v0.mp4");
    let whole = common::client()
        .get(format!("{}{file}", stack.origin_url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        whole.len() > 2 * 65536 + 100,
        "the file spans slices: {}",
        whole.len()
    );
    let before = stack.origin.mezzanine_requests();
    // A range across a slice boundary: exactly the origin's bytes.
    let (first, last) = (65536 - 100, 2 * 65536 + 99);
    let r = common::client()
        .get(format!("http://{}{file}", shield.addr))
        .header("range", format!("bytes={first}-{last}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {first}-{last}/{}", whole.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), whole.slice(first..=last));
    assert_eq!(
        stack.origin.mezzanine_requests() - before,
        3,
        "three slices"
    );
    // Inside a slice already fetched: no origin request.
    let r = common::client()
        .get(format!("http://{}{file}", shield.addr))
        .header("range", "bytes=70000-70099")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(cache_status(&r).contains("cascade-shield; hit"));
    assert_eq!(r.bytes().await.unwrap(), whole.slice(70000..70100));
    assert_eq!(stack.origin.mezzanine_requests() - before, 3);
    // Past the end: 416 with the size.
    let r = common::client()
        .get(format!("http://{}{file}", shield.addr))
        .header("range", format!("bytes={}-", whole.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    // Several ranges, or a last byte before the first: the whole file with
    // 200 and no Content-Range (it was a 206 claiming the whole file).
    for spec in ["bytes=0-9,20-29", "bytes=10-5"] {
        let r = common::client()
            .get(format!("http://{}{file}", shield.addr))
            .header("range", spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{spec}");
        assert!(r.headers().get("content-range").is_none(), "{spec}");
        assert_eq!(r.bytes().await.unwrap(), whole, "{spec}");
    }
    shield.shutdown().await;

    // At the edge, a range of a packaged segment comes from the cached whole.
    let seg = format!("{}/vod/{asset}/v0/1.m4s", stack.edge_url);
    let (status, _, full) = get(&seg, &token, &[]).await;
    assert_eq!(status, 200);
    let (status, cs, part) = get(&seg, &token, &[("range", "bytes=8-107")]).await;
    assert_eq!((status, part.len()), (206, 100));
    assert!(cs.contains("cascade-edge; hit"), "{cs}");
    assert_eq!(part, full.slice(8..108));
    let (status, _, _) = get(&seg, &token, &[("range", "bytes=99999999-")]).await;
    assert_eq!(status, 416);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cmcd_nor_makes_the_next_segment_a_hit() {
    let stack = common::Stack::start().await;
    let asset = common::ingest_clip(&stack, 6).await;
    let token = common::sign_for(&asset);
    let base = format!("{}/vod/{asset}/v0", stack.edge_url);
    let done =
        |m: &str| common::metric_value(m, "cascade_edge_cmcd_prefetch_total{result=\"done\"}");
    let metrics = || common::text(format!("{}/metrics", stack.edge_url));

    // In the header, as CTA-5004 places it.
    let (status, _, _) = get(
        &format!("{base}/1.m4s"),
        &token,
        &[("cmcd-request", "nor=\"2.m4s\"")],
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while done(&metrics().await) < 1 {
        assert!(
            Instant::now() < deadline,
            "no prefetch: {}",
            metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, cs, _) = get(&format!("{base}/2.m4s"), &token, &[]).await;
    assert_eq!(status, 200);
    assert!(cs.contains("cascade-edge; hit"), "prefetched: {cs}");

    // In the query, as hls.js sends it (URL-encoded, nor itself encoded).
    let cmcd = "CMCD=bl%3D2000%2Cnor%3D%22..%252Fv1%252F3.m4s%22%2Csid%3D%22s1%22";
    let (status, _, _) = get(&format!("{base}/3.m4s?{cmcd}"), &token, &[]).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while done(&metrics().await) < 2 {
        assert!(Instant::now() < deadline, "no prefetch from the query");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, cs, _) = get(
        &format!("{}/vod/{asset}/v1/3.m4s", stack.edge_url),
        &token,
        &[],
    )
    .await;
    assert!(cs.contains("cascade-edge; hit"), "prefetched: {cs}");

    // Another title is never fetched on a viewer's say-so.
    let (status, _, _) = get(
        &format!("{base}/1.m4s"),
        &token,
        &[("cmcd-request", "nor=\"..%2F..%2Fother%2Fv0%2F1.m4s\"")],
    )
    .await;
    assert_eq!(status, 200);
    let m = metrics().await;
    assert!(common::metric_value(&m, "cascade_edge_cmcd_prefetch_total{result=\"invalid\"}") >= 1);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_percent_encoded_query_token_is_accepted() {
    // hls.js and dash.js with CMCD on rebuild segment URLs and encode the
    // token's `~`, `=`, `/` and `*`; that must not lock viewers out.
    let stack = common::Stack::start().await;
    let asset = common::ingest_clip(&stack, 2).await;
    let token = common::sign_for(&asset);
    let encoded: String = token
        .bytes()
        .map(|b| match b {
            b'~' | b'=' | b'/' | b'*' => format!("%{b:02X}"),
            b => (b as char).to_string(),
        })
        .collect();
    assert_ne!(encoded, token);
    let url = format!("{}/vod/{asset}/master.m3u8", stack.edge_url);
    let (status, _, _) = get(&url, &encoded, &[]).await;
    assert_eq!(status, 200);
    // A damaged token stays refused, encoded or not.
    let bad = encoded.replacen("hmac%3D", "hmac%3D0", 1);
    assert_eq!(get(&url, &bad, &[]).await.0, 403);
    stack.shutdown().await;
}

/// A slow origin for one object: sends the headers and the first half, then
/// waits for `release` before the rest. (The real origin cannot be made to
/// stall mid-body; this fake exists only for that.) Counts requests.
async fn slow_origin(
    half: usize,
    release: tokio::sync::watch::Receiver<bool>,
) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (count, mut release) = (count.clone(), release.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                count.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: public, max-age=60\r\nconnection: close\r\n\r\n",
                    2 * half
                );
                sock.write_all(head.as_bytes()).await.unwrap();
                sock.write_all(&vec![b'a'; half]).await.unwrap();
                sock.flush().await.unwrap();
                let _ = release.wait_for(|r| *r).await;
                sock.write_all(&vec![b'b'; half]).await.unwrap();
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_are_fed_as_the_body_streams_in() {
    let half = 256 * 1024;
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (origin, requests) = slow_origin(half, release_rx).await;
    let shield = cascade_shield::start(&cascade_shield::ShieldConfig {
        listen: "127.0.0.1:0".into(),
        origins: vec![origin],
        cache_dir: String::new(),
        cache_memory_mib: 16,
        ..cascade_shield::ShieldConfig::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}/mezz/slow/manifest.json", shield.addr);
    // Reads until at least `n` bytes came; returns the response and them.
    async fn first_bytes(url: &str, n: usize) -> (reqwest::Response, Vec<u8>) {
        let mut r = common::client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut got = Vec::new();
        while got.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
                .await
                .expect("the first half arrives while the origin still holds the rest")
                .unwrap()
                .expect("more body");
            got.extend_from_slice(&chunk);
        }
        (r, got)
    }
    // Two viewers, and a third who comes while the body is under way: all
    // get the first half before the origin has sent the second.
    let (a, b) = tokio::join!(first_bytes(&url, half), first_bytes(&url, half));
    let c = first_bytes(&url, half).await;
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one origin fetch");
    release_tx.send(true).unwrap();
    for (mut r, mut got) in [a, b, c] {
        while let Some(chunk) = r.chunk().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), 2 * half);
        assert!(got[..half].iter().all(|&x| x == b'a') && got[half..].iter().all(|&x| x == b'b'));
    }
    // Stored once complete: the next request is a hit.
    let r = common::client().get(&url).send().await.unwrap();
    assert!(
        cache_status(&r).contains("cascade-shield; hit"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.bytes().await.unwrap().len(), 2 * half);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    shield.shutdown().await;
}
