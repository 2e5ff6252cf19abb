//! Transcoding a source into CMAF mezzanine with FFmpeg's libraries.
//!
//! The source is decoded once; each decoded picture is scaled to every rung
//! of the ladder and encoded with libx264, and the audio is resampled once and
//! encoded to AAC-LC. Keyframes are forced at the same timestamps (every
//! `segment_secs`) in every rung, and each output file is cut into fragments
//! exactly there, so every segment boundary is shared by all renditions.
//!
//! This runs on a blocking thread: FFmpeg calls are synchronous.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ff::{codec, decoder, encoder, format, frame, media, picture, software, ChannelLayout};
use ffmpeg_next as ff;

/// One rung of the video ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rung {
    /// Output height in pixels; the width keeps the source's aspect ratio.
    pub height: u32,
    /// Target bitrate in kbit/s; the peak is capped at 1.5 times this.
    pub kbps: u32,
}

/// The default ladder, capped at the source's height when used.
pub const DEFAULT_LADDER: [Rung; 4] = [
    Rung {
        height: 1080,
        kbps: 5000,
    },
    Rung {
        height: 720,
        kbps: 2800,
    },
    Rung {
        height: 480,
        kbps: 1200,
    },
    Rung {
        height: 240,
        kbps: 400,
    },
];

/// What to transcode.
#[derive(Debug, Clone)]
pub enum Source {
    /// A media file on local disk.
    File(PathBuf),
    /// A libavfilter source graph (used for the sample titles), such as
    /// `testsrc2=s=1280x720:r=30:d=30[out0];sine=f=440:d=30[out1]`.
    Lavfi(String),
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
    /// The x264 preset.
    pub preset: String,
    /// Fragment (and keyframe) interval in seconds.
    pub segment_secs: u32,
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `v0`, `v1`, … for video (highest first), `a0` for audio.
    pub track: String,
    /// The file name in `out_dir`.
    pub file: String,
}

/// What a transcode made.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Files in track order.
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
}

/// Why a transcode failed; the text is shown to the uploader.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// FFmpeg could not read the source.
    #[error("cannot read the source: {0}")]
    Input(String),
    /// The source has no video stream.
    #[error("the source has no video stream")]
    NoVideo,
    /// An encoder or muxer failed.
    #[error("transcoding failed: {0}")]
    Encode(String),
    /// The job was cancelled (the origin is shutting down).
    #[error("cancelled")]
    Cancelled,
}

fn enc_err(what: &str, e: ff::Error) -> TranscodeError {
    TranscodeError::Encode(format!("{what}: {e}"))
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

fn open_input(source: &Source) -> Result<format::context::Input, TranscodeError> {
    init();
    match source {
        Source::File(path) => {
            let path = path
                .to_str()
                .ok_or_else(|| TranscodeError::Input("path is not UTF-8".into()))?;
            format::input(&path).map_err(|e| TranscodeError::Input(e.to_string()))
        }
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
    Ok(Probe {
        duration,
        width: dec.width(),
        height: dec.height(),
        has_audio,
    })
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

struct VideoOut {
    encoder: encoder::Video,
    scaler: software::scaling::Context,
    octx: format::context::Output,
    enc_tb: ff::Rational,
    stream_tb: ff::Rational,
    /// One frame's duration in `enc_tb`, for packets the encoder leaves without one.
    frame_ticks: i64,
    wrote_any: bool,
    file: String,
}

struct AudioOut {
    encoder: encoder::Audio,
    resampler: software::resampling::Context,
    octx: format::context::Output,
    stream_tb: ff::Rational,
    fifo: [Vec<f32>; 2],
    samples_out: i64,
    frame_size: usize,
    next_cut: i64,
    cut_every: i64,
    wrote_any: bool,
    file: String,
}

const AUDIO_RATE: i32 = 48_000;

/// Where the video is in time: the source's first timestamp (output starts
/// at zero), the next forced keyframe, frames seen, the last frame's time.
#[derive(Default)]
struct VideoClock {
    first_pts: Option<i64>,
    next_key: f64,
    frame_count: i64,
    last_secs: f64,
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

    let astream = ictx.streams().best(media::Type::Audio);
    let a_index = astream.as_ref().map(|s| s.index());
    let a_tb = astream.as_ref().map(|s| s.time_base());
    let mut adec = match &astream {
        Some(s) => {
            let ctx = codec::context::Context::from_parameters(s.parameters())
                .map_err(|e| TranscodeError::Input(e.to_string()))?;
            Some(
                ctx.decoder()
                    .audio()
                    .map_err(|e| TranscodeError::Input(format!("audio decoder: {e}")))?,
            )
        }
        None => None,
    };

    let fps = if v_rate.numerator() > 0 && v_rate.denominator() > 0 {
        f64::from(v_rate.numerator()) / f64::from(v_rate.denominator())
    } else {
        30.0
    };
    let rungs = ladder_for(&spec.ladder, vdec.height());
    let mut videos = Vec::with_capacity(rungs.len());
    for (i, rung) in rungs.iter().enumerate() {
        videos.push(open_video_out(spec, i, *rung, &vdec, v_tb, v_rate, fps)?);
    }
    let mut audio = match &adec {
        Some(dec) => Some(open_audio_out(spec, dec, a_tb)?),
        None => None,
    };

    let seg = f64::from(spec.segment_secs.max(1));
    let mut clock = VideoClock::default();
    let mut decoded = frame::Video::empty();
    let mut adecoded = frame::Audio::empty();

    let mut on_video_frames = |vdec: &mut decoder::Video,
                               videos: &mut Vec<VideoOut>,
                               clock: &mut VideoClock|
     -> Result<(), TranscodeError> {
        let VideoClock {
            first_pts,
            next_key,
            frame_count,
            last_secs,
        } = clock;
        while vdec.receive_frame(&mut decoded).is_ok() {
            let raw = decoded.timestamp().or(decoded.pts());
            let pts = match (raw, *first_pts) {
                (Some(p), None) => {
                    *first_pts = Some(p);
                    0
                }
                (Some(p), Some(f)) => p
                    .checked_sub(f)
                    .ok_or_else(|| TranscodeError::Input("video timestamps out of range".into()))?,
                (None, _) => {
                    // No timestamp: derive one from the frame count.
                    let tb = f64::from(v_tb.numerator()) / f64::from(v_tb.denominator());
                    ((*frame_count as f64) / fps / tb).round() as i64
                }
            };
            *frame_count += 1;
            let secs = pts as f64 * f64::from(v_tb.numerator()) / f64::from(v_tb.denominator());
            *last_secs = secs;
            let key = secs + 1e-6 >= *next_key;
            if key {
                while *next_key <= secs + 1e-6 {
                    *next_key += seg;
                }
            }
            for out in videos.iter_mut() {
                let mut scaled = frame::Video::empty();
                out.scaler
                    .run(&decoded, &mut scaled)
                    .map_err(|e| enc_err("scale", e))?;
                scaled.set_pts(Some(pts));
                scaled.set_kind(if key {
                    picture::Type::I
                } else {
                    picture::Type::None
                });
                out.encoder
                    .send_frame(&scaled)
                    .map_err(|e| enc_err("encode video", e))?;
                drain_video(out)?;
            }
        }
        Ok(())
    };

    for (stream, mut packet) in ictx.packets() {
        if cancel.load(Ordering::Relaxed) {
            return Err(TranscodeError::Cancelled);
        }
        if stream.index() == v_index {
            packet.rescale_ts(stream.time_base(), v_tb);
            vdec.send_packet(&packet)
                .map_err(|e| TranscodeError::Input(format!("decode video: {e}")))?;
            on_video_frames(&mut vdec, &mut videos, &mut clock)?;
            if let Some(total) = total_secs {
                progress((clock.last_secs / total).clamp(0.0, 0.99));
            }
        } else if Some(stream.index()) == a_index {
            if let (Some(dec), Some(out)) = (adec.as_mut(), audio.as_mut()) {
                // A damaged audio packet costs a glitch, not the title.
                if dec.send_packet(&packet).is_ok() {
                    while dec.receive_frame(&mut adecoded).is_ok() {
                        push_audio(out, &adecoded)?;
                    }
                }
            }
        }
    }
    vdec.send_eof()
        .map_err(|e| TranscodeError::Input(format!("decode video: {e}")))?;
    on_video_frames(&mut vdec, &mut videos, &mut clock)?;
    if clock.frame_count == 0 {
        return Err(TranscodeError::Input(
            "no video frames could be decoded".into(),
        ));
    }

    let mut files = Vec::new();
    for (i, mut out) in videos.into_iter().enumerate() {
        out.encoder
            .send_eof()
            .map_err(|e| enc_err("flush video", e))?;
        drain_video(&mut out)?;
        out.octx
            .write_trailer()
            .map_err(|e| enc_err("finish video file", e))?;
        files.push(Written {
            track: format!("v{i}"),
            file: out.file,
        });
    }
    if let (Some(dec), Some(mut out)) = (adec.as_mut(), audio.take()) {
        if dec.send_eof().is_ok() {
            while dec.receive_frame(&mut adecoded).is_ok() {
                push_audio(&mut out, &adecoded)?;
            }
        }
        finish_audio(&mut out)?;
        if out.wrote_any {
            files.push(Written {
                track: "a0".into(),
                file: out.file,
            });
        }
    }
    progress(1.0);
    let media_secs = clock.last_secs + 1.0 / fps;
    Ok(Outcome { files, media_secs })
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

#[allow(clippy::too_many_arguments)]
fn open_video_out(
    spec: &Spec,
    index: usize,
    rung: Rung,
    dec: &decoder::Video,
    tb: ff::Rational,
    rate: ff::Rational,
    fps: f64,
) -> Result<VideoOut, TranscodeError> {
    let height = rung.height & !1;
    let width =
        ((u64::from(dec.width()) * u64::from(height) / u64::from(dec.height().max(1))) as u32 + 1)
            & !1;
    let file = format!("v{index}.mp4");
    let path = spec.out_dir.join(&file);
    let mut octx = output_file(&path)?;
    let codec = encoder::find_by_name("libx264")
        .ok_or_else(|| TranscodeError::Encode("FFmpeg was built without libx264".into()))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| enc_err("video encoder", e))?;
    enc.set_width(width.max(2));
    enc.set_height(height.max(2));
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(tb);
    if rate.numerator() > 0 {
        enc.set_frame_rate(Some(rate));
    }
    enc.set_bit_rate(rung.kbps as usize * 1000);
    enc.set_max_bit_rate(rung.kbps as usize * 1500);
    // No B-frames: presentation order equals decode order, so a fragment's
    // decode time is its presentation time in every packaging format.
    enc.set_max_b_frames(0);
    enc.set_gop((fps * f64::from(spec.segment_secs) * 4.0).ceil() as u32);
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    let mut opts = ff::Dictionary::new();
    opts.set("preset", &spec.preset);
    opts.set("forced-idr", "1");
    opts.set(
        "x264-params",
        &format!(
            "scenecut=0:open-gop=0:vbv-maxrate={}:vbv-bufsize={}",
            rung.kbps * 3 / 2,
            rung.kbps * 2
        ),
    );
    let encoder = enc
        .open_as_with(codec, opts)
        .map_err(|e| enc_err("open libx264", e))?;
    let mut stream = octx
        .add_stream(codec)
        .map_err(|e| enc_err("add stream", e))?;
    stream.set_parameters(&encoder);
    stream.set_time_base(tb);
    write_header(&mut octx)?;
    let stream_tb = octx
        .stream(0)
        .map(|s| s.time_base())
        .ok_or_else(|| TranscodeError::Encode("muxer lost its stream".into()))?;
    let scaler = software::scaling::Context::get(
        dec.format(),
        dec.width(),
        dec.height(),
        format::Pixel::YUV420P,
        width.max(2),
        height.max(2),
        software::scaling::Flags::BICUBIC,
    )
    .map_err(|e| enc_err("scaler", e))?;
    Ok(VideoOut {
        encoder,
        scaler,
        octx,
        enc_tb: tb,
        stream_tb,
        frame_ticks:
            ((f64::from(tb.denominator()) / f64::from(tb.numerator().max(1)) / fps).round() as i64)
                .max(1),
        wrote_any: false,
        file,
    })
}

fn open_audio_out(
    spec: &Spec,
    dec: &decoder::Audio,
    _tb: Option<ff::Rational>,
) -> Result<AudioOut, TranscodeError> {
    let file = "a0.mp4".to_string();
    let path = spec.out_dir.join(&file);
    let mut octx = output_file(&path)?;
    let codec = encoder::find(codec::Id::AAC)
        .ok_or_else(|| TranscodeError::Encode("FFmpeg has no AAC encoder".into()))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .map_err(|e| enc_err("audio encoder", e))?;
    enc.set_rate(AUDIO_RATE);
    enc.set_channel_layout(ChannelLayout::STEREO);
    enc.set_channels(2);
    enc.set_format(format::Sample::F32(format::sample::Type::Planar));
    enc.set_bit_rate(128_000);
    enc.set_time_base((1, AUDIO_RATE));
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    let encoder = enc.open_as(codec).map_err(|e| enc_err("open AAC", e))?;
    let mut stream = octx
        .add_stream(codec)
        .map_err(|e| enc_err("add stream", e))?;
    stream.set_parameters(&encoder);
    stream.set_time_base((1, AUDIO_RATE));
    write_header(&mut octx)?;
    let stream_tb = octx
        .stream(0)
        .map(|s| s.time_base())
        .ok_or_else(|| TranscodeError::Encode("muxer lost its stream".into()))?;
    let in_layout = if dec.channel_layout().is_empty() {
        ChannelLayout::default(i32::from(dec.channels().max(1)))
    } else {
        dec.channel_layout()
    };
    let resampler = software::resampling::Context::get(
        dec.format(),
        in_layout,
        dec.rate().max(1),
        format::Sample::F32(format::sample::Type::Planar),
        ChannelLayout::STEREO,
        AUDIO_RATE as u32,
    )
    .map_err(|e| enc_err("resampler", e))?;
    let frame_size = (encoder.frame_size() as usize).max(1);
    let cut_every = i64::from(spec.segment_secs.max(1)) * i64::from(AUDIO_RATE);
    Ok(AudioOut {
        encoder,
        resampler,
        octx,
        stream_tb,
        fifo: [Vec::new(), Vec::new()],
        samples_out: 0,
        frame_size,
        next_cut: cut_every,
        cut_every,
        wrote_any: false,
        file,
    })
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

fn drain_video(out: &mut VideoOut) -> Result<(), TranscodeError> {
    let mut packet = ff::Packet::empty();
    while out.encoder.receive_packet(&mut packet).is_ok() {
        if packet.is_key() && out.wrote_any {
            flush_fragment(&mut out.octx)?;
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

fn push_audio(out: &mut AudioOut, input: &frame::Audio) -> Result<(), TranscodeError> {
    let mut resampled = frame::Audio::empty();
    out.resampler
        .run(input, &mut resampled)
        .map_err(|e| enc_err("resample", e))?;
    append_planes(out, &resampled);
    encode_full_frames(out, false)
}

fn append_planes(out: &mut AudioOut, f: &frame::Audio) {
    let n = f.samples();
    if n == 0 || f.planes() < 2 {
        return;
    }
    for ch in 0..2 {
        let plane: &[f32] = f.plane(ch);
        out.fifo[ch].extend_from_slice(&plane[..n.min(plane.len())]);
    }
}

fn encode_full_frames(out: &mut AudioOut, flush: bool) -> Result<(), TranscodeError> {
    loop {
        let have = out.fifo[0].len();
        if have == 0 || (have < out.frame_size && !flush) {
            break;
        }
        let n = have.min(out.frame_size);
        let mut f = frame::Audio::new(
            format::Sample::F32(format::sample::Type::Planar),
            out.frame_size,
            ChannelLayout::STEREO,
        );
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
        if out.wrote_any && pts >= out.next_cut {
            flush_fragment(&mut out.octx)?;
            while out.next_cut <= pts {
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
    let mut tail = frame::Audio::empty();
    if let Ok(Some(_)) = out.resampler.flush(&mut tail) {
        append_planes(out, &tail);
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
}
