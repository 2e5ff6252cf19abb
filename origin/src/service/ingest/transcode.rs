//! Transcoding a source into CMAF mezzanine with FFmpeg's libraries.
//!
//! The source is decoded once. Each decoded picture is scaled to every rung
//! of the ladder, and the scaled picture is encoded with libx264 and, when the
//! spec asks for them, with libx265 (HEVC) and libsvtav1 (AV1) too. Every audio
//! stream of the source is resampled and encoded to AAC-LC as a track of its
//! own, tagged with the stream's language. Extra audio files (dubs) are decoded
//! afterwards, one at a time, into further AAC tracks that stop where the
//! video stops.
//!
//! Every track shares the same segment boundaries. The first picture at or
//! after each multiple of `segment_secs` starts a segment: libx264 and libx265
//! are made to code it as an IDR picture, and each video file is cut into a
//! new fragment exactly there. FFmpeg 5.1's SVT-AV1 wrapper ignores a forced
//! keyframe, so AV1 gets a fixed, closed GOP of one segment's worth of frames,
//! and a fresh encoder whenever a segment starts where that GOP would not put a
//! keyframe (a non-integer frame rate, variable timing). Audio is cut every
//! `segment_secs` of 48 kHz samples, counted from zero.
//!
//! This runs on a blocking thread: FFmpeg calls are synchronous.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use cascade_watermark::{Pattern, Variant, SEED as WATERMARK_SEED};
use ff::{codec, decoder, encoder, format, frame, media, picture, software, ChannelLayout};
use ffmpeg_next as ff;

// The ladder is configuration: its types live with the config, which every
// layer reads, and are re-exported here where transcoding uses them.
pub use crate::config::{Rung, DEFAULT_LADDER};

/// A video codec the ladder is encoded with.
///
/// H.264 is always made. HEVC is encoded at 60 % and AV1 at 50 % of each
/// rung's bitrate, from the same scaled pictures and with the same segment
/// starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// H.264/AVC with libx264; tracks `v0`, `v1`, …
    H264,
    /// H.265/HEVC with libx265, sample entry `hvc1`; tracks `h0`, `h1`, …
    Hevc,
    /// AV1 with SVT-AV1; tracks `x0`, `x1`, … Rungs narrower or lower than
    /// 64 pixels are left out: SVT-AV1 refuses them.
    Av1,
}

/// What to transcode.
#[derive(Debug, Clone)]
pub enum Source {
    /// A media file on local disk.
    File(PathBuf),
    /// A libavfilter source graph (used for the sample titles), such as
    /// `testsrc2=s=1280x720:r=30:d=30[out0];sine=f=440:d=30[out1]`.
    Lavfi(String),
}

/// An audio file added to a title as a track of its own, such as a dub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraAudio {
    /// The track's language as given (ISO 639 or a two-letter tag); it is
    /// normalised with [`normalize_language`].
    pub language: String,
    /// The file on local disk; its best audio stream is used.
    pub path: PathBuf,
}

/// How to transcode.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Input.
    pub source: Source,
    /// Directory the mezzanine files are written to.
    pub out_dir: PathBuf,
    /// Rungs to make, before capping at the source height.
    pub ladder: Vec<Rung>,
    /// The x264 preset; HEVC and AV1 use a matching speed of their own.
    pub preset: String,
    /// Fragment (and keyframe) interval in seconds.
    pub segment_secs: u32,
    /// Audio files added after the source's own audio tracks, in this order.
    pub extra_audio: Vec<ExtraAudio>,
    /// Codecs to encode every rung with besides H.264, which is always made;
    /// `H264` and repeats here are ignored.
    pub extra_codecs: Vec<VideoCodec>,
    /// Make every rung of the ladder, even above the source's height: an
    /// ad creative must stand in for any rendition of any title.
    pub fill_ladder: bool,
    /// Bring the source's audio to this integrated loudness (LUFS, EBU
    /// R128), as for an ad creative, so an ad is as loud as the titles
    /// around it: measured in a first pass over the main audio stream, one
    /// gain for the whole file, held so no sample passes -1 dBFS.
    pub loudness_lufs: Option<f64>,
    /// Forensic watermark at this strength (luma levels): every video
    /// output is made twice, variant A with the mark taken away and B with
    /// it added (`cascade_watermark`), from the same scaled pictures, with
    /// the same encoder settings and segment starts, so an edge can serve
    /// each segment from either. `None`: one unmarked copy.
    pub watermark: Option<u8>,
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `v0`, `v1`, … for H.264, `h0`, … for HEVC and `x0`, … for AV1 (each
    /// highest first); `a0`, `a1`, … for audio: the source's streams in
    /// stream order, then the extra files. A source audio stream FFmpeg
    /// cannot decode (other than the one it ranks best, which fails the
    /// transcode) gets no number; one that decodes to no sound at all is
    /// left out, and its number is not reused.
    pub track: String,
    /// The file name in `out_dir`.
    pub file: String,
    /// For an audio track, its language as a BCP 47 tag (`en`, `hi`, `und`);
    /// the file's `mdhd` carries the ISO 639-2/T form (`eng`, `hin`, `und`).
    pub language: Option<String>,
    /// For a video track, its codec.
    pub codec: Option<VideoCodec>,
    /// For a watermarked video track, which copy this file is (B's file is
    /// named `{track}-b.mp4` and has the same `track`).
    pub mark: Option<Variant>,
}

/// What a transcode made.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Files in track order: H.264, HEVC, AV1, then audio.
    pub files: Vec<Written>,
    /// Seconds of media transcoded.
    pub media_secs: f64,
}

/// What a probe saw.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Source duration in seconds, if the container says.
    pub duration: Option<f64>,
    /// Video width and height.
    pub width: u32,
    /// See `width`.
    pub height: u32,
    /// Whether there is an audio stream.
    pub has_audio: bool,
    /// How many audio streams there are; each becomes a track.
    pub audio_streams: usize,
}

/// Why a transcode failed; the text is shown to the uploader.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// FFmpeg could not read the source or an extra audio file.
    #[error("cannot read the source: {0}")]
    Input(String),
    /// The source has no video stream.
    #[error("the source has no video stream")]
    NoVideo,
    /// An encoder or muxer failed, or an encoder is missing.
    #[error("transcoding failed: {0}")]
    Encode(String),
    /// The job was cancelled (the origin is shutting down).
    #[error("cancelled")]
    Cancelled,
}

impl VideoCodec {
    /// Parses a codec name: `h264` or `avc`, `hevc` or `h265`, `av1`, in any
    /// case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "h264" | "avc" => Some(Self::H264),
            "hevc" | "h265" => Some(Self::Hevc),
            "av1" => Some(Self::Av1),
            _ => None,
        }
    }

    /// The letter this codec's track ids start with.
    fn track_prefix(self) -> char {
        match self {
            Self::H264 => 'v',
            Self::Hevc => 'h',
            Self::Av1 => 'x',
        }
    }

    /// The share of a rung's bitrate this codec gets, in percent: newer
    /// codecs reach the same quality with fewer bits.
    fn bitrate_percent(self) -> u64 {
        match self {
            Self::H264 => 100,
            Self::Hevc => 60,
            Self::Av1 => 50,
        }
    }

    fn encoder_name(self) -> &'static str {
        match self {
            Self::H264 => "libx264",
            Self::Hevc => "libx265",
            Self::Av1 => "libsvtav1",
        }
    }
}

/// Turns a stream's language tag into a short BCP 47 language tag.
///
/// ISO 639-2 codes, terminological (`fra`, `deu`, `zho`) or bibliographic
/// (`fre`, `ger`, `chi`), become the ISO 639-1 code when there is one (`fr`,
/// `de`, `zh`); ISO 639-1 codes are kept. A three-letter code of a language
/// without a two-letter code (`fil`, `yue`) is kept as it is, which is what
/// BCP 47 asks for. Anything else (empty, not two or three ASCII letters, an
/// unknown two-letter code) is `und`. Case and surrounding blanks are ignored.
pub fn normalize_language(tag: &str) -> String {
    let tag = tag.trim().to_ascii_lowercase();
    if !(2..=3).contains(&tag.len()) || !tag.bytes().all(|b| b.is_ascii_lowercase()) {
        return UND.into();
    }
    if tag.len() == 2 {
        let tag = DEPRECATED_639_1
            .iter()
            .find(|(old, _)| *old == tag)
            .map_or(tag.as_str(), |(_, new)| *new);
        return match ISO_639.iter().find(|(two, _)| *two == tag) {
            Some((two, _)) => (*two).into(),
            None => UND.into(),
        };
    }
    let terminological = ISO_639_2_B
        .iter()
        .find(|(b, _)| *b == tag)
        .map_or(tag.as_str(), |(_, t)| *t);
    match ISO_639.iter().find(|(_, three)| *three == terminological) {
        Some((two, _)) => (*two).into(),
        None => terminological.into(),
    }
}

/// Initialises FFmpeg once per process.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ff::init();
        ff::device::register_all();
        ff::log::set_level(ff::log::Level::Error);
    });
}

/// Opens a source and reports what it holds, without decoding it.
pub fn probe(source: &Source) -> Result<Probe, TranscodeError> {
    let ictx = open_input(source)?;
    let video = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(TranscodeError::NoVideo)?;
    let ctx = codec::context::Context::from_parameters(video.parameters())
        .map_err(|e| TranscodeError::Input(e.to_string()))?;
    let dec = ctx
        .decoder()
        .video()
        .map_err(|e| TranscodeError::Input(format!("video decoder: {e}")))?;
    if dec.width() == 0 || dec.height() == 0 {
        return Err(TranscodeError::Input("video has no size".into()));
    }
    let duration = (ictx.duration() > 0).then(|| ictx.duration() as f64 / 1_000_000.0);
    let has_audio = ictx.streams().best(media::Type::Audio).is_some();
    let audio_streams = ictx
        .streams()
        .filter(|s| s.parameters().medium() == media::Type::Audio)
        .count();
    Ok(Probe {
        duration,
        width: dec.width(),
        height: dec.height(),
        has_audio,
        audio_streams,
    })
}

/// Opens an audio file (an extra track sent with an upload) and checks that
/// it has a decodable audio stream; returns its duration, when known.
pub fn probe_audio(path: &Path) -> Result<Option<f64>, TranscodeError> {
    let ictx = open_input(&Source::File(path.to_path_buf()))?;
    let audio = ictx
        .streams()
        .best(media::Type::Audio)
        .ok_or_else(|| TranscodeError::Input("the file has no audio stream".into()))?;
    codec::context::Context::from_parameters(audio.parameters())
        .and_then(|c| c.decoder().audio())
        .map_err(|e| TranscodeError::Input(format!("audio decoder: {e}")))?;
    Ok((ictx.duration() > 0).then(|| ictx.duration() as f64 / 1_000_000.0))
}

/// The rungs actually made for a source of this height: every ladder rung at
/// or below it, or the source height alone when none is.
pub fn ladder_for(ladder: &[Rung], source_height: u32) -> Vec<Rung> {
    let mut rungs: Vec<Rung> = ladder
        .iter()
        .copied()
        .filter(|r| r.height <= source_height && r.height >= 16)
        .collect();
    rungs.sort_by_key(|r| std::cmp::Reverse(r.height));
    rungs.dedup_by_key(|r| r.height);
    if rungs.is_empty() {
        let kbps = ladder.iter().map(|r| r.kbps).min().unwrap_or(400);
        rungs.push(Rung {
            height: source_height & !1,
            kbps,
        });
    }
    rungs
}

/// Transcodes `spec.source` into mezzanine files in `spec.out_dir`.
/// `progress` is called with the fraction done, as far as it is known.
pub fn transcode(
    spec: &Spec,
    progress: &mut dyn FnMut(f64),
    cancel: &AtomicBool,
) -> Result<Outcome, TranscodeError> {
    let mut ictx = open_input(&spec.source)?;
    let total_secs = (ictx.duration() > 0)
        .then(|| ictx.duration() as f64 / 1_000_000.0)
        .or_else(|| match &spec.source {
            Source::Lavfi(graph) => lavfi_duration(graph),
            Source::File(_) => None,
        });
    // Opened before the long pass so that a missing or unreadable dub fails
    // the job at once; they are decoded after it.
    let extras = spec
        .extra_audio
        .iter()
        .map(open_extra_audio)
        .collect::<Result<Vec<_>, _>>()?;

    let vstream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(TranscodeError::NoVideo)?;
    let v_index = vstream.index();
    let v_tb = vstream.time_base();
    let v_rate = vstream.avg_frame_rate();
    let mut vdec = codec::context::Context::from_parameters(vstream.parameters())
        .map_err(|e| TranscodeError::Input(e.to_string()))?;
    vdec.set_threading(codec::threading::Config::kind(
        codec::threading::Type::Frame,
    ));
    let mut vdec = vdec
        .decoder()
        .video()
        .map_err(|e| TranscodeError::Input(format!("video decoder: {e}")))?;
    if vdec.width() == 0 || vdec.height() == 0 {
        return Err(TranscodeError::Input("video has no size".into()));
    }

    let main_audio = ictx.streams().best(media::Type::Audio).map(|s| s.index());
    let mut audios = Vec::new();
    for stream in ictx.streams() {
        if stream.parameters().medium() != media::Type::Audio {
            continue;
        }
        let language = normalize_language(stream.metadata().get("language").unwrap_or(""));
        let decoder = match open_audio_decoder(&stream) {
            Ok(decoder) => decoder,
            // The stream FFmpeg ranks first must work, as when it was the
            // only one taken; another that cannot be decoded is left out
            // rather than costing the title.
            Err(e) if Some(stream.index()) == main_audio => {
                return Err(TranscodeError::Input(format!(
                    "audio stream {}: {e}",
                    stream.index()
                )));
            }
            Err(e) => {
                tracing::warn!(stream = stream.index(), error = %e, "audio stream left out");
                continue;
            }
        };
        let out = open_audio_out(spec, format!("a{}", audios.len()), language, None)?;
        audios.push(SourceAudio {
            index: stream.index(),
            decoder,
            out,
        });
    }

    if let Some(target) = spec.loudness_lufs {
        let gain = loudness_gain(&spec.source, target)?;
        for a in &mut audios {
            a.out.gain = gain;
        }
    }

    let rate_known = v_rate.numerator() > 0 && v_rate.denominator() > 0;
    let fps = if rate_known {
        f64::from(v_rate.numerator()) / f64::from(v_rate.denominator())
    } else {
        30.0
    };
    // Encoders size their rate control from the frame rate, so they get one
    // even when the container does not say.
    let rate = if rate_known {
        v_rate
    } else {
        ff::Rational::new(30, 1)
    };
    let seg = f64::from(spec.segment_secs.max(1));
    let segment_frames = ((fps * seg - 1e-6).ceil() as u32).max(1);
    let long_gop = (fps * seg * 4.0).ceil() as u32;

    let rungs = if spec.fill_ladder {
        ladder_for(&spec.ladder, u32::MAX)
    } else {
        ladder_for(&spec.ladder, vdec.height())
    };
    let mut scalers = Vec::with_capacity(rungs.len());
    let mut sizes = Vec::with_capacity(rungs.len());
    for rung in &rungs {
        let (width, height) = rung_size(vdec.width(), vdec.height(), rung.height);
        scalers.push(
            software::scaling::Context::get(
                vdec.format(),
                vdec.width(),
                vdec.height(),
                format::Pixel::YUV420P,
                width,
                height,
                software::scaling::Flags::BICUBIC,
            )
            .map_err(|e| enc_err("scaler", e))?,
        );
        sizes.push((width, height));
    }
    let mut outs = Vec::new();
    for codec in [VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1] {
        if codec != VideoCodec::H264 && !spec.extra_codecs.contains(&codec) {
            continue;
        }
        let mut made = 0;
        for (i, (rung, &(width, height))) in rungs.iter().zip(&sizes).enumerate() {
            if codec == VideoCodec::Av1 && (width < SVT_AV1_MIN_SIZE || height < SVT_AV1_MIN_SIZE) {
                continue;
            }
            let setup = EncoderSetup {
                codec,
                width,
                height,
                tb: v_tb,
                rate,
                kbps: (u64::from(rung.kbps) * codec.bitrate_percent() / 100).max(1) as u32,
                gop: if codec == VideoCodec::Av1 {
                    segment_frames
                } else {
                    long_gop
                },
                segment_frames,
                preset: spec.preset.clone(),
            };
            let track = format!("{}{made}", codec.track_prefix());
            match spec.watermark {
                None => outs.push(open_video_out(&spec.out_dir, setup, track, i, fps, None)?),
                Some(_) => {
                    for v in [Variant::A, Variant::B] {
                        let out = open_video_out(
                            &spec.out_dir,
                            setup.clone(),
                            track.clone(),
                            i,
                            fps,
                            Some(v),
                        )?;
                        outs.push(out);
                    }
                }
            }
            made += 1;
        }
    }

    let mut video = VideoPipeline {
        scalers,
        outs,
        pattern: spec.watermark.map(|s| (Pattern::new(WATERMARK_SEED), s)),
        clock: VideoClock::default(),
        decoded: frame::Video::empty(),
        tb: v_tb,
        fps,
        seg,
    };
    let mut adecoded = frame::Audio::empty();
    for (stream, mut packet) in ictx.packets() {
        if cancel.load(Ordering::Relaxed) {
            return Err(TranscodeError::Cancelled);
        }
        if stream.index() == v_index {
            packet.rescale_ts(stream.time_base(), v_tb);
            vdec.send_packet(&packet)
                .map_err(|e| TranscodeError::Input(format!("decode video: {e}")))?;
            video.receive(&mut vdec)?;
            if let Some(total) = total_secs {
                progress((video.clock.last_secs / total).clamp(0.0, 0.99));
            }
        } else if let Some(audio) = audios.iter_mut().find(|a| a.index == stream.index()) {
            // A damaged audio packet costs a glitch, not the title.
            if audio.decoder.send_packet(&packet).is_ok() {
                while audio.decoder.receive_frame(&mut adecoded).is_ok() {
                    push_audio(&mut audio.out, &adecoded)?;
                }
            }
        }
    }
    vdec.send_eof()
        .map_err(|e| TranscodeError::Input(format!("decode video: {e}")))?;
    video.receive(&mut vdec)?;
    if video.clock.frame_count == 0 {
        return Err(TranscodeError::Input(
            "no video frames could be decoded".into(),
        ));
    }

    let mut files = Vec::new();
    for mut out in video.outs {
        out.encoder
            .send_eof()
            .map_err(|e| enc_err("flush video", e))?;
        drain_video(&mut out)?;
        if let Some(&due) = out.pending_keys.front() {
            return Err(missing_key(&out, due));
        }
        out.octx
            .write_trailer()
            .map_err(|e| enc_err("finish video file", e))?;
        files.push(Written {
            track: out.track,
            file: out.file,
            language: None,
            codec: Some(out.setup.codec),
            mark: out.mark,
        });
    }
    let next_audio = audios.len();
    for mut audio in audios {
        if audio.decoder.send_eof().is_ok() {
            while audio.decoder.receive_frame(&mut adecoded).is_ok() {
                push_audio(&mut audio.out, &adecoded)?;
            }
        }
        finish_audio(&mut audio.out)?;
        if audio.out.wrote_any {
            files.push(audio.out.written());
        }
    }

    let media_secs = video.clock.last_secs + 1.0 / fps;
    let limit = (media_secs * f64::from(AUDIO_RATE)).round() as i64;
    for (n, extra) in extras.into_iter().enumerate() {
        let track = format!("a{}", next_audio + n);
        files.push(transcode_extra_audio(spec, extra, track, limit, cancel)?);
    }
    progress(1.0);
    Ok(Outcome { files, media_secs })
}

/// The smallest width and height SVT-AV1 accepts.
const SVT_AV1_MIN_SIZE: u32 = 64;

/// `hvc1`: HEVC with every parameter set in the sample entry, which Apple
/// players require (they refuse the `hev1` the muxer picks by default).
const HVC1_TAG: u32 = u32::from_le_bytes(*b"hvc1");

const AUDIO_RATE: i32 = 48_000;
const AUDIO_FORMAT: format::Sample = format::Sample::F32(format::sample::Type::Planar);

const UND: &str = "und";

/// ISO 639-1 codes with their ISO 639-2/T equivalents.
#[rustfmt::skip]
const ISO_639: &[(&str, &str)] = &[
    ("aa", "aar"), ("ab", "abk"), ("ae", "ave"), ("af", "afr"), ("ak", "aka"),
    ("am", "amh"), ("an", "arg"), ("ar", "ara"), ("as", "asm"), ("av", "ava"),
    ("ay", "aym"), ("az", "aze"), ("ba", "bak"), ("be", "bel"), ("bg", "bul"),
    ("bi", "bis"), ("bm", "bam"), ("bn", "ben"), ("bo", "bod"), ("br", "bre"),
    ("bs", "bos"), ("ca", "cat"), ("ce", "che"), ("ch", "cha"), ("co", "cos"),
    ("cr", "cre"), ("cs", "ces"), ("cu", "chu"), ("cv", "chv"), ("cy", "cym"),
    ("da", "dan"), ("de", "deu"), ("dv", "div"), ("dz", "dzo"), ("ee", "ewe"),
    ("el", "ell"), ("en", "eng"), ("eo", "epo"), ("es", "spa"), ("et", "est"),
    ("eu", "eus"), ("fa", "fas"), ("ff", "ful"), ("fi", "fin"), ("fj", "fij"),
    ("fo", "fao"), ("fr", "fra"), ("fy", "fry"), ("ga", "gle"), ("gd", "gla"),
    ("gl", "glg"), ("gn", "grn"), ("gu", "guj"), ("gv", "glv"), ("ha", "hau"),
    ("he", "heb"), ("hi", "hin"), ("ho", "hmo"), ("hr", "hrv"), ("ht", "hat"),
    ("hu", "hun"), ("hy", "hye"), ("hz", "her"), ("ia", "ina"), ("id", "ind"),
    ("ie", "ile"), ("ig", "ibo"), ("ii", "iii"), ("ik", "ipk"), ("io", "ido"),
    ("is", "isl"), ("it", "ita"), ("iu", "iku"), ("ja", "jpn"), ("jv", "jav"),
    ("ka", "kat"), ("kg", "kon"), ("ki", "kik"), ("kj", "kua"), ("kk", "kaz"),
    ("kl", "kal"), ("km", "khm"), ("kn", "kan"), ("ko", "kor"), ("kr", "kau"),
    ("ks", "kas"), ("ku", "kur"), ("kv", "kom"), ("kw", "cor"), ("ky", "kir"),
    ("la", "lat"), ("lb", "ltz"), ("lg", "lug"), ("li", "lim"), ("ln", "lin"),
    ("lo", "lao"), ("lt", "lit"), ("lu", "lub"), ("lv", "lav"), ("mg", "mlg"),
    ("mh", "mah"), ("mi", "mri"), ("mk", "mkd"), ("ml", "mal"), ("mn", "mon"),
    ("mr", "mar"), ("ms", "msa"), ("mt", "mlt"), ("my", "mya"), ("na", "nau"),
    ("nb", "nob"), ("nd", "nde"), ("ne", "nep"), ("ng", "ndo"), ("nl", "nld"),
    ("nn", "nno"), ("no", "nor"), ("nr", "nbl"), ("nv", "nav"), ("ny", "nya"),
    ("oc", "oci"), ("oj", "oji"), ("om", "orm"), ("or", "ori"), ("os", "oss"),
    ("pa", "pan"), ("pi", "pli"), ("pl", "pol"), ("ps", "pus"), ("pt", "por"),
    ("qu", "que"), ("rm", "roh"), ("rn", "run"), ("ro", "ron"), ("ru", "rus"),
    ("rw", "kin"), ("sa", "san"), ("sc", "srd"), ("sd", "snd"), ("se", "sme"),
    ("sg", "sag"), ("si", "sin"), ("sk", "slk"), ("sl", "slv"), ("sm", "smo"),
    ("sn", "sna"), ("so", "som"), ("sq", "sqi"), ("sr", "srp"), ("ss", "ssw"),
    ("st", "sot"), ("su", "sun"), ("sv", "swe"), ("sw", "swa"), ("ta", "tam"),
    ("te", "tel"), ("tg", "tgk"), ("th", "tha"), ("ti", "tir"), ("tk", "tuk"),
    ("tl", "tgl"), ("tn", "tsn"), ("to", "ton"), ("tr", "tur"), ("ts", "tso"),
    ("tt", "tat"), ("tw", "twi"), ("ty", "tah"), ("ug", "uig"), ("uk", "ukr"),
    ("ur", "urd"), ("uz", "uzb"), ("ve", "ven"), ("vi", "vie"), ("vo", "vol"),
    ("wa", "wln"), ("wo", "wol"), ("xh", "xho"), ("yi", "yid"), ("yo", "yor"),
    ("za", "zha"), ("zh", "zho"), ("zu", "zul"),
];

/// ISO 639-2/B codes (which MP4 and Matroska files often carry) with their
/// ISO 639-2/T equivalents.
#[rustfmt::skip]
const ISO_639_2_B: &[(&str, &str)] = &[
    ("alb", "sqi"), ("arm", "hye"), ("baq", "eus"), ("bur", "mya"), ("chi", "zho"),
    ("cze", "ces"), ("dut", "nld"), ("fre", "fra"), ("geo", "kat"), ("ger", "deu"),
    ("gre", "ell"), ("ice", "isl"), ("mac", "mkd"), ("mao", "mri"), ("may", "msa"),
    ("per", "fas"), ("rum", "ron"), ("slo", "slk"), ("tib", "bod"), ("wel", "cym"),
];

/// Withdrawn ISO 639-1 codes still found in old files.
const DEPRECATED_639_1: &[(&str, &str)] = &[("iw", "he"), ("in", "id"), ("ji", "yi")];

/// x264's presets, fastest first; x265 takes the same names.
#[rustfmt::skip]
const X264_PRESETS: [&str; 10] = [
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
    "veryslow", "placebo",
];

fn enc_err(what: &str, e: ff::Error) -> TranscodeError {
    TranscodeError::Encode(format!("{what}: {e}"))
}

/// The ISO 639-2/T code the MP4 `mdhd` box stores for a tag made by
/// [`normalize_language`]; the muxer drops anything but three letters.
fn mdhd_language(tag: &str) -> &str {
    match tag.len() {
        2 => ISO_639
            .iter()
            .find(|(two, _)| *two == tag)
            .map_or(UND, |(_, three)| *three),
        3 => tag,
        _ => UND,
    }
}

/// The x265 preset for an x264 one: two steps faster, because x265 spends
/// several times x264's CPU at the same preset name.
fn x265_preset(x264: &str) -> &str {
    match X264_PRESETS.iter().position(|p| *p == x264) {
        Some(i) => X264_PRESETS[i.saturating_sub(2)],
        None => x264,
    }
}

/// The SVT-AV1 preset for an x264 one; all of them among SVT-AV1's fastest
/// (13 is the fastest there is), as AV1 is the costliest encode here.
fn svt_av1_preset(x264: &str) -> &'static str {
    match x264 {
        "ultrafast" | "superfast" => "12",
        "veryfast" | "faster" => "11",
        _ => "10",
    }
}

fn open_input(source: &Source) -> Result<format::context::Input, TranscodeError> {
    init();
    match source {
        Source::File(path) => open_file(path).map_err(TranscodeError::Input),
        Source::Lavfi(graph) => {
            let lavfi = ff::device::input::video()
                .find(|f| f.name() == "lavfi")
                .ok_or_else(|| TranscodeError::Input("FFmpeg has no lavfi device".into()))?;
            match format::open(graph.as_str(), &lavfi) {
                Ok(ctx) => Ok(ctx.input()),
                Err(e) => Err(TranscodeError::Input(e.to_string())),
            }
        }
    }
}

fn open_file(path: &Path) -> Result<format::context::Input, String> {
    init();
    let path = path
        .to_str()
        .ok_or_else(|| "path is not UTF-8".to_string())?;
    format::input(&path).map_err(|e| e.to_string())
}

fn open_audio_decoder(stream: &ff::Stream<'_>) -> Result<decoder::Audio, String> {
    let ctx =
        codec::context::Context::from_parameters(stream.parameters()).map_err(|e| e.to_string())?;
    ctx.decoder()
        .audio()
        .map_err(|e| format!("audio decoder: {e}"))
}

/// A filter graph source has no container duration; its `d=` options say
/// how long it runs, which is enough for a progress bar.
fn lavfi_duration(graph: &str) -> Option<f64> {
    graph
        .split([':', '=', ';', '['])
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "d" || w[0] == "duration")
        .filter_map(|w| w[1].parse::<f64>().ok())
        .fold(None, |acc: Option<f64>, d| {
            Some(acc.map_or(d, |a| a.max(d)))
        })
}

/// Width and height of a rung: even, at least 2, the source's aspect ratio.
fn rung_size(source_width: u32, source_height: u32, rung_height: u32) -> (u32, u32) {
    let height = rung_height & !1;
    let width = ((u64::from(source_width) * u64::from(height) / u64::from(source_height.max(1)))
        as u32
        + 1)
        & !1;
    (width.max(2), height.max(2))
}

/// Everything a video encoder is opened with; kept so that an AV1 encoder
/// can be opened again with the same settings.
#[derive(Debug, Clone)]
struct EncoderSetup {
    codec: VideoCodec,
    width: u32,
    height: u32,
    tb: ff::Rational,
    rate: ff::Rational,
    /// Target bitrate, already this codec's share of the rung's.
    kbps: u32,
    /// Longest run of frames the encoder may go without a keyframe of its own.
    gop: u32,
    /// Frames in one segment, rounded up.
    segment_frames: u32,
    /// The x264 preset of the spec.
    preset: String,
}

struct VideoOut {
    setup: EncoderSetup,
    /// Index of the scaler (the rung) feeding this output.
    rung: usize,
    encoder: encoder::Video,
    octx: format::context::Output,
    enc_tb: ff::Rational,
    stream_tb: ff::Rational,
    /// One frame's duration in `enc_tb`, for packets the encoder leaves without one.
    frame_ticks: i64,
    /// Timestamps (in `enc_tb`) of segment starts sent but not yet out of
    /// the encoder; a fragment is cut at each, and only there.
    pending_keys: VecDeque<i64>,
    /// Frames sent to the current encoder; AV1 uses it to know where its
    /// fixed GOP puts keyframes.
    frames_in_encoder: u64,
    wrote_any: bool,
    track: String,
    file: String,
    /// The watermark variant this output carries, if any.
    mark: Option<Variant>,
}

/// The decoded pictures' way to the encoders: one scaler per rung, shared by
/// every codec's encoder of that rung.
struct VideoPipeline {
    scalers: Vec<software::scaling::Context>,
    outs: Vec<VideoOut>,
    /// The watermark and its strength, when the outputs carry one.
    pattern: Option<(Pattern, u8)>,
    clock: VideoClock,
    decoded: frame::Video,
    tb: ff::Rational,
    fps: f64,
    seg: f64,
}

/// Where the video is in time: the source's first timestamp (output starts
/// at zero), the next forced keyframe, frames seen, the last frame's time.
#[derive(Default)]
struct VideoClock {
    first_pts: Option<i64>,
    next_key: f64,
    frame_count: i64,
    last_secs: f64,
}

struct AudioOut {
    encoder: encoder::Audio,
    /// Made from the first decoded frame, and made again if the input's
    /// format, layout or rate changes midway.
    resampler: Option<software::resampling::Context>,
    octx: format::context::Output,
    stream_tb: ff::Rational,
    fifo: [Vec<f32>; 2],
    samples_out: i64,
    frame_size: usize,
    next_cut: i64,
    cut_every: i64,
    /// The first packet's time: zero of the file's timeline.
    first_pts: Option<i64>,
    /// Samples taken into the FIFO so far.
    samples_in: i64,
    /// The most samples this track may take (extra audio stops with the video).
    limit: Option<i64>,
    wrote_any: bool,
    track: String,
    file: String,
    /// BCP 47 tag.
    language: String,
    /// Applied to every sample (loudness normalisation); 1 for none.
    gain: f32,
}

/// An audio stream of the source and the track it becomes.
struct SourceAudio {
    index: usize,
    decoder: decoder::Audio,
    out: AudioOut,
}

/// An extra audio file, opened and checked, waiting for its pass.
struct ExtraInput {
    ictx: format::context::Input,
    index: usize,
    decoder: decoder::Audio,
    /// The language as the spec gave it, for messages.
    given: String,
    /// BCP 47 tag.
    language: String,
}

impl VideoClock {
    /// Places a decoded picture on the output timeline: its timestamp from
    /// zero, in the stream's time base, and whether a segment starts with it.
    fn place(
        &mut self,
        decoded: &frame::Video,
        tb: ff::Rational,
        fps: f64,
        seg: f64,
    ) -> Result<(i64, bool), TranscodeError> {
        let tb_secs = f64::from(tb.numerator()) / f64::from(tb.denominator());
        let raw = decoded.timestamp().or(decoded.pts());
        let pts = match (raw, self.first_pts) {
            (Some(p), None) => {
                self.first_pts = Some(p);
                0
            }
            (Some(p), Some(f)) => p
                .checked_sub(f)
                .ok_or_else(|| TranscodeError::Input("video timestamps out of range".into()))?,
            // No timestamp: derive one from the frame count.
            (None, _) => ((self.frame_count as f64) / fps / tb_secs).round() as i64,
        };
        self.frame_count += 1;
        let secs = pts as f64 * tb_secs;
        self.last_secs = secs;
        let key = secs + 1e-6 >= self.next_key;
        if key {
            while self.next_key <= secs + 1e-6 {
                self.next_key += seg;
            }
        }
        Ok((pts, key))
    }
}

impl VideoPipeline {
    /// Takes every picture the decoder has ready to every encoder.
    fn receive(&mut self, dec: &mut decoder::Video) -> Result<(), TranscodeError> {
        while dec.receive_frame(&mut self.decoded).is_ok() {
            let (pts, key) = self
                .clock
                .place(&self.decoded, self.tb, self.fps, self.seg)?;
            for (rung, scaler) in self.scalers.iter_mut().enumerate() {
                let mut scaled = frame::Video::empty();
                scaler
                    .run(&self.decoded, &mut scaled)
                    .map_err(|e| enc_err("scale", e))?;
                scaled.set_pts(Some(pts));
                scaled.set_kind(if key {
                    picture::Type::I
                } else {
                    picture::Type::None
                });
                for out in self.outs.iter_mut().filter(|o| o.rung == rung) {
                    match (out.mark, &self.pattern) {
                        (Some(v), Some((pattern, strength))) => {
                            let marked = marked_copy(&scaled, pattern, v, *strength)?;
                            send_video(out, &marked, pts, key)?;
                        }
                        _ => send_video(out, &scaled, pts, key)?,
                    }
                }
            }
        }
        Ok(())
    }
}

impl AudioOut {
    fn is_full(&self) -> bool {
        self.limit.is_some_and(|limit| self.samples_in >= limit)
    }

    fn written(&self) -> Written {
        Written {
            track: self.track.clone(),
            file: self.file.clone(),
            language: Some(self.language.clone()),
            codec: None,
            mark: None,
        }
    }
}

/// A deep copy of a scaled picture with the watermark's variant `v` in its
/// luma. A copy, not the picture itself: the encoder may keep a reference
/// to what it was sent, and the other variant and codecs take the same
/// picture.
fn marked_copy(
    scaled: &frame::Video,
    pattern: &Pattern,
    v: Variant,
    strength: u8,
) -> Result<frame::Video, TranscodeError> {
    let (w, h) = (scaled.width(), scaled.height());
    let mut out = frame::Video::new(format::Pixel::YUV420P, w, h);
    for plane in 0..3 {
        let rows = if plane == 0 { h } else { h.div_ceil(2) } as usize;
        let width = if plane == 0 { w } else { w.div_ceil(2) } as usize;
        let (src_stride, dst_stride) = (scaled.stride(plane), out.stride(plane));
        let src = scaled.data(plane);
        let dst = out.data_mut(plane);
        for y in 0..rows {
            let (Some(from), Some(to)) = (
                src.get(y * src_stride..y * src_stride + width),
                dst.get_mut(y * dst_stride..y * dst_stride + width),
            ) else {
                return Err(TranscodeError::Encode(
                    "watermark: picture planes too small".into(),
                ));
            };
            to.copy_from_slice(from);
        }
    }
    let stride = out.stride(0);
    pattern.embed(out.data_mut(0), w as usize, h as usize, stride, v, strength);
    out.set_pts(scaled.pts());
    out.set_kind(scaled.kind());
    Ok(out)
}

/// Opens the encoder a setup describes. libx264 and libx265 code a picture
/// marked `I` as an IDR picture starting a closed GOP, and make no keyframe
/// of their own within a segment; SVT-AV1 makes a keyframe every `gop`
/// pictures and nowhere else.
fn open_video_encoder(s: &EncoderSetup) -> Result<(encoder::Video, ff::Codec), TranscodeError> {
    let name = s.codec.encoder_name();
    let codec = encoder::find_by_name(name)
        .ok_or_else(|| TranscodeError::Encode(format!("FFmpeg was built without {name}")))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| enc_err("video encoder", e))?;
    enc.set_width(s.width);
    enc.set_height(s.height);
    // 8-bit 4:2:0 for every codec: what every decoder plays.
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(s.tb);
    enc.set_frame_rate(Some(s.rate));
    enc.set_bit_rate(s.kbps as usize * 1000);
    // No B-frames: presentation order equals decode order, so a fragment's
    // decode time is its presentation time in every packaging format.
    // (SVT-AV1 still reorders, but its hidden frames travel inside temporal
    // units, so its packets keep pts == dts too.)
    enc.set_max_b_frames(0);
    enc.set_gop(s.gop);
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    let mut opts = ff::Dictionary::new();
    match s.codec {
        VideoCodec::H264 => {
            enc.set_max_bit_rate(s.kbps as usize * 1500);
            opts.set("preset", &s.preset);
            opts.set("forced-idr", "1");
            opts.set(
                "x264-params",
                &format!(
                    "scenecut=0:open-gop=0:vbv-maxrate={}:vbv-bufsize={}",
                    s.kbps * 3 / 2,
                    s.kbps * 2
                ),
            );
        }
        VideoCodec::Hevc => {
            opts.set("preset", x265_preset(&s.preset));
            // Without it x265 codes a forced picture as a CRA, which is
            // flagged as a keyframe but leaves the GOP open.
            opts.set("forced-idr", "1");
            opts.set(
                "x265-params",
                &format!(
                    "log-level=error:scenecut=0:open-gop=0:bframes=0:keyint={}:min-keyint={}:\
                     vbv-maxrate={}:vbv-bufsize={}",
                    s.gop,
                    s.segment_frames.min(s.gop),
                    s.kbps * 3 / 2,
                    s.kbps * 2
                ),
            );
        }
        VideoCodec::Av1 => {
            // With FFmpeg 5.1 and SVT-AV1 1.4 a picture marked I does not
            // become a keyframe (tried: only the first picture is one), so
            // keyframes come from the GOP alone: `gop` is one segment, the
            // refresh is a closed key frame (type 2, not a forward one) and
            // scene detection adds none. `send_video` opens a new encoder
            // where a segment starts off that grid. Only the target rate is
            // set (SVT-AV1's VBR); there is no VBV-style peak cap here.
            opts.set("preset", svt_av1_preset(&s.preset));
            opts.set("svtav1-params", "irefresh-type=2:scd=0");
        }
    }
    let encoder = enc
        .open_as_with(codec, opts)
        .map_err(|e| enc_err(&format!("open {name}"), e))?;
    Ok((encoder, codec))
}

fn open_video_out(
    out_dir: &Path,
    setup: EncoderSetup,
    track: String,
    rung: usize,
    fps: f64,
    mark: Option<Variant>,
) -> Result<VideoOut, TranscodeError> {
    let file = match mark {
        Some(Variant::B) => format!("{track}-b.mp4"),
        _ => format!("{track}.mp4"),
    };
    let mut octx = output_file(&out_dir.join(&file))?;
    let (encoder, codec) = open_video_encoder(&setup)?;
    let tb = setup.tb;
    let mut stream = octx
        .add_stream(codec)
        .map_err(|e| enc_err("add stream", e))?;
    stream.set_parameters(&encoder);
    stream.set_time_base(tb);
    if setup.codec == VideoCodec::Hevc {
        // SAFETY: `stream` was just added to `octx`, which owns it and its
        // `codecpar`; the header is not written yet, so the muxer reads the
        // tag when it is.
        unsafe {
            (*(*stream.as_mut_ptr()).codecpar).codec_tag = HVC1_TAG;
        }
    }
    write_header(&mut octx)?;
    let stream_tb = octx
        .stream(0)
        .map(|s| s.time_base())
        .ok_or_else(|| TranscodeError::Encode("muxer lost its stream".into()))?;
    Ok(VideoOut {
        setup,
        rung,
        encoder,
        octx,
        enc_tb: tb,
        stream_tb,
        frame_ticks:
            ((f64::from(tb.denominator()) / f64::from(tb.numerator().max(1)) / fps).round() as i64)
                .max(1),
        pending_keys: VecDeque::new(),
        frames_in_encoder: 0,
        wrote_any: false,
        track,
        file,
        mark,
    })
}

fn open_audio_out(
    spec: &Spec,
    track: String,
    language: String,
    limit: Option<i64>,
) -> Result<AudioOut, TranscodeError> {
    let file = format!("{track}.mp4");
    let mut octx = output_file(&spec.out_dir.join(&file))?;
    let codec = encoder::find(codec::Id::AAC)
        .ok_or_else(|| TranscodeError::Encode("FFmpeg has no AAC encoder".into()))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .map_err(|e| enc_err("audio encoder", e))?;
    enc.set_rate(AUDIO_RATE);
    enc.set_channel_layout(ChannelLayout::STEREO);
    enc.set_channels(2);
    enc.set_format(AUDIO_FORMAT);
    enc.set_bit_rate(128_000);
    enc.set_time_base((1, AUDIO_RATE));
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    let encoder = enc.open_as(codec).map_err(|e| enc_err("open AAC", e))?;
    let mut stream = octx
        .add_stream(codec)
        .map_err(|e| enc_err("add stream", e))?;
    stream.set_parameters(&encoder);
    stream.set_time_base((1, AUDIO_RATE));
    let mut metadata = ff::Dictionary::new();
    metadata.set("language", mdhd_language(&language));
    stream.set_metadata(metadata);
    write_header(&mut octx)?;
    let stream_tb = octx
        .stream(0)
        .map(|s| s.time_base())
        .ok_or_else(|| TranscodeError::Encode("muxer lost its stream".into()))?;
    let frame_size = (encoder.frame_size() as usize).max(1);
    let cut_every = i64::from(spec.segment_secs.max(1)) * i64::from(AUDIO_RATE);
    Ok(AudioOut {
        encoder,
        resampler: None,
        octx,
        stream_tb,
        fifo: [Vec::new(), Vec::new()],
        samples_out: 0,
        frame_size,
        next_cut: cut_every,
        cut_every,
        first_pts: None,
        samples_in: 0,
        limit,
        wrote_any: false,
        track,
        file,
        language,
        gain: 1.0,
    })
}

/// Opens an extra audio file and its best audio stream's decoder; errors
/// name the language so the uploader knows which file is at fault.
fn open_extra_audio(extra: &ExtraAudio) -> Result<ExtraInput, TranscodeError> {
    let fail = |why: String| {
        TranscodeError::Input(format!(
            "the audio file for language {:?}: {why}",
            extra.language
        ))
    };
    let ictx = open_file(&extra.path).map_err(fail)?;
    let (index, decoder) = {
        let stream = ictx
            .streams()
            .best(media::Type::Audio)
            .ok_or_else(|| fail("it has no audio stream".into()))?;
        (stream.index(), open_audio_decoder(&stream).map_err(fail)?)
    };
    Ok(ExtraInput {
        ictx,
        index,
        decoder,
        given: extra.language.clone(),
        language: normalize_language(&extra.language),
    })
}

/// Decodes an extra audio file into track `track`, from its first sample,
/// for at most `limit` samples at 48 kHz.
fn transcode_extra_audio(
    spec: &Spec,
    mut input: ExtraInput,
    track: String,
    limit: i64,
    cancel: &AtomicBool,
) -> Result<Written, TranscodeError> {
    let mut out = open_audio_out(spec, track, input.language.clone(), Some(limit))?;
    let mut decoded = frame::Audio::empty();
    for (stream, packet) in input.ictx.packets() {
        if cancel.load(Ordering::Relaxed) {
            return Err(TranscodeError::Cancelled);
        }
        if stream.index() != input.index {
            continue;
        }
        // A damaged audio packet costs a glitch, not the title.
        if input.decoder.send_packet(&packet).is_ok() {
            while input.decoder.receive_frame(&mut decoded).is_ok() {
                push_audio(&mut out, &decoded)?;
            }
        }
        if out.is_full() {
            break;
        }
    }
    if !out.is_full() && input.decoder.send_eof().is_ok() {
        while input.decoder.receive_frame(&mut decoded).is_ok() {
            push_audio(&mut out, &decoded)?;
        }
    }
    finish_audio(&mut out)?;
    if !out.wrote_any {
        return Err(TranscodeError::Input(format!(
            "the audio file for language {:?}: no sound could be decoded",
            input.given
        )));
    }
    Ok(out.written())
}

fn output_file(path: &Path) -> Result<format::context::Output, TranscodeError> {
    let path = path
        .to_str()
        .ok_or_else(|| TranscodeError::Encode("output path is not UTF-8".into()))?;
    format::output_as(&path, "mp4").map_err(|e| enc_err("create output", e))
}

/// Fragmented MP4, one fragment per `flush_fragment` call, each `moof`
/// carrying its own base offset so a fragment stands alone as a segment.
/// No `mfra` trailer: the asset manifest indexes fragments, and FFmpeg 5.1's
/// `av_write_trailer` returns the `mfra` size, which the bindings read as an error.
fn write_header(octx: &mut format::context::Output) -> Result<(), TranscodeError> {
    let mut opts = ff::Dictionary::new();
    opts.set(
        "movflags",
        "+frag_custom+empty_moov+default_base_moof+skip_trailer",
    );
    octx.write_header_with(opts)
        .map_err(|e| enc_err("write header", e))?;
    Ok(())
}

/// Closes the current fragment. FFmpeg's mp4 muxer does this when handed a
/// null packet in `frag_custom` mode; ffmpeg-next has no safe call for it.
fn flush_fragment(octx: &mut format::context::Output) -> Result<(), TranscodeError> {
    // SAFETY: `octx` is a valid, open output context whose header is written;
    // a null packet is the documented way to flush the muxer's buffered data.
    let ret = unsafe { ff::ffi::av_write_frame(octx.as_mut_ptr(), std::ptr::null_mut()) };
    if ret < 0 {
        return Err(enc_err("flush fragment", ff::Error::from(ret)));
    }
    Ok(())
}

fn send_video(
    out: &mut VideoOut,
    scaled: &frame::Video,
    pts: i64,
    key: bool,
) -> Result<(), TranscodeError> {
    if key {
        // SVT-AV1 makes a keyframe every `gop` frames and nowhere else. When a
        // segment starts elsewhere (29.97 fps makes 59- and 60-frame
        // segments), a new encoder starts there instead: its first picture is
        // a keyframe with the same sequence header.
        if out.setup.codec == VideoCodec::Av1
            && !out
                .frames_in_encoder
                .is_multiple_of(u64::from(out.setup.gop.max(1)))
        {
            restart_encoder(out)?;
        }
        out.pending_keys.push_back(pts);
    }
    out.encoder
        .send_frame(scaled)
        .map_err(|e| enc_err("encode video", e))?;
    out.frames_in_encoder += 1;
    drain_video(out)
}

/// Finishes the current encoder, writing all it holds, and opens a new one
/// with the same settings.
fn restart_encoder(out: &mut VideoOut) -> Result<(), TranscodeError> {
    out.encoder
        .send_eof()
        .map_err(|e| enc_err("flush video", e))?;
    drain_video(out)?;
    out.encoder = open_video_encoder(&out.setup)?.0;
    out.frames_in_encoder = 0;
    Ok(())
}

fn drain_video(out: &mut VideoOut) -> Result<(), TranscodeError> {
    let mut packet = ff::Packet::empty();
    while out.encoder.receive_packet(&mut packet).is_ok() {
        // Encoders keep input order (no B-frames), so segment starts leave
        // in the order they went in, and every packet before one has an
        // earlier timestamp. A keyframe of the encoder's own (SVT-AV1 at the
        // end of a long segment) stays inside its fragment.
        if let (Some(pts), Some(&due)) = (packet.pts(), out.pending_keys.front()) {
            if pts >= due {
                if pts != due || !packet.is_key() {
                    return Err(missing_key(out, due));
                }
                out.pending_keys.pop_front();
                if out.wrote_any {
                    flush_fragment(&mut out.octx)?;
                }
            }
        }
        packet.set_stream(0);
        if packet.duration() <= 0 {
            packet.set_duration(out.frame_ticks);
        }
        packet.rescale_ts(out.enc_tb, out.stream_tb);
        packet
            .write(&mut out.octx)
            .map_err(|e| enc_err("write video", e))?;
        out.wrote_any = true;
    }
    Ok(())
}

fn missing_key(out: &VideoOut, due: i64) -> TranscodeError {
    let secs = due as f64 * f64::from(out.enc_tb.numerator()) / f64::from(out.enc_tb.denominator());
    TranscodeError::Encode(format!(
        "{} made no keyframe at the segment start at {secs:.3} s",
        out.setup.codec.encoder_name()
    ))
}

fn push_audio(out: &mut AudioOut, input: &frame::Audio) -> Result<(), TranscodeError> {
    if input.samples() == 0
        || input.rate() == 0
        || input.format() == format::Sample::None
        || out.is_full()
    {
        return Ok(());
    }
    let layout = if input.channel_layout().is_empty() {
        ChannelLayout::default(i32::from(input.channels().max(1)))
    } else {
        input.channel_layout()
    };
    let mut resampler = match out.resampler.take() {
        Some(r)
            if r.input().format == input.format()
                && r.input().channel_layout == layout
                && r.input().rate == input.rate() =>
        {
            r
        }
        stale => {
            // The input changed midway (or this is the first frame): keep
            // what the old resampler holds, then start a new one.
            if let Some(mut old) = stale {
                drain_resampler(out, &mut old);
            }
            software::resampling::Context::get(
                input.format(),
                layout,
                input.rate(),
                AUDIO_FORMAT,
                ChannelLayout::STEREO,
                AUDIO_RATE as u32,
            )
            .map_err(|e| enc_err("resampler", e))?
        }
    };
    // Room for everything this call can produce: with less, the resampler
    // keeps the rest, and when upsampling that backlog grows all the way to
    // the end of the title.
    let room = resampled_capacity(&mut resampler, input.samples()).max(input.samples());
    let mut resampled = frame::Audio::new(AUDIO_FORMAT, room, ChannelLayout::STEREO);
    let ran = resampler.run(input, &mut resampled);
    out.resampler = Some(resampler);
    ran.map_err(|e| enc_err("resample", e))?;
    append_planes(out, &resampled);
    encode_full_frames(out, false)
}

/// The gain that brings `source`'s main audio stream to `target` LUFS
/// (integrated, EBU R128, measured with the `ebur128` crate over the whole
/// stream as 48 kHz stereo), lowered so no sample passes -1 dBFS and kept
/// within ±30 dB; 1 for a source that is silent or has no audio.
fn loudness_gain(source: &Source, target: f64) -> Result<f32, TranscodeError> {
    let mut ictx = open_input(source)?;
    let Some(stream) = ictx.streams().best(media::Type::Audio) else {
        return Ok(1.0);
    };
    let index = stream.index();
    let mut decoder = open_audio_decoder(&stream).map_err(TranscodeError::Input)?;
    let mut meter = ebur128::EbuR128::new(
        2,
        AUDIO_RATE as u32,
        ebur128::Mode::I | ebur128::Mode::SAMPLE_PEAK,
    )
    .map_err(|e| TranscodeError::Input(format!("loudness meter: {e}")))?;
    let mut resampler: Option<software::resampling::Context> = None;
    let mut decoded = frame::Audio::empty();
    let mut measure = |decoder: &mut decoder::Audio,
                       resampler: &mut Option<software::resampling::Context>,
                       meter: &mut ebur128::EbuR128|
     -> Result<(), TranscodeError> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            if decoded.samples() == 0 || decoded.rate() == 0 {
                continue;
            }
            let layout = if decoded.channel_layout().is_empty() {
                ChannelLayout::default(i32::from(decoded.channels().max(1)))
            } else {
                decoded.channel_layout()
            };
            let r = match resampler {
                Some(r)
                    if r.input().format == decoded.format()
                        && r.input().channel_layout == layout
                        && r.input().rate == decoded.rate() =>
                {
                    r
                }
                _ => resampler.insert(
                    software::resampling::Context::get(
                        decoded.format(),
                        layout,
                        decoded.rate(),
                        AUDIO_FORMAT,
                        ChannelLayout::STEREO,
                        AUDIO_RATE as u32,
                    )
                    .map_err(|e| enc_err("resampler", e))?,
                ),
            };
            let room = resampled_capacity(r, decoded.samples()).max(decoded.samples());
            let mut out = frame::Audio::new(AUDIO_FORMAT, room, ChannelLayout::STEREO);
            r.run(&decoded, &mut out)
                .map_err(|e| enc_err("resample", e))?;
            let n = out.samples();
            if n == 0 || out.planes() < 2 {
                continue;
            }
            let (left, right): (&[f32], &[f32]) = (out.plane(0), out.plane(1));
            meter
                .add_frames_planar_f32(&[&left[..n.min(left.len())], &right[..n.min(right.len())]])
                .map_err(|e| TranscodeError::Input(format!("loudness meter: {e}")))?;
        }
        Ok(())
    };
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            continue;
        }
        measure(&mut decoder, &mut resampler, &mut meter)?;
    }
    let _ = decoder.send_eof();
    measure(&mut decoder, &mut resampler, &mut meter)?;
    let loudness = meter.loudness_global().unwrap_or(f64::NEG_INFINITY);
    if !loudness.is_finite() {
        return Ok(1.0);
    }
    let peak = (0..2)
        .filter_map(|ch| meter.sample_peak(ch).ok())
        .fold(0.0f64, f64::max);
    let mut gain_db = (target - loudness).clamp(-30.0, 30.0);
    if peak > 0.0 {
        gain_db = gain_db.min(-1.0 - 20.0 * peak.log10());
    }
    tracing::info!(
        loudness,
        target,
        gain_db,
        "normalising a creative's loudness"
    );
    Ok(10f64.powf(gain_db / 20.0) as f32)
}

/// An upper bound on the samples the next conversion of `in_samples` gives.
fn resampled_capacity(resampler: &mut software::resampling::Context, in_samples: usize) -> usize {
    let in_samples = i32::try_from(in_samples).unwrap_or(i32::MAX);
    // SAFETY: the context was initialised by `Context::get`; this only reads
    // its state.
    let bound = unsafe { ff::ffi::swr_get_out_samples(resampler.as_mut_ptr(), in_samples) };
    usize::try_from(bound).unwrap_or(0)
}

/// Moves what a resampler still holds into the FIFO.
fn drain_resampler(out: &mut AudioOut, resampler: &mut software::resampling::Context) {
    let held = resampled_capacity(resampler, 0);
    if held == 0 {
        return;
    }
    let mut tail = frame::Audio::new(AUDIO_FORMAT, held, ChannelLayout::STEREO);
    if resampler.flush(&mut tail).is_ok() {
        append_planes(out, &tail);
    }
}

fn append_planes(out: &mut AudioOut, f: &frame::Audio) {
    let mut n = f.samples();
    if let Some(limit) = out.limit {
        n = n.min(usize::try_from(limit.saturating_sub(out.samples_in)).unwrap_or(0));
    }
    if n == 0 || f.planes() < 2 {
        return;
    }
    for ch in 0..2 {
        let plane: &[f32] = f.plane(ch);
        let plane = &plane[..n.min(plane.len())];
        if out.gain == 1.0 {
            out.fifo[ch].extend_from_slice(plane);
        } else {
            let gain = out.gain;
            out.fifo[ch].extend(plane.iter().map(|x| x * gain));
        }
    }
    out.samples_in += n as i64;
}

fn encode_full_frames(out: &mut AudioOut, flush: bool) -> Result<(), TranscodeError> {
    loop {
        let have = out.fifo[0].len();
        if have == 0 || (have < out.frame_size && !flush) {
            break;
        }
        let n = have.min(out.frame_size);
        let mut f = frame::Audio::new(AUDIO_FORMAT, out.frame_size, ChannelLayout::STEREO);
        f.set_rate(AUDIO_RATE as u32);
        for ch in 0..2 {
            let plane: &mut [f32] = f.plane_mut(ch);
            plane[..n].copy_from_slice(&out.fifo[ch][..n]);
            plane[n..].fill(0.0);
            out.fifo[ch].drain(..n);
        }
        f.set_pts(Some(out.samples_out));
        out.samples_out += out.frame_size as i64;
        out.encoder
            .send_frame(&f)
            .map_err(|e| enc_err("encode audio", e))?;
        drain_audio(out)?;
    }
    Ok(())
}

fn drain_audio(out: &mut AudioOut) -> Result<(), TranscodeError> {
    let mut packet = ff::Packet::empty();
    while out.encoder.receive_packet(&mut packet).is_ok() {
        let pts = packet.pts().unwrap_or(0);
        // The file's timeline starts at the first packet (the encoder's
        // priming makes that -1024), and a fragment starts at the frame
        // nearest each cut: within half a frame of the video's boundary.
        let first = *out.first_pts.get_or_insert(pts);
        let at = pts - first + out.frame_size as i64 / 2;
        if out.wrote_any && at >= out.next_cut {
            flush_fragment(&mut out.octx)?;
            while out.next_cut <= at {
                out.next_cut += out.cut_every;
            }
        }
        packet.set_stream(0);
        if packet.duration() <= 0 {
            packet.set_duration(out.frame_size as i64);
        }
        packet.rescale_ts((1, AUDIO_RATE), out.stream_tb);
        packet
            .write(&mut out.octx)
            .map_err(|e| enc_err("write audio", e))?;
        out.wrote_any = true;
    }
    Ok(())
}

fn finish_audio(out: &mut AudioOut) -> Result<(), TranscodeError> {
    if let Some(mut resampler) = out.resampler.take() {
        drain_resampler(out, &mut resampler);
    }
    encode_full_frames(out, true)?;
    out.encoder
        .send_eof()
        .map_err(|e| enc_err("flush audio", e))?;
    drain_audio(out)?;
    out.octx
        .write_trailer()
        .map_err(|e| enc_err("finish audio file", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lavfi_durations() {
        assert_eq!(
            lavfi_duration("testsrc2=s=320x180:d=4[out0];sine=f=440:d=6[out1]"),
            Some(6.0)
        );
        assert_eq!(lavfi_duration("testsrc2=s=320x180"), None);
    }

    #[test]
    fn ladder_is_capped_at_source() {
        let l = ladder_for(&DEFAULT_LADDER, 720);
        assert_eq!(
            l.iter().map(|r| r.height).collect::<Vec<_>>(),
            vec![720, 480, 240]
        );
        let l = ladder_for(&DEFAULT_LADDER, 181);
        assert_eq!(l.iter().map(|r| r.height).collect::<Vec<_>>(), vec![180]);
    }

    #[test]
    fn languages_normalise_to_short_tags() {
        for (given, want) in [
            ("eng", "en"),
            ("hin", "hi"),
            ("fra", "fr"),
            ("fre", "fr"),
            ("deu", "de"),
            ("ger", "de"),
            ("spa", "es"),
            ("ita", "it"),
            ("por", "pt"),
            ("jpn", "ja"),
            ("zho", "zh"),
            ("chi", "zh"),
            ("kor", "ko"),
            ("rus", "ru"),
            ("ara", "ar"),
            ("ben", "bn"),
            ("tam", "ta"),
            ("tel", "te"),
            ("mar", "mr"),
            ("guj", "gu"),
            ("kan", "kn"),
            ("mal", "ml"),
            ("pan", "pa"),
            ("urd", "ur"),
            ("nld", "nl"),
            ("dut", "nl"),
            ("swe", "sv"),
            ("pol", "pl"),
            ("tur", "tr"),
            // Already short, in any case and with blanks around.
            ("en", "en"),
            ("FR", "fr"),
            (" Hin ", "hi"),
            ("iw", "he"),
            // No two-letter code: kept as BCP 47 wants.
            ("fil", "fil"),
            ("yue", "yue"),
            ("und", "und"),
            // Not a language code.
            ("", "und"),
            ("   ", "und"),
            ("e", "und"),
            ("english", "und"),
            ("en-US", "und"),
            ("e1", "und"),
            ("xx", "und"),
            ("日本", "und"),
        ] {
            assert_eq!(normalize_language(given), want, "{given:?}");
        }
    }

    #[test]
    fn mdhd_gets_three_letters() {
        assert_eq!(mdhd_language("en"), "eng");
        assert_eq!(mdhd_language("fr"), "fra");
        assert_eq!(mdhd_language("zh"), "zho");
        assert_eq!(mdhd_language("fil"), "fil");
        assert_eq!(mdhd_language("und"), "und");
        assert_eq!(mdhd_language(""), "und");
        // Every table entry maps back and forth.
        for (two, three) in ISO_639 {
            assert_eq!(normalize_language(three), *two);
            assert_eq!(mdhd_language(two), *three);
        }
        for (b, t) in ISO_639_2_B {
            assert_eq!(mdhd_language(&normalize_language(b)), *t);
        }
    }

    #[test]
    fn codecs_parse() {
        assert_eq!(VideoCodec::parse("h264"), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::parse("avc"), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::parse("hevc"), Some(VideoCodec::Hevc));
        assert_eq!(VideoCodec::parse("h265"), Some(VideoCodec::Hevc));
        assert_eq!(VideoCodec::parse("av1"), Some(VideoCodec::Av1));
        assert_eq!(VideoCodec::parse("AV1"), Some(VideoCodec::Av1));
        assert_eq!(VideoCodec::parse(" HEVC "), Some(VideoCodec::Hevc));
        assert_eq!(VideoCodec::parse(""), None);
        assert_eq!(VideoCodec::parse("vp9"), None);
        assert_eq!(VideoCodec::parse("h.264"), None);
        assert_eq!(
            serde_json::to_string(&[VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1])
                .expect("serialise"),
            r#"["h264","hevc","av1"]"#
        );
        assert_eq!(
            serde_json::from_str::<VideoCodec>(r#""av1""#).expect("deserialise"),
            VideoCodec::Av1
        );
    }

    #[test]
    fn presets_map_across_encoders() {
        assert_eq!(x265_preset("fast"), "veryfast");
        assert_eq!(x265_preset("superfast"), "ultrafast");
        assert_eq!(x265_preset("ultrafast"), "ultrafast");
        assert_eq!(svt_av1_preset("ultrafast"), "12");
        assert_eq!(svt_av1_preset("medium"), "10");
    }

    /// The integrated loudness FFmpeg's own `ebur128` filter measures in
    /// an audio file, LUFS: an independent meter.
    fn ffmpeg_loudness(path: &Path) -> f64 {
        let out = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-nostats", "-i"])
            .arg(path)
            .args(["-af", "ebur128", "-f", "null", "-"])
            .output()
            .expect("ffmpeg runs");
        let text = String::from_utf8_lossy(&out.stderr);
        let summary = &text[text.rfind("Summary:").expect("a summary")..];
        summary
            .lines()
            .find_map(|l| l.trim().strip_prefix("I:"))
            .and_then(|v| v.trim().trim_end_matches("LUFS").trim().parse().ok())
            .expect("an integrated loudness")
    }

    // Real FFmpeg: a quiet tone (about -40 LUFS) made into a creative at
    // -23 LUFS, read back by FFmpeg's meter; a loud one is held under
    // -1 dBFS instead of being boosted into clipping.
    #[test]
    fn creatives_are_brought_to_the_loudness_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = "testsrc2=s=160x90:r=25:d=4[out0];sine=f=440:d=4,volume=0.1[out1]";
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).expect("dir");
        let spec = tiny_spec(
            &plain,
            graph,
            vec![Rung {
                height: 90,
                kbps: 100,
            }],
        );
        transcode(&spec, &mut |_| {}, &AtomicBool::new(false)).expect("transcode");
        let before = ffmpeg_loudness(&plain.join("a0.mp4"));
        assert!(before < -35.0, "the source is quiet: {before}");
        let loud = dir.path().join("normalised");
        std::fs::create_dir_all(&loud).expect("dir");
        let spec = Spec {
            loudness_lufs: Some(-23.0),
            ..tiny_spec(
                &loud,
                graph,
                vec![Rung {
                    height: 90,
                    kbps: 100,
                }],
            )
        };
        transcode(&spec, &mut |_| {}, &AtomicBool::new(false)).expect("transcode");
        let after = ffmpeg_loudness(&loud.join("a0.mp4"));
        assert!((after + 23.0).abs() < 1.0, "{before} LUFS became {after}");
        // A sine near full scale is already near its peak: not raised past it.
        // (lavfi's sine is 1/8 of full scale, so 7x peaks at 0.875, and
        // 0.619 once spread over two channels.) Asked for 0 LUFS, it may
        // only rise to -1 dBFS (0.891).
        let near_full = loudness_gain(
            &Source::Lavfi("testsrc2=s=160x90:d=2[out0];sine=f=440:d=2,volume=7[out1]".into()),
            0.0,
        );
        assert!(
            matches!(near_full, Ok(g) if f64::from(g) * 0.875 * std::f64::consts::FRAC_1_SQRT_2 <= 0.892),
            "{near_full:?}"
        );
        // Silence gets no gain.
        let silent = loudness_gain(
            &Source::Lavfi(
                "testsrc2=s=160x90:d=2[out0];anullsrc=r=48000:cl=stereo:d=2[out1]".into(),
            ),
            -23.0,
        );
        assert!(matches!(silent, Ok(g) if g == 1.0), "{silent:?}");
    }

    #[test]
    fn watermark_copies_share_segment_starts_and_the_init_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = Spec {
            watermark: Some(3),
            ..tiny_spec(
                dir.path(),
                "testsrc2=s=320x180:r=25:d=6[out0]",
                vec![Rung {
                    height: 180,
                    kbps: 300,
                }],
            )
        };
        let out = transcode(&spec, &mut |_| {}, &AtomicBool::new(false)).expect("transcode");
        let video: Vec<_> = out.files.iter().filter(|w| w.codec.is_some()).collect();
        assert_eq!(video.len(), 2, "{video:?}");
        assert_eq!(
            (video[0].file.as_str(), video[0].mark),
            ("v0.mp4", Some(Variant::A))
        );
        assert_eq!(
            (video[1].file.as_str(), video[1].mark),
            ("v0-b.mp4", Some(Variant::B))
        );
        assert_eq!(video[0].track, video[1].track);
        let (a, b) = (dir.path().join("v0.mp4"), dir.path().join("v0-b.mp4"));
        assert_eq!(key_times_ms(&a), key_times_ms(&b));
        assert_eq!(key_times_ms(&a), vec![0, 2000, 4000]);
        // One init segment decodes both: the encoder wrote the same one.
        let init = |p: &Path| {
            let index = crate::service::ingest::index::index_file(p).expect("index");
            crate::service::ingest::index::read_range(p, index.init_range).expect("init")
        };
        assert_eq!(init(&a), init(&b));
        // The copies differ, by the mark.
        assert_ne!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
    }

    fn tiny_spec(out_dir: &Path, graph: &str, ladder: Vec<Rung>) -> Spec {
        Spec {
            source: Source::Lavfi(graph.into()),
            out_dir: out_dir.to_path_buf(),
            ladder,
            preset: "ultrafast".into(),
            segment_secs: 2,
            extra_audio: Vec::new(),
            extra_codecs: Vec::new(),
            fill_ladder: false,
            loudness_lufs: None,
            watermark: None,
        }
    }

    /// Key packet times of a file's first stream, in milliseconds.
    fn key_times_ms(path: &Path) -> Vec<i64> {
        init();
        let mut ictx = format::input(path).expect("open output");
        let mut keys = Vec::new();
        for (stream, packet) in ictx.packets() {
            if packet.is_key() {
                let tb = stream.time_base();
                let pts = packet.pts().expect("pts") as f64;
                keys.push(
                    (pts * 1000.0 * f64::from(tb.numerator()) / f64::from(tb.denominator())).round()
                        as i64,
                );
            }
        }
        keys
    }

    /// An audio file's `language` tag and where its last packet ends, in seconds.
    fn audio_file(path: &Path) -> (Option<String>, f64) {
        init();
        let mut ictx = format::input(path).expect("open output");
        let language = ictx
            .streams()
            .next()
            .and_then(|s| s.metadata().get("language").map(str::to_owned));
        let mut end = 0.0f64;
        for (stream, packet) in ictx.packets() {
            let tb = stream.time_base();
            let stop = (packet.pts().unwrap_or(0) + packet.duration()) as f64;
            end = end.max(stop * f64::from(tb.numerator()) / f64::from(tb.denominator()));
        }
        (language, end)
    }

    // Runs real FFmpeg (libx264, libx265, libsvtav1 and the AAC encoder) on a
    // 4 s, 160x90 lavfi clip with two tones; a few seconds of CPU.
    #[test]
    fn every_codec_and_audio_stream_shares_segment_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = tiny_spec(
            dir.path(),
            "testsrc2=s=160x90:r=25:d=4[out0];sine=f=440:d=4[out1];sine=f=880:d=4[out2]",
            vec![
                Rung {
                    height: 90,
                    kbps: 200,
                },
                Rung {
                    height: 64,
                    kbps: 100,
                },
            ],
        );
        // Order and repeats here do not matter; H.264 is always made.
        spec.extra_codecs = vec![VideoCodec::Av1, VideoCodec::Hevc, VideoCodec::H264];
        let outcome = transcode(&spec, &mut |_| {}, &AtomicBool::new(false)).expect("transcode");
        let tracks: Vec<&str> = outcome.files.iter().map(|w| w.track.as_str()).collect();
        assert_eq!(tracks, ["v0", "v1", "h0", "h1", "x0", "x1", "a0", "a1"]);
        for w in &outcome.files {
            let path = dir.path().join(&w.file);
            match w.codec {
                Some(_) => {
                    assert_eq!(w.language, None);
                    assert_eq!(key_times_ms(&path), [0, 2000], "{}", w.track);
                }
                None => {
                    // A lavfi output carries no language tag.
                    assert_eq!(w.language.as_deref(), Some("und"));
                    assert_eq!(audio_file(&path).0.as_deref(), Some("und"));
                }
            }
        }
        assert_eq!(outcome.files[2].codec, Some(VideoCodec::Hevc));
        assert_eq!(outcome.files[4].codec, Some(VideoCodec::Av1));

        // One of those audio files, dubbed in as French, over a 2 s video:
        // it becomes a1 and stops with the video.
        let dub = dir.path().join("a1.mp4");
        let dir2 = tempfile::tempdir().expect("tempdir");
        let mut spec = tiny_spec(
            dir2.path(),
            "testsrc2=s=160x90:r=25:d=2[out0];sine=f=440:d=2[out1]",
            vec![Rung {
                height: 90,
                kbps: 200,
            }],
        );
        spec.extra_audio = vec![ExtraAudio {
            language: "fre".into(),
            path: dub,
        }];
        let outcome = transcode(&spec, &mut |_| {}, &AtomicBool::new(false)).expect("transcode");
        let tracks: Vec<&str> = outcome.files.iter().map(|w| w.track.as_str()).collect();
        assert_eq!(tracks, ["v0", "a0", "a1"]);
        assert_eq!(outcome.files[2].language.as_deref(), Some("fr"));
        let (language, end) = audio_file(&dir2.path().join(&outcome.files[2].file));
        assert_eq!(language.as_deref(), Some("fra"));
        // 2 s, plus at most the padding of the last AAC frame.
        assert!(end > 1.9 && end < 2.1, "dub ends at {end} s");

        // A dub that is not there fails the job, naming its language.
        let dir3 = tempfile::tempdir().expect("tempdir");
        spec.out_dir = dir3.path().to_path_buf();
        spec.extra_audio = vec![ExtraAudio {
            language: "hin".into(),
            path: dir3.path().join("missing.m4a"),
        }];
        let err = transcode(&spec, &mut |_| {}, &AtomicBool::new(false))
            .expect_err("a missing dub fails");
        assert!(
            matches!(&err, TranscodeError::Input(m) if m.contains("\"hin\"")),
            "{err}"
        );
    }
}
