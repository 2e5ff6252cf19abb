//! Indexing a fragmented MP4 once, at ingest, so that packaging never scans media.
//!
//! The caller owns the IO: it reads each top-level box header with
//! [`BoxHeader::parse`], hands whole `moov` and `moof` boxes to an
//! [`Indexer`], and skips `mdat` payloads by offset. This keeps the indexer
//! pure and lets it work on files far larger than memory.

use crate::manifest::{ByteRange, Fragment, TrackKind};
use crate::mp4::{children, find, find_path, full_box, BoxHeader, Child, Reader};
use crate::Error;

/// What the `moov` box says about the one track of a mezzanine file.
#[derive(Debug, Clone, PartialEq)]
pub struct InitInfo {
    /// Video or audio.
    pub kind: TrackKind,
    /// The track's media timescale (ticks per second).
    pub timescale: u32,
    /// An RFC 6381 codec string derived from the sample entry.
    pub codec: String,
    /// Coded width and height, video only.
    pub width: u32,
    /// See `width`.
    pub height: u32,
    /// Sample rate, audio only.
    pub sample_rate: u32,
    /// Channel count, audio only.
    pub channels: u16,
    /// ISO 639-2/T language from `mdhd`, such as `und` or `eng`.
    pub language: String,
    default_sample_duration: u32,
    default_sample_size: u32,
}

/// Builds the fragment list of one track from its top-level boxes, in file order.
#[derive(Debug, Default)]
pub struct Indexer {
    init: Option<InitInfo>,
    init_end: Option<u64>,
    fragments: Vec<Fragment>,
    pending_moof: Option<PendingMoof>,
    samples: u64,
}

#[derive(Debug)]
struct PendingMoof {
    offset: u64,
    decode_time: u64,
    duration: u64,
    samples: u32,
    /// Bytes from the moof's start to the end of its first sample, if the
    /// moof says (checked against the mdat when it comes).
    key_end: Option<u64>,
}

/// The result of indexing one file.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackIndex {
    /// From `moov`.
    pub init: InitInfo,
    /// `ftyp` and `moov`: the init segment.
    pub init_range: ByteRange,
    /// Each `moof` with its `mdat`.
    pub fragments: Vec<Fragment>,
    /// Samples over all fragments (video frames or audio frames).
    pub samples: u64,
}

impl Indexer {
    /// Starts an empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one top-level box. `body` must be the whole box, header included,
    /// for `moov` and `moof`; for any other box only the header is looked at,
    /// so the caller need not read an `mdat` payload.
    pub fn push(&mut self, offset: u64, header: &BoxHeader, body: &[u8]) -> Result<(), Error> {
        let size = header
            .size
            .ok_or(Error::Malformed("box runs to end of file"))?;
        let payload = body
            .get(header.header_len as usize..)
            .ok_or(Error::Truncated)?;
        match &header.kind {
            b"moov" => {
                if self.init.is_some() {
                    return Err(Error::Malformed("second moov"));
                }
                self.init = Some(parse_moov(payload)?);
                self.init_end = Some(offset + size);
            }
            b"moof" => {
                let init = self
                    .init
                    .as_ref()
                    .ok_or(Error::Malformed("moof before moov"))?;
                if self.pending_moof.is_some() {
                    return Err(Error::Malformed("moof without mdat"));
                }
                let (decode_time, duration, samples) =
                    parse_moof(payload, init.default_sample_duration)?;
                // An unknown I-frame range is no reason to refuse the file.
                let key_end = crate::fmp4::first_sample_end(body, init.default_sample_size).ok();
                self.pending_moof = Some(PendingMoof {
                    offset,
                    decode_time,
                    duration,
                    samples,
                    key_end,
                });
            }
            b"mdat" => {
                let moof = self
                    .pending_moof
                    .take()
                    .ok_or(Error::Malformed("mdat without moof"))?;
                let end = offset + size;
                let length = end - moof.offset;
                self.samples += u64::from(moof.samples);
                // The first sample must end inside this mdat's payload;
                // otherwise its byte range stays unknown (0).
                let payload_start = offset
                    .checked_add(header.header_len)
                    .and_then(|p| p.checked_sub(moof.offset));
                let key_length = match (moof.key_end, payload_start) {
                    (Some(k), Some(start)) if k > start && k <= length => k,
                    _ => 0,
                };
                self.fragments.push(Fragment {
                    range: ByteRange {
                        offset: moof.offset,
                        length,
                    },
                    start: moof.decode_time,
                    duration: moof.duration,
                    key_length,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether a box of this type must be passed whole to [`Indexer::push`].
    pub fn wants_body(kind: &[u8; 4]) -> bool {
        kind == b"moov" || kind == b"moof"
    }

    /// Ends the index.
    pub fn finish(self) -> Result<TrackIndex, Error> {
        if self.pending_moof.is_some() {
            return Err(Error::Malformed("file ends after a moof"));
        }
        let init = self.init.ok_or(Error::MissingBox("moov"))?;
        let init_end = self.init_end.ok_or(Error::MissingBox("moov"))?;
        if self.fragments.is_empty() {
            return Err(Error::Malformed("no fragments"));
        }
        Ok(TrackIndex {
            init,
            init_range: ByteRange {
                offset: 0,
                length: init_end,
            },
            fragments: self.fragments,
            samples: self.samples,
        })
    }
}

/// Indexes a whole fMP4 held in memory; for tests and small files.
pub fn index_bytes(file: &[u8]) -> Result<TrackIndex, Error> {
    let mut indexer = Indexer::new();
    let mut offset = 0usize;
    while offset < file.len() {
        let header = BoxHeader::parse(&file[offset..])?;
        let size = header.size.map_or(file.len() - offset, |s| s as usize);
        if size > file.len() - offset {
            return Err(Error::Truncated);
        }
        let fixed = BoxHeader {
            size: Some(size as u64),
            ..header
        };
        indexer.push(offset as u64, &fixed, &file[offset..offset + size])?;
        offset += size;
    }
    indexer.finish()
}

fn parse_moov(moov: &[u8]) -> Result<InitInfo, Error> {
    let trak = only_trak(moov)?;
    let mdia = find_path(trak, &[b"mdia"])?;
    let (timescale, language) = media_header(mdia)?;
    let kind = handler_kind(mdia)?;
    let entry = first_sample_entry(mdia)?;

    let mut info = InitInfo {
        kind,
        timescale,
        codec: String::new(),
        width: 0,
        height: 0,
        sample_rate: 0,
        channels: 0,
        language,
        default_sample_duration: 0,
        default_sample_size: 0,
    };
    match (&kind, &entry.kind) {
        (TrackKind::Video, b"avc1" | b"avc3") => {
            let (width, height, boxes) = visual_entry(entry.body)?;
            (info.width, info.height) = (width, height);
            let avcc = find(boxes, b"avcC")?.ok_or(Error::MissingBox("avcC"))?;
            let mut r = Reader::new(avcc);
            r.skip(1)?;
            let (profile, compat, level) = (r.u8()?, r.u8()?, r.u8()?);
            let prefix = if &entry.kind == b"avc3" {
                "avc3"
            } else {
                "avc1"
            };
            info.codec = format!("{prefix}.{profile:02x}{compat:02x}{level:02x}");
        }
        (TrackKind::Video, b"hvc1" | b"hev1") => {
            let (width, height, boxes) = visual_entry(entry.body)?;
            (info.width, info.height) = (width, height);
            let hvcc = find(boxes, b"hvcC")?.ok_or(Error::MissingBox("hvcC"))?;
            let prefix = if &entry.kind == b"hev1" {
                "hev1"
            } else {
                "hvc1"
            };
            info.codec = hevc_codec(prefix, hvcc)?;
        }
        (TrackKind::Video, b"av01") => {
            let (width, height, boxes) = visual_entry(entry.body)?;
            (info.width, info.height) = (width, height);
            let av1c = find(boxes, b"av1C")?.ok_or(Error::MissingBox("av1C"))?;
            info.codec = av1_codec(av1c)?;
        }
        (TrackKind::Audio, b"mp4a") => {
            let (channels, sample_rate, boxes) = audio_entry(entry.body)?;
            (info.channels, info.sample_rate) = (channels, sample_rate);
            let esds = find(boxes, b"esds")?.ok_or(Error::MissingBox("esds"))?;
            let (oti, aot) = parse_esds(esds)?;
            info.codec = match aot {
                Some(aot) => format!("mp4a.{oti:02x}.{aot}"),
                None => format!("mp4a.{oti:02x}"),
            };
        }
        _ => {
            return Err(Error::Unsupported(
                "sample entry is not avc1, avc3, hvc1, hev1, av01 or mp4a",
            ))
        }
    }

    // Defaults that a trun may leave out come from the trex in mvex.
    if let Ok(trex) = find_path(moov, &[b"mvex", b"trex"]) {
        let defaults = crate::fmp4::parse_trex(trex)?;
        info.default_sample_duration = defaults.duration;
        info.default_sample_size = defaults.size;
    }
    Ok(info)
}

/// The one `trak` of a mezzanine's `moov`.
pub(crate) fn only_trak(moov: &[u8]) -> Result<&[u8], Error> {
    let mut trak = None;
    for child in children(moov) {
        let child = child?;
        if &child.kind == b"trak" {
            if trak.is_some() {
                return Err(Error::Malformed("mezzanine must hold one track"));
            }
            trak = Some(child.body);
        }
    }
    trak.ok_or(Error::MissingBox("trak"))
}

/// The timescale and language of a track, from the `mdhd` in its `mdia`.
pub(crate) fn media_header(mdia: &[u8]) -> Result<(u32, String), Error> {
    let mdhd = find_path(mdia, &[b"mdhd"])?;
    let mut r = Reader::new(mdhd);
    let (version, _) = full_box(&mut r)?;
    if version == 1 {
        r.skip(16)?;
    } else {
        r.skip(8)?;
    }
    let timescale = r.u32()?;
    if timescale == 0 {
        return Err(Error::Malformed("zero timescale"));
    }
    if version == 1 {
        r.skip(8)?;
    } else {
        r.skip(4)?;
    }
    let lang = r.u16()?;
    let language: String = [(lang >> 10) & 0x1f, (lang >> 5) & 0x1f, lang & 0x1f]
        .iter()
        .map(|c| char::from((*c as u8).wrapping_add(0x60)))
        .collect();
    let language = if language.chars().all(|c| c.is_ascii_lowercase()) {
        language
    } else {
        "und".to_string()
    };
    Ok((timescale, language))
}

/// Video or audio, from the `hdlr` in a track's `mdia`.
pub(crate) fn handler_kind(mdia: &[u8]) -> Result<TrackKind, Error> {
    let hdlr = find_path(mdia, &[b"hdlr"])?;
    let mut r = Reader::new(hdlr);
    full_box(&mut r)?;
    r.skip(4)?;
    match &r.fourcc()? {
        b"vide" => Ok(TrackKind::Video),
        b"soun" => Ok(TrackKind::Audio),
        _ => Err(Error::Unsupported("track is neither video nor audio")),
    }
}

/// The first sample entry of the `stsd` in a track's `mdia`.
pub(crate) fn first_sample_entry(mdia: &[u8]) -> Result<Child<'_>, Error> {
    let stsd = find_path(mdia, &[b"minf", b"stbl", b"stsd"])?;
    let mut r = Reader::new(stsd);
    full_box(&mut r)?;
    if r.u32()? == 0 {
        return Err(Error::Malformed("empty stsd"));
    }
    let rest = stsd.get(8..).ok_or(Error::Truncated)?;
    children(rest).next().ok_or(Error::MissingBox("stsd"))?
}

/// Width, height and child boxes of a VisualSampleEntry body (`avc1`,
/// `hvc1`, `av01`...): 6 reserved, 2 data reference index, 16 predefined,
/// then width and height, then 50 more bytes before the child boxes.
pub(crate) fn visual_entry(body: &[u8]) -> Result<(u32, u32, &[u8]), Error> {
    let mut r = Reader::new(body);
    r.skip(24)?;
    let width = u32::from(r.u16()?);
    let height = u32::from(r.u16()?);
    let boxes = body.get(78..).ok_or(Error::Truncated)?;
    Ok((width, height, boxes))
}

/// Channel count, sample rate and child boxes of an AudioSampleEntry body:
/// 6 reserved, 2 data reference index, 8 reserved, channel count, sample
/// size, 4 reserved, rate as 16.16.
pub(crate) fn audio_entry(body: &[u8]) -> Result<(u16, u32, &[u8]), Error> {
    let mut r = Reader::new(body);
    r.skip(16)?;
    let channels = r.u16()?;
    r.skip(6)?;
    let sample_rate = r.u32()? >> 16;
    let boxes = body.get(28..).ok_or(Error::Truncated)?;
    Ok((channels, sample_rate, boxes))
}

/// The RFC 6381 string of an HEVC sample entry (ISO/IEC 14496-15 Annex E.3),
/// from the first 13 bytes of its `hvcC`:
/// `{entry}.{profile space A-C or nothing}{profile_idc}.{compatibility flags,
/// bit-reversed, hex}.{L or H tier}{level_idc}` and then each constraint
/// byte as two hex digits after a dot, trailing zero bytes dropped.
fn hevc_codec(prefix: &str, hvcc: &[u8]) -> Result<String, Error> {
    use std::fmt::Write;

    let mut r = Reader::new(hvcc);
    // configurationVersion.
    r.skip(1)?;
    let b = r.u8()?;
    let space = match b >> 6 {
        0 => "",
        1 => "A",
        2 => "B",
        _ => "C",
    };
    let tier = if b & 0x20 != 0 { 'H' } else { 'L' };
    let profile = b & 0x1f;
    let compat = r.u32()?.reverse_bits();
    let constraints = r.take(6)?;
    let level = r.u8()?;
    let kept = constraints
        .iter()
        .rposition(|c| *c != 0)
        .map_or(0, |i| i + 1);
    let mut codec = format!("{prefix}.{space}{profile}.{compat:X}.{tier}{level}");
    for c in &constraints[..kept] {
        // Writing to a String cannot fail.
        let _ = write!(codec, ".{c:02X}");
    }
    Ok(codec)
}

/// The RFC 6381 string of an AV1 sample entry (AV1 Codec ISO Media File
/// Format Binding, "Codecs Parameter String"), short form, from its `av1C`:
/// `av01.{seq_profile}.{seq_level_idx_0, two digits}{M or H tier}.{bit depth, two digits}`.
fn av1_codec(av1c: &[u8]) -> Result<String, Error> {
    let mut r = Reader::new(av1c);
    // marker (1 bit, always 1) and version (7 bits, 1).
    if r.u8()? != 0x81 {
        return Err(Error::Malformed("av1C marker or version"));
    }
    let b = r.u8()?;
    let (profile, level) = (b >> 5, b & 0x1f);
    let c = r.u8()?;
    let tier = if c & 0x80 != 0 { 'H' } else { 'M' };
    let (high_bitdepth, twelve_bit) = (c & 0x40 != 0, c & 0x20 != 0);
    let depth = match (high_bitdepth, profile == 2 && twelve_bit) {
        (false, _) => 8,
        (true, false) => 10,
        (true, true) => 12,
    };
    Ok(format!("av01.{profile}.{level:02}{tier}.{depth:02}"))
}

/// Reads the object type and, for AAC, the audio object type from an `esds`.
fn parse_esds(esds: &[u8]) -> Result<(u8, Option<u8>), Error> {
    let (oti, dsi) = esds_decoder_config(esds)?;
    let Some([first, rest @ ..]) = dsi else {
        return Ok((oti, None));
    };
    let first = *first;
    let mut aot = first >> 3;
    if aot == 31 {
        let second = rest.first().ok_or(Error::Truncated)?;
        aot = 32 + (((first & 0x07) << 3) | (second >> 5));
    }
    Ok((oti, Some(aot)))
}

/// The object type indication of an `esds` body and its
/// DecoderSpecificInfo (for AAC, the AudioSpecificConfig), if any.
pub(crate) fn esds_decoder_config(esds: &[u8]) -> Result<(u8, Option<&[u8]>), Error> {
    let mut r = Reader::new(esds);
    full_box(&mut r)?;
    let (tag, _) = descriptor(&mut r)?;
    if tag != 3 {
        return Err(Error::Malformed("esds without ES_Descriptor"));
    }
    r.skip(2)?;
    let flags = r.u8()?;
    if flags & 0x80 != 0 {
        r.skip(2)?;
    }
    if flags & 0x40 != 0 {
        let len = r.u8()?;
        r.skip(usize::from(len))?;
    }
    if flags & 0x20 != 0 {
        r.skip(2)?;
    }
    let (tag, _) = descriptor(&mut r)?;
    if tag != 4 {
        return Err(Error::Malformed("esds without DecoderConfigDescriptor"));
    }
    let oti = r.u8()?;
    r.skip(12)?;
    if r.remaining() == 0 {
        return Ok((oti, None));
    }
    let (tag, len) = descriptor(&mut r)?;
    if tag != 5 || len == 0 {
        return Ok((oti, None));
    }
    Ok((oti, Some(r.take(len)?)))
}

fn descriptor(r: &mut Reader<'_>) -> Result<(u8, usize), Error> {
    let tag = r.u8()?;
    let mut len = 0usize;
    for _ in 0..4 {
        let b = r.u8()?;
        len = (len << 7) | usize::from(b & 0x7f);
        if b & 0x80 == 0 {
            break;
        }
    }
    Ok((tag, len))
}

/// More samples than any 2-second fragment has; bounds a run's loop.
const MAX_SAMPLES_PER_RUN: u32 = 1 << 20;

/// Decode times beyond this (2^53 ticks: centuries at any timescale) are refused,
/// so sums of times never overflow.
pub(crate) const MAX_TICKS: u64 = 1 << 53;

/// Returns (baseMediaDecodeTime, duration, sample count) of a one-track `moof`.
fn parse_moof(moof: &[u8], trex_duration: u32) -> Result<(u64, u64, u32), Error> {
    let traf = find_path(moof, &[b"traf"])?;
    let tfhd = find_path(traf, &[b"tfhd"])?;
    let mut r = Reader::new(tfhd);
    let (_, flags) = full_box(&mut r)?;
    r.skip(4)?;
    if flags & 0x01 != 0 {
        r.skip(8)?;
    }
    if flags & 0x02 != 0 {
        r.skip(4)?;
    }
    let mut default_duration = trex_duration;
    if flags & 0x08 != 0 {
        default_duration = r.u32()?;
    }

    let tfdt = find_path(traf, &[b"tfdt"])?;
    let mut r = Reader::new(tfdt);
    let (version, _) = full_box(&mut r)?;
    let decode_time = if version == 1 {
        r.u64()?
    } else {
        u64::from(r.u32()?)
    };

    let mut duration = 0u64;
    let mut samples = 0u32;
    for child in children(traf) {
        let child = child?;
        if &child.kind != b"trun" {
            continue;
        }
        let mut r = Reader::new(child.body);
        let (_, flags) = full_box(&mut r)?;
        let count = r.u32()?;
        if flags & 0x01 != 0 {
            r.i32()?;
        }
        if flags & 0x04 != 0 {
            r.u32()?;
        }
        let per_sample = [0x100, 0x200, 0x400, 0x800]
            .iter()
            .filter(|f| flags & **f != 0)
            .count();
        // Check the count against what is left before looping over it.
        if (count as usize).saturating_mul(per_sample * 4) > r.remaining() {
            return Err(Error::Truncated);
        }
        if count > MAX_SAMPLES_PER_RUN {
            return Err(Error::Malformed("too many samples in one run"));
        }
        if flags & 0x100 == 0 {
            let run = u64::from(count) * u64::from(default_duration);
            duration = duration
                .checked_add(run)
                .ok_or(Error::Malformed("duration overflow"))?;
            r.skip(count as usize * per_sample * 4)?;
        } else {
            for _ in 0..count {
                let d = r.u32()?;
                duration = duration
                    .checked_add(u64::from(d))
                    .ok_or(Error::Malformed("duration overflow"))?;
                r.skip((per_sample - 1) * 4)?;
            }
        }
        samples = samples.saturating_add(count);
    }
    if duration == 0 {
        return Err(Error::Malformed("fragment without duration"));
    }
    if decode_time
        .checked_add(duration)
        .is_none_or(|end| end > MAX_TICKS)
    {
        return Err(Error::Malformed("fragment time out of range"));
    }
    Ok((decode_time, duration, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_inputs_fail_cleanly() {
        assert!(index_bytes(&[]).is_err());
        assert!(index_bytes(&[0, 0, 0, 8, b'm', b'o', b'o', b'v']).is_err());
        assert!(index_bytes(&[0, 0, 0, 200, b'm', b'o', b'o', b'f', 1, 2]).is_err());
    }

    fn trun_moof(flags: u32, count: u32, per_sample: &[u8], default: u32) -> Vec<u8> {
        use crate::mp4::write_box;
        let mut tfhd = vec![0, 0, 0, 0x08, 0, 0, 0, 1];
        tfhd.extend_from_slice(&default.to_be_bytes());
        let tfdt = [0u8; 8];
        let mut trun = flags.to_be_bytes().to_vec();
        trun.extend_from_slice(&count.to_be_bytes());
        trun.extend_from_slice(per_sample);
        let mut traf = write_box(b"tfhd", &tfhd);
        traf.extend(write_box(b"tfdt", &tfdt));
        traf.extend(write_box(b"trun", &trun));
        write_box(b"traf", &traf)
    }

    #[test]
    fn trun_durations() {
        // Durations per sample.
        let moof = trun_moof(0x100, 2, &[0, 0, 0, 10, 0, 0, 0, 20], 0);
        assert_eq!(parse_moof(&moof, 0).unwrap(), (0, 30, 2));
        // Default duration from tfhd, no per-sample fields: no loop over the count.
        let moof = trun_moof(0, 1000, &[], 512);
        assert_eq!(parse_moof(&moof, 0).unwrap(), (0, 512_000, 1000));
        // A huge count with no per-sample fields is refused, not looped over.
        let moof = trun_moof(0, u32::MAX, &[], 1);
        assert!(parse_moof(&moof, 0).is_err());
        // Per-sample fields the bytes cannot hold.
        let moof = trun_moof(0x300, 1000, &[0; 16], 0);
        assert_eq!(parse_moof(&moof, 0), Err(Error::Truncated));
    }

    #[test]
    fn esds_audio_object_type() {
        // ES_Descriptor(3) > DecoderConfigDescriptor(4, oti 0x40) > DecSpecificInfo(5, AAC-LC).
        let esds = [
            0, 0, 0, 0, 3, 25, 0, 1, 0, 4, 17, 0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 2,
            0x11, 0x90,
        ];
        assert_eq!(parse_esds(&esds).unwrap(), (0x40, Some(2)));
        // A DecoderSpecificInfo longer than the box.
        let mut long = esds;
        long[25] = 9;
        assert_eq!(parse_esds(&long), Err(Error::Truncated));
    }

    #[test]
    fn hevc_codec_strings() {
        // The hvcC that libx265 3.5 wrote through FFmpeg 5.1 (`-tag:v hvc1`)
        // for a 64x64 Main profile stream, cut before its NAL unit arrays
        // (numOfArrays set to 0). By hand, per ISO/IEC 14496-15 E.3:
        //   0x01: profile_space 0 (no letter), tier 0 (L), profile_idc 1;
        //   0x60000000: compatibility flags 1 and 2, bit-reversed 0x6;
        //   0x90 0 0 0 0 0: constraint flags (progressive, frame only),
        //   trailing zero bytes dropped; 0x1e: level_idc 30 (level 1).
        let hvcc = [
            0x01, 0x01, 0x60, 0x00, 0x00, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1e, 0xf0,
            0x00, 0xfc, 0xfd, 0xf8, 0xf8, 0x00, 0x00, 0x0f, 0x00,
        ];
        assert_eq!(hevc_codec("hvc1", &hvcc).unwrap(), "hvc1.1.6.L30.90");
        assert_eq!(hevc_codec("hev1", &hvcc).unwrap(), "hev1.1.6.L30.90");
        // Main 10 (compatibility flag 2, reversed 0x4), high tier, level 4
        // (120), constraint byte 0xB0: the spec's own example.
        let mut main10 = hvcc;
        main10[1] = 0x22;
        main10[2] = 0x20;
        main10[6] = 0xb0;
        main10[12] = 120;
        assert_eq!(hevc_codec("hvc1", &main10).unwrap(), "hvc1.2.4.H120.B0");
        // Profile space 1 is `A`; zero bytes inside the constraints stay.
        let mut odd = hvcc;
        odd[1] = 0x41;
        odd[2..6].copy_from_slice(&[0xff; 4]);
        odd[6..12].copy_from_slice(&[0x90, 0x00, 0x01, 0x00, 0x00, 0x00]);
        assert_eq!(
            hevc_codec("hvc1", &odd).unwrap(),
            "hvc1.A1.FFFFFFFF.L30.90.00.01"
        );
        // No constraint flags at all.
        let mut none = hvcc;
        none[6] = 0;
        assert_eq!(hevc_codec("hvc1", &none).unwrap(), "hvc1.1.6.L30");
        for n in 0..13 {
            assert_eq!(hevc_codec("hvc1", &hvcc[..n]), Err(Error::Truncated));
        }
    }

    #[test]
    fn av1_codec_strings() {
        // The av1C that SVT-AV1 1.4.1 wrote through FFmpeg 5.1 for 64x64
        // 8-bit 4:2:0. By hand, per the AV1 ISOBMFF binding's codecs
        // parameter string: 0x81 marker and version 1; 0x00: seq_profile 0,
        // seq_level_idx_0 0; 0x0c: tier 0 (M), high_bitdepth 0 (8 bits),
        // then monochrome 0 and 4:2:0 subsampling (not in the short form).
        let av1c = [0x81, 0x00, 0x0c, 0x00];
        assert_eq!(av1_codec(&av1c).unwrap(), "av01.0.00M.08");
        // Main profile, level 3.0 (index 4), 10 bits.
        assert_eq!(
            av1_codec(&[0x81, 0x04, 0x4c, 0x00]).unwrap(),
            "av01.0.04M.10"
        );
        // Professional profile, level index 13, high tier, 12 bits.
        assert_eq!(
            av1_codec(&[0x81, 0x4d, 0xe0, 0x00]).unwrap(),
            "av01.2.13H.12"
        );
        // twelve_bit counts only in the professional profile.
        assert_eq!(
            av1_codec(&[0x81, 0x24, 0x60, 0x00]).unwrap(),
            "av01.1.04M.10"
        );
        assert!(av1_codec(&[0x01, 0x00, 0x0c]).is_err());
        assert!(av1_codec(&[0x81, 0x00]).is_err());
    }

    #[test]
    fn ffmpeg_files() {
        // Tiny files made by FFmpeg 5.1 (commands in testdata/README.md):
        // bytes, codec string, size, first keyframe's length.
        type Case<'a> = (&'a [u8], &'a str, (u32, u32), u64);
        let files: [Case<'_>; 4] = [
            (
                include_bytes!("../testdata/tiny_h264.mp4"),
                "avc1.4d400a",
                (16, 16),
                868,
            ),
            (
                include_bytes!("../testdata/tiny_hevc.mp4"),
                "hvc1.1.6.L30.90",
                (64, 64),
                268,
            ),
            (
                include_bytes!("../testdata/tiny_av1.mp4"),
                "av01.0.00M.08",
                (64, 64),
                441,
            ),
            (
                include_bytes!("../testdata/tiny_aac.mp4"),
                "mp4a.40.2",
                (0, 0),
                242,
            ),
        ];
        for (file, codec, size, key_length) in files {
            let index = index_bytes(file).unwrap();
            assert_eq!(index.init.codec, codec);
            assert_eq!((index.init.width, index.init.height), size, "{codec}");
            let f = index.fragments[0];
            // The moof, the mdat header and the first sample; as by hand
            // from the trun's data offset and first sample size.
            assert_eq!(f.key_length, key_length, "{codec}");
            assert!(f.key_length < f.range.length);
        }
    }

    #[test]
    fn key_length_is_checked_against_the_mdat() {
        let file = include_bytes!("../testdata/tiny_h264.mp4");
        let mut index = Indexer::new();
        let mut offset = 0usize;
        while offset < file.len() {
            let mut header = BoxHeader::parse(&file[offset..]).unwrap();
            let size = header.size.unwrap() as usize;
            if &header.kind == b"mdat" {
                // An mdat too short for the first sample (716 bytes).
                header.size = Some(100);
            }
            index
                .push(offset as u64, &header, &file[offset..offset + size])
                .unwrap();
            offset += size;
        }
        let index = index.finish().unwrap();
        assert_eq!(index.fragments[0].key_length, 0);
    }
}
