//! `cascade live`: channels made, listed, rotated and stopped through the
//! origin's admin API, as an operator runs it.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

fn live(origin: &str, admin: &str, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_cascade");
    tokio::task::block_in_place(|| {
        Command::new(bin)
            .arg("live")
            .args(args)
            .args(["--origin", origin])
            .env("CASCADE_ORIGIN_ADMIN_TOKEN", admin)
            .output()
            .unwrap()
    })
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_command_makes_rotates_and_stops_channels() {
    let dir = tempfile::tempdir().unwrap();
    let origin = cascade_origin::start(&common::origin_config(dir.path().to_str().unwrap()))
        .await
        .unwrap();
    let url = format!("http://{}", origin.addr);
    let admin = common::ORIGIN_ADMIN;

    // Create prints, one per line: RTMP and SRT publish URLs (with the
    // key), then the HLS and DASH playback URLs.
    let out = live(
        &url,
        admin,
        &[
            "create",
            "final",
            "--premium",
            "--allow-countries",
            "IN,NP",
            "--dvr-minutes",
            "30",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("rtmp://127.0.0.1:1935/live/final."),
        "{text}"
    );
    let key = lines[0].rsplit('/').next().unwrap();
    assert_eq!(
        lines[1],
        format!("srt://127.0.0.1:8890?streamid=publish:{key}")
    );
    assert!(lines[2].starts_with("http://") && lines[2].ends_with("/master.m3u8"));
    assert!(lines[3].ends_with("/manifest.mpd"));
    assert!(stderr(&out).contains("shown only now"));

    // List and status show the channel, never its key.
    let out = live(&url, admin, &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("final "), "{}", stdout(&out));
    let out = live(&url, admin, &["status", "final"]);
    let status = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for want in [
        "state            idle",
        "premium          true",
        "allow_countries  IN,NP",
        "dvr_minutes      30",
    ] {
        assert!(status.contains(want), "{want}: {status}");
    }
    let secret = key.split_once('.').unwrap().1;
    assert!(!status.contains(secret));

    // A new key, printed as the two publish URLs.
    let out = live(&url, admin, &["rotate-key", "final"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rotated = stdout(&out);
    assert_eq!(rotated.lines().count(), 2, "{rotated}");
    assert!(!rotated.contains(secret));
    let status = stdout(&live(&url, admin, &["status", "final"]));
    assert!(status.contains("key_version      2"), "{status}");

    // Stop.
    let out = live(&url, admin, &["stop", "final"]);
    assert_eq!(stdout(&out).trim(), "final stopped");

    // Bad input and a wrong credential: the origin's reason, a failure.
    for (args, want) in [
        (vec!["create", "final"], "name_taken"),
        (vec!["create", "Bad_Name"], "bad_name"),
        (vec!["status", "nope"], "404"),
    ] {
        let out = live(&url, admin, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = live(&url, "not-the-credential", &["list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    let out = live(&url, admin, &["create", "x", "--dvr-minutes", "5000"]);
    assert!(
        !out.status.success(),
        "clap refuses an out-of-range DVR window"
    );

    origin.shutdown().await;
}
