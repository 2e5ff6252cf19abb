//! Live through the CDN: FFmpeg publishes over RTMP to the origin, and
//! viewers play LL-HLS and DASH from the edge, through the shield.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Stack;

/// FFmpeg publishing a 320x180 25 fps test pattern with a tone, a keyframe
/// every second, in real time, for `secs`.
fn publish(url: &str, secs: u32) -> std::process::Child {
    publish_as(url, secs, "flv")
}

/// The same over SRT (an MPEG transport stream, caller mode).
fn publish_srt(url: &str, secs: u32) -> std::process::Child {
    publish_as(url, secs, "mpegts")
}

fn publish_as(url: &str, secs: u32, format: &str) -> std::process::Child {
    common::ffmpeg_publish(url, format, "320x180", secs, "libx264")
}

/// FFmpeg reads `url` with `args` before and after the input (`-t`, `-map`…)
/// into nothing; fails the test with FFmpeg's words unless it succeeds.
fn ffmpeg_plays(what: &str, before: &[&str], url: &str, after: &[&str]) {
    let out = tokio::task::block_in_place(|| {
        Command::new("ffmpeg")
            .args(["-v", "error"])
            .args(before)
            .args(["-i", url])
            .args(after)
            .args(["-f", "null", "-"])
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn live_stack() -> (Stack, String) {
    let stack = Stack::start_full(
        |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.srt_listen = "127.0.0.1:0".into();
            // One rung below the 180-line test pattern, encoded live.
            o.live_ladder = vec![cascade_origin::config::Rung {
                height: 120,
                kbps: 150,
            }];
            o.live_preset = "ultrafast".into();
        },
        |e| e.fleet_token = common::FLEET.into(),
    )
    .await;
    let made: serde_json::Value =
        common::create_channel(&stack.origin_url, serde_json::json!({ "name": "final" })).await;
    let key = made["stream_key"].as_str().unwrap().to_string();
    (stack, key)
}

/// Polls a playlist until it lists at least `segments` whole segments.
async fn wait_segments(url: &str, segments: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = common::client().get(url).send().await.unwrap();
        if r.status() == 200 {
            let text = r.text().await.unwrap();
            if text.matches("#EXTINF").count() >= segments {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the playlist never filled: {url}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The preload hint's segment and part: what does not exist yet.
fn preload_hint(playlist: &str) -> (u64, u32) {
    let line = playlist
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT"))
        .unwrap();
    let uri = line.split("URI=\"").nth(1).unwrap();
    let file = uri.split('/').nth(1).unwrap().split('?').next().unwrap();
    let mut n = file.trim_end_matches(".m4s").split('.');
    (
        n.next().unwrap().parse().unwrap(),
        n.next().unwrap().parse().unwrap(),
    )
}

/// The sum of every `cascade_requests_total` series with `cache="miss"`.
fn misses(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cascade_requests_total{") && l.contains("cache=\"miss\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ll_hls_plays_through_edge_and_shield_and_blocked_viewers_share_one_request() {
    let (stack, key) = live_stack().await;
    let rtmp = stack.origin.rtmp_addr.unwrap();
    let ffmpeg = publish(&format!("rtmp://{rtmp}/live/{key}"), 40);
    let q = format!("__token__={}", common::sign_acl("/live/final/*"));
    let base = format!("{}/live/final/", stack.edge_url);

    // Without a token: refused, like on-demand media.
    let r = common::client()
        .get(format!("{base}master.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let playlist = wait_segments(&format!("{base}v0.m3u8?{q}"), 2).await;
    for tag in [
        "#EXT-X-VERSION:9",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500,",
        "#EXT-X-PART-INF:PART-TARGET=0.500",
        "#EXT-X-PROGRAM-DATE-TIME:",
        ",INDEPENDENT=YES",
        "#EXT-X-RENDITION-REPORT:URI=\"a0.m3u8?__token__=",
    ] {
        assert!(playlist.contains(tag), "{tag} missing:\n{playlist}");
    }
    // Parts of the same segment never exceed the part target.
    for line in playlist.lines().filter(|l| l.starts_with("#EXT-X-PART:")) {
        let d: f64 = line["#EXT-X-PART:DURATION=".len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(d <= 0.5, "{line}");
    }

    // The independent checks (PyPI m3u8 and mpegdash).
    let out = tokio::task::block_in_place(|| {
        Command::new(common::python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/live_check.py"))
            .args([&base, &q])
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "live_check.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 500 viewers block on the next part at once: one request at the
    // shield, one at the origin, and every answer lists that part.
    let playlist = common::client()
        .get(format!("{base}v0.m3u8?{q}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (msn, part) = preload_hint(&playlist);
    let shield_before =
        misses(&common::text(format!("http://{}/metrics", stack.shield.addr)).await);
    let origin_metric = "cascade_origin_live_requests_total{kind=\"manifest_blocking\"}";
    let origin_before = common::metric_value(
        &common::text(format!("{}/metrics", stack.origin_url)).await,
        origin_metric,
    );
    let blocked = format!("{base}v0.m3u8?_HLS_msn={msn}&_HLS_part={part}&{q}");
    let client = common::client();
    let asked = Instant::now();
    let answers = futures::future::join_all((0..500).map(|_| {
        let (client, url) = (client.clone(), blocked.clone());
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    }))
    .await;
    let waited = asked.elapsed();
    let want = format!("v0/{msn}.{part}.m4s");
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains(&want), "{want} not in:\n{body}");
    }
    let shield_after = misses(&common::text(format!("http://{}/metrics", stack.shield.addr)).await);
    let origin_after = common::metric_value(
        &common::text(format!("{}/metrics", stack.origin_url)).await,
        origin_metric,
    );
    assert_eq!(shield_after - shield_before, 1, "requests at the shield");
    assert_eq!(origin_after - origin_before, 1, "requests at the origin");
    // The part comes within a part target or so (not a timing test: a
    // bound that only a request that never blocked, or never woke, misses).
    assert!(waited < Duration::from_secs(6), "{waited:?}");

    // Safari's form (no _HLS_part) waits for part 0 of the segment.
    let next = msn + 1;
    let r = client
        .get(format!("{base}a0.m3u8?_HLS_msn={next}&{q}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains(&format!("a0/{next}.0.m4s")));
    // Too far ahead: 400.
    let r = client
        .get(format!("{base}v0.m3u8?_HLS_msn={}&{q}", msn + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Legacy devices: MPEG-TS variants of whole segments, muxed at the edge.
    let ts_master = common::text(format!("{base}master.m3u8?format=ts&{q}")).await;
    assert!(ts_master.contains("#EXT-X-VERSION:3"), "{ts_master}");
    assert!(
        ts_master.contains("ts/v0.a0.m3u8?__token__="),
        "{ts_master}"
    );
    let ts_playlist = common::text(format!("{base}ts/v0.a0.m3u8?{q}")).await;
    assert!(!ts_playlist.contains("EXT-X-PART"), "{ts_playlist}");
    let first_ts = ts_playlist
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap()
        .to_string();
    let ts = common::client()
        .get(format!("{base}ts/{first_ts}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ts.status(), 200);
    assert_eq!(ts.headers()["content-type"], "video/mp2t");
    let ts = ts.bytes().await.unwrap();
    assert!(ts.len() % 188 == 0 && ts[0] == 0x47 && ts[188] == 0x47);
    ffmpeg_plays(
        "the TS variant",
        &[],
        &format!("{base}master.m3u8?format=ts&{q}"),
        &["-t", "3"],
    );

    // The ladder's rung: listed beside the source, and it plays.
    let master = common::text(format!("{base}master.m3u8?{q}")).await;
    assert!(master.contains("RESOLUTION=320x180"), "{master}");
    assert!(master.contains("RESOLUTION=214x120"), "{master}");

    // A panic cap on this channel (as control pushes it): the source rung
    // leaves the multivariant playlists and the MPD; a cap on another
    // channel changes nothing; lifted, the rung is back.
    let state = |body: serde_json::Value| {
        let edge = stack.edge_url.clone();
        async move {
            let r = common::client()
                .post(format!("{edge}/fleet/state"))
                .bearer_auth(common::FLEET)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
    };
    let cap = |channel: &str| serde_json::json!({"caps": [{"channel": channel, "max_height": 150, "source": "operator"}]});
    state(cap("another")).await;
    let master = common::text(format!("{base}master.m3u8?{q}")).await;
    assert!(master.contains("RESOLUTION=320x180"), "{master}");
    state(cap("final")).await;
    let master = common::text(format!("{base}master.m3u8?{q}")).await;
    assert!(!master.contains("RESOLUTION=320x180"), "{master}");
    assert!(master.contains("RESOLUTION=214x120"), "{master}");
    let ts_master = common::text(format!("{base}master.m3u8?format=ts&{q}")).await;
    assert!(
        !ts_master.contains("320x180") && ts_master.contains("214x120"),
        "{ts_master}"
    );
    let mpd = common::text(format!("{base}manifest.mpd?{q}")).await;
    assert!(
        !mpd.contains("height=\"180\"") && mpd.contains("height=\"120\""),
        "{mpd}"
    );
    // The source's media playlist itself still plays for whoever has it.
    let source = common::client()
        .get(format!("{base}v0.m3u8?{q}"))
        .send()
        .await
        .unwrap();
    assert_eq!(source.status(), 200);
    state(serde_json::json!({"caps": []})).await;
    let master = common::text(format!("{base}master.m3u8?{q}")).await;
    assert!(master.contains("RESOLUTION=320x180"), "{master}");
    let r = common::client()
        .post(format!("{}/fleet/state", stack.edge_url))
        .json(&serde_json::json!({"caps": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "control's state needs the fleet credential"
    );
    let rung = common::text(format!("{base}v1.m3u8?{q}")).await;
    assert!(rung.contains("#EXT-X-PART:"), "{rung}");
    // Its parts start on the same frames as the source's.
    let first_v1 = rung
        .lines()
        .find(|l| l.starts_with("#EXT-X-PART:") && l.contains("INDEPENDENT=YES"))
        .unwrap();
    let name = first_v1
        .split("URI=\"v1/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let source = common::text(format!("{base}v0.m3u8?{q}")).await;
    assert!(
        source.contains(&format!("URI=\"v0/{name}")) && source.contains(",INDEPENDENT=YES"),
        "{name} not independent in the source"
    );
    let url = format!("{base}v1.m3u8?{q}");
    let out = tokio::task::block_in_place(|| {
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .args(["stream=width,height", "-of", "csv=p=0", &url])
            .output()
            .unwrap()
    });
    let sizes = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        sizes
            .lines()
            .filter(|l| !l.is_empty())
            .all(|l| l == "214,120")
            && sizes.contains("214,120"),
        "{sizes}"
    );

    // FFmpeg plays the channel from the edge.
    let url = format!("{base}master.m3u8?{q}");
    ffmpeg_plays("ffmpeg", &[], &url, &["-t", "3"]);

    common::stop_child(ffmpeg);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_published_over_srt_plays_from_the_edge() {
    let (stack, key) = live_stack().await;
    let srt = stack.origin.srt_addr.unwrap();
    let ffmpeg = publish_srt(&format!("srt://{srt}?streamid=publish:{key}"), 30);
    let q = format!("__token__={}", common::sign_acl("/live/final/*"));
    let base = format!("{}/live/final/", stack.edge_url);
    let playlist = wait_segments(&format!("{base}a0.m3u8?{q}"), 2).await;
    assert!(playlist.contains("#EXT-X-PART:"), "{playlist}");
    let master = common::text(format!("{base}master.m3u8?{q}")).await;
    for l in playlist.lines().filter(|l| !l.starts_with('#')) {
        let r = common::client()
            .get(format!("{base}{l}"))
            .send()
            .await
            .unwrap();
        eprintln!("DEBUG {l} {}", r.status());
    }
    let m = common::text(format!(
        "{}/live-mezz/final/manifest.json",
        stack.origin_url
    ))
    .await;
    eprintln!("DEBUG {m}");
    assert!(master.contains("RESOLUTION=320x180"), "{master}");
    assert!(master.contains("mp4a.40.2"), "{master}");

    let url = format!("{base}master.m3u8?{q}");
    ffmpeg_plays("ffmpeg", &[], &url, &["-t", "3"]);
    common::stop_child(ffmpeg);
    stack.shutdown().await;
}

async fn channel(stack: &Stack) -> serde_json::Value {
    common::client()
        .get(format!("{}/api/v1/admin/channels/final", stack.origin_url))
        .bearer_auth(common::ORIGIN_ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the channel until `check` holds for its status.
async fn wait_channel(stack: &Stack, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = channel(stack).await;
        if check(&c) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn live_manifest(stack: &Stack) -> cascade_packager::live::LiveManifest {
    let body = common::client()
        .get(format!(
            "{}/live-mezz/final/manifest.json",
            stack.origin_url
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    cascade_packager::live::LiveManifest::from_json(&body).unwrap()
}

/// Polls the live manifest until `check` holds.
async fn wait_manifest(
    stack: &Stack,
    what: &str,
    check: impl Fn(&cascade_packager::live::LiveManifest) -> bool,
) -> cascade_packager::live::LiveManifest {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = live_manifest(stack).await;
        if check(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {:?}",
            m.last_part()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_takes_over_and_a_reconnect_continues_the_event() {
    let (stack, key) = live_stack().await;
    let rtmp = stack.origin.rtmp_addr.unwrap();
    let primary = publish(&format!("rtmp://{rtmp}/live/{key}"), 120);
    wait_channel(&stack, "live", |c| c["ingest"]["role"] == "primary").await;
    let backup = publish(&format!("rtmp://{rtmp}/backup/{key}"), 120);
    wait_channel(&stack, "backed up", |c| c["ingest"]["standby"].is_string()).await;

    // A second primary is refused: the channel is busy.
    let out = tokio::task::block_in_place(|| {
        publish(&format!("rtmp://{rtmp}/live/{key}"), 2)
            .wait_with_output()
            .unwrap()
    });
    assert!(!out.status.success(), "a second primary must be refused");
    let metrics = common::text(format!("{}/metrics", stack.origin_url)).await;
    assert_eq!(
        common::metric_value(
            &metrics,
            "cascade_origin_live_refusals_total{reason=\"busy\"}"
        ),
        1
    );

    let q = format!("__token__={}", common::sign_acl("/live/final/*"));
    let base = format!("{}/live/final/", stack.edge_url);
    wait_segments(&format!("{base}v0.m3u8?{q}"), 2).await;
    let before = live_manifest(&stack).await;
    let event = before.event.clone();

    // A viewer plays while the primary dies.
    let url = format!("{base}master.m3u8?{q}");
    let player = Command::new("ffmpeg")
        .args(["-v", "error", "-i", &url, "-t", "10", "-f", "null", "-"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::stop_child(primary);
    wait_channel(&stack, "on the backup", |c| c["ingest"]["role"] == "backup").await;
    let last = before.last_part().unwrap().0;
    let m = wait_manifest(&stack, "past the failover", |m| {
        m.segments.iter().any(|s| s.discontinuity && s.msn > last)
            && m.segments.last().is_some_and(|s| s.parts.len() >= 2)
    })
    .await;
    assert_eq!(m.event, event, "a failover continues the event");
    let out = tokio::task::block_in_place(|| player.wait_with_output()).unwrap();
    assert!(
        out.status.success(),
        "the player failed over: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let playlist = common::text(format!("{base}v0.m3u8?{q}")).await;
    assert!(playlist.contains("#EXT-X-DISCONTINUITY"), "{playlist}");

    // The last encoder is cut for five seconds (the outage itself, not a
    // wait for readiness), then comes back within the grace: same event.
    common::stop_child(backup);
    wait_channel(&stack, "idle", |c| c["ingest"].is_null()).await;
    let cut = live_manifest(&stack).await;
    assert!(!cut.ended, "the event waits for its encoder");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let back = publish(&format!("rtmp://{rtmp}/live/{key}"), 60);
    let cut_msn = cut.last_part().unwrap().0;
    let m = wait_manifest(&stack, "back after the cut", |m| {
        m.segments
            .iter()
            .any(|s| s.discontinuity && s.msn > cut_msn && s.parts.len() >= 2)
    })
    .await;
    assert_eq!(
        m.event, event,
        "a reconnect within the grace continues the event"
    );
    // Segment numbers only grow: none is ever reused.
    assert!(m.segments.windows(2).all(|w| w[1].msn == w[0].msn + 1));
    let url = format!("{base}master.m3u8?{q}");
    ffmpeg_plays("plays after the reconnect", &[], &url, &["-t", "3"]);
    common::stop_child(back);
    stack.shutdown().await;
}

fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_start_a_channel_through_the_playback_api_and_its_countries_hold_at_the_edge() {
    // The test database maps 127.0.0.2 to IN and 127.0.0.3 to US.
    let dir = tempfile::tempdir().unwrap();
    let db = common::test_db(dir.path()).to_str().unwrap().to_string();
    let db2 = db.clone();
    let stack = Stack::start_full(
        move |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.geoip_db = db2;
            o.live_ladder = vec![];
        },
        move |e| e.geoip_db = db,
    )
    .await;
    let made = common::create_channel(
        &stack.origin_url,
        serde_json::json!({ "name": "final", "title": "The Final", "allow_countries": ["IN"] }),
    )
    .await;
    let key = made["stream_key"].as_str().unwrap().to_string();
    common::create_channel(
        &stack.origin_url,
        serde_json::json!({ "name": "vip", "premium": true }),
    )
    .await;
    let rtmp = stack.origin.rtmp_addr.unwrap();
    let ffmpeg = publish(&format!("rtmp://{rtmp}/live/{key}"), 60);
    wait_channel(&stack, "live", |c| c["state"] == "live").await;

    // The "Live now" rail: the live channel first, no keys.
    let rail: serde_json::Value = common::client()
        .get(format!("{}/api/v1/live", stack.origin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rail["channels"][0]["name"], "final", "{rail}");
    assert_eq!(rail["channels"][0]["live"], true);
    assert_eq!(rail["channels"][0]["title"], "The Final");
    assert!(!rail.to_string().contains("stream_key"));

    let viewer = common::viewer(&stack.origin_url, &stack.outbox).await;
    let start = |ip: &'static str, name: &'static str| {
        from(ip)
            .post(format!("{}/api/v1/live/{name}/playback", stack.origin_url))
            .bearer_auth(&viewer)
            .json(&serde_json::json!({ "device_id": "live-test" }))
            .send()
    };
    let r = start("127.0.0.3", "final").await.unwrap();
    assert_eq!(r.status(), 451, "a US viewer of an IN-only channel");
    let r = start("127.0.0.2", "vip").await.unwrap();
    assert_eq!(r.status(), 403, "the free plan and a premium channel");
    let r = start("127.0.0.2", "nope").await.unwrap();
    assert_eq!(r.status(), 404);
    let r = start("127.0.0.2", "final").await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    let hls = answer["hls"].as_str().unwrap().to_string();
    assert!(hls.contains("/live/final/master.m3u8?__token__="), "{hls}");
    assert_eq!(answer["resume_position"], 0.0);

    // The signed URL plays from India, not from the US, at the edge.
    let url = hls.replace(&stack.origin_url, &stack.edge_url);
    let url = format!("{}{}", stack.edge_url, &url[url.find("/live/").unwrap()..]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = from("127.0.0.2").get(&url).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never playable: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = from("127.0.0.3").get(&url).send().await.unwrap();
    assert_eq!(r.status(), 451);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["country"], "US");

    common::stop_child(ffmpeg);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dvr_start_over_and_the_recorded_event_play_to_the_end() {
    let stack = Stack::start_full(
        |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![cascade_origin::config::Rung {
                height: 120,
                kbps: 150,
            }];
            o.live_preset = "ultrafast".into();
            // Parts of all but the last two segments leave RAM: older
            // segments come from the media store.
            o.live_ram_segments = 2;
            o.live_reconnect_grace_secs = 1;
        },
        |_| {},
    )
    .await;
    let made: serde_json::Value = common::create_channel(
        &stack.origin_url,
        serde_json::json!({ "name": "final", "title": "The Final" }),
    )
    .await;
    let key = made["stream_key"].as_str().unwrap().to_string();
    let rtmp = stack.origin.rtmp_addr.unwrap();
    let ffmpeg = publish(&format!("rtmp://{rtmp}/live/{key}"), 16);
    let q = format!("__token__={}", common::sign_acl("/live/final/*"));
    let base = format!("{}/live/final/", stack.edge_url);
    let playlist = wait_segments(&format!("{base}v0.m3u8?{q}"), 5).await;

    // Start over: the first segment of the window, out of RAM by now,
    // comes whole from the store; FFmpeg plays from it.
    let first: u64 = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .unwrap()
        .parse()
        .unwrap();
    let seg = common::client()
        .get(format!("{base}v0/{first}.m4s?{q}"))
        .send()
        .await
        .unwrap();
    assert_eq!(seg.status(), 200);
    assert_eq!(&seg.bytes().await.unwrap()[4..8], b"moof");
    let url = format!("{base}v0.m3u8?{q}");
    ffmpeg_plays(
        "start over",
        &["-live_start_index", "0"],
        &url,
        &["-t", "4"],
    );

    // The encoder finishes; after the grace the event ends and becomes a title.
    tokio::task::block_in_place(|| {
        let mut f = ffmpeg;
        let _ = f.wait();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let asset = loop {
        let assets: serde_json::Value = common::client()
            .get(format!("{}/api/v1/assets", stack.origin_url))
            .bearer_auth(common::ORIGIN_ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = assets["assets"].as_array().unwrap().iter().find(|a| {
            a["title"]
                .as_str()
                .unwrap_or("")
                .starts_with("The Final (recorded")
                && a["status"] == "ready"
        });
        if let Some(a) = found {
            break a["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "never recorded: {assets}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let ended = common::text(format!("{base}v0.m3u8?{q}")).await;
    assert!(ended.contains("#EXT-X-ENDLIST"), "{ended}");

    // The recording plays to its end, every rung, from the same mezzanine.
    let vod = format!(
        "{}/vod/{asset}/master.m3u8?__token__={}",
        stack.edge_url,
        common::sign_for(&asset)
    );
    let master = common::text(&vod).await;
    assert!(master.contains("RESOLUTION=320x180"), "{master}");
    assert!(master.contains("RESOLUTION=214x120"), "{master}");
    ffmpeg_plays(
        "the recording",
        &[],
        &vod,
        &["-map", "0:v:0", "-map", "0:a:0"],
    );
    let probe = tokio::task::block_in_place(|| {
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
                &vod,
            ])
            .output()
            .unwrap()
    });
    let secs: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    assert!(secs >= 8.0, "the recording lasts {secs} s");
    stack.shutdown().await;
}
