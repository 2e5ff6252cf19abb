//! The shield's cache follows RFC 9111's rules for a shared cache, like the
//! edge's generic path: `Age` on arrival and on replay, `Expires`,
//! `no-store` / `private` / `Vary: *` never stored, `no-cache` revalidated
//! with a conditional request whose 304 keeps the stored bytes (whole
//! objects and mezzanine slices alike), `must-revalidate` never served
//! stale. Its origin is an HTTP server of the test's own that sends the
//! headers each rule reads (Cascade's origin sends only a few of them).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cascade_shield::ShieldConfig;

/// Size of the test's mezzanine file: four 64 KiB slices and a bit.
const VIDEO_BYTES: usize = 4 * 65536 + 1000;

#[derive(Default)]
struct Origin {
    /// Requests per path.
    hits: Mutex<HashMap<String, usize>>,
    /// Conditional requests answered 304, per path.
    not_modified: Mutex<HashMap<String, usize>>,
    /// Answer 500 to everything.
    failing: AtomicBool,
    /// Bytes of bodies sent.
    body_bytes: AtomicUsize,
}

impl Origin {
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    fn not_modified(&self, path: &str) -> usize {
        self.not_modified
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn video() -> Vec<u8> {
    (0..VIDEO_BYTES).map(|i| (i % 251) as u8).collect()
}

async fn answer(State(o): State<Arc<Origin>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    *o.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    if o.failing.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let h = req.headers();
    let now = std::time::SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let in_5_min = httpdate::fmt_http_date(now + std::time::Duration::from_secs(300));
    let etag = "\"v1\"";
    let (cc, extra): (&str, Vec<(&str, String)>) = match path.as_str() {
        "/mezz/a/aged.json" => ("public, max-age=300", vec![("age", "100".into())]),
        "/mezz/a/old.json" => ("public, max-age=60", vec![("age", "120".into())]),
        "/mezz/a/expires.json" => ("public", vec![("expires", in_5_min), ("date", date)]),
        "/mezz/a/nostore.json" => ("no-store", vec![("etag", etag.into())]),
        "/mezz/a/private.json" => ("private, max-age=300", vec![]),
        "/mezz/a/varystar.json" => ("public, max-age=300", vec![("vary", "*".into())]),
        "/mezz/a/nocache.json" => ("no-cache", vec![("etag", etag.into())]),
        "/mezz/a/fragile.json" => ("max-age=0, stale-if-error=600", vec![("etag", etag.into())]),
        "/mezz/a/strict.json" => (
            "max-age=0, must-revalidate, stale-if-error=600",
            vec![("etag", etag.into())],
        ),
        "/mezz/a/video.mp4" => ("no-cache", vec![("etag", etag.into())]),
        _ => return (StatusCode::NOT_FOUND, "no").into_response(),
    };
    let has_etag = extra.iter().any(|(k, _)| *k == "etag");
    if has_etag && h.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag) {
        *o.not_modified.lock().unwrap().entry(path).or_default() += 1;
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut()
            .insert("cache-control", HeaderValue::from_static(cc));
        r.headers_mut()
            .insert("etag", HeaderValue::from_static(etag));
        return r;
    }
    let (status, body, range) = if path.ends_with(".mp4") {
        let all = video();
        let asked = h
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
        match asked {
            Some((a, b)) if a < all.len() => {
                let b = b.min(all.len() - 1);
                let range = format!("bytes {a}-{b}/{}", all.len());
                (
                    StatusCode::PARTIAL_CONTENT,
                    all[a..=b].to_vec(),
                    Some(range),
                )
            }
            _ => (StatusCode::OK, all, None),
        }
    } else {
        (StatusCode::OK, format!("{path} body").into_bytes(), None)
    };
    o.body_bytes.fetch_add(body.len(), Ordering::SeqCst);
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static(cc));
    if let Some(range) = range {
        r.headers_mut()
            .insert("content-range", HeaderValue::from_str(&range).unwrap());
    }
    for (k, v) in extra {
        r.headers_mut()
            .insert(k, HeaderValue::from_str(&v).unwrap());
    }
    r
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn cache(&self) -> String {
        self.header("cache-status")
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

async fn get(url: &str, range: Option<&str>) -> Got {
    let mut r = common::client().get(url);
    if let Some(range) = range {
        r = r.header("range", range);
    }
    let r = r.send().await.unwrap();
    Got {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shield_is_an_rfc_9111_shared_cache() {
    let origin = Arc::new(Origin::default());
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let shield = cascade_shield::start(&ShieldConfig {
        listen: "127.0.0.1:0".into(),
        origins: vec![origin_url],
        cache_dir: String::new(),
        cache_memory_mib: 16,
        slice_kib: 64,
        ..ShieldConfig::default()
    })
    .await
    .unwrap();
    let s = format!("http://{}", shield.addr);
    let twice = |path: &'static str| {
        let url = format!("{s}{path}");
        async move { (get(&url, None).await, get(&url, None).await) }
    };

    // Age on arrival is kept, counted off the lifetime, and sent on hits.
    let (a, b) = twice("/mezz/a/aged.json").await;
    assert_eq!((a.status, b.status), (200, 200));
    assert!(b.cache().contains("hit"), "{}", b.cache());
    let age: u64 = b.header("age").parse().unwrap();
    assert!((100..=105).contains(&age), "age {age}");
    assert_eq!(origin.hits("/mezz/a/aged.json"), 1);

    // Older than its max-age on arrival: stale at once, so fetched again.
    let (_, b) = twice("/mezz/a/old.json").await;
    assert!(!b.cache().contains("hit"), "{}", b.cache());
    assert_eq!(origin.hits("/mezz/a/old.json"), 2);

    // Expires − Date gives the lifetime when there is no max-age.
    let (_, b) = twice("/mezz/a/expires.json").await;
    assert!(b.cache().contains("hit"), "{}", b.cache());
    assert_eq!(origin.hits("/mezz/a/expires.json"), 1);

    // Never stored: no-store, private, Vary: *.
    for path in [
        "/mezz/a/nostore.json",
        "/mezz/a/private.json",
        "/mezz/a/varystar.json",
    ] {
        let (a, b) = twice(path).await;
        assert_eq!((a.status, b.status), (200, 200), "{path}");
        assert!(!b.cache().contains("stored"), "{path}: {}", b.cache());
        assert!(!b.cache().contains("hit"), "{path}: {}", b.cache());
        assert_eq!(origin.hits(path), 2, "{path}");
        assert_eq!(origin.not_modified(path), 0, "{path}");
    }

    // no-cache: stored, and every reuse is a conditional request whose 304
    // keeps the stored body.
    let (a, b) = twice("/mezz/a/nocache.json").await;
    assert!(a.cache().contains("stored"), "{}", a.cache());
    assert!(
        b.cache().contains("fwd=stale; fwd-status=304"),
        "{}",
        b.cache()
    );
    assert_eq!(b.body, a.body);
    assert_eq!(b.header("etag"), "\"v1\"");
    assert_eq!(origin.not_modified("/mezz/a/nocache.json"), 1);

    // Mezzanine slices revalidate the same way: the second read of a range
    // costs conditional requests, not bytes.
    let range = Some("bytes=1000-200000");
    let url = format!("{s}/mezz/a/video.mp4");
    let a = get(&url, range).await;
    assert_eq!(a.status, 206);
    assert_eq!(a.body, video()[1000..=200000].to_vec());
    let sent = origin.body_bytes.load(Ordering::SeqCst);
    let b = get(&url, range).await;
    assert_eq!(b.status, 206);
    assert_eq!(b.body, a.body);
    assert_eq!(
        origin.body_bytes.load(Ordering::SeqCst),
        sent,
        "no bytes again"
    );
    assert!(origin.not_modified("/mezz/a/video.mp4") >= 3);

    // stale-if-error serves the stored copy while the origin fails…
    let fragile = format!("{s}/mezz/a/fragile.json");
    let strict = format!("{s}/mezz/a/strict.json");
    assert_eq!(get(&fragile, None).await.status, 200);
    assert_eq!(get(&strict, None).await.status, 200);
    origin.failing.store(true, Ordering::SeqCst);
    let f = get(&fragile, None).await;
    assert_eq!(f.status, 200);
    assert!(f.cache().contains("stale-if-error"), "{}", f.cache());
    // …but never where the origin said must-revalidate.
    let m = get(&strict, None).await;
    assert_eq!(m.status, 500, "{}", m.cache());

    shield.shutdown().await;
}
