//! Full stack: upload → transcode → origin → shield → edge → an independent
//! player (the FFmpeg CLI).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{client, make_clip, upload, wait_job, Stack};

/// Decodes every stream of a URL to the end; returns FFmpeg's complaints.
fn ffmpeg_decode(url: &str) -> Result<(), String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", url, "-map", "0", "-f", "null", "-"])
        .output()
        .expect("the ffmpeg CLI is installed");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("ffmpeg failed on {url}: {stderr}"))
    }
}

/// Every URL a player of this title would fetch, from the playlists
/// themselves, starting from the signed master and MPD URLs.
async fn title_urls(edge: &str, asset: &str, hls: &str, dash: &str) -> Vec<String> {
    let base = format!("{edge}/vod/{asset}");
    let mut urls = vec![hls.to_string(), dash.to_string()];
    let master = common::text(&urls[0]).await;
    let mut playlists: Vec<String> = master
        .lines()
        .filter(|l| l.contains(".m3u8") && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for line in master.lines().filter(|l| l.starts_with("#EXT-X-MEDIA")) {
        let uri = line
            .split("URI=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        playlists.push(uri.to_string());
    }
    assert!(playlists.len() >= 3, "two video rungs and audio: {master}");
    for p in playlists {
        let url = format!("{base}/{p}");
        let text = common::text(&url).await;
        urls.push(url);
        for line in text.lines() {
            if let Some(map) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
                urls.push(format!("{base}/{}", map.trim_end_matches('"')));
            } else if !line.starts_with('#') && !line.is_empty() {
                urls.push(format!("{base}/{line}"));
            }
        }
    }
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_to_playback_through_every_tier() {
    let stack = Stack::start().await;
    let asset = common::ingest_clip(&stack, 4).await;
    // Only the master URLs carry the token; the packager writes it into every child URL.
    let (hls, dash, token) = common::playback(&stack, &asset).await;

    // First pass: the FFmpeg CLI plays everything (every rendition of HLS and DASH).
    let urls = title_urls(&stack.edge_url, &asset, &hls, &dash).await;
    assert!(
        urls.iter()
            .all(|u| u.contains(&format!("__token__={token}"))),
        "{urls:?}"
    );
    let decode_all = |urls: &[String]| {
        let mut targets = vec![hls.clone(), dash.clone()];
        targets.extend(urls.iter().filter(|u| u.contains(".m3u8")).cloned());
        for t in targets {
            ffmpeg_decode(&t).unwrap();
        }
    };
    tokio::task::block_in_place(|| decode_all(&urls));
    let (served_first, repeats) = stack.origin.mezzanine_bytes();
    assert!(served_first > 0, "the origin served the mezzanine");
    assert_eq!(repeats, 0, "the origin served some mezzanine bytes twice");

    // Second pass: every URL is an edge hit, and the origin serves nothing more.
    let misses_before = stack.edge.metrics.requests_with_cache("miss");
    for url in &urls {
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let cs = r.headers()["cache-status"].to_str().unwrap().to_string();
        assert!(cs.starts_with("cascade-edge; hit"), "{url}: {cs}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
    }
    tokio::task::block_in_place(|| decode_all(&urls));
    assert_eq!(
        stack.edge.metrics.requests_with_cache("miss"),
        misses_before,
        "second pass had edge misses"
    );
    assert_eq!(
        stack.origin.mezzanine_bytes(),
        (served_first, 0),
        "origin served mezzanine again"
    );

    // HLS and DASH share segment URLs: one cached copy for both.
    let mpd = common::text(&dash).await;
    assert!(
        mpd.contains(&format!(
            "media=\"$RepresentationID$/$Number$.m4s?__token__={token}\""
        )),
        "{mpd}"
    );
    assert!(urls.iter().any(|u| u.contains("/v0/1.m4s?")));

    // Unknown segments and tracks are 404s, not crashes.
    let t = format!("?__token__={token}");
    for bad in [
        format!("/vod/{asset}/v0/999.m4s{t}"),
        format!("/vod/{asset}/v9.m3u8{t}"),
    ] {
        let r = client()
            .get(format!("{}{bad}", stack.edge_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }

    // A caller's request id is kept (and passed upstream); a bad one is replaced.
    let r = client()
        .get(&hls)
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-123");
    let r = client()
        .get(&hls)
        .header("x-request-id", "bad id!")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id!");

    // The origin's mezzanine carries a validator, and a shield revalidating
    // the asset manifest (stale every minute) gets a 304, not the bytes again.
    let manifest_url = format!("{}/mezz/{asset}/manifest.json", stack.origin_url);
    let r = client().get(&manifest_url).send().await.unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let r = client()
        .get(&manifest_url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = client()
        .get(&manifest_url)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Health and metrics on every role.
    for base in [
        &stack.edge_url,
        &format!("http://{}", stack.shield.addr),
        &stack.origin_url,
    ] {
        assert_eq!(
            client()
                .get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let m = common::text(format!("{base}/metrics")).await;
        assert!(m.contains("cascade_"), "{base}/metrics: {m}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_file_is_a_failed_job_and_the_origin_keeps_serving() {
    let stack = Stack::start().await;
    let fake = stack.dir.path().join("not-a-video.mp4");
    std::fs::write(&fake, "this is a text file, not a video\n".repeat(100)).unwrap();
    let (status, answer) = upload(&stack.origin_url, &fake, "Fake").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["status"], "failed");
    let reason = answer["message"].as_str().unwrap();
    assert!(
        reason.contains("Invalid data"),
        "FFmpeg's reason is passed on: {reason}"
    );
    let job = wait_job(
        &stack.origin_url,
        answer["job"].as_str().unwrap(),
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"], reason);

    // Never half-published: the asset is failed and its media does not exist.
    let asset = answer["asset"].as_str().unwrap();
    let a: serde_json::Value = client()
        .get(format!("{}/api/v1/assets/{asset}", stack.origin_url))
        .bearer_auth(common::ORIGIN_ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["status"], "failed");
    // Without the admin credential, a failed asset and its FFmpeg error
    // are not shown, in the list or by id.
    let r = client()
        .get(format!("{}/api/v1/assets/{asset}", stack.origin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list: serde_json::Value = client()
        .get(format!("{}/api/v1/assets", stack.origin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = list["assets"].as_array().unwrap();
    assert!(shown.iter().all(|a| a["id"] != asset), "{list}");
    assert!(shown
        .iter()
        .all(|a| a.get("error").is_none() && a.get("geo").is_none()));
    let token = common::sign_for(asset);
    let r = client()
        .get(format!(
            "{}/vod/{asset}/master.m3u8?__token__={token}",
            stack.edge_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // And the playback API will not sign for it.
    let viewer = common::viewer(&stack.origin_url, &stack.outbox).await;
    let r = client()
        .post(format!("{}/api/v1/playback/{asset}", stack.origin_url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // An empty upload is refused outright.
    let empty = stack.dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(upload(&stack.origin_url, &empty, "Empty").await.0, 400);
    // Uploads publish titles: without the admin credential, none.
    let r = client()
        .post(format!("{}/api/v1/uploads?title=Sneaky", stack.origin_url))
        .body(std::fs::read(&empty).unwrap_or_default())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The origin still serves, and still transcodes a real file.
    assert_eq!(
        client()
            .get(format!("{}/healthz", stack.origin_url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let clip = make_clip(stack.dir.path(), 2);
    let (status, answer) = upload(&stack.origin_url, &clip, "Real").await;
    assert_eq!(status, 202, "{answer}");
    let job = wait_job(
        &stack.origin_url,
        answer["job"].as_str().unwrap(),
        std::time::Duration::from_secs(120),
    )
    .await;
    assert_eq!(job["state"], "done", "{job}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_command_follows_the_job_and_prints_urls() {
    let stack = Stack::start().await;
    let clip = make_clip(stack.dir.path(), 2);
    let bin = env!("CARGO_BIN_EXE_cascade");
    let out = tokio::task::block_in_place(|| {
        Command::new(bin)
            .args([
                "ingest",
                clip.to_str().unwrap(),
                "--title",
                "From the CLI",
                "--origin",
                &stack.origin_url,
            ])
            .env("CASCADE_ORIGIN_ADMIN_TOKEN", common::ORIGIN_ADMIN)
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("From the CLI is playable"), "{stdout}");
    let hls = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("HLS  "))
        .expect("an HLS URL");
    // Signing needs a viewer's login (or the operator's key): the command
    // prints the URL and says how to get a token.
    assert!(hls.ends_with("/master.m3u8"), "{hls}");
    assert!(stdout.contains("media needs a token"), "{stdout}");

    // A wrong credential with a file of 20 MB: the origin's reason every
    // time, never a broken pipe (the origin reads the body it refuses).
    let big = stack.dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 20 << 20]).unwrap();
    for attempt in 0..3 {
        let out = tokio::task::block_in_place(|| {
            Command::new(bin)
                .args([
                    "ingest",
                    big.to_str().unwrap(),
                    "--title",
                    "Nope",
                    "--origin",
                    &stack.origin_url,
                ])
                .env("CASCADE_ORIGIN_ADMIN_TOKEN", "not-the-credential")
                .output()
                .unwrap()
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("401") && stderr.contains("admin credential"),
            "attempt {attempt}: {stderr}"
        );
    }

    // Bad input to the CLI: a clear error and a failing exit code.
    let out = tokio::task::block_in_place(|| {
        Command::new(bin)
            .args(["ingest", "/no/such/file.mp4", "--origin", &stack.origin_url])
            .env("CASCADE_ORIGIN_ADMIN_TOKEN", common::ORIGIN_ADMIN)
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("opening /no/such/file.mp4"));
    let text = stack.dir.path().join("notes.mp4");
    std::fs::write(&text, "not a video").unwrap();
    let out = tokio::task::block_in_place(|| {
        Command::new(bin)
            .args([
                "ingest",
                text.to_str().unwrap(),
                "--origin",
                &stack.origin_url,
            ])
            .env("CASCADE_ORIGIN_ADMIN_TOKEN", common::ORIGIN_ADMIN)
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the upload") && err.contains("Invalid data"),
        "{err}"
    );
    stack.shutdown().await;
}

#[test]
fn a_bad_role_config_lists_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edge.toml");
    std::fs::write(&cfg, "listen = \"nowhere\"\ncache_memory_mib = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["edge", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 error(s)") && err.contains("listen:") && err.contains("cache_memory_mib:"),
        "{err}"
    );
}
