//! Viewers together at scale: how many idle real-time connections one edge
//! holds and what each costs; publish-to-delivery latency of a fan-out to
//! many subscribers across two edges, next to the same fan-out through
//! Mosquitto (an MQTT broker, what Hotstar's pub/sub tier was built on);
//! and reactions accepted and aggregated per second, with the aggregate
//! checked exact.
//!
//! ```sh
//! cargo build --release --bin cascade
//! cargo run --release -p cascade-benches --bin together -- --connections 19000 --subscribers 19000
//! ```
//!
//! NATS (with JetStream) and Mosquitto run as this program's children on
//! ephemeral ports; the origin runs in this process; each edge is its own
//! `cascade edge` process, so its memory and CPU are its own. Viewers are
//! made by worker processes of this program (`together worker …`), each
//! holding up to `--per-worker` connections from several loopback source
//! addresses (127.0.0.2, .3, …), since one address has 28,000 ports.
//!
//! The clients are written by hand on bare sockets (an SSE reader, a
//! WebSocket frame reader, an MQTT 3.1.1 subscriber and publisher): tens of
//! thousands of them share one process, and a full client library per
//! connection would cost more than the servers under test.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const KEY_HEX: &str = "5ecbe75ecbe75ecbe75ecbe75ecbe75e";
const FLEET: &str = "bench-fleet-credential";

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Idle connections held by one edge (half SSE, half WebSocket).
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// Subscribers of the fan-out, split over two edges (and all on
    /// Mosquitto for the peer).
    #[arg(long, default_value_t = 19_000)]
    subscribers: usize,
    /// Messages published in the fan-out.
    #[arg(long, default_value_t = 30)]
    messages: usize,
    /// Reacting viewers, and seconds they react for.
    #[arg(long, default_value_t = 200)]
    reactors: usize,
    #[arg(long, default_value_t = 10)]
    reaction_secs: u64,
    /// Run only these parts: `connections`, `fanout`, `reactions` (comma-separated; default all).
    #[arg(long, default_value = "connections,fanout,reactions")]
    only: String,
    /// Connections one worker process holds.
    #[arg(long, default_value_t = 9_000)]
    per_worker: usize,
    /// The `cascade` binary that runs the edges.
    #[arg(long, default_value = "target/release/cascade")]
    cascade: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) Holds connections and reports delivery latencies.
    Worker {
        /// `sse`, `ws` or `mqtt`.
        kind: String,
        /// host:port
        target: String,
        /// The path (sse, ws) or topic (mqtt).
        path: String,
        count: usize,
        /// First loopback source address index (127.0.0.N).
        #[arg(long, default_value_t = 2)]
        source: u8,
        /// Messages to wait for on each connection (0: hold until stdin ends).
        #[arg(long, default_value_t = 0)]
        expect: usize,
    },
    /// (internal) Sends reactions as fast as it can for `secs`.
    React {
        target: String,
        path: String,
        count: usize,
        secs: u64,
    },
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match &args.cmd {
        Some(Cmd::Worker {
            kind,
            target,
            path,
            count,
            source,
            expect,
        }) => rt.block_on(worker(kind, target, path, *count, *source, *expect)),
        Some(Cmd::React {
            target,
            path,
            count,
            secs,
        }) => rt.block_on(react(target, path, *count, *secs)),
        None => rt.block_on(run(&args)),
    }
}

// ---- the connections ------------------------------------------------------

/// A socket from loopback source address 127.0.0.{source + i / 25000}.
async fn connect_from(target: &str, i: usize, source: u8) -> anyhow::Result<TcpStream> {
    let addr: std::net::SocketAddr = target.parse()?;
    let src = std::net::Ipv4Addr::new(127, 0, 0, source + (i / 25_000) as u8);
    let s = TcpSocket::new_v4()?;
    s.bind((src, 0).into())?;
    s.set_recv_buffer_size(16 * 1024)?;
    Ok(s.connect(addr).await?)
}

async fn open(
    kind: &str,
    target: &str,
    path: &str,
    i: usize,
    source: u8,
) -> anyhow::Result<TcpStream> {
    let mut s = connect_from(target, i, source).await?;
    s.set_nodelay(true)?;
    match kind {
        "sse" => {
            s.write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nhost: {target}\r\naccept: text/event-stream\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            read_head(&mut s, "200").await?;
        }
        "ws" => {
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {target}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n").as_bytes()).await?;
            read_head(&mut s, "101").await?;
        }
        "mqtt" => {
            let id = format!("b{i}-{source}");
            mqtt_connect(&mut s, &id).await?;
            mqtt_subscribe(&mut s, path).await?;
        }
        _ => bail!("kind: sse, ws or mqtt"),
    }
    Ok(s)
}

async fn read_head(s: &mut TcpStream, want: &str) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 || head.len() > 4096 {
            bail!(
                "closed during the answer: {}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head);
    if !status.starts_with(&format!("HTTP/1.1 {want}")) {
        bail!("answered {}", status.lines().next().unwrap_or(""));
    }
    Ok(())
}

fn mqtt_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

async fn mqtt_connect(s: &mut TcpStream, id: &str) -> anyhow::Result<()> {
    let mut body = Vec::new();
    mqtt_str("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02, 0, 0]); // level 4, clean session, no keep-alive
    mqtt_str(id, &mut body);
    let mut p = vec![0x10];
    mqtt_len(body.len(), &mut p);
    p.extend(body);
    s.write_all(&p).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        bail!("CONNACK {ack:?}");
    }
    Ok(())
}

async fn mqtt_subscribe(s: &mut TcpStream, topic: &str) -> anyhow::Result<()> {
    let mut body = vec![0, 1];
    mqtt_str(topic, &mut body);
    body.push(0);
    let mut p = vec![0x82];
    mqtt_len(body.len(), &mut p);
    p.extend(body);
    s.write_all(&p).await?;
    let mut ack = [0u8; 5];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x90 {
        bail!("SUBACK {ack:?}");
    }
    Ok(())
}

fn mqtt_publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(topic, &mut body);
    body.extend_from_slice(payload);
    let mut p = vec![0x30];
    mqtt_len(body.len(), &mut p);
    p.extend(body);
    p
}

/// The `"t":NANOS` a benchmark message carries.
fn stamp(text: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(text).ok()?;
    let at = s.find("\"t\":")? + 4;
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Reads messages off one connection; sends each stamp's latency (µs).
async fn receive(
    kind: &str,
    s: TcpStream,
    expect: usize,
    lat: tokio::sync::mpsc::UnboundedSender<u64>,
) {
    let mut r = BufReader::with_capacity(4096, s);
    let mut got = 0;
    let mut line = Vec::new();
    while expect == 0 || got < expect {
        let payload: Vec<u8> = match kind {
            "sse" => {
                line.clear();
                match r.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if !line.starts_with(b"data: ") {
                    continue;
                }
                line.clone()
            }
            "ws" => {
                let mut h = [0u8; 2];
                if r.read_exact(&mut h).await.is_err() {
                    return;
                }
                let mut len = u64::from(h[1] & 0x7f);
                if len == 126 {
                    let mut b = [0u8; 2];
                    if r.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    len = u64::from(u16::from_be_bytes(b));
                } else if len == 127 {
                    let mut b = [0u8; 8];
                    if r.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    len = u64::from_be_bytes(b);
                }
                if len > 1 << 20 {
                    return;
                }
                let mut p = vec![0u8; len as usize];
                if r.read_exact(&mut p).await.is_err() {
                    return;
                }
                if h[0] & 0x0f != 1 {
                    continue; // pings and others
                }
                p
            }
            _ => {
                let mut h = [0u8; 1];
                if r.read_exact(&mut h).await.is_err() {
                    return;
                }
                let mut len = 0usize;
                let mut mult = 1usize;
                loop {
                    let mut b = [0u8; 1];
                    if r.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    len += usize::from(b[0] & 0x7f) * mult;
                    mult *= 128;
                    if b[0] & 0x80 == 0 || mult > 128 * 128 * 128 {
                        break;
                    }
                }
                let mut p = vec![0u8; len];
                if r.read_exact(&mut p).await.is_err() {
                    return;
                }
                if h[0] >> 4 != 3 {
                    continue;
                }
                p
            }
        };
        if let Some(t) = stamp(&payload) {
            let _ = lat.send(now_nanos().saturating_sub(t) / 1000);
            got += 1;
        }
    }
}

/// A worker process: opens `count` connections, prints `ready N`, then
/// latencies as they come (`lat µs`), and `done` when each connection has
/// had `expect` messages (or stdin ends).
async fn worker(
    kind: &str,
    target: &str,
    path: &str,
    count: usize,
    source: u8,
    expect: usize,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut opened = 0;
    let mut failed = 0;
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let permit = sem.clone().acquire_owned().await?;
        let (kind2, target2, path2) = (kind.to_string(), target.to_string(), path.to_string());
        handles.push(tokio::spawn(async move {
            let r = open(&kind2, &target2, &path2, i, source).await;
            drop(permit);
            r
        }));
    }
    let mut streams = Vec::with_capacity(count);
    for h in handles {
        match h.await? {
            Ok(s) => {
                opened += 1;
                streams.push(s);
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("worker: a connection failed: {e:#}");
                }
                failed += 1;
            }
        }
    }
    let mut tasks = Vec::with_capacity(opened);
    for s in streams {
        tasks.push(tokio::spawn(receive_owned(
            kind.to_string(),
            s,
            expect,
            tx.clone(),
        )));
    }
    drop(tx);
    println!("ready {opened} {failed}");
    let mut out = tokio::io::stdout();
    out.flush().await?;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 16];
    let mut lines = String::new();
    loop {
        tokio::select! {
            l = rx.recv() => match l {
                Some(us) => {
                    lines.push_str(&format!("lat {us}\n"));
                    if lines.len() > 64 * 1024 {
                        out.write_all(lines.as_bytes()).await?;
                        lines.clear();
                    }
                }
                None => break,
            },
            n = stdin.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) { break },
        }
    }
    out.write_all(lines.as_bytes()).await?;
    out.write_all(b"done\n").await?;
    out.flush().await?;
    Ok(())
}

async fn receive_owned(
    kind: String,
    s: TcpStream,
    expect: usize,
    tx: tokio::sync::mpsc::UnboundedSender<u64>,
) {
    receive(&kind, s, expect, tx).await;
}

/// A reactions worker: `count` WebSocket viewers each send reactions as
/// fast as they can for `secs`; prints how many it sent.
async fn react(target: &str, path: &str, count: usize, secs: u64) -> anyhow::Result<()> {
    let sent = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for i in 0..count {
        conns.push(open("ws", target, path, i, 2).await?);
    }
    // Every worker sends at once: each waits for `go` on stdin.
    println!("ready {count} 0");
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for s in conns {
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = s.into_split();
            // Read and drop what comes (swarms), so the edge never waits.
            tokio::spawn(async move {
                let mut b = vec![0u8; 16 * 1024];
                while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {}
            });
            let msg = ws_client_frame(b"{\"react\":\"clap\"}");
            let mut batch = Vec::with_capacity(msg.len() * 64);
            for _ in 0..64 {
                batch.extend_from_slice(&msg);
            }
            while Instant::now() < deadline {
                if wr.write_all(&batch).await.is_err() {
                    break;
                }
                sent.fetch_add(64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!("sent {}", sent.load(Ordering::Relaxed));
    Ok(())
}

/// A masked text frame, as a client sends it.
fn ws_client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

// ---- the orchestra --------------------------------------------------------

struct Worker {
    child: tokio::process::Child,
    out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn spawn_worker(exe: &std::path::Path, args: &[String]) -> anyhow::Result<(Worker, usize)> {
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(300), out.next_line())
        .await
        .context("worker never ready")??
        .context("worker ended")?;
    let mut it = line.split_whitespace().skip(1);
    let opened: usize = it.next().context("ready count")?.parse()?;
    Ok((Worker { child, out }, opened))
}

impl Worker {
    /// Latencies until `done`, or until `want` came or `wait` passed.
    async fn latencies(&mut self, want: usize, wait: Duration) -> Vec<u64> {
        let mut v = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while v.len() < want {
            match tokio::time::timeout_at(deadline, self.out.next_line()).await {
                Ok(Ok(Some(l))) => {
                    if let Some(us) = l.strip_prefix("lat ") {
                        if let Ok(n) = us.parse() {
                            v.push(n);
                        }
                    } else if l == "done" {
                        break;
                    }
                }
                _ => break,
            }
        }
        v
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// RSS (KiB) of a process.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn metric(url: &str, series: &str) -> u64 {
    let Ok(r) = reqwest::get(url).await else {
        return 0;
    };
    let Ok(text) = r.text().await else { return 0 };
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().context("temp path")?.to_string();

    // NATS with JetStream and Mosquitto, our own.
    let nats_port = free_port()?;
    let mut nats = tokio::process::Command::new("nats-server")
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-sd",
            &format!("{data}/nats"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("nats-server (make deps installs it)")?;
    wait_port(nats_port).await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let mqtt_port = free_port()?;
    std::fs::write(
        format!("{data}/mosquitto.conf"),
        // Nagle off, as Cascade's edges have it: latency is what is measured.
        format!("listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nset_tcp_nodelay true\n"),
    )?;
    let mut mosquitto = tokio::process::Command::new("mosquitto")
        .args(["-c", &format!("{data}/mosquitto.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("mosquitto (make bench-deps installs it)")?;
    wait_port(mqtt_port).await?;

    // The origin here; two edges as processes.
    let origin = cascade_origin::start(&cascade_origin::OriginConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: format!("{data}/origin"),
        admin_token: "bench-admin".into(),
        fleet_token: FLEET.into(),
        nats_url: nats_url.clone(),
        ..cascade_origin::OriginConfig::default()
    })
    .await?;
    let origin_url = format!("http://{}", origin.addr);
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{origin_url}/api/v1/admin/channels"))
        .bearer_auth("bench-admin")
        .json(&serde_json::json!({ "name": "bench" }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("channel not made: {}", r.status());
    }
    let mut edges = Vec::new();
    for n in 0..2 {
        let (port, events) = (free_port()?, free_port()?);
        let toml = format!(
            "listen = \"127.0.0.1:{port}\"\nevents_listen = \"127.0.0.1:{events}\"\nnats_url = \"{nats_url}\"\n\
             shields = []\norigin = \"{origin_url}\"\norigin_fallback = true\ncache_memory_mib = 64\n\
             cache_dir = \"{data}/edge{n}\"\ncache_disk_mib = 0\nhttp3 = false\nnode_name = \"bench-edge-{n}\"\n\
             fleet_token = \"{FLEET}\"\nevents_max_connections = 1000000\nevents_max_per_address = 1000000\n\
             events_send_timeout_secs = 30\nreactions_per_sec = 1000000\nreactions_burst = 1000000\n\
             [[token_keys]]\nkid = \"bench\"\nkey = \"{KEY_HEX}\"\n"
        );
        let cfg = format!("{data}/edge{n}.toml");
        std::fs::write(&cfg, toml)?;
        let child = tokio::process::Command::new(&args.cascade)
            .args(["edge", "--config", &cfg])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "{} (cargo build --release --bin cascade)",
                    args.cascade.display()
                )
            })?;
        wait_port(events).await?;
        edges.push((child, port, events));
    }
    let key = cascade_token::Key::from_hex("bench", KEY_HEX)?;
    let token = |session: &str| {
        cascade_token::sign(
            &key,
            &cascade_token::Claims {
                expires: now_nanos() / 1_000_000_000 + 3600,
                acl: vec!["/live/bench/*".into()],
                id: Some(session.into()),
                ..Default::default()
            },
        )
    };
    let path = format!("/events/live/bench?__token__={}", token("bench"));
    let edge_pid = |i: usize| edges[i].0.id().unwrap_or(0);

    let part = |name: &str| args.only.split(',').any(|p| p == name);
    // 1. Idle connections on one edge: memory per connection.
    let target = format!("127.0.0.1:{}", edges[0].2);
    if part("connections") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_kib(edge_pid(0));
        let mut held = Vec::new();
        let mut opened = 0;
        let mut left = args.connections;
        let mut w = 0usize;
        while left > 0 {
            let n = left.min(args.per_worker);
            let kind = if w.is_multiple_of(2) { "sse" } else { "ws" };
            let (worker, got) = spawn_worker(
                &me,
                &[
                    "worker".into(),
                    kind.into(),
                    target.clone(),
                    path.clone(),
                    n.to_string(),
                    "--source".into(),
                    (2 + 2 * w as u8).to_string(),
                ],
            )
            .await?;
            opened += got;
            held.push(worker);
            left -= n;
            w += 1;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(edge_pid(0));
        let gauge = metric(
            &format!("http://127.0.0.1:{}/metrics", edges[0].1),
            "cascade_edge_events_connections",
        )
        .await;
        println!(
            "connections: {opened} opened of {} asked; the edge reports {gauge} held",
            args.connections
        );
        println!(
            "edge memory: {:.1} MiB before, {:.1} MiB with them: {:.1} KiB per connection",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after.saturating_sub(before)) as f64 / opened.max(1) as f64
        );
        for h in held {
            h.stop().await;
        }
    }

    // 2. Fan-out: the same subscribers through the edges and through Mosquitto.
    let bus = cascade_bus::JetStreamBus::connect(&cascade_bus::JetStreamConfig {
        url: nats_url.clone(),
        client_name: "bench-publisher".into(),
        ..Default::default()
    })
    .await?;
    for peer in ["cascade", "mosquitto"]
        .into_iter()
        .filter(|_| part("fanout"))
    {
        let mut workers = Vec::new();
        let mut subs = 0;
        let mut left = args.subscribers;
        let mut w = 0usize;
        while left > 0 {
            let n = left.min(args.per_worker);
            let worker_args: Vec<String> = if peer == "cascade" {
                vec![
                    "worker".into(),
                    "ws".into(),
                    format!("127.0.0.1:{}", edges[w % 2].2),
                    path.clone(),
                    n.to_string(),
                    "--source".into(),
                    (2 + 2 * w as u8).to_string(),
                    "--expect".into(),
                    args.messages.to_string(),
                ]
            } else {
                vec![
                    "worker".into(),
                    "mqtt".into(),
                    format!("127.0.0.1:{mqtt_port}"),
                    "bench/live".into(),
                    n.to_string(),
                    "--source".into(),
                    (2 + 2 * w as u8).to_string(),
                    "--expect".into(),
                    args.messages.to_string(),
                ]
            };
            let (worker, got) = spawn_worker(&me, &worker_args).await?;
            subs += got;
            workers.push(worker);
            left -= n;
            w += 1;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut mqtt_pub = if peer == "mosquitto" {
            let mut s = TcpStream::connect(("127.0.0.1", mqtt_port)).await?;
            mqtt_connect(&mut s, "bench-publisher").await?;
            Some(s)
        } else {
            None
        };
        let start = Instant::now();
        for i in 0..args.messages {
            let payload = format!("{{\"type\":\"comment\",\"comment\":{{\"id\":\"m{i}\",\"text\":\"Bench message {i}\",\"t\":{}}}}}", now_nanos());
            match &mut mqtt_pub {
                Some(s) => {
                    s.write_all(&mqtt_publish_packet("bench/live", payload.as_bytes()))
                        .await?
                }
                None => {
                    cascade_bus::Bus::publish(&bus, "cascade.rt.live.bench", payload.into(), None)
                        .await?;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut all = Vec::new();
        for wk in workers.iter_mut() {
            all.extend(wk.latencies(usize::MAX, Duration::from_secs(30)).await);
        }
        for wk in workers {
            wk.stop().await;
        }
        all.sort_unstable();
        let expected = subs * args.messages;
        println!(
            "fan-out via {peer:<9}: {subs} subscribers, {} messages, {} of {expected} delivered in {:.0} s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            args.messages,
            all.len(),
            start.elapsed().as_secs_f64(),
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&all, 1.0),
        );
    }

    // 3. Reactions: accepted and aggregated per second, exact.
    if part("reactions") {
        let edge_metrics = format!("http://127.0.0.1:{}/metrics", edges[0].1);
        let accepted_before = metric(&edge_metrics, "cascade_edge_reactions_accepted_total").await;
        // One session for all: the edge's per-viewer limit is set out of reach
        // here, so what is measured is the ingest itself.
        let react_path = format!("/events/live/bench?__token__={}", token("reactor"));
        let mut reactors = Vec::new();
        let per = args.reactors.div_ceil(2);
        for _ in 0..2 {
            let p = react_path.clone();
            reactors.push(
                spawn_worker(
                    &me,
                    &[
                        "react".into(),
                        format!("127.0.0.1:{}", edges[0].2),
                        p,
                        per.to_string(),
                        args.reaction_secs.to_string(),
                    ],
                )
                .await?
                .0,
            );
        }
        for r in reactors.iter_mut() {
            if let Some(stdin) = r.child.stdin.as_mut() {
                stdin.write_all(b"go\n").await?;
            }
        }
        // Reactions still in socket buffers when a reactor closes are dropped
        // with the connection, so what the edge accepted, it accepted while
        // they sent: the rate is that over the sending time. (The edge's
        // /metrics is not sampled meanwhile: a saturated edge answers it late.)
        let t0 = Instant::now();
        let mut sent = 0u64;
        for mut r in reactors {
            while let Ok(Some(l)) = r.out.next_line().await {
                if let Some(n) = l.strip_prefix("sent ") {
                    sent += n.parse::<u64>().unwrap_or(0);
                    break;
                }
            }
            r.stop().await;
        }
        let secs = t0.elapsed().as_secs_f64();
        // Counted at the edge, then flushed to the origin within a second or two.
        let mut accepted = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let a = metric(&edge_metrics, "cascade_edge_reactions_accepted_total").await
                - accepted_before;
            if a == accepted && a > 0 {
                break;
            }
            accepted = a;
        }
        let mut stored = 0;
        for _ in 0..50 {
            let totals: serde_json::Value = client
                .get(format!("{origin_url}/api/v1/live/bench/reactions"))
                .send()
                .await?
                .json()
                .await?;
            stored = totals["totals"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
            if stored >= accepted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
        "reactions: {} viewers sending for {secs:.1} s ({sent} written, some left unread in socket buffers when they closed); \
         {accepted} accepted at the edge: {:.0}/s; origin totals {stored}: {}",
        args.reactors,
        accepted as f64 / secs,
        if stored == accepted { "exact" } else { "NOT EXACT" }
    );
    }

    for (mut child, _, _) in edges {
        let _ = child.kill().await;
    }
    origin.shutdown().await;
    let _ = nats.kill().await;
    let _ = mosquitto.kill().await;
    Ok(())
}
