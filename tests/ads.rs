//! Server-side ad insertion, end to end: a real origin, shield and edge;
//! an ad server of the test's own (VAST inline and wrappers, a VMAP, a
//! down, a slow and a garbled answer) that also serves the creative's MP4
//! and counts beacons; FFmpeg and PyPI's `m3u8` and `mpegdash` reading the
//! stitched streams (`tests/ads_check.py`).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as AxPath, State as AxState};
use axum::routing::get;
use common::*;
use serde_json::{json, Value};

/// Held while Chromium plays: the tests of this file run side by side on
/// a two-core machine, and players sharing it with other players stall
/// for the machine's sake, not the stream's.
static PLAYERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held by each test that runs a live encoder or transcodes titles and
/// creatives: one at a time, for the same reason.
static ENCODING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The beacons the ad server heard, in order.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl Heard {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct AdServer {
    url: String,
    heard: Heard,
}

fn inline(base: &str, id: &str) -> String {
    format!(
        r#"<VAST version="4.2"><Ad id="{id}"><InLine><AdSystem>Test</AdSystem><AdTitle>{id}</AdTitle>
<Impression><![CDATA[{base}/t/{id}/impression?cb=[CACHEBUSTING]]]></Impression>
<Error><![CDATA[{base}/e/{id}?code=[ERRORCODE]]]></Error>
<Creatives><Creative><Linear><Duration>00:00:04.000</Duration>
<TrackingEvents>
<Tracking event="start"><![CDATA[{base}/t/{id}/start]]></Tracking>
<Tracking event="firstQuartile"><![CDATA[{base}/t/{id}/firstQuartile]]></Tracking>
<Tracking event="midpoint"><![CDATA[{base}/t/{id}/midpoint]]></Tracking>
<Tracking event="thirdQuartile"><![CDATA[{base}/t/{id}/thirdQuartile]]></Tracking>
<Tracking event="complete"><![CDATA[{base}/t/{id}/complete]]></Tracking>
</TrackingEvents>
<MediaFiles>
<MediaFile delivery="progressive" type="video/webm" width="320" height="180" bitrate="300"><![CDATA[{base}/media/ad.webm]]></MediaFile>
<MediaFile delivery="progressive" type="video/mp4" width="320" height="180" bitrate="300"><![CDATA[{base}/media/ad.mp4]]></MediaFile>
</MediaFiles></Linear></Creative></Creatives></InLine></Ad></VAST>"#
    )
}

fn wrapper(base: &str, id: &str, next: &str) -> String {
    format!(
        r#"<VAST version="3.0"><Ad id="{id}"><Wrapper><AdSystem>Test</AdSystem>
<VASTAdTagURI><![CDATA[{next}]]></VASTAdTagURI>
<Impression><![CDATA[{base}/t/{id}/impression]]></Impression>
<Error><![CDATA[{base}/e/{id}?code=[ERRORCODE]]]></Error>
<Creatives><Creative><Linear><TrackingEvents>
<Tracking event="complete"><![CDATA[{base}/t/{id}/complete]]></Tracking>
</TrackingEvents></Linear></Creative></Creatives>
</Wrapper></Ad></VAST>"#
    )
}

/// Starts the test's ad server on an ephemeral port, with `clip` as its
/// creative.
async fn ad_server(clip: PathBuf) -> AdServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let heard = Heard::default();
    let b = base.clone();
    let app = axum::Router::new()
        .route(
            "/vast/{kind}",
            get(move |AxPath(kind): AxPath<String>| {
                let base = b.clone();
                async move {
                    match kind.as_str() {
                        "inline" => inline(&base, "ad1"),
                        "wrapper" => wrapper(&base, "w1", &format!("{base}/vast/inline")),
                        "down-wrapper" => wrapper(&base, "down", "http://127.0.0.1:9/vast"),
                        "slow-wrapper" => wrapper(&base, "slow", &format!("{base}/vast/slow")),
                        "garbage-wrapper" => {
                            wrapper(&base, "garbage", &format!("{base}/vast/garbage"))
                        }
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            inline(&base, "late")
                        }
                        "garbage" => "<VAST version=\"4.2\"><Ad><InLine".to_string(),
                        _ => String::new(),
                    }
                }
            }),
        )
        .route(
            "/vmap",
            get({
                let base = base.clone();
                move || async move {
                    format!(
                        r#"<vmap:VMAP xmlns:vmap="http://www.iab.net/videosuite/vmap" version="1.0">
<vmap:AdBreak timeOffset="start" breakType="linear" breakId="pre"><vmap:AdSource id="p" allowMultipleAds="true"><vmap:AdTagURI templateType="vast3"><![CDATA[{base}/vast/down-wrapper]]></vmap:AdTagURI></vmap:AdSource></vmap:AdBreak>
<vmap:AdBreak timeOffset="00:00:06.000" breakType="linear" breakId="mid"><vmap:AdSource id="m" allowMultipleAds="true"><vmap:AdTagURI templateType="vast3"><![CDATA[{base}/vast/slow-wrapper]]></vmap:AdTagURI></vmap:AdSource></vmap:AdBreak>
<vmap:AdBreak timeOffset="end" breakType="linear" breakId="post"><vmap:AdSource id="e" allowMultipleAds="true"><vmap:AdTagURI templateType="vast3"><![CDATA[{base}/vast/garbage-wrapper]]></vmap:AdTagURI></vmap:AdSource></vmap:AdBreak>
</vmap:VMAP>"#
                    )
                }
            }),
        )
        .route(
            "/media/ad.mp4",
            get(move || {
                let clip = clip.clone();
                async move { tokio::fs::read(clip).await.unwrap() }
            }),
        )
        .route(
            "/t/{ad}/{event}",
            get(
                |AxState(h): AxState<Heard>, AxPath((ad, event)): AxPath<(String, String)>| async move {
                    h.0.lock().unwrap().push(format!("{ad}/{event}"));
                    ""
                },
            ),
        )
        .route(
            "/e/{ad}",
            get(
                |AxState(h): AxState<Heard>,
                 AxPath(ad): AxPath<String>,
                 q: axum::extract::RawQuery| async move {
                    h.0.lock()
                        .unwrap()
                        .push(format!("error/{ad}?{}", q.0.unwrap_or_default()));
                    ""
                },
            ),
        )
        .with_state(heard.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    AdServer { url: base, heard }
}

async fn json_get(url: &str) -> Value {
    client()
        .get(url)
        .bearer_auth(ORIGIN_ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Uploads `clip` with ad breaks and waits for it.
async fn ingest_with_breaks(stack: &Stack, clip: &Path, breaks: &str) -> String {
    common::ingest_with(
        stack,
        clip,
        &[
            ("title", "Match highlights"),
            ("ad_breaks", breaks),
            ("genres", "sports"),
        ],
    )
    .await
}

/// A viewer's playback token for `asset` (the viewer's access token given).
async fn start(stack: &Stack, access: &str, asset: &str) -> String {
    let r: Value = client()
        .post(format!("{}/api/v1/playback/{asset}", stack.origin_url))
        .bearer_auth(access)
        .json(&json!({ "device_type": "web", "device_id": "ads-test-device" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"]
        .as_str()
        .unwrap_or_else(|| panic!("a token: {r}"))
        .to_string()
}

/// Waits until every creative the origin knows is conditioned.
async fn wait_creatives_ready(origin: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = json_get(&format!("{origin}/api/v1/admin/ads/creatives")).await;
        let list = c.as_array().cloned().unwrap_or_default();
        if !list.is_empty() && list.iter().all(|c| c["status"] == "ready") {
            return;
        }
        assert!(
            list.iter().all(|c| c["status"] != "failed"),
            "a creative failed: {c}"
        );
        assert!(Instant::now() < deadline, "creatives not ready: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `f` until it answers `Some`, for up to `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetches every segment of a media playlist, as a player would.
async fn play_through(playlist_url: &str) {
    let text = text(playlist_url).await;
    let base = playlist_url
        .split('?')
        .next()
        .unwrap()
        .rsplit_once('/')
        .unwrap()
        .0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let r = client().get(format!("{base}/{line}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{line}");
        r.bytes().await.unwrap();
    }
}

const WEBHOOK_SECRET: &str = "whsec_ads_test_secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_viewers_get_stitched_breaks_beacons_once_and_premium_none() {
    // Its transcodes would starve a live test's players (a stall of two
    // seconds was seen under make test): one heavy test at a time.
    let _encoding = ENCODING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ad_clip = make_clip(dir.path(), 4);
    let content = make_clip(dir.path(), 12);
    let ads = ad_server(ad_clip).await;
    let vast_url = format!("{}/vast/wrapper?viewer=[VIEWER]&genre=[GENRE]", ads.url);
    let stack = Stack::start_full(
        |o| {
            o.ads_vast_url = vast_url;
            o.ads_timeout_ms = 1500;
            o.billing_webhook_secret = WEBHOOK_SECRET.into();
            // The players take minutes and send no heartbeats: the
            // session must not go quiet and be ended meanwhile.
            o.stream_slot_secs = 3600;
        },
        |_| {},
    )
    .await;
    let asset = ingest_with_breaks(&stack, &content, "0,6,100").await;

    // The first session finds the creative not conditioned yet: it plays
    // without ads, and the creative is fetched and conditioned.
    let first = viewer(&stack.origin_url, &stack.outbox).await;
    let token = start(&stack, &first, &asset).await;
    let plain = text(format!(
        "{}/vod/{asset}/v0.m3u8?__token__={token}",
        stack.edge_url
    ))
    .await;
    assert!(!plain.contains("ad/"), "{plain}");
    wait_creatives_ready(&stack.origin_url).await;

    // A new free session: pre-, mid- and post-rolls in every format.
    let free = viewer(&stack.origin_url, &stack.outbox).await;
    let token = start(&stack, &free, &asset).await;
    let q = format!("__token__={token}");
    let v0 = text(format!("{}/vod/{asset}/v0.m3u8?{q}", stack.edge_url)).await;
    assert_eq!(v0.matches("#EXT-X-CUE-OUT").count(), 3, "{v0}");
    assert!(
        v0.contains("#EXT-X-DISCONTINUITY") && v0.contains("SCTE35-OUT=0xFC"),
        "{v0}"
    );
    let mid = v0.find("ad/1.0/").expect("a mid-roll");
    assert!(
        v0[..mid].contains("v0/3.m4s") && !v0[..mid].contains("v0/4.m4s"),
        "{v0}"
    );
    // Changing the query does not take the ads out; a cookie token keeps them.
    let tampered = text(format!(
        "{}/vod/{asset}/v0.m3u8?ads=0&plan=premium&{q}",
        stack.edge_url
    ))
    .await;
    assert_eq!(tampered, v0);
    let by_cookie = client()
        .get(format!("{}/vod/{asset}/v0.m3u8", stack.edge_url))
        .header("cookie", format!("__token__={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_cookie.headers()["cache-control"].to_str().unwrap(),
        "private, no-store"
    );
    assert_eq!(
        by_cookie
            .text()
            .await
            .unwrap()
            .matches("#EXT-X-CUE-OUT")
            .count(),
        3
    );

    // FFmpeg and outside parsers read every stitched format whole.
    let base = format!("{}/vod/{asset}/", stack.edge_url);
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ads_check.py"))
        .args([&base, &q])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    // Three ads of two 2-second segments each, around the title's runs.
    assert_eq!(report["fmp4"]["runs"], 5, "{report}");
    assert_eq!(report["fmp4"]["ad_segments"], 6, "{report}");
    assert_eq!(report["fmp4_audio"]["runs"], 5, "{report}");
    assert_eq!(report["ts"]["runs"], 5, "{report}");
    assert_eq!(report["dash"]["ad_periods"], 3, "{report}");
    assert_eq!(report["dash"]["event_streams"], 3, "{report}");
    let decoded = report["fmp4"]["decoded_secs"].as_f64().unwrap();
    assert!((decoded - 24.0).abs() < 1.0, "title and ads: {report}");

    // Real players in Chromium play the session through every break.
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        Path::new(&format!("{root}/web/node_modules/playwright-core")).exists(),
        "web/node_modules is missing: run `make web` (make test does)"
    );
    let players = PLAYERS.lock().await;
    let out = Command::new("node")
        .arg(format!("{root}/web/tests/ads.mjs"))
        .args([&stack.edge_url, &asset, &q])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    drop(players);
    assert!(out.status.success(), "the players failed");
    for name in [
        "hls.js fMP4",
        "hls.js TS",
        "dash.js",
        "Shaka HLS",
        "Shaka DASH",
    ] {
        assert!(
            stdout.contains(&format!("{name}: played to the end")),
            "{name}"
        );
    }

    // The player fetched every ad segment (the check above did): each
    // beacon arrives once, in order, with the wrapper's besides.
    let expect_per_ad = [
        "w1/impression",
        "ad1/impression",
        "ad1/start",
        "ad1/firstQuartile",
        "ad1/midpoint",
        "ad1/thirdQuartile",
        "w1/complete",
        "ad1/complete",
    ];
    let heard = eventually(Duration::from_secs(20), "every beacon", || {
        let h = ads.heard.all();
        async move { (h.len() >= expect_per_ad.len() * 3).then_some(h) }
    })
    .await;
    for e in expect_per_ad {
        assert_eq!(
            heard.iter().filter(|h| *h == e).count(),
            3,
            "{e}: {heard:?}"
        );
    }
    // In order within each ad: impressions, start, quartiles, complete.
    let pos = |e: &str| heard.iter().position(|h| h == e).unwrap();
    assert!(pos("ad1/impression") < pos("ad1/start"));
    assert!(pos("ad1/start") < pos("ad1/firstQuartile"));
    assert!(pos("ad1/midpoint") < pos("ad1/thirdQuartile"));
    assert!(pos("ad1/thirdQuartile") < pos("ad1/complete"));
    // Played again, the ads send nothing again.
    let sent_before = ads.heard.all().len();
    let reports = |m: &str| metric_value(m, "cascade_edge_ad_events_total{event=\"report_sent\"}");
    let before = reports(&text(format!("{}/metrics", stack.edge_url)).await);
    play_through(&format!("{}/vod/{asset}/v0.m3u8?{q}", stack.edge_url)).await;
    eventually(Duration::from_secs(10), "the replay's report", || async {
        (reports(&text(format!("{}/metrics", stack.edge_url)).await) > before).then_some(())
    })
    .await;
    let origin_metrics = text(format!("{}/metrics", stack.origin_url)).await;
    assert_eq!(ads.heard.all().len(), sent_before, "{origin_metrics}");
    assert!(metric_value(&origin_metrics, "cascade_origin_ad_avails_filled_total") >= 3);

    // The report counts the session's impressions and completions.
    let rows = json_get(&format!("{}/api/v1/admin/ads/report", stack.origin_url)).await;
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(
        (row["impressions"].as_i64(), row["completes"].as_i64()),
        (Some(3), Some(3)),
        "{rows}"
    );
    assert_eq!(row["asset"], asset.as_str());

    // A premium viewer never sees an ad.
    let premium = viewer(&stack.origin_url, &stack.outbox).await;
    let user = common::user_id(&stack, &premium).await;
    common::subscription_event(
        &stack,
        WEBHOOK_SECRET,
        &user,
        "customer.subscription.created",
        "evt_ads_1",
    )
    .await;
    let token = start(&stack, &premium, &asset).await;
    for path in ["v0.m3u8", "ts/v0.a0.m3u8", "manifest.mpd"] {
        let body = text(format!(
            "{}/vod/{asset}/{path}?__token__={token}",
            stack.edge_url
        ))
        .await;
        assert!(
            !body.contains("ad/") && !body.contains("CUE-OUT"),
            "{path}: {body}"
        );
    }

    // The ad server down, slow past the budget, or garbled (a VMAP's pre-,
    // mid- and post-roll): the title plays, and each wrapper's Error URL
    // hears its code.
    let r = client()
        .put(format!(
            "{}/api/v1/admin/assets/{asset}/ads",
            stack.origin_url
        ))
        .bearer_auth(ORIGIN_ADMIN)
        .json(&json!({ "vmap_url": format!("{}/vmap", ads.url) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = start(&stack, &free, &asset).await;
    let started = Instant::now();
    let v0 = text(format!(
        "{}/vod/{asset}/v0.m3u8?__token__={token}",
        stack.edge_url
    ))
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the budget held"
    );
    assert!(v0.contains("v0/6.m4s") && !v0.contains("ad/"), "{v0}");
    let errors = eventually(Duration::from_secs(20), "three error beacons", || {
        let h = ads.heard.all();
        async move {
            let e: Vec<String> = h.into_iter().filter(|h| h.starts_with("error/")).collect();
            (e.len() >= 3).then_some(e)
        }
    })
    .await;
    assert!(
        errors.contains(&"error/down?code=301".to_string()),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"error/slow?code=301".to_string()),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"error/garbage?code=100".to_string()),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 3, "once each: {errors:?}");
    stack.shutdown().await;
}

/// Runs the `cascade` binary against the test origin; (success, stdout, stderr).
fn cascade(origin: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(args)
        .env("CASCADE_ORIGIN_URL", origin)
        .env("CASCADE_ORIGIN_ADMIN_TOKEN", ORIGIN_ADMIN)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_ad_service_targets_caps_and_reports_through_the_cli() {
    // Its transcodes would starve a live test's players (a stall of two
    // seconds was seen under make test): one heavy test at a time.
    let _encoding = ENCODING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ad_clip = make_clip(dir.path(), 4);
    let content = make_clip(dir.path(), 12);
    let media = ad_server(ad_clip).await;
    // No ad server configured: the built-in one decides. TV apps track
    // their ads themselves.
    let stack = Stack::start_full(
        |o| o.ads_client_tracking_devices = vec!["tv".into()],
        |_| {},
    )
    .await;
    let origin = stack.origin_url.clone();
    let media_url = format!("{}/media/ad.mp4", media.url);

    // The CLI adds ads; bad input is refused with its reason.
    let (ok, id, err) = cascade(
        &origin,
        &[
            "ads",
            "add",
            "spot",
            "--media",
            &media_url,
            "--duration",
            "4",
            "--plans",
            "free",
            "--cap",
            "1",
        ],
    );
    assert!(ok && !id.trim().is_empty(), "{err}");
    let (ok, _, err) = cascade(
        &origin,
        &[
            "ads",
            "add",
            "tv-only",
            "--media",
            &media_url,
            "--duration",
            "4",
            "--devices",
            "tv",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cascade(
        &origin,
        &[
            "ads",
            "add",
            "spot",
            "--media",
            &media_url,
            "--duration",
            "4",
        ],
    );
    assert!(!ok && err.contains("name_taken"), "{err}");
    let (ok, _, err) = cascade(
        &origin,
        &[
            "ads",
            "add",
            "bad",
            "--media",
            &media_url,
            "--duration",
            "0",
        ],
    );
    assert!(!ok && err.contains("bad_duration"), "{err}");
    let (ok, _, err) = cascade(
        &origin,
        &[
            "ads",
            "add",
            "bad",
            "--media",
            "ftp://x/a.mp4",
            "--duration",
            "4",
        ],
    );
    assert!(!ok && err.contains("bad_media_url"), "{err}");

    // The creative is conditioned once (both ads share it), before any break.
    wait_creatives_ready(&origin).await;
    let (ok, list, err) = cascade(&origin, &["ads", "list"]);
    assert!(ok, "{err}");
    assert!(
        list.contains("spot") && list.contains("tv-only") && list.contains("ready"),
        "{list}"
    );
    assert!(
        list.contains("plans=free") && list.contains("devices=tv"),
        "{list}"
    );

    // `cascade ingest --ad-breaks`: pre-, mid- and post-roll.
    let clip = content.to_str().unwrap();
    let (ok, out, err) = cascade(
        &origin,
        &[
            "ingest",
            clip,
            "--title",
            "Built-in ads",
            "--ad-breaks",
            "0,6,100",
        ],
    );
    assert!(ok, "{out}{err}");
    let asset = out
        .split("(asset ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("the asset id in: {out}"))
        .to_string();

    // A free viewer on the web: only `spot` matches (not `tv-only`), and
    // its cap of one a day lets it play in the first break alone.
    let viewer = viewer(&stack.origin_url, &stack.outbox).await;
    let token = start(&stack, &viewer, &asset).await;
    let q = format!("__token__={token}");
    let v0 = text(format!("{}/vod/{asset}/v0.m3u8?{q}", stack.edge_url)).await;
    assert_eq!(v0.matches("#EXT-X-CUE-OUT").count(), 1, "{v0}");
    assert!(
        v0.find("ad/0.0/").unwrap() < v0.find("v0/1.m4s").unwrap(),
        "a pre-roll: {v0}"
    );
    play_through(&format!("{}/vod/{asset}/v0.m3u8?{q}", stack.edge_url)).await;
    // The same viewer again: capped.
    let token = start(&stack, &viewer, &asset).await;
    let again = text(format!(
        "{}/vod/{asset}/v0.m3u8?__token__={token}",
        stack.edge_url
    ))
    .await;
    assert!(!again.contains("CUE-OUT"), "{again}");

    // The report: one impression, completed.
    let report = eventually(Duration::from_secs(20), "the report", || {
        let origin = origin.clone();
        async move {
            let (ok, out, _) = cascade(&origin, &["ads", "report"]);
            (ok && out.contains("100.0%")).then_some(out)
        }
    })
    .await;
    let row = report.lines().nth(1).unwrap();
    assert!(row.contains(&asset), "{report}");
    assert_eq!(
        row.split_whitespace().nth(3),
        Some("1"),
        "one impression: {report}"
    );
    let (ok, _, err) = cascade(&origin, &["ads", "report", "--from", "yesterday"]);
    assert!(!ok && err.contains("bad_day"), "{err}");

    // A TV app's session tracks its ads itself: the tracking API gives its
    // breaks (matching the playlists' date range ids) with each ad's
    // offset, length and beacons. On TV both ads match.
    let tv = common::viewer(&stack.origin_url, &stack.outbox).await;
    let answer: Value = client()
        .post(format!("{}/api/v1/playback/{asset}", stack.origin_url))
        .bearer_auth(&tv)
        .json(&json!({ "device_type": "tv", "device_id": "living-room" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stream = answer["stream"]["id"].as_str().unwrap();
    let heartbeat = answer["stream"]["heartbeat_token"].as_str().unwrap();
    let tracking_url = format!("{origin}/api/v1/streams/{stream}/ads");
    let r = client().get(&tracking_url).send().await.unwrap();
    assert_eq!(r.status(), 401, "the tracking API needs the stream's token");
    let t: Value = client()
        .get(&tracking_url)
        .bearer_auth(heartbeat)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["tracking"], "client", "{t}");
    let avails = t["avails"].as_array().unwrap();
    assert_eq!(avails.len(), 3, "tv-only fills every break: {t}");
    assert_eq!(avails[0]["id"], "ad-0");
    let first = avails[0]["ads"].as_array().unwrap();
    assert_eq!(first.len(), 2, "spot (capped, once) and tv-only: {t}");
    assert_eq!(first[1]["offset_ms"], 4000, "{t}");
    assert!(first[0]["events"].is_object(), "{t}");
    let v0 = text(format!(
        "{}/vod/{asset}/v0.m3u8?__token__={}",
        stack.edge_url,
        answer["token"].as_str().unwrap()
    ))
    .await;
    assert_eq!(v0.matches("#EXT-X-CUE-OUT").count(), 3, "{v0}");
    assert!(v0.contains("ID=\"ad-0\""), "{v0}");

    // Removed, it is gone; removing it again says so.
    let (ok, _, err) = cascade(&origin, &["ads", "remove", "spot"]);
    assert!(ok, "{err}");
    let (_, list, _) = cascade(&origin, &["ads", "list"]);
    assert!(!list.contains("spot") && list.contains("tv-only"), "{list}");
    let (ok, _, err) = cascade(&origin, &["ads", "remove", "spot"]);
    assert!(!ok && err.contains("not_found"), "{err}");
    // The VAST endpoint answers the built-in decisions to anyone asking.
    let vast = text(format!("{origin}/api/v1/ads/vast?device=tv&plan=free")).await;
    assert!(
        vast.contains("<VAST version=\"4.2\">") && vast.contains("tv-only"),
        "{vast}"
    );
    stack.shutdown().await;
}

/// The live manifest the origin serves for `channel`.
async fn live_manifest(
    origin: &str,
    channel: &str,
) -> Option<cascade_packager::live::LiveManifest> {
    let r = client()
        .get(format!("{origin}/live-mezz/{channel}/manifest.json"))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    cascade_packager::live::LiveManifest::from_json(&r.bytes().await.ok()?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_breaks_come_from_scte35_in_the_ingest_and_from_the_cli() {
    let _encoding = ENCODING.lock().await;
    let stack = Stack::start_full(
        |o| {
            o.srt_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![cascade_origin::config::Rung {
                height: 120,
                kbps: 150,
            }];
            o.live_preset = "ultrafast".into();
        },
        |_| {},
    )
    .await;
    let origin = stack.origin_url.clone();
    let made = create_channel(&origin, json!({ "name": "final" })).await;
    let key = made["stream_key"].as_str().unwrap();

    // An encoder's stream with a splice_insert 8 s in: a 6-second break,
    // splice event 77. FFmpeg copies it into SRT (as a private-data PES).
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.ts");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x180:r=25:d=40",
        ])
        .args(["-f", "lavfi", "-i", "sine=sample_rate=48000:d=40"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-f", "mpegts"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success());
    let section =
        cascade_ads::scte35::SpliceInfo::insert(77, true, None, Some(6 * 90_000)).encode();
    let hex: String = section.iter().map(|b| format!("{b:02X}")).collect();
    let injected = dir.path().join("injected.ts");
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scte35_inject.py"))
        .arg(&src)
        .arg(&injected)
        .args(["8", &hex])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srt = stack.origin.srt_addr.unwrap();
    let encoder = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-i"])
        .arg(&injected)
        .args(["-map", "0", "-c", "copy", "-f", "mpegts"])
        .arg(format!("srt://{srt}?streamid=publish:{key}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // The cue becomes break 77 from the next segment after it.
    let m = eventually(Duration::from_secs(40), "the SCTE-35 break", || {
        let origin = origin.clone();
        async move {
            let m = live_manifest(&origin, "final").await?;
            let b = m.breaks.iter().find(|b| b.id == 77)?;
            m.segment(b.start_msn)?;
            Some(m)
        }
    })
    .await;
    let b = m.breaks.iter().find(|b| b.id == 77).unwrap().clone();
    assert_eq!((b.duration_ms, b.source.as_str()), (6000, "scte35"));
    let seg = m
        .segment(b.start_msn)
        .expect("its first segment is in the window");
    let into_stream = (seg.pdt_ms - m.epoch_ms) as f64 / 1000.0;
    println!("the SCTE-35 break starts {into_stream:.2} s into the stream (the cue: 8 s)");
    assert!(
        (7.0..=12.5).contains(&into_stream),
        "the break starts {into_stream} s in, the cue said 8"
    );

    // Every viewer's LL-HLS, TS playlist and MPD signal it.
    let q = format!("__token__={}", sign_acl("/live/final/*"));
    let base = format!("{}/live/final/", stack.edge_url);
    let v0 = eventually(
        Duration::from_secs(30),
        "the break's end in the playlist",
        || {
            let url = format!("{base}v0.m3u8?{q}");
            async move {
                let t = text(url).await;
                t.contains("SCTE35-IN=").then_some(t)
            }
        },
    )
    .await;
    assert!(v0.contains("#EXT-X-DATERANGE:ID=\"break-77\""), "{v0}");
    assert!(
        v0.contains("SCTE35-OUT=0xFC") && v0.contains("#EXT-X-CUE-OUT:DURATION=6.000"),
        "{v0}"
    );
    assert!(v0.contains("#EXT-X-CUE-IN"), "{v0}");
    let ts = text(format!("{base}ts/v0.a0.m3u8?{q}")).await;
    assert!(
        ts.contains("break-77") && ts.contains("#EXT-X-CUE-OUT"),
        "{ts}"
    );
    let mpd = text(format!("{base}manifest.mpd?{q}")).await;
    assert!(
        mpd.contains("urn:scte:scte35:2013:xml") && mpd.contains("spliceEventId=\"77\""),
        "{mpd}"
    );

    // An operator calls a break from the CLI; bad calls say why.
    let (ok, out, err) = cascade(&origin, &["live", "break", "final", "--secs", "4"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("break ") && out.contains("4.0 s"), "{out}");
    let id: u32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let m = eventually(Duration::from_secs(10), "the operator's break", || {
        let origin = origin.clone();
        async move {
            let m = live_manifest(&origin, "final").await?;
            m.breaks
                .iter()
                .any(|b| b.id == id && b.source == "operator")
                .then_some(m)
        }
    })
    .await;
    let b = m.breaks.iter().find(|b| b.id == id).unwrap();
    let pl = eventually(
        Duration::from_secs(20),
        "the operator's break in the playlist",
        || {
            let url = format!("{base}v0.m3u8?{q}");
            let want = format!("ID=\"break-{id}\"");
            async move {
                let t = text(url).await;
                t.contains(&want).then_some(t)
            }
        },
    )
    .await;
    assert!(pl.contains("#EXT-X-CUE-OUT:DURATION=4.000"), "{pl}");
    assert!(b.start_msn > m.breaks[0].start_msn);
    let (ok, _, err) = cascade(&origin, &["live", "break", "final", "--end"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cascade(&origin, &["live", "break", "final", "--secs", "0"]);
    assert!(!ok && err.contains("bad_duration"), "{err}");
    let (ok, _, err) = cascade(&origin, &["live", "break", "nosuch", "--secs", "5"]);
    assert!(!ok && err.contains("not_found"), "{err}");
    let metrics = text(format!("{origin}/metrics")).await;
    assert!(
        metric_value(
            &metrics,
            "cascade_origin_live_cues_total{outcome=\"break\"}"
        ) >= 1,
        "{metrics}"
    );
    stop_child(encoder);
    stack.shutdown().await;
}

/// The URI lines of a playlist.
fn uri_lines(playlist: &str) -> Vec<&str> {
    playlist
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_live_viewers_get_ads_and_a_slate_in_a_break_and_others_the_channel() {
    let _encoding = ENCODING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ad_clip = make_clip(dir.path(), 4);
    let ads = ad_server(ad_clip).await;
    let (vast, slate) = (
        format!("{}/vast/inline", ads.url),
        format!("{}/media/ad.mp4?slate", ads.url),
    );
    let stack = Stack::start_full(
        |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![cascade_origin::config::Rung {
                height: 120,
                kbps: 150,
            }];
            o.live_preset = "ultrafast".into();
            o.ads_vast_url = vast;
            o.ads_live_fill = "slate".into();
            o.ads_slate_url = slate;
            o.stream_slot_secs = 3600;
        },
        |_| {},
    )
    .await;
    let origin = stack.origin_url.clone();
    let made = create_channel(&origin, json!({ "name": "final" })).await;
    let key = made["stream_key"].as_str().unwrap();
    let rtmp = stack.origin.rtmp_addr.unwrap();
    let encoder = ffmpeg_publish(
        &format!("rtmp://{rtmp}/live/{key}"),
        "flv",
        "320x180",
        240,
        "libx264",
    );

    // A free viewer's session: its token carries the session and `ads`.
    let free = viewer(&origin, &stack.outbox).await;
    let answer: Value = client()
        .post(format!("{origin}/api/v1/live/final/playback"))
        .bearer_auth(&free)
        .json(&json!({ "device_id": "live-ads-test", "device_type": "web" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hls = answer["hls"].as_str().unwrap_or_else(|| panic!("{answer}"));
    let token = hls.split("__token__=").nth(1).unwrap().to_string();
    let q = format!("__token__={token}");
    let base = format!("{}/live/final/", stack.edge_url);
    let shared_q = format!("__token__={}", sign_acl("/live/final/*"));
    let playlist = |q: String, name: &'static str| {
        let url = format!("{base}{name}?{q}");
        async move {
            let r = client().get(url).send().await.ok()?;
            (r.status() == 200).then_some(())?;
            r.text().await.ok()
        }
    };
    eventually(Duration::from_secs(40), "the channel on air", || {
        let p = playlist(q.clone(), "v0.m3u8");
        async move { p.await.filter(|t| t.contains(".m4s")) }
    })
    .await;

    // A first break makes the creative known: the session's first
    // decision starts its conditioning (the break plays without it unless
    // it is ready in time; the slate, the same clip here, may make it so).
    let (ok, out, err) = cascade(&origin, &["live", "break", "final", "--secs", "4"]);
    assert!(ok, "{err}");
    let first: u32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    eventually(Duration::from_secs(20), "the first break", || {
        let p = playlist(q.clone(), "v0.m3u8");
        let want = format!("ID=\"break-{first}\"");
        async move {
            p.await
                .filter(|t| t.contains(&want) && t.contains("SCTE35-IN"))
        }
    })
    .await;
    wait_creatives_ready(&origin).await;

    // The second break, 10 s: the 4-second ad, then the slate.
    let (ok, out, err) = cascade(&origin, &["live", "break", "final", "--secs", "10"]);
    assert!(ok, "{err}");
    let second: u32 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let after = eventually(Duration::from_secs(40), "the second break, over", || {
        let p = playlist(q.clone(), "v0.m3u8");
        let want = format!("ID=\"break-{second}\"");
        async move {
            let t = p.await?;
            let uris = uri_lines(&t);
            let last_ad = uris.iter().rposition(|u| u.starts_with("ad/"))?;
            // The break is over and the content back after it.
            let over = t
                .lines()
                .any(|l| l.contains(&want) && l.contains("SCTE35-IN="));
            (over && last_ad + 1 < uris.len()).then_some(t)
        }
    })
    .await;
    let uris = uri_lines(&after);
    let ad_uris: Vec<&str> = uris
        .iter()
        .copied()
        .filter(|u| u.starts_with("ad/"))
        .collect();
    // `ad/{break}.{n}/{creative}/{track}/{segment}.m4s`: ad 0 is the
    // VAST ad; n = 1 (past the one ad) is the slate.
    let is_ad = |u: &&str| u.split('/').nth(1).is_some_and(|s| s.ends_with(".0"));
    let is_slate = |u: &&str| u.split('/').nth(1).is_some_and(|s| s.ends_with(".1"));
    assert!(ad_uris.iter().filter(|u| is_ad(u)).count() >= 2, "{after}");
    assert!(ad_uris.iter().any(is_slate), "{after}");
    let first_slate = ad_uris.iter().position(is_slate).unwrap();
    assert!(
        ad_uris[..first_slate].iter().all(is_ad),
        "ads, then slate: {after}"
    );
    // Each slot keeps its content segment's place: no number is skipped
    // or repeated, the break is cued, and runs change at discontinuities.
    assert!(after.contains("#EXT-X-CUE-OUT:DURATION=10.000"), "{after}");
    assert!(
        after.matches("#EXT-X-DISCONTINUITY\n").count() >= 3,
        "{after}"
    );
    assert!(after.contains("#EXT-X-MAP:URI=\"ad/"), "{after}");
    assert!(after.contains("__token__="), "child URLs carry the token");
    // Viewers without ads (a plain signed URL here) see the channel.
    let shared = playlist(shared_q.clone(), "v0.m3u8").await.unwrap();
    assert!(
        !shared.contains("\nad/") && !shared.contains("URI=\"ad/"),
        "{shared}"
    );
    assert_eq!(
        uri_lines(&shared)
            .last()
            .map(|u| u.split('?').next().unwrap().to_string()),
        uris.last()
            .map(|u| u.split('?').next().unwrap().to_string()),
        "the same live edge"
    );

    // Every ad and slate segment and init is served, and the session's
    // window decodes with FFmpeg from end to end, ads and all.
    for u in after
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .map(|l| l.trim_end_matches('"'))
        .chain(ad_uris.iter().copied())
    {
        let r = client().get(format!("{base}{u}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{u}");
    }
    let local = dir.path().join("window.m3u8");
    let absolute: String = after
        .lines()
        .filter(|l| !l.starts_with("#EXT-X-PART") && !l.starts_with("#EXT-X-PRELOAD"))
        .map(|l| {
            if l.starts_with("#EXT-X-MAP:URI=\"") {
                l.replacen("URI=\"", &format!("URI=\"{base}"), 1)
            } else if !l.starts_with('#') && !l.is_empty() {
                format!("{base}{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("#EXT-X-SERVER-CONTROL", "#X-SERVER-CONTROL")
        + "\n#EXT-X-ENDLIST\n";
    std::fs::write(&local, absolute).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-protocol_whitelist", "file,http,tcp", "-i"])
        .arg(&local)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{errors}");
    assert!(
        !errors.contains("Invalid") && !errors.contains("error while decoding"),
        "{errors}"
    );

    // DASH: the session's MPD has a period per ad and slate turn, the
    // first of the break with its SCTE-35 event; the shared one has one.
    let mpd = playlist(q.clone(), "manifest.mpd").await.unwrap();
    assert!(mpd.contains("<Period id=\"ad-"), "{mpd}");
    assert!(mpd.contains("<Period id=\"slate-"), "{mpd}");
    assert!(mpd.contains("media=\"ad/"), "{mpd}");
    let ev = mpd.find(&format!("spliceEventId=\"{second}\"")).unwrap();
    let first_ad = mpd.find("<Period id=\"ad-").unwrap();
    assert!(ev > first_ad, "{mpd}");
    let shared_mpd = playlist(shared_q.clone(), "manifest.mpd").await.unwrap();
    assert_eq!(shared_mpd.matches("<Period ").count(), 1, "{shared_mpd}");

    // Legacy devices: the TS playlist has the same ads, muxed TS.
    let ts = eventually(Duration::from_secs(10), "the TS playlist", || {
        let p = playlist(q.clone(), "ts/v0.a0.m3u8");
        async move { p.await.filter(|t| t.contains("../ad/")) }
    })
    .await;
    let ts_ad = uri_lines(&ts)
        .into_iter()
        .find(|u| u.starts_with("../ad/"))
        .unwrap();
    let r = client()
        .get(format!("{base}ts/{ts_ad}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{ts_ad}");
    assert_eq!(r.headers()["content-type"], "video/mp2t");

    // The player fetched the whole ad: its beacons reach the ad server,
    // once each; the slate is nobody's ad.
    eventually(Duration::from_secs(20), "the live ad's beacons", || {
        let heard = ads.heard.all();
        async move {
            ["impression", "start", "midpoint", "complete"]
                .iter()
                .all(|e| heard.iter().any(|h| h == &format!("ad1/{e}")))
                .then_some(())
        }
    })
    .await;
    let heard = ads.heard.all();
    assert_eq!(
        heard.iter().filter(|h| *h == "ad1/complete").count(),
        1,
        "{heard:?}"
    );
    let metrics = text(format!("{}/metrics", stack.edge_url)).await;
    assert!(
        metric_value(
            &metrics,
            "cascade_edge_ad_events_total{event=\"personalised_live\"}"
        ) >= 1,
        "{metrics}"
    );

    // hls.js (LL-HLS and TS), dash.js and Shaka in Chromium, all at once,
    // play into a break called once they play, through its ads, and back
    // to the channel.
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        Path::new(&format!("{root}/web/node_modules/playwright-core")).exists(),
        "web/node_modules is missing: run `make web` (make test does)"
    );
    // Two at a time (this machine has two cores and encodes the channel
    // meanwhile), a break each.
    for (players, names) in [
        ("hls", &["hls.js LL-HLS", "hls.js TS"][..]),
        ("dash,shaka", &["dash.js", "Shaka DASH"][..]),
    ] {
        let playing = PLAYERS.lock().await;
        let mut node = Command::new("node")
            .arg(format!("{root}/web/tests/live_ads.mjs"))
            .args([&stack.edge_url, "final", &q, "40", players])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = node.stdout.take().unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line == "started" {
                    let _ = started_tx.send(());
                }
                lines.push(line);
            }
            lines.join("\n")
        });
        eventually(Duration::from_secs(60), "the players playing", || {
            let got = started_rx.try_recv().is_ok();
            async move { got.then_some(()) }
        })
        .await;
        let (ok, _, err) = cascade(&origin, &["live", "break", "final", "--secs", "10"]);
        assert!(ok, "{err}");
        let status = tokio::task::spawn_blocking(move || node.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let printed = reader.join().unwrap();
        drop(playing);
        println!("{printed}\n{}", String::from_utf8_lossy(&status.stderr));
        assert!(status.status.success(), "the players failed: {players}");
        for name in names {
            assert!(printed.contains(&format!("{name}: played")), "{name}");
        }
    }
    stop_child(encoder);
    stack.shutdown().await;
}

/// Relays an RTMP publisher to `to`, its messages re-chunked, and adds an
/// `onCuePoint` data message once the publisher's video passes `cue_at_ms`:
/// what an encoder that writes cue points (Elemental, Wowza) sends, which
/// FFmpeg cannot.
async fn cue_point_proxy(
    to: SocketAddr,
    cue_at_ms: u32,
    cue: Vec<rml_rtmp::rml_amf0::Amf0Value>,
) -> SocketAddr {
    use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
    use rml_rtmp::messages::RtmpMessage;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(to).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        });
        // The handshake passes as it is: C0 and C1, then C2.
        for len in [1 + 1536, 1536] {
            let mut hs = vec![0u8; len];
            if cr.read_exact(&mut hs).await.is_err() || sw.write_all(&hs).await.is_err() {
                return;
            }
        }
        let mut de = ChunkDeserializer::new();
        let mut ser = ChunkSerializer::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = false;
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut input = &buf[..n];
            while let Ok(Some(m)) = de.get_next_message(input) {
                input = &[];
                let mut out = Vec::new();
                if m.type_id == 1 && m.data.len() >= 4 {
                    let size = u32::from_be_bytes([m.data[0], m.data[1], m.data[2], m.data[3]]);
                    de.set_max_chunk_size(size as usize).unwrap();
                    out = ser.set_max_chunk_size(size, m.timestamp).unwrap().bytes;
                } else {
                    out.extend(ser.serialize(&m, false, false).unwrap().bytes);
                }
                if !sent && m.type_id == 9 && m.timestamp.value >= cue_at_ms {
                    sent = true;
                    let p = RtmpMessage::Amf0Data {
                        values: cue.clone(),
                    }
                    .into_message_payload(m.timestamp, m.message_stream_id)
                    .unwrap();
                    out.extend(ser.serialize(&p, false, false).unwrap().bytes);
                }
                if sw.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_cue_points_open_live_breaks() {
    let _encoding = ENCODING.lock().await;
    use rml_rtmp::rml_amf0::Amf0Value;
    let stack = Stack::start_full(
        |o| {
            o.rtmp_listen = "127.0.0.1:0".into();
            o.live_ladder = vec![cascade_origin::config::Rung {
                height: 120,
                kbps: 150,
            }];
            o.live_preset = "ultrafast".into();
        },
        |_| {},
    )
    .await;
    let origin = stack.origin_url.clone();
    let made = create_channel(&origin, json!({ "name": "final" })).await;
    let key = made["stream_key"].as_str().unwrap();
    // Adobe's cue point for a 6-second break, splice event 91, 8 s in.
    let params: std::collections::HashMap<String, Amf0Value> = [
        ("duration".to_string(), Amf0Value::Utf8String("6".into())),
        ("id".to_string(), Amf0Value::Number(91.0)),
    ]
    .into_iter()
    .collect();
    let cue: std::collections::HashMap<String, Amf0Value> = [
        (
            "name".to_string(),
            Amf0Value::Utf8String("spliceOut".into()),
        ),
        ("type".to_string(), Amf0Value::Utf8String("event".into())),
        ("time".to_string(), Amf0Value::Number(8.0)),
        ("parameters".to_string(), Amf0Value::Object(params)),
    ]
    .into_iter()
    .collect();
    let proxy = cue_point_proxy(
        stack.origin.rtmp_addr.unwrap(),
        8000,
        vec![
            Amf0Value::Utf8String("onCuePoint".into()),
            Amf0Value::Object(cue),
        ],
    )
    .await;
    let encoder = ffmpeg_publish(
        &format!("rtmp://{proxy}/live/{key}"),
        "flv",
        "320x180",
        40,
        "libx264",
    );
    let m = eventually(Duration::from_secs(40), "the cue point's break", || {
        let origin = origin.clone();
        async move {
            let m = live_manifest(&origin, "final").await?;
            let b = m.breaks.iter().find(|b| b.id == 91)?;
            m.segment(b.start_msn)?;
            Some(m)
        }
    })
    .await;
    let b = m.breaks.iter().find(|b| b.id == 91).unwrap();
    assert_eq!(b.duration_ms, 6000);
    let seg = m.segment(b.start_msn).unwrap();
    let into_stream = (seg.pdt_ms - m.epoch_ms) as f64 / 1000.0;
    println!("the RTMP cue point's break starts {into_stream:.2} s into the stream (the cue: 8 s)");
    assert!(
        (7.0..=12.5).contains(&into_stream),
        "the break starts {into_stream} s in, the cue said 8"
    );
    // Every viewer's playlist cues it.
    let q = format!("__token__={}", sign_acl("/live/final/*"));
    eventually(Duration::from_secs(20), "the break in the playlist", || {
        let url = format!("{}/live/final/v0.m3u8?{q}", stack.edge_url);
        async move {
            let t = text(url).await;
            t.contains("ID=\"break-91\"").then_some(())
        }
    })
    .await;
    stop_child(encoder);
    stack.shutdown().await;
}
