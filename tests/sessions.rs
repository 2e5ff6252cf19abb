//! Media tokens are bound to their playback session: when the stream ends
//! (stopped, replaced by the same device, or quiet past its slot time),
//! every edge refuses its URLs within seconds, while a live stream plays on.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, Stack};
use serde_json::{json, Value};

/// Starts playback of `asset` on `device`; answers the API's answer.
async fn play(stack: &Stack, access: &str, asset: &str, device: &str) -> Value {
    let r = client()
        .post(format!("{}/api/v1/playback/{asset}", stack.origin_url))
        .bearer_auth(access)
        .json(&json!({ "device_id": device }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut v: Value = r.json().await.unwrap();
    v["test_edge"] = json!(stack.edge_url);
    v
}

/// Status and token-refusal reason of a GET of the session's master
/// playlist, at the test's edge.
async fn fetch(answer: &Value) -> (u16, String) {
    let url = answer["hls"].as_str().unwrap();
    let path = &url[url.find("/vod/").unwrap()..];
    let edge = answer["test_edge"].as_str().unwrap();
    let r = client().get(format!("{edge}{path}")).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    (status, body["reason"].as_str().unwrap_or("").to_string())
}

/// Waits until `answer`'s URLs are refused as revoked, checking at each
/// step that `live` (if any) still plays.
async fn until_revoked(answer: &Value, live: Option<&Value>) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(live) = live {
            assert_eq!(fetch(live).await.0, 200, "a live stream keeps playing");
        }
        match fetch(answer).await {
            (403, reason) if reason == "revoked" => return started.elapsed(),
            (200, _) => {}
            other => panic!("unexpected answer {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the ended session's URLs still play"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_session_stops_playing_at_the_edge_and_a_live_one_plays_on() {
    let stack = Stack::start_full(
        |o| {
            // Short slots, so that a quiet stream ends within the test.
            o.heartbeat_interval_secs = 1;
            o.history_flush_ms = 200;
            o.stream_slot_secs = 3;
        },
        |_| {},
    )
    .await;
    let asset = common::ingest_clip(&stack, 2).await;
    let access = common::viewer(&stack.origin_url, &stack.outbox).await;

    // The same device starts again: the first session is replaced.
    let first = play(&stack, &access, &asset, "tv-1").await;
    assert_eq!(fetch(&first).await.0, 200);
    let second = play(&stack, &access, &asset, "tv-1").await;
    let took = until_revoked(&first, Some(&second)).await;
    println!("replaced session refused after {took:?}");

    // The player stops: its session ends.
    let r = client()
        .post(format!(
            "{}/api/v1/streams/{}/stop",
            stack.origin_url,
            second["stream"]["id"].as_str().unwrap()
        ))
        .bearer_auth(second["stream"]["heartbeat_token"].as_str().unwrap())
        .json(&json!({ "position": 1.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    until_revoked(&second, None).await;

    // A player that keeps fetching but never reports: its slot times out
    // and its URLs stop working, so the stream limit binds it too.
    let quiet = play(&stack, &access, &asset, "phone-1").await;
    assert_eq!(fetch(&quiet).await.0, 200);
    until_revoked(&quiet, None).await;
    stack.shutdown().await;
}
