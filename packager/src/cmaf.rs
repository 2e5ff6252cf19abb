//! Writes CMAF: the init segment of one H.264 or AAC track, and fragments
//! (one `moof` + `mdat`) of its samples. Live ingest uses it to turn
//! encoder frames into parts; on-demand mezzanine is written by FFmpeg.
//!
//! Hand-written rather than through FFmpeg's muxer because a live part must
//! be cut exactly where the segmenter says, in memory, with no file, and
//! because this is the product: the same boxes the packager reads back.

use crate::mp4::BoxHeader;
use crate::Error;

/// What an init segment describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitTrack {
    /// H.264 at 90 kHz.
    Avc {
        /// The `AVCDecoderConfigurationRecord` (the body of `avcC`).
        avcc: Vec<u8>,
        /// Pixels.
        width: u16,
        /// Pixels.
        height: u16,
    },
    /// AAC at its sample rate.
    Aac {
        /// The AudioSpecificConfig.
        asc: Vec<u8>,
        /// Samples per second (also the timescale).
        sample_rate: u32,
        /// Channels.
        channels: u16,
    },
}

/// One sample to write into a fragment.
#[derive(Debug, Clone, Copy)]
pub struct OutSample<'a> {
    /// In the track's timescale.
    pub duration: u32,
    /// Presentation minus decode time.
    pub cts_offset: i32,
    /// A sync sample.
    pub keyframe: bool,
    /// The sample's bytes (length-prefixed NAL units for H.264, a raw AAC frame).
    pub data: &'a [u8],
}

/// The track id every init segment written here uses.
pub const TRACK_ID: u32 = 1;

const TRUN_DATA_OFFSET: u32 = 0x1;
const TRUN_DURATION: u32 = 0x100;
const TRUN_SIZE: u32 = 0x200;
const TRUN_FLAGS: u32 = 0x400;
const TRUN_CTO: u32 = 0x800;
const TFHD_DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;
const SYNC: u32 = 0x0200_0000;
const NON_SYNC: u32 = 0x0101_0000;

impl InitTrack {
    /// Ticks per second of the track.
    pub fn timescale(&self) -> u32 {
        match self {
            InitTrack::Avc { .. } => 90_000,
            InitTrack::Aac { sample_rate, .. } => *sample_rate,
        }
    }

    /// The RFC 6381 codec string (`avc1.64001f`, `mp4a.40.2`).
    pub fn codec(&self) -> String {
        match self {
            InitTrack::Avc { avcc, .. } => match avcc.get(1..4) {
                Some(p) => format!("avc1.{:02x}{:02x}{:02x}", p[0], p[1], p[2]),
                None => "avc1".into(),
            },
            InitTrack::Aac { asc, .. } => {
                let aot = asc.first().map(|b| b >> 3).unwrap_or(2);
                format!("mp4a.40.{aot}")
            }
        }
    }
}

/// The init segment (`ftyp` + `moov`) of one track.
pub fn init_segment(track: &InitTrack) -> Vec<u8> {
    let mut ftyp = Vec::new();
    ftyp.extend_from_slice(b"iso6");
    ftyp.extend_from_slice(&0u32.to_be_bytes());
    for brand in [b"iso6", b"cmfc", b"mp41"] {
        ftyp.extend_from_slice(brand);
    }
    let (handler, media_header, entry, width, height, volume) = match track {
        InitTrack::Avc {
            avcc,
            width,
            height,
        } => {
            let mut e = sample_entry_prefix();
            e.extend_from_slice(&[0; 16]); // pre_defined, reserved, pre_defined[3]
            e.extend_from_slice(&width.to_be_bytes());
            e.extend_from_slice(&height.to_be_bytes());
            e.extend_from_slice(&0x0048_0000u32.to_be_bytes());
            e.extend_from_slice(&0x0048_0000u32.to_be_bytes());
            e.extend_from_slice(&0u32.to_be_bytes());
            e.extend_from_slice(&1u16.to_be_bytes()); // frame_count
            e.extend_from_slice(&[0; 32]); // compressorname
            e.extend_from_slice(&0x0018u16.to_be_bytes());
            e.extend_from_slice(&0xffffu16.to_be_bytes());
            e.extend_from_slice(&boxed(b"avcC", avcc));
            let vmhd = full(b"vmhd", 0, 1, &[0; 8]);
            (b"vide", vmhd, boxed(b"avc1", &e), *width, *height, 0u16)
        }
        InitTrack::Aac {
            asc,
            sample_rate,
            channels,
        } => {
            let mut e = sample_entry_prefix();
            e.extend_from_slice(&[0; 8]);
            e.extend_from_slice(&channels.to_be_bytes());
            e.extend_from_slice(&16u16.to_be_bytes());
            e.extend_from_slice(&[0; 4]);
            // The 16.16 sample rate field holds at most 65535 Hz; higher
            // rates are read from the AudioSpecificConfig.
            let rate = (*sample_rate).min(65_535) << 16;
            e.extend_from_slice(&rate.to_be_bytes());
            e.extend_from_slice(&full(b"esds", 0, 0, &es_descriptor(asc)));
            let smhd = full(b"smhd", 0, 0, &[0; 4]);
            (b"soun", smhd, boxed(b"mp4a", &e), 0, 0, 0x0100)
        }
    };
    let timescale = track.timescale();

    let mut mvhd = Vec::new();
    mvhd.extend_from_slice(&[0; 8]); // creation, modification
    mvhd.extend_from_slice(&1000u32.to_be_bytes());
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // duration
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate
    mvhd.extend_from_slice(&0x0100u16.to_be_bytes()); // volume
    mvhd.extend_from_slice(&[0; 10]);
    mvhd.extend_from_slice(&matrix());
    mvhd.extend_from_slice(&[0; 24]);
    mvhd.extend_from_slice(&(TRACK_ID + 1).to_be_bytes());

    let mut tkhd = Vec::new();
    tkhd.extend_from_slice(&[0; 8]);
    tkhd.extend_from_slice(&TRACK_ID.to_be_bytes());
    tkhd.extend_from_slice(&[0; 4]);
    tkhd.extend_from_slice(&0u32.to_be_bytes()); // duration
    tkhd.extend_from_slice(&[0; 8]);
    tkhd.extend_from_slice(&[0; 4]); // layer, alternate_group
    tkhd.extend_from_slice(&volume.to_be_bytes());
    tkhd.extend_from_slice(&[0; 2]);
    tkhd.extend_from_slice(&matrix());
    tkhd.extend_from_slice(&(u32::from(width) << 16).to_be_bytes());
    tkhd.extend_from_slice(&(u32::from(height) << 16).to_be_bytes());

    let mut mdhd = Vec::new();
    mdhd.extend_from_slice(&[0; 8]);
    mdhd.extend_from_slice(&timescale.to_be_bytes());
    mdhd.extend_from_slice(&0u32.to_be_bytes());
    mdhd.extend_from_slice(&0x55c4u16.to_be_bytes()); // "und"
    mdhd.extend_from_slice(&[0; 2]);

    let mut hdlr = vec![0; 4];
    hdlr.extend_from_slice(handler);
    hdlr.extend_from_slice(&[0; 12]);
    hdlr.extend_from_slice(b"Cascade\0");

    let dref = full(
        b"dref",
        0,
        0,
        &[&1u32.to_be_bytes()[..], &full(b"url ", 0, 1, &[])].concat(),
    );
    let mut stsd_body = 1u32.to_be_bytes().to_vec();
    stsd_body.extend_from_slice(&entry);
    let stbl = boxed(
        b"stbl",
        &[
            full(b"stsd", 0, 0, &stsd_body),
            full(b"stts", 0, 0, &[0; 4]),
            full(b"stsc", 0, 0, &[0; 4]),
            full(b"stsz", 0, 0, &[0; 8]),
            full(b"stco", 0, 0, &[0; 4]),
        ]
        .concat(),
    );
    let minf = boxed(
        b"minf",
        &[media_header, boxed(b"dinf", &dref), stbl].concat(),
    );
    let mdia = boxed(
        b"mdia",
        &[full(b"mdhd", 0, 0, &mdhd), full(b"hdlr", 0, 0, &hdlr), minf].concat(),
    );
    let trak = boxed(b"trak", &[full(b"tkhd", 0, 3, &tkhd), mdia].concat());
    let mut trex = TRACK_ID.to_be_bytes().to_vec();
    trex.extend_from_slice(&1u32.to_be_bytes());
    trex.extend_from_slice(&[0; 12]);
    let mvex = boxed(b"mvex", &full(b"trex", 0, 0, &trex));
    let moov = boxed(b"moov", &[full(b"mvhd", 0, 0, &mvhd), trak, mvex].concat());
    [boxed(b"ftyp", &ftyp), moov].concat()
}

/// One fragment: `moof` (sequence number, decode time of the first sample,
/// each sample's duration, size, flags and composition offset) then `mdat`.
pub fn fragment(sequence: u32, base_dts: u64, samples: &[OutSample<'_>]) -> Result<Vec<u8>, Error> {
    let count = u32::try_from(samples.len()).map_err(|_| Error::Unsupported("too many samples"))?;
    let data_len: usize = samples.iter().map(|s| s.data.len()).sum();
    let trun_len = 8 + 4 + 4 + 4 + 16 * samples.len();
    let traf_len = 8 + 16 + 20 + trun_len;
    let moof_len = 8 + 16 + traf_len;
    let mdat_len = data_len
        .checked_add(8)
        .filter(|&l| u32::try_from(l + moof_len).is_ok())
        .ok_or(Error::Unsupported("fragment larger than 4 GiB"))?;
    let mut out = Vec::with_capacity(moof_len + mdat_len);
    header(&mut out, moof_len, b"moof");
    header(&mut out, 16, b"mfhd");
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    header(&mut out, traf_len, b"traf");
    header(&mut out, 16, b"tfhd");
    out.extend_from_slice(&TFHD_DEFAULT_BASE_IS_MOOF.to_be_bytes());
    out.extend_from_slice(&TRACK_ID.to_be_bytes());
    header(&mut out, 20, b"tfdt");
    out.extend_from_slice(&(1u32 << 24).to_be_bytes());
    out.extend_from_slice(&base_dts.to_be_bytes());
    header(&mut out, trun_len, b"trun");
    let flags = TRUN_DATA_OFFSET | TRUN_DURATION | TRUN_SIZE | TRUN_FLAGS | TRUN_CTO;
    out.extend_from_slice(&((1u32 << 24) | flags).to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&((moof_len + 8) as u32).to_be_bytes());
    for s in samples {
        out.extend_from_slice(&s.duration.to_be_bytes());
        out.extend_from_slice(&(s.data.len() as u32).to_be_bytes());
        let f = if s.keyframe { SYNC } else { NON_SYNC };
        out.extend_from_slice(&f.to_be_bytes());
        out.extend_from_slice(&s.cts_offset.to_be_bytes());
    }
    header(&mut out, mdat_len, b"mdat");
    for s in samples {
        out.extend_from_slice(s.data);
    }
    debug_assert!(BoxHeader::parse(&out).is_ok());
    Ok(out)
}

/// The `moof` + `mdat` pairs of a run of fragments (a segment made of
/// parts), each as its bytes.
pub fn split_fragments(bytes: &[u8]) -> Result<Vec<&[u8]>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut start = None;
    while at < bytes.len() {
        let h = BoxHeader::parse(&bytes[at..])?;
        let size = usize::try_from(h.size.ok_or(Error::Malformed("a box without a size"))?)
            .map_err(|_| Error::Truncated)?;
        if size < 8 || size > bytes.len() - at {
            return Err(Error::Truncated);
        }
        match &h.kind {
            b"moof" => start = Some(at),
            b"mdat" => {
                if let Some(s) = start.take() {
                    out.push(&bytes[s..at + size]);
                }
            }
            _ => {}
        }
        at += size;
    }
    Ok(out)
}

/// One fragment holding every sample of a run of fragments of the track
/// `cfg` describes (the parts of a segment), decode times kept.
pub fn merge_parts(cfg: &crate::fmp4::TrackConfig, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut samples = Vec::new();
    for part in split_fragments(bytes)? {
        for s in crate::fmp4::parse_fragment(cfg, part)? {
            let data = part
                .get(s.offset..s.offset.checked_add(s.size).ok_or(Error::Truncated)?)
                .ok_or(Error::Truncated)?;
            samples.push((s, data));
        }
    }
    let first = samples.first().ok_or(Error::Malformed("no samples"))?.0.dts;
    let out: Vec<OutSample<'_>> = samples
        .iter()
        .map(|(s, data)| OutSample {
            duration: s.duration,
            cts_offset: i32::try_from(s.cts_offset).unwrap_or(0),
            keyframe: s.keyframe,
            data,
        })
        .collect();
    fragment(1, first, &out)
}

fn sample_entry_prefix() -> Vec<u8> {
    let mut e = vec![0; 6];
    e.extend_from_slice(&1u16.to_be_bytes()); // data_reference_index
    e
}

fn es_descriptor(asc: &[u8]) -> Vec<u8> {
    let mut dsi = vec![0x05];
    descriptor_len(&mut dsi, asc.len());
    dsi.extend_from_slice(asc);
    let mut dcd_body = vec![0x40, 0x15, 0, 0, 0];
    dcd_body.extend_from_slice(&0u32.to_be_bytes());
    dcd_body.extend_from_slice(&0u32.to_be_bytes());
    dcd_body.extend_from_slice(&dsi);
    let mut dcd = vec![0x04];
    descriptor_len(&mut dcd, dcd_body.len());
    dcd.extend_from_slice(&dcd_body);
    let mut es_body = vec![0, 1, 0];
    es_body.extend_from_slice(&dcd);
    es_body.extend_from_slice(&[0x06, 0x01, 0x02]);
    let mut es = vec![0x03];
    descriptor_len(&mut es, es_body.len());
    es.extend_from_slice(&es_body);
    es
}

/// The four-byte form of an MPEG-4 descriptor length, which every reader takes.
fn descriptor_len(out: &mut Vec<u8>, len: usize) {
    let len = len as u32;
    out.extend_from_slice(&[
        0x80 | ((len >> 21) & 0x7f) as u8,
        0x80 | ((len >> 14) & 0x7f) as u8,
        0x80 | ((len >> 7) & 0x7f) as u8,
        (len & 0x7f) as u8,
    ]);
}

fn matrix() -> [u8; 36] {
    let mut m = [0u8; 36];
    m[0..4].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    m[16..20].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    m[32..36].copy_from_slice(&0x4000_0000u32.to_be_bytes());
    m
}

fn header(out: &mut Vec<u8>, len: usize, kind: &[u8; 4]) {
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(kind);
}

fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    header(&mut out, body.len() + 8, kind);
    out.extend_from_slice(body);
    out
}

fn full(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut b = ((u32::from(version) << 24) | flags).to_be_bytes().to_vec();
    b.extend_from_slice(body);
    boxed(kind, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fmp4::{parse_fragment, parse_init, CodecConfig};
    use crate::TrackKind;

    const AVCC: [u8; 19] = [
        1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 4, 0x68, 0xee, 0x3c, 0x80,
    ];

    #[test]
    fn a_video_init_and_fragment_read_back() {
        let track = InitTrack::Avc {
            avcc: AVCC.to_vec(),
            width: 1280,
            height: 720,
        };
        assert_eq!(track.codec(), "avc1.64001f");
        let init = init_segment(&track);
        let cfg = parse_init(&init).unwrap();
        assert_eq!(cfg.timescale, 90_000);
        assert_eq!(cfg.kind, TrackKind::Video);
        let CodecConfig::Avc(v) = &cfg.codec else {
            panic!("not avc: {:?}", cfg.codec);
        };
        assert_eq!(v.nal_length_size, 4);
        assert_eq!(v.sps, vec![vec![0x67, 0x64, 0, 0x1f]]);

        let frames = [vec![0, 0, 0, 2, 0x65, 1], vec![0, 0, 0, 1, 0x41]];
        let samples = [
            OutSample {
                duration: 3000,
                cts_offset: 0,
                keyframe: true,
                data: &frames[0],
            },
            OutSample {
                duration: 3000,
                cts_offset: -3000,
                keyframe: false,
                data: &frames[1],
            },
        ];
        let frag = fragment(7, 90_000, &samples).unwrap();
        let read = parse_fragment(&cfg, &frag).unwrap();
        let index = crate::index_bytes(&[init.clone(), frag.clone()].concat()).unwrap();
        assert_eq!((index.init.width, index.init.height), (1280, 720));
        assert_eq!(index.init.codec, "avc1.64001f");
        assert_eq!(index.fragments[0].start, 90_000);
        assert_eq!(read.len(), 2);
        assert_eq!(
            (read[0].dts, read[0].keyframe, read[0].size),
            (90_000, true, 6)
        );
        assert_eq!((read[1].dts, read[1].keyframe), (93_000, false));
        assert_eq!(read[1].cts_offset, -3000);
        assert_eq!(
            &frag[read[1].offset..read[1].offset + read[1].size],
            &frames[1][..]
        );
    }

    #[test]
    fn an_audio_init_reads_back() {
        let track = InitTrack::Aac {
            asc: vec![0x11, 0x90],
            sample_rate: 48_000,
            channels: 2,
        };
        assert_eq!(track.codec(), "mp4a.40.2");
        let cfg = parse_init(&init_segment(&track)).unwrap();
        assert_eq!(cfg.timescale, 48_000);
        assert_eq!(cfg.kind, TrackKind::Audio);
        assert!(
            matches!(cfg.codec, CodecConfig::Aac(a) if a.channels == 2 && a.sample_rate_index == 3)
        );
    }
}
