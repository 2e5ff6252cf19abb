//! Just enough of an MPEG transport stream reader for ingest (what SRT
//! carries): the program map says which codecs the encoder sends, and
//! each PES start on the video PID is a frame, a keyframe where the
//! adaptation field marks random access. SCTE-35 cue messages come out
//! whole: from a PID of stream type 0x86 (sections, as the standard
//! carries them) or a private-data PES (0x06) that holds a splice
//! information section (what FFmpeg's muxer writes when it copies one).
//! Pure; checks lengths, never panics; keeps a few PIDs and nothing else.

use crate::es;
use crate::flv::Unsupported;
use crate::frame::Frame;

/// The largest PES kept while it is assembled; a bigger one is dropped.
const MAX_PES: usize = 8 << 20;
/// The largest cue message kept (a section's length is 12 bits).
const MAX_CUE: usize = 4096 + 3;

/// TS packet size.
pub const PACKET: usize = 188;

/// What a run of packets held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The program map named H.264 video and AAC audio.
    Codecs,
    /// A video frame began (`keyframe`: random access).
    VideoFrame {
        /// A keyframe.
        keyframe: bool,
    },
    /// An audio PES began.
    AudioFrame,
    /// A frame (or a configuration) from a PES that completed.
    Frame(Frame),
    /// An SCTE-35 splice information section (from `table_id` 0xFC on),
    /// not checked beyond its length.
    Cue(Vec<u8>),
}

/// How an SCTE-35 PID carries its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CueCarriage {
    /// Sections (stream type 0x86).
    Sections,
    /// Private-data PES (stream type 0x06).
    Pes,
}

/// The reader's state across calls.
#[derive(Debug, Default)]
pub struct Reader {
    pmt_pid: Option<u16>,
    video_pid: Option<u16>,
    audio_pid: Option<u16>,
    /// Bytes of a packet split across two inputs.
    carry: Vec<u8>,
    video_pes: Vec<u8>,
    audio_pes: Vec<u8>,
    cue_pid: Option<(u16, CueCarriage)>,
    cue: Vec<u8>,
    h264: es::H264,
    aac: es::Aac,
}

impl Reader {
    /// Reads `data` (whole or partial packets), calling `on` for what it
    /// finds; an unsupported codec in the program map ends the stream.
    pub fn push(&mut self, data: &[u8], on: &mut impl FnMut(Event)) -> Result<(), Unsupported> {
        let mut input = data;
        if !self.carry.is_empty() {
            let need = PACKET - self.carry.len();
            let take = need.min(input.len());
            self.carry.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.carry.len() < PACKET {
                return Ok(());
            }
            let packet = std::mem::take(&mut self.carry);
            self.packet(&packet, on)?;
        }
        let mut chunks = input.chunks_exact(PACKET);
        for p in &mut chunks {
            self.packet(p, on)?;
        }
        self.carry.extend_from_slice(chunks.remainder());
        Ok(())
    }

    fn packet(&mut self, p: &[u8], on: &mut impl FnMut(Event)) -> Result<(), Unsupported> {
        if p.len() != PACKET || p[0] != 0x47 {
            // Out of sync: skip it (SRT delivers whole packets, so this is
            // an encoder's stuffing or junk).
            return Ok(());
        }
        let start = p[1] & 0x40 != 0;
        let pid = u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]);
        let control = (p[3] >> 4) & 0x3;
        let (payload_at, random_access) = match control {
            1 => (4, false),
            3 => {
                let len = usize::from(p[4]);
                let ra = len > 0 && p.get(5).is_some_and(|f| f & 0x40 != 0);
                (5 + len, ra)
            }
            _ => return Ok(()),
        };
        let Some(payload) = p.get(payload_at..) else {
            return Ok(());
        };
        if pid == 0 && start {
            self.pat(payload);
        } else if Some(pid) == self.pmt_pid && start {
            self.pmt(payload, on)?;
        } else if Some(pid) == self.video_pid {
            if start {
                on(Event::VideoFrame {
                    keyframe: random_access,
                });
                let done = std::mem::take(&mut self.video_pes);
                self.video(&done, on);
            }
            append(&mut self.video_pes, payload, start);
        } else if Some(pid) == self.audio_pid {
            if start {
                on(Event::AudioFrame);
                let done = std::mem::take(&mut self.audio_pes);
                self.audio(&done, on);
            }
            append(&mut self.audio_pes, payload, start);
            // Audio PES usually give their length: finish without waiting
            // for the next one.
            if pes_complete(&self.audio_pes) {
                let done = std::mem::take(&mut self.audio_pes);
                self.audio(&done, on);
            }
        } else if let Some((cue_pid, carriage)) = self.cue_pid.filter(|(p, _)| *p == pid) {
            let _ = cue_pid;
            self.cue_packet(payload, start, carriage, on);
        }
        Ok(())
    }

    /// A packet of the SCTE-35 PID: a message comes out once it is whole.
    fn cue_packet(
        &mut self,
        payload: &[u8],
        start: bool,
        carriage: CueCarriage,
        on: &mut impl FnMut(Event),
    ) {
        if start {
            self.cue.clear();
            let body = match carriage {
                CueCarriage::Sections => {
                    let pointer = usize::from(payload.first().copied().unwrap_or(0));
                    payload.get(1 + pointer..)
                }
                CueCarriage::Pes => {
                    // A PES header, then the section.
                    let header = payload.get(8).map(|h| 9 + usize::from(*h));
                    header
                        .and_then(|h| payload.get(h..))
                        .filter(|_| payload.get(..3) == Some(&[0, 0, 1]))
                }
            };
            match body {
                Some(b) if b.first() == Some(&0xFC) => self.cue.extend_from_slice(b),
                _ => return,
            }
        } else if self.cue.is_empty() || self.cue.len() + payload.len() > MAX_CUE {
            self.cue.clear();
            return;
        } else {
            self.cue.extend_from_slice(payload);
        }
        let Some(len) = self
            .cue
            .get(1..3)
            .map(|b| 3 + (usize::from(b[0] & 0x0f) << 8 | usize::from(b[1])))
        else {
            return;
        };
        if self.cue.len() >= len {
            let mut msg = std::mem::take(&mut self.cue);
            msg.truncate(len);
            on(Event::Cue(msg));
        }
    }

    fn video(&mut self, pes: &[u8], on: &mut impl FnMut(Event)) {
        let Some((pts, dts, data)) = pes_payload(pes) else {
            return;
        };
        let mut frames = Vec::new();
        self.h264
            .access_unit(data, dts.unwrap_or(pts), pts, &mut frames);
        frames.into_iter().for_each(|f| on(Event::Frame(f)));
    }

    fn audio(&mut self, pes: &[u8], on: &mut impl FnMut(Event)) {
        let Some((pts, _, data)) = pes_payload(pes) else {
            return;
        };
        let mut frames = Vec::new();
        self.aac.adts(data, pts, &mut frames);
        frames.into_iter().for_each(|f| on(Event::Frame(f)));
    }

    /// The first program's PMT PID.
    fn pat(&mut self, payload: &[u8]) {
        let Some(section) = section(payload) else {
            return;
        };
        // Program entries after the 5-byte table header, less the CRC.
        let entries = section
            .get(8..section.len().saturating_sub(4))
            .unwrap_or(&[]);
        for e in entries.chunks_exact(4) {
            let program = u16::from(e[0]) << 8 | u16::from(e[1]);
            if program != 0 {
                self.pmt_pid = Some(u16::from(e[2] & 0x1f) << 8 | u16::from(e[3]));
                return;
            }
        }
    }

    /// The video and audio PIDs, and whether their codecs are ours.
    fn pmt(&mut self, payload: &[u8], on: &mut impl FnMut(Event)) -> Result<(), Unsupported> {
        let Some(section) = section(payload) else {
            return Ok(());
        };
        let Some(info_len) = section
            .get(10..12)
            .map(|b| usize::from(b[0] & 0x0f) << 8 | usize::from(b[1]))
        else {
            return Ok(());
        };
        let end = section.len().saturating_sub(4);
        let mut at = 12 + info_len;
        let (mut video, mut audio, mut cue) = (None, None, None);
        while at + 5 <= end {
            let stream_type = section[at];
            let pid = u16::from(section[at + 1] & 0x1f) << 8 | u16::from(section[at + 2]);
            let es_len = usize::from(section[at + 3] & 0x0f) << 8 | usize::from(section[at + 4]);
            match stream_type {
                0x1b => video = Some(pid),
                0x0f => audio = Some(pid),
                0x86 => cue = Some((pid, CueCarriage::Sections)),
                0x06 if cue.is_none() => cue = Some((pid, CueCarriage::Pes)),
                0x24 => return Err(Unsupported::VideoCodec("HEVC")),
                0x01 | 0x02 => return Err(Unsupported::VideoCodec("MPEG-2 video")),
                0x10 => return Err(Unsupported::VideoCodec("MPEG-4 part 2")),
                0x03 | 0x04 => return Err(Unsupported::AudioCodec("MPEG audio (MP2, MP3)")),
                0x81 => return Err(Unsupported::AudioCodec("AC-3")),
                0x87 => return Err(Unsupported::AudioCodec("E-AC-3")),
                _ => {}
            }
            at += 5 + es_len;
        }
        if video.is_none() {
            return Err(Unsupported::VideoCodec(
                "none (no H.264 stream in the program)",
            ));
        }
        let first = self.video_pid.is_none();
        self.video_pid = video;
        self.audio_pid = audio;
        self.cue_pid = cue;
        if first {
            on(Event::Codecs);
        }
        Ok(())
    }
}

/// A PSI section from a payload that starts one (after its pointer field),
/// cut to its announced length.
/// Adds a packet's payload to a PES being assembled (a PES starts only at
/// a unit start; a runaway one is dropped).
fn append(pes: &mut Vec<u8>, payload: &[u8], start: bool) {
    if (pes.is_empty() && !start) || pes.len() + payload.len() > MAX_PES {
        pes.clear();
        return;
    }
    pes.extend_from_slice(payload);
}

/// Whether a PES with a stated length has all its bytes.
fn pes_complete(pes: &[u8]) -> bool {
    let Some(len) = pes
        .get(4..6)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return false;
    };
    len > 0 && pes.len() >= 6 + len
}

/// A PES's presentation time, decode time (if given) and payload, at 90 kHz.
fn pes_payload(pes: &[u8]) -> Option<(i64, Option<i64>, &[u8])> {
    if pes.get(..3)? != [0, 0, 1] {
        return None;
    }
    let flags = *pes.get(7)?;
    let header_len = usize::from(*pes.get(8)?);
    let pts = (flags & 0x80 != 0)
        .then(|| timestamp(pes.get(9..14)?))
        .flatten()?;
    let dts = (flags & 0x40 != 0)
        .then(|| timestamp(pes.get(14..19)?))
        .flatten();
    let mut data = pes.get(9 + header_len..)?;
    let len = usize::from(u16::from_be_bytes([pes[4], pes[5]]));
    if len > 0 {
        data = data.get(..(6 + len).saturating_sub(9 + header_len).min(data.len()))?;
    }
    Some((pts, dts, data))
}

/// A 33-bit PES timestamp from its five bytes.
fn timestamp(b: &[u8]) -> Option<i64> {
    let b: &[u8; 5] = b.try_into().ok()?;
    Some(
        (i64::from(b[0] >> 1 & 0x07) << 30)
            | (i64::from(b[1]) << 22)
            | (i64::from(b[2] >> 1) << 15)
            | (i64::from(b[3]) << 7)
            | i64::from(b[4] >> 1),
    )
}

fn section(payload: &[u8]) -> Option<&[u8]> {
    let pointer = usize::from(*payload.first()?);
    let s = payload.get(1 + pointer..)?;
    let len = usize::from(*s.get(1)? & 0x0f) << 8 | usize::from(*s.get(2)?);
    s.get(..3 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pid: u16, start: bool, random_access: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x47,
            (pid >> 8) as u8 | if start { 0x40 } else { 0 },
            pid as u8,
        ];
        if random_access {
            p.extend([0x30, 1, 0x40]);
        } else {
            p.push(0x10);
        }
        p.extend_from_slice(payload);
        p.resize(PACKET, 0xff);
        p
    }

    fn pat() -> Vec<u8> {
        // pointer, table 0, length 13, ts id, version, sections, program 1 → PID 0x1000, CRC.
        packet(
            0,
            true,
            false,
            &[0, 0, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0, 0, 0, 0, 0],
        )
    }

    fn pmt(streams: &[(u8, u16)]) -> Vec<u8> {
        let mut s = vec![2, 0xb0, 0, 0, 1, 0xc1, 0, 0, 0xe1, 0x00, 0xf0, 0];
        for (t, pid) in streams {
            s.extend([*t, 0xe0 | (pid >> 8) as u8, *pid as u8, 0xf0, 0]);
        }
        s.extend([0, 0, 0, 0]);
        let len = s.len() - 3;
        s[2] = len as u8;
        let mut payload = vec![0];
        payload.extend(s);
        packet(0x1000, true, false, &payload)
    }

    fn read(bytes: &[u8]) -> (Vec<Event>, Result<(), Unsupported>) {
        let mut r = Reader::default();
        let mut events = Vec::new();
        // Split unevenly, as datagrams might be.
        let mut result = Ok(());
        for chunk in bytes.chunks(100) {
            result = r.push(chunk, &mut |e| events.push(e));
            if result.is_err() {
                break;
            }
        }
        (events, result)
    }

    #[test]
    fn codecs_frames_and_keyframes() {
        let mut ts = pat();
        ts.extend(pmt(&[(0x1b, 0x100), (0x0f, 0x101)]));
        ts.extend(packet(0x100, true, true, &[0, 0, 1, 0xe0]));
        ts.extend(packet(0x100, false, false, &[1, 2, 3]));
        ts.extend(packet(0x100, true, false, &[0, 0, 1, 0xe0]));
        ts.extend(packet(0x101, true, false, &[0, 0, 1, 0xc0]));
        let (events, result) = read(&ts);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            vec![
                Event::Codecs,
                Event::VideoFrame { keyframe: true },
                Event::VideoFrame { keyframe: false },
                Event::AudioFrame
            ]
        );
    }

    #[test]
    fn other_codecs_are_named() {
        let mut ts = pat();
        ts.extend(pmt(&[(0x02, 0x100), (0x0f, 0x101)]));
        assert_eq!(read(&ts).1, Err(Unsupported::VideoCodec("MPEG-2 video")));
        let mut ts = pat();
        ts.extend(pmt(&[(0x1b, 0x100), (0x81, 0x101)]));
        assert_eq!(read(&ts).1, Err(Unsupported::AudioCodec("AC-3")));
    }

    #[test]
    fn any_bytes_are_read_without_panic() {
        let mut r = Reader::default();
        let mut state = 12345u32;
        for _ in 0..2000 {
            let mut p = vec![0u8; PACKET];
            for b in &mut p {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (state >> 16) as u8;
            }
            p[0] = 0x47;
            p[1] &= 0x5f; // low PIDs: the PAT and the PMT get exercised
            let _ = r.push(&p, &mut |_| {});
            r.pmt_pid = Some(0x10);
        }
    }

    #[test]
    fn scte35_cues_come_out_of_sections_and_of_private_pes() {
        // The splice_insert example of SCTE 35 (a 60 s break).
        let cue: Vec<u8> = (0..100)
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(
                    &"FC302F000000000000FFFFF014054800008F7FEFFE7369C02EFE0052CCF500000000000A0008435545490000013562DBA30A"[i..i + 2],
                    16,
                )
                .unwrap()
            })
            .collect();
        let mut ts = pat();
        ts.extend(pmt(&[(0x1b, 0x100), (0x0f, 0x101), (0x86, 0x1ff)]));
        let mut payload = vec![0];
        payload.extend(&cue);
        ts.extend(packet(0x1ff, true, false, &payload));
        let (events, _) = read(&ts);
        assert!(events.contains(&Event::Cue(cue.clone())), "{events:?}");

        // FFmpeg's copy: a private-data PES holding the section, split
        // over two packets (stuffed by their adaptation fields, as muxers do).
        let exact = |start: bool, payload: &[u8]| {
            let mut p = vec![0x47, 0x01 | if start { 0x40 } else { 0 }, 0x02, 0x30];
            let af = PACKET - 4 - 1 - payload.len();
            p.push(af as u8);
            if af > 0 {
                p.push(0);
                p.resize(5 + af, 0xff);
            }
            p.extend_from_slice(payload);
            p
        };
        let mut ts = pat();
        ts.extend(pmt(&[(0x1b, 0x100), (0x0f, 0x101), (0x06, 0x102)]));
        let mut pes = vec![0, 0, 1, 0xfc, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
        pes.extend(&cue[..20]);
        ts.extend(exact(true, &pes));
        let (events, _) = read(&ts);
        assert!(
            !events.iter().any(|e| matches!(e, Event::Cue(_))),
            "not whole yet"
        );
        ts.extend(exact(false, &cue[20..]));
        let (events, _) = read(&ts);
        assert!(events.contains(&Event::Cue(cue)), "{events:?}");
    }
}
