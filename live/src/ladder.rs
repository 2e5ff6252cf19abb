//! The real-time ladder: the encoder's H.264 is decoded once, scaled to
//! each rung below it and encoded with libx264 (no B-frames, no lookahead,
//! an IDR exactly where the source has a keyframe, so every rung's segments
//! and parts start on the same frames as the passed-through top rung).
//!
//! It runs on its own thread per channel (FFmpeg's work is blocking CPU
//! work). It never lets latency grow: each frame carries the wall clock of
//! its arrival, and when frames wait longer than [`MAX_LAG_MS`] the top
//! rung still encoded is dropped (logged and counted); when its queue is
//! full, frames are skipped up to the next keyframe.

use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use crate::es::H264;
use crate::frame::Frame;
use bytes::Bytes;
use ff::{codec, decoder, encoder, format, frame, picture, software, Packet};
use ffmpeg_next as ff;

/// Frames queued for the ladder (about four seconds at 30 fps).
pub const QUEUE: usize = 120;
/// Longest a frame may wait for the ladder before the top rung is dropped.
pub const MAX_LAG_MS: u64 = 1500;

/// One rung of the live ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// Picture height; the width keeps the source's aspect ratio.
    pub height: u32,
    /// Target bit rate, kbit/s (the peak is capped at 1.5 times this).
    pub kbps: u32,
}

/// How the ladder encodes.
#[derive(Debug, Clone)]
pub struct LadderConfig {
    /// The rungs; those at or above the source's height are skipped.
    pub rungs: Vec<Rung>,
    /// The x264 preset.
    pub preset: String,
    /// Longest a frame may wait before the top rung is dropped
    /// ([`MAX_LAG_MS`]; a benchmark that feeds as fast as it can sets it
    /// out of reach).
    pub max_lag_ms: u64,
}

/// What the ladder takes: the source's frames, with their arrival time.
pub enum LadderIn {
    Config(Bytes),
    Frame {
        dts: i64,
        cts: i32,
        keyframe: bool,
        data: Bytes,
        wall_ms: u64,
    },
}

/// What the ladder gives back.
pub enum LadderOut {
    /// A frame (or configuration) of rung `rung` (0 is the first below the source).
    Frame { rung: usize, frame: Frame },
    /// Rung `rung` is no longer made: the machine fell behind.
    Dropped { rung: usize },
    /// Media seconds made per wall second, over the last few seconds.
    Speed(f64),
}

/// Starts the ladder thread for `channel`; `out` gets what it makes (and
/// says false when nobody listens any more).
pub fn spawn(
    channel: String,
    cfg: LadderConfig,
    out: impl Fn(LadderOut) -> bool + Send + 'static,
) -> std_mpsc::SyncSender<LadderIn> {
    // FFmpeg's own chatter (x264's statistics) stays out of the logs.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| ff::log::set_level(ff::log::Level::Error));
    let (tx, rx) = std_mpsc::sync_channel(QUEUE);
    let spawned = std::thread::Builder::new()
        .name(format!("ladder-{channel}"))
        .spawn(move || {
            let mut ladder = Ladder {
                rungs: cfg.rungs,
                preset: cfg.preset,
                max_lag_ms: cfg.max_lag_ms,
                decoder: None,
                sps_pps: Vec::new(),
                outs: Vec::new(),
                dropped: 0,
                speed_since: Instant::now(),
                speed_media: 0,
                first_dts: None,
            };
            while let Ok(input) = rx.recv() {
                if let Err(e) = ladder.take(input, &out) {
                    tracing::warn!(channel, error = %e, "live ladder: a frame failed");
                }
                if !ladder.report(&out) {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "live ladder thread");
    }
    tx
}

struct Ladder {
    rungs: Vec<Rung>,
    preset: String,
    max_lag_ms: u64,
    decoder: Option<decoder::Video>,
    /// The source's SPS and PPS in Annex B, put before each keyframe for
    /// the decoder (which then needs no extradata).
    sps_pps: Vec<u8>,
    outs: Vec<RungOut>,
    /// How many rungs from the top are no longer made.
    dropped: usize,
    speed_since: Instant,
    speed_media: u64,
    first_dts: Option<i64>,
}

struct RungOut {
    /// Index into the configured rungs.
    index: usize,
    scaler: software::scaling::Context,
    encoder: encoder::Video,
    h264: H264,
    height: u32,
}

impl Ladder {
    fn take(&mut self, input: LadderIn, out: &impl Fn(LadderOut) -> bool) -> Result<(), String> {
        match input {
            LadderIn::Config(avcc) => {
                self.sps_pps = annex_b_parameter_sets(&avcc);
                self.decoder = Some(open_decoder()?);
                self.outs.clear();
                Ok(())
            }
            LadderIn::Frame {
                dts,
                cts,
                keyframe,
                data,
                wall_ms,
            } => {
                let lag = now_ms().saturating_sub(wall_ms);
                if lag > self.max_lag_ms && !self.outs.is_empty() {
                    // Behind real time: the top rung still made goes.
                    self.dropped += 1;
                    let gone = self.outs.remove(0);
                    tracing::warn!(
                        rung = gone.index,
                        height = gone.height,
                        lag_ms = lag,
                        "live ladder behind real time: dropping the top rung"
                    );
                    out(LadderOut::Dropped { rung: gone.index });
                }
                let first = *self.first_dts.get_or_insert(dts);
                self.speed_media = u64::try_from(dts - first).unwrap_or(0);
                self.frame(dts, cts, keyframe, &data, out)
            }
        }
    }

    fn frame(
        &mut self,
        dts: i64,
        cts: i32,
        keyframe: bool,
        data: &[u8],
        out: &impl Fn(LadderOut) -> bool,
    ) -> Result<(), String> {
        let Some(mut dec) = self.decoder.take() else {
            return Ok(());
        };
        let result = self.decode(&mut dec, dts, cts, keyframe, data, out);
        self.decoder = Some(dec);
        result
    }

    fn decode(
        &mut self,
        dec: &mut decoder::Video,
        dts: i64,
        cts: i32,
        keyframe: bool,
        data: &[u8],
        out: &impl Fn(LadderOut) -> bool,
    ) -> Result<(), String> {
        let mut annex_b = Vec::with_capacity(data.len() + self.sps_pps.len() + 16);
        if keyframe {
            annex_b.extend_from_slice(&self.sps_pps);
        }
        length_prefixed_to_annex_b(data, &mut annex_b);
        let mut packet = Packet::copy(&annex_b);
        packet.set_dts(Some(dts));
        packet.set_pts(Some(dts + i64::from(cts)));
        if keyframe {
            packet.set_flags(codec::packet::Flags::KEY);
        }
        dec.send_packet(&packet)
            .map_err(|e| format!("decode: {e}"))?;
        let mut decoded = frame::Video::empty();
        while dec.receive_frame(&mut decoded).is_ok() {
            let pts = decoded.pts().or(decoded.timestamp()).unwrap_or(dts);
            let key = decoded.is_key() || decoded.kind() == picture::Type::I;
            if self.outs.is_empty() && self.dropped == 0 {
                // x264's rate control needs the frame rate: the SPS's timing
                // information, else 30.
                let rate = dec
                    .frame_rate()
                    .filter(|r| r.numerator() > 0 && r.denominator() > 0)
                    .unwrap_or(ff::Rational::new(30, 1));
                self.open_rungs(&decoded, rate)?;
            }
            for r in &mut self.outs {
                let mut scaled = frame::Video::empty();
                r.scaler
                    .run(&decoded, &mut scaled)
                    .map_err(|e| format!("scale: {e}"))?;
                scaled.set_pts(Some(pts));
                scaled.set_kind(if key {
                    picture::Type::I
                } else {
                    picture::Type::None
                });
                r.encoder
                    .send_frame(&scaled)
                    .map_err(|e| format!("encode: {e}"))?;
                let mut encoded = Packet::empty();
                while r.encoder.receive_packet(&mut encoded).is_ok() {
                    let Some(data) = encoded.data() else { continue };
                    let pts = encoded.pts().unwrap_or(pts);
                    let dts = encoded.dts().unwrap_or(pts);
                    let mut frames = Vec::new();
                    r.h264.access_unit(data, dts, pts, &mut frames);
                    for frame in frames {
                        if !out(LadderOut::Frame {
                            rung: r.index,
                            frame,
                        }) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens a scaler and an encoder for each rung below the source.
    fn open_rungs(&mut self, src: &frame::Video, rate: ff::Rational) -> Result<(), String> {
        let (w, h) = (src.width(), src.height());
        for (index, rung) in self.rungs.iter().enumerate() {
            if rung.height >= h {
                continue;
            }
            let height = rung.height & !1;
            let width = ((u64::from(w) * u64::from(height) / u64::from(h.max(1))) as u32 + 1) & !1;
            let scaler = software::scaling::Context::get(
                src.format(),
                w,
                h,
                format::Pixel::YUV420P,
                width,
                height,
                software::scaling::Flags::FAST_BILINEAR,
            )
            .map_err(|e| format!("scaler: {e}"))?;
            let encoder = open_encoder(width, height, rate, rung.kbps, &self.preset)?;
            self.outs.push(RungOut {
                index,
                scaler,
                encoder,
                h264: H264::default(),
                height,
            });
        }
        Ok(())
    }

    /// Reports the speed every few seconds; false when nobody listens.
    fn report(&mut self, out: &impl Fn(LadderOut) -> bool) -> bool {
        let wall = self.speed_since.elapsed();
        if wall.as_secs() < 5 {
            return true;
        }
        let speed = self.speed_media as f64 / 90_000.0 / wall.as_secs_f64();
        self.speed_since = Instant::now();
        self.first_dts = None;
        self.speed_media = 0;
        out(LadderOut::Speed(speed))
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn open_decoder() -> Result<decoder::Video, String> {
    let codec = decoder::find(codec::Id::H264).ok_or("FFmpeg was built without H.264")?;
    let mut ctx = codec::context::Context::new_with_codec(codec);
    ctx.set_threading(codec::threading::Config::kind(
        codec::threading::Type::Slice,
    ));
    let mut dec = ctx.decoder().video().map_err(|e| format!("decoder: {e}"))?;
    dec.set_time_base((1, 90_000));
    Ok(dec)
}

fn open_encoder(
    width: u32,
    height: u32,
    rate: ff::Rational,
    kbps: u32,
    preset: &str,
) -> Result<encoder::Video, String> {
    let codec = encoder::find_by_name("libx264").ok_or("FFmpeg was built without libx264")?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| format!("encoder: {e}"))?;
    enc.set_width(width);
    enc.set_height(height);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base((1, 90_000));
    enc.set_frame_rate(Some(rate));
    enc.set_bit_rate(kbps as usize * 1000);
    enc.set_max_bit_rate(kbps as usize * 1500);
    enc.set_max_b_frames(0);
    // Keyframes only where the source has them (forced), never on a timer.
    enc.set_gop(100_000);
    let mut opts = ff::Dictionary::new();
    opts.set("preset", preset);
    opts.set("tune", "zerolatency");
    opts.set("forced-idr", "1");
    opts.set(
        "x264-params",
        &format!(
            "scenecut=0:open-gop=0:rc-lookahead=0:vbv-maxrate={}:vbv-bufsize={}",
            kbps * 3 / 2,
            kbps
        ),
    );
    enc.open_as_with(codec, opts)
        .map_err(|e| format!("open libx264: {e}"))
}

/// The SPS and PPS of an `avcC`, each behind a start code.
fn annex_b_parameter_sets(avcc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Not an avcC: the decoder finds the parameter sets in the stream.
    if avcc.first() != Some(&1) || crate::frame::picture(avcc).is_none() {
        return out;
    }
    let mut at = 5usize;
    for kind in 0..2 {
        let Some(&count_byte) = avcc.get(at) else {
            return out;
        };
        let count = if kind == 0 {
            count_byte & 0x1f
        } else {
            count_byte
        };
        at += 1;
        for _ in 0..count {
            let Some(len) = avcc
                .get(at..at + 2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            else {
                return out;
            };
            let Some(unit) = avcc.get(at + 2..at + 2 + len) else {
                return out;
            };
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(unit);
            at += 2 + len;
        }
    }
    out
}

/// NAL units behind 4-byte lengths, rewritten behind start codes.
fn length_prefixed_to_annex_b(mut data: &[u8], out: &mut Vec<u8>) {
    while data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let Some(unit) = data.get(4..4 + len) else {
            return;
        };
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(unit);
        data = &data[4 + len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avcc_and_length_prefixes_become_annex_b() {
        // A real avcC (x264's 1280x720 parameter sets) gives them back
        // behind start codes; one whose SPS does not parse gives nothing
        // (the decoder then reads the stream's own).
        let sps = [
            0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00,
            0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
        ];
        let mut avcc = vec![1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, sps.len() as u8];
        avcc.extend_from_slice(&sps);
        avcc.extend_from_slice(&[1, 0, 2, 0x68, 0xeb]);
        let mut want = vec![0, 0, 0, 1];
        want.extend_from_slice(&sps);
        want.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xeb]);
        assert_eq!(annex_b_parameter_sets(&avcc), want);
        let bad = [
            1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 2, 0x67, 0x64, 1, 0, 1, 0x68,
        ];
        assert!(annex_b_parameter_sets(&bad).is_empty());
        let mut out = Vec::new();
        length_prefixed_to_annex_b(&[0, 0, 0, 2, 0x65, 1, 0, 0, 0, 9], &mut out);
        assert_eq!(out, vec![0, 0, 0, 1, 0x65, 1]);
        assert!(annex_b_parameter_sets(&[1, 2]).is_empty());
    }

    /// Frames of a short 320x180 H.264 stream made by the FFmpeg CLI, read
    /// with the ingest's own transport stream reader.
    fn source_frames(tag: &str) -> (Bytes, Vec<(i64, i32, bool, Bytes)>) {
        let dir = std::env::temp_dir().join(format!("ladder-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("src.ts");
        let ok = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=s=320x180:r=25:d=2",
            ])
            .args(["-c:v", "libx264", "-g", "25", "-bf", "0", "-f", "mpegts"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ffmpeg made the source");
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut reader = crate::ts::Reader::default();
        let (mut avcc, mut frames) = (None, Vec::new());
        reader
            .push(&bytes, &mut |e| match e {
                crate::ts::Event::Frame(Frame::VideoConfig(c)) => avcc = Some(c),
                crate::ts::Event::Frame(Frame::Video {
                    dts,
                    cts,
                    keyframe,
                    data,
                }) => frames.push((dts, cts, keyframe, data)),
                _ => {}
            })
            .unwrap();
        (avcc.unwrap(), frames)
    }

    fn run(lag_ms: u64) -> Vec<String> {
        let (avcc, frames) = source_frames(&lag_ms.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        let ladder = spawn(
            "test".into(),
            LadderConfig {
                rungs: vec![
                    Rung {
                        height: 120,
                        kbps: 150,
                    },
                    Rung {
                        height: 90,
                        kbps: 100,
                    },
                ],
                preset: "ultrafast".into(),
                max_lag_ms: MAX_LAG_MS,
            },
            move |out| {
                let seen = match out {
                    LadderOut::Frame {
                        rung,
                        frame: Frame::Video { keyframe, .. },
                    } => {
                        format!("frame {rung} {keyframe}")
                    }
                    LadderOut::Frame { rung, .. } => format!("config {rung}"),
                    LadderOut::Dropped { rung } => format!("dropped {rung}"),
                    LadderOut::Speed(_) => "speed".into(),
                };
                tx.send(seen).is_ok()
            },
        );
        ladder.send(LadderIn::Config(avcc)).unwrap();
        for (dts, cts, keyframe, data) in frames {
            let wall_ms = now_ms() - lag_ms;
            ladder
                .send(LadderIn::Frame {
                    dts,
                    cts,
                    keyframe,
                    data,
                    wall_ms,
                })
                .unwrap();
        }
        drop(ladder);
        rx.iter().collect()
    }

    #[test]
    fn each_rung_is_encoded_with_keyframes_where_the_source_has_them() {
        let seen = run(0);
        assert!(seen.contains(&"config 0".to_string()), "{seen:?}");
        assert!(seen.contains(&"config 1".to_string()), "{seen:?}");
        // Two seconds with a keyframe every 25 frames: two per rung.
        for rung in [0, 1] {
            let keys = seen
                .iter()
                .filter(|s| **s == format!("frame {rung} true"))
                .count();
            assert_eq!(keys, 2, "rung {rung}: {seen:?}");
            let frames = seen
                .iter()
                .filter(|s| s.starts_with(&format!("frame {rung} ")))
                .count();
            assert!(frames >= 45, "rung {rung} made {frames} frames");
        }
        assert!(!seen.iter().any(|s| s.starts_with("dropped")), "{seen:?}");
    }

    #[test]
    fn frames_that_waited_too_long_drop_rungs_from_the_top() {
        // Every frame arrives 2 s late: the top rung goes first, then the next.
        let seen = run(2000);
        let dropped: Vec<&String> = seen.iter().filter(|s| s.starts_with("dropped")).collect();
        assert_eq!(dropped, vec!["dropped 0", "dropped 1"], "{seen:?}");
    }
}
