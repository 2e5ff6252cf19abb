//! A whole stack (origin, shield, edge) on ephemeral ports, for full-stack tests.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cascade_edge::{Edge, EdgeConfig};
use cascade_geo::UnknownPolicy;
use cascade_geo_testdb as writer;
use cascade_origin::transcode::Rung;
use cascade_origin::{Origin, OriginConfig};
use cascade_serve::config::TokenKeyConfig;
use cascade_shield::{Shield, ShieldConfig};
use serde_json::Value;

pub mod together;

/// The CDN token key of test stacks.
pub const TEST_KEY_HEX: &str = "5ecbe75ecbe75ecbe75ecbe75ecbe75e";

pub fn test_key(kid: &str, hex: &str) -> TokenKeyConfig {
    TokenKeyConfig {
        kid: kid.into(),
        key: hex.into(),
        algorithm: "sha256".into(),
        salt: String::new(),
        escape_early: false,
    }
}

pub struct Stack {
    pub origin: Origin,
    pub shield: Shield,
    pub edge: Edge,
    pub origin_url: String,
    pub edge_url: String,
    /// Where the origin writes its mail (sign-up links).
    pub outbox: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(|_| {}).await
    }

    /// A stack whose edge config is adjusted first.
    pub async fn start_with(edit_edge: impl FnOnce(&mut EdgeConfig)) -> Stack {
        Self::start_full(|_| {}, edit_edge).await
    }

    /// A stack whose origin and edge configs are adjusted first.
    pub async fn start_full(
        edit_origin: impl FnOnce(&mut OriginConfig),
        edit_edge: impl FnOnce(&mut EdgeConfig),
    ) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().to_str().expect("utf-8 temp path").to_string();
        let mut origin_cfg = origin_config(&data);
        edit_origin(&mut origin_cfg);
        let outbox = origin_cfg.mail_outbox();
        let origin = cascade_origin::start(&origin_cfg)
            .await
            .expect("origin starts");
        let origin_url = format!("http://{}", origin.addr);
        let shield = cascade_shield::start(&ShieldConfig {
            listen: "127.0.0.1:0".into(),
            origins: vec![origin_url.clone()],
            cache_dir: format!("{data}/shield-cache"),
            cache_memory_mib: 64,
            cache_disk_mib: 256,
            ..ShieldConfig::default()
        })
        .await
        .expect("shield starts");
        let mut edge_cfg = EdgeConfig {
            listen: "127.0.0.1:0".into(),
            shields: vec![format!("http://{}", shield.addr)],
            origin: origin_url.clone(),
            // Media must come through the shield in these tests.
            origin_fallback: false,
            cache_dir: format!("{data}/edge-cache"),
            cache_memory_mib: 64,
            cache_disk_mib: 256,
            token_keys: vec![test_key("test", TEST_KEY_HEX)],
            // Polls the origin's list of ended playback sessions.
            fleet_token: FLEET.into(),
            revocation_poll_secs: 1,
            ..EdgeConfig::default()
        };
        edit_edge(&mut edge_cfg);
        let edge = cascade_edge::start(&edge_cfg).await.expect("edge starts");
        let edge_url = format!("http://{}", edge.addr);
        Stack {
            origin,
            shield,
            edge,
            origin_url,
            edge_url,
            outbox,
            dir,
        }
    }

    pub async fn shutdown(self) {
        self.edge.shutdown().await;
        self.shield.shutdown().await;
        self.origin.shutdown().await;
    }
}

/// The test origin's catalog-editing credential.
pub const ORIGIN_ADMIN: &str = "origin-admin-for-tests";

/// The test origin's config: data under `data`, a small fast ladder.
pub fn origin_config(data: &str) -> OriginConfig {
    OriginConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: format!("{data}/origin"),
        preset: "ultrafast".into(),
        token_keys: vec![test_key("test", TEST_KEY_HEX)],
        admin_token: ORIGIN_ADMIN.into(),
        fleet_token: FLEET.into(),
        ladder: vec![
            Rung {
                height: 180,
                kbps: 300,
            },
            Rung {
                height: 120,
                kbps: 150,
            },
        ],
        ..OriginConfig::default()
    }
}

/// A token for `acl` (such as `/live/final/*`) signed with the test key,
/// valid for an hour.
pub fn sign_acl(acl: &str) -> String {
    let key = cascade_token::Key::from_hex("test", TEST_KEY_HEX).expect("test key");
    let now = cascade_serve::unix_now();
    cascade_token::sign(
        &key,
        &cascade_token::Claims {
            expires: now + 3600,
            acl: vec![acl.to_string()],
            ..Default::default()
        },
    )
}

/// A token for `/vod/{asset}/*` signed with the test key, valid for an hour.
pub fn sign_for(asset: &str) -> String {
    let key = cascade_token::Key::from_hex("test", TEST_KEY_HEX).expect("test key");
    let now = cascade_serve::unix_now();
    cascade_token::sign(
        &key,
        &cascade_token::Claims {
            expires: now + 3600,
            acl: vec![format!("/vod/{asset}/*")],
            ..Default::default()
        },
    )
}

/// A token for `/vod/{asset}/*` bound to playback session `session` (an
/// edge tells sessions apart by it), signed with the test key.
pub fn sign_session(asset: &str, session: &str) -> String {
    let key = cascade_token::Key::from_hex("test", TEST_KEY_HEX).expect("test key");
    cascade_token::sign(
        &key,
        &cascade_token::Claims {
            expires: cascade_serve::unix_now() + 3600,
            acl: vec![format!("/vod/{asset}/*")],
            id: Some(session.to_string()),
            ..Default::default()
        },
    )
}

/// Signs up a new viewer at the origin and follows the link the origin
/// mailed to its outbox; answers an access token.
pub async fn viewer(origin_url: &str, outbox: &Path) -> String {
    let email = format!("viewer-{}@example.test", uuid_like());
    viewer_as(origin_url, outbox, &email).await
}

/// [`viewer`] with a chosen e-mail address.
pub async fn viewer_as(origin_url: &str, outbox: &Path, email: &str) -> String {
    let email = email.to_string();
    let r = client()
        .post(format!("{origin_url}/api/v1/auth/signup"))
        .json(&serde_json::json!({ "email": email, "password": "correct horse 42" }))
        .send()
        .await
        .expect("sign-up request");
    assert_eq!(r.status().as_u16(), 202, "sign-up: {:?}", r.text().await);
    let code = signup_code(outbox, &email);
    let r: Value = client()
        .post(format!("{origin_url}/api/v1/auth/verify"))
        .json(&serde_json::json!({ "code": code }))
        .send()
        .await
        .expect("verify request")
        .json()
        .await
        .expect("verify JSON");
    r["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("an access token: {r}"))
        .to_string()
}

/// The code of the newest sign-up link in an outbox mailed to `email`
/// (lower-case): the text after `#verify=` in the body of the newest
/// `.eml` file addressed to it.
pub fn signup_code(outbox: &Path, email: &str) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox)
        .unwrap_or_else(|e| panic!("the outbox {}: {e}", outbox.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    // Names start with the time they were written.
    files.sort();
    let to = format!("\r\nTo: {email}\r\n");
    files
        .iter()
        .rev()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .filter_map(|m| {
            let (head, body) = m.split_once("\r\n\r\n")?;
            if !format!("\r\n{head}\r\n").contains(&to) {
                return None;
            }
            let at = body.find("#verify=")? + "#verify=".len();
            let code: String = body[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            Some(code)
        })
        .next()
        .unwrap_or_else(|| panic!("no sign-up link to {email} in {}", outbox.display()))
}

/// A fresh random suffix.
pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Signed edge URLs from the origin's playback API, for a new viewer:
/// (HLS, DASH, token).
pub async fn playback(stack: &Stack, asset: &str) -> (String, String, String) {
    let viewer = viewer(&stack.origin_url, &stack.outbox).await;
    let r: Value = client()
        .post(format!("{}/api/v1/playback/{asset}", stack.origin_url))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("playback request")
        .json()
        .await
        .expect("playback JSON");
    let token = r["token"]
        .as_str()
        .unwrap_or_else(|| panic!("a token: {r}"))
        .to_string();
    let q = format!("__token__={token}");
    (
        format!("{}/vod/{asset}/master.m3u8?{q}", stack.edge_url),
        format!("{}/vod/{asset}/manifest.mpd?{q}", stack.edge_url),
        token,
    )
}

/// Makes a small H.264/AAC clip with the FFmpeg CLI, an independent encoder.
pub fn make_clip(dir: &Path, secs: u32) -> PathBuf {
    let out = dir.join(format!("clip-{secs}s.mp4"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=s=320x180:r=25:d={secs}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=f=440:sample_rate=44100:d={secs}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&out)
        .status()
        .expect("the ffmpeg CLI is installed (make test installs it)");
    assert!(status.success(), "ffmpeg could not make the test clip");
    out
}

/// POSTs `body` as JSON to `url` with a viewer's bearer token and answers
/// the JSON answer, failing the test unless it is 200 (a playback start).
pub async fn post_json_ok(url: &str, bearer: &str, body: &Value) -> Value {
    let r = client()
        .post(url)
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .expect("the request is answered");
    let status = r.status();
    let v: Value = r.json().await.expect("a JSON answer");
    assert_eq!(status, 200, "{url}: {v}");
    v
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// The body of a GET, as text.
pub async fn text(url: impl reqwest::IntoUrl) -> String {
    client()
        .get(url)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("a text body")
}

/// The value of one series in Prometheus text, 0 when absent.
pub fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Uploads a file; returns the status and the JSON answer.
pub async fn upload(origin_url: &str, path: &Path, title: &str) -> (u16, Value) {
    let body = tokio::fs::read(path).await.expect("read clip");
    let r = client()
        .post(format!("{origin_url}/api/v1/uploads"))
        .bearer_auth(ORIGIN_ADMIN)
        .query(&[("title", title)])
        .body(body)
        .send()
        .await
        .expect("upload request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON answer"))
}

/// Polls a job until it ends or the deadline passes.
pub async fn wait_job(origin_url: &str, job: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let j: Value = client()
            .get(format!("{origin_url}/api/v1/jobs/{job}"))
            .bearer_auth(ORIGIN_ADMIN)
            .send()
            .await
            .expect("job request")
            .json()
            .await
            .expect("job JSON");
        match j["state"].as_str() {
            Some("done") | Some("failed") => return j,
            _ if Instant::now() > deadline => panic!("job {job} did not end in {within:?}: {j}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Uploads a clip and waits until it is playable; returns the asset id.
pub async fn ingest_clip(stack: &Stack, secs: u32) -> String {
    let clip = make_clip(stack.dir.path(), secs);
    let (status, answer) = upload(&stack.origin_url, &clip, "Tiny clip").await;
    assert_eq!(status, 202, "{answer}");
    let job = answer["job"].as_str().expect("job id");
    let done = wait_job(&stack.origin_url, job, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "done", "{done}");
    answer["asset"].as_str().expect("asset id").to_string()
}

/// Control's node list.
pub async fn nodes(control: &str) -> Vec<Value> {
    let r = client()
        .get(format!("{control}/api/v1/nodes"))
        .bearer_auth(FLEET)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["nodes"].as_array().unwrap().clone()
}

/// Waits until every node in `names` shows `health` in control's list.
pub async fn wait_health(control: &str, names: &[&str], health: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = nodes(control).await;
        let ok = names.iter().all(|n| {
            list.iter()
                .any(|x| x["name"] == *n && x["health"] == health)
        });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{names:?} never became {health}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fleet credential of the tests' control, edges and shields.
pub const FLEET: &str = "fleet-secret-0123456789";

/// A RAM-only shield in front of `origin`, registered with `control` as
/// `name` in `region`, heartbeating every second.
pub async fn registered_shield(origin: &str, control: &str, name: &str, region: &str) -> Shield {
    cascade_shield::start(&ShieldConfig {
        listen: "127.0.0.1:0".into(),
        origins: vec![origin.to_string()],
        cache_dir: String::new(),
        cache_memory_mib: 32,
        control_url: control.to_string(),
        fleet_token: FLEET.into(),
        node_name: name.into(),
        region: region.into(),
        heartbeat_secs: 1,
        ..ShieldConfig::default()
    })
    .await
    .expect("shield starts")
}

/// A RAM-only edge that takes media from `shields` only (no origin
/// fallback), registered with `control` as `name` in `region`.
pub async fn registered_edge(
    shields: Vec<String>,
    origin: &str,
    control: &str,
    name: &str,
    region: &str,
) -> Edge {
    cascade_edge::start(&EdgeConfig {
        listen: "127.0.0.1:0".into(),
        shields,
        origin: origin.to_string(),
        origin_fallback: false,
        cache_dir: String::new(),
        cache_memory_mib: 64,
        token_keys: vec![test_key("test", TEST_KEY_HEX)],
        control_url: control.to_string(),
        fleet_token: FLEET.into(),
        node_name: name.into(),
        region: region.into(),
        heartbeat_secs: 1,
        ..EdgeConfig::default()
    })
    .await
    .expect("edge starts")
}

pub fn write_db(path: &Path, csv: &str) {
    // Replace by rename, as operators are told to.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, writer::build_from_csv(csv, 1).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The project's labelled test database (127.0.0.2 IN, 127.0.0.3 US, 127.0.0.4 NP).
pub fn test_db(dir: &Path) -> PathBuf {
    let path = dir.join("geo.mmdb");
    write_db(&path, include_str!("../../geo/testdata/countries.csv"));
    path
}

/// A stack with the test database on both edge and origin, and a title
/// licensed in India and Nepal only.
pub async fn licensed_stack(
    dir: &Path,
    unknown: UnknownPolicy,
    trusted: Vec<String>,
    edit_edge: impl FnOnce(&mut EdgeConfig),
) -> (Stack, String) {
    let db = test_db(dir).to_str().unwrap().to_string();
    let db2 = db.clone();
    let stack = Stack::start_full(
        move |o| {
            o.geoip_db = db2;
            o.geo_unknown = unknown;
        },
        move |e| {
            e.geoip_db = db;
            e.geo_unknown = unknown;
            e.geoip_reload_secs = 1;
            e.trusted_proxies = trusted;
            edit_edge(e);
        },
    )
    .await;
    let clip = make_clip(stack.dir.path(), 2);
    let asset = ingest_with(
        &stack,
        &clip,
        &[("title", "Final"), ("allow_countries", "IN,NP")],
    )
    .await;
    (stack, asset)
}

/// FFmpeg publishing a `size` test pattern at 25 fps with a 440 Hz tone, in
/// real time for `secs`, a keyframe every second, to `url` as `format`
/// (`flv` for RTMP, `mpegts` for SRT), with `video` as the encoder (libx264
/// tuned for low latency; another to test refusals).
pub fn ffmpeg_publish(
    url: &str,
    format: &str,
    size: &str,
    secs: u32,
    video: &str,
) -> std::process::Child {
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-v", "error", "-re", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=s={size}:r=25:d={secs}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=f=440:sample_rate=48000:d={secs}"))
        .args(["-c:v", video, "-g", "25"]);
    if video == "libx264" {
        cmd.args([
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
        ]);
    }
    cmd.args(["-c:a", "aac", "-shortest", "-f", format, url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ffmpeg is installed (make deps installs it)")
}

/// Makes a live channel at the origin with the admin credential; answers
/// the origin's answer (`channel`, `stream_key`, `publish`), failing the
/// test unless it was made.
pub async fn create_channel(origin_url: &str, body: Value) -> Value {
    let r = client()
        .post(format!("{origin_url}/api/v1/admin/channels"))
        .bearer_auth(ORIGIN_ADMIN)
        .json(&body)
        .send()
        .await
        .expect("the origin answers");
    assert_eq!(r.status(), 201, "channel {body} not made");
    r.json().await.expect("a JSON answer")
}

/// Stops a child process (an encoder, a player) and reaps it.
pub fn stop_child(mut child: std::process::Child) {
    tokio::task::block_in_place(|| {
        let _ = child.kill();
        let _ = child.wait();
    });
}

/// The Python with the parsers the tests read outputs with (PyPI's `m3u8`
/// and `mpegdash`; `make test` makes it: `make py`).
pub fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `make py` (make test does) to install the m3u8 and mpegdash parsers",
        py.display()
    );
    py
}

/// The user id of a viewer's access token (`GET /api/v1/me`).
pub async fn user_id(stack: &Stack, access: &str) -> String {
    let me: Value = client()
        .get(format!("{}/api/v1/me", stack.origin_url))
        .bearer_auth(access)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("me JSON");
    me["user"]["id"]
        .as_str()
        .or(me["id"].as_str())
        .unwrap_or_else(|| panic!("a user id: {me}"))
        .to_string()
}

/// Sends a signed payment webhook of `kind` (`customer.subscription.created`,
/// `…updated`, `…deleted`) for `user`'s premium subscription, as event `id`,
/// with the origin's webhook `secret`; expects it taken.
pub async fn subscription_event(stack: &Stack, secret: &str, user: &str, kind: &str, id: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let event = serde_json::json!({
        "id": id, "type": kind, "created": now,
        "data": { "object": {
            "id": format!("sub_{user}"), "object": "subscription", "status": "active",
            "metadata": { "user_id": user, "plan": "premium" },
            "items": { "data": [ { "current_period_end": now + 30 * 86400,
                                    "price": { "lookup_key": "premium" } } ] }
        } }
    });
    let body = serde_json::to_vec(&event).expect("JSON");
    let r = client()
        .post(format!("{}/api/v1/billing/webhook", stack.origin_url))
        .header(
            "stripe-signature",
            cascade_origin::sign_webhook(&body, secret.as_bytes(), now),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(r.status(), 200, "{kind}");
}

/// Uploads `clip` with the admin credential and `query` (title, countries,
/// flags), waits for its transcode, and answers the asset id.
pub async fn ingest_with(stack: &Stack, clip: &Path, query: &[(&str, &str)]) -> String {
    let body = tokio::fs::read(clip).await.expect("the clip");
    let r: Value = client()
        .post(format!("{}/api/v1/uploads", stack.origin_url))
        .bearer_auth(ORIGIN_ADMIN)
        .query(query)
        .body(body)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("upload JSON");
    let job = wait_job(
        &stack.origin_url,
        r["job"].as_str().unwrap_or_else(|| panic!("a job: {r}")),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(job["state"], "done", "{job}");
    r["asset"].as_str().expect("an asset").to_string()
}
