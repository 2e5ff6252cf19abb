//! The partner token API in control, and edges honouring partner tokens.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cascade_control::ControlConfig;
use common::{client, Stack};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-0123456789";
const FLEET: &str = "fleet-secret-0123456789";

async fn start_control(dir: &std::path::Path, edge_url: &str) -> cascade_control::Control {
    cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.join("control").to_str().unwrap().into(),
        admin_token: ADMIN.into(),
        fleet_token: FLEET.into(),
        public_edge_url: edge_url.into(),
        ..ControlConfig::default()
    })
    .await
    .unwrap()
}

/// Runs `cascade ctl …` against control; returns stdout.
fn ctl(control: &str, token_file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args([
            "ctl",
            "--control",
            control,
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn mint(control: &str, api_key: &str, body: Value) -> (u16, Value, Option<String>) {
    let r = client()
        .post(format!("{control}/api/v1/tokens"))
        .bearer_auth(api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or_default(), retry)
}

/// Polls a URL until it answers `want`, as edges refresh partner keys every second.
async fn eventually_status(url: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = client().get(url).send().await.unwrap().status().as_u16();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} kept answering {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partners_mint_tokens_that_edges_accept() {
    let dir = tempfile::tempdir().unwrap();
    // Control first (on port 0), then the stack whose edge polls it.
    let control = start_control(dir.path(), "http://edge.invalid").await;
    let control_url = format!("http://{}", control.addr);
    let cu = control_url.clone();
    let stack = Stack::start_with(move |e| {
        e.control_url = cu;
        e.fleet_token = FLEET.into();
        e.partner_refresh_secs = 1;
    })
    .await;
    let asset = common::ingest_clip(&stack, 2).await;
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).unwrap();

    // The CLI creates a partner scoped to this title and prints its API key once.
    let out = tokio::task::block_in_place(|| {
        ctl(
            &control_url,
            &token_file,
            &[
                "partner",
                "add",
                "acme",
                "--scope",
                &format!("/vod/{asset}/*"),
                "--max-ttl",
                "10m",
                "--rate",
                "5",
            ],
        )
    });
    let api_key = out
        .lines()
        .find_map(|l| l.strip_prefix("api key (shown once): "))
        .unwrap()
        .to_string();
    let listed =
        tokio::task::block_in_place(|| ctl(&control_url, &token_file, &["partner", "list"]));
    assert!(
        listed.contains("acme") && listed.contains("active"),
        "{listed}"
    );

    // A token for the title: the edge plays it once it has learnt the partner's key.
    let (status, body, _) = mint(
        &control_url,
        &api_key,
        json!({ "acl": [format!("/vod/{asset}/*")], "ttl_secs": 999_999 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let now = cascade_serve::unix_now();
    assert!(
        body["expires"].as_u64().unwrap() <= now + 600,
        "TTL capped at the partner's max: {body}"
    );
    let hls = body["hls"]
        .as_str()
        .unwrap()
        .replace("http://edge.invalid", &stack.edge_url);
    assert!(body["dash"]
        .as_str()
        .unwrap()
        .contains("/manifest.mpd?__token__="));
    eventually_status(&hls, 200).await;

    // Outside the scope, a bad key, no key: refused.
    assert_eq!(
        mint(&control_url, &api_key, json!({ "acl": ["/vod/*"] }))
            .await
            .0,
        403
    );
    assert_eq!(
        mint(
            &control_url,
            &api_key,
            json!({ "url": "/vod/other/master.m3u8" })
        )
        .await
        .0,
        403
    );
    assert_eq!(
        mint(
            &control_url,
            "cpk_wrong",
            json!({ "acl": [format!("/vod/{asset}/*")] })
        )
        .await
        .0,
        401
    );
    let r = client()
        .post(format!("{control_url}/api/v1/tokens"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Bad bodies: a clear 400, not a crash.
    assert_eq!(
        mint(&control_url, &api_key, json!({ "acl": ["no-slash"] }))
            .await
            .0,
        400
    );

    // The rate limit (5 a minute; four counted calls above) soon answers 429
    // with Retry-After. Unauthenticated calls do not count against it.
    let mut allowed = 0;
    let retry = loop {
        let (status, _, retry) = mint(
            &control_url,
            &api_key,
            json!({ "acl": [format!("/vod/{asset}/*")] }),
        )
        .await;
        match status {
            200 => allowed += 1,
            429 => break retry,
            other => panic!("unexpected {other}"),
        }
        assert!(allowed <= 2, "the limit of 5 a minute did not apply");
    };
    assert!(allowed >= 1);
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);

    // The admin API needs its credential.
    let r = client()
        .get(format!("{control_url}/api/v1/partners"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{control_url}/api/v1/fleet/partners"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Rotation: the new API key works, the old one does not; tokens already
    // issued (old signing key) keep playing.
    let out = tokio::task::block_in_place(|| {
        ctl(&control_url, &token_file, &["partner", "rotate", "acme"])
    });
    let new_key = out
        .lines()
        .find_map(|l| l.strip_prefix("api key (shown once): "))
        .unwrap()
        .to_string();
    assert_ne!(new_key, api_key);
    assert_eq!(
        mint(
            &control_url,
            &api_key,
            json!({ "acl": [format!("/vod/{asset}/*")] })
        )
        .await
        .0,
        401
    );
    assert_eq!(client().get(&hls).send().await.unwrap().status(), 200);

    // Revocation: the API key stops, and edges refuse the partner's tokens.
    tokio::task::block_in_place(|| ctl(&control_url, &token_file, &["partner", "revoke", "acme"]));
    assert_eq!(
        mint(
            &control_url,
            &new_key,
            json!({ "acl": [format!("/vod/{asset}/*")] })
        )
        .await
        .0,
        401
    );
    eventually_status(&hls, 403).await;

    stack.shutdown().await;
    control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_token_api() {
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(dir.path(), "http://127.0.0.1:8080").await;
    let doc: Value = client()
        .get(format!("http://{}/api/v1/openapi.json", control.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let post = &doc["paths"]["/api/v1/tokens"]["post"];
    for code in ["200", "401", "403", "429"] {
        assert!(post["responses"][code].is_object(), "{code} documented");
    }
    assert!(doc["components"]["schemas"]["TokenRequest"]["properties"]["acl"].is_object());
    assert!(doc["components"]["securitySchemes"]["partner_key"].is_object());
    control.shutdown().await;
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_are_sealed_at_rest_and_revoked_ones_leave_the_disk() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(dir.path(), "http://edge.invalid").await;
    let url = format!("http://{}", control.addr);
    let http = client();
    let r: Value = http
        .post(format!("{url}/api/v1/partners"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "acme", "scope": ["/vod/*"], "include_signing_key": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = r["signing_key"]["key"]
        .as_str()
        .expect("the signing key")
        .to_string();
    assert_eq!(key.len(), 64, "{r}");
    let data = dir.path().join("control");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory is the owner's");
    for name in ["control.db", "control-kek"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    // The key is nowhere on disk in clear: database, WAL or anything else.
    let kek = std::fs::read_to_string(data.join("control-kek")).unwrap();
    for f in files(&data) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&key),
            "{} holds the key in clear",
            f.display()
        );
        if !f.ends_with("control-kek") {
            assert!(!text.contains(kek.trim()), "{} holds the KEK", f.display());
        }
    }
    // Edges still get it, opened.
    let fleet: Value = http
        .get(format!("{url}/api/v1/fleet/partners"))
        .bearer_auth(FLEET)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fleet["partners"][0]["keys"][0]["key"], key.as_str());
    // Revoked: the keys are deleted and the WAL checkpointed empty.
    let r = http
        .post(format!("{url}/api/v1/partners/acme/revoke"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let wal = data.join("control.db-wal");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
    // A control started on the same data with another KEK cannot open the
    // keys it holds: it refuses to start rather than hand edges garbage.
    let r = http
        .post(format!("{url}/api/v1/partners"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "beta", "scope": ["/vod/*"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    control.shutdown().await;
    let other = dir.path().join("other-kek");
    std::fs::write(&other, "11".repeat(32)).unwrap();
    let with_kek = |kek: String| ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: data.to_str().unwrap().into(),
        admin_token: ADMIN.into(),
        fleet_token: FLEET.into(),
        key_encryption_key_file: kek,
        ..ControlConfig::default()
    };
    let refused = cascade_control::start(&with_kek(other.to_str().unwrap().into())).await;
    let why = refused.err().expect("refused").to_string();
    assert!(why.contains("key-encryption key"), "{why}");
    let control = cascade_control::start(&with_kek(String::new()))
        .await
        .unwrap();
    control.shutdown().await;
}
