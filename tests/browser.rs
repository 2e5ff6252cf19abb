//! The web page in a real browser: headless Chromium (Debian's) driven by
//! playwright-core plays a title with hls.js and with dash.js, over
//! HTTP/1.1 and then over HTTP/3. Needs `make web` (npm packages) and
//! Chromium, which `make test` installs.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_signs_up_plays_resumes_and_plays_over_http1_and_http3() {
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        std::path::Path::new(&format!("{root}/web/node_modules/playwright-core")).exists(),
        "web/node_modules is missing: run `make web` (make test does)"
    );
    let certs = tempfile::tempdir().unwrap();
    let cert = cascade_serve::tls::generate(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(certs.path().join("cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(certs.path().join("key.pem"), &cert.key_pem).unwrap();
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let stack = common::Stack::start_with(move |e| {
        e.tls_listen = "127.0.0.1:0".into();
        e.tls_cert = cert_path.display().to_string();
        e.tls_key = key_path.display().to_string();
    })
    .await;
    // Long enough to stop part-way and resume (the last 20 % counts as finished).
    let asset = common::ingest_clip(&stack, 20).await;
    let shot = stack.dir.path().join("page.png");

    // The page's sign-ups read their links from the origin's mail.
    let mail = ("CASCADE_MAIL_OUTBOX", stack.outbox.display().to_string());
    let stdout = play(&stack.edge_url, &asset, &shot, std::slice::from_ref(&mail));
    assert!(stdout.contains("protocols: {\"http/1.1\""), "{stdout}");
    // The players sent CMCD with `nor`, and the edge acted on it.
    let m = common::text(format!("{}/metrics", stack.edge_url)).await;
    let acted: u64 = ["started", "cached"]
        .iter()
        .map(|r| {
            common::metric_value(
                &m,
                &format!("cascade_edge_cmcd_prefetch_total{{result=\"{r}\"}}"),
            )
        })
        .sum();
    assert!(acted > 0, "no CMCD nor reached the edge:\n{m}");
    let invalid = common::metric_value(&m, "cascade_edge_cmcd_prefetch_total{result=\"invalid\"}");
    assert_eq!(invalid, 0, "the players' nor values were all understood");
    if let Ok(dir) = std::env::var("CASCADE_SCREENSHOT_DIR") {
        let _ = std::fs::copy(&shot, format!("{dir}/page.png"));
    }

    // The same page and title over HTTP/3: every media request over QUIC.
    // Sign up, play, pause, reload: the session survives and the title
    // resumes where it stopped.
    let line = resume(&stack.edge_url, &asset, std::slice::from_ref(&mail));
    let r: serde_json::Value = serde_json::from_str(&line["resume: ".len()..]).unwrap();
    let (before, from) = (
        r["before"].as_f64().unwrap(),
        r["resumed_from"].as_f64().unwrap(),
    );
    assert!(before >= 6.0 && (from - before).abs() <= 3.0, "{line}");

    // A title that needs the premium plan: the page says so.
    let premium = |on: bool| {
        reqwest::Client::new()
            .patch(format!("{}/api/v1/admin/titles/{asset}", stack.origin_url))
            .bearer_auth(common::ORIGIN_ADMIN)
            .json(&serde_json::json!({ "premium": on }))
            .send()
    };
    assert_eq!(premium(true).await.unwrap().status(), 200);
    let stdout = node(
        "refusal.mjs",
        &[&stack.edge_url, &asset],
        std::slice::from_ref(&mail),
    );
    assert!(
        stdout.contains("premium_required") && stdout.contains("needs the Premium plan"),
        "{stdout}"
    );
    assert_eq!(premium(false).await.unwrap().status(), 200);

    let tls = stack.edge.tls_addr.unwrap();
    let stdout = play(
        &format!("https://{tls}"),
        &asset,
        &shot,
        &[
            ("QUIC_ORIGIN", tls.to_string()),
            ("SPKI", cert.spki_sha256.clone()),
            mail,
        ],
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("protocols: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let protocols: serde_json::Value = serde_json::from_str(&line["protocols: ".len()..]).unwrap();
    let h3 = protocols["h3"].as_u64().unwrap_or(0);
    assert!(h3 > 4, "media over HTTP/3: {line}");
    assert_eq!(
        protocols.as_object().unwrap().len(),
        1,
        "nothing but HTTP/3: {line}"
    );
    let m = common::text(format!("{}/metrics", stack.edge_url)).await;
    let served: u64 = m
        .lines()
        .filter(|l| l.starts_with("cascade_requests_total") && l.contains("protocol=\"h3\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    assert!(
        served >= h3,
        "the edge counted {served} HTTP/3 requests, the browser made {h3}"
    );
    stack.shutdown().await;
}

/// Runs a script of `web/tests` with node; answers its stdout, or fails
/// with its output (kept short: a failing page can print a lot).
fn node(script: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let script = format!("{}/web/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::block_in_place(|| {
        let mut cmd = Command::new("node");
        cmd.arg(&script).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output()
            .expect("node is installed (make test installs it)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr: String = String::from_utf8_lossy(&out.stderr)
        .chars()
        .take(4000)
        .collect();
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Plays HLS then DASH with `web/tests/play.mjs`; answers its output.
fn play(base: &str, asset: &str, shot: &std::path::Path, env: &[(&str, String)]) -> String {
    let stdout = node("play.mjs", &[base, asset, &shot.display().to_string()], env);
    assert!(
        stdout.contains("hls: played") && stdout.contains("dash: played"),
        "{stdout}"
    );
    stdout
}

/// Runs `web/tests/resume.mjs`; answers its `resume: {…}` line.
fn resume(base: &str, asset: &str, env: &[(&str, String)]) -> String {
    let stdout = node("resume.mjs", &[base, asset], env);
    stdout
        .lines()
        .find(|l| l.starts_with("resume: "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_channels_play_in_chromium_with_hls_js_dash_js_and_shaka() {
    let stack = common::Stack::start_full(
        |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.srt_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![cascade_origin::config::Rung {
                height: 180,
                kbps: 300,
            }];
            o.live_preset = "ultrafast".into();
        },
        |_| {},
    )
    .await;
    let mut encoders = Vec::new();
    for (name, format) in [("pitch", "flv"), ("stadium", "mpegts")] {
        let made =
            common::create_channel(&stack.origin_url, serde_json::json!({ "name": name })).await;
        let key = made["stream_key"].as_str().unwrap();
        let url = if format == "flv" {
            format!("rtmp://{}/live/{key}", stack.origin.rtmp_addr.unwrap())
        } else {
            format!(
                "srt://{}?streamid=publish:{key}",
                stack.origin.srt_addr.unwrap()
            )
        };
        encoders.push(common::ffmpeg_publish(
            &url, format, "640x360", 300, "libx264",
        ));
    }
    let mail = ("CASCADE_MAIL_OUTBOX", stack.outbox.display().to_string());
    for name in ["pitch", "stadium"] {
        let stdout = node(
            "live.mjs",
            &[&stack.edge_url, name],
            std::slice::from_ref(&mail),
        );
        for want in [
            "hls: played",
            "dash: played",
            "go live:",
            "shaka hls:",
            "shaka dash:",
        ] {
            assert!(stdout.contains(want), "{name}: {want} missing:\n{stdout}");
        }
        println!("{name}:\n{stdout}");
    }
    for e in encoders {
        common::stop_child(e);
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watching_together_in_chromium_flashes_comments_reactions_and_a_dropped_connection() {
    // The events listener's port is chosen first: the origin names it in
    // playback answers before the edge is up.
    let events_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bus = format!("memory://browser-{events_port}");
    let stack = common::Stack::start_full(
        |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![cascade_origin::config::Rung {
                height: 180,
                kbps: 300,
            }];
            o.live_preset = "ultrafast".into();
            o.nats_url = bus.clone();
            o.public_events_url = format!("http://127.0.0.1:{events_port}");
        },
        |e| {
            e.nats_url = bus.clone();
            e.events_listen = format!("127.0.0.1:{events_port}");
        },
    )
    .await;
    let name = "final";
    let made = common::create_channel(&stack.origin_url, serde_json::json!({ "name": name })).await;
    let key = made["stream_key"].as_str().unwrap();
    let encoder = common::ffmpeg_publish(
        &format!("rtmp://{}/live/{key}", stack.origin.rtmp_addr.unwrap()),
        "flv",
        "640x360",
        300,
        "libx264",
    );
    let mail = ("CASCADE_MAIL_OUTBOX", stack.outbox.display().to_string());
    let stdout = node(
        "together.mjs",
        &[&stack.edge_url, name],
        &[
            mail,
            ("ORIGIN", stack.origin_url.clone()),
            ("ADMIN_TOKEN", common::ORIGIN_ADMIN.to_string()),
        ],
    );
    for want in [
        "flash banner: shown",
        "flash in HLS:",
        "comment: shown",
        "reactions: swarm",
        "reconnect: resumed",
        "flash in DASH:",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    println!("{stdout}");

    // The same flash, read from a live media playlist by PyPI's m3u8.
    let r = common::client()
        .post(format!("{}/api/v1/admin/flashes", stack.origin_url))
        .bearer_auth(common::ORIGIN_ADMIN)
        .json(&serde_json::json!({ "text": "Play resumes at 4 pm", "channel": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let f: serde_json::Value = r.json().await.unwrap();
    let token = common::sign_acl(&format!("/live/{name}/*"));
    let url = format!("{}/live/{name}/v0.m3u8?__token__={token}", stack.edge_url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = tokio::task::block_in_place(|| {
            Command::new(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python"),
            )
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flash_check.py"))
            .args([&url, f["id"].as_str().unwrap(), "Play resumes at 4 pm"])
            .output()
            .expect("make py installs the m3u8 parser")
        });
        if out.status.success() {
            println!("{}", String::from_utf8_lossy(&out.stdout));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flash_check.py: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    common::stop_child(encoder);
    stack.shutdown().await;
}
