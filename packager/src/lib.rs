//! Just-in-time packaging of CMAF mezzanine into HLS and DASH.
//!
//! A pure library: no sockets, no files, no clock. The edge asks
//! [`Output::parse`] what a request path means, fetches the mezzanine bytes
//! that [`Output::source`] names, and turns them into a response with
//! [`package`]. The same request always gives the same bytes.
//!
//! URL layout under `/vod/{asset}/`:
//!
//! | path | what |
//! |---|---|
//! | `master.m3u8` | HLS multivariant playlist (fMP4; `?format=ts` for MPEG-TS) |
//! | `manifest.mpd` | DASH MPD |
//! | `{track}.m3u8` | HLS media playlist (video, audio or subtitles) |
//! | `{track}.iframes.m3u8` | HLS I-frame playlist (byte ranges into the segments) |
//! | `{track}/init.mp4` | init segment (HLS and DASH) |
//! | `{track}/{n}.m4s` | media segment `n`, from 1 (HLS and DASH) |
//! | `{track}/{n}.key.m4s` | segment `n`'s keyframe alone (DASH trick mode) |
//! | `{track}.vtt` | a whole subtitle file (DASH) |
//! | `{track}/{n}.vtt` | subtitle segment `n` (HLS, fMP4 timeline) |
//! | `ts/{video}.{audio}.m3u8` | HLS media playlist of muxed TS segments |
//! | `ts/{video}.{audio}/{n}.ts` | MPEG-TS segment `n`, video and audio in one |
//! | `ts/{track}.m3u8`, `ts/{track}/{n}.ts` | audio-only TS (alternate languages) |
//! | `ts/{track}/{n}.vtt` | subtitle segment `n` (HLS, TS timeline) |
//!
//! Manifests take a query ([`View`]): filters (`max_height`, `max_bitrate`,
//! `codecs`, `audio`, `subtitles`), a device `profile`, a clip
//! (`start`, `end`, in seconds, widened to whole segments) and `format`.

#![warn(unreachable_pub)]

mod cap;
pub mod cenc;
pub mod cmaf;
mod dash;
pub mod drm;
pub mod fmp4;
mod hls;
mod index;
pub mod live;
mod live_ads;
pub mod live_protect;
mod manifest;
mod mp4;
mod protect;
mod query;
mod steer;
mod stitch;
pub mod ts;
mod tsseg;
mod view;
pub mod vtt;

pub use cap::{cap_hls, cap_mpd};
pub use cenc::{ContentKey, Scheme};
pub use drm::{Drm, Systems};
pub use index::{index_bytes, Indexer, InitInfo, TrackIndex};
pub use manifest::{
    codec_family, is_safe_id, is_safe_lang, AssetManifest, ByteRange, Fragment, MarkedCopy, Track,
    TrackKind, MANIFEST_VERSION, MAX_MANIFEST_BYTES,
};
pub use mp4::BoxHeader;
pub use protect::{package_protected, protected_sources, ProtectedOutput};
pub use query::{live_with_query, with_query};
pub use steer::{steer_hls, steer_mpd, SteeringPathway};
pub use stitch::{is_stitched, stitch, StitchAd, StitchBreak};
pub use view::{default_profiles, Format, Profile, View, ViewError, CODEC_FAMILIES};

/// Why a packaging step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes ended before a box or field did.
    #[error("truncated input")]
    Truncated,
    /// A box the format requires is absent.
    #[error("missing {0} box")]
    MissingBox(&'static str),
    /// The bytes break the format.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
    /// Valid, but not something Cascade packages.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The asset manifest is unreadable or inconsistent.
    #[error("bad asset manifest: {0}")]
    Manifest(String),
    /// The request names a track or segment the title does not have.
    #[error("no such track or segment")]
    NotFound,
    /// The view's filters or clip leave nothing to play.
    #[error("the filters leave no {0} to list")]
    EmptyView(&'static str),
    /// The title is protected and the request asks for its clear media.
    #[error("the title is protected: its media is served encrypted only")]
    Protected,
}

/// What a request path under `/vod/{asset}/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `master.m3u8`: the HLS multivariant playlist (fMP4 or, with
    /// `?format=ts`, MPEG-TS variants).
    Multivariant,
    /// `manifest.mpd`.
    Mpd,
    /// `{track}.m3u8`: the media playlist of a video, audio or subtitle track.
    MediaPlaylist(String),
    /// `{track}.iframes.m3u8`: the I-frame playlist of a video track.
    IframePlaylist(String),
    /// `{track}/init.mp4`.
    Init(String),
    /// `{track}/{n}.m4s`: media segment `n`, from 1 (HLS and DASH).
    Segment(String, u64),
    /// `{track}/{n}.key.m4s`: the keyframe of segment `n` alone, for the
    /// DASH trick-mode representation.
    KeySegment(String, u64),
    /// `{track}.vtt`: a whole subtitle file (DASH side-loads it).
    Subtitles(String),
    /// `{track}/{n}.vtt` (fMP4 timeline) or `ts/{track}/{n}.vtt` (TS
    /// timeline): a subtitle segment.
    SubtitleSegment(String, u64, Format),
    /// `ts/{ids}.m3u8`: a TS media playlist. `ids` is a video track and an
    /// audio track joined by `.` (`v0.a0`), or one track alone (`a1`, or a
    /// subtitle track, whose playlist lists `ts/{track}/{n}.vtt`).
    TsPlaylist(String),
    /// `ts/{ids}/{n}.ts`: an MPEG-TS segment muxed from the tracks `ids` names.
    TsSegment(String, u64),
}

/// Where the bytes of an output come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<'a> {
    /// Mezzanine file name within the asset.
    pub file: &'a str,
    /// The bytes of it that are needed.
    pub range: ByteRange,
}

/// Plain decimal from 1: no sign, no leading zeros, so each segment has one URL.
fn segment_number(n: &str) -> Option<u64> {
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// `v0.a0`, `v0` or `a1`: one or two track ids joined by `.`.
fn is_ts_ids(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = parts.by_ref().take(2).all(is_safe_id);
    ok && parts.next().is_none()
}

impl Output {
    /// Parses the part of the path after `/vod/{asset}/`. `None` for anything
    /// that is not a packager output.
    pub fn parse(rest: &str) -> Option<Output> {
        match rest {
            "master.m3u8" => return Some(Output::Multivariant),
            "manifest.mpd" => return Some(Output::Mpd),
            _ => {}
        }
        if let Some(ts) = rest.strip_prefix("ts/") {
            if let Some(ids) = ts.strip_suffix(".m3u8") {
                return is_ts_ids(ids).then(|| Output::TsPlaylist(ids.to_string()));
            }
            let (ids, file) = ts.split_once('/')?;
            if let Some(n) = file.strip_suffix(".ts") {
                return (is_ts_ids(ids))
                    .then(|| segment_number(n))
                    .flatten()
                    .map(|n| Output::TsSegment(ids.to_string(), n));
            }
            let n = segment_number(file.strip_suffix(".vtt")?)?;
            return is_safe_id(ids)
                .then(|| Output::SubtitleSegment(ids.to_string(), n, Format::Ts));
        }
        if let Some(track) = rest.strip_suffix(".iframes.m3u8") {
            return is_safe_id(track).then(|| Output::IframePlaylist(track.to_string()));
        }
        if let Some(track) = rest.strip_suffix(".m3u8") {
            return is_safe_id(track).then(|| Output::MediaPlaylist(track.to_string()));
        }
        if let Some(track) = rest.strip_suffix(".vtt").filter(|t| !t.contains('/')) {
            return is_safe_id(track).then(|| Output::Subtitles(track.to_string()));
        }
        let (track, file) = rest.split_once('/')?;
        if !is_safe_id(track) {
            return None;
        }
        let track = track.to_string();
        if file == "init.mp4" {
            return Some(Output::Init(track));
        }
        if let Some(n) = file.strip_suffix(".key.m4s") {
            return Some(Output::KeySegment(track, segment_number(n)?));
        }
        if let Some(n) = file.strip_suffix(".m4s") {
            return Some(Output::Segment(track, segment_number(n)?));
        }
        let n = segment_number(file.strip_suffix(".vtt")?)?;
        Some(Output::SubtitleSegment(track, n, Format::Fmp4))
    }

    /// The `Content-Type` of this output.
    pub fn content_type(&self, m: Option<&AssetManifest>) -> &'static str {
        match self {
            Output::Multivariant
            | Output::MediaPlaylist(_)
            | Output::IframePlaylist(_)
            | Output::TsPlaylist(_) => "application/vnd.apple.mpegurl",
            Output::Mpd => "application/dash+xml",
            Output::Subtitles(_) | Output::SubtitleSegment(..) => "text/vtt; charset=utf-8",
            Output::TsSegment(..) => "video/mp2t",
            Output::Init(t) | Output::Segment(t, _) | Output::KeySegment(t, _) => {
                match m.and_then(|m| m.track(t)).map(|t| t.kind) {
                    Some(TrackKind::Audio) => "audio/mp4",
                    _ => "video/mp4",
                }
            }
        }
    }

    /// Whether the output is a playlist or MPD (short-lived in caches once
    /// live streams exist, and shaped by a [`View`]) rather than immutable media.
    pub fn is_manifest(&self) -> bool {
        matches!(
            self,
            Output::Multivariant
                | Output::Mpd
                | Output::MediaPlaylist(_)
                | Output::IframePlaylist(_)
                | Output::TsPlaylist(_)
        )
    }

    /// The part of `view` this output depends on: all of it for the
    /// multivariant playlist and the MPD, the clip for media playlists,
    /// nothing for media. The edge keys its cache by this view's canonical
    /// query, so outputs are cached once per filter that changes them.
    pub fn relevant_view(&self, view: &View) -> View {
        match self {
            Output::Multivariant | Output::Mpd => view.clone(),
            // The format is in the path of every other output.
            Output::MediaPlaylist(_) | Output::IframePlaylist(_) | Output::TsPlaylist(_) => {
                view.clip_only()
            }
            _ => View::default(),
        }
    }

    /// The mezzanine bytes this output needs, in the order [`package`]
    /// wants them; empty for outputs made from the manifest alone.
    pub fn sources<'m>(&self, m: &'m AssetManifest) -> Result<Vec<Source<'m>>, Error> {
        let track = |t: &str| m.track(t).ok_or(Error::NotFound);
        let init = |t: &'m Track| Source {
            file: &t.file,
            range: t.init,
        };
        let frag = |t: &'m Track, n: u64| -> Result<Source<'m>, Error> {
            Ok(Source {
                file: &t.file,
                range: t.segment(n).ok_or(Error::NotFound)?.range,
            })
        };
        match self {
            Output::Multivariant | Output::Mpd => Ok(Vec::new()),
            Output::MediaPlaylist(t) | Output::IframePlaylist(t) => track(t).map(|_| Vec::new()),
            Output::TsPlaylist(ids) => ts_tracks(m, ids).map(|_| Vec::new()),
            Output::Init(t) => Ok(vec![init(media(track(t)?)?)]),
            Output::Segment(t, n) => Ok(vec![frag(media(track(t)?)?, *n)?]),
            Output::KeySegment(t, n) => {
                let t = track(t)?;
                if t.kind != TrackKind::Video {
                    return Err(Error::NotFound);
                }
                Ok(vec![init(t), frag(t, *n)?])
            }
            Output::Subtitles(t) | Output::SubtitleSegment(t, ..) => {
                let t = track(t)?;
                if t.kind != TrackKind::Subtitle {
                    return Err(Error::NotFound);
                }
                if let Output::SubtitleSegment(_, n, _) = self {
                    m.timeline()
                        .and_then(|v| v.segment(*n))
                        .ok_or(Error::NotFound)?;
                }
                Ok(vec![init(t)])
            }
            Output::TsSegment(ids, n) => {
                let (video, audio) = ts_tracks(m, ids)?;
                if video.is_none() && audio.is_none() {
                    // A subtitle id: its segments are `.vtt`.
                    return Err(Error::NotFound);
                }
                let mut out = Vec::with_capacity(4);
                if let Some(v) = video {
                    out.extend([init(v), frag(v, *n)?]);
                }
                if let Some(a) = audio {
                    // Audio a segment short of the video at the very end plays as silence.
                    if a.segment(*n).is_some() || video.is_none() {
                        out.extend([init(a), frag(a, *n)?]);
                    }
                }
                Ok(out)
            }
        }
    }
}

/// A track that has an init segment and fragments.
fn media(t: &Track) -> Result<&Track, Error> {
    match t.kind {
        TrackKind::Subtitle => Err(Error::NotFound),
        _ => Ok(t),
    }
}

/// The video and audio tracks a TS path names: `v0.a0`, `v0`, `a1`. A lone
/// subtitle id is not a TS track (its playlist is, see [`Output::TsPlaylist`]).
fn ts_tracks<'m>(
    m: &'m AssetManifest,
    ids: &str,
) -> Result<(Option<&'m Track>, Option<&'m Track>), Error> {
    let mut video = None;
    let mut audio = None;
    for id in ids.split('.') {
        let t = m.track(id).ok_or(Error::NotFound)?;
        match t.kind {
            TrackKind::Video if video.is_none() && audio.is_none() => {
                if t.codec_family() != "avc" {
                    return Err(Error::NotFound);
                }
                video = Some(t);
            }
            TrackKind::Audio if audio.is_none() => audio = Some(t),
            TrackKind::Subtitle if !ids.contains('.') => return Ok((None, None)),
            _ => return Err(Error::NotFound),
        }
    }
    Ok((video, audio))
}

/// Makes the bytes of `output` as `view` shows it. `sources` holds the
/// bytes [`Output::sources`] named, in its order.
pub fn package(
    m: &AssetManifest,
    output: &Output,
    view: &View,
    sources: &[&[u8]],
) -> Result<Vec<u8>, Error> {
    let wanted = output.sources(m)?;
    if wanted.len() != sources.len()
        || wanted
            .iter()
            .zip(sources)
            .any(|(w, s)| s.len() as u64 != w.range.length)
    {
        return Err(Error::Malformed("source bytes do not match the manifest"));
    }
    let track = |t: &str| m.track(t).ok_or(Error::NotFound);
    match output {
        Output::Multivariant => Ok(hls::multivariant(m, view)?.into_bytes()),
        Output::Mpd => Ok(dash::mpd(m, view)?.into_bytes()),
        Output::MediaPlaylist(t) => {
            let t = track(t)?;
            let range = view.segments(m);
            Ok(match t.kind {
                TrackKind::Subtitle => hls::subtitle_playlist(m, t, range),
                _ => hls::media_playlist(t, range, ""),
            }
            .into_bytes())
        }
        Output::IframePlaylist(t) => {
            let t = track(t)?;
            if t.kind != TrackKind::Video || !hls::has_key_lengths(t) {
                return Err(Error::NotFound);
            }
            Ok(hls::iframe_playlist(t, view.segments(m)).into_bytes())
        }
        Output::TsPlaylist(ids) => {
            let range = view.segments(m);
            match ts_tracks(m, ids)? {
                (None, None) => {
                    let t = track(ids)?;
                    Ok(hls::subtitle_playlist(m, t, range).into_bytes())
                }
                (video, audio) => {
                    Ok(
                        hls::ts_playlist(ids, video.or(audio).ok_or(Error::NotFound)?, range, None)
                            .into_bytes(),
                    )
                }
            }
        }
        Output::Init(_) => {
            expect_boxes(sources[0], &[b"ftyp", b"moov"])?;
            Ok(sources[0].to_vec())
        }
        Output::Segment(..) => {
            expect_boxes(sources[0], &[b"moof", b"mdat"])?;
            // A CMAF segment may open with `styp`; players need it for nothing
            // we serve, so the fragment goes out exactly as the mezzanine has it.
            Ok(sources[0].to_vec())
        }
        Output::KeySegment(_, n) => {
            let cfg = fmp4::parse_init(sources[0])?;
            let seq = u32::try_from(*n).map_err(|_| Error::NotFound)?;
            fmp4::keyframe_fragment(&cfg, sources[1], seq)
        }
        Output::Subtitles(_) => {
            // Stored normalised at ingest; checked again, as it came over the network.
            let text = vtt::parse(sources[0]).map_err(|_| Error::Malformed("subtitle file"))?;
            Ok(vtt::serialize(&text).into_bytes())
        }
        Output::SubtitleSegment(_, n, format) => {
            let timeline = m.timeline().ok_or(Error::NotFound)?;
            let (start, end) = segment_ms(timeline, *n).ok_or(Error::NotFound)?;
            let text = vtt::parse(sources[0]).map_err(|_| Error::Malformed("subtitle file"))?;
            let mpegts = match format {
                Format::Ts => tsseg::TS_OFFSET,
                Format::Fmp4 => to_90k(timeline.media_time, timeline.timescale),
            };
            Ok(vtt::segment(&text, start, end, mpegts).into_bytes())
        }
        Output::TsSegment(ids, _) => {
            let (video, _) = ts_tracks(m, ids)?;
            let pair = |i: usize| {
                sources
                    .get(i)
                    .zip(sources.get(i + 1))
                    .map(|(a, b)| (*a, *b))
            };
            let (v, a) = match video {
                Some(_) => (pair(0), pair(2)),
                None => (None, pair(0)),
            };
            tsseg::segment(v, a)
        }
    }
}

/// Segment `n` of the timeline track, as presentation milliseconds from
/// the title's start.
fn segment_ms(t: &Track, n: u64) -> Option<(u64, u64)> {
    let f = t.segment(n)?;
    let first = t.fragments.first()?.start;
    let ms = |ticks: u64| (u128::from(ticks) * 1000 / u128::from(t.timescale.max(1))) as u64;
    let start = ms(f.start.saturating_sub(first));
    Some((start, start + ms(f.duration)))
}

/// Ticks of `timescale` as 90 kHz ticks.
pub(crate) fn to_90k(ticks: u64, timescale: u32) -> u64 {
    (u128::from(ticks) * 90_000 / u128::from(timescale.max(1))) as u64
}

/// Which outputs of a title to pre-warm; see [`prewarm_paths`].
#[derive(Debug, Clone, PartialEq)]
pub struct WarmSelection {
    /// Track ids to include (video renditions and audio tracks alike); `None`
    /// for every track. Ids the title lacks are ignored.
    pub tracks: Option<Vec<String>>,
    /// Keep only the first this many segments (of those the time range selects).
    pub first_segments: Option<u64>,
    /// Keep segments that end after this many seconds from the title's start.
    pub from_secs: Option<f64>,
    /// Keep segments that start before this many seconds from the title's start.
    pub to_secs: Option<f64>,
    /// Include the HLS playlists (multivariant and one per selected track).
    pub hls: bool,
    /// Include the DASH MPD.
    pub dash: bool,
}

impl Default for WarmSelection {
    /// Everything: every track, every segment, both formats.
    fn default() -> Self {
        WarmSelection {
            tracks: None,
            first_segments: None,
            from_secs: None,
            to_secs: None,
            hls: true,
            dash: true,
        }
    }
}

/// The request paths a player uses for the selected part of a title, in the
/// order worth warming them: manifests first, then each track's playlist,
/// init segment and media segments.
///
/// Segments are numbered from 1, as in the playlists and the MPD. A segment
/// is in the time range `[from_secs, to_secs)` when it overlaps it; its time
/// is counted from the track's first fragment, as players count it. Init
/// segments and media segments serve HLS and DASH alike, so they are listed
/// whichever formats are chosen.
pub fn prewarm_paths(m: &AssetManifest, sel: &WarmSelection) -> Vec<String> {
    let asset = &m.asset;
    let mut out = Vec::new();
    if sel.hls {
        out.push(format!("/vod/{asset}/master.m3u8"));
    }
    if sel.dash {
        out.push(format!("/vod/{asset}/manifest.mpd"));
    }
    let chosen = |t: &&Track| sel.tracks.as_ref().is_none_or(|list| list.contains(&t.id));
    for t in m.tracks.iter().filter(chosen) {
        if sel.hls {
            out.push(format!("/vod/{asset}/{}.m3u8", t.id));
        }
        // Subtitle segments follow the video's boundaries.
        let (timing, ext) = match t.kind {
            TrackKind::Subtitle => (m.timeline(), "vtt"),
            _ => {
                out.push(format!("/vod/{asset}/{}/init.mp4", t.id));
                (Some(t), "m4s")
            }
        };
        let Some(timing) = timing else {
            continue;
        };
        let ts = f64::from(timing.timescale.max(1));
        let first = timing.fragments.first().map_or(0, |f| f.start);
        let limit = sel
            .first_segments
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let numbers = timing
            .fragments
            .iter()
            .zip(1u64..)
            .filter(|(f, _)| {
                let start = f.start.saturating_sub(first) as f64 / ts;
                let end = start + f.duration as f64 / ts;
                sel.from_secs.is_none_or(|from| end > from)
                    && sel.to_secs.is_none_or(|to| start < to)
            })
            .map(|(_, n)| n)
            .take(limit);
        out.extend(numbers.map(|n| format!("/vod/{asset}/{}/{n}.{ext}", t.id)));
    }
    out
}

/// Checks that `bytes` is made of exactly the top-level boxes `kinds`, in order.
fn expect_boxes(bytes: &[u8], kinds: &[&[u8; 4]]) -> Result<(), Error> {
    let mut offset = 0usize;
    for kind in kinds {
        let header = BoxHeader::parse(bytes.get(offset..).ok_or(Error::Truncated)?)?;
        if &header.kind != *kind {
            return Err(Error::Malformed("unexpected box in source range"));
        }
        let size = header.size.map_or(bytes.len() - offset, |s| s as usize);
        offset = offset.checked_add(size).ok_or(Error::Truncated)?;
        if offset > bytes.len() {
            return Err(Error::Truncated);
        }
    }
    if offset != bytes.len() {
        return Err(Error::Malformed("trailing bytes in source range"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_paths() {
        assert_eq!(Output::parse("master.m3u8"), Some(Output::Multivariant));
        assert_eq!(Output::parse("manifest.mpd"), Some(Output::Mpd));
        assert_eq!(
            Output::parse("v0.m3u8"),
            Some(Output::MediaPlaylist("v0".into()))
        );
        assert_eq!(
            Output::parse("a0/init.mp4"),
            Some(Output::Init("a0".into()))
        );
        assert_eq!(
            Output::parse("v1/12.m4s"),
            Some(Output::Segment("v1".into(), 12))
        );
        for bad in [
            "v1/012.m4s",
            "v1/0.m4s",
            "v1/+1.m4s",
            "../x.m3u8",
            "v1/1.m4s/x",
            "v 1/1.m4s",
            "v1/99999999999999999999999.m4s",
            "",
            "v1/",
        ] {
            assert_eq!(Output::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_new_paths() {
        let s = |x: &str| x.to_string();
        for (path, want) in [
            ("v0.iframes.m3u8", Output::IframePlaylist(s("v0"))),
            ("v0/3.key.m4s", Output::KeySegment(s("v0"), 3)),
            ("s0.vtt", Output::Subtitles(s("s0"))),
            (
                "s0/2.vtt",
                Output::SubtitleSegment(s("s0"), 2, Format::Fmp4),
            ),
            (
                "ts/s0/2.vtt",
                Output::SubtitleSegment(s("s0"), 2, Format::Ts),
            ),
            ("ts/v0.a1.m3u8", Output::TsPlaylist(s("v0.a1"))),
            ("ts/a1.m3u8", Output::TsPlaylist(s("a1"))),
            ("ts/v0.a1/7.ts", Output::TsSegment(s("v0.a1"), 7)),
        ] {
            assert_eq!(Output::parse(path), Some(want), "{path}");
        }
        for bad in [
            "ts/v0.a1.s0.m3u8",
            "ts/v0..m3u8",
            "ts/v0.a1/0.ts",
            "ts/v0.a1/1.m4s",
            "v0/01.key.m4s",
            "a/b.vtt",
            "ts/../x.m3u8",
            "v0.x.m3u8",
        ] {
            assert_eq!(Output::parse(bad), None, "{bad}");
        }
    }

    fn full_title() -> AssetManifest {
        let mut tracks = vec![
            track("v0", TrackKind::Video, 12800, 5, 2.0, 0.0),
            track("v1", TrackKind::Video, 12800, 5, 2.0, 0.0),
            track("a0", TrackKind::Audio, 48000, 5, 2.0, 0.0),
            track("a1", TrackKind::Audio, 48000, 5, 2.0, 0.0),
            Track::subtitle("s0", "s0.vtt", "en", 100),
        ];
        tracks[0].height = 1080;
        tracks[0].bandwidth = 5_000_000;
        tracks[1].height = 360;
        tracks[1].bandwidth = 800_000;
        tracks[3].codec = "mp4a.40.2".into();
        tracks[2].codec = "mp4a.40.2".into();
        tracks[2].language = "en".into();
        tracks[3].language = "hi".into();
        for t in &mut tracks[..2] {
            for f in &mut t.fragments {
                f.key_length = 4;
            }
        }
        AssetManifest::new("t1", tracks)
    }

    fn text(m: &AssetManifest, path: &str, query: &str) -> Result<String, Error> {
        let o = Output::parse(path).unwrap();
        let v = View::from_query(query, &default_profiles()).unwrap();
        package(m, &o, &o.relevant_view(&v), &[]).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn settled_views_key_alike_and_package_alike() {
        let m = full_title();
        let settle = |q: &str| View::from_query(q, &default_profiles()).unwrap().settle(&m);
        // The outputs compared: for a clip the media playlists and the MPD
        // (a multivariant playlist writes the clip's own numbers into its
        // child URLs, which then name the same segments).
        let same = |a: &str, b: &str, want: &str| {
            let (va, vb) = (settle(a), settle(b));
            assert_eq!(va.canonical(), vb.canonical(), "{a} vs {b}");
            assert_eq!(va.canonical(), want, "{a}");
            let paths: &[&str] = if va.is_clip() || a.contains("start") || a.contains("end") {
                &["v0.m3u8", "a1.m3u8", "manifest.mpd"]
            } else {
                &["master.m3u8", "manifest.mpd"]
            };
            for path in paths {
                let o = Output::parse(path).unwrap();
                let raw = View::from_query(a, &default_profiles()).unwrap();
                assert_eq!(
                    package(&m, &o, &o.relevant_view(&raw), &[]),
                    package(&m, &o, &o.relevant_view(&va), &[]),
                    "{path}?{a}: settling changed the output"
                );
            }
        };
        // Above every rendition: no filter at all.
        same("max_bitrate=9000001", "max_bitrate=9000002", "");
        same("max_height=2160", "max_height=16384", "");
        // Between two renditions: the one under the limit.
        let low = 800_000 + full_title().audios().map(|a| a.bandwidth).max().unwrap();
        same(
            "max_bitrate=1000000",
            "max_bitrate=4000000",
            &format!("max_bitrate={low}"),
        );
        same("max_height=400", "max_height=1079", "max_height=360");
        // A clip: the boundaries of the segments it lists.
        same("start=3&end=5", "start=2.5&end=5.5", "end=6&start=2");
        same("start=0.5&end=7", "end=7.9", "end=8");
        // A clip of the whole title (five segments of 2 s) stays a clip.
        same("start=0.5&end=10", "end=12", "end=10");
    }

    #[test]
    fn ts_master_muxes_the_default_audio_and_lists_the_others_alone() {
        let m = full_title();
        let master = text(&m, "master.m3u8", "format=ts").unwrap();
        assert!(master.contains("#EXT-X-VERSION:3\n"), "{master}");
        assert!(
            master.contains("\nts/v0.a0.m3u8\n") && master.contains("\nts/v1.a0.m3u8\n"),
            "{master}"
        );
        let hindi = master
            .lines()
            .find(|l| l.contains("LANGUAGE=\"hi\""))
            .unwrap();
        assert!(
            hindi.contains("DEFAULT=NO") && hindi.ends_with(",URI=\"ts/a1.m3u8\""),
            "{master}"
        );
        let default = master
            .lines()
            .find(|l| l.contains("LANGUAGE=\"en\""))
            .unwrap();
        assert!(!default.contains("URI="), "{default}");
        assert!(master.contains("URI=\"ts/s0.m3u8\""), "{master}");
        assert!(!master.contains("I-FRAME"), "{master}");
        let media = text(&m, "ts/v0.a0.m3u8", "").unwrap();
        assert!(
            media.contains("\nv0.a0/1.ts\n") && !media.contains("EXT-X-MAP"),
            "{media}"
        );
        let subs = text(&m, "ts/s0.m3u8", "").unwrap();
        assert!(subs.contains("\ns0/5.vtt\n"), "{subs}");
    }

    #[test]
    fn names_differ_within_a_group_and_subtitle_ids_are_not_ts() {
        let mut m = full_title();
        m.tracks[3].language = "en".into();
        let master = text(&m, "master.m3u8", "").unwrap();
        assert!(
            master.contains("NAME=\"en 1\"") && master.contains("NAME=\"en 2\""),
            "{master}"
        );
        assert_eq!(
            Output::TsSegment("s0".into(), 1).sources(&m),
            Err(Error::NotFound)
        );
    }

    #[test]
    fn fmp4_master_has_iframes_subtitles_and_versions() {
        let m = full_title();
        let master = text(&m, "master.m3u8", "").unwrap();
        assert!(master.contains("#EXT-X-VERSION:6\n"), "{master}");
        assert!(
            master.contains("#EXT-X-I-FRAME-STREAM-INF:")
                && master.contains("URI=\"v0.iframes.m3u8\""),
            "{master}"
        );
        assert!(
            master.contains("TYPE=SUBTITLES") && master.contains("SUBTITLES=\"subs\""),
            "{master}"
        );
        let iframes = text(&m, "v0.iframes.m3u8", "").unwrap();
        assert!(
            iframes.contains("#EXT-X-VERSION:5\n#EXT-X-TARGETDURATION:2\n"),
            "{iframes}"
        );
        assert!(
            iframes.contains("#EXT-X-BYTERANGE:4@0\nv0/1.m4s\n"),
            "{iframes}"
        );
        // Without key lengths (old manifests) there are no I-frame playlists.
        let mut old = full_title();
        old.tracks[0].fragments[0].key_length = 0;
        old.tracks[1].fragments[0].key_length = 0;
        assert!(!text(&old, "master.m3u8", "").unwrap().contains("I-FRAME"));
        assert_eq!(text(&old, "v0.iframes.m3u8", ""), Err(Error::NotFound));
    }

    #[test]
    fn filters_never_list_what_they_exclude() {
        let m = full_title();
        let master = text(&m, "master.m3u8", "profile=mobile").unwrap();
        assert!(
            !master.contains("v0.m3u8") && master.contains("v1.m3u8"),
            "{master}"
        );
        assert!(
            !master.contains("v0.iframes") && master.contains("v1.iframes"),
            "{master}"
        );
        let mpd = text(&m, "manifest.mpd", "profile=mobile&audio=hi&subtitles=fr").unwrap();
        assert!(
            !mpd.contains("id=\"v0\"") && mpd.contains("id=\"v1\""),
            "{mpd}"
        );
        assert!(
            !mpd.contains("lang=\"en\"") && mpd.contains("lang=\"hi\""),
            "{mpd}"
        );
        assert!(!mpd.contains("text/vtt"), "{mpd}");
        assert!(mpd.contains("trickmode"), "{mpd}");
        assert_eq!(
            text(&m, "master.m3u8", "max_height=100"),
            Err(Error::EmptyView("video rendition"))
        );
        assert_eq!(
            text(&m, "master.m3u8", "codecs=av1"),
            Err(Error::EmptyView("video rendition"))
        );
    }

    #[test]
    fn clips_are_whole_segments_and_children_keep_the_clip() {
        let m = full_title();
        // [3, 7): segments 2 ([2,4)), 3 and 4 ([6,8)).
        let master = text(&m, "master.m3u8", "start=3&end=7").unwrap();
        assert!(master.contains("\nv0.m3u8?end=7&start=3\n"), "{master}");
        let media = text(&m, "v0.m3u8", "start=3&end=7&__token__=x").unwrap();
        assert!(media.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{media}");
        let segs: Vec<&str> = media.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(segs, ["v0/2.m4s", "v0/3.m4s", "v0/4.m4s"]);
        let mpd = text(&m, "manifest.mpd", "start=3&end=7").unwrap();
        assert!(
            mpd.contains("startNumber=\"2\"")
                && mpd.contains("mediaPresentationDuration=\"PT6.000S\""),
            "{mpd}"
        );
        assert!(mpd.contains("presentationTimeOffset=\"25600\""), "{mpd}");
        assert!(
            mpd.contains("<S t=\"25600\" d=\"25600\" r=\"2\"/>"),
            "{mpd}"
        );
        assert_eq!(
            text(&m, "master.m3u8", "start=100"),
            Err(Error::EmptyView("segment in the clip"))
        );
    }

    /// A track of `n` fragments of `secs` seconds each, the first starting at `start_secs`.
    fn track(
        id: &str,
        kind: TrackKind,
        timescale: u32,
        n: u64,
        secs: f64,
        start_secs: f64,
    ) -> Track {
        let ticks = (secs * f64::from(timescale)) as u64;
        let first = (start_secs * f64::from(timescale)) as u64;
        Track {
            marked: None,
            id: id.into(),
            kind,
            file: format!("{id}.mp4"),
            codec: "avc1.640028".into(),
            bandwidth: 1000,
            average_bandwidth: 1000,
            width: 320,
            height: 180,
            frame_rate: 25.0,
            sample_rate: 0,
            channels: 0,
            language: "und".into(),
            media_time: 0,
            timescale,
            init: ByteRange {
                offset: 0,
                length: 10,
            },
            fragments: (0..n)
                .map(|i| Fragment {
                    range: ByteRange {
                        offset: 10 + i * 10,
                        length: 10,
                    },
                    start: first + i * ticks,
                    duration: ticks,
                    key_length: 0,
                })
                .collect(),
        }
    }

    fn title() -> AssetManifest {
        AssetManifest::new(
            "t1",
            vec![
                track("v0", TrackKind::Video, 12800, 5, 2.0, 0.0),
                track("v1", TrackKind::Video, 12800, 5, 2.0, 0.0),
                // Audio starts late in its own timescale, as AAC priming does.
                track("a0", TrackKind::Audio, 48000, 5, 2.0, 0.5),
            ],
        )
    }

    fn segments_of(paths: &[String], track: &str) -> Vec<String> {
        let prefix = format!("/vod/t1/{track}/");
        paths
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|p| p.ends_with(".m4s"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn prewarm_everything_matches_what_players_request() {
        let m = title();
        let paths = prewarm_paths(&m, &WarmSelection::default());
        // 2 manifests, then per track: playlist, init, 5 segments.
        assert_eq!(paths.len(), 2 + 3 * 7, "{paths:?}");
        assert_eq!(paths[0], "/vod/t1/master.m3u8");
        assert_eq!(paths[1], "/vod/t1/manifest.mpd");
        assert_eq!(paths[2], "/vod/t1/v0.m3u8");
        assert_eq!(paths[3], "/vod/t1/v0/init.mp4");
        assert_eq!(paths[4], "/vod/t1/v0/1.m4s");
        // Every URI the playlists name, and nothing else, resolved under /vod/t1/.
        let mut listed: Vec<String> =
            vec!["/vod/t1/master.m3u8".into(), "/vod/t1/manifest.mpd".into()];
        for line in hls::multivariant(&m, &View::default()).unwrap().lines() {
            // Variants on their own lines; audio renditions in `URI="…"`.
            let uri = match line.split_once("URI=\"") {
                Some((_, rest)) => rest.split('"').next().unwrap_or_default(),
                None if !line.starts_with('#') => line,
                None => continue,
            };
            listed.push(format!("/vod/t1/{uri}"));
        }
        for t in &m.tracks {
            let playlist = hls::media_playlist(t, 1..t.fragments.len() as u64 + 1, "");
            let map = format!("#EXT-X-MAP:URI=\"{}/init.mp4\"", t.id);
            assert!(playlist.contains(&map), "{playlist}");
            listed.push(format!("/vod/t1/{}/init.mp4", t.id));
            for uri in playlist.lines().filter(|l| !l.starts_with('#')) {
                listed.push(format!("/vod/t1/{uri}"));
            }
            // The URLs parse back to the segments they name.
            for n in segments_of(&paths, &t.id) {
                let rest = format!("{}/{n}", t.id);
                match Output::parse(&rest) {
                    Some(Output::Segment(id, k)) => assert!(t.segment(k).is_some() && id == t.id),
                    other => panic!("{rest}: {other:?}"),
                }
            }
        }
        let mut a = paths.clone();
        let mut b = listed;
        a.sort();
        b.sort();
        b.dedup();
        assert_eq!(a, b);
        // DASH numbers segments the same way.
        assert!(dash::mpd(&m, &View::default())
            .unwrap()
            .contains("startNumber=\"1\""));
    }

    #[test]
    fn prewarm_selects_tracks_formats_and_time() {
        let m = title();
        let sel = WarmSelection {
            tracks: Some(vec!["v1".into(), "nope".into()]),
            dash: false,
            ..WarmSelection::default()
        };
        let paths = prewarm_paths(&m, &sel);
        assert_eq!(paths.len(), 1 + 1 + 1 + 5, "{paths:?}");
        assert_eq!(paths[0], "/vod/t1/master.m3u8");
        assert!(paths
            .iter()
            .all(|p| !p.contains("/v0") && !p.contains("/a0")));

        let sel = WarmSelection {
            hls: false,
            dash: false,
            tracks: Some(vec!["v0".into()]),
            ..WarmSelection::default()
        };
        assert_eq!(
            prewarm_paths(&m, &sel),
            [
                "/vod/t1/v0/init.mp4",
                "/vod/t1/v0/1.m4s",
                "/vod/t1/v0/2.m4s",
                "/vod/t1/v0/3.m4s",
                "/vod/t1/v0/4.m4s",
                "/vod/t1/v0/5.m4s",
            ]
        );

        // [3, 6): segment 2 is [2, 4) and segment 3 is [4, 6); segment 4 starts at 6.
        let range = |from: Option<f64>, to: Option<f64>, first: Option<u64>| {
            let sel = WarmSelection {
                from_secs: from,
                to_secs: to,
                first_segments: first,
                ..WarmSelection::default()
            };
            let paths = prewarm_paths(&m, &sel);
            (segments_of(&paths, "v0"), segments_of(&paths, "a0"))
        };
        let (v, a) = range(Some(3.0), Some(6.0), None);
        assert_eq!(v, ["2.m4s", "3.m4s"]);
        // Audio time counts from its own first fragment.
        assert_eq!(a, ["2.m4s", "3.m4s"]);
        // A segment that ends exactly at `from` is not in the range.
        assert_eq!(range(Some(4.0), None, None).0, ["3.m4s", "4.m4s", "5.m4s"]);
        assert_eq!(range(None, Some(4.0), None).0, ["1.m4s", "2.m4s"]);
        assert_eq!(range(None, None, Some(2)).0, ["1.m4s", "2.m4s"]);
        assert_eq!(range(Some(5.0), None, Some(2)).0, ["3.m4s", "4.m4s"]);
        assert_eq!(range(None, None, Some(0)).0, Vec::<String>::new());
        assert_eq!(range(Some(100.0), None, None).0, Vec::<String>::new());
        // Manifests and init segments stay, whatever the range.
        let paths = prewarm_paths(
            &m,
            &WarmSelection {
                from_secs: Some(100.0),
                ..WarmSelection::default()
            },
        );
        assert_eq!(paths.len(), 2 + 3 * 2);
    }
}
