//! A protected live channel: FFmpeg publishes over RTMP, the edge serves
//! LL-HLS in `cbcs` with a key per 10-second key period, each period's
//! init segment naming its key, `EXT-X-KEY` switching where a period
//! starts and the next key announced ahead; licenses carry the next key;
//! an independent decryptor (pycryptodome) opens parts of both periods with
//! the licensed keys and FFmpeg decodes them.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{client, viewer, Stack};
use serde_json::{json, Value};

const KEK_HEX: &str = "1f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

async fn get(url: &str) -> (u16, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn get_ok(url: &str) -> Vec<u8> {
    let (s, b) = get(url).await;
    assert_eq!(s, 200, "{url}: {}", String::from_utf8_lossy(&b));
    b
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).unwrap())
        .collect()
}

/// One key period as the media playlist lists it: its KID, its init
/// segment's URI and its complete segments' numbers.
#[derive(Debug)]
struct Period {
    kid: String,
    init: String,
    segments: Vec<u64>,
}

fn periods(playlist: &str) -> Vec<Period> {
    let mut out: Vec<Period> = Vec::new();
    for line in playlist.lines() {
        if let Some(rest) = line.strip_prefix("#EXT-X-KEY:") {
            if rest.contains("org.w3.clearkey") {
                let kid = rest.split("KEYID=0x").nth(1).unwrap()[..32].to_string();
                out.push(Period {
                    kid,
                    init: String::new(),
                    segments: Vec::new(),
                });
            }
        } else if let Some(rest) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
            let uri = rest.split('"').next().unwrap();
            out.last_mut().unwrap().init = uri.split('?').next().unwrap().to_string();
        } else if !line.starts_with('#') && line.contains(".m4s") {
            let file = line.split('?').next().unwrap();
            let n = file.rsplit('/').next().unwrap().trim_end_matches(".m4s");
            if let Ok(n) = n.parse() {
                out.last_mut().unwrap().segments.push(n);
            }
        }
    }
    out
}

async fn license(stack: &Stack, q: &str, kid: &str) -> (u16, Value) {
    let r = client()
        .post(format!(
            "{}/live/final/license/clearkey?{q}",
            stack.edge_url
        ))
        .json(&json!({ "kids": [b64url(&hex(kid))] }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_protected_channel_rotates_keys_and_announces_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, KEK_HEX).unwrap();
    let kek = kek.to_str().unwrap().to_string();
    let stack = Stack::start_full(
        move |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![cascade_origin::config::Rung {
                height: 120,
                kbps: 150,
            }];
            o.live_preset = "ultrafast".into();
            o.kek_file = kek;
            o.drm_live_key_period_secs = 10;
        },
        |_| {},
    )
    .await;
    let made = common::create_channel(
        &stack.origin_url,
        json!({ "name": "final", "protect": true }),
    )
    .await;
    assert_eq!(made["channel"]["protected"], true, "{made}");
    let key = made["stream_key"].as_str().unwrap();
    let rtmp = stack.origin.rtmp_addr.unwrap();
    let ffmpeg = common::ffmpeg_publish(
        &format!("rtmp://{rtmp}/live/{key}"),
        "flv",
        "320x180",
        120,
        "libx264",
    );

    let access = viewer(&stack.origin_url, &stack.outbox).await;
    let url = format!("{}/api/v1/live/final/playback", stack.origin_url);
    let start = common::post_json_ok(&url, &access, &json!({})).await;
    let token = start["token"].as_str().unwrap_or_else(|| panic!("{start}"));
    assert!(start["drm"]["clearkey"]
        .as_str()
        .unwrap()
        .contains("/live/final/license/clearkey"));
    let q = format!("__token__={token}");
    let base = format!("{}/live/final", stack.edge_url);

    // Until the window spans a key rotation with a whole segment each side.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (playlist, listed) = loop {
        let (status, body) = get(&format!("{base}/v0.m3u8?{q}")).await;
        if status == 200 {
            let text = String::from_utf8(body).unwrap();
            let p = periods(&text);
            if p.len() >= 2 && p.iter().rev().take(2).all(|x| !x.segments.is_empty()) {
                break (text, p);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no key rotation seen in a minute"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        !playlist.contains("init-0.mp4"),
        "no clear init: {playlist}"
    );
    let (a, b) = (&listed[listed.len() - 2], &listed[listed.len() - 1]);
    assert_ne!(a.kid, b.kid, "the key rotates");
    assert_ne!(a.init, b.init, "each period has its init segment");

    // The multivariant playlist announces the current key and the next.
    let mv = String::from_utf8(get_ok(&format!("{base}/master.m3u8?{q}")).await).unwrap();
    assert_eq!(
        mv.matches("#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES").count(),
        2,
        "{mv}"
    );

    // A license for the older period's key carries the next one too.
    let (status, granted) = license(&stack, &q, &a.kid).await;
    assert_eq!(status, 200, "{granted}");
    let keys: Vec<(String, Vec<u8>)> = granted["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                hex_of(&unb64url(k["kid"].as_str().unwrap())),
                unb64url(k["k"].as_str().unwrap()),
            )
        })
        .collect();
    let key_of = |kid: &str| keys.iter().find(|(k, _)| k == kid).map(|(_, v)| v.clone());
    assert!(key_of(&a.kid).is_some());
    assert!(
        key_of(&b.kid).is_some(),
        "the next key comes ahead: {granted}"
    );

    // Parts of both periods, decrypted independently against the clear
    // parts at the origin, decode in FFmpeg.
    let manifest: Value = client()
        .get(format!(
            "{}/live-mezz/final/manifest.json",
            stack.origin_url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in [a, b] {
        let msn = p.segments[0];
        let seg = manifest["segments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["msn"] == msn)
            .unwrap();
        let g = seg["init"].as_u64().unwrap();
        let enc_init = get_ok(&format!("{base}/{}?{q}", p.init)).await;
        let enc_part = get_ok(&format!("{base}/v0/{msn}.0.m4s?{q}")).await;
        let clear_init = get_ok(&format!(
            "{}/live-mezz/final/v0/init-{g}.mp4",
            stack.origin_url
        ))
        .await;
        let clear_part = get_ok(&format!(
            "{}/live-mezz/final/v0/{msn}.0.m4s",
            stack.origin_url
        ))
        .await;
        assert_ne!(enc_part, clear_part);
        let d = stack.dir.path();
        let files = [
            (d.join("ei.mp4"), &enc_init),
            (d.join("ep.m4s"), &enc_part),
            (d.join("ci.mp4"), &clear_init),
            (d.join("cp.m4s"), &clear_part),
        ];
        for (f, bytes) in &files {
            std::fs::write(f, bytes).unwrap();
        }
        let out = d.join("decrypted.mp4");
        let k = key_of(&p.kid).unwrap_or_else(|| panic!("no key for {}", p.kid));
        let check = Command::new(common::python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cenc_check.py"))
            .args(["fmp4", &hex_of(&k)])
            .args(files.iter().map(|(f, _)| f))
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let found: Value = serde_json::from_slice(&check.stdout).unwrap();
        assert_eq!(found["scheme"], "cbcs", "{found}");
        assert_eq!(found["kid"], p.kid.as_str(), "{found}");
        let decode = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(&out)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(
            decode.status.success() && decode.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&decode.stderr)
        );
        // The whole segment is its parts, encrypted alike.
        let parts = seg["parts"].as_array().unwrap().len();
        let mut joined = Vec::new();
        for i in 0..parts {
            joined.extend(get_ok(&format!("{base}/v0/{msn}.{i}.m4s?{q}")).await);
        }
        assert_eq!(get_ok(&format!("{base}/v0/{msn}.m4s?{q}")).await, joined);
    }

    // Refused: the clear init segment, the MPD and TS (HLS fMP4 only), a
    // license without a playback session, an unknown key.
    let (status, _) = get(&format!("{base}/v0/init-0.mp4?{q}")).await;
    assert_eq!(status, 403);
    let (status, body) = get(&format!("{base}/manifest.mpd?{q}")).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("protected_hls_only"));
    let anon = format!("__token__={}", common::sign_acl("/live/final/*"));
    let (status, why) = license(&stack, &anon, &a.kid).await;
    assert_eq!(
        (status, why["error"].as_str()),
        (403, Some("no_session")),
        "{why}"
    );
    let (status, why) = license(&stack, &q, "00112233445566778899aabbccddeeff").await;
    assert_eq!(
        (status, why["error"].as_str()),
        (404, Some("unknown_kid")),
        "{why}"
    );

    // hls.js in Chromium plays through a rotation (14 s of 10-second key
    // periods) with licenses from the edge. (Shaka's HLS parser has no
    // ClearKey key format.)
    let root = env!("CARGO_MANIFEST_DIR");
    let edge = stack.edge_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(format!("{root}/web/tests/protected.mjs"))
            .args([&edge, "final", &q, "14"])
            .env("PROTECTED_LIVE", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(out.status.success(), "{said}");
    assert!(said.contains("hls.js live cbcs: played"), "{said}");

    common::stop_child(ffmpeg);
    stack.shutdown().await;
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
