//! Geo-fencing at a real edge, with clients bound to different loopback
//! addresses that the project's test database maps to countries
//! (127.0.0.2 IN, 127.0.0.3 US, 127.0.0.4 NP; 127.0.0.9 unknown).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_geo::UnknownPolicy;
use serde_json::Value;

fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn status_and_body(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_and_playback_api_agree_per_country() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, asset) =
        common::licensed_stack(dir.path(), UnknownPolicy::Allow, vec![], |_| {}).await;
    let master = format!(
        "{}/vod/{asset}/master.m3u8?__token__={}",
        stack.edge_url,
        common::sign_for(&asset)
    );
    let playback = format!("{}/api/v1/playback/{asset}", stack.origin_url);
    let viewer = common::viewer(&stack.origin_url, &stack.outbox).await;
    // One device: each start replaces the last, within the free plan's one stream.
    let device = serde_json::json!({ "device_id": "geo-test" });
    for (ip, want) in [
        ("127.0.0.2", 200),
        ("127.0.0.4", 200),
        ("127.0.0.3", 451),
        ("127.0.0.9", 200),
    ] {
        let (edge_status, edge_body) = status_and_body(from(ip).get(&master)).await;
        let (api_status, api_body) =
            status_and_body(from(ip).post(&playback).bearer_auth(&viewer).json(&device)).await;
        assert_eq!(edge_status, want, "edge, client {ip}: {edge_body}");
        assert_eq!(api_status, want, "playback API, client {ip}: {api_body}");
        if want == 451 {
            assert_eq!(edge_body, api_body, "the same refusal from both");
            assert_eq!(edge_body["country"], "US");
            assert_eq!(edge_body["rule"], "title:allow");
        }
    }
    // Through the edge's /api pass-through the origin judges the viewer, not the edge.
    let via_edge = format!("{}/api/v1/playback/{asset}", stack.edge_url);
    assert_eq!(
        status_and_body(
            from("127.0.0.3")
                .post(&via_edge)
                .bearer_auth(&viewer)
                .json(&device)
        )
        .await
        .0,
        451
    );
    assert_eq!(
        status_and_body(
            from("127.0.0.2")
                .post(&via_edge)
                .bearer_auth(&viewer)
                .json(&device)
        )
        .await
        .0,
        200
    );
    // A spoofed X-Forwarded-For from an untrusted peer is ignored.
    let (s, _) = status_and_body(
        from("127.0.0.3")
            .get(&master)
            .header("x-forwarded-for", "127.0.0.2"),
    )
    .await;
    assert_eq!(s, 451);
    let (s, _) = status_and_body(
        from("127.0.0.3")
            .post(&playback)
            .bearer_auth(&viewer)
            .json(&device)
            .header("x-forwarded-for", "127.0.0.2"),
    )
    .await;
    assert_eq!(s, 451);
    // Metrics: blocked by country and rule, lookups by result.
    let m = common::text(format!("{}/metrics", stack.edge_url)).await;
    assert!(
        m.contains("cascade_edge_geo_blocked_total{country=\"US\",rule=\"title:allow\"}"),
        "{m}"
    );
    assert!(m.contains("cascade_edge_geo_lookups_total{result=\"unknown\"}"));
    assert!(m.contains("cascade_edge_geo_lookups_total{result=\"found\"}"));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_countries_can_be_refused_and_trusted_proxies_are_believed() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, asset) = common::licensed_stack(
        dir.path(),
        UnknownPolicy::Deny,
        vec!["127.0.0.4/32".into()],
        |_| {},
    )
    .await;
    let master = format!(
        "{}/vod/{asset}/master.m3u8?__token__={}",
        stack.edge_url,
        common::sign_for(&asset)
    );
    let (s, body) = status_and_body(from("127.0.0.9").get(&master)).await;
    assert_eq!(
        (s, body["country"].as_str(), body["rule"].as_str()),
        (451, Some("unknown"), Some("unknown"))
    );
    // 127.0.0.4 is a trusted proxy here: its X-Forwarded-For is believed.
    let (s, _) = status_and_body(
        from("127.0.0.4")
            .get(&master)
            .header("x-forwarded-for", "127.0.0.2"),
    )
    .await;
    assert_eq!(s, 200);
    let (s, body) = status_and_body(
        from("127.0.0.4")
            .get(&master)
            .header("x-forwarded-for", "127.0.0.2, 127.0.0.3"),
    )
    .await;
    assert_eq!(
        (s, body["country"].as_str()),
        (451, Some("US")),
        "the right-most untrusted address"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_and_a_corrupt_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, asset) =
        common::licensed_stack(dir.path(), UnknownPolicy::Allow, vec![], |_| {}).await;
    let db = dir.path().join("geo.mmdb");
    let master = format!(
        "{}/vod/{asset}/master.m3u8?__token__={}",
        stack.edge_url,
        common::sign_for(&asset)
    );
    let metrics = format!("{}/metrics", stack.edge_url);
    let reloads = |m: &str, result: &str| {
        common::metric_value(
            m,
            &format!("cascade_edge_geo_reloads_total{{result=\"{result}\"}}"),
        )
    };

    // Steady requests from India while the database is replaced (same
    // mapping, new file) several times: not one request fails. The load runs
    // until the edge has swapped the database at least twice.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (master, stop) = (master.clone(), stop.clone());
        tokio::spawn(async move {
            let client = from("127.0.0.2");
            let (mut sent, mut failures) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) && sent < 100_000 {
                sent += 1;
                match client.get(&master).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => failures += 1,
                }
            }
            (sent, failures)
        })
    };
    let csv = include_str!("../geo/testdata/countries.csv");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        common::write_db(&db, &format!("{csv}\n# rebuilt\n"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        common::write_db(&db, csv);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if reloads(&common::text(&metrics).await, "ok") >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge never reloaded the database"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = load.await.unwrap();
    assert!(sent > 0);
    assert_eq!(
        failures, 0,
        "{failures} of {sent} requests failed during hot swaps"
    );

    // A new mapping takes effect without a restart.
    common::write_db(&db, "127.0.0.2/32,US\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    while from("127.0.0.2")
        .get(&master)
        .send()
        .await
        .unwrap()
        .status()
        != 451
    {
        assert!(
            Instant::now() < deadline,
            "the new database never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A truncated replacement is refused; the last good one stays in use.
    let refused_before = reloads(&common::text(&metrics).await, "refused");
    let good = std::fs::read(&db).unwrap();
    let tmp = db.with_extension("new");
    std::fs::write(&tmp, &good[..good.len() / 3]).unwrap();
    std::fs::rename(&tmp, &db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = common::text(&metrics).await;
        if reloads(&m, "refused") > refused_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the corrupt file was never looked at"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        from("127.0.0.2")
            .get(&master)
            .send()
            .await
            .unwrap()
            .status(),
        451,
        "still the last good database"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_default_unknown_viewers_are_refused_a_licensed_title_and_carried_tokens_stay_private() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, asset) =
        common::licensed_stack(dir.path(), UnknownPolicy::default(), vec![], |_| {}).await;
    let token = common::sign_for(&asset);
    let master = format!("{}/vod/{asset}/master.m3u8", stack.edge_url);
    // 127.0.0.9 is in no country of the test database: the title has an
    // allow-list, so the default refuses (it used to let them through).
    let (status, body) =
        status_and_body(from("127.0.0.9").get(format!("{master}?__token__={token}"))).await;
    assert_eq!(status, 451, "{body}");
    assert_eq!(body["country"], "unknown");
    let india = from("127.0.0.2");
    let r = india
        .get(format!("{master}?__token__={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let playlist = r.text().await.unwrap();
    let segment = playlist
        .lines()
        .find(|l| l.starts_with("v0.m3u8"))
        .map(|_| format!("{}/vod/{asset}/v0/init.mp4", stack.edge_url))
        .expect("a variant");
    // With the token in the URL, a segment may be shared by caches
    // downstream (another URL, another token); with it in a cookie or a
    // header the URL alone does not carry the right, so it is private.
    let cc = |r: &reqwest::Response| {
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let r = india
        .get(format!("{segment}?__token__={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(cc(&r).starts_with("public"), "{}", cc(&r));
    for (name, value) in [
        ("cookie", format!("__token__={token}")),
        ("__token__", token.clone()),
    ] {
        for url in [&segment, &master] {
            let r = india.get(url).header(name, &value).send().await.unwrap();
            assert_eq!(r.status(), 200, "{name} {url}");
            let cc = cc(&r);
            assert!(
                cc.starts_with("private") && !cc.contains("public"),
                "{name} {url}: {cc}"
            );
        }
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_title_whose_rules_cannot_be_fetched_is_refused_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, asset) =
        common::licensed_stack(dir.path(), UnknownPolicy::default(), vec![], |_| {}).await;
    let edge_url = stack.edge_url.clone();
    let india = from("127.0.0.2");
    let master = |a: &str| {
        format!(
            "{edge_url}/vod/{a}/master.m3u8?__token__={}",
            common::sign_for(a)
        )
    };
    assert_eq!(
        india.get(master(&asset)).send().await.unwrap().status(),
        200
    );
    // Every upstream goes away.
    let common::Stack {
        origin,
        shield,
        edge,
        dir: _keep,
        ..
    } = stack;
    shield.shutdown().await;
    origin.shutdown().await;
    // A title never seen: its rules cannot be checked, so nothing of it is
    // served (it used to be judged by the path rules alone).
    let other = "0123456789ab";
    let r = india.get(master(other)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let (_, body) = status_and_body(india.get(master(other))).await;
    assert_eq!(body["error"], "geo_unavailable");
    // The title seen before keeps its rules: a viewer from the US is still
    // refused for the licensed title.
    let (status, body) = status_and_body(from("127.0.0.3").get(master(&asset))).await;
    assert_eq!(status, 451, "{body}");
    edge.shutdown().await;
}
