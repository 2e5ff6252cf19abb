//! Server-side ad insertion, measured: what a personalised (stitched) media
//! playlist costs an edge next to the same title's shared playlist in the
//! same run, and how long conditioning a creative takes per minute of ad.
//!
//! ```sh
//! cargo run --release -p cascade-benches --bin ads
//! cargo run --release -p cascade-benches --bin ads -- --secs 1200 --concurrency 64 --rounds 5
//! ```
//!
//! Origin, shield and edge run in this process on ephemeral ports, with the
//! origin's default ladder and preset; the load generator shares the
//! machine, so compare the two modes of one run (rounds alternate), not
//! figures across runs. The creative (a 720p FFmpeg test source) is served
//! by this program over plain HTTP and conditioned through the built-in ad
//! service; the title (240p) has a pre-roll, two mid-rolls and a post-roll.
//! Viewers are real accounts with real playback sessions (free plan).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cascade_benches::{ffmpeg_clip, json, viewer};
use cascade_edge::EdgeConfig;
use cascade_origin::OriginConfig;
use cascade_serve::config::TokenKeyConfig;
use cascade_shield::ShieldConfig;
use clap::Parser;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY_HEX: &str = "5ecbe75ecbe75ecbe75ecbe75ecbe75e";
const ADMIN: &str = "bench-origin-admin";
const FLEET: &str = "bench-fleet-credential";

#[derive(Parser)]
struct Args {
    /// The title's length in seconds (2-second segments).
    #[arg(long, default_value_t = 1800)]
    secs: u32,
    /// The creative's length in seconds (one in each of four breaks).
    #[arg(long, default_value_t = 30)]
    ad_secs: u32,
    /// Free-plan playback sessions the personalised requests rotate over.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Rounds per mode (they alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
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

/// Serves one file at any path over HTTP/1.0, for the creative's media.
async fn serve_file(path: PathBuf) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = Arc::new(tokio::fs::read(&path).await?);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.0 200 OK\r\ncontent-type: video/mp4\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    Ok(format!("http://{addr}/creative.mp4"))
}

struct Round {
    requests: u64,
    secs: f64,
    latencies_ms: Vec<f64>,
}

/// `concurrency` tasks GET the urls in turn for `secs`; every answer must
/// be 200 and (for stitched playlists) hold the breaks.
async fn round(
    http: &reqwest::Client,
    urls: &[String],
    concurrency: usize,
    secs: u64,
    stitched: bool,
) -> anyhow::Result<Round> {
    let urls = Arc::new(urls.to_vec());
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (http, urls) = (http.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t;
            while Instant::now() < until {
                let url = &urls[i % urls.len()];
                i += 1;
                let t0 = Instant::now();
                let r = http.get(url).send().await?;
                if r.status() != 200 {
                    bail!("{}", r.status());
                }
                let body = r.text().await?;
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                if body.contains("#EXT-X-CUE-OUT") != stitched {
                    bail!(
                        "a {} playlist {} breaks",
                        if stitched { "stitched" } else { "shared" },
                        if stitched { "without" } else { "with" }
                    );
                }
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(Round {
        requests: all.len() as u64,
        secs: started.elapsed().as_secs_f64(),
        latencies_ms: all,
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().context("temp path")?.to_string();
    let origin_cfg = OriginConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: format!("{data}/origin"),
        token_keys: vec![key()],
        admin_token: ADMIN.into(),
        fleet_token: FLEET.into(),
        // Every viewer signs up from this one address.
        login_attempts_per_minute: 1000,
        ..OriginConfig::default()
    };
    let outbox = origin_cfg.mail_outbox();
    let origin = cascade_origin::start(&origin_cfg).await?;
    let origin_url = format!("http://{}", origin.addr);
    let shield = cascade_shield::start(&ShieldConfig {
        listen: "127.0.0.1:0".into(),
        origins: vec![origin_url.clone()],
        cache_dir: String::new(),
        cache_memory_mib: 256,
        ..ShieldConfig::default()
    })
    .await?;
    let edge = cascade_edge::start(&EdgeConfig {
        listen: "127.0.0.1:0".into(),
        shields: vec![format!("http://{}", shield.addr)],
        origin: origin_url.clone(),
        origin_fallback: false,
        cache_dir: String::new(),
        cache_memory_mib: 256,
        token_keys: vec![key()],
        fleet_token: FLEET.into(),
        ..EdgeConfig::default()
    })
    .await?;
    let edge_url = format!("http://{}", edge.addr);
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(120))
        .build()?;

    // Conditioning: a 720p creative to the whole default ladder.
    let ad_clip = dir.path().join("creative.mp4");
    ffmpeg_clip(&ad_clip, "testsrc2=s=1280x720:r=30", args.ad_secs)?;
    let media_url = serve_file(ad_clip).await?;
    let started = Instant::now();
    json(
        http.post(format!("{origin_url}/api/v1/admin/ads"))
            .bearer_auth(ADMIN)
            .json(&json!({ "name": "bench", "media_url": media_url, "duration": args.ad_secs })),
    )
    .await?;
    loop {
        let c = json(
            http.get(format!("{origin_url}/api/v1/admin/ads/creatives"))
                .bearer_auth(ADMIN),
        )
        .await?;
        match c[0]["status"].as_str() {
            Some("ready") => break,
            Some("failed") => bail!("conditioning failed: {c}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let conditioning = started.elapsed().as_secs_f64();
    let per_minute = conditioning / (f64::from(args.ad_secs) / 60.0);
    let ladder: Vec<String> = origin_cfg
        .ladder
        .iter()
        .map(|r| format!("{}p", r.height))
        .collect();
    eprintln!(
        "conditioning: {:.1} s for a {} s 720p creative to {} ({} preset): {:.1} s per minute of ad",
        conditioning,
        args.ad_secs,
        ladder.join("/"),
        origin_cfg.preset,
        per_minute
    );

    // The title, with four breaks.
    let clip = dir.path().join("title.mp4");
    ffmpeg_clip(&clip, "testsrc2=s=426x240:r=25", args.secs)?;
    let s = args.secs;
    let breaks = format!("0,{},{},{}", s / 3, 2 * s / 3, s);
    let up = json(
        http.post(format!("{origin_url}/api/v1/uploads"))
            .bearer_auth(ADMIN)
            .query(&[("title", "Bench title"), ("ad_breaks", breaks.as_str())])
            .body(tokio::fs::read(&clip).await?),
    )
    .await?;
    let asset = up["asset"].as_str().context("asset")?.to_string();
    let job = up["job"].as_str().context("job")?.to_string();
    loop {
        let j = json(
            http.get(format!("{origin_url}/api/v1/jobs/{job}"))
                .bearer_auth(ADMIN),
        )
        .await?;
        match j["state"].as_str() {
            Some("done") => break,
            Some("failed") => bail!("transcode failed: {j}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    // Free sessions (each decided and warmed once) and a shared token.
    let mut personal = Vec::new();
    for n in 0..args.sessions {
        let access = viewer(&http, &origin_url, &outbox, n).await?;
        let p = json(
            http.post(format!("{origin_url}/api/v1/playback/{asset}"))
                .bearer_auth(&access)
                .json(&json!({ "device_type": "web", "device_id": format!("bench-{n}") })),
        )
        .await?;
        let token = p["token"].as_str().context("token")?;
        let url = format!("{edge_url}/vod/{asset}/v0.m3u8?__token__={token}");
        let body = http.get(&url).send().await?.text().await?;
        if body.matches("#EXT-X-CUE-OUT").count() != 4 {
            bail!("a session's playlist lacks its four breaks:\n{body}");
        }
        personal.push(url);
    }
    let shared_token = cascade_token::sign(
        &cascade_token::Key::from_hex("bench", KEY_HEX).map_err(|e| anyhow::anyhow!("{e:?}"))?,
        &cascade_token::Claims {
            expires: cascade_serve::unix_now() + 3600,
            acl: vec![format!("/vod/{asset}/*")],
            // A session's token as long as the free viewers' (a premium
            // session: no `data=ads`), so both answers carry as many bytes
            // of token per URI.
            id: Some("0123456789abcdef0123456789abcdef".into()),
            data: Some("---".into()),
            ..Default::default()
        },
    );
    let shared = vec![format!(
        "{edge_url}/vod/{asset}/v0.m3u8?__token__={shared_token}"
    )];
    let sizes = (
        http.get(&shared[0]).send().await?.text().await?.len(),
        http.get(&personal[0]).send().await?.text().await?.len(),
    );

    let (mut plain_rps, mut stitched_rps) = (Vec::new(), Vec::new());
    let (mut plain_lat, mut stitched_lat) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let r = round(&http, &shared, args.concurrency, args.duration, false).await?;
        plain_rps.push(r.requests as f64 / r.secs);
        plain_lat.extend(r.latencies_ms);
        let r = round(&http, &personal, args.concurrency, args.duration, true).await?;
        stitched_rps.push(r.requests as f64 / r.secs);
        stitched_lat.extend(r.latencies_ms);
    }
    plain_lat.sort_by(f64::total_cmp);
    stitched_lat.sort_by(f64::total_cmp);
    let (p, s) = (median(plain_rps.clone()), median(stitched_rps.clone()));
    println!(
        "media playlist of a {} s title ({} segments; shared {} B, stitched {} B with 4 breaks of {} s), {} in flight, {} rounds of {} s each:",
        args.secs,
        args.secs / 2,
        sizes.0,
        sizes.1,
        args.ad_secs,
        args.concurrency,
        args.rounds,
        args.duration
    );
    println!(
        "  shared (cached)     {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        p,
        percentile(&plain_lat, 0.5),
        percentile(&plain_lat, 0.99)
    );
    println!(
        "  personalised        {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        s,
        percentile(&stitched_lat, 0.5),
        percentile(&stitched_lat, 0.99)
    );
    println!(
        "  personalised/shared {:>8.2} (throughput), {:.2} (p99)",
        s / p,
        percentile(&stitched_lat, 0.99) / percentile(&plain_lat, 0.99).max(1e-9)
    );
    println!(
        "conditioning: {per_minute:.1} s per minute of ad ({conditioning:.1} s for {} s)",
        args.ad_secs
    );
    println!(
        "{}",
        json!({
            "shared_rps": p, "personalised_rps": s, "ratio": s / p,
            "shared_p99_ms": percentile(&plain_lat, 0.99),
            "personalised_p99_ms": percentile(&stitched_lat, 0.99),
            "conditioning_secs_per_ad_minute": per_minute,
        })
    );
    edge.shutdown().await;
    shield.shutdown().await;
    origin.shutdown().await;
    Ok(())
}
