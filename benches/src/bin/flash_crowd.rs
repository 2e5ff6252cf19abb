//! Flash crowd: a burst of viewers on a small catalog, spread over four
//! edges in front of two shields, and how much of it reaches the origin.
//!
//! ```sh
//! cargo run --release -p cascade-benches --bin flash_crowd
//! cargo run --release -p cascade-benches --bin flash_crowd -- --requests 2000 --check
//! ```
//!
//! One origin, two shields and four edges run in this process on ephemeral
//! ports, every cache in RAM only, every edge with both shields and no
//! direct way to the origin. A catalog of short titles made with the FFmpeg
//! CLI is uploaded and transcoded; then every object of it (multivariant
//! playlist, MPD, media playlists, init segments, segments) is ranked, and
//! viewers ask for objects drawn from a Zipf distribution over those ranks,
//! each at an edge drawn uniformly, with a valid token.
//!
//! The origin's own counters say what reached it. The goals: at least 99.5%
//! of viewer requests answered without the origin, and no mezzanine byte
//! served by the origin twice (`origin_mezzanine_repeat_bytes_total` = 0).
//! Results are printed and written as JSON (`--json`, by default
//! `target/bench/flash-crowd.json`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cascade_edge::{Edge, EdgeConfig};
use cascade_origin::transcode::Rung;
use cascade_origin::{Origin, OriginConfig};
use cascade_packager::AssetManifest;
use cascade_serve::config::TokenKeyConfig;
use cascade_shield::{Shield, ShieldConfig};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

/// The command line; each flag can also come from the environment.
#[derive(Parser, Debug)]
#[command(
    name = "flash_crowd",
    about = "Viewer burst through 4 edges and 2 shields: origin offload and repeat bytes"
)]
struct Args {
    /// Viewer requests to make.
    #[arg(long, env = "FLASH_CROWD_REQUESTS", default_value_t = 20_000)]
    requests: usize,
    /// Viewer requests in flight at once.
    #[arg(long, env = "FLASH_CROWD_CONCURRENCY", default_value_t = 128)]
    concurrency: usize,
    /// Titles in the catalog.
    #[arg(long, env = "FLASH_CROWD_TITLES", default_value_t = 3)]
    titles: usize,
    /// Seconds of each title (2 s segments).
    #[arg(long, env = "FLASH_CROWD_SECS", default_value_t = 8)]
    secs: u32,
    /// Edges, each in front of every shield.
    #[arg(long, env = "FLASH_CROWD_EDGES", default_value_t = 4)]
    edges: usize,
    /// Shields.
    #[arg(long, env = "FLASH_CROWD_SHIELDS", default_value_t = 2)]
    shields: usize,
    /// Zipf exponent of object popularity.
    #[arg(long, env = "FLASH_CROWD_ZIPF_S", default_value_t = 1.0)]
    zipf_s: f64,
    /// Seed of the workload (object ranks, draws); the same seed, the same requests.
    #[arg(long, env = "FLASH_CROWD_SEED", default_value_t = 1)]
    seed: u64,
    /// Where to write the results as JSON.
    #[arg(long, env = "FLASH_CROWD_JSON")]
    json: Option<PathBuf>,
    /// Exit with status 1 when a goal is missed or a viewer request failed.
    #[arg(long)]
    check: bool,
}

/// Least share of viewer requests answered without the origin.
const OFFLOAD_GOAL: f64 = 0.995;
/// The CDN token key of this run: in-process only, never written anywhere.
const KEY_HEX: &str = "f1a5c20df1a5c20df1a5c20df1a5c20d";
const TOKEN_NAME: &str = "__token__";
/// The origin's admin (upload) credential.
const ORIGIN_ADMIN: &str = "flash-crowd-origin-admin";
/// Longest a transcode may take, per title.
const TRANSCODE_LIMIT: Duration = Duration::from_secs(600);

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

/// Runs the benchmark; `Ok(true)` when every goal was met.
async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.requests == 0 || args.concurrency == 0 || args.titles == 0 {
        bail!("--requests, --concurrency and --titles must be at least 1");
    }
    if args.edges == 0 || args.shields == 0 || args.secs == 0 {
        bail!("--edges, --shields and --secs must be at least 1");
    }
    let dir = tempfile::tempdir().context("temp dir")?;
    let data = dir.path().to_str().context("temp dir is not UTF-8")?;
    let stack = Stack::start(data, args.shields, args.edges).await?;
    let outcome = measure(args, dir.path(), &stack).await;
    stack.shutdown().await;
    outcome
}

/// The tiers of the run.
struct Stack {
    origin: Origin,
    origin_url: String,
    shields: Vec<Shield>,
    edges: Vec<Edge>,
    edge_urls: Vec<String>,
}

impl Stack {
    async fn start(data: &str, shields: usize, edges: usize) -> anyhow::Result<Stack> {
        let origin = cascade_origin::start(&OriginConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: format!("{data}/origin"),
            preset: "ultrafast".into(),
            token_keys: vec![bench_key()],
            admin_token: ORIGIN_ADMIN.into(),
            ladder: vec![
                Rung {
                    height: 180,
                    kbps: 300,
                },
                Rung {
                    height: 120,
                    kbps: 150,
                },
            ],
            ..OriginConfig::default()
        })
        .await
        .context("starting the origin")?;
        let origin_url = format!("http://{}", origin.addr);
        let mut shield_list = Vec::new();
        for _ in 0..shields {
            shield_list.push(
                cascade_shield::start(&ShieldConfig {
                    listen: "127.0.0.1:0".into(),
                    origins: vec![origin_url.clone()],
                    cache_dir: String::new(),
                    cache_memory_mib: 64,
                    ..ShieldConfig::default()
                })
                .await
                .context("starting a shield")?,
            );
        }
        let shield_urls: Vec<String> = shield_list
            .iter()
            .map(|s| format!("http://{}", s.addr))
            .collect();
        let mut edge_list = Vec::new();
        for _ in 0..edges {
            edge_list.push(
                cascade_edge::start(&EdgeConfig {
                    listen: "127.0.0.1:0".into(),
                    shields: shield_urls.clone(),
                    origin: origin_url.clone(),
                    origin_fallback: false,
                    cache_dir: String::new(),
                    cache_memory_mib: 64,
                    token_keys: vec![bench_key()],
                    ..EdgeConfig::default()
                })
                .await
                .context("starting an edge")?,
            );
        }
        let edge_urls = edge_list
            .iter()
            .map(|e| format!("http://{}", e.addr))
            .collect();
        Ok(Stack {
            origin,
            origin_url,
            shields: shield_list,
            edges: edge_list,
            edge_urls,
        })
    }

    async fn shutdown(self) {
        for e in self.edges {
            e.shutdown().await;
        }
        for s in self.shields {
            s.shutdown().await;
        }
        self.origin.shutdown().await;
    }
}

/// Makes and ingests the catalog, runs the viewers, reports.
async fn measure(args: &Args, dir: &Path, stack: &Stack) -> anyhow::Result<bool> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;

    eprintln!(
        "making and transcoding {} titles of {} s…",
        args.titles, args.secs
    );
    let started = Instant::now();
    let mut jobs = Vec::new();
    for i in 0..args.titles {
        let clip = make_clip(dir, i, args.secs)?;
        jobs.push(
            upload(
                &client,
                &stack.origin_url,
                &clip,
                &format!("Flash crowd {i}"),
            )
            .await?,
        );
    }
    let mut assets = Vec::new();
    for (job, asset) in jobs {
        wait_job(&client, &stack.origin_url, &job).await?;
        assets.push(asset);
    }
    eprintln!("catalog ready in {:.1} s", started.elapsed().as_secs_f64());

    // Every object a player may ask for, from each title's asset manifest.
    let mut objects = Vec::new();
    let mut tokens = HashMap::new();
    for asset in &assets {
        let r = client
            .get(format!("{}/mezz/{asset}/manifest.json", stack.origin_url))
            .send()
            .await?
            .error_for_status()
            .context("asset manifest")?;
        let manifest = AssetManifest::from_json(&r.bytes().await?)
            .map_err(|e| anyhow::anyhow!("asset {asset}: bad manifest: {e}"))?;
        objects.extend(catalog_objects(&manifest));
        tokens.insert(asset.clone(), sign_for(asset)?);
    }

    // Popularity: a seeded shuffle of the objects, then Zipf over the ranks.
    let mut rng = SplitMix64(args.seed);
    for i in (1..objects.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        objects.swap(i, j);
    }
    let zipf = Zipf::new(objects.len(), args.zipf_s);
    let plan: Vec<(usize, usize)> = (0..args.requests)
        .map(|_| {
            (
                zipf.sample(&mut rng),
                rng.below(stack.edge_urls.len() as u64) as usize,
            )
        })
        .collect();

    let before = scrape(&client, &stack.origin_url).await?;
    eprintln!(
        "{} viewer requests over {} objects, {} at a time…",
        args.requests,
        objects.len(),
        args.concurrency
    );
    let load_started = Instant::now();
    let results: Vec<Outcome> = futures::stream::iter(plan.iter().copied())
        .map(|(o, e)| {
            let (asset, rest) = &objects[o];
            let token = tokens.get(asset).map(String::as_str).unwrap_or_default();
            let url = format!(
                "{}/vod/{asset}/{rest}?{TOKEN_NAME}={token}",
                stack.edge_urls[e]
            );
            let client = client.clone();
            async move { view(&client, &url).await }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let load_secs = load_started.elapsed().as_secs_f64();
    let after = scrape(&client, &stack.origin_url).await?;

    // Viewers.
    let viewer_requests = results.len() as u64;
    let failures: Vec<&Outcome> = results.iter().filter(|r| r.error.is_some()).collect();
    let viewer_bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let mut latencies: Vec<f64> = results.iter().map(|r| r.secs * 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    let distinct: HashSet<usize> = plan.iter().map(|&(o, _)| o).collect();

    // The origin: its request counter has no route label, so /mezz/ requests
    // are its increase over the load, less the first of our two reads (the
    // counter is bumped after a /metrics answer is rendered). Nothing but the
    // shields talks to the origin meanwhile.
    let (origin_requests, origin_requests_how) = origin_mezz_requests(&before, &after);
    let mezz_bytes = after.mezz_bytes.saturating_sub(before.mezz_bytes);
    let repeat_bytes = after.repeat_bytes.saturating_sub(before.repeat_bytes);
    let offload = 1.0 - origin_requests as f64 / viewer_requests as f64;

    let edge_hits: u64 = stack
        .edges
        .iter()
        .map(|e| e.metrics.requests_with_cache("hit"))
        .sum();
    let edge_total: u64 = stack.edges.iter().map(|e| e.metrics.requests_total()).sum();
    let shield_hits: u64 = stack
        .shields
        .iter()
        .map(|s| s.metrics.requests_with_cache("hit"))
        .sum();
    let shield_total: u64 = stack
        .shields
        .iter()
        .map(|s| s.metrics.requests_total())
        .sum();
    let per_shield: Vec<u64> = stack
        .shields
        .iter()
        .map(|s| s.metrics.requests_total())
        .collect();

    let offload_met = offload >= OFFLOAD_GOAL;
    let repeat_met = repeat_bytes == 0;
    let verdict = |met: bool| if met { "goal met" } else { "GOAL MISSED" };
    println!();
    println!(
        "flash crowd: {} titles × {} s, {} objects; {} edges → {} shields → 1 origin; Zipf s={}, seed {}",
        args.titles,
        args.secs,
        objects.len(),
        args.edges,
        args.shields,
        args.zipf_s,
        args.seed
    );
    println!(
        "  viewer requests        {viewer_requests:>10}   failures {}   {:.1} s, {:.0} req/s, {:.1} MB",
        failures.len(),
        load_secs,
        viewer_requests as f64 / load_secs,
        viewer_bytes as f64 / 1e6
    );
    println!(
        "  viewer latency         p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   ({} at a time)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        args.concurrency
    );
    println!(
        "  objects requested      {:>10} of {}",
        distinct.len(),
        objects.len()
    );
    println!(
        "  edge hit ratio         {:>9.2}%   ({edge_hits} of {edge_total})",
        pct(edge_hits, edge_total)
    );
    println!(
        "  shield requests        {:>10}   hits {shield_hits}, per shield {per_shield:?}",
        shield_total
    );
    println!("  origin /mezz/ requests {origin_requests:>10}   ({origin_requests_how})");
    println!(
        "  origin offload         {:>9.3}%   goal ≥ {:.1}%: {}",
        offload * 100.0,
        OFFLOAD_GOAL * 100.0,
        verdict(offload_met)
    );
    println!(
        "  origin mezzanine bytes {mezz_bytes:>10}   repeat bytes {repeat_bytes}   goal 0: {}",
        verdict(repeat_met)
    );
    println!(
        "  ratios                 {:.1} viewer requests per origin request; {:.2} origin requests per object requested",
        viewer_requests as f64 / origin_requests.max(1) as f64,
        origin_requests as f64 / distinct.len().max(1) as f64
    );
    for f in failures.iter().take(5) {
        println!(
            "  failure: {}",
            f.error.as_deref().unwrap_or("unknown error")
        );
    }

    let report = json!({
        "bench": "flash-crowd",
        "unix_time": cascade_serve::unix_now(),
        "config": {
            "titles": args.titles, "title_secs": args.secs, "objects": objects.len(),
            "edges": args.edges, "shields": args.shields, "zipf_s": args.zipf_s,
            "seed": args.seed, "concurrency": args.concurrency,
        },
        "viewer_requests": viewer_requests,
        "viewer_failures": failures.len(),
        "viewer_bytes": viewer_bytes,
        "load_secs": load_secs,
        "viewer_requests_per_sec": viewer_requests as f64 / load_secs,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(0.0),
        },
        "objects_requested": distinct.len(),
        "edge_hits": edge_hits,
        "edge_requests": edge_total,
        "shield_requests": shield_total,
        "shield_hits": shield_hits,
        "shield_requests_each": per_shield,
        "origin_mezz_requests": origin_requests,
        "origin_mezz_requests_source": origin_requests_how,
        "origin_offload": offload,
        "origin_mezzanine_bytes": mezz_bytes,
        "origin_mezzanine_repeat_bytes": repeat_bytes,
        "goals": {
            "origin_offload_min": OFFLOAD_GOAL,
            "origin_offload_met": offload_met,
            "repeat_bytes_zero_met": repeat_met,
        },
    });
    let path = match &args.json {
        Some(p) => p.clone(),
        None => default_json_path(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, format!("{report:#}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("  results                {}", path.display());
    Ok(offload_met && repeat_met && failures.is_empty())
}

/// One viewer request's result.
struct Outcome {
    secs: f64,
    bytes: u64,
    error: Option<String>,
}

async fn view(client: &reqwest::Client, url: &str) -> Outcome {
    let started = Instant::now();
    let got = async {
        let r = client.get(url).send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        Ok::<_, reqwest::Error>((status, body.len() as u64))
    }
    .await;
    let secs = started.elapsed().as_secs_f64();
    // The token is in the URL: name the path only.
    let path = url
        .split_once("/vod/")
        .map_or("", |(_, p)| p)
        .split('?')
        .next()
        .unwrap_or("");
    match got {
        Ok((status, bytes)) if status == reqwest::StatusCode::OK && bytes > 0 => Outcome {
            secs,
            bytes,
            error: None,
        },
        Ok((status, bytes)) => Outcome {
            secs,
            bytes,
            error: Some(format!("/vod/{path}: {status}, {bytes} bytes")),
        },
        Err(e) => Outcome {
            secs,
            bytes: 0,
            error: Some(format!("/vod/{path}: {}", e.without_url())),
        },
    }
}

/// Every output of a title: `(asset, path after /vod/{asset}/)`.
fn catalog_objects(m: &AssetManifest) -> Vec<(String, String)> {
    let mut out = vec![
        (m.asset.clone(), "master.m3u8".to_string()),
        (m.asset.clone(), "manifest.mpd".to_string()),
    ];
    for t in &m.tracks {
        out.push((m.asset.clone(), format!("{}.m3u8", t.id)));
        out.push((m.asset.clone(), format!("{}/init.mp4", t.id)));
        for n in 1..=t.fragments.len() {
            out.push((m.asset.clone(), format!("{}/{n}.m4s", t.id)));
        }
    }
    out
}

/// The origin counters this benchmark reads.
struct OriginCounters {
    text: String,
    mezz_bytes: u64,
    repeat_bytes: u64,
}

async fn scrape(client: &reqwest::Client, origin: &str) -> anyhow::Result<OriginCounters> {
    let text = client
        .get(format!("{origin}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(OriginCounters {
        mezz_bytes: metric_sum(&text, "origin_mezzanine_bytes_total", |_| true) as u64,
        repeat_bytes: metric_sum(&text, "origin_mezzanine_repeat_bytes_total", |_| true) as u64,
        text,
    })
}

/// Origin requests for `/mezz/` between two reads of its metrics, and how
/// they were counted: from a route or path label when the request counter
/// has one, else from the counter's increase less our own first read.
fn origin_mezz_requests(before: &OriginCounters, after: &OriginCounters) -> (u64, &'static str) {
    const NAME: &str = "origin_http_requests_total";
    let by_route =
        |labels: &str| labels.contains("route=\"/mezz") || labels.contains("path=\"/mezz");
    let has_route = after
        .text
        .lines()
        .any(|l| series_name(l).is_some_and(|n| n.ends_with(NAME)) && by_route(l));
    if has_route {
        let n = metric_sum(&after.text, NAME, by_route) - metric_sum(&before.text, NAME, by_route);
        return (
            n.max(0.0) as u64,
            "origin_http_requests_total, /mezz/ route",
        );
    }
    let n = metric_sum(&after.text, NAME, |_| true) - metric_sum(&before.text, NAME, |_| true);
    (
        (n - 1.0).max(0.0) as u64,
        "increase of origin_http_requests_total over the load, less one /metrics read",
    )
}

/// The metric name of a sample line, without labels.
fn series_name(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    line.split(['{', ' ']).next()
}

/// Sums the samples of every metric whose name ends with `suffix` (roles'
/// registries add a `cascade_` prefix) and whose labels pass `keep`.
fn metric_sum(text: &str, suffix: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| series_name(l).is_some_and(|n| n.ends_with(suffix)))
        .filter(|l| {
            let labels = l
                .split_once('{')
                .and_then(|(_, r)| r.split_once('}'))
                .map_or("", |(labels, _)| labels);
            keep(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn bench_key() -> TokenKeyConfig {
    TokenKeyConfig {
        kid: "bench".into(),
        key: KEY_HEX.into(),
        algorithm: "sha256".into(),
        salt: String::new(),
        escape_early: false,
    }
}

/// A token for `/vod/{asset}/*`, valid for a day.
fn sign_for(asset: &str) -> anyhow::Result<String> {
    let key = cascade_token::Key::from_hex("bench", KEY_HEX)
        .map_err(|e| anyhow::anyhow!("bench key: {e}"))?;
    Ok(cascade_token::sign(
        &key,
        &cascade_token::Claims {
            expires: cascade_serve::unix_now() + 86_400,
            acl: vec![format!("/vod/{asset}/*")],
            ..Default::default()
        },
    ))
}

/// A small H.264/AAC clip made with the FFmpeg CLI; each title a different picture.
fn make_clip(dir: &Path, i: usize, secs: u32) -> anyhow::Result<PathBuf> {
    const SOURCES: [&str; 3] = ["testsrc2", "testsrc", "smptebars"];
    let out = dir.join(format!("title-{i}.mp4"));
    let source = SOURCES[i % SOURCES.len()];
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("{source}=s=320x180:r=25:d={secs}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=f={}:sample_rate=44100:d={secs}",
            440 + 110 * i
        ))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&out)
        .status()
        .context("running ffmpeg (make deps installs it)")?;
    if !status.success() {
        bail!("ffmpeg could not make {}", out.display());
    }
    Ok(out)
}

/// Uploads a clip; returns (job, asset).
async fn upload(
    client: &reqwest::Client,
    origin: &str,
    path: &Path,
    title: &str,
) -> anyhow::Result<(String, String)> {
    let body = tokio::fs::read(path).await?;
    let r = client
        .post(format!("{origin}/api/v1/uploads"))
        .bearer_auth(ORIGIN_ADMIN)
        .query(&[("title", title)])
        .body(body)
        .send()
        .await?;
    let status = r.status();
    let answer: Value = r.json().await?;
    if !status.is_success() {
        bail!("upload refused ({status}): {answer}");
    }
    let field = |k: &str| {
        answer[k]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("upload answer without {k}: {answer}"))
    };
    Ok((field("job")?, field("asset")?))
}

async fn wait_job(client: &reqwest::Client, origin: &str, job: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + TRANSCODE_LIMIT;
    loop {
        let j: Value = client
            .get(format!("{origin}/api/v1/jobs/{job}"))
            .bearer_auth(ORIGIN_ADMIN)
            .send()
            .await?
            .json()
            .await?;
        match j["state"].as_str() {
            Some("done") => return Ok(()),
            Some("failed") => bail!("transcode failed: {j}"),
            _ if Instant::now() > deadline => bail!("job {job} still running: {j}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn default_json_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
            benches.parent().unwrap_or(benches).join("target")
        });
    target.join("bench").join("flash-crowd.json")
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// SplitMix64: a small seeded generator, enough for a workload.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n), n ≥ 1.
    fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: the bias is below 2^-64 · n, far under any count here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Zipf over ranks 0..n (rank k drawn with weight 1/(k+1)^s), by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.unit();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks() {
        let z = Zipf::new(100, 1.0);
        let mut rng = SplitMix64(7);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // Rank 1 has weight 1/H(100) ≈ 19%; rank 2 half of that.
        assert!((17_000..21_500).contains(&counts[0]), "{}", counts[0]);
        assert!((8_000..11_000).contains(&counts[1]), "{}", counts[1]);
        assert!(counts[99] > 0);
    }

    #[test]
    fn metric_sums_and_origin_requests() {
        let before = OriginCounters {
            text: "# HELP x\ncascade_origin_http_requests_total{status=\"200\"} 10\ncascade_origin_http_requests_total{status=\"206\"} 5\n".into(),
            mezz_bytes: 0,
            repeat_bytes: 0,
        };
        let after = OriginCounters {
            text: "cascade_origin_http_requests_total{status=\"200\"} 12\ncascade_origin_http_requests_total{status=\"206\"} 40\ncascade_origin_mezzanine_bytes_total 99\n".into(),
            mezz_bytes: 0,
            repeat_bytes: 0,
        };
        assert_eq!(
            metric_sum(&after.text, "origin_mezzanine_bytes_total", |_| true),
            99.0
        );
        // 37 more requests, one of them our own first /metrics read.
        assert_eq!(origin_mezz_requests(&before, &after).0, 36);
    }
}
