//! Token enforcement at a real edge: every rejection reason, every carrier,
//! path tricks, open paths, IP binding and key rotation.

#![allow(clippy::unwrap_used)]

mod common;

use cascade_token::{sign, Claims, Key};
use common::{client, test_key, Stack, TEST_KEY_HEX};

fn now() -> u64 {
    cascade_serve::unix_now()
}

fn key() -> Key {
    Key::from_hex("test", TEST_KEY_HEX).unwrap()
}

fn acl_token(acl: &str) -> String {
    sign(
        &key(),
        &Claims {
            expires: now() + 600,
            acl: vec![acl.into()],
            ..Claims::default()
        },
    )
}

/// The same token with the last hex digits of its MAC changed.
fn tampered_mac(good: &str) -> String {
    let tail = if good.ends_with("beef") {
        "dead"
    } else {
        "beef"
    };
    format!("{}{tail}", &good[..good.len() - 4])
}

/// Status and reason (from the JSON body) of a GET with the token in a carrier.
async fn get(edge: &str, path: &str, token: Option<&str>, carrier: &str) -> (u16, String) {
    let mut url = format!("{edge}{path}");
    let mut req = client().get(&url);
    if let Some(t) = token {
        match carrier {
            "query" => {
                url.push_str(&format!("?__token__={t}"));
                req = client().get(&url);
            }
            "cookie" => req = req.header("cookie", format!("other=1; __token__={t}")),
            "header" => req = req.header("__token__", t),
            _ => unreachable!(),
        }
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["reason"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_by_every_carrier() {
    let stack = Stack::start().await;
    let edge = &stack.edge_url;
    let path = "/vod/abc/master.m3u8";
    let t = now();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some("exp=soon~hmac=00".into())),
        (
            "bad_signature",
            Some(tampered_mac(&acl_token("/vod/abc/*"))),
        ),
        (
            "expired",
            Some(sign(
                &key(),
                &Claims {
                    expires: t - 3600,
                    acl: vec!["/vod/abc/*".into()],
                    ..Claims::default()
                },
            )),
        ),
        (
            "not_yet_valid",
            Some(sign(
                &key(),
                &Claims {
                    start: Some(t + 3600),
                    expires: t + 7200,
                    acl: vec!["/vod/abc/*".into()],
                    ..Claims::default()
                },
            )),
        ),
        ("acl_mismatch", Some(acl_token("/vod/other/*"))),
        (
            "ip_mismatch",
            Some(sign(
                &key(),
                &Claims {
                    ip: Some("192.0.2.7".into()),
                    expires: t + 600,
                    acl: vec!["/vod/abc/*".into()],
                    ..Claims::default()
                },
            )),
        ),
        (
            "unknown_key",
            Some(sign(
                &key(),
                &Claims {
                    expires: t + 600,
                    acl: vec!["/vod/abc/*".into()],
                    data: Some("kid=nobody".into()),
                    ..Claims::default()
                },
            )),
        ),
    ];
    for carrier in ["query", "cookie", "header"] {
        for (reason, token) in &cases {
            let (status, got) = get(edge, path, token.as_deref(), carrier).await;
            assert_eq!(
                (status, got.as_str()),
                (403, *reason),
                "{carrier}: {token:?}"
            );
        }
        // A good token passes the check (the title does not exist: 404).
        let (status, _) = get(edge, path, Some(&acl_token("/vod/abc/*")), carrier).await;
        assert_eq!(status, 404, "{carrier}");
    }
    // The 403 body names the reason and nothing of the key or the MAC.
    let bad = acl_token("/vod/other/*");
    let body = common::text(format!("{edge}{path}?__token__={bad}")).await;
    assert_eq!(
        body.trim(),
        "{\"error\":\"token\",\"reason\":\"acl_mismatch\"}"
    );
    // Each reason is counted.
    let metrics = common::text(format!("{edge}/metrics")).await;
    for (reason, _) in &cases {
        let line = format!("cascade_edge_token_rejections_total{{reason=\"{reason}\"}}");
        let n = common::metric_value(&metrics, &line);
        assert!(n >= 3, "{reason}: {n}");
    }
    assert!(metrics.contains("cascade_edge_token_accepted_total{kid=\"test\"}"));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_slip_past_the_acl() {
    let stack = Stack::start().await;
    let edge = &stack.edge_url;
    let token = acl_token("/vod/a/*");
    // Inside: passes (404: no such title).
    assert_eq!(
        get(edge, "/vod/a/master.m3u8", Some(&token), "query")
            .await
            .0,
        404
    );
    // Refused as unacceptable paths.
    for p in [
        "/vod/a/../b/master.m3u8",
        "/vod/a/%2e%2e/b/master.m3u8",
        "/vod/a/%2E%2E/b/master.m3u8",
        "/vod/a%2fb/master.m3u8",
        "/vod/a/.%2e/b/master.m3u8",
        "/vod//a/master.m3u8",
        "/vod/a/%5c../b",
    ] {
        let (status, _) = get(edge, p, Some(&token), "query").await;
        assert!(status == 400 || status == 403, "{p}: {status}");
        assert_ne!(status, 404, "{p} reached the cache");
    }
    // Sharing a prefix string is not being inside the ACL.
    assert_eq!(
        get(edge, "/vod/ab/master.m3u8", Some(&token), "query").await,
        (403, "acl_mismatch".into())
    );
    // Encoded plain characters are decoded before the check.
    assert_eq!(
        get(edge, "/vod/%61/master.m3u8", Some(&token), "query")
            .await
            .0,
        404
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_paths_and_ip_binding() {
    let stack = Stack::start().await;
    let edge = &stack.edge_url;
    assert_eq!(
        client()
            .get(format!("{edge}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{edge}/api/v1/assets"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{edge}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Anything not listed as open needs a token, not only /vod/.
    assert_eq!(
        get(edge, "/secret.txt", None, "query").await,
        (403, "missing".into())
    );
    // Bound to this client's address (the test connects from 127.0.0.1).
    let bound = |ip: &str| {
        sign(
            &key(),
            &Claims {
                ip: Some(ip.into()),
                expires: now() + 600,
                acl: vec!["/vod/x/*".into()],
                ..Claims::default()
            },
        )
    };
    assert_eq!(
        get(
            edge,
            "/vod/x/master.m3u8",
            Some(&bound("127.0.0.1")),
            "query"
        )
        .await
        .0,
        404
    );
    assert_eq!(
        get(
            edge,
            "/vod/x/master.m3u8",
            Some(&bound("127.0.0.2")),
            "query"
        )
        .await,
        (403, "ip_mismatch".into())
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_without_viewer_failure() {
    const NEW: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let new_key = Key::from_hex("new", NEW).unwrap();
    let old_token = acl_token("/vod/x/*");
    let new_token = sign(
        &new_key,
        &Claims {
            expires: now() + 600,
            acl: vec!["/vod/x/*".into()],
            ..Claims::default()
        },
    );
    // Overlap: both keys configured, both tokens accepted.
    let both = Stack::start_with(|e| {
        e.token_keys = vec![test_key("new", NEW), test_key("test", TEST_KEY_HEX)]
    })
    .await;
    assert_eq!(
        get(
            &both.edge_url,
            "/vod/x/master.m3u8",
            Some(&old_token),
            "query"
        )
        .await
        .0,
        404
    );
    assert_eq!(
        get(
            &both.edge_url,
            "/vod/x/master.m3u8",
            Some(&new_token),
            "query"
        )
        .await
        .0,
        404
    );
    let m = common::text(format!("{}/metrics", both.edge_url)).await;
    assert!(
        m.contains("kid=\"new\"") && m.contains("kid=\"test\""),
        "which key matched is counted"
    );
    both.shutdown().await;
    // After removal of the old key: old tokens are refused, new ones pass.
    let new_only = Stack::start_with(|e| e.token_keys = vec![test_key("new", NEW)]).await;
    assert_eq!(
        get(
            &new_only.edge_url,
            "/vod/x/master.m3u8",
            Some(&old_token),
            "query"
        )
        .await,
        (403, "bad_signature".into())
    );
    assert_eq!(
        get(
            &new_only.edge_url,
            "/vod/x/master.m3u8",
            Some(&new_token),
            "query"
        )
        .await
        .0,
        404
    );
    new_only.shutdown().await;
}

#[test]
fn the_token_command_signs_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("test:{TEST_KEY_HEX}\n")).unwrap();
    let bin = env!("CARGO_BIN_EXE_cascade");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let out = run(&[
        "token",
        "sign",
        "--acl",
        "/vod/abc/*",
        "--ttl",
        "600",
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // What the CLI signs, the edge's verifier accepts.
    let v = cascade_token::Verifier {
        cdn_keys: vec![key()],
        ..Default::default()
    };
    assert!(v
        .verify(&token, "/vod/abc/master.m3u8", None, now())
        .is_ok());
    let ok = run(&[
        "token",
        "verify",
        &token,
        "--path",
        "/vod/abc/v0.m3u8",
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("verdict: valid (key test"));
    let bad = run(&[
        "token",
        "verify",
        &token,
        "--path",
        "/vod/abd/v0.m3u8",
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rejected (acl_mismatch)"));
    // Bad flags are clear errors.
    let out = run(&[
        "token",
        "sign",
        "--acl",
        "/x/*",
        "--algo",
        "sha512",
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--algo"));
    let out = run(&["token", "sign", "--acl", "/x/*"]);
    assert!(!out.status.success());
}
