//! A load generator for one URL over HTTP/3 (quinn + h3) or HTTP/1.1 over
//! TLS (reqwest + rustls), the same client for every server it is pointed
//! at, so that Cascade's edge and Caddy are measured alike.
//!
//!   cargo run --release -p cascade-benches --bin h3_load -- \
//!     --url https://127.0.0.1:8443/vod/ID/v0/5.m4s --proto h3 --ca ca.pem \
//!     --header "__token__: …" --duration 10
//!
//! Prints one JSON line: requests, bytes, seconds, errors, requests/s,
//! Gbit/s, and latency percentiles. Used by `benches/h3-hits.sh`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

#[derive(Parser)]
struct Args {
    /// The URL to fetch, https://…
    #[arg(long)]
    url: String,
    /// `h3` or `h1` (HTTP/1.1 over TLS).
    #[arg(long, value_parser = ["h3", "h1"])]
    proto: String,
    /// CA certificate (PEM) to trust.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// A request header, `name: value` (repeatable).
    #[arg(long)]
    header: Vec<String>,
    /// Connections (HTTP/3) or connections and concurrent requests (HTTP/1.1).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent request streams per HTTP/3 connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

/// What the workers count.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Latencies in microseconds.
    latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn done(&self, bytes: usize, started: Instant, expected: &AtomicU64) {
        let want = expected.load(Ordering::Relaxed);
        if want == 0 {
            expected.store(bytes as u64, Ordering::Relaxed);
        } else if want != bytes as u64 {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if let Ok(mut l) = self.latencies.lock() {
            l.push(us);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri: http::Uri = args.url.parse().context("--url")?;
    if uri.scheme_str() != Some("https") {
        bail!("--url must be https://");
    }
    let headers: Vec<(String, String)> = args
        .header
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--header {h:?}: use 'name: value'"))
        })
        .collect::<anyhow::Result<_>>()?;
    let ca = std::fs::read(&args.ca).with_context(|| format!("{}", args.ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.context("CA file")?)?;
    }
    let tally = Arc::new(Tally::default());
    let expected = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    match args.proto.as_str() {
        "h3" => {
            let host = uri.host().context("--url host")?.to_string();
            let port = uri.port_u16().unwrap_or(443);
            let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .context("no address for the host")?;
            let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
            tls.alpn_protocols = vec![b"h3".to_vec()];
            let cfg = quinn::ClientConfig::new(Arc::new(
                quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
            ));
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            for _ in 0..args.connections {
                let mut endpoint = quinn::Endpoint::client(bind)?;
                endpoint.set_default_client_config(cfg.clone());
                let conn = endpoint.connect(addr, &host)?.await?;
                let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
                tasks.push(tokio::spawn(async move {
                    let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
                    drop(endpoint);
                }));
                for _ in 0..args.streams {
                    let mut send = send.clone();
                    let (tally, expected, stop) = (tally.clone(), expected.clone(), stop.clone());
                    let (uri, headers) = (uri.clone(), headers.clone());
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            match h3_get(&mut send, &uri, &headers).await {
                                Ok(n) => tally.done(n, t, &expected),
                                Err(_) => {
                                    tally.errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }));
                }
            }
        }
        _ => {
            let client = reqwest::Client::builder()
                .no_proxy()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
                .http1_only()
                .pool_max_idle_per_host(args.connections)
                .build()?;
            for _ in 0..args.connections {
                let (client, tally, expected, stop) = (
                    client.clone(),
                    tally.clone(),
                    expected.clone(),
                    stop.clone(),
                );
                let (url, headers) = (args.url.clone(), headers.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let mut req = client.get(&url);
                        for (k, v) in &headers {
                            req = req.header(k, v);
                        }
                        let body = match req.send().await {
                            Ok(r) if r.status().is_success() => r.bytes().await.ok(),
                            _ => None,
                        };
                        match body {
                            Some(b) => tally.done(b.len(), t, &expected),
                            None => {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
        }
    }
    tokio::time::sleep(duration.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let requests = tally.requests.load(Ordering::Relaxed);
    let bytes = tally.bytes.load(Ordering::Relaxed);
    let mut lat = tally
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i.min(lat.len() - 1)] as f64 / 1000.0
    };
    println!(
        "{}",
        serde_json::json!({
            "proto": args.proto,
            "url_path": uri.path(),
            "requests": requests,
            "bytes": bytes,
            "object_bytes": expected.load(Ordering::Relaxed),
            "errors": tally.errors.load(Ordering::Relaxed),
            "secs": secs,
            "rps": requests as f64 / secs,
            "gbps": bytes as f64 * 8.0 / secs / 1e9,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        })
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// One GET over HTTP/3; the body's length.
async fn h3_get(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    uri: &http::Uri,
    headers: &[(String, String)],
) -> anyhow::Result<usize> {
    let mut req = http::Request::builder().uri(uri.clone());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut stream = send.send_request(req.body(())?).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    let mut n = 0;
    while let Some(chunk) = stream.recv_data().await? {
        n += chunk.remaining();
    }
    Ok(n)
}
