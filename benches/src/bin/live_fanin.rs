//! Fan-in: many LL-HLS viewers on one edge, and what reaches the shield and
//! the origin per part; plus the delay from a part's publication at the
//! origin to its delivery to viewers, and the edge's CPU and memory.
//!
//! ```sh
//! cargo build --release --bin cascade
//! cargo run --release -p cascade-benches --bin live_fanin -- --viewers 10000
//! ```
//!
//! The origin (with its RTMP ingest) and a shield run in this process; the
//! edge runs as its own process (`target/release/cascade edge`), so its CPU
//! time and resident memory are its own. FFmpeg publishes a 640x360 25 fps
//! test pattern over RTMP. Each viewer holds one HTTP/1.1 connection to the
//! edge and behaves like an LL-HLS player: a blocking playlist reload for
//! the part the last playlist hinted (`_HLS_msn`, `_HLS_part`), then that
//! part, and again. A separate poller reads the origin's live manifest
//! (not blocking, so it is not counted as a viewer's request) to learn when
//! each part was published.
//!
//! Reported: upstream requests per part at the shield and the origin
//! (goal: exactly 1 each), the p50/p99 delay from publication at the origin
//! to a viewer holding the part, requests per second served, and the edge's
//! CPU seconds per second and resident memory per viewer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    /// Concurrent viewers on the edge.
    #[arg(long, default_value_t = 10_000)]
    viewers: usize,
    /// Seconds measured (after every viewer is playing).
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// The `cascade` binary that runs the edge.
    #[arg(long, default_value = "target/release/cascade")]
    cascade: PathBuf,
    /// Viewers connecting per second while the crowd arrives.
    #[arg(long, default_value_t = 2000)]
    arrivals: u64,
}

/// Each part's (ingest ms of its first frame, publication ms), by (msn, part).
type PartTimes = Arc<Mutex<HashMap<(u64, u32), (u64, u64)>>>;

const KEY_HEX: &str = "5ecbe75ecbe75ecbe75ecbe75ecbe75e";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().context("temp path")?.to_string();

    let origin = cascade_origin::start(&cascade_origin::OriginConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: format!("{data}/origin"),
        rtmp_listen: "127.0.0.1:0".into(),
        admin_token: "bench-admin".into(),
        live_ladder: vec![],
        ..cascade_origin::OriginConfig::default()
    })
    .await?;
    let origin_url = format!("http://{}", origin.addr);
    let shield = cascade_shield::start(&cascade_shield::ShieldConfig {
        listen: "127.0.0.1:0".into(),
        origins: vec![origin_url.clone()],
        cache_dir: format!("{data}/shield-cache"),
        cache_memory_mib: 256,
        cache_disk_mib: 0,
        ..cascade_shield::ShieldConfig::default()
    })
    .await?;
    let shield_url = format!("http://{}", shield.addr);

    // The edge, as its own process.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let edge_toml = format!(
        "listen = \"127.0.0.1:{port}\"\nshields = [\"{shield_url}\"]\norigin = \"{origin_url}\"\n\
         origin_fallback = false\ncache_memory_mib = 512\ncache_dir = \"{data}/edge-cache\"\n\
         cache_disk_mib = 0\nhttp3 = false\ncontrol_url = \"\"\nnode_name = \"bench-edge\"\n\
         [[token_keys]]\nkid = \"bench\"\nkey = \"{KEY_HEX}\"\n"
    );
    let cfg_path = dir.path().join("edge.toml");
    std::fs::write(&cfg_path, edge_toml)?;
    let mut edge = std::process::Command::new(&args.cascade)
        .args(["edge", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "{} (cargo build --release --bin cascade)",
                args.cascade.display()
            )
        })?;
    let edge_pid = edge.id();
    let edge_addr = format!("127.0.0.1:{port}");

    // A channel, and FFmpeg publishing to it.
    let client = reqwest::Client::new();
    let made: serde_json::Value = client
        .post(format!("{origin_url}/api/v1/admin/channels"))
        .bearer_auth("bench-admin")
        .json(&serde_json::json!({ "name": "final" }))
        .send()
        .await?
        .json()
        .await?;
    let key = made["stream_key"].as_str().context("stream key")?;
    let rtmp = origin.rtmp_addr.context("rtmp")?;
    let mut ffmpeg = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=s=640x360:r=25:d={}", args.secs + 600))
        .args(["-f", "lavfi", "-i", "sine=f=440:sample_rate=48000"])
        .args([
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            "-f",
            "flv",
        ])
        .arg(format!("rtmp://{rtmp}/live/{key}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;

    let token = {
        let k = cascade_token::Key::from_hex("bench", KEY_HEX)?;
        cascade_token::sign(
            &k,
            &cascade_token::Claims {
                expires: cascade_serve::unix_now() + 7200,
                acl: vec!["/live/final/*".into()],
                ..Default::default()
            },
        )
    };
    let q = format!("__token__={token}");

    // Wait for the edge and a first playlist.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .get(format!("http://{edge_addr}/live/final/v0.m3u8?{q}"))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 200 && r.text().await?.contains("#EXTINF") {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the channel never played at the edge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // When each part was published, from the origin's manifest.
    let published: PartTimes = Arc::default();
    let poll = {
        let (published, url) = (
            published.clone(),
            format!("{origin_url}/live-mezz/final/manifest.json"),
        );
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(r) = client.get(&url).send().await {
                    if let Ok(b) = r.bytes().await {
                        if let Ok(m) = cascade_packager::live::LiveManifest::from_json(&b) {
                            if let Ok(mut p) = published.lock() {
                                for s in &m.segments {
                                    // The wall clock its first frame reached
                                    // ingest: the segment's program date-time
                                    // plus the parts before it.
                                    let mut offset = 0u64;
                                    for (i, part) in s.parts.iter().enumerate() {
                                        let ingest = s.pdt_ms + offset / 90;
                                        offset += u64::from(part.duration);
                                        p.insert((s.msn, i as u32), (ingest, part.published_ms));
                                    }
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The crowd arrives.
    let delays: Arc<Mutex<Vec<(u64, u32, u64)>>> = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut viewers = Vec::with_capacity(args.viewers);
    let gap = Duration::from_micros(1_000_000 / args.arrivals.max(1));
    for i in 0..args.viewers {
        let v = Viewer {
            addr: edge_addr.clone(),
            q: q.clone(),
            delays: delays.clone(),
            requests: requests.clone(),
            errors: errors.clone(),
            measuring: measuring.clone(),
        };
        viewers.push(tokio::spawn(async move { v.run().await }));
        // In batches: a timer per viewer would starve once the crowd is busy.
        if i % 100 == 99 {
            tokio::time::sleep(gap * 100).await;
        }
    }
    eprintln!(
        "{} viewers connected ({} errors so far); settling",
        args.viewers,
        errors.load(Ordering::Relaxed)
    );
    // Everyone in; settle, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let origin_before = origin_counts(&client, &origin_url).await?;
    let shield_before = shield_misses(&client, &shield_url).await?;
    let (cpu_before, _) = proc_stat(edge_pid)?;
    let parts_before = published.lock().map(|p| p.len()).unwrap_or(0);
    requests.store(0, Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    eprintln!("measuring for {} s", args.secs);
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let (cpu_after, rss_kib) = proc_stat(edge_pid)?;
    let origin_after = origin_counts(&client, &origin_url).await?;
    let shield_after = shield_misses(&client, &shield_url).await?;
    let parts = published.lock().map(|p| p.len()).unwrap_or(0) - parts_before;
    let served = requests.load(Ordering::Relaxed);

    // Let the poller catch up with the last parts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let times = published.lock().map(|p| p.clone()).unwrap_or_default();
    let all: Vec<(u64, u64)> = delays
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(msn, part, at)| {
            let (ingest, published) = times.get(&(msn, part))?;
            Some((at.saturating_sub(*ingest), at.saturating_sub(*published)))
        })
        .collect();
    let mut from_ingest: Vec<u64> = all.iter().map(|d| d.0).collect();
    let mut d: Vec<u64> = all.iter().map(|d| d.1).collect();
    from_ingest.sort_unstable();
    d.sort_unstable();
    let pct = |v: &[u64], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
    };
    let per_part = |after: u64, before: u64| (after - before) as f64 / parts.max(1) as f64;
    println!("viewers                       {}", args.viewers);
    println!("parts published (measured)    {parts} in {wall:.1} s");
    println!(
        "origin requests per part      {:.2} playlist (blocking) + {:.2} part",
        per_part(origin_after.0, origin_before.0),
        per_part(origin_after.1, origin_before.1)
    );
    println!(
        "shield misses per part        {:.2} (all kinds: playlists and parts)",
        per_part(shield_after, shield_before)
    );
    println!(
        "viewer requests served        {:.0}/s ({} errors)",
        served as f64 / wall,
        errors.load(Ordering::Relaxed)
    );
    let show = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    println!(
        "publication -> viewer delay   p50 {} ms, p99 {} ms ({} deliveries)",
        show(pct(&d, 0.5)),
        show(pct(&d, 0.99)),
        d.len()
    );
    println!(
        "first frame at ingest -> viewer  p50 {} ms, p99 {} ms (includes the part's own {} ms)",
        show(pct(&from_ingest, 0.5)),
        show(pct(&from_ingest, 0.99)),
        500
    );
    println!(
        "edge CPU                      {:.2} cores ({:.1} µs per viewer per second)",
        (cpu_after - cpu_before) / wall,
        (cpu_after - cpu_before) / wall / args.viewers as f64 * 1e6
    );
    println!(
        "edge memory                   {} MiB resident ({:.1} KiB per viewer)",
        rss_kib / 1024,
        rss_kib as f64 / args.viewers as f64
    );

    poll.abort();
    for v in viewers {
        v.abort();
    }
    let _ = edge.kill();
    let _ = edge.wait();
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    shield.shutdown().await;
    origin.shutdown().await;
    Ok(())
}

struct Viewer {
    addr: String,
    q: String,
    /// Each delivery while measuring: the part and when it arrived (the
    /// part's times are looked up at the end, when the poller has them).
    delays: Arc<Mutex<Vec<(u64, u32, u64)>>>,
    requests: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
}

impl Viewer {
    async fn run(self) {
        loop {
            if let Err(_e) = self.session().await {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// One connection: a playlist, then blocking reloads and parts.
    async fn session(&self) -> anyhow::Result<()> {
        let stream = tokio::net::TcpStream::connect(&self.addr).await?;
        let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut playlist = self
            .get(&mut send, &format!("/live/final/v0.m3u8?{}", self.q))
            .await?;
        loop {
            let (msn, part) = hint(&playlist).context("no preload hint")?;
            playlist = self
                .get(
                    &mut send,
                    &format!(
                        "/live/final/v0.m3u8?_HLS_msn={msn}&_HLS_part={part}&{}",
                        self.q
                    ),
                )
                .await?;
            self.get(
                &mut send,
                &format!("/live/final/v0/{msn}.{part}.m4s?{}", self.q),
            )
            .await?;
            let now = cascade_serve::unix_now_ms();
            if self.measuring.load(Ordering::Relaxed) {
                if let Ok(mut d) = self.delays.lock() {
                    d.push((msn, part, now));
                }
            }
        }
    }

    async fn get(
        &self,
        send: &mut http1::SendRequest<Empty<Bytes>>,
        path: &str,
    ) -> anyhow::Result<Bytes> {
        send.ready().await?;
        let req = http::Request::get(path)
            .header("host", &self.addr)
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status == 200, "status {status}");
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(body)
    }
}

/// `(msn, part)` of a playlist's preload hint.
fn hint(playlist: &[u8]) -> Option<(u64, u32)> {
    let needle = b"#EXT-X-PRELOAD-HINT";
    let at = playlist.windows(needle.len()).rposition(|w| w == needle)?;
    let line = std::str::from_utf8(&playlist[at..]).ok()?.lines().next()?;
    let uri = line.split("URI=\"").nth(1)?;
    let file = uri.split('/').nth(1)?.split(['?', '"']).next()?;
    let (msn, part) = file.strip_suffix(".m4s")?.split_once('.')?;
    Some((msn.parse().ok()?, part.parse().ok()?))
}

/// The origin's blocking playlist and part requests so far.
async fn origin_counts(client: &reqwest::Client, origin: &str) -> anyhow::Result<(u64, u64)> {
    let m = client
        .get(format!("{origin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let get = |kind: &str| {
        let series = format!("cascade_origin_live_requests_total{{kind=\"{kind}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((get("manifest_blocking"), get("part")))
}

/// The shield's cache misses so far.
async fn shield_misses(client: &reqwest::Client, shield: &str) -> anyhow::Result<u64> {
    let m = client
        .get(format!("{shield}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(m.lines()
        .filter(|l| l.starts_with("cascade_requests_total{") && l.contains("cache=\"miss\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// A process's CPU seconds so far and its resident memory in KiB.
fn proc_stat(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(((utime + stime) / ticks, rss))
}
