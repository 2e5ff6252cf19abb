//! Overload: one edge taken to twice its capacity, with load shedding on
//! and off in the same run. How many of the sessions that were playing
//! stall, and how many new sessions start within 5 s somewhere in the
//! fleet (at the loaded edge, capped, or at another edge after a 503).
//!
//! ```sh
//! make bench-overload              # builds cascade (release) and runs this, as root
//! ./target/release/overload --check
//! ```
//!
//! The loaded edge's capacity is real: it runs as its own process
//! (`cascade edge`) in a Linux network namespace whose veth link to the
//! rest of the fleet is shaped to `--link-mbps` with `tc tbf`, so that
//! viewers beyond it share a link that is full. The origin, a shield and a
//! second edge (the rest of the fleet, unshaped) run in this process.
//! Simulated players fetch one rendition's segments with a 6 s buffer and
//! keep a playback clock: a stall is the clock catching up with the
//! buffer. The playing sessions start first (at about 70% of the link);
//! then new sessions arrive until demand is about twice the link. A new
//! session refused with 503 starts at the other edge, as the playback API
//! and steering would send it.
//!
//! Goal, with shedding: no stall among the sessions that were playing, and
//! at least 99% of new sessions started within 5 s. Results are printed
//! and written as JSON (`--json`, by default `target/bench/overload.json`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cascade_origin::transcode::Rung;
use cascade_origin::OriginConfig;
use cascade_serve::config::TokenKeyConfig;
use cascade_shield::ShieldConfig;
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "overload",
    about = "One edge at twice its capacity: stalls and starts with shedding on and off"
)]
struct Args {
    /// The cascade binary that runs the loaded edge.
    #[arg(long, default_value = "target/release/cascade")]
    cascade: PathBuf,
    /// Speed of the loaded edge's link, Mbit/s.
    #[arg(long, default_value_t = 12.0)]
    link_mbps: f64,
    /// Its configured egress capacity (shedding on), Mbit/s.
    #[arg(long, default_value_t = 10.0)]
    capacity_mbps: f64,
    /// Sessions playing before the crowd.
    #[arg(long, default_value_t = 8)]
    playing: usize,
    /// Sessions arriving with the crowd.
    #[arg(long, default_value_t = 16)]
    arriving: usize,
    /// Seconds of media each session plays.
    #[arg(long, default_value_t = 36)]
    play_secs: u64,
    /// Where to write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit with status 1 when a goal is missed.
    #[arg(long)]
    check: bool,
}

const KEY_HEX: &str = "0ae10ad00ae10ad00ae10ad00ae10ad0";
const ORIGIN_ADMIN: &str = "overload-origin-admin";
/// A new session counts as started when its first segment is in within this.
const START_GOAL: Duration = Duration::from_secs(5);
/// Media a player keeps ahead of its playback clock.
const MAX_BUFFER: f64 = 6.0;
/// A gap shorter than this is not counted as a stall.
const STALL_TOLERANCE: f64 = 0.1;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _logs = std::env::var_os("RUST_LOG")
        .is_some()
        .then(|| cascade_serve::init_logging(true));
    match run(&args).await {
        Ok(met) if met || !args.check => {}
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// A network namespace with a shaped veth link to this one; removed on drop.
struct Netns {
    name: String,
    host_ip: String,
    inner_ip: String,
}

impl Netns {
    fn create(link_mbps: f64) -> anyhow::Result<Netns> {
        let id = std::process::id() % 200 + 20;
        let ns = Netns {
            name: format!("cbench-{}", std::process::id()),
            host_ip: format!("10.231.{id}.1"),
            inner_ip: format!("10.231.{id}.2"),
        };
        let (host_if, inner_if) = (format!("cbh{id}"), format!("cbn{id}"));
        let rate = format!("{}kbit", (link_mbps * 1000.0) as u64);
        let steps: Vec<Vec<String>> = vec![
            vec!["ip", "netns", "add", &ns.name],
            vec![
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
            ],
            vec!["ip", "link", "set", &inner_if, "netns", &ns.name],
            vec![
                "ip",
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &host_if,
            ],
            vec!["ip", "link", "set", &host_if, "up"],
            vec![
                "ip",
                "netns",
                "exec",
                &ns.name,
                "ip",
                "addr",
                "add",
                &format!("{}/30", ns.inner_ip),
                "dev",
                &inner_if,
            ],
            vec![
                "ip", "netns", "exec", &ns.name, "ip", "link", "set", &inner_if, "up",
            ],
            vec![
                "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
            ],
            // The edge's egress (towards viewers) is what is shaped.
            vec![
                "ip", "netns", "exec", &ns.name, "tc", "qdisc", "add", "dev", &inner_if, "root",
                "tbf", "rate", &rate, "burst", "32kb", "latency", "200ms",
            ],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(str::to_string).collect())
        .collect();
        for s in &steps {
            let out = Command::new(&s[0])
                .args(&s[1..])
                .output()
                .with_context(|| format!("running {}", s.join(" ")))?;
            if !out.status.success() {
                bail!(
                    "{}: {} (the bench needs root for network namespaces)",
                    s.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What happened to one session.
#[derive(Debug, Clone, Default)]
struct Outcome {
    /// Seconds from arrival to its first segment, if it started.
    started: Option<f64>,
    /// `a`, `b` (after a 503 at `a`), or `none`.
    edge: &'static str,
    /// Its multivariant playlist offered fewer rungs than the title has.
    capped: bool,
    stalls: u32,
    stalled_secs: f64,
    /// Media requests that failed after it started.
    errors: u32,
}

/// One scenario's sessions: the ones playing first, then the crowd.
struct Scenario {
    playing: Vec<Outcome>,
    arriving: Vec<Outcome>,
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    if !args.cascade.exists() {
        bail!(
            "{} not found: build it first (cargo build --release --bin cascade)",
            args.cascade.display()
        );
    }
    let ns = Netns::create(args.link_mbps)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().context("temp dir")?.to_string();
    let origin = cascade_origin::start(&OriginConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: format!("{data}/origin"),
        preset: "ultrafast".into(),
        token_keys: vec![key()],
        admin_token: ORIGIN_ADMIN.into(),
        ladder: vec![
            Rung {
                height: 360,
                kbps: 900,
            },
            Rung {
                height: 180,
                kbps: 250,
            },
        ],
        ..OriginConfig::default()
    })
    .await?;
    let origin_url = format!("http://{}", origin.addr);
    // The shield listens where the namespaced edge reaches it.
    let shield = cascade_shield::start(&ShieldConfig {
        listen: format!("{}:0", ns.host_ip),
        origins: vec![origin_url.clone()],
        cache_dir: String::new(),
        cache_memory_mib: 256,
        ..ShieldConfig::default()
    })
    .await?;
    let shield_url = format!("http://{}", shield.addr);
    let b = cascade_edge::start(&cascade_edge::EdgeConfig {
        listen: "127.0.0.1:0".into(),
        shields: vec![shield_url.clone()],
        origin: origin_url.clone(),
        origin_fallback: false,
        cache_dir: String::new(),
        cache_memory_mib: 256,
        token_keys: vec![key()],
        ..cascade_edge::EdgeConfig::default()
    })
    .await?;
    let b_url = format!("http://{}", b.addr);

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    eprintln!("making and transcoding a {} s title…", args.play_secs + 4);
    let clip = make_clip(dir.path(), args.play_secs as u32 + 4)?;
    let asset = ingest(&client, &origin_url, &clip).await?;
    // Every segment into the shield once, so both scenarios start warm upstream.
    warm(&client, &b_url, &asset, &sign_for(&asset, "warm")?).await?;

    let mut results = Vec::new();
    for shedding in [false, true] {
        let a_url = format!("http://{}:8080", ns.inner_ip);
        let mut edge = start_edge_a(args, &ns, &shield_url, &origin_url, &data, shedding)?;
        let ready = wait_ready(&client, &a_url).await;
        // The loaded edge's own view, twice a second: utilisation and level.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let watch = tokio::spawn(watch_edge(client.clone(), a_url.clone(), seen.clone()));
        let outcome = match ready {
            Ok(()) => Ok(scenario(args, &a_url, &b_url, &asset, shedding).await),
            Err(e) => Err(e),
        };
        watch.abort();
        let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
        let _ = edge.kill();
        let _ = edge.wait();
        let s = outcome?;
        let mut summary = summarise(&s);
        summary["edge_a"] = edge_view(&seen);
        results.push((shedding, summary));
    }
    b.shutdown().await;
    shield.shutdown().await;
    origin.shutdown().await;
    drop(ns);

    println!(
        "\n{:<10} {:>9} {:>12} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "shedding", "playing", "stalled", "arriving", "started≤5s", "at A", "capped", "at B"
    );
    for (shedding, r) in &results {
        println!(
            "{:<10} {:>9} {:>11.1}% {:>10} {:>9.1}% {:>9} {:>9} {:>8}",
            if *shedding { "on" } else { "off" },
            r["playing"],
            r["playing_stalled_share"].as_f64().unwrap_or(0.0) * 100.0,
            r["arriving"],
            r["arriving_started_share"].as_f64().unwrap_or(0.0) * 100.0,
            r["arriving_at_a"],
            r["arriving_capped"],
            r["arriving_at_b"],
        );
    }
    let on = &results[1].1;
    let met =
        on["playing_stalled"] == 0 && on["arriving_started_share"].as_f64().unwrap_or(0.0) >= 0.99;
    println!(
        "goal (shedding on: no stall among playing sessions, ≥99% of new ones started within 5 s): {}",
        if met { "met" } else { "missed" }
    );
    let doc = json!({
        "link_mbps": args.link_mbps,
        "capacity_mbps": args.capacity_mbps,
        "playing": args.playing,
        "arriving": args.arriving,
        "play_secs": args.play_secs,
        "off": results[0].1,
        "on": results[1].1,
        "goal_met": met,
    });
    let path = args.json.clone().unwrap_or_else(default_json_path);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
    println!("results: {}", path.display());
    Ok(met)
}

/// Starts the loaded edge in the namespace, shedding or not.
fn start_edge_a(
    args: &Args,
    ns: &Netns,
    shield: &str,
    origin: &str,
    data: &str,
    shedding: bool,
) -> anyhow::Result<Child> {
    let config = format!(
        r#"listen = "{ip}:8080"
shields = ["{shield}"]
origin = "{origin}"
origin_fallback = false
cache_dir = ""
cache_memory_mib = 256
node_name = "edge-a"
metrics_networks = ["0.0.0.0/0"]
capacity_egress_mbps = {cap}
shed_hold_ms = 3000
shed_max_height = 180
shed_retry_after_secs = 2
token_keys = [{{ kid = "bench", key = "{KEY_HEX}" }}]
"#,
        ip = ns.inner_ip,
        cap = if shedding { args.capacity_mbps } else { 0.0 },
    );
    let path = Path::new(data).join(format!("edge-a-{shedding}.toml"));
    std::fs::write(&path, config)?;
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(std::fs::canonicalize(&args.cascade)?)
        .args(["edge", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the loaded edge")
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the loaded edge did not start at {url}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The playing sessions, then the crowd 8 s later, arriving over 10 s.
async fn scenario(args: &Args, a: &str, b: &str, asset: &str, shedding: bool) -> Scenario {
    let play = Duration::from_secs(args.play_secs);
    let group =
        |name: &str, count: usize, over: Duration| -> Vec<tokio::task::JoinHandle<Outcome>> {
            (0..count)
                .map(|i| {
                    let token =
                        sign_for(asset, &format!("{name}-{i}-{shedding}")).unwrap_or_default();
                    let (a, b, asset) = (a.to_string(), b.to_string(), asset.to_string());
                    let delay = over.mul_f64(i as f64 / count.max(1) as f64);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        session(&a, &b, &asset, &token, play).await
                    })
                })
                .collect()
        };
    let playing = group("playing", args.playing, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let arriving = group("arriving", args.arriving, Duration::from_secs(10));
    let mut s = Scenario {
        playing: Vec::new(),
        arriving: Vec::new(),
    };
    for t in playing {
        s.playing.push(t.await.unwrap_or_default());
    }
    for t in arriving {
        s.arriving.push(t.await.unwrap_or_default());
    }
    s
}

/// One viewer: the multivariant playlist at A (at B after a 503), the top
/// rendition offered, then its segments in a loop with a 6 s buffer.
async fn session(a: &str, b: &str, asset: &str, token: &str, play: Duration) -> Outcome {
    let arrived = Instant::now();
    let mut out = Outcome {
        edge: "none",
        ..Outcome::default()
    };
    // A client per viewer: its own connections, as a real player.
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
    else {
        return out;
    };
    let mut master = None;
    for (edge, name) in [(a, "a"), (b, "b")] {
        let url = format!("{edge}/vod/{asset}/master.m3u8?__token__={token}");
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                if let Ok(t) = r.text().await {
                    master = Some((edge.to_string(), t));
                    out.edge = name;
                    break;
                }
            }
            _ => continue,
        }
    }
    let Some((edge, master)) = master else {
        return out;
    };
    let variants: Vec<(u64, &str)> = master
        .lines()
        .zip(master.lines().skip(1))
        .filter_map(|(inf, uri)| {
            let bw = inf
                .strip_prefix("#EXT-X-STREAM-INF:")?
                .split(',')
                .find_map(|kv| kv.strip_prefix("BANDWIDTH="))?
                .parse()
                .ok()?;
            Some((bw, uri))
        })
        .collect();
    out.capped = variants.len() < 2;
    let Some((_, uri)) = variants.iter().max_by_key(|(bw, _)| *bw) else {
        return out;
    };
    let base = format!("{edge}/vod/{asset}/");
    let Ok(playlist) = fetch_text(&client, &format!("{base}{uri}")).await else {
        return out;
    };
    let mut segments = Vec::new();
    let mut dur = 2.0;
    let mut init = None;
    for l in playlist.lines() {
        if let Some(d) = l.strip_prefix("#EXTINF:") {
            dur = d
                .trim_end_matches(',')
                .split(',')
                .next()
                .and_then(|d| d.parse().ok())
                .unwrap_or(2.0);
        } else if let Some(m) = l.strip_prefix("#EXT-X-MAP:URI=\"") {
            init = m.split('"').next().map(str::to_string);
        } else if !l.starts_with('#') && !l.is_empty() {
            segments.push((l.to_string(), dur));
        }
    }
    if segments.is_empty() {
        return out;
    }
    if let Some(i) = &init {
        if fetch_bytes(&client, &format!("{base}{i}")).await.is_err() {
            return out;
        }
    }
    // The playback clock: media time = wall time since start − time stalled.
    let mut started_at: Option<Instant> = None;
    let mut buffered = 0.0_f64;
    let mut stalled = 0.0_f64;
    let target = play.as_secs_f64();
    let mut n = 0;
    while buffered < target {
        let (seg, d) = &segments[n % segments.len()];
        n += 1;
        if let Some(s) = started_at {
            let position = s.elapsed().as_secs_f64() - stalled;
            if buffered - position > MAX_BUFFER {
                tokio::time::sleep(Duration::from_secs_f64(buffered - position - MAX_BUFFER)).await;
            }
        }
        if fetch_bytes(&client, &format!("{base}{seg}")).await.is_err() {
            out.errors += 1;
            if started_at.is_none() {
                return out;
            }
            continue;
        }
        match started_at {
            None => {
                started_at = Some(Instant::now());
                out.started = Some(arrived.elapsed().as_secs_f64());
            }
            Some(s) => {
                let position = s.elapsed().as_secs_f64() - stalled;
                if position > buffered {
                    let gap = position - buffered;
                    stalled += gap;
                    if gap > STALL_TOLERANCE {
                        out.stalls += 1;
                        out.stalled_secs += gap;
                    }
                }
            }
        }
        buffered += d;
    }
    out
}

async fn fetch_text(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

async fn fetch_bytes(client: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?
        .len())
}

/// One look at the loaded edge's metrics: utilisation, shedding level,
/// egress (Mbit/s).
async fn watch_edge(
    client: reqwest::Client,
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(f64, u8, f64)>>>,
) {
    loop {
        if let Ok(text) = fetch_text(&client, &format!("{url}/metrics")).await {
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let sample = (
                value("cascade_edge_utilisation "),
                value("cascade_edge_shed_level ") as u8,
                value("cascade_edge_load{resource=\"egress_bps\"} ") / 1e6,
            );
            if let Ok(mut v) = seen.lock() {
                v.push(sample);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The loaded edge's peak utilisation and egress, and the highest level.
fn edge_view(seen: &[(f64, u8, f64)]) -> Value {
    json!({
        "samples": seen.len(),
        "peak_utilisation": seen.iter().map(|s| s.0).fold(0.0, f64::max),
        "peak_egress_mbps": seen.iter().map(|s| s.2).fold(0.0, f64::max),
        "highest_shed_level": seen.iter().map(|s| s.1).max().unwrap_or(0),
    })
}

fn summarise(s: &Scenario) -> Value {
    let stalled = s.playing.iter().filter(|o| o.stalls > 0).count();
    let started = s
        .arriving
        .iter()
        .filter(|o| o.started.is_some_and(|t| t <= START_GOAL.as_secs_f64()))
        .count();
    let mut starts: Vec<f64> = s.arriving.iter().filter_map(|o| o.started).collect();
    starts.sort_by(f64::total_cmp);
    let median = starts.get(starts.len() / 2).copied();
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    json!({
        "playing": s.playing.len(),
        "playing_stalled": stalled,
        "playing_stalled_share": share(stalled, s.playing.len()),
        "playing_stall_secs": s.playing.iter().map(|o| o.stalled_secs).sum::<f64>(),
        "playing_errors": s.playing.iter().map(|o| o.errors).sum::<u32>(),
        "arriving": s.arriving.len(),
        "arriving_started": started,
        "arriving_started_share": share(started, s.arriving.len()),
        "arriving_start_median_secs": median,
        "arriving_at_a": s.arriving.iter().filter(|o| o.edge == "a").count(),
        "arriving_capped": s.arriving.iter().filter(|o| o.capped).count(),
        "arriving_at_b": s.arriving.iter().filter(|o| o.edge == "b").count(),
        "arriving_stalled": s.arriving.iter().filter(|o| o.stalls > 0).count(),
    })
}

fn key() -> TokenKeyConfig {
    TokenKeyConfig {
        kid: "bench".into(),
        key: KEY_HEX.into(),
        algorithm: "sha256".into(),
        salt: String::new(),
        escape_early: false,
    }
}

/// A token for `/vod/{asset}/*` of playback session `session` (the edge
/// tells sessions apart by it).
fn sign_for(asset: &str, session: &str) -> anyhow::Result<String> {
    let key = cascade_token::Key::from_hex("bench", KEY_HEX)
        .map_err(|e| anyhow::anyhow!("bench key: {e}"))?;
    Ok(cascade_token::sign(
        &key,
        &cascade_token::Claims {
            expires: cascade_serve::unix_now() + 86_400,
            acl: vec![format!("/vod/{asset}/*")],
            id: Some(session.to_string()),
            ..Default::default()
        },
    ))
}

/// A 640×360 clip busy enough to use its bit rate.
fn make_clip(dir: &Path, secs: u32) -> anyhow::Result<PathBuf> {
    let out = dir.join("title.mp4");
    cascade_benches::ffmpeg_clip(&out, "testsrc2=s=640x360:r=25", secs)?;
    Ok(out)
}

async fn ingest(client: &reqwest::Client, origin: &str, clip: &Path) -> anyhow::Result<String> {
    let r: Value = client
        .post(format!("{origin}/api/v1/uploads"))
        .bearer_auth(ORIGIN_ADMIN)
        .query(&[("title", "Overload")])
        .body(tokio::fs::read(clip).await?)
        .send()
        .await?
        .json()
        .await?;
    let job = r["job"].as_str().context("upload answer")?.to_string();
    let asset = r["asset"].as_str().context("upload answer")?.to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let j: Value = client
            .get(format!("{origin}/api/v1/jobs/{job}"))
            .bearer_auth(ORIGIN_ADMIN)
            .send()
            .await?
            .json()
            .await?;
        match j["state"].as_str() {
            Some("done") => return Ok(asset),
            Some("failed") => bail!("transcode failed: {j}"),
            _ if Instant::now() > deadline => bail!("transcode too slow"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Every segment of every rendition through the unshaped edge, so the
/// shield holds the title before either scenario.
async fn warm(
    client: &reqwest::Client,
    edge: &str,
    asset: &str,
    token: &str,
) -> anyhow::Result<()> {
    let base = format!("{edge}/vod/{asset}/");
    let master = fetch_text(client, &format!("{base}master.m3u8?__token__={token}")).await?;
    for uri in master
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let playlist = fetch_text(client, &format!("{base}{uri}")).await?;
        for seg in playlist
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            fetch_bytes(client, &format!("{base}{seg}")).await?;
        }
    }
    Ok(())
}

fn default_json_path() -> PathBuf {
    let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
    benches
        .parent()
        .unwrap_or(benches)
        .join("target")
        .join("bench")
        .join("overload.json")
}
