//! The edge's generic path (everything that is not media, API or fleet) is
//! an RFC 9111 shared cache. Its origin here is an HTTP server of the
//! test's own that sends, per path, the headers each rule reads
//! (`Cache-Control` variants, validators, `Vary`, failures on demand): the
//! generic path fronts any origin, and Cascade's own sends only a few of
//! these.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cascade_edge::EdgeConfig;

/// What the test origin saw and how it behaves.
#[derive(Default)]
struct Origin {
    /// Requests per path (and method).
    hits: Mutex<HashMap<String, usize>>,
    /// Conditional requests answered 304.
    not_modified: AtomicUsize,
    /// Request headers of the last request, per path.
    seen: Mutex<HashMap<String, HeaderMap>>,
    /// Answer 500 to everything.
    failing: AtomicBool,
}

impl Origin {
    fn hits(&self, key: &str) -> usize {
        self.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

async fn answer(State(o): State<Arc<Origin>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    *o.hits
        .lock()
        .unwrap()
        .entry(format!("{method} {path}"))
        .or_default() += 1;
    o.seen
        .lock()
        .unwrap()
        .insert(path.clone(), req.headers().clone());
    if o.failing.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let h = req.headers();
    let query = req.uri().query().unwrap_or("").to_string();
    let etag = "\"v1\"";
    let (cc, extra): (&str, Vec<(&str, String)>) = match path.as_str() {
        "/static/app.js" => ("public, max-age=300", vec![]),
        "/search" => ("public, max-age=300", vec![]),
        "/nostore" => ("no-store", vec![]),
        "/private" => ("private, max-age=300", vec![]),
        "/shared" => ("max-age=0, s-maxage=300", vec![]),
        "/validate" => ("no-cache", vec![("etag", etag.into())]),
        "/slow" => {
            // A slow origin, so that concurrent revalidations overlap.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            ("no-cache", vec![("etag", etag.into())])
        }
        "/fragile" => ("max-age=0, stale-if-error=600", vec![("etag", etag.into())]),
        "/vary" => (
            "public, max-age=300",
            vec![
                ("vary", "Accept-Encoding".into()),
                (
                    "content-encoding",
                    h.get("accept-encoding")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("identity")
                        .into(),
                ),
            ],
        ),
        "/page" => (
            "public, max-age=300",
            vec![
                ("etag", etag.into()),
                ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT".into()),
                ("expires", "Thu, 31 Dec 2099 00:00:00 GMT".into()),
                ("x-origin-note", "end-to-end".into()),
            ],
        ),
        _ => return (StatusCode::NOT_FOUND, "no").into_response(),
    };
    if h.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag)
        && extra.iter().any(|(k, _)| *k == "etag")
    {
        o.not_modified.fetch_add(1, Ordering::SeqCst);
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut()
            .insert("cache-control", HeaderValue::from_str(cc).unwrap());
        r.headers_mut()
            .insert("etag", HeaderValue::from_static("\"v1\""));
        return r;
    }
    let body = format!("{method} {path}?{query} body-0123456789");
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_str(cc).unwrap());
    for (k, v) in extra {
        r.headers_mut()
            .insert(k, HeaderValue::from_str(&v).unwrap());
    }
    r
}

/// An edge whose origin is the test's; answers (edge URL, origin state).
async fn edge_before(origin: Arc<Origin>) -> (cascade_edge::Edge, String, tempfile::TempDir) {
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let edge = cascade_edge::start(&EdgeConfig {
        listen: "127.0.0.1:0".into(),
        shields: vec![],
        origin: origin_url,
        cache_dir: String::new(),
        cache_memory_mib: 16,
        token_keys: vec![common::test_key("test", common::TEST_KEY_HEX)],
        open_paths: [
            "/static/*",
            "/search",
            "/nostore",
            "/private",
            "/shared",
            "/validate",
            "/fragile",
            "/vary",
            "/page",
            "/slow",
        ]
        .map(String::from)
        .to_vec(),
        cache_query_paths: vec!["/search".into()],
        ..EdgeConfig::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}", edge.addr);
    (edge, url, dir)
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Got {
    fn cache(&self) -> String {
        self.headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut r =
        common::client().request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    Got {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_path_is_an_rfc_9111_shared_cache() {
    let origin = Arc::new(Origin::default());
    let (edge, e, _dir) = edge_before(origin.clone()).await;
    let get = |path: &str| {
        let url = format!("{e}{path}");
        async move { send("GET", &url, &[]).await }
    };

    // The query is not part of the key by default: a cache-buster cannot
    // fill the cache.
    let a = get("/static/app.js?cb=1").await;
    let b = get("/static/app.js?cb=2").await;
    assert_eq!((a.status, b.status), (200, 200));
    assert!(b.cache().contains("hit"), "{}", b.cache());
    assert_eq!(origin.hits("GET /static/app.js"), 1);
    // …except where the configuration says the answer depends on it.
    get("/search?q=a").await;
    get("/search?q=b").await;
    let again = get("/search?q=a").await;
    assert!(again.cache().contains("hit"));
    assert!(again.body.contains("q=a"), "{}", again.body);
    assert_eq!(origin.hits("GET /search"), 2);

    // End-to-end headers both ways.
    let page = send(
        "GET",
        &format!("{e}/page"),
        &[("accept-language", "hi"), ("x-app", "tv")],
    )
    .await;
    let seen = origin.seen.lock().unwrap().get("/page").cloned().unwrap();
    assert_eq!(seen["accept-language"], "hi");
    assert_eq!(seen["x-app"], "tv");
    for h in ["etag", "last-modified", "expires", "x-origin-note"] {
        assert!(page.headers.contains_key(h), "{h} passed back");
    }
    // A hit carries its Age.
    let hit = get("/page").await;
    assert!(hit.cache().contains("hit"));
    assert!(hit.headers.contains_key("age"), "{:?}", hit.headers);
    // The client's own conditions and ranges, answered from the cache.
    let nm = send("GET", &format!("{e}/page"), &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    let ims = send(
        "GET",
        &format!("{e}/page"),
        &[("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")],
    )
    .await;
    assert_eq!(ims.status, 304);
    let part = send("GET", &format!("{e}/page"), &[("range", "bytes=0-3")]).await;
    assert_eq!((part.status, part.body.as_str()), (206, "GET "));
    assert_eq!(origin.hits("GET /page"), 1, "all of that from one fetch");

    // no-store and private are never stored; s-maxage wins over max-age.
    for path in ["/nostore", "/private"] {
        get(path).await;
        let second = get(path).await;
        assert!(
            !second.cache().contains("hit"),
            "{path}: {}",
            second.cache()
        );
    }
    assert_eq!(origin.hits("GET /nostore"), 2);
    assert_eq!(origin.hits("GET /private"), 2);
    get("/shared").await;
    assert!(get("/shared").await.cache().contains("hit"));

    // no-cache: every reuse is revalidated, and a 304 keeps the body.
    let first = get("/validate").await;
    let second = get("/validate").await;
    assert_eq!(second.body, first.body);
    assert!(
        second.cache().contains("fwd-status=304"),
        "{}",
        second.cache()
    );
    assert_eq!(origin.not_modified.load(Ordering::SeqCst), 1);
    assert_eq!(
        origin.seen.lock().unwrap()["/validate"]["if-none-match"],
        "\"v1\""
    );

    // Concurrent revalidations of one stale answer collapse into one
    // conditional request to the origin.
    get("/slow").await;
    let many = (0..10).map(|_| get("/slow"));
    let answers = futures::future::join_all(many).await;
    assert!(answers
        .iter()
        .all(|a| a.status == 200 && a.body == answers[0].body));
    assert_eq!(origin.hits("GET /slow"), 2, "one fill, one revalidation");
    assert!(
        answers.iter().any(|a| a.cache().contains("collapsed")),
        "{:?}",
        answers.iter().map(Got::cache).collect::<Vec<_>>()
    );

    // Vary: one variant per Accept-Encoding, each a hit on repeat.
    let gz = send("GET", &format!("{e}/vary"), &[("accept-encoding", "gzip")]).await;
    let br = send("GET", &format!("{e}/vary"), &[("accept-encoding", "br")]).await;
    assert_eq!(gz.headers["content-encoding"], "gzip");
    assert_eq!(br.headers["content-encoding"], "br");
    let gz2 = send("GET", &format!("{e}/vary"), &[("accept-encoding", "gzip")]).await;
    assert!(gz2.cache().contains("hit"), "{}", gz2.cache());
    assert_eq!(gz2.headers["content-encoding"], "gzip");
    assert_eq!(origin.hits("GET /vary"), 2);

    // Other methods pass through, uncached, and a successful unsafe one
    // invalidates what is stored for its URL.
    let put = send("PUT", &format!("{e}/page"), &[]).await;
    assert_eq!(put.status, 200);
    assert!(put.body.starts_with("PUT /page"), "{}", put.body);
    assert!(put.cache().contains("fwd=bypass"));
    let after = get("/page").await;
    assert!(!after.cache().contains("hit"), "{}", after.cache());
    assert_eq!(origin.hits("GET /page"), 2);

    // stale-if-error: the origin fails, the stale copy is served.
    let fresh = get("/fragile").await;
    origin.failing.store(true, Ordering::SeqCst);
    let stale = get("/fragile").await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, fresh.body);
    assert!(stale.cache().contains("stale"), "{}", stale.cache());
    origin.failing.store(false, Ordering::SeqCst);
    edge.shutdown().await;
}
