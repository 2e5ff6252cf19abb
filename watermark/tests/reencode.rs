//! The mark through real codecs: a 54-second clip marked segment by
//! segment for one identifier (as an edge would serve one session's A/B
//! variants), encoded by FFmpeg's libx264 at a rung's bit rate, then
//! re-encoded at a quarter of that and scaled down one rung, as a pirate
//! might; the identifier comes back. The same clip unmarked is reported as
//! such. FFmpeg (the CLI) decodes and encodes through pipes.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use cascade_watermark::{detect, variant_for, Detection, Pattern, DEFAULT_STRENGTH, SEED};

const W: usize = 320;
const H: usize = 180;
const FPS: usize = 25;
const SEGMENT_FRAMES: usize = 2 * FPS;

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y"])
        .args(args)
        .status()
        .expect("the ffmpeg CLI (make test installs it)")
        .success();
    assert!(ok, "ffmpeg {args:?}");
}

/// Decodes `src`, marks each segment for `id` (or not), encodes to `out`.
fn mark(src: &Path, out: &Path, id: Option<u16>) {
    let mut dec = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(src)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut enc = Command::new("ffmpeg")
        .args([
            "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p",
        ])
        .args(["-s", &format!("{W}x{H}"), "-r", &FPS.to_string(), "-i", "-"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "300k",
            "-g",
            "50",
        ])
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pattern = Pattern::new(SEED);
    let (mut input, mut output) = (dec.stdout.take().unwrap(), enc.stdin.take().unwrap());
    let mut frame = vec![0u8; W * H * 3 / 2];
    let mut n = 0usize;
    while input.read_exact(&mut frame).is_ok() {
        if let Some(id) = id {
            let segment = (n / SEGMENT_FRAMES) as u64 + 1;
            let v = variant_for(id, segment);
            pattern.embed(&mut frame[..W * H], W, H, W, v, DEFAULT_STRENGTH);
        }
        output.write_all(&frame).unwrap();
        n += 1;
    }
    drop(output);
    assert!(enc.wait().unwrap().success() && dec.wait().unwrap().success());
}

/// Each segment's mean correlation in `file` (`w`×`h` pictures).
fn correlations(file: &Path, w: usize, h: usize) -> Vec<f32> {
    let mut dec = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(file)
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pattern = Pattern::new(SEED);
    let mut input = dec.stdout.take().unwrap();
    let mut frame = vec![0u8; w * h];
    let mut sums: Vec<(f32, usize)> = Vec::new();
    let mut n = 0usize;
    while input.read_exact(&mut frame).is_ok() {
        let seg = n / SEGMENT_FRAMES;
        if sums.len() <= seg {
            sums.push((0.0, 0));
        }
        sums[seg].0 += pattern.correlate(&frame, w, h, w);
        sums[seg].1 += 1;
        n += 1;
    }
    assert!(dec.wait().unwrap().success());
    sums.iter().map(|(s, c)| s / *c as f32).collect()
}

#[test]
fn an_identifier_survives_a_quarter_of_the_bit_rate_and_a_smaller_rung() {
    let dir = tempfile_dir();
    let src = dir.join("src.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=s={W}x{H}:r={FPS}:d=54"),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "12",
        src.to_str().unwrap(),
    ]);
    for id in [0x2b7e_u16, 0x0001] {
        let marked = dir.join(format!("marked-{id}.mp4"));
        mark(&src, &marked, Some(id));
        let own = correlations(&marked, W, H);
        assert!(
            matches!(detect(&own), Detection::Marked { id: got, .. } if got == id),
            "the session's own stream"
        );
        let pirated = dir.join(format!("pirated-{id}.mp4"));
        ffmpeg(&[
            "-i",
            marked.to_str().unwrap(),
            "-vf",
            "scale=-2:120",
            "-c:v",
            "libx264",
            "-b:v",
            "75k",
            pirated.to_str().unwrap(),
        ]);
        match detect(&correlations(&pirated, 214, 120)) {
            Detection::Marked { id: got, weakest } => {
                assert_eq!(got, id);
                assert!(weakest > 0.2, "weakest segment {weakest}");
            }
            other => panic!("re-encoded copy of {id:#x}: {other:?}"),
        }
    }
    let plain = dir.join("plain.mp4");
    mark(&src, &plain, None);
    let attacked = dir.join("plain-small.mp4");
    ffmpeg(&[
        "-i",
        plain.to_str().unwrap(),
        "-vf",
        "scale=-2:120",
        "-c:v",
        "libx264",
        "-b:v",
        "75k",
        attacked.to_str().unwrap(),
    ]);
    assert!(
        matches!(
            detect(&correlations(&attacked, 214, 120)),
            Detection::Unmarked { .. }
        ),
        "an unmarked copy"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cascade-wm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
