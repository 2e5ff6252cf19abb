//! MPEG-2 transport stream muxing (ISO/IEC 13818-1) for HLS segments that
//! old devices can play: one program, H.264 video and AAC audio in one
//! segment, PAT and PMT first, PCR on the video PID.
//!
//! Hand-written because it *is* the product: the muxer runs per request at
//! the edge, from samples already in memory, and must give the same bytes
//! every time (no wall clock, no random PIDs). Inputs come from the CMAF
//! mezzanine: video as AVCC (length-prefixed NAL units) with the SPS and PPS
//! of the `avcC` box, audio as raw AAC frames with the AudioSpecificConfig's
//! object type, sample-rate index and channels. Times are 90 kHz ticks.

use crate::Error;

/// A TS packet's size.
pub const PACKET: usize = 188;

/// PIDs: fixed, so the same request always gives the same bytes.
pub const PMT_PID: u16 = 0x1000;
/// The video elementary stream's PID.
pub const VIDEO_PID: u16 = 0x100;
/// The audio elementary stream's PID.
pub const AUDIO_PID: u16 = 0x101;

/// How far the PCR runs ahead of the first decode time (100 ms), so a
/// decoder has the access unit before it is due.
const PCR_LEAD: u64 = 9_000;

/// Decoder configuration of the H.264 track (from `avcC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoConfig {
    /// Bytes of each NAL unit's length prefix (1, 2 or 4).
    pub nal_length_size: u8,
    /// Sequence parameter sets.
    pub sps: Vec<Vec<u8>>,
    /// Picture parameter sets.
    pub pps: Vec<Vec<u8>>,
}

/// Decoder configuration of the AAC track (from the AudioSpecificConfig).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioConfig {
    /// Audio object type (2 for AAC-LC).
    pub object_type: u8,
    /// Sampling-frequency index (3 for 48 kHz).
    pub sample_rate_index: u8,
    /// Channel configuration (2 for stereo).
    pub channels: u8,
}

/// One video access unit.
#[derive(Debug, Clone, Copy)]
pub struct VideoSample<'a> {
    /// Decode time, 90 kHz.
    pub dts: u64,
    /// Presentation time, 90 kHz.
    pub pts: u64,
    /// An IDR picture: SPS and PPS go in front of it.
    pub keyframe: bool,
    /// The AVCC bytes: NAL units, each after its length.
    pub data: &'a [u8],
}

/// One AAC frame.
#[derive(Debug, Clone, Copy)]
pub struct AudioSample<'a> {
    /// Presentation time, 90 kHz.
    pub pts: u64,
    /// The raw frame (no ADTS header).
    pub data: &'a [u8],
}

/// Muxes one segment: PAT, PMT, then the video and audio PES packets in
/// decode order. Either track may be absent (audio-only or video-only).
pub fn mux_segment(
    video: Option<(&VideoConfig, &[VideoSample<'_>])>,
    audio: Option<(&AudioConfig, &[AudioSample<'_>])>,
) -> Result<Vec<u8>, Error> {
    if video.is_none() && audio.is_none() {
        return Err(Error::Unsupported("a TS segment without tracks"));
    }
    if let Some((c, _)) = video {
        if !matches!(c.nal_length_size, 1 | 2 | 4) {
            return Err(Error::Unsupported("NAL length size"));
        }
    }
    let mut w = Writer::default();
    w.section(0, &pat());
    w.section(PMT_PID, &pmt(video.is_some(), audio.is_some()));
    let pcr_pid = if video.is_some() {
        VIDEO_PID
    } else {
        AUDIO_PID
    };
    let vs = video.map_or(&[][..], |(_, s)| s);
    let aus = audio.map_or(&[][..], |(_, s)| s);
    let (mut i, mut j) = (0, 0);
    let mut pes = Vec::new();
    while i < vs.len() || j < aus.len() {
        let take_video = match (vs.get(i), aus.get(j)) {
            (Some(v), Some(a)) => v.dts <= a.pts,
            (Some(_), None) => true,
            _ => false,
        };
        if take_video {
            let (cfg, _) = video.ok_or(Error::Truncated)?;
            let s = &vs[i];
            pes.clear();
            annex_b(cfg, s, &mut pes)?;
            let pcr = (pcr_pid == VIDEO_PID).then(|| s.dts.saturating_sub(PCR_LEAD));
            w.pes(VIDEO_PID, 0xE0, s.pts, Some(s.dts), &pes, pcr);
            i += 1;
        } else {
            let (cfg, _) = audio.ok_or(Error::Truncated)?;
            let s = &aus[j];
            pes.clear();
            adts(cfg, s.data, &mut pes)?;
            let pcr = (pcr_pid == AUDIO_PID).then(|| s.pts.saturating_sub(PCR_LEAD));
            w.pes(AUDIO_PID, 0xC0, s.pts, None, &pes, pcr);
            j += 1;
        }
    }
    Ok(w.out)
}

/// The PAT: program 1 at [`PMT_PID`].
fn pat() -> Vec<u8> {
    let mut s = vec![0x00, 0, 0, 0x00, 0x01, 0xC1, 0x00, 0x00];
    s.extend_from_slice(&[0x00, 0x01, 0xE0 | (PMT_PID >> 8) as u8, PMT_PID as u8]);
    finish_section(s)
}

/// The PMT: H.264 (stream type 0x1B) and AAC in ADTS (0x0F).
fn pmt(video: bool, audio: bool) -> Vec<u8> {
    let pcr_pid = if video { VIDEO_PID } else { AUDIO_PID };
    let mut s = vec![0x02, 0, 0, 0x00, 0x01, 0xC1, 0x00, 0x00];
    s.extend_from_slice(&[0xE0 | (pcr_pid >> 8) as u8, pcr_pid as u8, 0xF0, 0x00]);
    for (on, kind, pid) in [(video, 0x1B, VIDEO_PID), (audio, 0x0F, AUDIO_PID)] {
        if on {
            s.extend_from_slice(&[kind, 0xE0 | (pid >> 8) as u8, pid as u8, 0xF0, 0x00]);
        }
    }
    finish_section(s)
}

/// Fills in a section's length (after the 3-byte header, with the CRC) and
/// appends the CRC.
fn finish_section(mut s: Vec<u8>) -> Vec<u8> {
    let len = s.len() - 3 + 4;
    s[1] = 0xB0 | ((len >> 8) as u8 & 0x0F);
    s[2] = len as u8;
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, no reflection, no final xor).
/// Sections are a few dozen bytes: a bitwise loop costs nothing here.
pub fn crc32_mpeg2(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// An access unit in Annex B: an access unit delimiter, then SPS and PPS
/// before an IDR, then each NAL unit after a start code.
fn annex_b(cfg: &VideoConfig, s: &VideoSample<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
    const START: [u8; 4] = [0, 0, 0, 1];
    out.extend_from_slice(&START);
    out.extend_from_slice(&[0x09, 0xF0]);
    if s.keyframe {
        for ps in cfg.sps.iter().chain(&cfg.pps) {
            out.extend_from_slice(&START);
            out.extend_from_slice(ps);
        }
    }
    let n = usize::from(cfg.nal_length_size);
    let mut rest = s.data;
    while !rest.is_empty() {
        let len_bytes = rest.get(..n).ok_or(Error::Truncated)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let nal = rest.get(n..n + len).ok_or(Error::Truncated)?;
        // The sample's own AUD, SPS and PPS are already covered above.
        let kind = nal.first().map_or(0, |b| b & 0x1F);
        if !(kind == 9 || (s.keyframe && (kind == 7 || kind == 8))) {
            out.extend_from_slice(&START);
            out.extend_from_slice(nal);
        }
        rest = &rest[n + len..];
    }
    Ok(())
}

/// An AAC frame behind its 7-byte ADTS header.
fn adts(cfg: &AudioConfig, frame: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let len = frame.len() + 7;
    if len >= 1 << 13 || cfg.object_type == 0 || cfg.object_type > 4 || cfg.sample_rate_index > 12 {
        return Err(Error::Unsupported("AAC frame or config"));
    }
    let profile = cfg.object_type - 1;
    out.extend_from_slice(&[
        0xFF,
        0xF1,
        (profile << 6) | (cfg.sample_rate_index << 2) | ((cfg.channels >> 2) & 1),
        ((cfg.channels & 3) << 6) | ((len >> 11) as u8 & 0x03),
        (len >> 3) as u8,
        ((len as u8 & 0x07) << 5) | 0x1F,
        0xFC,
    ]);
    out.extend_from_slice(frame);
    Ok(())
}

/// Packetises sections and PES packets with per-PID continuity counters.
#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    /// Continuity counters: PAT, PMT, video, audio.
    cc: [u8; 4],
}

impl Writer {
    fn next_cc(&mut self, pid: u16) -> u8 {
        let slot = match pid {
            0 => 0,
            PMT_PID => 1,
            VIDEO_PID => 2,
            _ => 3,
        };
        let now = self.cc[slot];
        self.cc[slot] = (now + 1) & 0x0F;
        now
    }

    /// A PSI section in one packet (ours are short), after a pointer field.
    fn section(&mut self, pid: u16, section: &[u8]) {
        let mut payload = Vec::with_capacity(section.len() + 1);
        payload.push(0);
        payload.extend_from_slice(section);
        self.packets(pid, &payload, None, true);
    }

    /// A PES packet: header with PTS (and DTS when it differs), then data.
    fn pes(
        &mut self,
        pid: u16,
        stream_id: u8,
        pts: u64,
        dts: Option<u64>,
        data: &[u8],
        pcr: Option<u64>,
    ) {
        let dts = dts.filter(|d| *d != pts);
        let header_len = if dts.is_some() { 10 } else { 5 };
        let mut p = Vec::with_capacity(data.len() + 9 + header_len);
        p.extend_from_slice(&[0, 0, 1, stream_id]);
        let body = 3 + header_len + data.len();
        // Video may exceed 65535 bytes: length 0 means "unbounded" there.
        let pes_len = if body > 0xFFFF { 0 } else { body as u16 };
        p.extend_from_slice(&pes_len.to_be_bytes());
        p.push(0x80);
        p.push(if dts.is_some() { 0xC0 } else { 0x80 });
        p.push(header_len as u8);
        push_timestamp(&mut p, if dts.is_some() { 0x3 } else { 0x2 }, pts);
        if let Some(d) = dts {
            push_timestamp(&mut p, 0x1, d);
        }
        p.extend_from_slice(data);
        self.packets(pid, &p, pcr, false);
    }

    /// Splits a payload into packets; the first carries the start flag and
    /// the PCR; the last is padded with adaptation-field stuffing (sections
    /// with 0xFF after the section instead).
    fn packets(&mut self, pid: u16, payload: &[u8], pcr: Option<u64>, psi: bool) {
        let mut rest = payload;
        let mut first = true;
        while first || !rest.is_empty() {
            let mut pkt = [0xFFu8; PACKET];
            pkt[0] = 0x47;
            pkt[1] = (if first { 0x40 } else { 0 }) | ((pid >> 8) as u8 & 0x1F);
            pkt[2] = pid as u8;
            let cc = self.next_cc(pid);
            let pcr_here = if first { pcr } else { None };
            let adaptation_min = if pcr_here.is_some() { 8 } else { 0 };
            let room = PACKET - 4 - adaptation_min;
            let take = rest.len().min(room);
            let stuffing = if psi { 0 } else { room - take };
            let adaptation = adaptation_min + stuffing;
            if adaptation > 0 {
                pkt[3] = 0x30 | cc;
                // adaptation_field_length counts the bytes after itself.
                pkt[4] = (adaptation - 1) as u8;
                if adaptation > 1 {
                    pkt[5] = if pcr_here.is_some() { 0x10 } else { 0x00 };
                    if let Some(pcr) = pcr_here {
                        let base = pcr & ((1 << 33) - 1);
                        pkt[6] = (base >> 25) as u8;
                        pkt[7] = (base >> 17) as u8;
                        pkt[8] = (base >> 9) as u8;
                        pkt[9] = (base >> 1) as u8;
                        pkt[10] = (((base & 1) as u8) << 7) | 0x7E;
                        pkt[11] = 0;
                    }
                }
            } else {
                pkt[3] = 0x10 | cc;
            }
            let at = 4 + adaptation;
            pkt[at..at + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.out.extend_from_slice(&pkt);
            first = false;
        }
    }
}

/// A 33-bit timestamp in PES form: marker bits between its three parts.
fn push_timestamp(p: &mut Vec<u8>, prefix: u8, t: u64) {
    let t = t & ((1 << 33) - 1);
    p.push((prefix << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1);
    p.push((t >> 22) as u8);
    p.push((((t >> 15) as u8 & 0x7F) << 1) | 1);
    p.push((t >> 7) as u8);
    p.push(((t as u8 & 0x7F) << 1) | 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn video_cfg() -> VideoConfig {
        VideoConfig {
            nal_length_size: 4,
            sps: vec![vec![0x67, 0x64, 0x00, 0x1F]],
            pps: vec![vec![0x68, 0xEE, 0x3C, 0x80]],
        }
    }

    fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    /// Reads a TS back: per PID, the reassembled payload units with their
    /// PTS and DTS, checking sync bytes and continuity on the way.
    /// A payload unit read back: PTS, DTS, bytes.
    type Unit = (Option<u64>, Option<u64>, Vec<u8>);

    fn demux(ts: &[u8]) -> HashMap<u16, Vec<Unit>> {
        assert_eq!(ts.len() % PACKET, 0);
        let mut units: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
        let mut last_cc: HashMap<u16, u8> = HashMap::new();
        for pkt in ts.chunks(PACKET) {
            assert_eq!(pkt[0], 0x47);
            let pid = (u16::from(pkt[1] & 0x1F) << 8) | u16::from(pkt[2]);
            let start = pkt[1] & 0x40 != 0;
            let cc = pkt[3] & 0x0F;
            if let Some(prev) = last_cc.insert(pid, cc) {
                assert_eq!(cc, (prev + 1) & 0x0F, "continuity on PID {pid:#x}");
            }
            let mut at = 4;
            if pkt[3] & 0x20 != 0 {
                at += 1 + usize::from(pkt[4]);
            }
            let list = units.entry(pid).or_default();
            if start {
                list.push(Vec::new());
            }
            list.last_mut().unwrap().extend_from_slice(&pkt[at..]);
        }
        let ts_of = |b: &[u8]| -> u64 {
            (u64::from(b[0] >> 1 & 0x07) << 30)
                | (u64::from(b[1]) << 22)
                | (u64::from(b[2] >> 1) << 15)
                | (u64::from(b[3]) << 7)
                | u64::from(b[4] >> 1)
        };
        units
            .into_iter()
            .map(|(pid, list)| {
                let parsed = list
                    .into_iter()
                    .map(|u| {
                        if pid == 0 || pid == PMT_PID {
                            return (None, None, u);
                        }
                        assert_eq!(&u[..3], &[0, 0, 1]);
                        let flags = u[7];
                        let hl = usize::from(u[8]);
                        let pts = (flags & 0x80 != 0).then(|| ts_of(&u[9..14]));
                        let dts = (flags & 0x40 != 0).then(|| ts_of(&u[14..19]));
                        (pts, dts, u[9 + hl..].to_vec())
                    })
                    .collect();
                (pid, parsed)
            })
            .collect()
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn a_segment_round_trips_through_a_demuxer() {
        let idr = avcc(&[&[0x65, 1, 2, 3]]);
        let body = [vec![0x41u8], vec![9u8; 500]].concat();
        let p = avcc(&[&[0x09, 0xF0], &body]);
        let big = vec![0x41u8; 70_000];
        let huge = avcc(&[&big]);
        let video = [
            VideoSample {
                dts: 900_000,
                pts: 903_000,
                keyframe: true,
                data: &idr,
            },
            VideoSample {
                dts: 903_000,
                pts: 906_000,
                keyframe: false,
                data: &p,
            },
            VideoSample {
                dts: 906_000,
                pts: 906_000,
                keyframe: false,
                data: &huge,
            },
        ];
        let frames = [vec![0x21u8; 300], vec![0x22u8; 301]];
        let audio = [
            AudioSample {
                pts: 900_000,
                data: &frames[0],
            },
            AudioSample {
                pts: 901_920,
                data: &frames[1],
            },
        ];
        let acfg = AudioConfig {
            object_type: 2,
            sample_rate_index: 3,
            channels: 2,
        };
        let ts = mux_segment(Some((&video_cfg(), &video)), Some((&acfg, &audio))).unwrap();
        // PAT and PMT first, each a valid section.
        assert_eq!(&ts[1..3], &[0x40, 0x00]);
        let pat_len = usize::from(ts[6] & 0x0F) << 8 | usize::from(ts[7]);
        let pat = &ts[5..5 + 3 + pat_len];
        assert_eq!(crc32_mpeg2(pat), 0, "a section with its CRC checks to zero");
        let units = demux(&ts);
        let pmt = &units[&PMT_PID][0].2;
        assert_eq!(
            crc32_mpeg2(&pmt[1..1 + 3 + (usize::from(pmt[2] & 0x0F) << 8 | usize::from(pmt[3]))]),
            0
        );
        let v = &units[&VIDEO_PID];
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].0, v[0].1), (Some(903_000), Some(900_000)));
        assert_eq!((v[2].0, v[2].1), (Some(906_000), None), "no DTS when equal");
        let mut want = vec![0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1F];
        want.extend_from_slice(&[
            0, 0, 0, 1, 0x68, 0xEE, 0x3C, 0x80, 0, 0, 0, 1, 0x65, 1, 2, 3,
        ]);
        assert_eq!(v[0].2, want, "AUD, SPS, PPS, then the IDR");
        assert_eq!(&v[1].2[..6], &[0, 0, 0, 1, 0x09, 0xF0]);
        assert_eq!(
            v[1].2.len(),
            6 + 4 + 501,
            "the sample's own AUD is not doubled"
        );
        assert_eq!(v[2].2.len(), 6 + 4 + 70_000, "a PES over 64 KiB");
        let a = &units[&AUDIO_PID];
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].0, Some(901_920));
        assert_eq!(&a[0].2[..2], &[0xFF, 0xF1]);
        let adts_len = (usize::from(a[0].2[3] & 3) << 11)
            | (usize::from(a[0].2[4]) << 3)
            | usize::from(a[0].2[5] >> 5);
        assert_eq!(adts_len, 307);
        assert_eq!(&a[0].2[7..], &frames[0][..]);
    }

    #[test]
    fn the_first_video_packet_carries_the_pcr() {
        let idr = avcc(&[&[0x65, 1]]);
        let video = [VideoSample {
            dts: 90_000,
            pts: 90_000,
            keyframe: true,
            data: &idr,
        }];
        let ts = mux_segment(Some((&video_cfg(), &video)), None).unwrap();
        let pkt = ts
            .chunks(PACKET)
            .find(|p| (u16::from(p[1] & 0x1F) << 8 | u16::from(p[2])) == VIDEO_PID)
            .unwrap();
        assert_eq!(pkt[3] & 0x20, 0x20, "an adaptation field");
        assert_eq!(pkt[5] & 0x10, 0x10, "with a PCR");
        let base = (u64::from(pkt[6]) << 25)
            | (u64::from(pkt[7]) << 17)
            | (u64::from(pkt[8]) << 9)
            | (u64::from(pkt[9]) << 1)
            | u64::from(pkt[10] >> 7);
        assert_eq!(base, 90_000 - PCR_LEAD);
    }

    #[test]
    fn bad_samples_are_errors_not_panics() {
        let short = [0u8, 0, 0, 9, 0x65];
        let video = [VideoSample {
            dts: 0,
            pts: 0,
            keyframe: false,
            data: &short,
        }];
        assert_eq!(
            mux_segment(Some((&video_cfg(), &video)), None),
            Err(Error::Truncated)
        );
        assert!(mux_segment(None, None).is_err());
        let cfg = VideoConfig {
            nal_length_size: 3,
            ..video_cfg()
        };
        assert!(mux_segment(Some((&cfg, &[])), None).is_err());
        let acfg = AudioConfig {
            object_type: 2,
            sample_rate_index: 15,
            channels: 2,
        };
        let frame = [0u8; 10];
        let audio = [AudioSample {
            pts: 0,
            data: &frame,
        }];
        assert!(mux_segment(None, Some((&acfg, &audio))).is_err());
    }
}
