//! SCTE-35 splice information sections (ANSI/SCTE 35 2022): the cue
//! messages that open and close ad breaks. Read from an ingest (a TS
//! PID of stream type 0x86, an RTMP cue point) and written, hex or base64,
//! into HLS `EXT-X-DATERANGE` tags.
//!
//! Only what ad insertion acts on is modelled: `splice_insert`,
//! `time_signal` with its segmentation descriptors, and `splice_null`;
//! other commands are kept as their type. Encrypted sections are refused.

use crc::{Crc, CRC_32_MPEG_2};

/// The CRC that closes a section (the `crc` crate's catalogue has it).
const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_MPEG_2);

/// `table_id` of a splice information section.
const TABLE_ID: u8 = 0xFC;
/// Largest section read: `section_length` is 12 bits.
pub const MAX_SECTION: usize = 4096 + 3;

/// A splice information section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpliceInfo {
    /// Added to every PTS in the section (33 bits).
    pub pts_adjustment: u64,
    /// What to do.
    pub command: SpliceCommand,
    /// Segmentation descriptors (`time_signal` says what it signals here).
    pub segmentations: Vec<Segmentation>,
}

/// A splice command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpliceCommand {
    /// `splice_null` (a heartbeat).
    Null,
    /// `splice_insert`: a break starts (out of network) or ends.
    Insert(SpliceInsert),
    /// `time_signal`: a moment, described by the section's segmentation
    /// descriptors. `None`: immediately.
    TimeSignal(Option<u64>),
    /// Another command, by its type.
    Other(u8),
}

/// The fields of `splice_insert` that insertion uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpliceInsert {
    /// `splice_event_id`.
    pub event_id: u32,
    /// A cancelled event: ignore it.
    pub cancel: bool,
    /// `true`: the break starts (out of the network feed); `false`: it ends.
    pub out_of_network: bool,
    /// The splice time in 90 kHz ticks; `None` with `splice_immediate_flag`.
    pub pts: Option<u64>,
    /// The break's duration in 90 kHz ticks, if given.
    pub duration: Option<u64>,
    /// With a duration: return to the network by itself at its end.
    pub auto_return: bool,
    /// `unique_program_id`.
    pub program_id: u16,
}

/// A `segmentation_descriptor`: what a `time_signal` marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segmentation {
    /// `segmentation_event_id`.
    pub event_id: u32,
    /// A cancelled event.
    pub cancel: bool,
    /// `segmentation_type_id` (0x30 provider ad start, 0x34 provider
    /// placement opportunity start, 0x35 its end, …).
    pub type_id: u8,
    /// In 90 kHz ticks, if given.
    pub duration: Option<u64>,
}

impl Segmentation {
    /// Whether this type opens a break (an ad or a placement opportunity starts).
    pub fn starts_break(&self) -> bool {
        matches!(
            self.type_id,
            0x22 | 0x30 | 0x32 | 0x34 | 0x36 | 0x38 | 0x3A | 0x44 | 0x46
        )
    }

    /// Whether this type closes a break.
    pub fn ends_break(&self) -> bool {
        matches!(
            self.type_id,
            0x23 | 0x31 | 0x33 | 0x35 | 0x37 | 0x39 | 0x3B | 0x45 | 0x47
        )
    }
}

/// Why a section could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Scte35Error {
    /// The bytes end before the section does.
    #[error("the SCTE-35 section is truncated")]
    Truncated,
    /// Not a splice information section, or a field is out of range.
    #[error("not an SCTE-35 splice information section: {0}")]
    Malformed(&'static str),
    /// The CRC does not match.
    #[error("the SCTE-35 section's CRC does not match")]
    Crc,
    /// The section is encrypted.
    #[error("encrypted SCTE-35 sections are not supported")]
    Encrypted,
}

impl SpliceInfo {
    /// A `splice_insert` section that opens (`out`) or closes a break at
    /// `pts` (90 kHz; `None`: now), lasting `duration` ticks if given.
    pub fn insert(event_id: u32, out: bool, pts: Option<u64>, duration: Option<u64>) -> SpliceInfo {
        SpliceInfo {
            pts_adjustment: 0,
            command: SpliceCommand::Insert(SpliceInsert {
                event_id,
                cancel: false,
                out_of_network: out,
                pts,
                duration,
                auto_return: duration.is_some(),
                program_id: 1,
            }),
            segmentations: Vec::new(),
        }
    }

    /// Parses one section (starting at `table_id`); bytes after it are ignored.
    pub fn parse(b: &[u8]) -> Result<SpliceInfo, Scte35Error> {
        if b.len() < 3 {
            return Err(Scte35Error::Truncated);
        }
        if b[0] != TABLE_ID {
            return Err(Scte35Error::Malformed("table_id is not 0xFC"));
        }
        let len = usize::from(u16::from_be_bytes([b[1], b[2]]) & 0x0FFF);
        let total = 3 + len;
        if b.len() < total {
            return Err(Scte35Error::Truncated);
        }
        // The fixed part (11 bytes after the length) and the CRC.
        if len < 11 + 4 + 2 {
            return Err(Scte35Error::Malformed("section too short"));
        }
        let section = &b[..total];
        let (body, crc) = section.split_at(total - 4);
        if CRC.checksum(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(Scte35Error::Crc);
        }
        let mut r = Reader {
            b: &body[3..],
            at: 0,
        };
        let _protocol = r.u8()?;
        let flags = r.u8()?;
        if flags & 0x80 != 0 {
            return Err(Scte35Error::Encrypted);
        }
        let pts_adjustment = (u64::from(flags & 1) << 32) | u64::from(r.u32()?);
        let _cw_index = r.u8()?;
        let tier_and_len = r.u24()?;
        let command_len = (tier_and_len & 0x0FFF) as usize;
        let command_type = r.u8()?;
        let command_bytes = if command_len == 0x0FFF {
            // Legacy: the length is not given; the command parses itself.
            r.rest()
        } else {
            r.take(command_len)?
        };
        let mut c = Reader {
            b: command_bytes,
            at: 0,
        };
        let command = match command_type {
            0x00 => SpliceCommand::Null,
            0x05 => SpliceCommand::Insert(read_insert(&mut c)?),
            0x06 => SpliceCommand::TimeSignal(read_splice_time(&mut c)?),
            t => SpliceCommand::Other(t),
        };
        if command_len == 0x0FFF {
            r.at += c.at;
        }
        let loop_len = usize::from(r.u16()?);
        let mut d = Reader {
            b: r.take(loop_len)?,
            at: 0,
        };
        let mut segmentations = Vec::new();
        while d.at < d.b.len() {
            let tag = d.u8()?;
            let dlen = usize::from(d.u8()?);
            let body = d.take(dlen)?;
            // `CUEI` segmentation descriptors only.
            if tag == 0x02 && body.len() >= 4 && &body[..4] == b"CUEI" {
                if let Some(s) = read_segmentation(&body[4..])? {
                    segmentations.push(s);
                }
            }
        }
        Ok(SpliceInfo {
            pts_adjustment,
            command,
            segmentations,
        })
    }

    /// The section's bytes, with its CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut cmd = Vec::with_capacity(32);
        let command_type = match &self.command {
            SpliceCommand::Null => 0x00,
            SpliceCommand::Insert(i) => {
                write_insert(&mut cmd, i);
                0x05
            }
            SpliceCommand::TimeSignal(pts) => {
                write_splice_time(&mut cmd, *pts);
                0x06
            }
            SpliceCommand::Other(t) => *t,
        };
        let mut desc = Vec::new();
        for s in &self.segmentations {
            write_segmentation(&mut desc, s);
        }
        let mut out = Vec::with_capacity(32 + cmd.len() + desc.len());
        out.push(TABLE_ID);
        out.extend([0, 0]); // length, below
        out.push(0); // protocol_version
        out.push(((self.pts_adjustment >> 32) & 1) as u8);
        out.extend(((self.pts_adjustment & 0xFFFF_FFFF) as u32).to_be_bytes());
        out.push(0); // cw_index
                     // tier 0xFFF, splice_command_length 12 bits.
        let tier_len = (0xFFFu32 << 12) | (cmd.len() as u32 & 0x0FFF);
        out.extend(&tier_len.to_be_bytes()[1..]);
        out.push(command_type);
        out.extend(&cmd);
        out.extend((desc.len() as u16).to_be_bytes());
        out.extend(&desc);
        let len = out.len() - 3 + 4;
        // section_syntax_indicator 0, private_indicator 0, sap_type 3.
        out[1] = 0x30 | ((len >> 8) as u8 & 0x0F);
        out[2] = (len & 0xFF) as u8;
        let crc = CRC.checksum(&out);
        out.extend(crc.to_be_bytes());
        out
    }

    /// `0x…` upper-case hex, as `EXT-X-DATERANGE` wants it.
    pub fn to_hex(&self) -> String {
        let mut s = String::from("0x");
        for b in self.encode() {
            s.push_str(&format!("{b:02X}"));
        }
        s
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Scte35Error> {
        let end = self.at.checked_add(n).ok_or(Scte35Error::Truncated)?;
        let s = self.b.get(self.at..end).ok_or(Scte35Error::Truncated)?;
        self.at = end;
        Ok(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        &self.b[self.at.min(self.b.len())..]
    }
    fn u8(&mut self) -> Result<u8, Scte35Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Scte35Error> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u24(&mut self) -> Result<u32, Scte35Error> {
        let s = self.take(3)?;
        Ok(u32::from_be_bytes([0, s[0], s[1], s[2]]))
    }
    fn u32(&mut self) -> Result<u32, Scte35Error> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    /// 7 reserved bits and a 33-bit count.
    fn ticks(&mut self) -> Result<u64, Scte35Error> {
        let s = self.take(5)?;
        Ok((u64::from(s[0] & 1) << 32) | u64::from(u32::from_be_bytes([s[1], s[2], s[3], s[4]])))
    }
}

fn read_splice_time(r: &mut Reader<'_>) -> Result<Option<u64>, Scte35Error> {
    let first = *r.b.get(r.at).ok_or(Scte35Error::Truncated)?;
    if first & 0x80 != 0 {
        Ok(Some(r.ticks()? & 0x1_FFFF_FFFF))
    } else {
        r.at += 1;
        Ok(None)
    }
}

fn read_insert(r: &mut Reader<'_>) -> Result<SpliceInsert, Scte35Error> {
    let mut i = SpliceInsert {
        event_id: r.u32()?,
        cancel: r.u8()? & 0x80 != 0,
        ..SpliceInsert::default()
    };
    if i.cancel {
        return Ok(i);
    }
    let flags = r.u8()?;
    i.out_of_network = flags & 0x80 != 0;
    let program_splice = flags & 0x40 != 0;
    let has_duration = flags & 0x20 != 0;
    let immediate = flags & 0x10 != 0;
    if program_splice {
        if !immediate {
            i.pts = read_splice_time(r)?;
        }
    } else {
        let count = usize::from(r.u8()?);
        for _ in 0..count {
            let _component = r.u8()?;
            if !immediate {
                let t = read_splice_time(r)?;
                i.pts = i.pts.or(t);
            }
        }
    }
    if has_duration {
        let s = r.take(5)?;
        i.auto_return = s[0] & 0x80 != 0;
        i.duration = Some(
            (u64::from(s[0] & 1) << 32) | u64::from(u32::from_be_bytes([s[1], s[2], s[3], s[4]])),
        );
    }
    i.program_id = r.u16()?;
    Ok(i)
}

fn read_segmentation(b: &[u8]) -> Result<Option<Segmentation>, Scte35Error> {
    let mut r = Reader { b, at: 0 };
    let event_id = r.u32()?;
    let cancel = r.u8()? & 0x80 != 0;
    if cancel {
        return Ok(Some(Segmentation {
            event_id,
            cancel,
            type_id: 0,
            duration: None,
        }));
    }
    let flags = r.u8()?;
    let program = flags & 0x80 != 0;
    let has_duration = flags & 0x40 != 0;
    let delivery_not_restricted = flags & 0x20 != 0;
    let _ = delivery_not_restricted;
    if !program {
        let count = usize::from(r.u8()?);
        r.take(count.checked_mul(6).ok_or(Scte35Error::Truncated)?)?;
    }
    let duration = if has_duration {
        let s = r.take(5)?;
        Some(u64::from_be_bytes([0, 0, 0, s[0], s[1], s[2], s[3], s[4]]))
    } else {
        None
    };
    let _upid_type = r.u8()?;
    let upid_len = usize::from(r.u8()?);
    r.take(upid_len)?;
    let type_id = r.u8()?;
    Ok(Some(Segmentation {
        event_id,
        cancel,
        type_id,
        duration,
    }))
}

fn write_splice_time(out: &mut Vec<u8>, pts: Option<u64>) {
    match pts {
        Some(t) => {
            let t = t & 0x1_FFFF_FFFF;
            out.push(0xFE | ((t >> 32) as u8 & 1));
            out.extend(((t & 0xFFFF_FFFF) as u32).to_be_bytes());
        }
        None => out.push(0x7F),
    }
}

fn write_insert(out: &mut Vec<u8>, i: &SpliceInsert) {
    out.extend(i.event_id.to_be_bytes());
    out.push(if i.cancel { 0xFF } else { 0x7F });
    if i.cancel {
        return;
    }
    let mut flags = 0x40 | 0x0F; // program_splice, reserved bits
    if i.out_of_network {
        flags |= 0x80;
    }
    if i.duration.is_some() {
        flags |= 0x20;
    }
    if i.pts.is_none() {
        flags |= 0x10;
    }
    out.push(flags);
    if i.pts.is_some() {
        write_splice_time(out, i.pts);
    }
    if let Some(d) = i.duration {
        let d = d & 0x1_FFFF_FFFF;
        out.push(if i.auto_return { 0x80 } else { 0 } | 0x7E | ((d >> 32) as u8 & 1));
        out.extend(((d & 0xFFFF_FFFF) as u32).to_be_bytes());
    }
    out.extend(i.program_id.to_be_bytes());
    out.extend([0, 0]); // avail_num, avails_expected
}

fn write_segmentation(out: &mut Vec<u8>, s: &Segmentation) {
    let mut body = Vec::with_capacity(24);
    body.extend(b"CUEI");
    body.extend(s.event_id.to_be_bytes());
    body.push(if s.cancel { 0xFF } else { 0x7F });
    if !s.cancel {
        // program_segmentation, duration flag, delivery not restricted.
        let mut flags = 0x80 | 0x20 | 0x1F;
        if s.duration.is_some() {
            flags |= 0x40;
        }
        body.push(flags);
        if let Some(d) = s.duration {
            body.extend(&(d & 0xFF_FFFF_FFFF).to_be_bytes()[3..]);
        }
        body.extend([0, 0]); // no UPID
        body.push(s.type_id);
        body.extend([0, 0]); // segment_num, segments_expected
    }
    out.push(0x02);
    out.push(body.len() as u8);
    out.extend(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_round_trips() {
        let out = SpliceInfo::insert(7, true, Some(900_000), Some(30 * 90_000));
        let bytes = out.encode();
        assert_eq!(SpliceInfo::parse(&bytes).unwrap(), out);
        let back_in = SpliceInfo::insert(7, false, None, None);
        assert_eq!(SpliceInfo::parse(&back_in.encode()).unwrap(), back_in);
        assert!(out.to_hex().starts_with("0xFC30"));
    }

    #[test]
    fn time_signal_with_a_placement_opportunity_round_trips() {
        let s = SpliceInfo {
            pts_adjustment: 0,
            command: SpliceCommand::TimeSignal(Some(0x1_0000_0001)),
            segmentations: vec![Segmentation {
                event_id: 3,
                cancel: false,
                type_id: 0x34,
                duration: Some(15 * 90_000),
            }],
        };
        let parsed = SpliceInfo::parse(&s.encode()).unwrap();
        assert_eq!(parsed, s);
        assert!(parsed.segmentations[0].starts_break());
    }

    #[test]
    fn a_known_section_parses() {
        // The splice_insert example of SCTE 35 2022 section 14.2 (base64
        // "/DAvAAAAAAAA///wFAVIAACPf+/+c2nALv4AUsz1AAAAAAAKAAhDVUVJAAABNWLbowo=").
        let hex = "FC302F000000000000FFFFF014054800008F7FEFFE7369C02EFE0052CCF500000000000A0008435545490000013562DBA30A";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let s = SpliceInfo::parse(&bytes).unwrap();
        let SpliceCommand::Insert(i) = s.command else {
            panic!("not an insert: {s:?}");
        };
        assert_eq!(i.event_id, 0x4800008F);
        assert!(i.out_of_network);
        assert_eq!(i.pts, Some(0x07369C02E));
        assert_eq!(i.duration, Some(0x00052CCF5));
        assert!(i.auto_return);
    }

    #[test]
    fn bad_sections_are_refused() {
        let good = SpliceInfo::insert(1, true, None, Some(90_000)).encode();
        assert_eq!(SpliceInfo::parse(&good[..5]), Err(Scte35Error::Truncated));
        let mut flipped = good.clone();
        flipped[10] ^= 1;
        assert_eq!(SpliceInfo::parse(&flipped), Err(Scte35Error::Crc));
        assert!(SpliceInfo::parse(&[0x00, 0, 0]).is_err());
    }
}
