//! HTTP/3 at the edge, checked with an HTTP/3 client written here (quinn +
//! h3 as a client, sharing no code with the edge's listener): the same
//! bytes as HTTP/1.1 for a whole title, the same refusals, `Alt-Svc` on
//! TCP, certificate reload while connected, back-pressure on a slow reader,
//! draining on shutdown, 0-RTT off unless switched on, and the header limit.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use cascade_geo::UnknownPolicy;
use common::Stack;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

/// A certificate for the test edge: (chain PEM, key PEM, CA PEM).
fn certificate() -> (String, String, String) {
    let g = cascade_serve::tls::generate(&["localhost", "127.0.0.1"]).unwrap();
    (format!("{}{}", g.cert_pem, g.ca_pem), g.key_pem, g.ca_pem)
}

/// Writes a certificate pair the way an operator's renewal should: each
/// file replaced by rename.
fn install(dir: &Path, chain: &str, key: &str) {
    for (name, text) in [("cert.pem", chain), ("key.pem", key)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// Edge settings for TLS on an ephemeral port with the pair in `dir`.
fn tls_edge(dir: &Path) -> impl FnOnce(&mut cascade_edge::EdgeConfig) {
    let dir = dir.to_path_buf();
    move |e| {
        e.tls_listen = "127.0.0.1:0".into();
        e.tls_cert = dir.join("cert.pem").display().to_string();
        e.tls_key = dir.join("key.pem").display().to_string();
        e.tls_reload_secs = 1;
    }
}

fn quic_client(cas: &[&str], early_data: bool, stream_window: Option<u32>) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early_data;
    let mut cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    if let Some(w) = stream_window {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(w.into());
        cfg.transport_config(Arc::new(t));
    }
    cfg
}

/// One HTTP/3 connection of the test client.
struct H3 {
    conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    _driver: tokio::task::JoinHandle<()>,
    _endpoint: quinn::Endpoint,
}

type ClientStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

impl H3 {
    async fn connect(server: SocketAddr, from: IpAddr, cfg: quinn::ClientConfig) -> H3 {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::new(from, 0)).unwrap();
        endpoint.set_default_client_config(cfg);
        let conn = endpoint
            .connect(server, "localhost")
            .unwrap()
            .await
            .unwrap();
        H3::over(endpoint, conn).await
    }

    async fn over(endpoint: quinn::Endpoint, conn: quinn::Connection) -> H3 {
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .unwrap();
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        H3 {
            conn,
            send,
            _driver: driver,
            _endpoint: endpoint,
        }
    }

    /// Sends a request and reads the response head; the body is left to read.
    async fn start(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(http::Response<()>, ClientStream), String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut stream = self
            .send
            .send_request(req.body(()).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        Ok((resp, stream))
    }

    async fn get(&mut self, path: &str) -> (u16, http::HeaderMap, Vec<u8>) {
        let (resp, mut stream) = self.start("GET", path, &[]).await.unwrap();
        let body = read_all(&mut stream).await.unwrap();
        (resp.status().as_u16(), resp.headers().clone(), body)
    }

    /// The leaf certificate the server showed on this connection.
    fn peer_leaf(&self) -> Vec<u8> {
        let identity = self.conn.peer_identity().unwrap();
        let chain = identity.downcast::<Vec<CertificateDer<'static>>>().unwrap();
        chain[0].to_vec()
    }
}

async fn read_all(stream: &mut ClientStream) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            body.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(body)
}

/// An HTTP/1.1 client bound to `ip`, over plain HTTP.
fn h1_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// An HTTPS client from 127.0.0.2 (India in the test database) trusting
/// `ca` (HTTP/2 where offered), reporting the server's certificate.
fn https(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .tls_info(true)
        .build()
        .unwrap()
}

async fn h1_get(client: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// Every path of an HLS title, from its playlists as fetched over HTTP/3:
/// the master, each media playlist, each init and media segment.
async fn hls_paths(h3: &mut H3, asset: &str, token: &str) -> Vec<String> {
    let base = format!("/vod/{asset}");
    let master_path = format!("{base}/master.m3u8?__token__={token}");
    let (status, _, master) = h3.get(&master_path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&master));
    let master = String::from_utf8(master).unwrap();
    let mut playlists: Vec<String> = master
        .lines()
        .filter(|l| l.contains(".m3u8") && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for line in master.lines().filter(|l| l.starts_with("#EXT-X-MEDIA")) {
        if let Some(uri) = line
            .split("URI=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            playlists.push(uri.to_string());
        }
    }
    assert!(playlists.len() >= 3, "two video rungs and audio: {master}");
    let mut paths = vec![master_path];
    for p in playlists {
        let path = format!("{base}/{p}");
        let (status, _, text) = h3.get(&path).await;
        assert_eq!(status, 200);
        let text = String::from_utf8(text).unwrap();
        paths.push(path);
        for line in text.lines() {
            // Without the query: callers add the token.
            let uri = if let Some(map) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
                map.trim_end_matches('"')
            } else if !line.starts_with('#') && !line.is_empty() {
                line
            } else {
                continue;
            };
            let uri = uri.split('?').next().unwrap_or(uri);
            paths.push(format!("{base}/{uri}"));
        }
    }
    paths
}

/// A stack whose edge serves TLS and HTTP/3, with a title licensed in India
/// and Nepal: the stack, the asset, the CA to trust, and the temp dirs to keep.
async fn tls_title() -> (Stack, String, String, [tempfile::TempDir; 2]) {
    let certs = tempfile::tempdir().unwrap();
    let (chain, key, ca) = certificate();
    install(certs.path(), &chain, &key);
    let dir = tempfile::tempdir().unwrap();
    let (stack, asset) = common::licensed_stack(
        dir.path(),
        UnknownPolicy::Allow,
        vec![],
        tls_edge(certs.path()),
    )
    .await;
    (stack, asset, ca, [certs, dir])
}

/// Sums a counter over the series whose labels contain every `parts`.
fn metric_sum(metrics: &str, name: &str, parts: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_title_over_http3_is_byte_for_byte_what_http1_serves_and_refusals_match() {
    let (stack, asset, ca, _dirs) = tls_title().await;
    let tls_addr = stack.edge.tls_addr.expect("a TLS listener");
    let token = common::sign_for(&asset);
    // An Indian viewer (the title is licensed in IN and NP).
    let mut h3 = H3::connect(
        tls_addr,
        "127.0.0.2".parse().unwrap(),
        quic_client(&[&ca], false, None),
    )
    .await;
    let h1 = h1_from("127.0.0.2");
    let paths = hls_paths(&mut h3, &asset, &token).await;
    let segments = paths.iter().filter(|p| p.contains(".m4s")).count();
    assert!(segments >= 3, "segments of every rendition: {paths:?}");
    let mut h3_requests = 0;
    for path in &paths {
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = if path.contains("__token__") {
            path.clone()
        } else {
            format!("{path}{sep}__token__={token}")
        };
        let (s3, headers, over_h3) = h3.get(&path).await;
        h3_requests += 1;
        let (s1, over_h1) = h1_get(&h1, &format!("{}{path}", stack.edge_url)).await;
        assert_eq!((s3, s1), (200, 200), "{path}");
        assert_eq!(over_h3.len(), over_h1.len(), "{path}");
        assert!(over_h3 == over_h1, "{path}: the bytes differ");
        assert!(headers.contains_key("cache-status"), "{path}: {headers:?}");
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(
            headers["content-length"].to_str().unwrap(),
            over_h3.len().to_string()
        );
    }

    // Refusals: the same status and the same JSON body whatever the protocol.
    let master = format!("/vod/{asset}/master.m3u8");
    let mut us = H3::connect(
        tls_addr,
        "127.0.0.3".parse().unwrap(),
        quic_client(&[&ca], false, None),
    )
    .await;
    let h1_us = h1_from("127.0.0.3");
    let cases = [
        ("no token", master.clone(), false, 403),
        (
            "a forged token",
            format!("{master}?__token__=exp=9999999999~acl=/*~hmac=00"),
            true,
            403,
        ),
        (
            "a viewer in a country without the licence",
            format!("{master}?__token__={token}"),
            true,
            451,
        ),
    ];
    for (what, path, from_us, want) in cases {
        let (h3c, h1c) = if from_us {
            (&mut us, &h1_us)
        } else {
            (&mut h3, &h1)
        };
        let (s3, _, b3) = h3c.get(&path).await;
        h3_requests += 1;
        let (s1, b1) = h1_get(h1c, &format!("{}{path}", stack.edge_url)).await;
        assert_eq!(
            s3,
            want,
            "{what} over HTTP/3: {}",
            String::from_utf8_lossy(&b3)
        );
        assert_eq!(s1, want, "{what} over HTTP/1.1");
        let j3: Value = serde_json::from_slice(&b3).unwrap();
        let j1: Value = serde_json::from_slice(&b1).unwrap();
        assert_eq!(j3, j1, "{what}: the same JSON body");
    }

    // TCP with TLS: HTTP/2 by ALPN, and Alt-Svc announcing HTTP/3 on the same port.
    let r = https(&ca)
        .get(format!("https://localhost:{}/healthz", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        r.headers()["alt-svc"],
        format!("h3=\":{}\"; ma=86400", tls_addr.port()).as_str()
    );
    let r = https(&ca)
        .get(format!("https://localhost:{}{}", tls_addr.port(), paths[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("alt-svc"));

    // The metrics and the access log say which protocol served each request.
    let m = common::text(format!("{}/metrics", stack.edge_url)).await;
    let counted = metric_sum(&m, "cascade_requests_total", &["protocol=\"h3\""]);
    assert!(
        counted >= h3_requests,
        "{counted} HTTP/3 requests counted, {h3_requests} made"
    );
    assert!(metric_sum(&m, "cascade_requests_total", &["protocol=\"h2\""]) >= 2);
    assert!(
        metric_sum(&m, "cascade_h3_connections_total", &["accepted"]) >= 2,
        "{}",
        m.lines()
            .filter(|l| l.contains("h3"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_certificate_is_served_without_a_restart_and_open_connections_carry_on() {
    let certs = tempfile::tempdir().unwrap();
    let (chain1, key1, ca1) = certificate();
    let (chain2, key2, ca2) = certificate();
    install(certs.path(), &chain1, &key1);
    let stack = Stack::start_with(tls_edge(certs.path())).await;
    let addr = stack.edge.tls_addr.unwrap();
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let leaf = |chain: &str| {
        CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let mut open = H3::connect(addr, local, quic_client(&[&ca1, &ca2], false, None)).await;
    assert_eq!(open.peer_leaf(), leaf(&chain1));
    assert_eq!(open.get("/healthz").await.0, 200);

    // A half-done renewal (new certificate, old key) is refused; the old pair stays.
    std::fs::write(certs.path().join("cert.pem.new"), &chain2).unwrap();
    std::fs::rename(
        certs.path().join("cert.pem.new"),
        certs.path().join("cert.pem"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = common::text(format!("{}/metrics", stack.edge_url)).await;
        if metric_sum(&m, "cascade_edge_tls_reloads_total", &["failed"]) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mismatched pair was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = H3::connect(addr, local, quic_client(&[&ca1, &ca2], false, None)).await;
    assert_eq!(fresh.peer_leaf(), leaf(&chain1), "still the old pair");

    // The finished renewal is picked up by new connections, over QUIC and TCP.
    install(certs.path(), &chain2, &key2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = H3::connect(addr, local, quic_client(&[&ca1, &ca2], false, None)).await;
        if c.peer_leaf() == leaf(&chain2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = https(&ca2)
        .get(format!("https://localhost:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap();
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    assert_eq!(info.peer_certificate().unwrap(), leaf(&chain2).as_slice());
    // The connection opened before the reload still works, on its old certificate.
    assert_eq!(open.get("/healthz").await.0, 200);
    assert_eq!(open.peer_leaf(), leaf(&chain1));
    let m = common::text(format!("{}/metrics", stack.edge_url)).await;
    assert!(metric_sum(&m, "cascade_edge_tls_reloads_total", &["reloaded"]) >= 1);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_holds_back_only_its_own_stream_and_shutdown_drains() {
    let (stack, asset, ca, _dirs) = tls_title().await;
    let addr = stack.edge.tls_addr.unwrap();
    let token = common::sign_for(&asset);
    let q = format!("__token__={token}");
    // Receive windows of 4 KiB per stream: a segment does not fit.
    let mut h3 = H3::connect(
        addr,
        "127.0.0.2".parse().unwrap(),
        quic_client(&[&ca], false, Some(4 * 1024)),
    )
    .await;
    let paths: Vec<String> = hls_paths(&mut h3, &asset, &token)
        .await
        .into_iter()
        .filter(|p| p.contains(".m4s"))
        .collect();
    // The largest segment (video), then the others.
    let h1 = h1_from("127.0.0.2");
    let mut sized = Vec::new();
    for p in &paths {
        let (_, body) = h1_get(&h1, &format!("{}{p}?{q}", stack.edge_url)).await;
        sized.push((body.len(), p.clone(), body));
    }
    sized.sort_by_key(|s| std::cmp::Reverse(s.0));
    let (_, big, expected) = sized.remove(0);
    let rest: Vec<String> = sized.into_iter().map(|(_, p, _)| p).collect();
    let big_path = format!("{big}?{q}");
    assert!(
        expected.len() > 16 * 1024,
        "a segment larger than the window: {} bytes",
        expected.len()
    );
    // Ask for it and read nothing.
    let (resp, mut stalled) = h3.start("GET", &big_path, &[]).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Every other segment still comes, on the same connection.
    for p in rest {
        let (status, _, body) =
            tokio::time::timeout(Duration::from_secs(30), h3.get(&format!("{p}?{q}")))
                .await
                .expect("another stream is not held up by the stalled one");
        assert_eq!(status, 200);
        assert!(!body.is_empty());
    }

    // Shutdown: GOAWAY stops new requests, the stalled one still completes.
    let edge_url = stack.edge_url.clone();
    let stopping = tokio::spawn(stack.shutdown());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if h3.start("GET", "/healthz", &[]).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "no GOAWAY after shutdown began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = read_all(&mut stalled).await.unwrap();
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "the drained response is whole and right");
    // Done and told to go away, the client closes, which ends the drain.
    h3.conn.close(0u32.into(), b"");
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("shutdown finishes once drained")
        .unwrap();
    assert!(
        reqwest::get(format!("{edge_url}/healthz")).await.is_err(),
        "the edge is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_rtt_is_refused_unless_switched_on_and_large_headers_are_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (chain, key, ca) = certificate();
    install(certs.path(), &chain, &key);
    for allow in [false, true] {
        let stack = Stack::start_with({
            let tls = tls_edge(certs.path());
            move |e| {
                tls(e);
                e.h3_allow_0rtt = allow;
            }
        })
        .await;
        let addr = stack.edge.tls_addr.unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quic_client(&[&ca], true, None));
        // A first connection leaves the client a session ticket.
        let first = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let mut c = H3::over(endpoint.clone(), first).await;
        assert_eq!(c.get("/healthz").await.0, 200);
        c.conn.close(0u32.into(), b"");
        drop(c);
        // The second tries 0-RTT.
        let connecting = endpoint.connect(addr, "localhost").unwrap();
        if allow {
            let (conn, accepted) = connecting
                .into_0rtt()
                .unwrap_or_else(|_| panic!("the ticket allows 0-RTT"));
            let mut c = H3::over(endpoint.clone(), conn).await;
            let (resp, mut s) = c.start("GET", "/healthz", &[]).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(read_all(&mut s).await.unwrap(), b"ok\n");
            assert!(accepted.await, "0-RTT accepted when switched on");
            // A POST sent early waits for the handshake rather than being refused.
            let (resp, _) = c.start("POST", "/healthz", &[]).await.unwrap();
            assert_eq!(resp.status(), 200);
        } else {
            // The server's ticket does not offer early data, or the server
            // refuses it: either way nothing is answered before the handshake.
            match connecting.into_0rtt() {
                Err(connecting) => {
                    connecting.await.unwrap();
                }
                Ok((_conn, accepted)) => assert!(!accepted.await, "0-RTT refused by default"),
            }
        }
        // Headers over the limit (16 KiB by default) are refused.
        let mut c = H3::connect(
            addr,
            "127.0.0.1".parse().unwrap(),
            quic_client(&[&ca], false, None),
        )
        .await;
        assert_eq!(c.get("/healthz").await.0, 200, "settings exchanged");
        let big = "x".repeat(20 * 1024);
        match c.start("GET", "/healthz", &[("x-big", &big)]).await {
            Ok((resp, _)) => assert_eq!(resp.status(), 431),
            // The client read the limit from the server's SETTINGS and would not send.
            Err(e) => assert!(e.to_lowercase().contains("header"), "{e}"),
        }
        stack.shutdown().await;
    }
}

/// Status, headers (less those that differ by nature: `date`, the request
/// id, and HTTP/1.1's own `connection` framing, which HTTP/2 and HTTP/3
/// forbid) and body of one answer.
type Answer = (u16, Vec<(String, String)>, String);

/// A request: method, path, headers.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

fn comparable(status: u16, headers: &http::HeaderMap, body: Vec<u8>) -> Answer {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id" | "connection"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    h.sort();
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_writer_answers_alike_over_http1_http2_and_http3() {
    let (stack, asset, ca, _dirs) = tls_title().await;
    let tls_addr = stack.edge.tls_addr.expect("a TLS listener");
    let token = common::sign_for(&asset);
    let mut h3 = H3::connect(
        tls_addr,
        "127.0.0.2".parse().unwrap(),
        quic_client(&[&ca], false, None),
    )
    .await;
    let h2 = https(&ca);
    let h1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let master = format!("/vod/{asset}/master.m3u8?__token__={token}");
    let cases: Vec<Case> = vec![
        ("GET", master.clone(), vec![]),
        ("HEAD", master.clone(), vec![]),
        (
            "GET",
            master.clone(),
            vec![("range", "bytes=0-9"), ("origin", "https://a.example")],
        ),
        (
            "OPTIONS",
            format!("/vod/{asset}/master.m3u8"),
            vec![("origin", "https://a.example")],
        ),
        ("GET", format!("/vod/{asset}/master.m3u8"), vec![]),
        ("GET", "/healthz".to_string(), vec![]),
        (
            "GET",
            format!("/vod/{asset}/master.m3u8?x=1&__token__={token}&max_height=abc"),
            vec![],
        ),
    ];
    // Warm the cache first, so every protocol sees the same hit.
    let (s, _, _) = h3.get(&master).await;
    assert_eq!(s, 200);
    for (method, path, headers) in &cases {
        let m = http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut over_tcp = Vec::new();
        for (client, version) in [(&h1, http::Version::HTTP_11), (&h2, http::Version::HTTP_2)] {
            let mut req = client.request(
                m.clone(),
                format!("https://localhost:{}{path}", tls_addr.port()),
            );
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.version(), version, "{method} {path}");
            let (status, hdrs) = (r.status().as_u16(), r.headers().clone());
            let body = r.bytes().await.unwrap().to_vec();
            over_tcp.push(comparable(status, &hdrs, body));
        }
        let (resp, mut stream) = h3.start(method, path, headers).await.unwrap();
        let body = read_all(&mut stream).await.unwrap();
        let over_h3 = comparable(resp.status().as_u16(), resp.headers(), body);
        assert_eq!(
            over_tcp[0], over_tcp[1],
            "{method} {path}: HTTP/1.1 and HTTP/2 differ"
        );
        assert_eq!(
            over_tcp[0], over_h3,
            "{method} {path}: HTTP/1.1 and HTTP/3 differ"
        );
        let (status, hdrs, body) = &over_h3;
        let length = hdrs.iter().find(|(n, _)| n == "content-length");
        match (*method, *status) {
            (_, 204) | (_, 304) => assert!(length.is_none(), "{method} {path}: {hdrs:?}"),
            ("HEAD", _) => {
                assert!(body.is_empty());
                assert_ne!(
                    length.map(|l| l.1.as_str()),
                    Some("0"),
                    "HEAD has GET's length"
                );
            }
            _ => assert_eq!(length.map(|l| l.1.clone()), Some(body.len().to_string())),
        }
    }
    // The preflight is a 204, the tokenless request a 403, a bad filter a
    // 400 with JSON that does not echo the token.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for (method, path, headers) in &cases {
            let (resp, mut stream) = h3.start(method, path, headers).await.unwrap();
            let body = read_all(&mut stream).await.unwrap();
            if resp.status() == 400 {
                let text = String::from_utf8_lossy(&body);
                assert!(!text.contains(&token), "the token echoed: {text}");
                serde_json::from_slice::<Value>(&body).expect("a JSON error");
            }
            v.push(resp.status().as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 206, 204, 403, 200, 400]);
    // Over TLS every answer tells browsers to keep to HTTPS; the page
    // keeps the origin's security headers through the edge's cache.
    let (status, headers, _) = h3.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("'sha256-"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let plain = reqwest::get(format!("{}/", stack.edge_url)).await.unwrap();
    assert!(plain.headers().get("strict-transport-security").is_none());
    stack.shutdown().await;
}
