//! The web page in a real browser: headless Chromium (Debian's) driven by
//! playwright-core plays a title with hls.js and with dash.js. Needs
//! `make web` (npm packages) and Chromium, which `make test` installs.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_plays_hls_and_dash_in_chromium() {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = format!("{root}/web/tests/play.mjs");
    assert!(
        std::path::Path::new(&format!("{root}/web/node_modules/playwright-core")).exists(),
        "web/node_modules is missing: run `make web` (make test does)"
    );
    let stack = common::Stack::start().await;
    let asset = common::ingest_clip(&stack, 8).await;
    let shot = stack.dir.path().join("page.png");
    let out = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg(&script)
            .arg(&stack.edge_url)
            .arg(&asset)
            .arg(&shot)
            .output()
            .expect("node is installed (make test installs it)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser playback failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("hls: played") && stdout.contains("dash: played"),
        "{stdout}"
    );
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
    stack.shutdown().await;
}
