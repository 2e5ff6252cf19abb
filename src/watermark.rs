//! `cascade watermark detect FILE`: reads the forensic watermark's mark
//! from a captured copy of a watermarked title and names the playback
//! sessions that were given it (through the origin's admin API).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cascade_watermark::{detect, Detection, Pattern, MARK_THRESHOLD, PAYLOAD_BITS, SEED};
use ffmpeg_next as ff;
use serde_json::{json, Value};

use crate::ingest::ingest_credential;

#[derive(clap::Args)]
pub(crate) struct WatermarkArgs {
    #[command(subcommand)]
    command: WatermarkCommand,
}

#[derive(clap::Subcommand)]
enum WatermarkCommand {
    /// Read the mark from a video file and name the sessions that held it.
    Detect(DetectArgs),
}

#[derive(clap::Args)]
struct DetectArgs {
    /// The captured copy: any file FFmpeg reads (MP4, TS, MKV, …).
    file: PathBuf,
    /// The title's segment length in seconds (the origin's `segment_secs`).
    #[arg(long, default_value_t = 2.0)]
    segment_secs: f64,
    /// The title's segment number the copy starts with; without it, the
    /// copy is tried at every place in the 26-segment payload, and read
    /// where exactly one place gives a valid mark.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    first_segment: Option<u64>,
    /// Origin base URL, for the lookup of who held the mark.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8082",
        env = "CASCADE_ORIGIN_URL"
    )]
    origin: String,
    /// A file holding the origin's admin credential; else
    /// CASCADE_ORIGIN_ADMIN_TOKEN, else `cascade dev`'s data/control-admin-token.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Only read the mark; do not ask the origin who held it.
    #[arg(long)]
    no_lookup: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn watermark(args: WatermarkArgs) -> anyhow::Result<()> {
    match args.command {
        WatermarkCommand::Detect(a) => detect_command(a).await,
    }
}

async fn detect_command(a: DetectArgs) -> anyhow::Result<()> {
    if !(a.segment_secs.is_finite() && (0.5..=60.0).contains(&a.segment_secs)) {
        bail!("--segment-secs: 0.5 to 60");
    }
    let file = a.file.clone();
    let secs = a.segment_secs;
    let scan = tokio::task::spawn_blocking(move || segment_correlations(&file, secs))
        .await
        .context("the decoder crashed")??;
    // Segment n of the title carries payload bit (n - 1) mod 26: a copy
    // that starts later is lined up by padding the bits before it.
    let (detection, offset) = match a.first_segment {
        Some(n) => {
            let skip = usize::try_from((n - 1) % PAYLOAD_BITS as u64).unwrap_or(0);
            (detect_from(&scan.segments, skip), Some(skip))
        }
        None => align(&scan.segments),
    };
    let mut out = json!({
        "file": a.file.display().to_string(),
        "width": scan.width,
        "height": scan.height,
        "frames": scan.frames,
        "segments": scan.segments.len(),
        "segments_needed": PAYLOAD_BITS,
    });
    if let Some(skip) = offset {
        // Where in the payload the copy starts: its first segment is the
        // title's segment skip + 1 (or 26 later, or 52…).
        out["payload_offset"] = json!(skip);
    }
    match &detection {
        Detection::Marked { id, weakest } => {
            out["verdict"] = json!("marked");
            out["mark"] = json!(id);
            out["mark_hex"] = json!(format!("{id:04x}"));
            out["weakest_bit"] = json!(weakest);
        }
        Detection::Unmarked { spread } => {
            out["verdict"] = json!("unmarked");
            out["spread"] = json!(spread);
        }
        Detection::Unreadable { spread, segments } => {
            out["verdict"] = json!("unreadable");
            out["spread"] = json!(spread);
            out["segments"] = json!(segments);
        }
    }
    let mut lookup_error = None;
    if let (Detection::Marked { id, .. }, false) = (&detection, a.no_lookup) {
        match lookup(&a.origin, a.admin_token_file.as_deref(), *id).await {
            Ok(holders) => out["holders"] = holders,
            Err(e) => lookup_error = Some(format!("{e:#}")),
        }
    }
    if let Some(e) = &lookup_error {
        out["lookup_error"] = json!(e);
    }
    if a.json {
        println!("{out}");
        return Ok(());
    }
    println!(
        "{}: {}x{}, {} frames, {} segments of {} s",
        a.file.display(),
        scan.width,
        scan.height,
        scan.frames,
        scan.segments.len(),
        a.segment_secs
    );
    match detection {
        Detection::Marked { id, weakest } => {
            println!("mark {id} (0x{id:04x}); the weakest bit stands {weakest:.2} luma levels from the threshold");
            if let Some(skip) = offset.filter(|s| *s > 0) {
                println!(
                    "the copy starts at the title's segment {} (or 26, 52… later)",
                    skip + 1
                );
            }
            match out.get("holders").and_then(Value::as_array) {
                Some(h) if h.is_empty() => println!("no playback session was given this mark"),
                Some(h) => {
                    println!("given to (newest first):");
                    for x in h {
                        let at = x["issued_at"].as_u64().unwrap_or(0);
                        println!(
                            "  session {}  account {} {}  profile {}  title {}  started {}",
                            x["stream"].as_str().unwrap_or("?"),
                            x["user"].as_str().unwrap_or("?"),
                            x["email"].as_str().unwrap_or(""),
                            x["profile"].as_str().unwrap_or("?"),
                            x["asset"].as_str().unwrap_or("?"),
                            cascade_packager::live::iso_time(at.saturating_mul(1000))
                        );
                    }
                }
                None => {
                    if let Some(e) = lookup_error {
                        println!("who held it: not looked up ({e})");
                    }
                }
            }
        }
        Detection::Unmarked { spread } => println!(
            "no watermark: the segments' marks are {spread:.2} luma levels apart \
             (a marked copy's are {MARK_THRESHOLD} or more)"
        ),
        Detection::Unreadable { spread, segments } => println!(
            "marked ({spread:.2} luma levels apart) but unreadable from {segments} segments: \
             reading a mark needs {PAYLOAD_BITS} whole segments, lined up with the title's \
             (--first-segment, --segment-secs)"
        ),
    }
    Ok(())
}

/// Detection of a copy whose start in the payload is not known: at the
/// start first, else at the one other place where a valid mark is read (a
/// wrong place passes the sync pair and the CRC about once in a thousand;
/// two places that both pass are reported as unreadable).
fn align(segments: &[f32]) -> (Detection, Option<usize>) {
    let first = detect(segments);
    if matches!(first, Detection::Marked { .. } | Detection::Unmarked { .. }) {
        return (first, Some(0));
    }
    let found: Vec<(Detection, usize)> = (1..PAYLOAD_BITS)
        .map(|skip| (detect_from(segments, skip), skip))
        .filter(|(d, _)| matches!(d, Detection::Marked { .. }))
        .collect();
    match found.len() {
        1 => found
            .into_iter()
            .next()
            .map_or((first, None), |(d, skip)| (d, Some(skip))),
        _ => (first, None),
    }
}

/// Detection of a copy whose first segment carries payload bit `skip`.
fn detect_from(segments: &[f32], skip: usize) -> Detection {
    if skip == 0 || segments.len() < PAYLOAD_BITS {
        // Every bit is read from the copy's own segments, never a pad.
        return detect(segments);
    }
    // The bits before the copy read as the threshold (neither 0 nor 1):
    // the two groups are found from what the copy has.
    let mean = segments.iter().sum::<f32>() / segments.len().max(1) as f32;
    let padded: Vec<f32> = std::iter::repeat_n(mean, skip)
        .chain(segments.iter().copied())
        .collect();
    detect(&padded)
}

/// What the decoder saw: the mean correlation per segment.
struct Scan {
    width: u32,
    height: u32,
    frames: u64,
    segments: Vec<f32>,
}

/// Decodes `file`'s video and correlates each picture's luma with the
/// watermark's pattern, averaged per segment of `segment_secs` from the
/// first picture.
fn segment_correlations(file: &Path, segment_secs: f64) -> anyhow::Result<Scan> {
    ff::init().context("FFmpeg")?;
    let mut ictx =
        ff::format::input(file).with_context(|| format!("cannot read {}", file.display()))?;
    let stream = ictx
        .streams()
        .best(ff::media::Type::Video)
        .context("the file has no video stream")?;
    let index = stream.index();
    let tb = stream.time_base();
    let tb_secs = f64::from(tb.numerator()) / f64::from(tb.denominator().max(1));
    let ctx = ff::codec::context::Context::from_parameters(stream.parameters())?;
    let mut decoder = ctx.decoder().video().context("no decoder for its video")?;
    let pattern = Pattern::new(SEED);
    let mut scaler: Option<ff::software::scaling::Context> = None;
    let mut decoded = ff::frame::Video::empty();
    let mut gray = ff::frame::Video::empty();
    let mut sums: Vec<(f64, u32)> = Vec::new();
    let mut first: Option<i64> = None;
    let mut frames = 0u64;
    let (mut width, mut height) = (0, 0);
    let mut take = |decoder: &mut ff::decoder::Video| -> anyhow::Result<()> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            let (w, h) = (decoded.width(), decoded.height());
            if w == 0 || h == 0 {
                continue;
            }
            // A stream whose size changes midway: a new scaler.
            if scaler.as_ref().is_none_or(|s| {
                s.input().width != w
                    || s.input().height != h
                    || s.input().format != decoded.format()
            }) {
                scaler = Some(ff::software::scaling::Context::get(
                    decoded.format(),
                    w,
                    h,
                    ff::format::Pixel::GRAY8,
                    w,
                    h,
                    ff::software::scaling::Flags::POINT,
                )?);
            }
            if let Some(s) = scaler.as_mut() {
                s.run(&decoded, &mut gray)?;
            }
            let pts = decoded.timestamp().or(decoded.pts()).unwrap_or(0);
            let zero = *first.get_or_insert(pts);
            let secs = (pts.saturating_sub(zero)) as f64 * tb_secs;
            let seg = (secs / segment_secs + 1e-6).floor().max(0.0) as usize;
            if seg > 100_000 {
                continue;
            }
            if sums.len() <= seg {
                sums.resize(seg + 1, (0.0, 0));
            }
            let c = pattern.correlate(gray.data(0), w as usize, h as usize, gray.stride(0));
            sums[seg].0 += f64::from(c);
            sums[seg].1 += 1;
            frames += 1;
            (width, height) = (w, h);
        }
        Ok(())
    };
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        // A damaged packet costs a picture, not the reading.
        if decoder.send_packet(&packet).is_ok() {
            take(&mut decoder)?;
        }
    }
    let _ = decoder.send_eof();
    take(&mut decoder)?;
    if frames == 0 {
        bail!("no video could be decoded from {}", file.display());
    }
    // A last, short segment (under half its frames) reads weakly: left out.
    let full = sums.iter().map(|(_, n)| *n).max().unwrap_or(0);
    while sums.last().is_some_and(|(_, n)| *n * 2 < full) {
        sums.pop();
    }
    Ok(Scan {
        width,
        height,
        frames,
        segments: sums
            .iter()
            .map(|(s, n)| {
                if *n == 0 {
                    0.0
                } else {
                    (*s / f64::from(*n)) as f32
                }
            })
            .collect(),
    })
}

/// The sessions that held `mark`, from the origin.
async fn lookup(origin: &str, token_file: Option<&Path>, mark: u16) -> anyhow::Result<Value> {
    let admin = ingest_credential(token_file)?;
    let url = format!(
        "{}/api/v1/admin/watermarks/{mark}",
        origin.trim_end_matches('/')
    );
    let r = reqwest::Client::new()
        .get(&url)
        .bearer_auth(admin.trim())
        .send()
        .await
        .with_context(|| format!("reaching {origin}"))?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "the origin answered {status}: {}",
            body.get("message").and_then(Value::as_str).unwrap_or("")
        );
    }
    Ok(body.get("holders").cloned().unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segment correlations of a copy of mark `id` starting at payload bit
    /// `skip`, `n` segments long, with a picture's own bias.
    fn copy(id: u16, skip: usize, n: usize) -> Vec<f32> {
        let bits = cascade_watermark::payload(id);
        (0..n)
            .map(|i| {
                if bits[(skip + i) % PAYLOAD_BITS] {
                    3.4
                } else {
                    -2.6
                }
            })
            .collect()
    }

    #[test]
    fn a_copy_is_lined_up_wherever_it_starts() {
        for (id, skip) in [(0x2b7e_u16, 0usize), (0x0001, 1), (0xfff0, 13), (7, 25)] {
            let (d, at) = align(&copy(id, skip, PAYLOAD_BITS + 3));
            assert!(
                matches!(d, Detection::Marked { id: got, .. } if got == id),
                "{id:#x} at {skip}: {d:?}"
            );
            assert_eq!(at, Some(skip));
        }
        // A copy whose start is given reads the same.
        let d = detect_from(&copy(0x1234, 5, 40), 5);
        assert!(matches!(d, Detection::Marked { id: 0x1234, .. }), "{d:?}");
        // Flat correlations: no mark, wherever.
        let (d, _) = align(&[0.1; 30]);
        assert!(matches!(d, Detection::Unmarked { .. }), "{d:?}");
        // Too short to read: unreadable, not a guess.
        let (d, at) = align(&copy(0x2b7e, 3, 12));
        assert!(matches!(d, Detection::Unreadable { .. }), "{d:?}");
        assert_eq!(at, None);
    }
}
