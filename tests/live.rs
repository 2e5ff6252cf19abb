//! `cascade live`: channels made, listed, rotated and stopped through the
//! origin's admin API, as an operator runs it.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

fn live(origin: &str, admin: &str, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_cascade");
    tokio::task::block_in_place(|| {
        Command::new(bin)
            .arg("live")
            .args(args)
            .args(["--origin", origin])
            .env("CASCADE_ORIGIN_ADMIN_TOKEN", admin)
            .output()
            .unwrap()
    })
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_command_makes_rotates_and_stops_channels() {
    let dir = tempfile::tempdir().unwrap();
    let origin = cascade_origin::start(&common::origin_config(dir.path().to_str().unwrap()))
        .await
        .unwrap();
    let url = format!("http://{}", origin.addr);
    let admin = common::ORIGIN_ADMIN;

    // Create prints, one per line: RTMP and SRT publish URLs (with the
    // key), then the HLS and DASH playback URLs.
    let out = live(
        &url,
        admin,
        &[
            "create",
            "final",
            "--premium",
            "--allow-countries",
            "IN,NP",
            "--dvr-minutes",
            "30",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("rtmp://127.0.0.1:1935/live/final."),
        "{text}"
    );
    let key = lines[0].rsplit('/').next().unwrap();
    assert_eq!(
        lines[1],
        format!("srt://127.0.0.1:8890?streamid=publish:{key}")
    );
    assert!(lines[2].starts_with("http://") && lines[2].ends_with("/master.m3u8"));
    assert!(lines[3].ends_with("/manifest.mpd"));
    assert!(stderr(&out).contains("shown only now"));

    // List and status show the channel, never its key.
    let out = live(&url, admin, &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("final "), "{}", stdout(&out));
    let out = live(&url, admin, &["status", "final"]);
    let status = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for want in [
        "state            idle",
        "premium          true",
        "allow_countries  IN,NP",
        "dvr_minutes      30",
    ] {
        assert!(status.contains(want), "{want}: {status}");
    }
    let secret = key.split_once('.').unwrap().1;
    assert!(!status.contains(secret));

    // A new key, printed as the two publish URLs.
    let out = live(&url, admin, &["rotate-key", "final"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rotated = stdout(&out);
    assert_eq!(rotated.lines().count(), 2, "{rotated}");
    assert!(!rotated.contains(secret));
    let status = stdout(&live(&url, admin, &["status", "final"]));
    assert!(status.contains("key_version      2"), "{status}");

    // Stop.
    let out = live(&url, admin, &["stop", "final"]);
    assert_eq!(stdout(&out).trim(), "final stopped");

    // Bad input and a wrong credential: the origin's reason, a failure.
    for (args, want) in [
        (vec!["create", "final"], "name_taken"),
        (vec!["create", "Bad_Name"], "bad_name"),
        (vec!["status", "nope"], "404"),
    ] {
        let out = live(&url, admin, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = live(&url, "not-the-credential", &["list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    let out = live(&url, admin, &["create", "x", "--dvr-minutes", "5000"]);
    assert!(
        !out.status.success(),
        "clap refuses an out-of-range DVR window"
    );

    origin.shutdown().await;
}

/// Publishes a test pattern with the FFmpeg CLI to `url` for `secs`
/// seconds in real time, with `video` as the video encoder, as FLV (RTMP).
fn publish(url: &str, secs: u32, video: &str) -> std::process::Child {
    publish_as(url, secs, video, "flv")
}

/// The same as an MPEG transport stream (SRT, caller mode).
fn publish_srt(url: &str, secs: u32, video: &str) -> std::process::Child {
    publish_as(url, secs, video, "mpegts")
}

fn publish_as(url: &str, secs: u32, video: &str, format: &str) -> std::process::Child {
    common::ffmpeg_publish(url, format, "320x180", secs, video)
}

async fn channel_status(origin: &str, name: &str) -> serde_json::Value {
    common::client()
        .get(format!("{origin}/api/v1/admin/channels/{name}"))
        .bearer_auth(common::ORIGIN_ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An origin with the RTMP and SRT ingest on ephemeral ports, and a
/// channel named `name`: (origin, its URL, the channel's stream key).
async fn origin_with_channel(
    dir: &tempfile::TempDir,
    name: &str,
) -> (cascade_origin::Origin, String, String) {
    let mut cfg = common::origin_config(dir.path().to_str().unwrap());
    cfg.rtmp_listen = "127.0.0.1:0".into();
    cfg.srt_listen = "127.0.0.1:0".into();
    let origin = cascade_origin::start(&cfg).await.unwrap();
    let url = format!("http://{}", origin.addr);
    let made: serde_json::Value =
        common::create_channel(&url, serde_json::json!({ "name": name })).await;
    let key = made["stream_key"].as_str().unwrap().to_string();
    (origin, url, key)
}

/// Polls the channel's status until an encoder has sent keyframes and at
/// least ten frames; answers that status.
async fn wait_live(url: &str, name: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = channel_status(url, name).await;
        if s["state"] == "live"
            && s["ingest"]["keyframes"].as_u64().unwrap_or(0) >= 1
            && s["ingest"]["video_frames"].as_u64().unwrap_or(0) >= 10
        {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "never live: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Polls the channel's status until no encoder publishes.
async fn wait_idle(url: &str, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = channel_status(url, name).await;
        if s["state"] == "idle" && s["ingest"].is_null() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never idle again: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn refusals(origin: &str, reason: &str) -> u64 {
    let m = common::text(format!("{origin}/metrics")).await;
    common::metric_value(
        &m,
        &format!("cascade_origin_live_refusals_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_over_rtmp_and_bad_publishers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, url, key) = origin_with_channel(&dir, "pitch").await;
    let rtmp = origin.rtmp_addr.unwrap();
    let good = format!("rtmp://{rtmp}/live/{key}");

    // Garbage first: the connection is dropped, the listener carries on.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(rtmp).await.unwrap();
        let junk: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = s.write_all(&junk).await;
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(15), s.read_to_end(&mut sink))
                .await;
        assert!(closed.is_ok(), "the garbage connection was closed");
    }
    assert!(refusals(&url, "protocol").await >= 1);

    // A wrong key: FFmpeg fails, the refusal is counted.
    let wrong = format!("rtmp://{rtmp}/live/pitch.not-the-secret");
    let out =
        tokio::task::block_in_place(|| publish(&wrong, 2, "libx264").wait_with_output()).unwrap();
    assert!(!out.status.success(), "a wrong key must be refused");
    assert_eq!(refusals(&url, "bad_key").await, 1);

    // An unsupported codec (Sorenson H.263): refused with its reason.
    let out = tokio::task::block_in_place(|| publish(&good, 2, "flv").wait_with_output()).unwrap();
    assert!(!out.status.success(), "H.263 must be refused");
    assert!(refusals(&url, "codec").await >= 1);

    // The real thing: while FFmpeg publishes, the channel is live and its
    // ingest health counts frames and keyframes.
    let mut ffmpeg = publish(&good, 4, "libx264");
    let status = wait_live(&url, "pitch").await;
    assert_eq!(status["ingest"]["video_config"], true, "{status}");
    assert!(
        status["ingest"]["audio_frames"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(status["ingest"]["encoder"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    // The operator's view shows the same health.
    let shown = stdout(&live(&url, common::ORIGIN_ADMIN, &["status", "pitch"]));
    for want in [
        "state            live",
        "encoder          127.0.0.1:",
        "keyframes",
        "fps",
    ] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    let out = tokio::task::block_in_place(|| ffmpeg.wait()).unwrap();
    assert!(out.success(), "the publish ran to its end");
    // Once the encoder stops, the channel is idle again.
    wait_idle(&url, "pitch").await;
    drop(ffmpeg.stderr.take());
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_over_srt_and_bad_callers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, url, key) = origin_with_channel(&dir, "stadium").await;
    let srt = origin.srt_addr.unwrap();

    // A wrong key: the caller is rejected and FFmpeg fails.
    let wrong = format!("srt://{srt}?streamid=publish:stadium.not-the-secret");
    let out = tokio::task::block_in_place(|| publish_srt(&wrong, 2, "libx264").wait_with_output())
        .unwrap();
    assert!(!out.status.success(), "a wrong key must be refused");
    assert_eq!(refusals(&url, "bad_key").await, 1);

    // MPEG-2 video: accepted by key, then refused by codec.
    let good = format!("srt://{srt}?streamid=publish:{key}");
    let _ = tokio::task::block_in_place(|| publish_srt(&good, 2, "mpeg2video").wait_with_output());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while refusals(&url, "codec").await == 0 {
        assert!(std::time::Instant::now() < deadline, "MPEG-2 never refused");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // H.264 and AAC: live, with frames and keyframes counted.
    let mut ffmpeg = publish_srt(&good, 4, "libx264");
    let status = wait_live(&url, "stadium").await;
    assert_eq!(status["ingest"]["video_config"], true, "{status}");
    assert!(
        status["ingest"]["audio_frames"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(
        status["ingest"]["bytes"].as_u64().unwrap() > 10_000,
        "{status}"
    );
    let _ = tokio::task::block_in_place(|| ffmpeg.wait());
    wait_idle(&url, "stadium").await;
    origin.shutdown().await;
}

async fn get(url: &str) -> reqwest::Response {
    common::client().get(url).send().await.unwrap()
}

/// Polls the live manifest until it has a complete segment.
async fn wait_manifest(url: &str) -> cascade_packager::live::LiveManifest {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = get(url).await;
        if r.status() == 200 {
            let m =
                cascade_packager::live::LiveManifest::from_json(&r.bytes().await.unwrap()).unwrap();
            if m.segments.iter().any(|s| s.complete) {
                return m;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no live manifest");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_makes_parts_and_holds_requests_until_they_exist() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, url, key) = origin_with_channel(&dir, "pitch").await;
    let rtmp = origin.rtmp_addr.unwrap();
    let ffmpeg = publish(&format!("rtmp://{rtmp}/live/{key}"), 12, "libx264");
    let base = format!("{url}/live-mezz/pitch");
    let m = wait_manifest(&format!("{base}/manifest.json")).await;
    assert_eq!(m.channel, "pitch");
    assert_eq!(m.tracks.len(), 2, "{m:?}");
    assert_eq!((m.tracks[0].width, m.tracks[0].height), (320, 180));
    let done = m.segments.iter().find(|s| s.complete).unwrap();
    assert!(done.parts.len() >= 3, "{done:?}");
    assert!(done.parts[0].independent);

    // The next part does not exist yet: the request is held until it does.
    let (msn, parts) = m.last_part().unwrap();
    let blocked = get(&format!(
        "{base}/manifest.json?_HLS_msn={msn}&_HLS_part={parts}"
    ))
    .await;
    assert_eq!(blocked.status(), 200);
    assert!(blocked.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age=12"));
    let after =
        cascade_packager::live::LiveManifest::from_json(&blocked.bytes().await.unwrap()).unwrap();
    assert!(after.satisfies(msn, Some(parts)), "{:?}", after.last_part());
    assert!(after.last_part() > m.last_part());

    // A part asked for before it exists (a preload hint) comes when made.
    let (msn, parts) = after.last_part().unwrap();
    let part = get(&format!("{base}/v0/{msn}.{parts}.m4s")).await;
    assert_eq!(part.status(), 200);
    assert!(part.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let part = part.bytes().await.unwrap();
    assert_eq!(&part[4..8], b"moof");
    let audio = get(&format!("{base}/a0/{msn}.{parts}.m4s")).await;
    assert_eq!(audio.status(), 200);

    // Too far ahead is a bad request; an unknown file or channel is not found.
    assert_eq!(
        get(&format!("{base}/manifest.json?_HLS_msn={}", msn + 5))
            .await
            .status(),
        400
    );
    assert_eq!(
        get(&format!("{base}/manifest.json?_HLS_msn=x"))
            .await
            .status(),
        400
    );
    assert_eq!(get(&format!("{base}/v0/nope.m4s")).await.status(), 404);
    assert_eq!(
        get(&format!("{url}/live-mezz/other/manifest.json"))
            .await
            .status(),
        404
    );

    // The init segment reads back; a whole segment is its parts in order,
    // streamed while it grows.
    let init = get(&format!("{base}/v0/init-0.mp4"))
        .await
        .bytes()
        .await
        .unwrap();
    let cfg = cascade_packager::fmp4::parse_init(&init).unwrap();
    assert_eq!(cfg.timescale, 90_000);
    let seg = get(&format!("{base}/v0/{msn}.m4s")).await;
    assert_eq!(seg.status(), 200);
    let seg = seg.bytes().await.unwrap();
    let fin = cascade_packager::live::LiveManifest::from_json(
        &get(&format!("{base}/manifest.json?_HLS_msn={}", msn + 1))
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let s = fin.segment(msn).unwrap();
    assert!(s.complete);
    let mut whole = Vec::new();
    for p in 0..s.parts.len() {
        whole.extend_from_slice(
            &get(&format!("{base}/v0/{msn}.{p}.m4s"))
                .await
                .bytes()
                .await
                .unwrap(),
        );
    }
    assert_eq!(seg.len(), whole.len());
    assert!(seg == whole);
    let samples = cascade_packager::fmp4::parse_fragment(&cfg, &part).unwrap();
    assert!(!samples.is_empty());

    common::stop_child(ffmpeg);
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srt_passphrase_is_required_when_the_channel_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::origin_config(dir.path().to_str().unwrap());
    cfg.srt_listen = "127.0.0.1:0".into();
    let origin = cascade_origin::start(&cfg).await.unwrap();
    let url = format!("http://{}", origin.addr);
    let create = |body: serde_json::Value| {
        common::client()
            .post(format!("{url}/api/v1/admin/channels"))
            .bearer_auth(common::ORIGIN_ADMIN)
            .json(&body)
            .send()
    };
    // Too short for SRT (10 to 79 characters): refused with its reason.
    let r = create(serde_json::json!({ "name": "vault", "srt_passphrase": "short" }))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let made: serde_json::Value = create(serde_json::json!({
        "name": "vault", "srt_passphrase": "correct-horse-42"
    }))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let srt_url = made["publish"]["srt"].as_str().unwrap().to_string();
    assert!(
        srt_url.ends_with("&passphrase=correct-horse-42&pbkeylen=16"),
        "{srt_url}"
    );
    assert_eq!(made["channel"]["srt_encrypted"], true);
    let key = made["stream_key"].as_str().unwrap();
    let srt = origin.srt_addr.unwrap();

    // In the clear, or with another passphrase: refused, nothing published.
    for bad in [
        format!("srt://{srt}?streamid=publish:{key}"),
        format!("srt://{srt}?streamid=publish:{key}&passphrase=not-the-right-one&pbkeylen=16"),
        // Encrypted without saying the key length.
        format!("srt://{srt}?streamid=publish:{key}&passphrase=correct-horse-42"),
    ] {
        let before = refusals(&url, "protocol").await;
        let out =
            tokio::task::block_in_place(|| publish_srt(&bad, 2, "libx264").wait_with_output())
                .unwrap();
        assert!(!out.status.success(), "{bad} must be refused");
        assert!(
            refusals(&url, "protocol").await > before,
            "{bad} was not counted"
        );
        assert!(channel_status(&url, "vault").await["ingest"].is_null());
    }

    // A channel without a passphrase refuses an encrypting caller (and the
    // listener lives on: srt-protocol would panic on that handshake).
    let open: serde_json::Value = create(serde_json::json!({ "name": "open" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let open_key = open["stream_key"].as_str().unwrap();
    // Without `pbkeylen` the caller does not say it encrypts: srt-protocol
    // panics in the handshake and the listener starts again.
    for encrypting in [
        format!("srt://{srt}?streamid=publish:{open_key}&passphrase=correct-horse-42&pbkeylen=16"),
        format!("srt://{srt}?streamid=publish:{open_key}&passphrase=correct-horse-42"),
    ] {
        let out = tokio::task::block_in_place(|| {
            publish_srt(&encrypting, 2, "libx264").wait_with_output()
        })
        .unwrap();
        assert!(
            !out.status.success(),
            "{encrypting}: encrypting, to a clear channel"
        );
    }

    // With it: live.
    let good = srt_url.replace("127.0.0.1:8890", &srt.to_string());
    let mut ffmpeg = publish_srt(&good, 4, "libx264");
    let status = wait_live(&url, "vault").await;
    assert_eq!(status["ingest"]["video_config"], true, "{status}");
    let _ = tokio::task::block_in_place(|| ffmpeg.wait());
    origin.shutdown().await;
}
