//! The asset manifest: everything a packager needs to know about a title's
//! mezzanine, written once by the origin at ingest.

use serde::{Deserialize, Serialize};

use crate::index::TrackIndex;
use crate::Error;

/// The manifest format version this crate writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Largest manifest accepted from the network (a 4-hour title has about
/// 7,200 fragments per track; a few tracks fit comfortably).
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// Mezzanine files larger than this (1 PiB) are refused.
const MAX_BYTES: u64 = 1 << 50;
/// Bitrates above this (1 Tbit/s) are refused.
const MAX_BANDWIDTH: u64 = 1 << 40;
use crate::index::MAX_TICKS;

/// A title's mezzanine, described for packaging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetManifest {
    /// Always [`MANIFEST_VERSION`].
    pub version: u32,
    /// The asset id; also the URL path segment after `/vod/`.
    pub asset: String,
    /// Duration of the longest track, in seconds.
    pub duration: f64,
    /// Video renditions first, highest first, then audio tracks.
    pub tracks: Vec<Track>,
}

/// Video, audio or subtitles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    /// A video rendition (one rung of the ladder).
    Video,
    /// An audio track.
    Audio,
    /// A WebVTT subtitle file (one language). It has no fragments: the
    /// packager cuts it at the video's segment boundaries.
    Subtitle,
}

/// One mezzanine file: a video rendition or an audio track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// Short id used in URLs and as the DASH Representation id, such as `v0` or `a0`.
    pub id: String,
    /// Video or audio.
    pub kind: TrackKind,
    /// The mezzanine file name, relative to the asset's directory.
    pub file: String,
    /// RFC 6381 codec string, derived from the bitstream.
    pub codec: String,
    /// Peak bits per second over any one fragment.
    pub bandwidth: u64,
    /// Mean bits per second over the whole track.
    pub average_bandwidth: u64,
    /// Video only.
    #[serde(default)]
    pub width: u32,
    /// Video only.
    #[serde(default)]
    pub height: u32,
    /// Video only: frames per second.
    #[serde(default)]
    pub frame_rate: f64,
    /// Audio only.
    #[serde(default)]
    pub sample_rate: u32,
    /// Audio only.
    #[serde(default)]
    pub channels: u16,
    /// BCP 47 language (`en`, `hi`), `und` when unknown.
    pub language: String,
    /// The decode-time tick shown at presentation time zero (the media time
    /// of the file's edit list; 0 without one). Decode time minus this,
    /// plus each sample's composition offset, is presentation time.
    #[serde(default)]
    pub media_time: u64,
    /// Ticks per second of `start` and `duration` below.
    pub timescale: u32,
    /// The init segment: `ftyp` and `moov`.
    pub init: ByteRange,
    /// Fragments in order; segment number `n` (from 1) is `fragments[n - 1]`.
    pub fragments: Vec<Fragment>,
    /// A forensically watermarked video track's other copy: the same
    /// pictures with the opposite mark, cut into fragments of the same
    /// times (see [`AssetManifest::variant_b`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked: Option<MarkedCopy>,
}

/// The other copy of a watermarked video track. Its fragments decode with
/// the track's init segment (the encoder's settings are the same), so a
/// session's stream may take each segment from either copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkedCopy {
    /// Whether this copy is variant B (in a title's manifest it is; in the
    /// manifest that serves B, [`AssetManifest::variant_b`], the other copy
    /// is A).
    pub b: bool,
    /// Its mezzanine file, such as `v0-b.mp4`.
    pub file: String,
    /// Its fragments, at the same times as the track's.
    pub fragments: Vec<Fragment>,
}

/// A byte range in a mezzanine file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl ByteRange {
    /// The HTTP `Range` header value for this range.
    pub fn http_range(&self) -> String {
        format!(
            "bytes={}-{}",
            self.offset,
            self.offset.saturating_add(self.length.saturating_sub(1))
        )
    }
}

/// One `moof` + `mdat` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// Where it lies in the mezzanine file.
    pub range: ByteRange,
    /// Decode time of its first sample, in the track's timescale.
    pub start: u64,
    /// Its duration, in the track's timescale.
    pub duration: u64,
    /// Bytes from the fragment's start to the end of its first sample (the
    /// `moof`, the `mdat` header and the keyframe): the byte range of an
    /// HLS I-frame playlist entry. 0 when unknown (older manifests).
    #[serde(default)]
    pub key_length: u64,
}

impl Track {
    /// Builds a track entry from a file's index.
    pub fn from_index(id: &str, file: &str, index: &TrackIndex) -> Track {
        let ts = f64::from(index.init.timescale);
        let total_bytes = index
            .fragments
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.range.length));
        let total_ticks = index
            .fragments
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.duration));
        let total_secs = total_ticks as f64 / ts;
        let peak = index
            .fragments
            .iter()
            .map(|f| (f.range.length as f64 * 8.0) / (f.duration as f64 / ts))
            .fold(0.0f64, f64::max);
        let average = if total_secs > 0.0 {
            total_bytes as f64 * 8.0 / total_secs
        } else {
            0.0
        };
        let frame_rate = if index.init.kind == TrackKind::Video && total_secs > 0.0 {
            (index.samples as f64 / total_secs * 1000.0).round() / 1000.0
        } else {
            0.0
        };
        Track {
            id: id.to_string(),
            kind: index.init.kind,
            file: file.to_string(),
            codec: index.init.codec.clone(),
            bandwidth: peak.ceil() as u64,
            average_bandwidth: average.ceil() as u64,
            width: index.init.width,
            height: index.init.height,
            frame_rate,
            sample_rate: index.init.sample_rate,
            channels: index.init.channels,
            language: index.init.language.clone(),
            media_time: 0,
            timescale: index.init.timescale,
            init: index.init_range,
            fragments: index.fragments.clone(),
            marked: None,
        }
    }

    /// A subtitle track: the whole WebVTT file of `length` bytes is its
    /// "init" range, and it has no fragments.
    pub fn subtitle(id: &str, file: &str, language: &str, length: u64) -> Track {
        Track {
            id: id.to_string(),
            kind: TrackKind::Subtitle,
            file: file.to_string(),
            codec: "wvtt".into(),
            bandwidth: 256,
            average_bandwidth: 256,
            width: 0,
            height: 0,
            frame_rate: 0.0,
            sample_rate: 0,
            channels: 0,
            language: language.to_string(),
            media_time: 0,
            timescale: 1000,
            init: ByteRange { offset: 0, length },
            fragments: Vec::new(),
            marked: None,
        }
    }

    /// The codec family of a video track: `avc`, `hevc`, `av1`, or `other`.
    pub fn codec_family(&self) -> &'static str {
        codec_family(&self.codec)
    }

    /// Duration in seconds.
    pub fn duration(&self) -> f64 {
        let ticks = self
            .fragments
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.duration));
        ticks as f64 / f64::from(self.timescale.max(1))
    }

    /// The fragment that is segment `number` (counting from 1).
    pub fn segment(&self, number: u64) -> Option<&Fragment> {
        let i = usize::try_from(number.checked_sub(1)?).ok()?;
        self.fragments.get(i)
    }
}

impl AssetManifest {
    /// Builds a manifest: video tracks first, highest first (by height,
    /// then bitrate), then audio, then subtitles, each in id order.
    pub fn new(asset: &str, mut tracks: Vec<Track>) -> AssetManifest {
        let rank = |k: TrackKind| match k {
            TrackKind::Video => 0,
            TrackKind::Audio => 1,
            TrackKind::Subtitle => 2,
        };
        tracks.sort_by(|a, b| {
            rank(a.kind)
                .cmp(&rank(b.kind))
                .then(b.height.cmp(&a.height))
                .then(natural(&a.id).cmp(&natural(&b.id)))
        });
        let duration = tracks.iter().map(Track::duration).fold(0.0, f64::max);
        AssetManifest {
            version: MANIFEST_VERSION,
            asset: asset.to_string(),
            duration,
            tracks,
        }
    }

    /// Reads a manifest from JSON bytes, checking what the packager relies on.
    pub fn from_json(bytes: &[u8]) -> Result<AssetManifest, Error> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::Malformed("manifest too large"));
        }
        let m: AssetManifest =
            serde_json::from_slice(bytes).map_err(|e| Error::Manifest(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Whether the title is forensically watermarked: some video track
    /// has two copies.
    pub fn is_watermarked(&self) -> bool {
        self.tracks.iter().any(|t| t.marked.is_some())
    }

    /// The manifest that serves variant B of a watermarked title: each
    /// marked track's file and fragments are its B copy's (and its other
    /// copy is A). Segments packaged from it are B; its playlists are never
    /// served. `None` for a title with no marked track.
    pub fn variant_b(&self) -> Option<AssetManifest> {
        if !self.is_watermarked() {
            return None;
        }
        let mut m = self.clone();
        for t in &mut m.tracks {
            if let Some(copy) = t.marked.take() {
                if !copy.b {
                    t.marked = Some(copy);
                    continue;
                }
                t.marked = Some(MarkedCopy {
                    b: false,
                    file: std::mem::replace(&mut t.file, copy.file),
                    fragments: std::mem::replace(&mut t.fragments, copy.fragments),
                });
            }
        }
        Some(m)
    }

    /// Whether this manifest serves variant B (made by [`Self::variant_b`]).
    pub fn serves_b(&self) -> bool {
        self.tracks
            .iter()
            .any(|t| t.marked.as_ref().is_some_and(|c| !c.b))
    }

    /// Serialises the manifest.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of numbers and strings cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Checks the invariants that packaging relies on.
    pub fn validate(&self) -> Result<(), Error> {
        if self.version != MANIFEST_VERSION {
            return Err(Error::Manifest(format!(
                "unsupported manifest version {}",
                self.version
            )));
        }
        if !is_safe_id(&self.asset) {
            return Err(Error::Manifest("bad asset id".into()));
        }
        if !self.tracks.iter().any(|t| t.kind == TrackKind::Video) {
            return Err(Error::Manifest("no video track".into()));
        }
        for (i, t) in self.tracks.iter().enumerate() {
            let stem = match t.kind {
                TrackKind::Subtitle => t.file.strip_suffix(".vtt"),
                _ => t.file.strip_suffix(".mp4"),
            };
            if !is_safe_id(&t.id) || !stem.is_some_and(is_safe_id) || !is_safe_lang(&t.language) {
                return Err(Error::Manifest(format!(
                    "track {i}: bad id, file or language"
                )));
            }
            if self.tracks[..i].iter().any(|o| o.id == t.id) {
                return Err(Error::Manifest(format!("track {i}: duplicate id")));
            }
            let needs_fragments = t.kind != TrackKind::Subtitle;
            if t.timescale == 0
                || t.init.length == 0
                || t.fragments.is_empty() == needs_fragments
                || t.media_time > MAX_TICKS
            {
                return Err(Error::Manifest(format!("track {}: empty", t.id)));
            }
            if t.fragments
                .iter()
                .any(|f| f.duration == 0 || f.range.length == 0)
            {
                return Err(Error::Manifest(format!("track {}: empty fragment", t.id)));
            }
            // Keep every sum the packager makes far from overflow.
            let in_bounds = |r: &ByteRange| {
                r.offset
                    .checked_add(r.length)
                    .is_some_and(|end| end <= MAX_BYTES)
            };
            let times_ok = t.fragments.iter().all(|f| {
                f.start
                    .checked_add(f.duration)
                    .is_some_and(|end| end <= MAX_TICKS)
            });
            if !in_bounds(&t.init) || !t.fragments.iter().all(|f| in_bounds(&f.range)) || !times_ok
            {
                return Err(Error::Manifest(format!(
                    "track {}: range or time out of bounds",
                    t.id
                )));
            }
            if let Some(copy) = &t.marked {
                let same_times = copy.fragments.len() == t.fragments.len()
                    && copy
                        .fragments
                        .iter()
                        .zip(&t.fragments)
                        .all(|(c, f)| c.start == f.start && c.duration == f.duration);
                if t.kind != TrackKind::Video
                    || !copy.file.strip_suffix(".mp4").is_some_and(is_safe_id)
                    || copy.file == t.file
                    || !same_times
                    || !copy
                        .fragments
                        .iter()
                        .all(|f| f.range.length > 0 && in_bounds(&f.range))
                {
                    return Err(Error::Manifest(format!(
                        "track {}: bad watermark copy",
                        t.id
                    )));
                }
            }
            if t.bandwidth > MAX_BANDWIDTH || t.average_bandwidth > MAX_BANDWIDTH {
                return Err(Error::Manifest(format!(
                    "track {}: bandwidth out of bounds",
                    t.id
                )));
            }
        }
        Ok(())
    }

    /// The track with this id.
    pub fn track(&self, id: &str) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Video renditions, highest first.
    pub fn videos(&self) -> impl Iterator<Item = &Track> {
        self.tracks.iter().filter(|t| t.kind == TrackKind::Video)
    }

    /// Audio tracks.
    pub fn audios(&self) -> impl Iterator<Item = &Track> {
        self.tracks.iter().filter(|t| t.kind == TrackKind::Audio)
    }

    /// Subtitle tracks.
    pub fn subtitles(&self) -> impl Iterator<Item = &Track> {
        self.tracks.iter().filter(|t| t.kind == TrackKind::Subtitle)
    }

    /// The video track whose fragments set the segment boundaries (and so
    /// the subtitle segments): the first one.
    pub fn timeline(&self) -> Option<&Track> {
        self.videos().next()
    }
}

/// Sorts `v10` after `v9`: the id's letters, then its number.
fn natural(id: &str) -> (&str, u64) {
    let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, tail) = id.split_at(id.len() - digits);
    (head, tail.parse().unwrap_or(0))
}

/// A BCP 47-like language tag: letters, digits and `-`, 2 to 35 long.
pub fn is_safe_lang(s: &str) -> bool {
    (2..=35).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && s.as_bytes()[0].is_ascii_alphabetic()
}

/// The family of an RFC 6381 codec string: `avc`, `hevc`, `av1`, `aac`,
/// `webvtt`, or `other`.
pub fn codec_family(codec: &str) -> &'static str {
    match codec.get(..4) {
        Some("avc1" | "avc3") => "avc",
        Some("hvc1" | "hev1") => "hevc",
        Some("av01") => "av1",
        Some("mp4a") => "aac",
        Some("wvtt") => "webvtt",
        _ => "other",
    }
}

/// Ids that may stand in a URL path and a file name: `[A-Za-z0-9_-]`, 1 to 64 long.
pub fn is_safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_track(start: u64, offset: u64, bandwidth: u64) -> AssetManifest {
        let t = Track {
            marked: None,
            id: "v0".into(),
            kind: TrackKind::Video,
            file: "v0.mp4".into(),
            codec: "avc1.640028".into(),
            bandwidth,
            average_bandwidth: 1,
            width: 2,
            height: 2,
            frame_rate: 25.0,
            sample_rate: 0,
            channels: 0,
            language: "und".into(),
            media_time: 0,
            timescale: 1000,
            init: ByteRange {
                offset: 0,
                length: 10,
            },
            fragments: vec![Fragment {
                range: ByteRange { offset, length: 10 },
                start,
                duration: 2000,
                key_length: 0,
            }],
        };
        AssetManifest::new("a", vec![t])
    }

    #[test]
    fn validate_bounds_numbers_from_the_network() {
        assert!(one_track(0, 10, 1000).validate().is_ok());
        assert!(one_track(u64::MAX - 1, 10, 1000).validate().is_err());
        assert!(one_track(0, u64::MAX - 1, 1000).validate().is_err());
        assert!(one_track(0, 10, u64::MAX).validate().is_err());
        let json = one_track(0, u64::MAX - 1, 1000).to_json();
        assert!(AssetManifest::from_json(&json).is_err());
    }

    #[test]
    fn variant_b_swaps_marked_tracks_and_is_checked() {
        let mut m = one_track(0, 10, 1000);
        assert!(m.variant_b().is_none(), "no marked track, no variant B");
        let mut b_frags = m.tracks[0].fragments.clone();
        b_frags[0].range = ByteRange {
            offset: 40,
            length: 12,
        };
        m.tracks[0].marked = Some(MarkedCopy {
            b: true,
            file: "v0-b.mp4".into(),
            fragments: b_frags,
        });
        assert!(m.validate().is_ok());
        assert!(m.is_watermarked() && !m.serves_b());
        let b = m.variant_b().unwrap();
        assert!(b.serves_b());
        assert_eq!(b.tracks[0].file, "v0-b.mp4");
        assert_eq!(b.tracks[0].fragments[0].range.offset, 40);
        assert_eq!(b.tracks[0].marked.as_ref().unwrap().file, "v0.mp4");
        assert!(b.validate().is_ok());
        // The round trip through JSON keeps the copy.
        let back = AssetManifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        // A copy whose times differ, or that names the track's own file, is refused.
        let mut bad = m.clone();
        bad.tracks[0].marked.as_mut().unwrap().fragments[0].duration = 1999;
        assert!(bad.validate().is_err());
        let mut bad = m.clone();
        bad.tracks[0].marked.as_mut().unwrap().file = "v0.mp4".into();
        assert!(bad.validate().is_err());
        let mut bad = m;
        bad.tracks[0].marked.as_mut().unwrap().fragments.clear();
        assert!(bad.validate().is_err());
    }
}
