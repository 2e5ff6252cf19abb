//! Samples out of one-track CMAF fragments, and one-sample fragments back in.
//!
//! Fragments are read per request: to mux MPEG-TS segments ([`crate::ts`])
//! and to cut the one-keyframe fragments of a DASH trick-mode
//! representation. Every input is untrusted: counts are checked against the
//! bytes that remain before anything is allocated, every sample is checked
//! to lie inside its `mdat`, and nothing panics.
//!
//! A fragment is passed as the bytes from the start of its `moof` to the end
//! of its `mdat`, and sample positions are relative to those bytes. That
//! works because the mezzanine's fragments address their data from the
//! `moof` (`default-base-is-moof`), never from the start of the file.

use std::ops::Range;

use crate::index::{
    audio_entry, esds_decoder_config, first_sample_entry, handler_kind, media_header, only_trak,
    visual_entry, MAX_TICKS,
};
use crate::mp4::{children, find, find_path, full_box, BoxHeader, Reader};
use crate::ts::{AudioConfig, VideoConfig};
use crate::{Error, TrackKind};

/// What the init segment says about the one track of a mezzanine file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackConfig {
    /// Ticks per second of every time in the track (from `mdhd`).
    pub timescale: u32,
    /// Video or audio (from `hdlr`).
    pub kind: TrackKind,
    /// Sample duration for runs that leave it out (from `trex`).
    pub default_sample_duration: u32,
    /// Sample size for runs that leave it out (from `trex`).
    pub default_sample_size: u32,
    /// Sample flags for runs that leave them out (from `trex`).
    pub default_sample_flags: u32,
    /// The media time of the first non-empty edit in `elst`, 0 without an
    /// edit list: the decode-timeline tick that is presented at time zero.
    /// A sample's presentation time is `dts + cts_offset - media_time`.
    pub media_time: i64,
    /// The decoder configuration, for the codecs that Cascade remuxes.
    pub codec: CodecConfig,
}

/// The decoder configuration of a track's first sample entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecConfig {
    /// H.264 (`avc1` or `avc3`), from the `avcC` box.
    Avc(VideoConfig),
    /// MPEG-4 AAC (`mp4a`, object type indication 0x40), from the
    /// AudioSpecificConfig in the `esds` box.
    Aac(AudioConfig),
    /// Any other codec (HEVC, AV1, ...): its samples can be read but not
    /// muxed to MPEG-TS.
    Other,
}

/// One sample of a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Decode time in the track's timescale: the `tfdt` plus the durations
    /// of the samples before it.
    pub dts: u64,
    /// Presentation time minus decode time (negative only from a version 1 `trun`).
    pub cts_offset: i64,
    /// Duration in the track's timescale.
    pub duration: u32,
    /// Where the sample's data starts in the fragment bytes.
    pub offset: usize,
    /// The data's length in bytes.
    pub size: usize,
    /// A sync sample: decoding can start here.
    pub keyframe: bool,
}

/// Reads the track configuration from an init segment (`ftyp` then `moov`).
pub fn parse_init(init: &[u8]) -> Result<TrackConfig, Error> {
    let moov = find(init, b"moov")?.ok_or(Error::MissingBox("moov"))?;
    let trak = only_trak(moov)?;
    let mdia = find_path(trak, &[b"mdia"])?;
    let (timescale, _) = media_header(mdia)?;
    let kind = handler_kind(mdia)?;
    let entry = first_sample_entry(mdia)?;
    let codec = match (kind, &entry.kind) {
        (TrackKind::Video, b"avc1" | b"avc3") => {
            let (_, _, boxes) = visual_entry(entry.body)?;
            let avcc = find(boxes, b"avcC")?.ok_or(Error::MissingBox("avcC"))?;
            CodecConfig::Avc(parse_avcc(avcc)?)
        }
        (TrackKind::Audio, b"mp4a") => {
            let (_, _, boxes) = audio_entry(entry.body)?;
            let esds = find(boxes, b"esds")?.ok_or(Error::MissingBox("esds"))?;
            match esds_decoder_config(esds)? {
                (0x40, Some(asc)) => CodecConfig::Aac(parse_audio_specific_config(asc)?),
                _ => CodecConfig::Other,
            }
        }
        _ => CodecConfig::Other,
    };
    let elst = match find(trak, b"edts")? {
        Some(edts) => find(edts, b"elst")?,
        None => None,
    };
    let media_time = elst.map(first_edit_media_time).transpose()?.unwrap_or(0);
    let defaults = parse_trex(find_path(moov, &[b"mvex", b"trex"])?)?;
    Ok(TrackConfig {
        timescale,
        kind,
        default_sample_duration: defaults.duration,
        default_sample_size: defaults.size,
        default_sample_flags: defaults.flags,
        media_time,
        codec,
    })
}

/// Reads the samples of one fragment: a `moof` followed by its `mdat`
/// (other boxes may stand between them; bytes after the `mdat` are ignored).
///
/// Fails with [`Error::Unsupported`] when the `tfhd` gives a base data
/// offset (an absolute file offset, unknown here) or a sample description
/// other than the first, and with [`Error::Malformed`] when a sample's data
/// is not inside the `mdat` payload.
pub fn parse_fragment(cfg: &TrackConfig, fragment: &[u8]) -> Result<Vec<Sample>, Error> {
    read_samples(cfg, fragment).map(|(_, samples)| samples)
}

/// Bytes from the start of a `moof` to the end of its first sample's data:
/// how much of a fragment an HLS I-frame playlist entry needs.
///
/// `moof` starts with the whole `moof` box, header included; anything after
/// it is ignored. `trex_sample_size` is the track's default sample size from
/// `trex` ([`TrackConfig::default_sample_size`]), used when neither the
/// `trun` nor the `tfhd` gives one. The result is not checked against the
/// `mdat`, which these bytes need not hold; the caller does that.
pub fn first_sample_end(moof: &[u8], trex_sample_size: u32) -> Result<u64, Error> {
    let (kind, header_len, moof_len) = top_box(moof)?;
    if &kind != b"moof" {
        return Err(Error::Malformed("fragment does not start with moof"));
    }
    let payload = moof.get(header_len..moof_len).ok_or(Error::Truncated)?;
    let trex = SampleDefaults {
        size: trex_sample_size,
        ..SampleDefaults::default()
    };
    let traf = parse_traf(payload, trex)?;
    let mut next = 0usize;
    for child in children(traf.body) {
        let child = child?;
        if &child.kind != b"trun" {
            continue;
        }
        let mut run = parse_trun(child.body)?;
        let start = run_start(&run, next)?;
        if run.count == 0 {
            next = start;
            continue;
        }
        // At least an mdat header lies between the moof and its data.
        if start < moof_len.saturating_add(8) {
            return Err(Error::Malformed("sample data inside the moof"));
        }
        let first = run.next_entry(true, &traf.defaults)?;
        let end = start
            .checked_add(first.size as usize)
            .ok_or(Error::Malformed("sample data out of range"))?;
        return Ok(end as u64);
    }
    Err(Error::Malformed("fragment without samples"))
}

/// Builds a standalone `moof` + `mdat` holding only the first sample of
/// `fragment`, for a DASH trick-mode representation.
///
/// The sample keeps its decode time and composition offset, and its
/// duration becomes the whole fragment's, so the trick-mode track covers
/// the same timeline as the full one. `sequence_number` goes in the
/// `mfhd`; the track id is the source fragment's. Fails with
/// [`Error::Unsupported`] when the first sample is not a keyframe.
pub fn keyframe_fragment(
    cfg: &TrackConfig,
    fragment: &[u8],
    sequence_number: u32,
) -> Result<Vec<u8>, Error> {
    let (track_id, samples) = read_samples(cfg, fragment)?;
    let first = samples
        .first()
        .ok_or(Error::Malformed("fragment without samples"))?;
    if !first.keyframe {
        return Err(Error::Unsupported(
            "fragment does not start with a keyframe",
        ));
    }
    // At most 2^20 samples of at most 2^32 ticks: the sum cannot overflow.
    let total: u64 = samples.iter().map(|s| u64::from(s.duration)).sum();
    let duration =
        u32::try_from(total).map_err(|_| Error::Unsupported("fragment duration beyond 32 bits"))?;
    let cts_offset = i32::try_from(first.cts_offset)
        .map_err(|_| Error::Unsupported("composition offset beyond 32 bits"))?;
    let end = first
        .offset
        .checked_add(first.size)
        .ok_or(Error::Truncated)?;
    let data = fragment.get(first.offset..end).ok_or(Error::Truncated)?;
    let size = u32::try_from(data.len()).map_err(|_| Error::Unsupported("sample too large"))?;
    let mdat_len = size
        .checked_add(8)
        .ok_or(Error::Unsupported("sample too large"))?;

    let mut trun_flags = TRUN_DATA_OFFSET | TRUN_DURATION | TRUN_SIZE | TRUN_FLAGS;
    let mut trun_len = 8 + 4 + 4 + 4 + 3 * 4;
    if cts_offset != 0 {
        trun_flags |= TRUN_CTO;
        trun_len += 4;
    }
    let tfhd_len = 8 + 4 + 4;
    let tfdt_len = 8 + 4 + 8;
    let traf_len = 8 + tfhd_len + tfdt_len + trun_len;
    let mfhd_len = 8 + 4 + 4;
    let moof_len: u32 = 8 + mfhd_len + traf_len;
    // The sample's data follows the moof and the 8-byte mdat header.
    let data_offset = moof_len + 8;

    let mut out = Vec::with_capacity(data_offset as usize + data.len());
    put_header(&mut out, moof_len, b"moof");
    put_header(&mut out, mfhd_len, b"mfhd");
    put_u32(&mut out, 0);
    put_u32(&mut out, sequence_number);
    put_header(&mut out, traf_len, b"traf");
    put_header(&mut out, tfhd_len, b"tfhd");
    put_u32(&mut out, TFHD_DEFAULT_BASE_IS_MOOF);
    put_u32(&mut out, track_id);
    put_header(&mut out, tfdt_len, b"tfdt");
    put_u32(&mut out, 1 << 24);
    out.extend_from_slice(&first.dts.to_be_bytes());
    put_header(&mut out, trun_len, b"trun");
    // Version 1: the composition offset is signed.
    put_u32(&mut out, (1 << 24) | trun_flags);
    put_u32(&mut out, 1);
    put_u32(&mut out, data_offset);
    put_u32(&mut out, duration);
    put_u32(&mut out, size);
    put_u32(&mut out, SYNC_SAMPLE_FLAGS);
    if cts_offset != 0 {
        out.extend_from_slice(&cts_offset.to_be_bytes());
    }
    put_header(&mut out, mdat_len, b"mdat");
    out.extend_from_slice(data);
    Ok(out)
}

impl TrackConfig {
    fn defaults(&self) -> SampleDefaults {
        SampleDefaults {
            duration: self.default_sample_duration,
            size: self.default_sample_size,
            flags: self.default_sample_flags,
        }
    }
}

/// Most samples one fragment may hold; a 2-second fragment has about 100.
const MAX_SAMPLES: usize = 1 << 20;

/// `sample_is_non_sync_sample` in a sample's flags.
const NON_SYNC: u32 = 0x0001_0000;
/// The flags of a sync sample that depends on no other (`sample_depends_on` 2).
const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;

const TFHD_BASE_DATA_OFFSET: u32 = 0x01;
const TFHD_SAMPLE_DESCRIPTION_INDEX: u32 = 0x02;
const TFHD_DURATION: u32 = 0x08;
const TFHD_SIZE: u32 = 0x10;
const TFHD_FLAGS: u32 = 0x20;
const TFHD_DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;

const TRUN_DATA_OFFSET: u32 = 0x001;
const TRUN_FIRST_FLAGS: u32 = 0x004;
const TRUN_DURATION: u32 = 0x100;
const TRUN_SIZE: u32 = 0x200;
const TRUN_FLAGS: u32 = 0x400;
const TRUN_CTO: u32 = 0x800;

/// Per-sample values that a run may leave out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SampleDefaults {
    pub(crate) duration: u32,
    pub(crate) size: u32,
    pub(crate) flags: u32,
}

/// Reads the defaults of a `trex` box body.
pub(crate) fn parse_trex(trex: &[u8]) -> Result<SampleDefaults, Error> {
    let mut r = Reader::new(trex);
    full_box(&mut r)?;
    // track_ID, default_sample_description_index.
    r.skip(8)?;
    Ok(SampleDefaults {
        duration: r.u32()?,
        size: r.u32()?,
        flags: r.u32()?,
    })
}

/// The media time of the first edit that is not empty (an empty edit, media
/// time -1, only delays the track); 0 when every edit is empty.
fn first_edit_media_time(elst: &[u8]) -> Result<i64, Error> {
    let mut r = Reader::new(elst);
    let (version, _) = full_box(&mut r)?;
    let count = r.u32()? as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    if count.saturating_mul(entry_len) > r.remaining() {
        return Err(Error::Truncated);
    }
    for _ in 0..count {
        let media_time = if version == 1 {
            r.skip(8)?;
            r.u64()? as i64
        } else {
            r.skip(4)?;
            i64::from(r.i32()?)
        };
        // media_rate_integer and media_rate_fraction.
        r.skip(4)?;
        match media_time {
            -1 => continue,
            t if t < 0 => return Err(Error::Malformed("negative edit media time")),
            t => return Ok(t),
        }
    }
    Ok(0)
}

/// Reads an `avcC` body (ISO/IEC 14496-15 5.3.3.1).
fn parse_avcc(avcc: &[u8]) -> Result<VideoConfig, Error> {
    let mut r = Reader::new(avcc);
    if r.u8()? != 1 {
        return Err(Error::Unsupported("avcC version"));
    }
    // Profile, compatibility, level.
    r.skip(3)?;
    let nal_length_size = (r.u8()? & 0x03) + 1;
    if nal_length_size == 3 {
        return Err(Error::Malformed("avcC NAL length size of 3"));
    }
    let sps_count = usize::from(r.u8()? & 0x1f);
    let sps = parameter_sets(&mut r, sps_count)?;
    let pps_count = usize::from(r.u8()?);
    let pps = parameter_sets(&mut r, pps_count)?;
    // High profiles append chroma and bit depth fields; the muxer needs none.
    Ok(VideoConfig {
        nal_length_size,
        sps,
        pps,
    })
}

/// `count` parameter sets, each after a 16-bit length.
fn parameter_sets(r: &mut Reader<'_>, count: usize) -> Result<Vec<Vec<u8>>, Error> {
    if count.saturating_mul(2) > r.remaining() {
        return Err(Error::Truncated);
    }
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        sets.push(r.take(len)?.to_vec());
    }
    Ok(sets)
}

/// Reads the start of an AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1):
/// object type, sampling frequency index and channel configuration. For
/// explicitly signalled SBR (object type 5 or 29) these are the core
/// layer's fields.
fn parse_audio_specific_config(asc: &[u8]) -> Result<AudioConfig, Error> {
    let mut b = Bits::new(asc);
    let mut object_type = b.read(5)? as u8;
    if object_type == 31 {
        object_type = 32 + b.read(6)? as u8;
    }
    let mut sample_rate_index = b.read(4)? as u8;
    if sample_rate_index == 15 {
        let rate = b.read(24)?;
        sample_rate_index =
            SAMPLE_RATES
                .iter()
                .position(|r| *r == rate)
                .ok_or(Error::Unsupported(
                    "AAC sampling rate without a standard index",
                ))? as u8;
    }
    if sample_rate_index > 12 {
        return Err(Error::Malformed("reserved AAC sampling frequency index"));
    }
    let channels = b.read(4)? as u8;
    Ok(AudioConfig {
        object_type,
        sample_rate_index,
        channels,
    })
}

/// The sampling frequencies of indexes 0 to 12 (ISO/IEC 14496-3 table 1.18).
const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// A big-endian bit reader that fails instead of panicking.
struct Bits<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Bits { bytes, pos: 0 }
    }

    /// The next `n` bits (at most 32).
    fn read(&mut self, n: usize) -> Result<u32, Error> {
        let mut v = 0u32;
        for _ in 0..n.min(32) {
            let byte = self.bytes.get(self.pos / 8).ok_or(Error::Truncated)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }
}

/// The type, header length and whole length of the box at the start of
/// `bytes`, checked to lie within them.
fn top_box(bytes: &[u8]) -> Result<([u8; 4], usize, usize), Error> {
    let header = BoxHeader::parse(bytes)?;
    let len = match header.size {
        Some(s) => usize::try_from(s).map_err(|_| Error::Truncated)?,
        None => bytes.len(),
    };
    // 8 or 16, as BoxHeader::parse read it.
    let header_len = header.header_len as usize;
    if len > bytes.len() {
        return Err(Error::Truncated);
    }
    if len < header_len {
        return Err(Error::Malformed("box size smaller than its header"));
    }
    Ok((header.kind, header_len, len))
}

/// Where the parts of a fragment lie.
struct Layout<'a> {
    /// The `moof` payload (after its header).
    moof: &'a [u8],
    /// The `mdat` payload's positions in the fragment.
    mdat: Range<usize>,
}

fn layout(fragment: &[u8]) -> Result<Layout<'_>, Error> {
    let (kind, header_len, moof_len) = top_box(fragment)?;
    if &kind != b"moof" {
        return Err(Error::Malformed("fragment does not start with moof"));
    }
    let moof = fragment.get(header_len..moof_len).ok_or(Error::Truncated)?;
    let mut pos = moof_len;
    // Each box is at least 8 bytes long, so this ends.
    while let Some(rest) = fragment.get(pos..).filter(|r| !r.is_empty()) {
        let (kind, header_len, len) = top_box(rest)?;
        if &kind == b"mdat" {
            return Ok(Layout {
                moof,
                mdat: pos + header_len..pos + len,
            });
        }
        pos += len;
    }
    Err(Error::MissingBox("mdat"))
}

/// The one `traf` of a `moof`, with its `tfhd` read.
struct Traf<'a> {
    track_id: u32,
    /// The `trex` defaults with the `tfhd`'s over them.
    defaults: SampleDefaults,
    /// From `tfdt`, if present.
    decode_time: Option<u64>,
    /// The `traf` payload, for its `trun` boxes.
    body: &'a [u8],
}

fn parse_traf(moof: &[u8], trex: SampleDefaults) -> Result<Traf<'_>, Error> {
    let mut traf = None;
    for child in children(moof) {
        let child = child?;
        if &child.kind == b"traf" {
            if traf.is_some() {
                return Err(Error::Unsupported("more than one traf in a moof"));
            }
            traf = Some(child.body);
        }
    }
    let body = traf.ok_or(Error::MissingBox("traf"))?;
    let tfhd = find(body, b"tfhd")?.ok_or(Error::MissingBox("tfhd"))?;
    let mut r = Reader::new(tfhd);
    let (_, flags) = full_box(&mut r)?;
    let track_id = r.u32()?;
    if flags & TFHD_BASE_DATA_OFFSET != 0 {
        return Err(Error::Unsupported(
            "tfhd base data offset: sample positions relative to the file",
        ));
    }
    if flags & TFHD_SAMPLE_DESCRIPTION_INDEX != 0 && r.u32()? != 1 {
        return Err(Error::Unsupported(
            "a sample description other than the first",
        ));
    }
    let mut defaults = trex;
    if flags & TFHD_DURATION != 0 {
        defaults.duration = r.u32()?;
    }
    if flags & TFHD_SIZE != 0 {
        defaults.size = r.u32()?;
    }
    if flags & TFHD_FLAGS != 0 {
        defaults.flags = r.u32()?;
    }
    let decode_time = match find(body, b"tfdt")? {
        Some(tfdt) => {
            let mut r = Reader::new(tfdt);
            let (version, _) = full_box(&mut r)?;
            Some(if version == 1 {
                r.u64()?
            } else {
                u64::from(r.u32()?)
            })
        }
        None => None,
    };
    Ok(Traf {
        track_id,
        defaults,
        decode_time,
        body,
    })
}

/// A `trun` whose header is read; its per-sample entries follow.
struct Trun<'a> {
    version: u8,
    flags: u32,
    count: usize,
    data_offset: Option<i32>,
    first_flags: Option<u32>,
    entries: Reader<'a>,
}

/// The values of one sample of a run, defaults filled in.
struct Entry {
    duration: u32,
    size: u32,
    flags: u32,
    cts_offset: i64,
}

fn parse_trun(body: &[u8]) -> Result<Trun<'_>, Error> {
    let mut r = Reader::new(body);
    let (version, flags) = full_box(&mut r)?;
    let count = r.u32()? as usize;
    let data_offset = if flags & TRUN_DATA_OFFSET != 0 {
        Some(r.i32()?)
    } else {
        None
    };
    let first_flags = if flags & TRUN_FIRST_FLAGS != 0 {
        Some(r.u32()?)
    } else {
        None
    };
    if count > MAX_SAMPLES {
        return Err(Error::Malformed("too many samples in one fragment"));
    }
    let fields = [TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_CTO]
        .iter()
        .filter(|f| flags & **f != 0)
        .count();
    // count is at most 2^20 here: no overflow.
    if count * fields * 4 > r.remaining() {
        return Err(Error::Truncated);
    }
    Ok(Trun {
        version,
        flags,
        count,
        data_offset,
        first_flags,
        entries: r,
    })
}

impl Trun<'_> {
    /// Reads the next sample's entry; `first` for the run's first sample,
    /// whose flags `first_sample_flags` overrides.
    fn next_entry(&mut self, first: bool, defaults: &SampleDefaults) -> Result<Entry, Error> {
        let r = &mut self.entries;
        let duration = if self.flags & TRUN_DURATION != 0 {
            r.u32()?
        } else {
            defaults.duration
        };
        let size = if self.flags & TRUN_SIZE != 0 {
            r.u32()?
        } else {
            defaults.size
        };
        // Read even when first_sample_flags wins, to stay aligned.
        let own_flags = if self.flags & TRUN_FLAGS != 0 {
            Some(r.u32()?)
        } else {
            None
        };
        let flags = match (first, self.first_flags, own_flags) {
            (true, Some(f), _) => f,
            (_, _, Some(f)) => f,
            _ => defaults.flags,
        };
        let cts_offset = if self.flags & TRUN_CTO == 0 {
            0
        } else if self.version == 0 {
            i64::from(r.u32()?)
        } else {
            i64::from(r.i32()?)
        };
        Ok(Entry {
            duration,
            size,
            flags,
            cts_offset,
        })
    }
}

/// Where a run's data starts, relative to the `moof`: at its data offset,
/// or else right after the previous run's data (`next`; the `moof` start
/// for the first run, which is the base with or without
/// `default-base-is-moof` in a one-track fragment).
fn run_start(run: &Trun<'_>, next: usize) -> Result<usize, Error> {
    match run.data_offset {
        Some(offset) => {
            usize::try_from(offset).map_err(|_| Error::Malformed("sample data before the moof"))
        }
        None => Ok(next),
    }
}

/// The track id of the fragment's `tfhd`, and its samples.
fn read_samples(cfg: &TrackConfig, fragment: &[u8]) -> Result<(u32, Vec<Sample>), Error> {
    let layout = layout(fragment)?;
    let traf = parse_traf(layout.moof, cfg.defaults())?;
    let mut dts = traf.decode_time.ok_or(Error::MissingBox("tfdt"))?;
    if dts > MAX_TICKS {
        return Err(Error::Malformed("decode time out of range"));
    }
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = 0usize;
    for child in children(traf.body) {
        let child = child?;
        if &child.kind != b"trun" {
            continue;
        }
        let mut run = parse_trun(child.body)?;
        if run.count > MAX_SAMPLES - samples.len() {
            return Err(Error::Malformed("too many samples in one fragment"));
        }
        let mut pos = run_start(&run, next)?;
        // Runs without per-sample fields pass the check in parse_trun at
        // any count; their samples must still fit in the mdat one by one.
        samples.reserve(run.count.min(layout.mdat.len()));
        for i in 0..run.count {
            let entry = run.next_entry(i == 0, &traf.defaults)?;
            let size = entry.size as usize;
            let end = pos
                .checked_add(size)
                .ok_or(Error::Malformed("sample data outside the mdat"))?;
            if pos < layout.mdat.start || end > layout.mdat.end {
                return Err(Error::Malformed("sample data outside the mdat"));
            }
            samples.push(Sample {
                dts,
                cts_offset: entry.cts_offset,
                duration: entry.duration,
                offset: pos,
                size,
                keyframe: entry.flags & NON_SYNC == 0,
            });
            dts = dts
                .checked_add(u64::from(entry.duration))
                .filter(|t| *t <= MAX_TICKS)
                .ok_or(Error::Malformed("decode time out of range"))?;
            pos = end;
        }
        next = pos;
    }
    Ok((traf.track_id, samples))
}

fn put_header(out: &mut Vec<u8>, len: u32, kind: &[u8; 4]) {
    put_u32(out, len);
    out.extend_from_slice(kind);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mp4::write_box;

    fn full(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut b = ((u32::from(version) << 24) | flags).to_be_bytes().to_vec();
        b.extend_from_slice(body);
        write_box(kind, &b)
    }

    /// A one-track init segment. `entry` is the whole sample entry box,
    /// `edts` a whole `edts` box or nothing, `trex` the default duration,
    /// size and flags.
    fn init_segment(
        handler: &[u8; 4],
        timescale: u32,
        entry: &[u8],
        edts: &[u8],
        trex: [u32; 3],
    ) -> Vec<u8> {
        let mut mdhd = vec![0u8; 8];
        mdhd.extend_from_slice(&timescale.to_be_bytes());
        mdhd.extend_from_slice(&[0, 0, 0, 0, 0x55, 0xc4, 0, 0]);
        let mdhd = full(b"mdhd", 0, 0, &mdhd);
        let mut hdlr = vec![0u8; 4];
        hdlr.extend_from_slice(handler);
        hdlr.extend_from_slice(&[0; 13]);
        let hdlr = full(b"hdlr", 0, 0, &hdlr);
        let mut stsd = 1u32.to_be_bytes().to_vec();
        stsd.extend_from_slice(entry);
        let stsd = full(b"stsd", 0, 0, &stsd);
        let minf = write_box(b"minf", &write_box(b"stbl", &stsd));
        let mdia = write_box(b"mdia", &[mdhd, hdlr, minf].concat());
        let trak = write_box(b"trak", &[edts, mdia.as_slice()].concat());
        let mut trex_body = vec![0, 0, 0, 1, 0, 0, 0, 1];
        for v in trex {
            trex_body.extend_from_slice(&v.to_be_bytes());
        }
        let mvex = write_box(b"mvex", &full(b"trex", 0, 0, &trex_body));
        let moov = write_box(b"moov", &[trak, mvex].concat());
        [write_box(b"ftyp", b"iso60000iso6"), moov].concat()
    }

    const AVCC: [u8; 19] = [
        1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 4, 0x68, 0xee, 0x3c, 0x80,
    ];

    /// An ES_Descriptor with an AAC-LC 48 kHz stereo AudioSpecificConfig.
    const ESDS: [u8; 28] = [
        0, 0, 0, 0, 3, 25, 0, 1, 0, 4, 17, 0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 2, 0x11,
        0x90,
    ];

    fn avc1_entry(avcc: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; 78];
        body[7] = 1;
        body[24..28].copy_from_slice(&[1, 64, 0, 180]);
        body.extend(write_box(b"avcC", avcc));
        write_box(b"avc1", &body)
    }

    fn mp4a_entry(esds: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; 28];
        body[7] = 1;
        body[17] = 2;
        body[24..26].copy_from_slice(&48000u16.to_be_bytes());
        body.extend(write_box(b"esds", esds));
        write_box(b"mp4a", &body)
    }

    fn video_init(trex: [u32; 3]) -> Vec<u8> {
        init_segment(b"vide", 12800, &avc1_entry(&AVCC), &[], trex)
    }

    /// One `trun`. Each sample is [duration, size, flags, composition
    /// offset], of which only the fields `flags` selects are written.
    /// `data_at`, if any, is where the run's data starts in the mdat payload.
    struct Run {
        version: u8,
        flags: u32,
        first_flags: Option<u32>,
        data_at: Option<i64>,
        samples: Vec<[u32; 4]>,
    }

    impl Run {
        fn new(flags: u32, samples: Vec<[u32; 4]>) -> Run {
            Run {
                version: 0,
                flags,
                first_flags: None,
                data_at: Some(0),
                samples,
            }
        }
    }

    /// A moof (one traf: tfhd with `tfhd_flags` and `tfhd_fields` after the
    /// track id, tfdt, the runs) followed by an mdat holding `payload`.
    fn fragment(
        tfhd_flags: u32,
        tfhd_fields: &[u32],
        decode_time: u64,
        runs: &[Run],
        payload: &[u8],
    ) -> Vec<u8> {
        let build = |moof_len: i64| {
            let mut tfhd = 1u32.to_be_bytes().to_vec();
            for f in tfhd_fields {
                tfhd.extend_from_slice(&f.to_be_bytes());
            }
            let mut traf = full(b"tfhd", 0, tfhd_flags, &tfhd);
            traf.extend(full(b"tfdt", 1, 0, &decode_time.to_be_bytes()));
            for run in runs {
                let mut flags = run.flags;
                let mut body = (run.samples.len() as u32).to_be_bytes().to_vec();
                if let Some(at) = run.data_at {
                    flags |= TRUN_DATA_OFFSET;
                    body.extend_from_slice(&((moof_len + 8 + at) as i32).to_be_bytes());
                }
                if let Some(f) = run.first_flags {
                    flags |= TRUN_FIRST_FLAGS;
                    body.extend_from_slice(&f.to_be_bytes());
                }
                for s in &run.samples {
                    for (bit, v) in [TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_CTO]
                        .iter()
                        .zip(s)
                    {
                        if flags & *bit != 0 {
                            body.extend_from_slice(&v.to_be_bytes());
                        }
                    }
                }
                traf.extend(full(b"trun", run.version, flags, &body));
            }
            let mut moof = full(b"mfhd", 0, 0, &1u32.to_be_bytes());
            moof.extend(write_box(b"traf", &traf));
            write_box(b"moof", &moof)
        };
        let moof_len = build(0).len() as i64;
        let mut out = build(moof_len);
        out.extend(write_box(b"mdat", payload));
        out
    }

    const NON_KEY: u32 = 0x0101_0000;

    /// Three samples: a keyframe of 5 bytes, then 3 and 2 bytes, with sizes
    /// and composition offsets per sample and durations from elsewhere.
    fn three_samples(version: u8, ctos: [u32; 3]) -> (Run, Vec<u8>) {
        let run = Run {
            version,
            first_flags: Some(SYNC_SAMPLE_FLAGS),
            ..Run::new(
                TRUN_SIZE | TRUN_CTO,
                vec![[0, 5, 0, ctos[0]], [0, 3, 0, ctos[1]], [0, 2, 0, ctos[2]]],
            )
        };
        (run, (1..=10).collect())
    }

    #[test]
    fn avcc_from_ffmpeg() {
        // libx264 High profile at 320x180, as FFmpeg 5.1 writes it.
        let avcc = [
            0x01, 0x64, 0x00, 0x0c, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x0c, 0xac, 0xd9,
            0x41, 0x41, 0x9f, 0x9f, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03,
            0x03, 0x20, 0xf1, 0x42, 0x99, 0x60, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22,
            0xc0, 0xfd, 0xf8, 0xf8, 0x00,
        ];
        let cfg = parse_avcc(&avcc).unwrap();
        assert_eq!(cfg.nal_length_size, 4);
        assert_eq!(cfg.sps.len(), 1);
        assert_eq!(cfg.sps[0].len(), 26);
        assert_eq!(&cfg.sps[0][..4], &[0x67, 0x64, 0x00, 0x0c]);
        assert_eq!(cfg.pps, vec![vec![0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]]);

        // 31 SPS claimed, none there: refused before allocating.
        assert_eq!(
            parse_avcc(&[1, 0x64, 0, 0x1f, 0xff, 0xff]),
            Err(Error::Truncated)
        );
        let mut three = AVCC;
        three[4] = 0xfe;
        assert!(parse_avcc(&three).is_err(), "NAL length size 3");
        for n in 0..AVCC.len() {
            assert!(parse_avcc(&AVCC[..n]).is_err(), "prefix of {n}");
        }
    }

    #[test]
    fn audio_specific_configs() {
        let asc = |b: &[u8]| parse_audio_specific_config(b);
        let cfg = |object_type, sample_rate_index, channels| AudioConfig {
            object_type,
            sample_rate_index,
            channels,
        };
        // AAC-LC, 48 kHz, stereo.
        assert_eq!(asc(&[0x11, 0x90]), Ok(cfg(2, 3, 2)));
        // Escaped object type 42 (31, then 6 bits of 10), 48 kHz, stereo.
        assert_eq!(asc(&[0xF9, 0x46, 0x40]), Ok(cfg(42, 3, 2)));
        // Index 15, then 48000 in 24 bits: mapped to index 3.
        assert_eq!(asc(&[0x17, 0x80, 0x5D, 0xC0, 0x10]), Ok(cfg(2, 3, 2)));
        // 12345 Hz has no index.
        assert!(matches!(
            asc(&[0x17, 0x80, 0x18, 0x1C, 0x90]),
            Err(Error::Unsupported(_))
        ));
        // Index 13 is reserved.
        assert!(asc(&[0x16, 0x90]).is_err());
        assert_eq!(asc(&[0x11]), Err(Error::Truncated));
        assert_eq!(asc(&[]), Err(Error::Truncated));
    }

    #[test]
    fn init_segments() {
        let trex = [512, 100, NON_KEY];
        let cfg = parse_init(&video_init(trex)).unwrap();
        assert_eq!(cfg.timescale, 12800);
        assert_eq!(cfg.kind, TrackKind::Video);
        assert_eq!(
            (
                cfg.default_sample_duration,
                cfg.default_sample_size,
                cfg.default_sample_flags
            ),
            (512, 100, NON_KEY)
        );
        assert_eq!(cfg.media_time, 0, "no edit list");
        let CodecConfig::Avc(avc) = &cfg.codec else {
            panic!("{:?}", cfg.codec)
        };
        assert_eq!(avc.nal_length_size, 4);
        assert_eq!(avc.sps, vec![vec![0x67, 0x64, 0, 0x1f]]);
        assert_eq!(avc.pps, vec![vec![0x68, 0xee, 0x3c, 0x80]]);

        // An empty edit, then one starting at media time 1024.
        let mut elst = 2u32.to_be_bytes().to_vec();
        for (duration, media_time) in [(1000u32, -1i32), (5000, 1024)] {
            elst.extend_from_slice(&duration.to_be_bytes());
            elst.extend_from_slice(&media_time.to_be_bytes());
            elst.extend_from_slice(&[0, 1, 0, 0]);
        }
        let edts = write_box(b"edts", &full(b"elst", 0, 0, &elst));
        let init = init_segment(b"vide", 12800, &avc1_entry(&AVCC), &edts, trex);
        assert_eq!(parse_init(&init).unwrap().media_time, 1024);

        let mut elst = 1u32.to_be_bytes().to_vec();
        elst.extend_from_slice(&5000u64.to_be_bytes());
        elst.extend_from_slice(&2048i64.to_be_bytes());
        elst.extend_from_slice(&[0, 1, 0, 0]);
        let edts = write_box(b"edts", &full(b"elst", 1, 0, &elst));
        let init = init_segment(b"vide", 12800, &avc1_entry(&AVCC), &edts, trex);
        assert_eq!(parse_init(&init).unwrap().media_time, 2048);

        // An entry count the box cannot hold.
        let edts = write_box(b"edts", &full(b"elst", 0, 0, &u32::MAX.to_be_bytes()));
        let init = init_segment(b"vide", 12800, &avc1_entry(&AVCC), &edts, trex);
        assert_eq!(parse_init(&init), Err(Error::Truncated));

        let init = init_segment(b"soun", 48000, &mp4a_entry(&ESDS), &[], [1024, 0, 0]);
        let cfg = parse_init(&init).unwrap();
        assert_eq!(cfg.kind, TrackKind::Audio);
        assert_eq!(
            cfg.codec,
            CodecConfig::Aac(AudioConfig {
                object_type: 2,
                sample_rate_index: 3,
                channels: 2
            })
        );

        // Other codecs are read, not configured.
        let mut hvc1 = avc1_entry(&AVCC);
        hvc1[4..8].copy_from_slice(b"hvc1");
        let init = init_segment(b"vide", 90000, &hvc1, &[], trex);
        assert_eq!(parse_init(&init).unwrap().codec, CodecConfig::Other);
    }

    #[test]
    fn durations_from_trex_tfhd_or_each_sample() {
        let cfg = parse_init(&video_init([512, 0, NON_KEY])).unwrap();
        let (run, payload) = three_samples(0, [0; 3]);
        let frag = fragment(0x02_0000, &[], 1000, &[run], &payload);
        let samples = parse_fragment(&cfg, &frag).unwrap();
        let dts: Vec<u64> = samples.iter().map(|s| s.dts).collect();
        assert_eq!(dts, [1000, 1512, 2024], "durations from trex");
        let keys: Vec<bool> = samples.iter().map(|s| s.keyframe).collect();
        assert_eq!(keys, [true, false, false], "first_sample_flags, then trex");
        assert_eq!(
            samples.iter().map(|s| s.size).collect::<Vec<_>>(),
            [5, 3, 2]
        );
        let mdat_start = frag.len() - payload.len();
        assert_eq!(samples[0].offset, mdat_start);
        assert_eq!(samples[2].offset, mdat_start + 8);
        assert_eq!(&frag[samples[1].offset..][..3], &[6, 7, 8]);

        // tfhd default duration and flags over trex.
        let (run, _) = three_samples(0, [0; 3]);
        let frag = fragment(0x02_0028, &[400, NON_KEY], 0, &[run], &payload);
        let samples = parse_fragment(&cfg, &frag).unwrap();
        assert_eq!(samples[2].dts, 800);
        assert_eq!(samples[2].duration, 400);

        // Durations and flags per sample over both.
        let run = Run::new(
            TRUN_DURATION | TRUN_SIZE | TRUN_FLAGS,
            vec![[10, 4, 0, 0], [20, 6, SYNC_SAMPLE_FLAGS, 0]],
        );
        let frag = fragment(0x02_0008, &[400], 0, &[run], &payload);
        let samples = parse_fragment(&cfg, &frag).unwrap();
        assert_eq!(
            samples
                .iter()
                .map(|s| (s.dts, s.duration, s.keyframe))
                .collect::<Vec<_>>(),
            [(0, 10, true), (10, 20, true)]
        );

        // Two runs; the second, without a data offset, follows the first.
        let second = Run {
            data_at: None,
            ..Run::new(TRUN_SIZE, vec![[0, 4, 0, 0]])
        };
        let runs = [Run::new(TRUN_SIZE, vec![[0, 6, 0, 0]]), second];
        let frag = fragment(0x02_0000, &[], 0, &runs, &payload);
        let samples = parse_fragment(&cfg, &frag).unwrap();
        assert_eq!(samples[1].offset, samples[0].offset + 6);
        assert_eq!(samples[1].dts, 512);
        assert_eq!(
            first_sample_end(&frag, 0).unwrap(),
            (samples[0].offset + 6) as u64
        );
    }

    #[test]
    fn composition_offsets() {
        let cfg = parse_init(&video_init([512, 0, NON_KEY])).unwrap();
        // Version 1: signed.
        let (run, payload) = three_samples(1, [1024, (-512i32) as u32, 0]);
        let frag = fragment(0x02_0000, &[], 0, &[run], &payload);
        let ctos: Vec<i64> = parse_fragment(&cfg, &frag)
            .unwrap()
            .iter()
            .map(|s| s.cts_offset)
            .collect();
        assert_eq!(ctos, [1024, -512, 0]);
        // Version 0: unsigned, as FFmpeg writes them.
        let (run, payload) = three_samples(0, [1024, (-512i32) as u32, 0]);
        let frag = fragment(0x02_0000, &[], 0, &[run], &payload);
        let samples = parse_fragment(&cfg, &frag).unwrap();
        assert_eq!(samples[1].cts_offset, 0xFFFF_FE00);
    }

    #[test]
    fn samples_must_lie_in_the_mdat() {
        let cfg = parse_init(&video_init([512, 0, 0])).unwrap();
        let payload = [0u8; 10];
        let frag = |run: Run| fragment(0x02_0000, &[], 0, &[run], &payload);
        let refused = |run: Run| {
            assert!(matches!(
                parse_fragment(&cfg, &frag(run)),
                Err(Error::Malformed(_))
            ));
        };
        // One byte past the end.
        refused(Run::new(TRUN_SIZE, vec![[0, 6, 0, 0], [0, 5, 0, 0]]));
        // Starting inside the moof, or before it.
        refused(Run {
            data_at: Some(-4),
            ..Run::new(TRUN_SIZE, vec![[0, 2, 0, 0]])
        });
        refused(Run {
            data_at: Some(-100_000),
            ..Run::new(TRUN_SIZE, vec![[0, 2, 0, 0]])
        });
        // No data offset: the base is the moof itself.
        refused(Run {
            data_at: None,
            ..Run::new(TRUN_SIZE, vec![[0, 2, 0, 0]])
        });
        // A size near 2^32.
        refused(Run::new(TRUN_SIZE, vec![[0, u32::MAX, 0, 0]]));
        // Exactly filling it is fine.
        assert!(parse_fragment(&cfg, &frag(Run::new(TRUN_SIZE, vec![[0, 10, 0, 0]]))).is_ok());
        // Default sizes: a million samples of 1 byte do not fit in 10 bytes,
        // and are refused at the 11th, not allocated.
        let cfg1 = parse_init(&video_init([512, 1, 0])).unwrap();
        let many = Run::new(0, vec![[0; 4]; 0]);
        let mut bytes = frag(many);
        // Patch the run's sample count (the 4 bytes after its version and flags).
        let at = bytes.windows(4).position(|w| w == b"trun").unwrap() + 8;
        bytes[at..at + 4].copy_from_slice(&(1u32 << 20).to_be_bytes());
        assert!(matches!(
            parse_fragment(&cfg1, &bytes),
            Err(Error::Malformed(_))
        ));
        bytes[at..at + 4].copy_from_slice(&((1u32 << 20) + 1).to_be_bytes());
        assert!(parse_fragment(&cfg1, &bytes).is_err());
    }

    #[test]
    fn unsupported_layouts() {
        let cfg = parse_init(&video_init([512, 0, 0])).unwrap();
        let (run, payload) = three_samples(0, [0; 3]);
        // A base data offset is a file position this fragment cannot know.
        let frag = fragment(0x01, &[0, 0], 0, &[run], &payload);
        assert!(matches!(
            parse_fragment(&cfg, &frag),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            first_sample_end(&frag, 0),
            Err(Error::Unsupported(_))
        ));
        // Sample description 2 of a track that has only the first read.
        let (run, payload) = three_samples(0, [0; 3]);
        let frag = fragment(0x02_0002, &[2], 0, &[run], &payload);
        assert!(matches!(
            parse_fragment(&cfg, &frag),
            Err(Error::Unsupported(_))
        ));
        let (run, payload) = three_samples(0, [0; 3]);
        let frag = fragment(0x02_0002, &[1], 0, &[run], &payload);
        assert!(parse_fragment(&cfg, &frag).is_ok());
        // Not a moof first.
        assert!(parse_fragment(&cfg, &write_box(b"mdat", &payload)).is_err());
    }

    #[test]
    fn truncated_inputs_are_errors() {
        let init = video_init([512, 0, NON_KEY]);
        let cfg = parse_init(&init).unwrap();
        for n in 0..init.len() {
            assert!(parse_init(&init[..n]).is_err(), "init prefix of {n}");
        }
        let (run, payload) = three_samples(1, [0, 1, 2]);
        let frag = fragment(0x02_0000, &[], 0, &[run], &payload);
        let moof_len = frag.len() - payload.len() - 8;
        for n in 0..frag.len() {
            assert!(parse_fragment(&cfg, &frag[..n]).is_err(), "prefix of {n}");
            assert!(keyframe_fragment(&cfg, &frag[..n], 1).is_err());
            if n < moof_len {
                assert!(first_sample_end(&frag[..n], 0).is_err());
            }
        }
        // A fragment without an mdat.
        assert_eq!(
            parse_fragment(&cfg, &frag[..moof_len]),
            Err(Error::MissingBox("mdat"))
        );
    }

    #[test]
    fn keyframe_fragment_round_trips() {
        let cfg = parse_init(&video_init([512, 0, NON_KEY])).unwrap();
        for ctos in [[0, 0, 0], [1024, 2048, 0], [(-512i32) as u32, 0, 512]] {
            let (run, payload) = three_samples(1, ctos);
            let frag = fragment(0x02_0000, &[], 90_000, &[run], &payload);
            let original = parse_fragment(&cfg, &frag).unwrap();
            let key = keyframe_fragment(&cfg, &frag, 7).unwrap();
            let back = parse_fragment(&cfg, &key).unwrap();
            assert_eq!(back.len(), 1);
            let s = back[0];
            assert_eq!(s.dts, 90_000);
            assert_eq!(s.duration, 3 * 512, "the whole fragment's duration");
            assert_eq!(s.cts_offset, original[0].cts_offset);
            assert!(s.keyframe);
            assert_eq!(&key[s.offset..s.offset + s.size], &payload[..5]);
            assert_eq!(s.offset + s.size, key.len(), "nothing after the sample");
            assert_eq!(first_sample_end(&key, 0).unwrap(), key.len() as u64);
            // The sequence number and the tfhd's track id.
            let mfhd = key.windows(4).position(|w| w == b"mfhd").unwrap();
            assert_eq!(&key[mfhd + 8..mfhd + 12], &7u32.to_be_bytes());
            let tfhd = key.windows(4).position(|w| w == b"tfhd").unwrap();
            assert_eq!(&key[tfhd + 4..tfhd + 8], &0x0002_0000u32.to_be_bytes());
            assert_eq!(&key[tfhd + 8..tfhd + 12], &1u32.to_be_bytes());
            assert_eq!(crate::expect_boxes(&key, &[b"moof", b"mdat"]), Ok(()));
        }
        // A fragment that opens with a non-keyframe has no trick-mode sample.
        let (run, payload) = three_samples(0, [0; 3]);
        let run = Run {
            first_flags: None,
            ..run
        };
        let frag = fragment(0x02_0000, &[], 0, &[run], &payload);
        assert!(matches!(
            keyframe_fragment(&cfg, &frag, 1),
            Err(Error::Unsupported(_))
        ));
    }

    /// Tiny files made by FFmpeg 5.1 (commands in testdata/README.md).
    const TINY_H264: &[u8] = include_bytes!("../testdata/tiny_h264.mp4");
    const TINY_AAC: &[u8] = include_bytes!("../testdata/tiny_aac.mp4");

    /// The init segment and first fragment of a file, by its index.
    fn split(file: &[u8]) -> (&[u8], &[u8], crate::Fragment) {
        let index = crate::index_bytes(file).unwrap();
        let init = &file[..index.init_range.length as usize];
        let f = index.fragments[0];
        let start = f.range.offset as usize;
        (init, &file[start..start + f.range.length as usize], f)
    }

    #[test]
    fn ffmpeg_h264_fragment() {
        let (init, frag, f) = split(TINY_H264);
        let cfg = parse_init(init).unwrap();
        // FFmpeg writes no edit list into an empty moov; it shifts decode
        // times to start at 0 instead, so presentation starts at 1024.
        assert_eq!(cfg.media_time, 0);
        assert_eq!((cfg.timescale, cfg.default_sample_flags), (12800, 0));
        let CodecConfig::Avc(avc) = &cfg.codec else {
            panic!("{:?}", cfg.codec)
        };
        assert_eq!(avc.nal_length_size, 4);
        let samples = parse_fragment(&cfg, frag).unwrap();
        let got: Vec<_> = samples
            .iter()
            .map(|s| (s.dts, s.cts_offset, s.size, s.keyframe))
            .collect();
        assert_eq!(
            got,
            [
                (0, 1024, 716, true),
                (512, 2048, 9, false),
                (1024, 512, 9, false),
                (1536, 512, 9, false),
                (2048, 1024, 10, false),
            ]
        );
        let last = samples[4];
        assert_eq!(last.offset + last.size, frag.len());
        assert_eq!(f.key_length, (samples[0].offset + samples[0].size) as u64);
        assert_eq!(
            first_sample_end(frag, cfg.default_sample_size).unwrap(),
            f.key_length
        );

        let video: Vec<_> = samples
            .iter()
            .map(|s| crate::ts::VideoSample {
                dts: s.dts * 90_000 / 12_800,
                pts: (s.dts + s.cts_offset as u64) * 90_000 / 12_800,
                keyframe: s.keyframe,
                data: &frag[s.offset..s.offset + s.size],
            })
            .collect();
        let ts = crate::ts::mux_segment(Some((avc, video.as_slice())), None).unwrap();
        assert_eq!(ts.len() % crate::ts::PACKET, 0);

        let key = keyframe_fragment(&cfg, frag, 1).unwrap();
        let back = parse_fragment(&cfg, &key).unwrap();
        assert_eq!(back[0].duration, 5 * 512);
        assert_eq!(
            &key[back[0].offset..],
            &frag[samples[0].offset..][..samples[0].size]
        );
    }

    #[test]
    fn ffmpeg_aac_fragment() {
        let (init, frag, f) = split(TINY_AAC);
        let cfg = parse_init(init).unwrap();
        assert_eq!(
            cfg.media_time, 0,
            "AAC priming is not in an edit list either"
        );
        let CodecConfig::Aac(aac) = cfg.codec else {
            panic!("{:?}", cfg.codec)
        };
        assert_eq!(
            (aac.object_type, aac.sample_rate_index, aac.channels),
            (2, 3, 2)
        );
        let samples = parse_fragment(&cfg, frag).unwrap();
        assert_eq!(
            samples.iter().map(|s| s.duration).collect::<Vec<_>>(),
            [1024, 1024, 1024, 1024, 1024, 704]
        );
        assert!(samples.iter().all(|s| s.keyframe && s.cts_offset == 0));
        assert_eq!(f.key_length, (samples[0].offset + samples[0].size) as u64);
        let audio: Vec<_> = samples
            .iter()
            .map(|s| crate::ts::AudioSample {
                pts: s.dts * 90_000 / 48_000,
                data: &frag[s.offset..s.offset + s.size],
            })
            .collect();
        assert!(crate::ts::mux_segment(None, Some((&aac, audio.as_slice()))).is_ok());
    }
}

/// The shift [`shift_composition`] needs for a track: the first sample's
/// composition offset, when a video track presents its first frame after
/// its decode time; 0 otherwise.
pub fn composition_shift(cfg: &TrackConfig, first_fragment: &[u8]) -> Result<u32, Error> {
    if cfg.kind != TrackKind::Video {
        return Ok(0);
    }
    let samples = parse_fragment(cfg, first_fragment)?;
    Ok(samples
        .first()
        .map_or(0, |s| u32::try_from(s.cts_offset).unwrap_or(0)))
}

/// Moves presentation earlier by `shift` ticks in one `moof` box (header
/// included), in place: each `trun` becomes version 1 (signed composition
/// offsets) and every composition offset loses `shift`.
///
/// FFmpeg's fragmented MP4 has no edit list, so with B-frames the first
/// frame is presented two frames after its decode time while audio starts
/// at zero: 80 ms of lip-sync error in every player that honours the
/// timestamps. The origin runs this over each video fragment at ingest with
/// `shift` the first frame's offset, as CMAF asks: each segment's first
/// frame is then presented at its `tfdt`, with audio. Returns whether any
/// offset changed. The box keeps its size.
pub fn shift_composition(moof: &mut [u8], shift: u32) -> Result<bool, Error> {
    let (kind, header, size) = top_box(moof)?;
    if &kind != b"moof" || size != moof.len() {
        return Err(Error::Malformed("not one whole moof"));
    }
    let mut changed = false;
    for (traf_at, traf_len) in child_spans(moof, header, size, b"traf")? {
        let (_, traf_header, _) = top_box(&moof[traf_at..traf_at + traf_len])?;
        for (at, len) in child_spans(moof, traf_at + traf_header, traf_at + traf_len, b"trun")? {
            changed |= shift_trun(&mut moof[at..at + len], shift)?;
        }
    }
    Ok(changed)
}

/// Start and length of each child box of `kind` in `bytes[from..to]`.
fn child_spans(
    bytes: &[u8],
    from: usize,
    to: usize,
    kind: &[u8; 4],
) -> Result<Vec<(usize, usize)>, Error> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let (k, _, len) = top_box(bytes.get(at..to).ok_or(Error::Truncated)?)?;
        if &k == kind {
            out.push((at, len));
        }
        at += len;
    }
    Ok(out)
}

/// [`shift_composition`] for one `trun` box (header included).
fn shift_trun(trun: &mut [u8], shift: u32) -> Result<bool, Error> {
    let (_, header, _) = top_box(trun)?;
    let run = parse_trun(trun.get(header..).ok_or(Error::Truncated)?)?;
    if run.flags & TRUN_CTO == 0 || shift == 0 {
        return Ok(false);
    }
    let fields = [TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_CTO]
        .iter()
        .filter(|f| run.flags & **f != 0)
        .count();
    let version = run.version;
    let count = run.count;
    // Entries start after version/flags, count, and the optional fields.
    let mut at = header + 8;
    if run.data_offset.is_some() {
        at += 4;
    }
    if run.first_flags.is_some() {
        at += 4;
    }
    let cto_at = at + (fields - 1) * 4;
    for i in 0..count {
        let p = cto_at + i * fields * 4;
        let b = trun.get(p..p + 4).ok_or(Error::Truncated)?;
        let old = [b[0], b[1], b[2], b[3]];
        let offset = if version == 0 {
            i64::from(u32::from_be_bytes(old))
        } else {
            i64::from(i32::from_be_bytes(old))
        };
        let new = i32::try_from(offset - i64::from(shift))
            .map_err(|_| Error::Malformed("composition offset out of range"))?;
        trun[p..p + 4].copy_from_slice(&new.to_be_bytes());
    }
    trun[header] = 1;
    Ok(true)
}

#[cfg(test)]
mod shift_tests {
    use super::*;

    #[test]
    fn real_h264_first_frame_lands_on_its_decode_time() {
        let file = include_bytes!("../testdata/tiny_h264.mp4");
        let (_, _, ftyp) = top_box(file).unwrap();
        let (_, _, moov) = top_box(&file[ftyp..]).unwrap();
        let init = &file[..ftyp + moov];
        let cfg = parse_init(init).unwrap();
        let frag_at = ftyp + moov;
        let frag = file[frag_at..].to_vec();
        let before = parse_fragment(&cfg, &frag).unwrap();
        let shift = composition_shift(&cfg, &frag).unwrap();
        assert_eq!(i64::from(shift), before[0].cts_offset);
        assert!(shift > 0, "the test file has B-frames");
        let (_, _, moof_len) = top_box(&frag).unwrap();
        let mut shifted = frag.clone();
        assert!(shift_composition(&mut shifted[..moof_len], shift).unwrap());
        let after = parse_fragment(&cfg, &shifted).unwrap();
        assert_eq!(after[0].cts_offset, 0);
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(a.cts_offset - i64::from(shift), b.cts_offset);
            assert_eq!(
                (a.dts, a.size, a.offset, a.keyframe),
                (b.dts, b.size, b.offset, b.keyframe)
            );
        }
        // Shifting by zero changes nothing; a truncated box is an error.
        let mut same = frag.clone();
        assert!(!shift_composition(&mut same[..moof_len], 0).unwrap());
        assert_eq!(same, frag);
        assert!(shift_composition(&mut shifted[..moof_len - 3], 1).is_err());
    }
}
