//! Content protection end to end: a title ingested with `protect`, served
//! encrypted just in time by the edge (cbcs and cenc fMP4, AES-128 TS),
//! decrypted by an independent decryptor (pycryptodome and its own box
//! reader) with the keys the key service exports, decoded by FFmpeg; and
//! licenses refused, with the reason, to viewers who may not play.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{client, make_clip, test_db, viewer, Stack, FLEET, ORIGIN_ADMIN};
use serde_json::{json, Value};

const WEBHOOK_SECRET: &str = "whsec-protection-tests";
/// The tests' key-encryption key: it must never be logged.
const KEK_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// Everything the stack logs during a test, to look for secrets in.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Captured {
    let logs = Captured::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init();
    logs
}

/// A stack whose origin has a KEK, the labelled geo database and a
/// webhook secret, and a 6-second title ingested with `protect`,
/// licensed in India, Nepal and Britain (127.0.0.1 in the test database).
async fn protected_stack(per_minute: u32, key_groups: bool) -> (Stack, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path()).to_str().unwrap().to_string();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, KEK_HEX).unwrap();
    let kek = kek.to_str().unwrap().to_string();
    let (db2, db3) = (db.clone(), db.clone());
    let stack = Stack::start_full(
        move |o| {
            o.geoip_db = db2;
            o.kek_file = kek;
            o.billing_webhook_secret = WEBHOOK_SECRET.into();
            o.license_requests_per_minute = per_minute;
            o.drm_key_groups = key_groups;
            o.drm_widevine_license_url = "https://license.example.test/widevine".into();
            o.drm_fairplay_license_url = "https://license.example.test/fairplay".into();
        },
        move |e| e.geoip_db = db,
    )
    .await;
    std::mem::forget(dir);
    let clip = make_clip(stack.dir.path(), 6);
    let asset = common::ingest_with(
        &stack,
        &clip,
        &[
            ("title", "Protected"),
            ("allow_countries", "IN,NP,GB"),
            ("protect", "true"),
        ],
    )
    .await;
    (stack, asset, db3)
}

async fn start(stack: &Stack, access: &str, asset: &str, device: &str) -> Value {
    let r = client()
        .post(format!("{}/api/v1/playback/{asset}", stack.origin_url))
        .bearer_auth(access)
        .json(&json!({ "device_id": device }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

async fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn get_ok(url: &str) -> Vec<u8> {
    let (s, b) = get_bytes(url).await;
    assert_eq!(s, 200, "{url}: {}", String::from_utf8_lossy(&b));
    b
}

/// A URL of the playback answer, at the test's edge (the answer names the
/// configured public edge).
fn at_edge(stack: &Stack, url: &Value) -> String {
    let url = url.as_str().unwrap_or_else(|| panic!("a URL: {url}"));
    let at = url.find("/vod/").unwrap();
    format!("{}{}", stack.edge_url, &url[at..])
}

fn b64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .unwrap()
}

/// The KIDs an MPD names (`cenc:default_KID`), as 32 hex digits, in order.
fn mpd_kids(mpd: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in mpd.split("cenc:default_KID=\"").skip(1) {
        let kid: String = part.chars().take(36).filter(|c| *c != '-').collect();
        if !out.contains(&kid) {
            out.push(kid);
        }
    }
    out
}

/// Content keys by KID, from the key service's CPIX export.
async fn cpix_keys(stack: &Stack, asset: &str) -> Vec<(String, String)> {
    let doc = client()
        .get(format!(
            "{}/api/v1/admin/assets/{asset}/keys",
            stack.origin_url
        ))
        .bearer_auth(ORIGIN_ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = Vec::new();
    for part in doc.split("<cpix:ContentKey kid=\"").skip(1) {
        let kid: String = part.chars().take(36).filter(|c| *c != '-').collect();
        let v = part
            .split("<pskc:PlainValue>")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap();
        let key = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
        out.push((kid, hex(&key)));
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run_check(args: &[&str]) -> Value {
    let out = Command::new(common::python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cenc_check.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cenc_check {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// FFmpeg decodes `file` (with `-decryption_key` when given) without a
/// single error.
fn ffmpeg_decodes(file: &Path, key: Option<&str>) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin"]);
    if let Some(k) = key {
        cmd.args(["-decryption_key", k]);
    }
    let out = cmd
        .arg("-i")
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The clear mezzanine bytes of track `t`'s init segment and fragment `n`.
async fn clear_parts(
    stack: &Stack,
    asset: &str,
    manifest: &Value,
    t: &str,
    n: usize,
) -> (Vec<u8>, Vec<u8>) {
    let track = manifest["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == t)
        .unwrap();
    let file = track["file"].as_str().unwrap();
    let range = |r: &Value| {
        let o = r["offset"].as_u64().unwrap();
        format!("bytes={}-{}", o, o + r["length"].as_u64().unwrap() - 1)
    };
    let fetch = |r: String| async move {
        client()
            .get(format!("{}/mezz/{asset}/{file}", stack.origin_url))
            .header("range", r)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    };
    let init = fetch(range(&track["init"])).await;
    let frag = fetch(range(&track["fragments"][n - 1]["range"])).await;
    (init, frag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protected_titles_are_encrypted_at_the_edge_and_decrypt_independently() {
    let logs = capture_logs();
    let (stack, asset, geo_db) = protected_stack(1000, true).await;
    let edge = &stack.edge_url;
    let access = viewer(&stack.origin_url, &stack.outbox).await;
    let play = start(&stack, &access, &asset, "tv-1").await;
    let token = play["token"].as_str().unwrap().to_string();
    let q = format!("__token__={token}");
    let drm = &play["drm"];
    assert!(
        drm["clearkey"]
            .as_str()
            .is_some_and(|u| u.contains("/license/clearkey?__token__=")),
        "{play}"
    );
    assert!(drm["dash_cenc"]
        .as_str()
        .unwrap()
        .contains("/cenc/manifest.mpd"));

    // The manifests say the media is encrypted, and how.
    let master = String::from_utf8(get_ok(&at_edge(&stack, &play["hls"])).await).unwrap();
    assert!(
        master.contains("#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES"),
        "{master}"
    );
    assert!(master.contains("KEYFORMAT=\"org.w3.clearkey\""), "{master}");
    assert!(
        master.contains("URI=\"skd://"),
        "FairPlay is configured: {master}"
    );
    assert!(master.contains(&format!("\ncbcs/v0.m3u8?{q}")), "{master}");
    assert!(!master.contains("iframes"), "{master}");
    let media =
        String::from_utf8(get_ok(&format!("{edge}/vod/{asset}/cbcs/v0.m3u8?{q}")).await).unwrap();
    assert!(
        media.contains("#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"data:text/plain;base64,"),
        "{media}"
    );
    assert!(
        media.contains(&format!("#EXT-X-MAP:URI=\"v0/init.mp4?{q}\"")),
        "{media}"
    );
    let mpd = String::from_utf8(get_ok(&at_edge(&stack, &play["dash"])).await).unwrap();
    assert!(mpd.contains("value=\"cbcs\" cenc:default_KID="), "{mpd}");
    assert!(
        mpd.contains("urn:uuid:edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"),
        "Widevine: {mpd}"
    );
    assert!(
        mpd.contains("media=\"cbcs/$RepresentationID$/$Number$.m4s"),
        "{mpd}"
    );
    let cenc_mpd = String::from_utf8(get_ok(&at_edge(&stack, &drm["dash_cenc"])).await).unwrap();
    assert!(
        cenc_mpd.contains("value=\"cenc\" cenc:default_KID="),
        "{cenc_mpd}"
    );
    // The clear media of a protected title is refused, with the reason.
    for path in ["v0/1.m4s", "v0/init.mp4", "v0.m3u8", "a0/1.m4s"] {
        let (s, b) = get_bytes(&format!("{edge}/vod/{asset}/{path}?{q}")).await;
        assert_eq!(s, 403, "{path}");
        assert!(
            String::from_utf8_lossy(&b).contains("\"protected\""),
            "{path}"
        );
    }

    // One key per group of rungs (180p and 120p are SD) and one for audio.
    let kids = mpd_kids(&mpd);
    assert_eq!(kids.len(), 2, "{mpd}");
    assert_eq!(mpd_kids(&cenc_mpd), kids, "both schemes use the same keys");

    // The license: the W3C ClearKey JSON, keys as the key service has them.
    let request = json!({
        "kids": kids.iter().map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            (0..16).map(|i| u8::from_str_radix(&k[i * 2..i * 2 + 2], 16).unwrap()).collect::<Vec<_>>()
        )).collect::<Vec<_>>(),
        "type": "temporary",
    });
    let r = client()
        .post(at_edge(&stack, &drm["clearkey"]))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let license: Value = r.json().await.unwrap();
    let exported = cpix_keys(&stack, &asset).await;
    assert_eq!(exported.len(), 2);
    let mut keys = Vec::new();
    for k in license["keys"].as_array().unwrap() {
        assert_eq!(k["kty"], "oct");
        let (kid, key) = (
            hex(&b64url(k["kid"].as_str().unwrap())),
            hex(&b64url(k["k"].as_str().unwrap())),
        );
        assert!(
            exported.contains(&(kid.clone(), key.clone())),
            "{kid} not as exported"
        );
        keys.push((kid, key));
    }
    assert_eq!(keys.len(), 2);

    // Each scheme, video and audio, decrypted independently and compared
    // with the clear mezzanine sample by sample; then decoded by FFmpeg,
    // and decrypted by FFmpeg itself.
    let manifest: Value = serde_json::from_slice(
        &get_ok(&format!("{}/mezz/{asset}/manifest.json", stack.origin_url)).await,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for scheme in ["cbcs", "cenc"] {
        for (track, kid_index) in [("v0", 0), ("v1", 0), ("a0", 1)] {
            let key = &keys.iter().find(|(k, _)| *k == kids[kid_index]).unwrap().1;
            let init = get_ok(&format!("{edge}/vod/{asset}/{scheme}/{track}/init.mp4?{q}")).await;
            let seg = get_ok(&format!("{edge}/vod/{asset}/{scheme}/{track}/2.m4s?{q}")).await;
            let (clear_init, clear_seg) = clear_parts(&stack, &asset, &manifest, track, 2).await;
            assert_ne!(seg, clear_seg);
            let name = |what: &str| d.join(format!("{scheme}-{track}-{what}"));
            std::fs::write(name("init.mp4"), &init).unwrap();
            std::fs::write(name("seg.m4s"), &seg).unwrap();
            std::fs::write(name("clear-init.mp4"), &clear_init).unwrap();
            std::fs::write(name("clear-seg.m4s"), &clear_seg).unwrap();
            let arg = |what: &str| name(what).to_str().unwrap().to_string();
            let found = run_check(&[
                "fmp4",
                key,
                &arg("init.mp4"),
                &arg("seg.m4s"),
                &arg("clear-init.mp4"),
                &arg("clear-seg.m4s"),
                &arg("decrypted.mp4"),
            ]);
            assert_eq!(found["scheme"], scheme, "{found}");
            assert_eq!(found["kid"], kids[kid_index].as_str(), "{found}");
            assert!(found["samples"].as_u64().unwrap() > 10, "{found}");
            assert!(found["ranges"].as_u64().unwrap() > 10, "{found}");
            if scheme == "cbcs" && track != "a0" {
                assert_eq!(
                    (found["crypt"].as_u64(), found["skip"].as_u64()),
                    (Some(1), Some(9))
                );
            }
            ffmpeg_decodes(&name("decrypted.mp4"), None);
            let mut whole = init.clone();
            whole.extend_from_slice(&seg);
            std::fs::write(name("whole.mp4"), &whole).unwrap();
            ffmpeg_decodes(&name("whole.mp4"), Some(key));
        }
    }

    // Pre-warm before an event: a protected title is warmed as its viewers
    // ask for it (cbcs), and their first request is a hit.
    let r: Value = client()
        .post(format!("{edge}/fleet/warm"))
        .bearer_auth(FLEET)
        .json(&json!({ "urls": [format!("/vod/{asset}/v1/3.m4s"), format!("/vod/{asset}/v1.iframes.m3u8")] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["results"][0]["status"], 200, "{r}");
    assert_eq!(r["results"][1]["status"], 404, "{r}");
    let hit = client()
        .get(format!("{edge}/vod/{asset}/cbcs/v1/3.m4s?{q}"))
        .send()
        .await
        .unwrap();
    let status = hit.headers()["cache-status"].to_str().unwrap().to_string();
    assert!(status.contains("hit"), "{status}");

    // The same request gives the same bytes on another edge.
    let mut cfg2 = cascade_edge::EdgeConfig {
        listen: "127.0.0.1:0".into(),
        shields: vec![format!("http://{}", stack.shield.addr)],
        origin: stack.origin_url.clone(),
        origin_fallback: false,
        cache_dir: format!("{}/edge2-cache", d.display()),
        cache_memory_mib: 16,
        cache_disk_mib: 64,
        token_keys: vec![common::test_key("test", common::TEST_KEY_HEX)],
        fleet_token: FLEET.into(),
        geoip_db: geo_db,
        ..cascade_edge::EdgeConfig::default()
    };
    cfg2.revocation_poll_secs = 1;
    let edge2 = cascade_edge::start(&cfg2).await.unwrap();
    for path in [
        "cbcs/v0/3.m4s",
        "cenc/a0/1.m4s",
        "cbcs/v1/init.mp4",
        "ts/v0.a0/2.ts",
    ] {
        let a = get_ok(&format!("{edge}/vod/{asset}/{path}?{q}")).await;
        let b = get_ok(&format!("http://{}/vod/{asset}/{path}?{q}", edge2.addr)).await;
        assert!(a == b, "{path} differs between edges");
    }
    edge2.shutdown().await;

    // MPEG-TS variants under HLS AES-128: the key from the playlist's own
    // (signed) key URL, the IV the media sequence number.
    let ts_master =
        String::from_utf8(get_ok(&format!("{edge}/vod/{asset}/master.m3u8?format=ts&{q}")).await)
            .unwrap();
    assert!(ts_master.contains("ts/v0.a0.m3u8"), "{ts_master}");
    let ts_list =
        String::from_utf8(get_ok(&format!("{edge}/vod/{asset}/ts/v0.a0.m3u8?{q}")).await).unwrap();
    let key_uri = ts_list
        .split("#EXT-X-KEY:METHOD=AES-128,URI=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("{ts_list}"))
        .to_string();
    assert!(
        key_uri.starts_with("../license/aes128/") && key_uri.contains(&q),
        "{key_uri}"
    );
    let key_url = format!("{edge}/vod/{asset}/{}", &key_uri["../".len()..]);
    let r = client().get(&key_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let ts_key = hex(&r.bytes().await.unwrap());
    assert_eq!(
        ts_key,
        keys.iter().find(|(k, _)| *k == kids[0]).unwrap().1,
        "the video key"
    );
    for n in [1u64, 2] {
        let seg = get_ok(&format!("{edge}/vod/{asset}/ts/v0.a0/{n}.ts?{q}")).await;
        let enc = d.join(format!("{n}.ts.enc"));
        let out = d.join(format!("{n}.ts"));
        std::fs::write(&enc, &seg).unwrap();
        let found = run_check(&[
            "ts",
            &ts_key,
            &n.to_string(),
            enc.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(found["packets"].as_u64().unwrap() > 50, "{found}");
        ffmpeg_decodes(&out, None);
    }

    // No key, and not the KEK, in any log line, error body or metric.
    let mut metrics = String::from_utf8(get_ok(&format!("{edge}/metrics")).await).unwrap();
    metrics.push_str(
        &String::from_utf8(get_ok(&format!("{}/metrics", stack.origin_url)).await).unwrap(),
    );
    assert!(
        metrics.contains("edge_licenses_total{result=\"granted\"}"),
        "{metrics}"
    );
    let (_, refusal) = get_bytes(&format!(
        "{edge}/vod/{asset}/license/aes128/{}?{q}",
        "ab".repeat(16)
    ))
    .await;
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(logged.contains(&asset), "the logs were captured");
    for (_, key) in &keys {
        for (what, text) in [("logs", &logged), ("metrics", &metrics)] {
            assert!(!text.contains(key.as_str()), "a content key in the {what}");
        }
        assert!(!String::from_utf8_lossy(&refusal).contains(key.as_str()));
    }
    assert!(!logged.contains(KEK_HEX) && !metrics.contains(KEK_HEX));

    // Through an origin outage, viewers keep playing what the edge has:
    // a purge (of something else) makes the edge forget the title's fresh
    // keys, the origin goes away, and the cached encrypted segment is still
    // served, under the last keys the edge saw.
    let seg = format!("{edge}/vod/{asset}/cbcs/v0/2.m4s?{q}");
    let before = get_ok(&seg).await;
    let r = client()
        .post(format!("{edge}/fleet/purge"))
        .bearer_auth(FLEET)
        .json(&json!({ "tags": ["nothing-of-this-title"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let Stack {
        origin,
        shield,
        edge: edge_node,
        dir: _dir,
        ..
    } = stack;
    origin.shutdown().await;
    assert_eq!(get_ok(&seg).await, before, "served through the outage");
    let metrics = String::from_utf8(get_ok(&format!("{edge}/metrics")).await).unwrap();
    assert!(
        metrics.contains("edge_licenses_total{result=\"keys_last_known\"}"),
        "{metrics}"
    );
    edge_node.shutdown().await;
    shield.shutdown().await;
}

/// A ClearKey license request for `kids` (hex) with `token`, from `from`.
async fn license(
    stack: &Stack,
    asset: &str,
    token: Option<&str>,
    kids: &[String],
    from: &str,
) -> (u16, Value) {
    let c = reqwest::Client::builder()
        .no_proxy()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let url = match token {
        Some(t) => format!(
            "{}/vod/{asset}/license/clearkey?__token__={t}",
            stack.edge_url
        ),
        None => format!("{}/vod/{asset}/license/clearkey", stack.edge_url),
    };
    let body = json!({ "kids": kids.iter().map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        (0..16).map(|i| u8::from_str_radix(&k[i * 2..i * 2 + 2], 16).unwrap()).collect::<Vec<_>>()
    )).collect::<Vec<_>>() });
    let r = c.post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn licenses_are_refused_with_the_reason() {
    let (stack, asset, _) = protected_stack(8, false).await;
    let access = viewer(&stack.origin_url, &stack.outbox).await;
    let user = common::user_id(&stack, &access).await;
    common::subscription_event(
        &stack,
        WEBHOOK_SECRET,
        &user,
        "customer.subscription.created",
        "evt_p1",
    )
    .await;
    let a = start(&stack, &access, &asset, "tv-a").await;
    let b = start(&stack, &access, &asset, "tv-b").await;
    let (ta, tb) = (a["token"].as_str().unwrap(), b["token"].as_str().unwrap());
    let mpd = String::from_utf8(get_ok(&at_edge(&stack, &a["dash"])).await).unwrap();
    let kids = mpd_kids(&mpd);
    let local = "127.0.0.1";

    // Premium: two streams, both licensed.
    assert_eq!(license(&stack, &asset, Some(ta), &kids, local).await.0, 200);
    assert_eq!(license(&stack, &asset, Some(tb), &kids, local).await.0, 200);

    // Anonymous: no token, no license.
    let (s, body) = license(&stack, &asset, None, &kids, local).await;
    assert_eq!(
        (s, body["error"].as_str(), body["reason"].as_str()),
        (403, Some("token"), Some("missing")),
        "{body}"
    );

    // Bad input: not W3C JSON, a key id of the wrong length, an unknown key.
    let url = format!(
        "{}/vod/{asset}/license/clearkey?__token__={ta}",
        stack.edge_url
    );
    for bad in [
        &b"{\"kids\": \"x\"}"[..],
        b"not json",
        b"{\"kids\": [\"AAEC\"]}",
    ] {
        let r = client().post(&url).body(bad.to_vec()).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_license_request", "{v}");
    }
    let (s, body) = license(&stack, &asset, Some(ta), &["ab".repeat(16)], local).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (404, Some("unknown_kid")),
        "{body}"
    );
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405, "a ClearKey license is a POST");

    // A viewer in a country the title is not licensed in: the edge says
    // which (127.0.0.3 is the US in the test database); so does the origin.
    let (s, body) = license(&stack, &asset, Some(ta), &kids, "127.0.0.3").await;
    assert_eq!(
        (s, body["error"].as_str(), body["country"].as_str()),
        (451, Some("geo_blocked"), Some("US")),
        "{body}"
    );
    let stream_a = a["stream"]["id"].as_str().unwrap();
    let r = client()
        .post(format!("{}/api/v1/fleet/license", stack.origin_url))
        .bearer_auth(FLEET)
        .json(&json!({ "stream": stream_a, "asset": asset, "kids": kids, "ip": "127.0.0.3" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 451);
    // Without the fleet credential the origin's license call is closed.
    let r = client()
        .post(format!("{}/api/v1/fleet/license", stack.origin_url))
        .json(&json!({ "stream": stream_a, "asset": asset, "kids": kids, "ip": "127.0.0.1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Back on the free plan: the second stream is over the limit, and a
    // premium title needs premium.
    common::subscription_event(
        &stack,
        WEBHOOK_SECRET,
        &user,
        "customer.subscription.deleted",
        "evt_p2",
    )
    .await;
    // Streams rank by when they started (then by id, within a second): one
    // keeps its licenses, the other is one too many.
    let ra = license(&stack, &asset, Some(ta), &kids, local).await;
    let rb = license(&stack, &asset, Some(tb), &kids, local).await;
    let (kept, over) = if ra.0 == 200 { (ta, rb) } else { (tb, ra) };
    assert_eq!(
        (over.0, over.1["error"].as_str()),
        (429, Some("too_many_streams")),
        "{}",
        over.1
    );
    assert_eq!(
        license(&stack, &asset, Some(kept), &kids, local).await.0,
        200
    );
    let title = a["title_id"].as_str().unwrap();
    let premium = |on: bool| {
        client()
            .patch(format!("{}/api/v1/admin/titles/{title}", stack.origin_url))
            .bearer_auth(ORIGIN_ADMIN)
            .json(&json!({ "premium": on }))
            .send()
    };
    assert_eq!(premium(true).await.unwrap().status(), 200);
    let (s, body) = license(&stack, &asset, Some(kept), &kids, local).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("premium_required")),
        "{body}"
    );
    assert_eq!(premium(false).await.unwrap().status(), 200);

    // A replayed token: the device started again, so its old session
    // ended; refused by the edge (once it has polled the revocations) or
    // by the license server, whichever sees it first.
    common::subscription_event(
        &stack,
        WEBHOOK_SECRET,
        &user,
        "customer.subscription.updated",
        "evt_p3",
    )
    .await;
    let a2 = start(&stack, &access, &asset, "tv-a").await;
    assert_ne!(a2["token"], a["token"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = license(&stack, &asset, Some(ta), &kids, local).await;
        if s == 410 || s == 403 {
            let why = (body["error"].as_str(), body["reason"].as_str());
            assert!(
                why == (Some("stream_ended"), None) || why == (Some("token"), Some("revoked")),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old session's license: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An expired token (signed like the playback API's, an hour ago).
    let key = cascade_token::Key::from_hex("test", common::TEST_KEY_HEX).unwrap();
    let expired = cascade_token::sign(
        &key,
        &cascade_token::Claims {
            expires: 1_000_000,
            acl: vec![format!("/vod/{asset}/*")],
            id: Some(a2["stream"]["id"].as_str().unwrap().to_string()),
            ..Default::default()
        },
    );
    let (s, body) = license(&stack, &asset, Some(&expired), &kids, local).await;
    assert_eq!(
        (s, body["reason"].as_str()),
        (403, Some("expired")),
        "{body}"
    );

    // Rate-limited: eight a minute per session here.
    let t2 = a2["token"].as_str().unwrap();
    let mut last = (0, Value::Null);
    for _ in 0..10 {
        last = license(&stack, &asset, Some(t2), &kids, local).await;
        if last.0 == 429 {
            break;
        }
        assert_eq!(last.0, 200, "{}", last.1);
    }
    assert_eq!(
        (last.0, last.1["error"].as_str()),
        (429, Some("rate_limited")),
        "{}",
        last.1
    );

    // CPIX: a key of the wrong length is refused and nothing changes; a
    // good document replaces the keys (and the edge encrypts with them
    // once it has forgotten the old ones).
    let cpix = |key_b64: &str| {
        format!(
            "<cpix:CPIX xmlns:cpix=\"urn:dashif:org:cpix\" xmlns:pskc=\"urn:ietf:params:xml:ns:keyprov:pskc\"><cpix:ContentKeyList><cpix:ContentKey kid=\"11112222-3333-4444-5555-666677778888\" explicitIV=\"AAAAAAAAAAAAAAAAAAAAAA==\"><cpix:Data><pskc:Secret><pskc:PlainValue>{key_b64}</pskc:PlainValue></pskc:Secret></cpix:Data></cpix:ContentKey></cpix:ContentKeyList></cpix:CPIX>"
        )
    };
    let put = |doc: String| {
        client()
            .put(format!(
                "{}/api/v1/admin/assets/{asset}/keys",
                stack.origin_url
            ))
            .bearer_auth(ORIGIN_ADMIN)
            .body(doc)
            .send()
    };
    let r = put(cpix("AAECAwQFBgcICQoLDA0O")).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "bad_cpix", "{v}");
    assert!(v["message"].as_str().unwrap().contains("16 bytes"), "{v}");
    let before = cpix_keys(&stack, &asset).await;
    assert_eq!(before.len(), 1, "one key a title by default");
    let r = put(cpix("AAECAwQFBgcICQoLDA0ODw==")).await.unwrap();
    assert_eq!(r.status(), 200);
    let keys = cpix_keys(&stack, &asset).await;
    assert!(
        keys.contains(&(
            "11112222333344445555666677778888".into(),
            "000102030405060708090a0b0c0d0e0f".into()
        )),
        "{keys:?}"
    );
    stack.shutdown().await;
}

/// Runs web/tests/protected.mjs on `asset` (the players `only` names, or
/// all) and answers what it printed.
async fn players(stack: &Stack, asset: &str, only: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        Path::new(&format!("{root}/web/node_modules/playwright-core")).exists(),
        "web/node_modules is missing: run `make web` (make test does)"
    );
    let access = viewer(&stack.origin_url, &stack.outbox).await;
    let play = start(stack, &access, asset, "browser-1").await;
    let query = format!("__token__={}", play["token"].as_str().unwrap());
    let (edge, asset, only) = (stack.edge_url.clone(), asset.to_string(), only.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(format!("{root}/web/tests/protected.mjs"))
            .args([&edge, &asset, &query, "3"])
            .env("PROTECTED_ONLY", only)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the players failed");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_plays_protected_titles_through_eme_clearkey() {
    // One key a title (the default): every player.
    let (stack, asset, _) = protected_stack(1000, false).await;
    let out = players(&stack, &asset, "").await;
    for name in [
        "hls.js cbcs",
        "hls.js AES-128 TS",
        "dash.js cbcs",
        "dash.js cenc",
        "Shaka cbcs",
        "Shaka cenc",
    ] {
        assert!(out.contains(&format!("{name}: played")), "{name}");
    }
    stack.shutdown().await;
    // A key per group of rungs and one for audio: the players that match
    // keys by KID.
    let (stack, asset, _) = protected_stack(1000, true).await;
    let out = players(&stack, &asset, "dash.js,Shaka").await;
    for name in ["dash.js cbcs", "dash.js cenc", "Shaka cbcs", "Shaka cenc"] {
        assert!(
            out.contains(&format!("{name}: played")),
            "{name} with two keys"
        );
    }
    stack.shutdown().await;
}
