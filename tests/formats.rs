//! Packaging for every device, checked from outside: a title with two audio
//! languages and English subtitles goes through the whole stack, and
//! `tests/packaging_check.py` reads what the edge serves with PyPI's `m3u8`
//! and `mpegdash` parsers and FFmpeg's `ffprobe` and `ffmpeg`: fMP4 and TS
//! HLS, I-frame playlists, subtitle segments, the DASH MPD and its trick
//! mode. Then filters, device profiles, clips and the playback API's choice
//! of profile.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cascade_packager::Profile;
use common::*;
use serde_json::Value;

/// 8 s of 320x180 video with an English and a Hindi audio stream, made by
/// the FFmpeg CLI (an independent encoder).
fn two_language_clip(dir: &Path) -> PathBuf {
    let out = dir.join("two-languages.mkv");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=8"])
        .args(["-f", "lavfi", "-i", "sine=f=440:sample_rate=48000:d=8"])
        .args(["-f", "lavfi", "-i", "sine=f=660:sample_rate=44100:d=8"])
        .args(["-map", "0", "-map", "1", "-map", "2"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-metadata:s:a:0", "language=eng"])
        .args(["-metadata:s:a:1", "language=hin"])
        .arg(&out)
        .status()
        .expect("the ffmpeg CLI is installed (make test installs it)");
    assert!(status.success(), "ffmpeg could not make the test clip");
    out
}

/// Six cues over the 8 s, one spanning a segment boundary; CRLF endings
/// and a NOTE, as editors write them.
const SUBTITLES: &str = "WEBVTT\r\n\r\nNOTE made for the test\r\n\r\n1\r\n00:00.500 --> 00:01.500\r\nOne\r\n\r\n00:01.800 --> 00:02.600 align:start\r\nTwo, across a boundary\r\n\r\n00:03.000 --> 00:03.900\r\nThree\r\n\r\n00:04.200 --> 00:05.000\r\nFour\r\n\r\n00:05.500 --> 00:06.500\r\n<i>Five</i>\r\n\r\n00:07.000 --> 00:07.800\r\nSix\r\n";

async fn sidecar(origin: &str, kind: &str, lang: &str, body: &'static str) -> (u16, Value) {
    let r = client()
        .post(format!("{origin}/api/v1/uploads/sidecars"))
        .query(&[("kind", kind), ("language", lang)])
        .bearer_auth(ORIGIN_ADMIN)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_of_a_two_language_title_with_subtitles() {
    // A `mobile` profile capped below the top rung of the test ladder (180p).
    let stack = Stack::start_with(|e| {
        e.profiles.insert(
            "mobile".into(),
            Profile {
                max_height: Some(150),
                ..Profile::default()
            },
        );
    })
    .await;
    let origin = stack.origin_url.clone();

    // Bad subtitle files are refused at once, with the line at fault.
    let (status, answer) = sidecar(
        &origin,
        "subtitles",
        "en",
        "WEBVTT\n\n00:02.000 --> 00:01.000\nbackwards\n",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("line 3"),
        "{answer}"
    );
    let (status, answer) = sidecar(&origin, "subtitles", "not a language!", SUBTITLES).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = sidecar(&origin, "subtitles", "en", SUBTITLES).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["detail"]["cues"], 6, "{answer}");
    let sub_id = answer["sidecar"].as_str().unwrap().to_string();

    // An unknown sidecar id or codec is refused before anything is queued.
    let clip = two_language_clip(stack.dir.path());
    let body = tokio::fs::read(&clip).await.unwrap();
    for (q, code) in [("sidecars", "bad_sidecars"), ("codecs", "bad_codecs")] {
        let r = client()
            .post(format!("{origin}/api/v1/uploads"))
            .bearer_auth(ORIGIN_ADMIN)
            .query(&[(q, "nope")])
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], code, "{v}");
    }

    let r = client()
        .post(format!("{origin}/api/v1/uploads"))
        .bearer_auth(ORIGIN_ADMIN)
        .query(&[("title", "Two languages"), ("sidecars", sub_id.as_str())])
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["source"]["audio_streams"], 2, "{answer}");
    let job = answer["job"].as_str().unwrap();
    let done = wait_job(&origin, job, Duration::from_secs(180)).await;
    assert_eq!(done["state"], "done", "{done}");
    let asset = answer["asset"].as_str().unwrap().to_string();
    // A sidecar belongs to the upload that named it: a second one is refused.
    let r = client()
        .post(format!("{origin}/api/v1/uploads"))
        .bearer_auth(ORIGIN_ADMIN)
        .query(&[("sidecars", sub_id.as_str())])
        .body(tokio::fs::read(&clip).await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Everything an outside parser and FFmpeg can check.
    let base = format!("{}/vod/{asset}/", stack.edge_url);
    let query = format!("__token__={}", sign_for(&asset));
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/packaging_check.py"))
        .args([
            &base,
            &query,
            "--audio",
            "en,hi",
            "--subtitles",
            "en",
            "--cues",
            "6",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("all checks passed"));

    // Real players in headless Chromium: hls.js on TS and on fMP4, dash.js;
    // each switches to Hindi audio and turns English subtitles on.
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        Path::new(&format!("{root}/web/node_modules/playwright-core")).exists(),
        "web/node_modules is missing: run `make web` (make test does)"
    );
    let out = Command::new("node")
        .arg(format!("{root}/web/tests/formats.mjs"))
        .args([&stack.edge_url, &asset, &query])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the players failed");
    for name in ["hls.js TS", "hls.js fMP4", "dash.js"] {
        assert!(stdout.contains(&format!("{name}: played")), "{name}");
    }

    // Profiles and filters never list what they exclude; bad filters are 400.
    let get = |q: &str| {
        let url = format!("{base}master.m3u8?{q}&{query}");
        async move {
            let r = client().get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let cache = r
                .headers()
                .get("cache-status")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (status, r.text().await.unwrap(), cache)
        }
    };
    let (status, mobile, _) = get("profile=mobile").await;
    assert_eq!(status, 200);
    assert!(
        !mobile.contains("RESOLUTION=320x180") && mobile.contains("x120"),
        "{mobile}"
    );
    // The same filter spelled out is the same cached manifest.
    let (_, again, cache) = get("max_height=150").await;
    assert_eq!(again, mobile);
    assert!(cache.contains("hit"), "{cache}");
    // Numbers a caller picks snap to what the title has: another height
    // over the same renditions, or bitrate caps above them all, are the
    // same cache entry, so they cannot fill the cache with keys.
    let (_, other, cache) = get("max_height=151").await;
    assert_eq!(other, mobile);
    assert!(cache.contains("hit"), "{cache}");
    let (_, _, first) = get("max_bitrate=9000001").await;
    assert!(!first.is_empty());
    let (_, _, cache) = get("max_bitrate=9000002").await;
    assert!(cache.contains("hit"), "{cache}");
    let (_, hindi, _) = get("audio=hi&format=ts").await;
    let audio: Vec<&str> = hindi.lines().filter(|l| l.contains("TYPE=AUDIO")).collect();
    assert!(
        audio.len() == 1 && audio[0].contains("LANGUAGE=\"hi\""),
        "{hindi}"
    );
    assert!(hindi.contains("ts/v0.a1.m3u8"), "{hindi}");
    for bad in [
        "max_height=tall",
        "profile=fridge",
        "codecs=vp9",
        "start=5&end=1",
    ] {
        let (status, body, _) = get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("bad_filter"), "{body}");
    }
    let (status, _, _) = get("max_height=10").await;
    assert_eq!(status, 404);

    // A clip is whole segments, and plays to its end.
    let clip_url = format!("{base}v0.m3u8?start=2.5&end=5&{query}");
    let playlist = text(&clip_url).await;
    let segs: Vec<&str> = playlist.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(segs.len(), 2, "{playlist}");
    assert!(
        segs[0].starts_with("v0/2.m4s") && segs[1].starts_with("v0/3.m4s"),
        "{playlist}"
    );
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i", &clip_url, "-f", "null", "-"])
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg plays the clip");

    // The playback API picks the profile from the declared device.
    let viewer = viewer(&origin, &stack.outbox).await;
    let r: Value = client()
        .post(format!("{origin}/api/v1/playback/{asset}"))
        .bearer_auth(&viewer)
        .json(&serde_json::json!({ "device_type": "phone" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["profile"], "mobile", "{r}");
    let hls = r["hls"].as_str().unwrap();
    assert!(hls.contains("profile=mobile"), "{hls}");
    // The origin names its configured public edge; this stack's is elsewhere.
    let path = &hls[hls.find("/vod/").unwrap()..];
    let master = text(format!("{}{path}", stack.edge_url)).await;
    assert!(
        master.contains("#EXTM3U") && !master.contains("RESOLUTION=320x180"),
        "{master}"
    );
    let r = client()
        .post(format!("{origin}/api/v1/playback/{asset}"))
        .bearer_auth(&viewer)
        .json(&serde_json::json!({ "device_type": "toaster" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    stack.shutdown().await;
}
