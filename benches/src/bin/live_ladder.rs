//! How fast the live ladder encodes, as a multiple of real time, for a
//! 720p30 and a 1080p30 source: the speed factor the origin needs above 1
//! (with headroom) to keep a channel live on this machine.
//!
//!     cargo run --release -p cascade-benches --bin live_ladder -- --secs 20
//!
//! Each source is made once with the FFmpeg CLI (a moving test pattern,
//! libx264 with a keyframe every second, as an encoder would send it), read
//! back with ffmpeg-next, and fed to the ladder as fast as it takes it (the
//! drop-the-top-rung rule is off, so every frame is encoded). Speed is
//! media seconds over wall seconds, from the first frame in to the last
//! rung frame out. One channel; the machine's other work shows as noise,
//! so each case runs three times and the median is reported.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cascade_live::frame::Frame;
use cascade_live::ladder::{self, LadderConfig, LadderIn, LadderOut, Rung};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Seconds of source per run.
    #[arg(long, default_value_t = 20)]
    secs: u32,
    /// x264 presets to try.
    #[arg(long, default_value = "ultrafast,superfast,veryfast")]
    presets: String,
    /// Runs per case (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let rungs = [
        Rung {
            height: 720,
            kbps: 2800,
        },
        Rung {
            height: 480,
            kbps: 1200,
        },
        Rung {
            height: 360,
            kbps: 800,
        },
        Rung {
            height: 240,
            kbps: 400,
        },
    ];
    println!(
        "source     preset     rungs encoded            speed (median of {})",
        args.runs
    );
    for (name, w, h) in [("720p30", 1280, 720), ("1080p30", 1920, 1080)] {
        let path = dir.path().join(format!("{name}.mp4"));
        make_source(&path, w, h, args.secs)?;
        let frames = read_frames(&path)?;
        for preset in args.presets.split(',') {
            let below: Vec<Rung> = rungs.iter().copied().filter(|r| r.height < h).collect();
            let mut speeds: Vec<f64> = (0..args.runs)
                .map(|_| run(&frames, &below, preset))
                .collect::<anyhow::Result<_>>()?;
            speeds.sort_by(f64::total_cmp);
            let heights: Vec<String> = below.iter().map(|r| r.height.to_string()).collect();
            println!(
                "{name:<10} {preset:<10} {:<24} {:.2}x",
                heights.join("+"),
                speeds[speeds.len() / 2]
            );
        }
    }
    Ok(())
}

/// Source frames: `(dts, cts, keyframe, length-prefixed data)` and the avcC.
struct Frames {
    avcc: Bytes,
    frames: Vec<(i64, i32, bool, Bytes)>,
    media_secs: f64,
}

fn make_source(path: &Path, w: u32, h: u32, secs: u32) -> anyhow::Result<()> {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=s={w}x{h}:r=30:d={secs}"))
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-bf", "0",
        ])
        .args(["-pix_fmt", "yuv420p", "-b:v", "6M", "-f", "mpegts"])
        .arg(path)
        .status()?;
    anyhow::ensure!(status.success(), "ffmpeg could not make the source");
    Ok(())
}

/// The source's frames, read with the ingest's own transport stream reader
/// (what an SRT publish goes through).
fn read_frames(path: &Path) -> anyhow::Result<Frames> {
    let bytes = std::fs::read(path)?;
    let mut reader = cascade_live::ts::Reader::default();
    let mut avcc = None;
    let mut frames = Vec::new();
    let mut on = |e: cascade_live::ts::Event| match e {
        cascade_live::ts::Event::Frame(Frame::VideoConfig(c)) => {
            avcc.get_or_insert(c);
        }
        cascade_live::ts::Event::Frame(Frame::Video {
            dts,
            cts,
            keyframe,
            data,
        }) => frames.push((dts, cts, keyframe, data)),
        _ => {}
    };
    reader
        .push(&bytes, &mut on)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let media_secs = frames.len() as f64 / 30.0;
    Ok(Frames {
        avcc: avcc.ok_or_else(|| anyhow::anyhow!("no H.264 configuration"))?,
        frames,
        media_secs,
    })
}

fn run(src: &Frames, rungs: &[Rung], preset: &str) -> anyhow::Result<f64> {
    let made = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let expected = (src.frames.len() * rungs.len()) as u64;
    let (counter, stamp) = (made.clone(), last.clone());
    let tx = ladder::spawn(
        "bench".into(),
        LadderConfig {
            rungs: rungs.to_vec(),
            preset: preset.into(),
            max_lag_ms: u64::MAX,
        },
        move |out| {
            if let LadderOut::Frame {
                frame: Frame::Video { .. },
                ..
            } = out
            {
                counter.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut t) = stamp.lock() {
                    *t = Instant::now();
                }
            }
            true
        },
    );
    let started = Instant::now();
    tx.send(LadderIn::Config(src.avcc.clone()))?;
    for (dts, cts, keyframe, data) in &src.frames {
        tx.send(LadderIn::Frame {
            dts: *dts,
            cts: *cts,
            keyframe: *keyframe,
            data: data.clone(),
            wall_ms: ladder::now_ms(),
        })?;
    }
    // Until every frame is out, or nothing more came for a second (the
    // decoder may keep its last frame or two).
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let quiet = last
            .lock()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(9.0);
        if made.load(Ordering::Relaxed) >= expected || quiet > 1.0 {
            break;
        }
    }
    drop(tx);
    let elapsed = last
        .lock()
        .map(|t| t.duration_since(started).as_secs_f64())
        .unwrap_or(f64::MAX);
    let got = made.load(Ordering::Relaxed);
    anyhow::ensure!(
        got + 4 * rungs.len() as u64 >= expected,
        "the ladder made {got} of {expected} frames"
    );
    Ok(src.media_secs * (got as f64 / expected.max(1) as f64) / elapsed)
}
