//! Live: the live asset manifest the origin grows as parts arrive, and the
//! playlists an edge makes from it just in time: LL-HLS media playlists
//! (parts, preload hints, blocking reload, delta updates, rendition
//! reports), the multivariant playlist, and a low-latency DASH MPD.
//!
//! URL layout under `/live/{channel}/`:
//!
//! | path | what |
//! |---|---|
//! | `master.m3u8` | HLS multivariant playlist |
//! | `{track}.m3u8` | LL-HLS media playlist (`_HLS_msn`, `_HLS_part`, `_HLS_skip`) |
//! | `manifest.mpd` | low-latency DASH MPD |
//! | `{track}/init-{g}.mp4` | init segment of configuration `g` |
//! | `{track}/{msn}.m4s` | segment `msn` (streamed while it grows) |
//! | `{track}/{msn}.{part}.m4s` | part `part` of segment `msn` |
//! | `master.m3u8?format=ts` | multivariant playlist of MPEG-TS variants (legacy devices) |
//! | `ts/{video}.{audio}.m3u8` | HLS media playlist of whole MPEG-TS segments (no parts) |
//! | `ts/{video}.{audio}/{msn}.ts` | segment `msn` muxed to MPEG-TS, video and audio in one |
//!
//! Segment numbers (`msn`) never repeat on a channel, across reconnects and
//! events, so no cache anywhere can serve an old segment for a new one.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::live_ads::{self, Slot};
pub use crate::live_ads::{LiveAd, LiveFill, Slots};
use crate::manifest::TrackKind;
use crate::Error;

/// The largest live manifest accepted from upstream.
pub const MAX_LIVE_MANIFEST_BYTES: usize = 8 << 20;

/// A channel's live stream as the packager sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveManifest {
    /// The channel's name (the URL segment after `/live/`).
    pub channel: String,
    /// The event (one broadcast); a new one starts after the reconnect grace.
    pub event: String,
    /// Target part duration, milliseconds.
    pub part_target_ms: u32,
    /// Target segment duration, milliseconds.
    pub segment_target_ms: u32,
    /// Wall clock (Unix ms) of media time zero: DASH's availability start.
    pub epoch_ms: u64,
    /// Video renditions, highest first, then audio.
    pub tracks: Vec<LiveTrack>,
    /// The segments in the window, oldest first; the last may be in progress.
    pub segments: Vec<LiveSegment>,
    /// Discontinuities before the first listed segment.
    pub discontinuity_sequence: u64,
    /// The event is over: no more segments will come.
    pub ended: bool,
    /// Ad breaks whose start is in the window, oldest first.
    #[serde(default)]
    pub breaks: Vec<LiveBreak>,
}

/// An ad break in a live stream, from an SCTE-35 cue in the ingest or an
/// operator's call. It starts with segment `start_msn` and ends with the
/// first segment that starts `duration_ms` or more after it; players and
/// ad stitchers see it as HLS date ranges and cue tags and a DASH event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveBreak {
    /// Unique in the event (an SCTE-35 cue's splice event id).
    pub id: u32,
    /// Its first segment.
    pub start_msn: u64,
    /// Its planned length.
    pub duration_ms: u64,
    /// `scte35` or `operator`.
    pub source: String,
    /// The first segment after it, and that segment's media time (90 kHz),
    /// once it exists: kept so the break's place is known after its first
    /// segment left the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_msn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_start: Option<u64>,
}

/// Where a break is in the window.
#[derive(Debug, Clone, Copy)]
struct BreakSpan<'a> {
    b: &'a LiveBreak,
    /// Its first segment's media time (90 kHz) and wall clock.
    start: u64,
    pdt_ms: u64,
    /// The segment it ends before, once that segment exists.
    end_msn: Option<u64>,
}

impl BreakSpan<'_> {
    /// The cue tag segment `msn` (at media time `at`) gets: `CUE-OUT`
    /// before the first, `CUE-OUT-CONT` within, `CUE-IN` after.
    fn cue_tag(&self, msn: u64, at: u64) -> Option<String> {
        let secs = self.b.duration_ms as f64 / 1000.0;
        if msn == self.b.start_msn {
            Some(format!("#EXT-X-CUE-OUT:DURATION={secs:.3}\n"))
        } else if Some(msn) == self.end_msn {
            Some("#EXT-X-CUE-IN\n".into())
        } else if msn > self.b.start_msn && self.end_msn.is_none_or(|e| msn < e) {
            Some(format!(
                "#EXT-X-CUE-OUT-CONT:ElapsedTime={:.3},Duration={secs:.3}\n",
                at.saturating_sub(self.start) as f64 / 90_000.0
            ))
        } else {
            None
        }
    }

    /// Its `EXT-X-DATERANGE` tags: the start (`SCTE35-OUT`) and, once it
    /// ended, the end (`SCTE35-IN`).
    fn date_ranges(&self, m: &LiveManifest) -> String {
        let ticks = self.b.duration_ms * 90;
        let out =
            cascade_ads::scte35::SpliceInfo::insert(self.b.id, true, Some(self.start), Some(ticks));
        let mut tags = format!(
            "#EXT-X-DATERANGE:ID=\"break-{id}\",CLASS=\"{BREAK_CLASS}\",START-DATE=\"{}\",PLANNED-DURATION={:.3},SCTE35-OUT={}\n",
            iso_time(self.pdt_ms),
            self.b.duration_ms as f64 / 1000.0,
            out.to_hex(),
            id = self.b.id,
        );
        if let Some(end) = self.end_msn.and_then(|e| m.segment(e)) {
            let back =
                cascade_ads::scte35::SpliceInfo::insert(self.b.id, false, Some(end.start), None);
            let _ = writeln!(
                tags,
                "#EXT-X-DATERANGE:ID=\"break-{id}\",CLASS=\"{BREAK_CLASS}\",START-DATE=\"{}\",DURATION={:.3},SCTE35-IN={}",
                iso_time(self.pdt_ms),
                end.start.saturating_sub(self.start) as f64 / 90_000.0,
                back.to_hex(),
                id = self.b.id,
            );
        }
        tags
    }
}

/// The `CLASS` of ad break date ranges in live playlists.
pub const BREAK_CLASS: &str = "urn:cascade:break";

/// One rendition or audio track of a live stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveTrack {
    /// `v0`, `v1`, `a0`.
    pub id: String,
    /// Video or audio.
    pub kind: TrackKind,
    /// RFC 6381 codec string.
    pub codec: String,
    /// Bits per second (measured, or the rung's target).
    pub bandwidth: u64,
    /// Video only.
    #[serde(default)]
    pub width: u32,
    /// Video only.
    #[serde(default)]
    pub height: u32,
    /// Video only.
    #[serde(default)]
    pub frame_rate: f64,
    /// Audio only.
    #[serde(default)]
    pub sample_rate: u32,
    /// Audio only.
    #[serde(default)]
    pub channels: u16,
    /// The first segment this track has (a rung of the ladder joins a
    /// moment after the stream starts).
    #[serde(default)]
    pub first_msn: u64,
}

/// One segment: parts so far, and whether it is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSegment {
    /// Media sequence number.
    pub msn: u64,
    /// Media time of its start, 90 kHz.
    pub start: u64,
    /// Wall clock (Unix ms) when its first frame reached ingest.
    pub pdt_ms: u64,
    /// Which init segment its media needs (changes with the encoder's configuration).
    pub init: u32,
    /// A discontinuity comes before it (an encoder reconnected).
    #[serde(default)]
    pub discontinuity: bool,
    /// Its parts so far.
    pub parts: Vec<LivePart>,
    /// No more parts will be added.
    pub complete: bool,
}

/// One part of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePart {
    /// 90 kHz.
    pub duration: u32,
    /// It starts with a keyframe.
    pub independent: bool,
    /// Wall clock (Unix ms) when the origin published it: how latency
    /// through the tiers is measured.
    #[serde(default)]
    pub published_ms: u64,
}

/// What a playlist request asks for (`_HLS_msn`, `_HLS_part`, `_HLS_skip`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blocking {
    /// Wait until this segment (and part) exists.
    pub msn: Option<u64>,
    /// Part of `msn` (without it, part 0: what Safari asks).
    pub part: Option<u32>,
    /// A delta update (`_HLS_skip=YES`).
    pub skip: bool,
}

/// What a request for a live resource names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveOutput {
    /// `master.m3u8`
    Multivariant,
    /// `{track}.m3u8`
    Media(String),
    /// `manifest.mpd`
    Mpd,
    /// `{track}/init-{g}.mp4`
    Init(String, u32),
    /// `{track}/init-{g}-k{period}.mp4`: a protected channel's init
    /// segment of configuration `g` under key period `period`'s key.
    KeyedInit(String, u32, u64),
    /// `{track}/{msn}.m4s`
    Segment(String, u64),
    /// `{track}/{msn}.{part}.m4s`
    Part(String, u64, u32),
    /// `ts/master.m3u8` (what `master.m3u8?format=ts` asks for)
    TsMultivariant,
    /// `ts/{video}.{audio}.m3u8`
    TsPlaylist(String, String),
    /// `ts/{video}.{audio}/{msn}.ts`
    TsSegment(String, String, u64),
}

impl LiveOutput {
    /// What `rest` (the path after `/live/{channel}/`) names.
    pub fn parse(rest: &str) -> Option<LiveOutput> {
        match rest {
            "master.m3u8" => return Some(LiveOutput::Multivariant),
            "manifest.mpd" => return Some(LiveOutput::Mpd),
            _ => {}
        }
        if rest == "ts/master.m3u8" {
            return Some(LiveOutput::TsMultivariant);
        }
        if let Some(ts) = rest.strip_prefix("ts/") {
            let pair = |s: &str| {
                let (v, a) = s.split_once('.')?;
                (crate::is_safe_id(v) && crate::is_safe_id(a))
                    .then(|| (v.to_string(), a.to_string()))
            };
            if let Some(p) = ts.strip_suffix(".m3u8") {
                let (v, a) = pair(p)?;
                return Some(LiveOutput::TsPlaylist(v, a));
            }
            let (p, file) = ts.split_once('/')?;
            let (v, a) = pair(p)?;
            return Some(LiveOutput::TsSegment(
                v,
                a,
                number(file.strip_suffix(".ts")?)?,
            ));
        }
        if let Some(track) = rest.strip_suffix(".m3u8") {
            return crate::is_safe_id(track).then(|| LiveOutput::Media(track.into()));
        }
        let (track, file) = rest.split_once('/')?;
        if !crate::is_safe_id(track) {
            return None;
        }
        if let Some(g) = file
            .strip_prefix("init-")
            .and_then(|f| f.strip_suffix(".mp4"))
        {
            if let Some((g, period)) = g.split_once("-k") {
                return Some(LiveOutput::KeyedInit(
                    track.into(),
                    number(g)?.try_into().ok()?,
                    number(period)?,
                ));
            }
            return Some(LiveOutput::Init(track.into(), number(g)?.try_into().ok()?));
        }
        let stem = file.strip_suffix(".m4s")?;
        match stem.split_once('.') {
            None => Some(LiveOutput::Segment(track.into(), number(stem)?)),
            Some((msn, part)) => Some(LiveOutput::Part(
                track.into(),
                number(msn)?,
                number(part)?.try_into().ok()?,
            )),
        }
    }

    /// A playlist or MPD (made per request) rather than media.
    pub fn is_manifest(&self) -> bool {
        matches!(
            self,
            LiveOutput::Multivariant
                | LiveOutput::Media(_)
                | LiveOutput::Mpd
                | LiveOutput::TsMultivariant
                | LiveOutput::TsPlaylist(..)
        )
    }

    /// The `Content-Type` of the answer.
    pub fn content_type(&self, m: Option<&LiveManifest>) -> &'static str {
        match self {
            LiveOutput::Multivariant
            | LiveOutput::Media(_)
            | LiveOutput::TsMultivariant
            | LiveOutput::TsPlaylist(..) => "application/vnd.apple.mpegurl",
            LiveOutput::TsSegment(..) => "video/mp2t",
            LiveOutput::Mpd => "application/dash+xml",
            LiveOutput::Init(t, _)
            | LiveOutput::KeyedInit(t, _, _)
            | LiveOutput::Segment(t, _)
            | LiveOutput::Part(t, _, _) => match m.and_then(|m| m.track(t)).map(|t| t.kind) {
                Some(TrackKind::Audio) => "audio/mp4",
                _ => "video/mp4",
            },
        }
    }
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Blocking {
    /// Reads `_HLS_msn`, `_HLS_part` and `_HLS_skip` from a query string;
    /// an error names a bad value (HLS asks for 400).
    pub fn from_query(query: &str) -> Result<Blocking, &'static str> {
        let mut b = Blocking::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "_HLS_msn" => b.msn = Some(number(&v).ok_or("_HLS_msn is not a number")?),
                "_HLS_part" => {
                    b.part = Some(
                        number(&v)
                            .and_then(|p| u32::try_from(p).ok())
                            .ok_or("_HLS_part is not a number")?,
                    )
                }
                "_HLS_skip" => b.skip = v == "YES" || v == "v2",
                _ => {}
            }
        }
        if b.part.is_some() && b.msn.is_none() {
            return Err("_HLS_part without _HLS_msn");
        }
        Ok(b)
    }

    /// The canonical query, for cache keys and upstream requests.
    pub fn canonical(&self) -> String {
        let mut q = Vec::new();
        if let Some(m) = self.msn {
            q.push(format!("_HLS_msn={m}"));
            q.push(format!("_HLS_part={}", self.part.unwrap_or(0)));
        }
        if self.skip {
            q.push("_HLS_skip=YES".into());
        }
        q.join("&")
    }
}

impl LiveManifest {
    /// Parses the JSON the origin serves, checking what the packager relies on.
    pub fn from_json(bytes: &[u8]) -> Result<LiveManifest, Error> {
        if bytes.len() > MAX_LIVE_MANIFEST_BYTES {
            return Err(Error::Malformed("live manifest too large"));
        }
        let m: LiveManifest =
            serde_json::from_slice(bytes).map_err(|_| Error::Malformed("live manifest"))?;
        if m.part_target_ms == 0 || m.segment_target_ms == 0 {
            return Err(Error::Malformed("live manifest without targets"));
        }
        if m.tracks.iter().any(|t| !crate::is_safe_id(&t.id)) {
            return Err(Error::Malformed("live track id"));
        }
        if m.segments.windows(2).any(|w| w[1].msn != w[0].msn + 1) {
            return Err(Error::Malformed("live segments out of order"));
        }
        Ok(m)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The track `id`.
    pub fn track(&self, id: &str) -> Option<&LiveTrack> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// The last segment and how many parts it has (the live edge).
    pub fn last_part(&self) -> Option<(u64, u32)> {
        let s = self.segments.last()?;
        Some((s.msn, s.parts.len() as u32))
    }

    /// The segment `msn`, if in the window.
    pub fn segment(&self, msn: u64) -> Option<&LiveSegment> {
        let first = self.segments.first()?.msn;
        self.segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)
    }

    /// Whether a blocking request for `msn` (part `part`, 0 without one) is
    /// answered by this manifest: the part exists, or the segment completed
    /// with fewer parts, or a later segment exists.
    pub fn satisfies(&self, msn: u64, part: Option<u32>) -> bool {
        if self.ended {
            return true;
        }
        let Some(last) = self.segments.last() else {
            return false;
        };
        if last.msn > msn {
            return true;
        }
        if last.msn < msn {
            return false;
        }
        let want = part.unwrap_or(0) as usize;
        last.parts.len() > want || last.complete
    }

    /// Whether a part exists (or never will: its segment completed short).
    pub fn has_part(&self, msn: u64, part: u32) -> Option<bool> {
        let s = self.segment(msn)?;
        if s.parts.len() > part as usize {
            Some(true)
        } else if s.complete {
            None
        } else {
            Some(false)
        }
    }

    /// `EXT-X-TARGETDURATION`: the longest segment, rounded up, seconds.
    pub fn target_duration(&self) -> u64 {
        let longest = self
            .segments
            .iter()
            .filter(|s| s.complete)
            .map(segment_duration)
            .max()
            .unwrap_or(0)
            .max(u64::from(self.segment_target_ms) * 90);
        longest.div_ceil(90_000).max(1)
    }

    fn part_target(&self) -> f64 {
        f64::from(self.part_target_ms) / 1000.0
    }

    /// The breaks whose first segment is in the window.
    fn break_spans(&self) -> Vec<BreakSpan<'_>> {
        self.breaks
            .iter()
            .filter_map(|b| {
                let s = self.segment(b.start_msn)?;
                let end = s.start + b.duration_ms * 90;
                let end_msn = self
                    .segments
                    .iter()
                    .find(|x| x.msn > b.start_msn && x.start >= end)
                    .map(|x| x.msn);
                Some(BreakSpan {
                    b,
                    start: s.start,
                    pdt_ms: s.pdt_ms,
                    end_msn,
                })
            })
            .collect()
    }

    /// The cue tags of segment `msn` (at media time `at`) for every break.
    fn cue_tags(spans: &[BreakSpan<'_>], msn: u64, at: u64) -> String {
        spans.iter().filter_map(|b| b.cue_tag(msn, at)).collect()
    }

    /// The breaks running now or recently: what an ad stitcher reads.
    pub fn break_at(&self, msn: u64) -> Option<&LiveBreak> {
        self.break_spans()
            .into_iter()
            .find(|s| msn >= s.b.start_msn && s.end_msn.is_none_or(|e| msn < e))
            .map(|s| s.b)
    }
}

/// The LL-HLS multivariant playlist: one variant per video rendition, with
/// the audio track (if any) as its rendition group.
pub fn multivariant(m: &LiveManifest) -> Result<String, Error> {
    let audio = m.tracks.iter().find(|t| t.kind == TrackKind::Audio);
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    if let Some(a) = audio {
        let _ = writeln!(
            out,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"Main\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"{}\",URI=\"{}.m3u8\"",
            a.channels.max(1),
            a.id
        );
    }
    let mut any = false;
    for v in m.tracks.iter().filter(|t| t.kind == TrackKind::Video) {
        any = true;
        let mut codecs = v.codec.clone();
        let mut bandwidth = v.bandwidth;
        if let Some(a) = audio {
            codecs = format!("{codecs},{}", a.codec);
            bandwidth += a.bandwidth;
        }
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{codecs}\",RESOLUTION={}x{}",
            v.width, v.height
        );
        if v.frame_rate > 0.0 {
            let _ = write!(out, ",FRAME-RATE={:.3}", v.frame_rate);
        }
        if audio.is_some() {
            out.push_str(",AUDIO=\"audio\"");
        }
        let _ = writeln!(out, "\n{}.m3u8", v.id);
    }
    if !any {
        return Err(Error::EmptyView("video rendition"));
    }
    Ok(out)
}

/// The multivariant playlist of MPEG-TS variants (legacy devices): each
/// video rendition with the audio muxed in, whole segments only.
pub fn ts_multivariant(m: &LiveManifest) -> Result<String, Error> {
    let audio = m.tracks.iter().find(|t| t.kind == TrackKind::Audio);
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
    let mut any = false;
    for v in m.tracks.iter().filter(|t| t.kind == TrackKind::Video) {
        any = true;
        let (codecs, bandwidth, a) = match audio {
            Some(a) => (
                format!("{},{}", v.codec, a.codec),
                v.bandwidth + a.bandwidth,
                a.id.as_str(),
            ),
            None => return Err(Error::Unsupported("MPEG-TS variants need an audio track")),
        };
        let _ = writeln!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{codecs}\",RESOLUTION={}x{}\nts/{}.{a}.m3u8",
            v.width, v.height, v.id
        );
    }
    if !any {
        return Err(Error::EmptyView("video rendition"));
    }
    Ok(out)
}

/// The media playlist of MPEG-TS segments of `video` with `audio` muxed in:
/// complete segments only, as players without low-latency support read it.
pub fn ts_playlist(m: &LiveManifest, video: &str, audio: &str) -> Result<String, Error> {
    ts_playlist_with(m, video, audio, None)
}

/// [`ts_playlist`] with a session's ads in its breaks' slots.
pub fn stitched_ts_playlist(
    m: &LiveManifest,
    video: &str,
    audio: &str,
    slots: &Slots<'_, '_>,
) -> Result<String, Error> {
    ts_playlist_with(m, video, audio, Some(slots))
}

fn ts_playlist_with(
    m: &LiveManifest,
    video: &str,
    audio: &str,
    slots: Option<&Slots<'_, '_>>,
) -> Result<String, Error> {
    let v = m.track(video).ok_or(Error::NotFound)?;
    let a = m.track(audio).ok_or(Error::NotFound)?;
    if v.kind != TrackKind::Video || a.kind != TrackKind::Audio {
        return Err(Error::NotFound);
    }
    let from = v.first_msn.max(a.first_msn);
    let segs: Vec<&LiveSegment> = m
        .segments
        .iter()
        .filter(|s| s.complete && s.msn >= from)
        .collect();
    let first = segs.first().map_or(0, |s| s.msn);
    let target = m
        .target_duration()
        .max(slots.map_or(0, Slots::longest_secs));
    let sequence = m.discontinuity_sequence + slots.map_or(0, |x| x.turns_through(first));
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-DISCONTINUITY-SEQUENCE:{sequence}\n",
    );
    let spans = m.break_spans();
    for b in &spans {
        out.push_str(&b.date_ranges(m));
    }
    for (i, s) in segs.iter().enumerate() {
        let slot = slots.map_or(Slot::Content, |x| x.at(s.msn));
        let turns = slots.is_some_and(|x| x.turns(s.msn));
        if (s.discontinuity || turns) && i > 0 {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        out.push_str(&LiveManifest::cue_tags(&spans, s.msn, s.start));
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", iso_time(s.pdt_ms));
        let ad = slot.media().and_then(|(fill, ad, n, frag)| {
            let av = live_ads::ad_video(ad.manifest, v)?;
            let aa = live_ads::ad_audio(ad.manifest)?;
            Some((fill.plan_id, ad.creative, n, frag, av, aa))
        });
        match ad {
            Some((plan, creative, n, frag, av, aa)) => {
                let _ = writeln!(
                    out,
                    "#EXTINF:{:.3},\n../ad/{plan}.{n}/{creative}/ts/{}.{}/{}.ts",
                    live_ads::frag_secs(av, frag),
                    av.id,
                    aa.id,
                    frag + 1
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "#EXTINF:{:.3},\n{video}.{audio}/{}.ts",
                    segment_duration(s) as f64 / 90_000.0,
                    s.msn
                );
            }
        }
    }
    if m.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    Ok(out)
}

/// One MPEG-TS segment from a video and an audio segment of parts (each a
/// run of `moof` + `mdat`) and their init segments.
pub fn ts_segment(
    video_init: &[u8],
    video: &[u8],
    audio_init: &[u8],
    audio: &[u8],
) -> Result<Vec<u8>, Error> {
    let v = crate::cmaf::merge_parts(&crate::fmp4::parse_init(video_init)?, video)?;
    let a = crate::cmaf::merge_parts(&crate::fmp4::parse_init(audio_init)?, audio)?;
    crate::tsseg::segment(Some((video_init, &v)), Some((audio_init, &a)))
}

/// Parts are listed for the segments within this many target durations of
/// the live edge (RFC 8216bis asks for at least three).
const PART_WINDOW_TARGETS: u64 = 3;

/// The LL-HLS media playlist of `track`.
pub fn media_playlist(m: &LiveManifest, track: &str, b: Blocking) -> Result<String, Error> {
    media_playlist_with(m, track, b, None, None)
}

/// [`media_playlist`] of a protected channel: an `EXT-X-KEY` where each key
/// period starts, and init segments under each period's key.
pub fn protected_media_playlist(
    m: &LiveManifest,
    track: &str,
    b: Blocking,
    keys: &crate::live_protect::LiveKeys,
) -> Result<String, Error> {
    media_playlist_with(m, track, b, None, Some(keys))
}

/// [`media_playlist`] with a session's ads in its breaks' slots.
pub fn stitched_media_playlist(
    m: &LiveManifest,
    track: &str,
    b: Blocking,
    slots: &Slots<'_, '_>,
) -> Result<String, Error> {
    media_playlist_with(m, track, b, Some(slots), None)
}

/// The `EXT-X-MAP` a run of a media playlist uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MapOf {
    /// The channel's init segment of configuration `g`.
    Content(u32),
    /// A protected channel's, under a key period's key.
    Keyed(u32, u64),
    /// An ad's (the break's plan number, the ad's index).
    Ad(u32, usize),
}

fn media_playlist_with(
    m: &LiveManifest,
    track: &str,
    b: Blocking,
    slots: Option<&Slots<'_, '_>>,
    keys: Option<&crate::live_protect::LiveKeys>,
) -> Result<String, Error> {
    let t = m.track(track).ok_or(Error::NotFound)?;
    let target = m
        .target_duration()
        .max(slots.map_or(0, Slots::longest_secs));
    // A break's slot at the live edge: whole segments only (see live_ads).
    let edge_in_ad = slots.is_some_and(|x| {
        m.segments
            .last()
            .is_some_and(|l| x.at(l.msn).media().is_some())
    });
    let part_target = m.part_target();
    let skip_until = 6 * target;
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{target}\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3},CAN-SKIP-UNTIL={skip_until}\n\
         #EXT-X-PART-INF:PART-TARGET={part_target:.3}\n",
        3.0 * part_target
    );
    let first = m
        .segments
        .first()
        .map_or(0, |s| s.msn)
        .max(t.first_msn)
        .min(m.segments.last().map_or(0, |s| s.msn));
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first}");
    let _ = writeln!(
        out,
        "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
        m.discontinuity_sequence + slots.map_or(0, |x| x.turns_through(first))
    );

    // Time from each segment's start to the live edge, to know which are
    // old enough to skip and which still list their parts.
    let end: u64 = m
        .segments
        .last()
        .map_or(0, |s| s.start + segment_duration(s));
    let mut skipped = 0usize;
    if b.skip {
        skipped = m
            .segments
            .iter()
            .take_while(|s| end.saturating_sub(s.start + segment_duration(s)) > skip_until * 90_000)
            .count();
        if skipped > 0 {
            let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        }
    }
    // Date ranges are never skipped by a delta update: all of them here.
    let spans = m.break_spans();
    for b in &spans {
        out.push_str(&b.date_ranges(m));
    }
    let mut map: Option<MapOf> = None;
    for s in m.segments[skipped..]
        .iter()
        .filter(|s| s.msn >= t.first_msn)
    {
        let turns = slots.is_some_and(|x| x.turns(s.msn));
        let ad = slots.and_then(|x| {
            let (fill, ad, n, frag) = x.at(s.msn).media()?;
            Some((
                fill.plan_id,
                ad.creative,
                n,
                frag,
                live_ads::stand_in(ad.manifest, t)?,
            ))
        });
        // An ad's slot is listed once the segment it stands for is
        // complete: the session's timeline never runs ahead of the
        // channel's, so when the channel comes back its parts are there.
        if ad.is_some() && !s.complete {
            continue;
        }
        if (s.discontinuity || turns) && map.is_some() {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if let Some((plan, creative, n, frag, a)) = ad {
            if map != Some(MapOf::Ad(plan, n)) {
                let _ = writeln!(
                    out,
                    "#EXT-X-MAP:URI=\"ad/{plan}.{n}/{creative}/{}/init.mp4\"",
                    a.id
                );
                map = Some(MapOf::Ad(plan, n));
            }
            out.push_str(&LiveManifest::cue_tags(&spans, s.msn, s.start));
            let _ = writeln!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{:.3},\nad/{plan}.{n}/{creative}/{}/{}.m4s",
                iso_time(s.pdt_ms),
                live_ads::frag_secs(a, frag),
                a.id,
                frag + 1
            );
            continue;
        }
        if let Some(keys) = keys {
            let period = keys.period_of(s.pdt_ms);
            if !matches!(map, Some(MapOf::Keyed(_, p)) if p == period) {
                out.push_str(&keys.hls_key_tags(period, false)?);
            }
            if map != Some(MapOf::Keyed(s.init, period)) {
                let _ = writeln!(
                    out,
                    "#EXT-X-MAP:URI=\"{track}/init-{}-k{period}.mp4\"",
                    s.init
                );
                map = Some(MapOf::Keyed(s.init, period));
            }
        } else if map != Some(MapOf::Content(s.init)) {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{track}/init-{}.mp4\"", s.init);
            map = Some(MapOf::Content(s.init));
        }
        out.push_str(&LiveManifest::cue_tags(&spans, s.msn, s.start));
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", iso_time(s.pdt_ms));
        let seg_end = s.start + segment_duration(s);
        if !edge_in_ad
            && (end - seg_end.min(end) <= PART_WINDOW_TARGETS * target * 90_000 || !s.complete)
        {
            for (i, p) in s.parts.iter().enumerate() {
                let _ = write!(
                    out,
                    "#EXT-X-PART:DURATION={:.3},URI=\"{track}/{}.{i}.m4s\"",
                    f64::from(p.duration) / 90_000.0,
                    s.msn
                );
                out.push_str(if p.independent {
                    ",INDEPENDENT=YES\n"
                } else {
                    "\n"
                });
            }
        }
        if s.complete {
            let _ = writeln!(
                out,
                "#EXTINF:{:.3},\n{track}/{}.m4s",
                segment_duration(s) as f64 / 90_000.0,
                s.msn
            );
        }
    }
    if m.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    } else if edge_in_ad {
        // No parts: no hint, and no part numbers to report.
    } else if let Some(last) = m.segments.last() {
        let (msn, part) = if last.complete {
            (last.msn + 1, 0)
        } else {
            (last.msn, last.parts.len())
        };
        let _ = writeln!(
            out,
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{track}/{msn}.{part}.m4s\""
        );
        // Every other track of the same kind advances with this one.
        for other in m.tracks.iter().filter(|o| o.id != t.id) {
            let (lmsn, lpart) = last_listed(last);
            let _ = writeln!(
                out,
                "#EXT-X-RENDITION-REPORT:URI=\"{}.m3u8\",LAST-MSN={lmsn},LAST-PART={lpart}",
                other.id
            );
        }
    }
    Ok(out)
}

/// What control pre-warms of a live channel: each track's current init
/// segment (immutable: what every joining viewer fetches first) and the
/// multivariant playlist and MPD (their fill warms the shield's manifest).
pub fn prewarm_paths(m: &LiveManifest, hls: bool, dash: bool) -> Vec<String> {
    let base = format!("/live/{}", m.channel);
    let mut out = Vec::new();
    if hls {
        out.push(format!("{base}/master.m3u8"));
    }
    if dash {
        out.push(format!("{base}/manifest.mpd"));
    }
    if let Some(last) = m.segments.last() {
        for t in &m.tracks {
            out.push(format!("{base}/{}/init-{}.mp4", t.id, last.init));
        }
    }
    out
}

/// The last part a playlist lists: `(msn, part index)`.
fn last_listed(last: &LiveSegment) -> (u64, usize) {
    (last.msn, last.parts.len().saturating_sub(1))
}

/// The low-latency DASH MPD: one Period, `$Number$` templates with a
/// timeline, `availabilityTimeOffset` so a segment is asked for while it is
/// still growing (served chunked), and the edge's clock for `UTCTiming`.
pub fn mpd(m: &LiveManifest, now_ms: u64, dvr_secs: u64, time_url: &str) -> Result<String, Error> {
    mpd_with(m, now_ms, dvr_secs, time_url, None)
}

/// [`mpd`] with a session's ads: a Period per run of the channel, per ad
/// and per turn of the slate, each in its content slots' time. A content
/// period is named after the break it follows (`c{msn}`, its first
/// segment), so its id and start never change as the window moves; the
/// first of the event is `0`, as in the shared MPD.
pub fn stitched_mpd(
    m: &LiveManifest,
    now_ms: u64,
    dvr_secs: u64,
    time_url: &str,
    slots: &Slots<'_, '_>,
) -> Result<String, Error> {
    mpd_with(m, now_ms, dvr_secs, time_url, Some(slots))
}

fn mpd_with(
    m: &LiveManifest,
    now_ms: u64,
    dvr_secs: u64,
    time_url: &str,
    slots: Option<&Slots<'_, '_>>,
) -> Result<String, Error> {
    if m.segments.is_empty() {
        return Err(Error::EmptyView("segment"));
    }
    let target = m
        .target_duration()
        .max(slots.map_or(0, Slots::longest_secs));
    let seg_target = f64::from(m.segment_target_ms) / 1000.0;
    let part_target = m.part_target();
    let kind = if m.ended { "static" } else { "dynamic" };
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019\" \
         type=\"{kind}\" availabilityStartTime=\"{}\" publishTime=\"{}\" minimumUpdatePeriod=\"PT{target}S\" \
         timeShiftBufferDepth=\"PT{dvr_secs}S\" maxSegmentDuration=\"PT{target}S\" minBufferTime=\"PT{part_target:.3}S\" \
         suggestedPresentationDelay=\"PT{:.3}S\">\n",
        iso_time(m.epoch_ms),
        iso_time(now_ms),
        // Players without low-latency DASH (which follow the
        // ServiceDescription) stay two segments back: room for the next
        // MPD to list what follows, a break's next period among it.
        2.0 * seg_target
    );
    let _ = writeln!(
        out,
        "  <ServiceDescription id=\"0\"><Latency target=\"{}\" min=\"{}\" max=\"{}\" referenceId=\"0\"/><PlaybackRate min=\"0.96\" max=\"1.04\"/></ServiceDescription>",
        (3.0 * part_target * 1000.0 + 1500.0) as u64,
        (2.0 * part_target * 1000.0) as u64,
        (4.0 * seg_target * 1000.0) as u64,
    );
    let spans = m.break_spans();
    let Some(slots) = slots else {
        content_period(&mut out, m, "0", 0, &m.segments, &spans);
        let _ = write!(
            out,
            "  <UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" value=\"{time_url}\"/>\n</MPD>\n"
        );
        return Ok(out);
    };
    // Runs of segments that play the same thing; an ad's slot is listed
    // once the segment it stands for is complete (as in HLS).
    let listed = match m.segments.last() {
        Some(l) if !l.complete && slots.at(l.msn).media().is_some() => m.segments.len() - 1,
        _ => m.segments.len(),
    };
    let mut i = 0;
    while i < listed {
        let slot = slots.at(m.segments[i].msn);
        let mut j = i + 1;
        while j < listed && !slots.turns(m.segments[j].msn) {
            j += 1;
        }
        let run = &m.segments[i..j];
        match slot.media() {
            None => {
                // The first run of the window takes its name and start from
                // the last break that ended before it.
                let (id, start) = if i == 0 {
                    m.breaks
                        .iter()
                        .filter_map(|b| Some((b.end_msn?, b.end_start?)))
                        .filter(|(e, _)| *e <= run[0].msn)
                        .max()
                        .map_or(("0".to_string(), 0), |(e, t)| (format!("c{e}"), t))
                } else {
                    (format!("c{}", run[0].msn), run[0].start)
                };
                let cued: Vec<BreakSpan<'_>> = spans
                    .iter()
                    .filter(|b| run.iter().any(|x| x.msn == b.b.start_msn))
                    .copied()
                    .collect();
                content_period(&mut out, m, &id, start, run, &cued);
            }
            Some((fill, ad, n, frag)) => {
                let last = match slots.at(run[run.len() - 1].msn).media() {
                    Some((_, _, _, f)) => f,
                    None => frag,
                };
                let id = match slot {
                    Slot::Slate { turn, .. } => format!("slate-{}-{turn}", fill.plan_id),
                    _ => format!("ad-{}-{n}", fill.plan_id),
                };
                // The break's SCTE-35 event opens its first period.
                let events = spans
                    .iter()
                    .find(|b| b.b.start_msn == run[0].msn)
                    .map(|b| {
                        let mut e = String::from(
                            "    <EventStream schemeIdUri=\"urn:scte:scte35:2013:xml\" timescale=\"90000\">\n",
                        );
                        scte35_event(&mut e, b, 0);
                        e.push_str("    </EventStream>\n");
                        e
                    })
                    .unwrap_or_default();
                let am = ad.manifest;
                let top = m
                    .tracks
                    .iter()
                    .filter(|t| t.kind == TrackKind::Video)
                    .map(|t| t.height)
                    .max()
                    .unwrap_or(0);
                let lowest = am.videos().map(|t| t.height).min().unwrap_or(0);
                let mut families: Vec<String> = m
                    .tracks
                    .iter()
                    .filter(|t| t.kind == TrackKind::Video)
                    .map(|t| crate::manifest::codec_family(&t.codec).to_string())
                    .collect();
                families.sort();
                families.dedup();
                // The ad's renditions up to the channel's height (or its
                // lowest), in the channel's codecs.
                let view = crate::View {
                    max_height: Some(top.max(lowest)),
                    codecs: Some(families),
                    ..crate::View::default()
                };
                let prefix = format!("ad/{}.{n}/{}/", fill.plan_id, ad.creative);
                crate::dash::period(
                    &mut out,
                    am,
                    &view,
                    frag as u64 + 1..last as u64 + 2,
                    &crate::dash::PeriodOpts {
                        drm: None,
                        id: &id,
                        start: run[0].start as f64 / 90_000.0,
                        prefix: &prefix,
                        trick: false,
                        subtitles: false,
                        events: &events,
                        query: "",
                        // Listed when their time is over: available then.
                        ato: None,
                    },
                )?;
            }
        }
        i = j;
    }
    let _ = write!(
        out,
        "  <UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" value=\"{time_url}\"/>\n</MPD>\n"
    );
    Ok(out)
}

/// A break's SCTE-35 `splice_insert` as a DASH event, at `offset` (90 kHz)
/// in its EventStream.
fn scte35_event(out: &mut String, b: &BreakSpan<'_>, offset: u64) {
    let d = b.b.duration_ms * 90;
    let _ = write!(
        out,
        "      <Event presentationTime=\"{t}\" duration=\"{d}\" id=\"{id}\">\n        <scte35:SpliceInfoSection xmlns:scte35=\"http://www.scte.org/schemas/35/2016\" protocolVersion=\"0\" ptsAdjustment=\"0\" tier=\"4095\">\n          <scte35:SpliceInsert spliceEventId=\"{id}\" spliceEventCancelIndicator=\"false\" outOfNetworkIndicator=\"true\" uniqueProgramId=\"1\" availNum=\"0\" availsExpected=\"0\" spliceImmediateFlag=\"false\">\n            <scte35:Program><scte35:SpliceTime ptsTime=\"{pts}\"/></scte35:Program>\n            <scte35:BreakDuration autoReturn=\"true\" duration=\"{d}\"/>\n          </scte35:SpliceInsert>\n        </scte35:SpliceInfoSection>\n      </Event>\n",
        t = offset,
        pts = b.start & 0x1_FFFF_FFFF,
        id = b.b.id,
    );
}

/// One Period of the channel's own segments `segs`, starting at media time
/// `start` (90 kHz; its `presentationTimeOffset`), with the SCTE-35 events
/// of the breaks `cued`.
fn content_period(
    out: &mut String,
    m: &LiveManifest,
    id: &str,
    start: u64,
    segs: &[LiveSegment],
    cued: &[BreakSpan<'_>],
) {
    let Some(first) = segs.first() else {
        return;
    };
    let seg_target = f64::from(m.segment_target_ms) / 1000.0;
    let part_target = m.part_target();
    if start == 0 {
        let _ = writeln!(out, "  <Period id=\"{id}\" start=\"PT0S\">");
    } else {
        let _ = writeln!(
            out,
            "  <Period id=\"{id}\" start=\"PT{:.3}S\">",
            start as f64 / 90_000.0
        );
    }
    if !cued.is_empty() {
        let _ = writeln!(
            out,
            "    <EventStream schemeIdUri=\"urn:scte:scte35:2013:xml\" timescale=\"90000\"{}>",
            if start > 0 {
                format!(" presentationTimeOffset=\"{start}\"")
            } else {
                String::new()
            }
        );
        for b in cued {
            scte35_event(out, b, b.start);
        }
        out.push_str("    </EventStream>\n");
    }
    // Every segment but an in-progress last one is in the timeline; the
    // growing one is announced by its start time alone being reachable.
    let mut timeline = String::new();
    let mut run: Option<(u64, u64, u32)> = None; // (t, d, repeats)
    for s in segs {
        let d = if s.complete {
            segment_duration(s)
        } else {
            u64::from(m.segment_target_ms) * 90
        };
        run = match run {
            Some((t, rd, r)) if rd == d && t + rd * (u64::from(r) + 1) == s.start => {
                Some((t, rd, r + 1))
            }
            Some((t, rd, r)) => {
                push_s(&mut timeline, t, rd, r);
                Some((s.start, d, 0))
            }
            None => Some((s.start, d, 0)),
        };
    }
    if let Some((t, d, r)) = run {
        push_s(&mut timeline, t, d, r);
    }
    let pto = if start > 0 {
        format!(" presentationTimeOffset=\"{start}\"")
    } else {
        String::new()
    };
    let ato = (seg_target - part_target).max(0.0);
    for kind in [TrackKind::Video, TrackKind::Audio] {
        let tracks: Vec<&LiveTrack> = m.tracks.iter().filter(|t| t.kind == kind).collect();
        if tracks.is_empty() {
            continue;
        }
        let ct = if kind == TrackKind::Video {
            "video"
        } else {
            "audio"
        };
        let _ = writeln!(
            out,
            "    <AdaptationSet contentType=\"{ct}\" mimeType=\"{ct}/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\">"
        );
        let _ = writeln!(
            out,
            "      <SegmentTemplate timescale=\"90000\"{pto} initialization=\"$RepresentationID$/init-{}.mp4\" media=\"$RepresentationID$/$Number$.m4s\" startNumber=\"{}\" availabilityTimeOffset=\"{ato:.3}\" availabilityTimeComplete=\"false\">\n        <SegmentTimeline>\n{timeline}        </SegmentTimeline>\n      </SegmentTemplate>",
            first.init, first.msn
        );
        for t in tracks {
            let _ = write!(
                out,
                "      <Representation id=\"{}\" codecs=\"{}\" bandwidth=\"{}\"",
                t.id, t.codec, t.bandwidth
            );
            if kind == TrackKind::Video {
                let _ = write!(out, " width=\"{}\" height=\"{}\"", t.width, t.height);
                if t.frame_rate > 0.0 {
                    let _ = write!(out, " frameRate=\"{}\"", t.frame_rate.round() as u64);
                }
                out.push_str("/>\n");
            } else {
                let _ = write!(
                    out,
                    " audioSamplingRate=\"{}\">\n        <AudioChannelConfiguration schemeIdUri=\"urn:mpeg:dash:23003:3:audio_channel_configuration:2011\" value=\"{}\"/>\n      </Representation>\n",
                    t.sample_rate, t.channels
                );
            }
        }
        out.push_str("    </AdaptationSet>\n");
    }
    out.push_str("  </Period>\n");
}

fn push_s(out: &mut String, t: u64, d: u64, r: u32) {
    if r > 0 {
        let _ = writeln!(out, "          <S t=\"{t}\" d=\"{d}\" r=\"{r}\"/>");
    } else {
        let _ = writeln!(out, "          <S t=\"{t}\" d=\"{d}\"/>");
    }
}

/// A segment's duration so far, 90 kHz.
pub fn segment_duration(s: &LiveSegment) -> u64 {
    s.parts.iter().map(|p| u64::from(p.duration)).sum()
}

/// ISO 8601 UTC with milliseconds, from Unix milliseconds.
pub fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// A news flash shown inside the stream, as players see it: an
/// `EXT-X-DATERANGE` in HLS media playlists, an `Event` of an
/// `EventStream` in the MPD, both at the flash's time of publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFlash {
    /// A number unique to the flash (the bus sequence); the DASH event id.
    pub seq: u64,
    /// The flash's id.
    pub id: String,
    /// Published at (Unix ms).
    pub at_ms: u64,
    /// Expires at (Unix ms).
    pub expires_ms: u64,
    pub text: String,
    /// `normal`, `high` or `critical`.
    pub priority: String,
    /// A title it links to.
    pub title_id: Option<String>,
}

/// The scheme of flash events in MPDs (what a dash.js app listens for).
pub const FLASH_SCHEME: &str = "urn:cascade:flash:2026";
/// The `CLASS` of flash date ranges in HLS playlists.
pub const FLASH_CLASS: &str = "com.cascade.flash";

/// A media playlist with an `EXT-X-DATERANGE` per flash, before its first
/// media segment (every update repeats them: delta updates do not skip
/// date ranges).
pub fn hls_with_flashes(playlist: &str, flashes: &[StreamFlash]) -> String {
    if flashes.is_empty() {
        return playlist.to_string();
    }
    // A quoted-string may not hold a double quote or a line break.
    let quote = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '"' => '\u{201d}',
                '\r' | '\n' => ' ',
                c => c,
            })
            .collect()
    };
    let mut tags = String::new();
    for f in flashes {
        let _ = write!(
            tags,
            "#EXT-X-DATERANGE:ID=\"flash-{}\",CLASS=\"{FLASH_CLASS}\",START-DATE=\"{}\",END-DATE=\"{}\",X-TEXT=\"{}\",X-PRIORITY=\"{}\"",
            quote(&f.id),
            iso_time(f.at_ms),
            iso_time(f.expires_ms.max(f.at_ms)),
            quote(&f.text),
            quote(&f.priority),
        );
        if let Some(t) = &f.title_id {
            let _ = write!(tags, ",X-TITLE-ID=\"{}\"", quote(t));
        }
        tags.push('\n');
    }
    let first_segment = [
        "#EXT-X-SKIP",
        "#EXT-X-PROGRAM-DATE-TIME",
        "#EXT-X-PART:",
        "#EXTINF",
    ]
    .iter()
    .filter_map(|tag| playlist.find(&format!("\n{tag}")))
    .min();
    match first_segment {
        Some(at) => format!("{}\n{tags}{}", &playlist[..at], &playlist[at + 1..]),
        None => format!("{playlist}{tags}"),
    }
}

/// An MPD with an `EventStream` of the flashes in its first Period, at
/// their presentation times (milliseconds from `availabilityStartTime`,
/// the Period starting there).
pub fn mpd_with_flashes(mpd: &str, flashes: &[StreamFlash]) -> String {
    const PERIOD: &str = "<Period id=\"0\" start=\"PT0S\">\n";
    let (Some(at), Some(ast)) = (mpd.find(PERIOD), availability_start_ms(mpd)) else {
        return mpd.to_string();
    };
    if flashes.is_empty() {
        return mpd.to_string();
    }
    let mut events = format!(
        "    <EventStream schemeIdUri=\"{FLASH_SCHEME}\" value=\"flash\" timescale=\"1000\">\n"
    );
    for f in flashes {
        let data = serde_json::json!({
            "id": f.id, "text": f.text, "priority": f.priority, "title_id": f.title_id,
        });
        let _ = writeln!(
            events,
            "      <Event id=\"{}\" presentationTime=\"{}\" duration=\"{}\">{}</Event>",
            f.seq,
            f.at_ms.saturating_sub(ast),
            f.expires_ms.saturating_sub(f.at_ms),
            xml_escape(&data.to_string())
        );
    }
    events.push_str("    </EventStream>\n");
    let split = at + PERIOD.len();
    format!("{}{events}{}", &mpd[..split], &mpd[split..])
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `availabilityStartTime` of an MPD this module wrote, in Unix ms.
fn availability_start_ms(mpd: &str) -> Option<u64> {
    let v = mpd
        .split("availabilityStartTime=\"")
        .nth(1)?
        .split('"')
        .next()?;
    parse_iso_ms(v)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (as [`iso_time`] writes) to Unix ms.
fn parse_iso_ms(v: &str) -> Option<u64> {
    let b = v.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[10] != b'T' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| v.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 24 + h) * 60 + mi) * 60 + s;
    u64::try_from(total * 1000 + ms).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn manifest(
        segments: u64,
        parts_in_last: usize,
        complete_last: bool,
    ) -> LiveManifest {
        let part = LivePart {
            duration: 45_000,
            independent: false,
            published_ms: 0,
        };
        let mut segs = Vec::new();
        for i in 0..segments {
            let last = i + 1 == segments;
            let n = if last { parts_in_last } else { 4 };
            let mut parts = vec![part; n];
            if let Some(p) = parts.first_mut() {
                p.independent = true;
            }
            segs.push(LiveSegment {
                msn: 100 + i,
                start: i * 180_000,
                pdt_ms: 1_700_000_000_000 + i * 2000,
                init: 0,
                discontinuity: false,
                parts,
                complete: !last || complete_last,
            });
        }
        LiveManifest {
            channel: "final".into(),
            event: "e1".into(),
            part_target_ms: 500,
            segment_target_ms: 2000,
            epoch_ms: 1_700_000_000_000,
            tracks: vec![
                LiveTrack {
                    id: "v0".into(),
                    kind: TrackKind::Video,
                    codec: "avc1.64001f".into(),
                    bandwidth: 3_000_000,
                    width: 1280,
                    height: 720,
                    frame_rate: 30.0,
                    sample_rate: 0,
                    channels: 0,
                    first_msn: 0,
                },
                LiveTrack {
                    id: "a0".into(),
                    kind: TrackKind::Audio,
                    codec: "mp4a.40.2".into(),
                    bandwidth: 128_000,
                    width: 0,
                    height: 0,
                    frame_rate: 0.0,
                    sample_rate: 48_000,
                    channels: 2,
                    first_msn: 0,
                },
            ],
            segments: segs,
            discontinuity_sequence: 0,
            ended: false,
            breaks: Vec::new(),
        }
    }

    #[test]
    fn outputs_parse() {
        assert_eq!(
            LiveOutput::parse("master.m3u8"),
            Some(LiveOutput::Multivariant)
        );
        assert_eq!(
            LiveOutput::parse("v0.m3u8"),
            Some(LiveOutput::Media("v0".into()))
        );
        assert_eq!(
            LiveOutput::parse("v0/init-3.mp4"),
            Some(LiveOutput::Init("v0".into(), 3))
        );
        assert_eq!(
            LiveOutput::parse("v0/12.m4s"),
            Some(LiveOutput::Segment("v0".into(), 12))
        );
        assert_eq!(
            LiveOutput::parse("a0/12.3.m4s"),
            Some(LiveOutput::Part("a0".into(), 12, 3))
        );
        assert_eq!(
            LiveOutput::parse("ts/master.m3u8"),
            Some(LiveOutput::TsMultivariant)
        );
        assert_eq!(
            LiveOutput::parse("ts/v0.a0.m3u8"),
            Some(LiveOutput::TsPlaylist("v0".into(), "a0".into()))
        );
        assert_eq!(
            LiveOutput::parse("ts/v1.a0/77.ts"),
            Some(LiveOutput::TsSegment("v1".into(), "a0".into(), 77))
        );
        for bad in [
            "ts/v0.m3u8",
            "ts/v0.a0/x.ts",
            "v0/x.m4s",
            "v0/1.2.3.m4s",
            "../x.m3u8",
            "v0/-1.m4s",
            "v0/init-.mp4",
            "v0/1.m4",
        ] {
            assert_eq!(LiveOutput::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn blocking_queries() {
        let b = Blocking::from_query("_HLS_msn=12&_HLS_part=2&token=x&_HLS_skip=YES").unwrap();
        assert_eq!((b.msn, b.part, b.skip), (Some(12), Some(2), true));
        assert_eq!(b.canonical(), "_HLS_msn=12&_HLS_part=2&_HLS_skip=YES");
        // Safari's form: no part means part 0.
        assert_eq!(
            Blocking::from_query("_HLS_msn=12").unwrap().canonical(),
            "_HLS_msn=12&_HLS_part=0"
        );
        assert!(Blocking::from_query("_HLS_part=1").is_err());
        assert!(Blocking::from_query("_HLS_msn=x").is_err());
        assert_eq!(Blocking::from_query("").unwrap().canonical(), "");
    }

    #[test]
    fn satisfies_waits_for_the_part() {
        let m = manifest(3, 2, false);
        assert!(m.satisfies(102, Some(1)));
        assert!(!m.satisfies(102, Some(2)));
        assert!(m.satisfies(102, None));
        assert!(!m.satisfies(103, None));
        assert!(m.satisfies(101, Some(9)));
        let done = manifest(3, 3, true);
        assert!(done.satisfies(102, Some(5)));
        assert_eq!(m.has_part(102, 1), Some(true));
        assert_eq!(m.has_part(102, 2), Some(false));
        assert_eq!(done.has_part(102, 3), None);
        assert_eq!(m.has_part(99, 0), None);
    }

    #[test]
    fn a_media_playlist_has_the_ll_hls_tags() {
        let m = manifest(10, 2, false);
        let p = media_playlist(&m, "v0", Blocking::default()).unwrap();
        assert!(p.starts_with("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n"));
        assert!(p.contains(
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500,CAN-SKIP-UNTIL=12\n"
        ));
        assert!(p.contains("#EXT-X-PART-INF:PART-TARGET=0.500\n"));
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:100\n"));
        assert!(p.contains("#EXT-X-MAP:URI=\"v0/init-0.mp4\"\n"));
        assert!(p.contains("#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n"));
        assert!(p.contains("#EXT-X-PART:DURATION=0.500,URI=\"v0/109.0.m4s\",INDEPENDENT=YES\n"));
        assert!(p.contains("#EXT-X-PART:DURATION=0.500,URI=\"v0/109.1.m4s\"\n"));
        // Old segments list no parts; the last three target durations do.
        assert!(!p.contains("v0/100.0.m4s"));
        assert!(p.contains("v0/106.3.m4s"));
        assert!(p.ends_with(
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"v0/109.2.m4s\"\n#EXT-X-RENDITION-REPORT:URI=\"a0.m3u8\",LAST-MSN=109,LAST-PART=1\n"
        ));
        assert_eq!(p.matches("#EXTINF:2.000,").count(), 9);

        let delta = media_playlist(
            &m,
            "v0",
            Blocking {
                skip: true,
                ..Blocking::default()
            },
        )
        .unwrap();
        // Segments ending more than CAN-SKIP-UNTIL (12 s) before the edge.
        assert!(delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n"));
        assert!(!delta.contains("v0/102.m4s"));
        assert!(delta.contains("v0/103.m4s"));

        let mut ended = manifest(3, 4, true);
        ended.ended = true;
        let p = media_playlist(&ended, "a0", Blocking::default()).unwrap();
        assert!(p.ends_with("#EXT-X-ENDLIST\n"));
        assert!(!p.contains("PRELOAD-HINT"));
        assert_eq!(
            media_playlist(&ended, "v9", Blocking::default()),
            Err(Error::NotFound)
        );
    }

    #[test]
    fn a_discontinuity_repeats_the_map() {
        let mut m = manifest(4, 4, true);
        m.segments[2].discontinuity = true;
        m.segments[2].init = 1;
        m.segments[3].init = 1;
        let p = media_playlist(&m, "v0", Blocking::default()).unwrap();
        let d = p.find("#EXT-X-DISCONTINUITY\n").unwrap();
        assert!(p[d..].starts_with("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"v0/init-1.mp4\"\n"));
    }

    #[test]
    fn multivariant_and_mpd() {
        let m = manifest(5, 2, false);
        let mv = multivariant(&m).unwrap();
        assert!(mv.contains("#EXT-X-STREAM-INF:BANDWIDTH=3128000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=1280x720,FRAME-RATE=30.000,AUDIO=\"audio\"\nv0.m3u8\n"));
        assert!(mv.contains("URI=\"a0.m3u8\""));
        let d = mpd(&m, 1_700_000_010_000, 7200, "/live/time").unwrap();
        assert!(d.contains("type=\"dynamic\""));
        assert!(d.contains("availabilityStartTime=\"2023-11-14T22:13:20.000Z\""));
        assert!(d.contains("<S t=\"0\" d=\"180000\" r=\"4\"/>"));
        assert!(d.contains("startNumber=\"100\""));
        assert!(d.contains("availabilityTimeOffset=\"1.500\""));
        assert!(d.contains("urn:mpeg:dash:utc:http-iso:2014"));
    }

    #[test]
    fn ts_playlists_list_whole_segments() {
        let m = manifest(4, 2, false);
        let mv = ts_multivariant(&m).unwrap();
        assert!(mv.contains("#EXT-X-VERSION:3\n"));
        assert!(
            mv.contains("CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=1280x720\nts/v0.a0.m3u8\n")
        );
        let p = ts_playlist(&m, "v0", "a0").unwrap();
        assert!(p.starts_with(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n"
        ));
        assert_eq!(
            p.matches("#EXTINF:2.000,").count(),
            3,
            "the growing segment is not listed"
        );
        assert!(p.contains("v0.a0/102.ts\n"));
        assert!(!p.contains("v0.a0/103.ts"));
        assert!(!p.contains("EXT-X-PART"));
        assert_eq!(ts_playlist(&m, "a0", "v0"), Err(Error::NotFound));
    }

    #[test]
    fn prewarm_paths_are_the_playlists_and_current_inits() {
        let mut m = manifest(3, 2, false);
        m.segments[2].init = 1;
        assert_eq!(
            prewarm_paths(&m, true, false),
            vec![
                "/live/final/master.m3u8",
                "/live/final/v0/init-1.mp4",
                "/live/final/a0/init-1.mp4"
            ]
        );
        assert_eq!(
            prewarm_paths(&m, false, true)[0],
            "/live/final/manifest.mpd"
        );
    }

    #[test]
    fn iso_times() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso_time(1_796_601_600_000), "2026-12-07T00:00:00.000Z");
    }

    fn flash() -> StreamFlash {
        StreamFlash {
            seq: 42,
            id: "f1".into(),
            at_ms: 1_700_000_005_250,
            expires_ms: 1_700_000_065_250,
            text: "Rain \"stops\" play".into(),
            priority: "high".into(),
            title_id: Some("t9".into()),
        }
    }

    #[test]
    fn iso_times_read_back() {
        for ms in [0, 1_700_000_005_250, 951_782_400_999, 4_102_444_800_000] {
            assert_eq!(parse_iso_ms(&iso_time(ms)), Some(ms));
        }
        assert_eq!(parse_iso_ms("2023-11-14T22:13:20Z"), None);
    }

    #[test]
    fn flashes_become_date_ranges_before_the_first_segment() {
        let pl = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n#EXTINF:2.000,\n7.m4s\n";
        let out = hls_with_flashes(pl, &[flash()]);
        let expected = "#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-DATERANGE:ID=\"flash-f1\",CLASS=\"com.cascade.flash\",START-DATE=\"2023-11-14T22:13:25.250Z\",END-DATE=\"2023-11-14T22:14:25.250Z\",X-TEXT=\"Rain \u{201d}stops\u{201d} play\",X-PRIORITY=\"high\",X-TITLE-ID=\"t9\"\n#EXT-X-PROGRAM-DATE-TIME";
        assert!(out.contains(expected), "{out}");
        assert_eq!(hls_with_flashes(pl, &[]), pl);
    }

    #[test]
    fn flashes_become_events_at_their_presentation_time() {
        let mpd = "<MPD availabilityStartTime=\"2023-11-14T22:13:20.000Z\">\n  <Period id=\"0\" start=\"PT0S\">\n  </Period>\n</MPD>\n";
        let out = mpd_with_flashes(mpd, &[flash()]);
        assert!(out.contains("<EventStream schemeIdUri=\"urn:cascade:flash:2026\" value=\"flash\" timescale=\"1000\">"), "{out}");
        assert!(out.contains("<Event id=\"42\" presentationTime=\"5250\" duration=\"60000\">{&quot;id&quot;:&quot;f1&quot;"), "{out}");
        assert!(out.find("<EventStream").unwrap() > out.find("<Period").unwrap());
    }

    #[test]
    fn breaks_are_cued_in_playlists_and_the_mpd() {
        // Segments 100..=109 of 2 s each; a 6 s break from segment 102.
        let mut m = manifest(10, 4, true);
        m.breaks.push(LiveBreak {
            end_msn: None,
            end_start: None,
            id: 7,
            start_msn: 102,
            duration_ms: 6000,
            source: "operator".into(),
        });
        let pl = media_playlist(&m, "v0", Blocking::default()).unwrap();
        assert!(pl.contains("#EXT-X-DATERANGE:ID=\"break-7\",CLASS=\"urn:cascade:break\",START-DATE=\"2023-11-14T22:13:24.000Z\",PLANNED-DURATION=6.000,SCTE35-OUT=0xFC"), "{pl}");
        assert!(pl.contains("DURATION=6.000,SCTE35-IN=0xFC"), "{pl}");
        let out = pl.find("#EXT-X-CUE-OUT:DURATION=6.000").unwrap();
        let seg102 = pl.find("v0/102.m4s").unwrap();
        let seg101 = pl.find("v0/101.m4s").unwrap();
        assert!(seg101 < out && out < seg102, "{pl}");
        assert_eq!(pl.matches("#EXT-X-CUE-OUT-CONT:").count(), 2, "{pl}");
        let back = pl.find("#EXT-X-CUE-IN").unwrap();
        assert!(pl.find("v0/104.m4s").unwrap() < back && back < pl.find("v0/105.m4s").unwrap());
        let ts = ts_playlist(&m, "v0", "a0").unwrap();
        assert!(
            ts.contains("#EXT-X-CUE-OUT:DURATION=6.000") && ts.contains("#EXT-X-CUE-IN"),
            "{ts}"
        );
        let mpd = mpd(&m, 1_700_000_030_000, 600, "/live/time").unwrap();
        assert!(
            mpd.contains("<Event presentationTime=\"360000\" duration=\"540000\" id=\"7\">"),
            "{mpd}"
        );
        assert_eq!(m.break_at(103).map(|b| b.id), Some(7));
        assert!(m.break_at(105).is_none());
        // A break still running has no end yet.
        m.breaks[0].duration_ms = 60_000;
        let pl = media_playlist(&m, "v0", Blocking::default()).unwrap();
        assert!(
            !pl.contains("SCTE35-IN") && !pl.contains("#EXT-X-CUE-IN"),
            "{pl}"
        );
        // The manifest's JSON keeps them; an old manifest without any reads.
        let back = LiveManifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back.breaks, m.breaks);
    }
}
