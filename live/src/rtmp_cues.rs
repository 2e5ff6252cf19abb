//! Ad cues in an RTMP publish: `onCuePoint` data messages (also under
//! `@setDataFrame`), which `rml_rtmp`'s session drops (it acts on
//! `onMetaData` alone), read from a second pass over the chunk stream and
//! made SCTE-35 `splice_insert` sections, so they reach the channel exactly
//! as the SRT ingest's cues do.
//!
//! Encoders write cues in two ways, both read here: the SCTE-35 section
//! itself in a string property (`scte35`, `code` or `data`; base64, or hex
//! with `0x`), or Adobe's cue point object, whose `name`, `type` or
//! `parameters.cue_type` says `spliceOut` / `cue-out` / `adStart` (or the
//! `In` / `End` words) and whose `duration` (seconds, at the top or in
//! `parameters`) is the break's. The second pass costs a copy of each
//! message; it stops at the first chunk it cannot read (the session then
//! refuses the connection) and never ends a publish by itself.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use base64::Engine as _;
use cascade_ads::scte35::SpliceInfo;
use rml_rtmp::chunk_io::ChunkDeserializer;
use rml_rtmp::rml_amf0::{self, Amf0Value};

/// AMF0 data messages larger than this are not cues; they are skipped.
const MAX_CUE_BYTES: usize = 16 * 1024;
/// The RTMP message type of AMF0 data, and of a chunk size change.
const AMF0_DATA: u8 = 18;
const SET_CHUNK_SIZE: u8 = 1;

/// Reads a publisher's chunk stream for cue points.
pub struct CueWatcher {
    de: Option<ChunkDeserializer>,
    /// The next splice event id for a cue that names none.
    next_id: u32,
}

impl Default for CueWatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl CueWatcher {
    /// A watcher for a connection whose handshake is over.
    pub fn new() -> CueWatcher {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        CueWatcher {
            de: Some(ChunkDeserializer::new()),
            // Ids that do not repeat across a publisher's reconnects.
            next_id: (now as u32) | 0x8000_0000,
        }
    }

    /// The cues in `bytes` (the next bytes after the handshake), as
    /// SCTE-35 sections.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let Some(de) = self.de.as_mut() else {
            return out;
        };
        let mut input = bytes;
        loop {
            let got = std::panic::catch_unwind(AssertUnwindSafe(|| de.get_next_message(input)));
            input = &[];
            let m = match got {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return out,
                _ => {
                    self.de = None;
                    return out;
                }
            };
            match m.type_id {
                SET_CHUNK_SIZE if m.data.len() >= 4 => {
                    let size = u32::from_be_bytes([m.data[0], m.data[1], m.data[2], m.data[3]])
                        & 0x7fff_ffff;
                    if de.set_max_chunk_size(size as usize).is_err() {
                        self.de = None;
                        return out;
                    }
                }
                AMF0_DATA if m.data.len() <= MAX_CUE_BYTES => {
                    if let Some(c) = cue_of(&m.data, &mut self.next_id) {
                        out.push(c);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The SCTE-35 section an AMF0 data message's cue point asks for, if it is
/// one.
pub fn cue_of(data: &[u8], next_id: &mut u32) -> Option<Vec<u8>> {
    let mut values = rml_amf0::deserialize(&mut std::io::Cursor::new(data)).ok()?;
    if matches!(values.first(), Some(Amf0Value::Utf8String(s)) if s == "@setDataFrame") {
        values.remove(0);
    }
    match values.first() {
        Some(Amf0Value::Utf8String(s)) if s == "onCuePoint" => {}
        _ => return None,
    }
    let Some(Amf0Value::Object(props)) = values.get(1) else {
        return None;
    };
    cue_from(props, next_id)
}

fn cue_from(props: &HashMap<String, Amf0Value>, next_id: &mut u32) -> Option<Vec<u8>> {
    let params = match props.get("parameters") {
        Some(Amf0Value::Object(p)) => Some(p),
        _ => None,
    };
    let field = |k: &str| props.get(k).or_else(|| params.and_then(|p| p.get(k)));
    // The section itself.
    for k in ["scte35", "code", "data"] {
        if let Some(Amf0Value::Utf8String(s)) = field(k) {
            if let Some(section) = decode_section(s) {
                return Some(section);
            }
        }
    }
    let text = |k: &str| match field(k) {
        Some(Amf0Value::Utf8String(s)) => s.to_ascii_lowercase(),
        _ => String::new(),
    };
    let number = |k: &str| match field(k) {
        Some(Amf0Value::Number(n)) => Some(*n),
        Some(Amf0Value::Utf8String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let said = [text("cue_type"), text("type"), text("name")].join(" ");
    let words: Vec<&str> = said
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let out = words.iter().any(|w| {
        matches!(
            *w,
            "spliceout" | "cueout" | "adstart" | "breakstart" | "out" | "start"
        )
    });
    let back = words.iter().any(|w| {
        matches!(
            *w,
            "splicein" | "cuein" | "adend" | "breakend" | "in" | "end" | "return"
        )
    });
    let id = number("id")
        .or_else(|| number("splice_event_id"))
        .filter(|n| n.is_finite() && *n >= 0.0 && *n <= f64::from(u32::MAX))
        .map(|n| n as u32);
    if out && !back {
        let duration = number("duration")
            .filter(|d| d.is_finite() && *d >= 1.0 && *d <= 3600.0)
            .map(|d| (d * 90_000.0).round() as u64);
        let id = id.unwrap_or_else(|| {
            let id = *next_id;
            *next_id = next_id.wrapping_add(1) | 0x8000_0000;
            id
        });
        Some(SpliceInfo::insert(id, true, None, duration).encode())
    } else if back && !out {
        Some(SpliceInfo::insert(id.unwrap_or(0), false, None, None).encode())
    } else {
        None
    }
}

/// A splice_info_section written as base64, or as hex after `0x`.
fn decode_section(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() > 8 * 1024 {
        return None;
    }
    let bytes = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if hex.len() % 2 == 0 => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?,
        Some(_) => return None,
        None => base64::engine::general_purpose::STANDARD.decode(s).ok()?,
    };
    // A section starts with its table id.
    (bytes.first() == Some(&0xFC)).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::RtmpMessage;
    use rml_rtmp::time::RtmpTimestamp;

    fn obj(pairs: &[(&str, Amf0Value)]) -> Amf0Value {
        Amf0Value::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        )
    }

    fn data(values: Vec<Amf0Value>) -> Vec<u8> {
        rml_amf0::serialize(&values).unwrap()
    }

    #[test]
    fn adobe_cue_points_and_carried_sections_become_splice_inserts() {
        let mut id = 0x8000_0000;
        let out = data(vec![
            Amf0Value::Utf8String("onCuePoint".into()),
            obj(&[
                ("name", Amf0Value::Utf8String("spliceOut".into())),
                ("type", Amf0Value::Utf8String("event".into())),
                ("time", Amf0Value::Number(12.0)),
                (
                    "parameters",
                    obj(&[
                        ("duration", Amf0Value::Utf8String("30".into())),
                        ("id", Amf0Value::Number(42.0)),
                    ]),
                ),
            ]),
        ]);
        let section = cue_of(&out, &mut id).unwrap();
        assert_eq!(
            section,
            SpliceInfo::insert(42, true, None, Some(30 * 90_000)).encode()
        );
        // The return, under @setDataFrame, and an id made up for a cue
        // without one.
        let back = data(vec![
            Amf0Value::Utf8String("@setDataFrame".into()),
            Amf0Value::Utf8String("onCuePoint".into()),
            obj(&[("name", Amf0Value::Utf8String("cue-in".into()))]),
        ]);
        assert_eq!(
            cue_of(&back, &mut id),
            Some(SpliceInfo::insert(0, false, None, None).encode())
        );
        let no_id = data(vec![
            Amf0Value::Utf8String("onCuePoint".into()),
            obj(&[("type", Amf0Value::Utf8String("adStart".into()))]),
        ]);
        assert_eq!(
            cue_of(&no_id, &mut id),
            Some(SpliceInfo::insert(0x8000_0000, true, None, None).encode())
        );
        // A section carried whole, base64 and hex.
        let section = SpliceInfo::insert(7, true, None, Some(900_000)).encode();
        for s in [
            base64::engine::general_purpose::STANDARD.encode(&section),
            format!(
                "0x{}",
                section
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<String>()
            ),
        ] {
            let d = data(vec![
                Amf0Value::Utf8String("onCuePoint".into()),
                obj(&[("parameters", obj(&[("scte35", Amf0Value::Utf8String(s))]))]),
            ]);
            assert_eq!(cue_of(&d, &mut id).as_deref(), Some(&section[..]));
        }
        // Not cues: metadata, a navigation point, garbage.
        let meta = data(vec![
            Amf0Value::Utf8String("onMetaData".into()),
            obj(&[("width", Amf0Value::Number(1280.0))]),
        ]);
        assert!(cue_of(&meta, &mut id).is_none());
        let nav = data(vec![
            Amf0Value::Utf8String("onCuePoint".into()),
            obj(&[("name", Amf0Value::Utf8String("chapter 2".into()))]),
        ]);
        assert!(cue_of(&nav, &mut id).is_none());
        assert!(cue_of(&[0x02, 0xFF, 0xFF, 1], &mut id).is_none());
        assert!(cue_of(&[], &mut id).is_none());
    }

    #[test]
    fn the_watcher_finds_cues_among_chunks_of_any_size() {
        let mut ser = ChunkSerializer::new();
        let mut stream = ser
            .set_max_chunk_size(64, RtmpTimestamp::new(0))
            .unwrap()
            .bytes;
        // Media bigger than a chunk, then the cue, then more media.
        let video = RtmpMessage::VideoData {
            data: bytes::Bytes::from(vec![0x17; 300]),
        }
        .into_message_payload(RtmpTimestamp::new(40), 1)
        .unwrap();
        stream.extend(ser.serialize(&video, false, false).unwrap().bytes);
        let cue = RtmpMessage::Amf0Data {
            values: vec![
                Amf0Value::Utf8String("onCuePoint".into()),
                obj(&[
                    ("name", Amf0Value::Utf8String("spliceOut".into())),
                    ("duration", Amf0Value::Number(8.0)),
                    ("id", Amf0Value::Number(5.0)),
                ]),
            ],
        }
        .into_message_payload(RtmpTimestamp::new(80), 1)
        .unwrap();
        stream.extend(ser.serialize(&cue, false, false).unwrap().bytes);
        stream.extend(ser.serialize(&video, false, false).unwrap().bytes);
        // Fed a few bytes at a time, as a socket gives them.
        let mut w = CueWatcher::new();
        let mut found = Vec::new();
        for piece in stream.chunks(7) {
            found.extend(w.feed(piece));
        }
        assert_eq!(
            found,
            vec![SpliceInfo::insert(5, true, None, Some(8 * 90_000)).encode()]
        );
        // Garbage stops the watcher, not the caller.
        let mut w = CueWatcher::new();
        assert!(w.feed(&[0xFF; 64]).is_empty());
        assert!(w.feed(&stream).is_empty());
    }
}
