//! Indexing a fragmented MP4 once, at ingest, so that packaging never scans media.
//!
//! The caller owns the IO: it reads each top-level box header with
//! [`BoxHeader::parse`], hands whole `moov` and `moof` boxes to an
//! [`Indexer`], and skips `mdat` payloads by offset. This keeps the indexer
//! pure and lets it work on files far larger than memory.

use crate::manifest::{ByteRange, Fragment, TrackKind};
use crate::mp4::{children, find, find_path, full_box, BoxHeader, Reader};
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
                self.pending_moof = Some(PendingMoof {
                    offset,
                    decode_time,
                    duration,
                    samples,
                });
            }
            b"mdat" => {
                let moof = self
                    .pending_moof
                    .take()
                    .ok_or(Error::Malformed("mdat without moof"))?;
                let end = offset + size;
                self.samples += u64::from(moof.samples);
                self.fragments.push(Fragment {
                    range: ByteRange {
                        offset: moof.offset,
                        length: end - moof.offset,
                    },
                    start: moof.decode_time,
                    duration: moof.duration,
                    key_length: 0,
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
    let trak = trak.ok_or(Error::MissingBox("trak"))?;
    let mdia = find_path(trak, &[b"mdia"])?;

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

    let hdlr = find_path(mdia, &[b"hdlr"])?;
    let mut r = Reader::new(hdlr);
    full_box(&mut r)?;
    r.skip(4)?;
    let handler = r.fourcc()?;
    let kind = match &handler {
        b"vide" => TrackKind::Video,
        b"soun" => TrackKind::Audio,
        _ => return Err(Error::Unsupported("track is neither video nor audio")),
    };

    let stsd = find_path(mdia, &[b"minf", b"stbl", b"stsd"])?;
    let mut r = Reader::new(stsd);
    full_box(&mut r)?;
    let count = r.u32()?;
    if count == 0 {
        return Err(Error::Malformed("empty stsd"));
    }
    let rest = &stsd[8..];
    let entry = children(rest).next().ok_or(Error::MissingBox("stsd"))??;

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
    };
    match (&kind, &entry.kind) {
        (TrackKind::Video, b"avc1") | (TrackKind::Video, b"avc3") => {
            // VisualSampleEntry: 6 reserved, 2 data ref index, 16 predefined,
            // then width and height, then 50 more bytes before the child boxes.
            let mut r = Reader::new(entry.body);
            r.skip(24)?;
            info.width = u32::from(r.u16()?);
            info.height = u32::from(r.u16()?);
            r.skip(50)?;
            let boxes = entry.body.get(78..).ok_or(Error::Truncated)?;
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
        (TrackKind::Audio, b"mp4a") => {
            // AudioSampleEntry: 6 reserved, 2 data ref index, 8 reserved,
            // channel count, sample size, 4 reserved, rate as 16.16.
            let mut r = Reader::new(entry.body);
            r.skip(16)?;
            info.channels = r.u16()?;
            r.skip(6)?;
            info.sample_rate = r.u32()? >> 16;
            let boxes = entry.body.get(28..).ok_or(Error::Truncated)?;
            let esds = find(boxes, b"esds")?.ok_or(Error::MissingBox("esds"))?;
            let (oti, aot) = parse_esds(esds)?;
            info.codec = match aot {
                Some(aot) => format!("mp4a.{oti:02x}.{aot}"),
                None => format!("mp4a.{oti:02x}"),
            };
        }
        _ => return Err(Error::Unsupported("sample entry is not avc1, avc3 or mp4a")),
    }

    // Defaults that a trun may leave out come from the trex in mvex.
    if let Ok(trex) = find_path(moov, &[b"mvex", b"trex"]) {
        let mut r = Reader::new(trex);
        full_box(&mut r)?;
        r.skip(8)?;
        info.default_sample_duration = r.u32()?;
    }
    Ok(info)
}

/// Reads the object type and, for AAC, the audio object type from an `esds`.
fn parse_esds(esds: &[u8]) -> Result<(u8, Option<u8>), Error> {
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
    let first = r.u8()?;
    let mut aot = first >> 3;
    if aot == 31 {
        let second = r.u8()?;
        aot = 32 + (((first & 0x07) << 3) | (second >> 5));
    }
    Ok((oti, Some(aot)))
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
    }
}
