//! Forensic A/B watermarking end to end: a 54-second title ingested with
//! `watermark`, two viewers' playback sessions through the edge, each
//! session's stream captured (init and every segment of the top rung,
//! as a pirate's recorder would), re-encoded by FFmpeg at a quarter of the
//! rung's bit rate and scaled down one rung, and `cascade watermark detect`
//! naming the mark, the session and the account; an unmarked copy is
//! reported as such.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{client, make_clip, viewer_as, Stack, ORIGIN_ADMIN};
use serde_json::{json, Value};

/// The title's segments: 27 of 2 s, one more than a payload (26).
const SECS: u32 = 54;

/// The session's mark, from its token's signed `data` (`wm=` four hex digits).
fn mark_of(token: &str) -> u16 {
    let at = token
        .find("wm%3d")
        .map(|i| i + 5)
        .or_else(|| token.find("wm=").map(|i| i + 3))
        .unwrap_or_else(|| panic!("no mark in {token}"));
    u16::from_str_radix(&token[at..at + 4], 16).unwrap()
}

async fn get(url: &str) -> (u16, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// A viewer's session: its id, its mark, and its token's query.
struct Session {
    id: String,
    user: String,
    mark: u16,
    query: String,
}

async fn start(stack: &Stack, asset: &str, email: &str) -> Session {
    let access = viewer_as(&stack.origin_url, &stack.outbox, email).await;
    let url = format!("{}/api/v1/playback/{asset}", stack.origin_url);
    let r = common::post_json_ok(&url, &access, &json!({ "device_id": "tv" })).await;
    let token = r["token"].as_str().unwrap_or_else(|| panic!("{r}"));
    Session {
        id: r["stream"]["id"].as_str().unwrap().to_string(),
        user: common::user_id(stack, &access).await,
        mark: mark_of(token),
        query: format!("{}={token}", r["token_name"].as_str().unwrap()),
    }
}

/// Every segment of `v0` as `s` is served it, in order.
async fn capture(stack: &Stack, asset: &str, s: &Session) -> (Vec<u8>, Vec<Vec<u8>>) {
    let base = format!("{}/vod/{asset}", stack.edge_url);
    let (status, playlist) = get(&format!("{base}/v0.m3u8?{}", s.query)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&playlist));
    let segments = String::from_utf8(playlist)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(".m4s"))
        .count();
    assert_eq!(segments, (SECS / 2) as usize);
    let (status, init) = get(&format!("{base}/v0/init.mp4?{}", s.query)).await;
    assert_eq!(status, 200);
    let mut out = Vec::new();
    for n in 1..=segments {
        let (status, body) = get(&format!("{base}/v0/{n}.m4s?{}", s.query)).await;
        assert_eq!(
            status,
            200,
            "segment {n}: {}",
            String::from_utf8_lossy(&body)
        );
        out.push(body);
    }
    (init, out)
}

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y"])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg {args:?}");
}

/// A pirate's copy: re-encoded at a quarter of the top rung's 300 kbit/s
/// and scaled down to the next rung (120 lines).
fn pirate(src: &Path, out: &Path) {
    ffmpeg(&[
        "-i",
        src.to_str().unwrap(),
        "-vf",
        "scale=-2:120",
        "-c:v",
        "libx264",
        "-b:v",
        "75k",
        "-an",
        out.to_str().unwrap(),
    ]);
}

fn detect(stack: &Stack, file: &Path) -> Value {
    let token = stack.dir.path().join("admin-token");
    std::fs::write(&token, ORIGIN_ADMIN).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args([
            "watermark",
            "detect",
            "--json",
            "--origin",
            &stack.origin_url,
        ])
        .arg("--admin-token-file")
        .arg(&token)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_session_is_traced_from_a_re_encoded_copy() {
    let stack = Stack::start().await;
    let clip = make_clip(stack.dir.path(), SECS);
    let asset = common::ingest_with(
        &stack,
        &clip,
        &[("title", "Marked final"), ("watermark", "true")],
    )
    .await;
    let manifest: Value = client()
        .get(format!("{}/mezz/{asset}/manifest.json", stack.origin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for t in manifest["tracks"].as_array().unwrap() {
        let video = t["kind"] == "video";
        assert_eq!(
            t["marked"].is_object(),
            video,
            "every video rung has its B copy: {t}"
        );
    }

    let a = start(&stack, &asset, "alice@example.test").await;
    let b = start(&stack, &asset, "bob@example.test").await;
    assert_ne!(a.mark, b.mark, "sessions get different marks");
    let (init_a, segs_a) = capture(&stack, &asset, &a).await;
    let (init_b, segs_b) = capture(&stack, &asset, &b).await;
    assert_eq!(init_a, init_b, "one init segment for both copies");
    // Each segment is copy A or B by the session's mark: equal where the
    // two marks' bits agree (one cached copy for everyone), different
    // where they do not; the two streams differ.
    let mut differing = 0;
    for (n, (x, y)) in (1u64..).zip(segs_a.iter().zip(&segs_b)) {
        let same =
            cascade_watermark::variant_for(a.mark, n) == cascade_watermark::variant_for(b.mark, n);
        assert_eq!(x == y, same, "segment {n}");
        differing += usize::from(!same);
    }
    assert!(differing > 0, "the two sessions' streams differ");

    // A token that carries no mark (a partner's, signed by hand) gets no
    // segment of a watermarked title; its playlists still play.
    let q = format!("__token__={}", common::sign_for(&asset));
    let (status, body) = get(&format!("{}/vod/{asset}/v0/3.m4s?{q}", stack.edge_url)).await;
    assert_eq!(status, 403);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"],
        "watermark"
    );
    let (status, _) = get(&format!("{}/vod/{asset}/v0.m3u8?{q}", stack.edge_url)).await;
    assert_eq!(status, 200);
    // The TS variants take the same copies.
    let (status, ts_a) = get(&format!(
        "{}/vod/{asset}/ts/v0.a0/1.ts?{}",
        stack.edge_url, a.query
    ))
    .await;
    assert_eq!(status, 200);
    let (_, ts_b) = get(&format!(
        "{}/vod/{asset}/ts/v0.a0/1.ts?{}",
        stack.edge_url, b.query
    ))
    .await;
    let same =
        cascade_watermark::variant_for(a.mark, 1) == cascade_watermark::variant_for(b.mark, 1);
    assert_eq!(ts_a == ts_b, same, "TS segment 1");

    let dir = stack.dir.path();
    for (s, init, segs) in [(&a, &init_a, &segs_a), (&b, &init_b, &segs_b)] {
        let captured = dir.join(format!("captured-{}.mp4", s.mark));
        let mut bytes = init.clone();
        for seg in segs {
            bytes.extend_from_slice(seg);
        }
        std::fs::write(&captured, bytes).unwrap();
        let pirated = dir.join(format!("pirated-{}.mp4", s.mark));
        pirate(&captured, &pirated);
        let found = detect(&stack, &pirated);
        eprintln!("session {}: {found}", s.id);
        assert_eq!(found["verdict"], "marked", "{found}");
        assert_eq!(found["mark"], s.mark, "{found}");
        assert_eq!(found["height"], 120);
        let holder = &found["holders"][0];
        assert_eq!(holder["stream"], s.id.as_str(), "{found}");
        assert_eq!(holder["user"], s.user.as_str(), "{found}");
        assert_eq!(holder["asset"], asset.as_str(), "{found}");
    }

    // A copy that starts later (segments 2 to 27: one payload's worth) is
    // lined up by itself.
    let late = dir.join("captured-late.mp4");
    let mut bytes = init_a.clone();
    for seg in &segs_a[1..] {
        bytes.extend_from_slice(seg);
    }
    std::fs::write(&late, bytes).unwrap();
    let pirated = dir.join("pirated-late.mp4");
    pirate(&late, &pirated);
    let found = detect(&stack, &pirated);
    assert_eq!(found["verdict"], "marked", "{found}");
    assert_eq!(found["mark"], a.mark, "{found}");
    assert_eq!(found["payload_offset"], 1, "{found}");

    // The unmarked source through the same re-encode: no mark.
    let plain = dir.join("pirated-plain.mp4");
    pirate(&clip, &plain);
    let found = detect(&stack, &plain);
    assert_eq!(found["verdict"], "unmarked", "{found}");

    // The lookup is an admin call.
    let r = client()
        .get(format!(
            "{}/api/v1/admin/watermarks/{}",
            stack.origin_url, a.mark
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!(
            "{}/api/v1/admin/watermarks/70000",
            stack.origin_url
        ))
        .bearer_auth(ORIGIN_ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    stack.shutdown().await;
}
