//! Encryption at the edge, and licenses.
//!
//!     make bench-protection
//!     cargo run --release -p cascade-benches --bin protection -- --secs 30
//!
//! Packaging throughput of the same 1080p mezzanine segments in the clear,
//! under `cbcs` and under `cenc`, as an edge makes them per request
//! (`package` and `package_protected`), in the same run; and the bytes
//! `cenc` encrypts per second against what `openssl speed -evp
//! aes-128-ctr` reaches on one core of this machine, measured in the same
//! run (the physical limit of AES-CTR here). Then license requests per
//! second through one edge to the origin's license server, with p50 and
//! p99, for a viewer's playback session.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cascade_benches::{json, viewer};
use cascade_packager::{
    index_bytes, package, package_protected, AssetManifest, ContentKey, Drm, Output,
    ProtectedOutput, Scheme, Track, View,
};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Seconds of 1080p mezzanine to make.
    #[arg(long, default_value_t = 30)]
    secs: u32,
    /// Rounds over every segment; the median round is reported.
    #[arg(long, default_value_t = 41)]
    rounds: usize,
    /// License requests to send (after 50 to warm up).
    #[arg(long, default_value_t = 3000)]
    licenses: usize,
    /// Concurrent license clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("v0.mp4");
    make_mezzanine(&file, args.secs)?;
    let bytes = std::fs::read(&file)?;
    let index = index_bytes(&bytes).context("indexing the mezzanine")?;
    let track = Track::from_index("v0", "v0.mp4", &index);
    let m = AssetManifest::new("bench", vec![track]);
    let t = &m.tracks[0];
    let slice =
        |r: cascade_packager::ByteRange| &bytes[r.offset as usize..(r.offset + r.length) as usize];
    let init = slice(t.init);
    let frags: Vec<&[u8]> = t.fragments.iter().map(|f| slice(f.range)).collect();
    let total: usize = frags.iter().map(|f| f.len()).sum();
    let drm = Drm {
        keys: [(
            "v0".to_string(),
            ContentKey {
                kid: [1; 16],
                key: [2; 16],
                iv: [3; 16],
            },
        )]
        .into_iter()
        .collect(),
        clear_segments: 0,
        systems: Default::default(),
    };
    let view = View::default();
    println!(
        "mezzanine: {} s of 1080p H.264, {} segments, {:.1} MB of fragments",
        args.secs,
        frags.len(),
        total as f64 / 1e6
    );

    // One round packages every segment once in each mode, the three modes
    // back to back per segment in turns, so the machine's noise (it is
    // shared) and the cache fall on all three alike; each round's ratio to
    // clear is kept, and the medians are reported.
    let make = |mode: usize, i: usize, frag: &[u8]| -> anyhow::Result<Vec<u8>> {
        let n = i as u64 + 1;
        Ok(match mode {
            0 => package(&m, &Output::Segment("v0".into(), n), &view, &[frag])?,
            _ => {
                let scheme = if mode == 1 {
                    Scheme::Cbcs
                } else {
                    Scheme::Cenc
                };
                let p = ProtectedOutput {
                    scheme: Some(scheme),
                    output: Output::Segment("v0".into(), n),
                };
                package_protected(&m, &p, &view, &[init, frag], &drm)?
            }
        })
    };
    let mut times: [Vec<Duration>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..args.rounds {
        let mut round = [Duration::ZERO; 3];
        for (i, frag) in frags.iter().enumerate() {
            // The first mode on a segment reads it from memory, the others
            // from the CPU's cache: each mode goes first a third of the time.
            for k in 0..3 {
                let mode = (i + k) % 3;
                let t0 = Instant::now();
                std::hint::black_box(make(mode, i, frag).context("packaging")?);
                round[mode] += t0.elapsed();
            }
        }
        for (mode, spent) in round.iter().enumerate() {
            times[mode].push(*spent);
        }
        ratios[0].push(round[0].as_secs_f64() / round[1].as_secs_f64());
        ratios[1].push(round[0].as_secs_f64() / round[2].as_secs_f64());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let median_f = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [clear, cbcs, cenc] = &mut times;
    let (clear, cbcs, cenc) = (median(clear), median(cbcs), median(cenc));
    let [r_cbcs, r_cenc] = &mut ratios;
    let (r_cbcs, r_cenc) = (median_f(r_cbcs), median_f(r_cenc));
    let rate = |d: Duration| total as f64 / d.as_secs_f64() / 1e9;
    println!();
    println!(
        "| packaging (median of {} rounds) | GB/s | segments/s | × clear (median of the rounds' ratios) |",
        args.rounds
    );
    println!("|---|---|---|---|");
    for (name, d, r) in [
        ("clear", clear, 1.0),
        ("cbcs", cbcs, r_cbcs),
        ("cenc", cenc, r_cenc),
    ] {
        println!(
            "| {name} | {:.2} | {:.0} | {r:.2} |",
            rate(d),
            frags.len() as f64 / d.as_secs_f64(),
        );
    }
    // What cenc encrypts: every protected byte; the whole segment is a
    // close upper bound (headers and NAL prefixes stay clear).
    let openssl = openssl_ctr()?;
    let cenc_rate = rate(cenc);
    // The encryption's own rate: what cenc costs beyond the clear path
    // (the same parse and copy), over the segment bytes (a bound on what
    // it encrypts: NAL prefixes and headers stay clear).
    let extra = cenc.saturating_sub(clear);
    let encrypt_rate = if extra.is_zero() {
        f64::INFINITY
    } else {
        rate(extra)
    };
    println!();
    println!(
        "openssl speed -evp aes-128-ctr (16 KiB blocks, one core): {openssl:.2} GB/s\ncenc, whole segments made: {cenc_rate:.2} GB/s ({:.2} × openssl)\ncenc, encryption alone (beyond the clear path): {encrypt_rate:.2} GB/s ({:.2} × openssl)",
        cenc_rate / openssl,
        encrypt_rate / openssl
    );

    licenses(&args)?;
    Ok(())
}

fn make_mezzanine(out: &Path, secs: u32) -> anyhow::Result<()> {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=s=1920x1080:r=30:d={secs}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-b:v",
            "6M",
            "-g",
            "60",
            "-keyint_min",
            "60",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+frag_keyframe+empty_moov+default_base_moof",
            "-f",
            "mp4",
        ])
        .arg(out)
        .status()
        .context("running ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg could not make the mezzanine");
    }
    Ok(())
}

/// GB/s of `openssl speed -evp aes-128-ctr` on 16 KiB blocks, one process.
fn openssl_ctr() -> anyhow::Result<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-128-ctr",
            "-seconds",
            "3",
            "-bytes",
            "16384",
        ])
        .output()
        .context("running openssl speed (Debian's openssl)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.to_ascii_uppercase().starts_with("AES-128-CTR"))
        .context("no AES-128-CTR line from openssl speed")?;
    let kbps: f64 = line
        .split_whitespace()
        .last()
        .and_then(|v| v.trim_end_matches('k').parse().ok())
        .context("openssl's figure")?;
    Ok(kbps * 1000.0 / 1e9)
}

const KEY_HEX: &str = "5ecbe75ecbe75ecbe75ecbe75ecbe75e";
const ADMIN: &str = "bench-origin-admin";
const FLEET: &str = "bench-fleet-credential";

/// Origin, shield and edge in this process, a protected title, and a
/// viewer's playback session with its license URL.
struct LicenseStack {
    origin: cascade_origin::Origin,
    shield: cascade_shield::Shield,
    edge: cascade_edge::Edge,
    license_url: String,
    kid_b64url: String,
    _dir: tempfile::TempDir,
}

impl LicenseStack {
    async fn start() -> anyhow::Result<LicenseStack> {
        use base64::Engine;
        let dir = tempfile::tempdir()?;
        let data = dir.path().to_str().context("temp path")?.to_string();
        let kek = dir.path().join("kek");
        std::fs::write(&kek, "11".repeat(32))?;
        let key = || cascade_serve::config::TokenKeyConfig {
            kid: "bench".into(),
            key: KEY_HEX.into(),
            algorithm: "sha256".into(),
            salt: String::new(),
            escape_early: false,
        };
        let origin_cfg = cascade_origin::OriginConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: format!("{data}/origin"),
            token_keys: vec![key()],
            admin_token: ADMIN.into(),
            fleet_token: FLEET.into(),
            kek_file: kek.to_str().context("temp path")?.to_string(),
            license_requests_per_minute: 10_000,
            login_attempts_per_minute: 1000,
            ..cascade_origin::OriginConfig::default()
        };
        let outbox = origin_cfg.mail_outbox();
        let origin = cascade_origin::start(&origin_cfg).await?;
        let origin_url = format!("http://{}", origin.addr);
        let shield = cascade_shield::start(&cascade_shield::ShieldConfig {
            listen: "127.0.0.1:0".into(),
            origins: vec![origin_url.clone()],
            cache_dir: String::new(),
            cache_memory_mib: 64,
            ..cascade_shield::ShieldConfig::default()
        })
        .await?;
        let edge = cascade_edge::start(&cascade_edge::EdgeConfig {
            listen: "127.0.0.1:0".into(),
            shields: vec![format!("http://{}", shield.addr)],
            origin: origin_url.clone(),
            origin_fallback: false,
            cache_dir: String::new(),
            cache_memory_mib: 64,
            token_keys: vec![key()],
            fleet_token: FLEET.into(),
            ..cascade_edge::EdgeConfig::default()
        })
        .await?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        let clip = dir.path().join("clip.mp4");
        let status = Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=320x180:r=25:d=4",
            ])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ])
            .arg(&clip)
            .status()?;
        if !status.success() {
            bail!("ffmpeg could not make the clip");
        }
        let up = json(
            http.post(format!("{origin_url}/api/v1/uploads"))
                .bearer_auth(ADMIN)
                .query(&[("title", "Bench"), ("protect", "true")])
                .body(std::fs::read(&clip)?),
        )
        .await?;
        let asset = up["asset"].as_str().context("asset")?.to_string();
        let job = up["job"].as_str().context("job")?.to_string();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let j = json(
                http.get(format!("{origin_url}/api/v1/jobs/{job}"))
                    .bearer_auth(ADMIN),
            )
            .await?;
            match j["state"].as_str() {
                Some("done") => break,
                Some("failed") => bail!("transcode failed: {j}"),
                _ if Instant::now() > deadline => bail!("transcode took too long"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let access = viewer(&http, &origin_url, &outbox, 0).await?;
        let play = json(
            http.post(format!("{origin_url}/api/v1/playback/{asset}"))
                .bearer_auth(&access)
                .json(&serde_json::json!({ "device_id": "bench" })),
        )
        .await?;
        let token = play["token"].as_str().context("token")?;
        let edge_url = format!("http://{}", edge.addr);
        let mpd = http
            .get(format!(
                "{edge_url}/vod/{asset}/manifest.mpd?__token__={token}"
            ))
            .send()
            .await?
            .text()
            .await?;
        let kid: String = mpd
            .split("cenc:default_KID=\"")
            .nth(1)
            .context("no KID in the MPD")?
            .chars()
            .take(36)
            .filter(|c| *c != '-')
            .collect();
        let raw: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&kid[i * 2..i * 2 + 2], 16))
            .collect::<Result<_, _>>()?;
        Ok(LicenseStack {
            license_url: format!("{edge_url}/vod/{asset}/license/clearkey?__token__={token}"),
            kid_b64url: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
            origin,
            shield,
            edge,
            _dir: dir,
        })
    }

    async fn shutdown(self) {
        self.edge.shutdown().await;
        self.shield.shutdown().await;
        self.origin.shutdown().await;
    }
}

/// License requests per second through an edge, with p50 and p99.
fn licenses(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stack = LicenseStack::start().await?;
        let body = serde_json::json!({ "kids": [stack.kid_b64url] }).to_string();
        let client = reqwest::Client::builder().no_proxy().build()?;
        let url = Arc::new(stack.license_url.clone());
        for _ in 0..50 {
            let r = client.post(url.as_str()).body(body.clone()).send().await?;
            if r.status() != 200 {
                bail!("license warm-up: {}", r.status());
            }
        }
        let per_client = args.licenses / args.clients.max(1);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.clients.max(1) {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                let mut refused = 0usize;
                for _ in 0..per_client {
                    let t = Instant::now();
                    match client.post(url.as_str()).body(body.clone()).send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                        }
                        _ => refused += 1,
                    }
                    lat.push(t.elapsed());
                }
                (lat, refused)
            }));
        }
        let mut lat = Vec::new();
        let mut refused = 0;
        for t in tasks {
            let (l, r) = t.await?;
            lat.extend(l);
            refused += r;
        }
        let wall = t0.elapsed();
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!();
        println!(
            "licenses: {} requests from {} clients through one edge to the origin (SQLite): {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} refused",
            lat.len(),
            args.clients,
            lat.len() as f64 / wall.as_secs_f64(),
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            refused
        );
        stack.shutdown().await;
        Ok(())
    })
}
