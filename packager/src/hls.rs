//! HLS playlists (RFC 8216bis): fMP4 and MPEG-TS variants, alternate audio,
//! WebVTT subtitles and I-frame playlists.
//!
//! `EXT-X-VERSION` is the lowest version whose features the playlist uses:
//! 6 for fMP4 media playlists (`EXT-X-MAP` outside an I-frame playlist),
//! 5 for I-frame playlists (`EXT-X-MAP` with `EXT-X-I-FRAMES-ONLY`, byte
//! ranges), 3 for TS and subtitle playlists (decimal `EXTINF`). A
//! multivariant playlist declares the highest version of the playlists it
//! lists, so a client that cannot play them is told so up front.

use std::fmt::Write;
use std::ops::Range;

use crate::drm::Drm;
use crate::manifest::{AssetManifest, Track, TrackKind};
use crate::view::{Format, View};
use crate::Error;

/// `EXT-X-VERSION` of each kind of playlist; see the module docs.
const FMP4_VERSION: u32 = 6;
const IFRAME_VERSION: u32 = 5;
const TS_VERSION: u32 = 3;
const SUBTITLE_VERSION: u32 = 3;

/// The multivariant playlist as `view` shows it: one variant per video
/// rendition the view lists, audio tracks in one rendition group (the first
/// is the default), subtitles in another, and an I-frame playlist per
/// variant (fMP4 only).
pub(crate) fn multivariant(m: &AssetManifest, view: &View) -> Result<String, Error> {
    multivariant_protected(m, view, None)
}

/// The multivariant playlist of a protected title: fMP4 children under
/// `{scheme}/` with an `EXT-X-SESSION-KEY` per key, or TS children (whose
/// playlists carry AES-128 keys). I-frame playlists are left out: their
/// byte ranges point into clear segments.
pub(crate) fn multivariant_protected(
    m: &AssetManifest,
    view: &View,
    drm: Option<&Drm>,
) -> Result<String, Error> {
    let audios = view.audios(m);
    let subs = view.subtitles(m);
    let audio_peak = audios.iter().map(|a| a.bandwidth).max().unwrap_or(0);
    let audio_avg = audios
        .iter()
        .map(|a| a.average_bandwidth)
        .max()
        .unwrap_or(0);
    let videos = view.videos(m, audio_peak);
    if videos.is_empty() {
        return Err(Error::EmptyView("video rendition"));
    }
    if view.segments(m).is_empty() {
        return Err(Error::EmptyView("segment in the clip"));
    }
    let ts = view.format == Format::Ts;
    let q = view.child_query();
    // Children live under `ts/` for TS.
    let dir = match (ts, drm) {
        (true, _) => "ts/",
        (false, Some(_)) => "cbcs/",
        (false, None) => "",
    };
    let iframes = !ts && drm.is_none() && videos.iter().any(|v| has_key_lengths(v));
    let mut version = if ts { TS_VERSION } else { FMP4_VERSION };
    if !subs.is_empty() {
        version = version.max(SUBTITLE_VERSION);
    }
    if iframes {
        version = version.max(IFRAME_VERSION);
    }

    let mut out = format!("#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    if let (Some(drm), false) = (drm, ts) {
        let mut kids: Vec<&[u8; 16]> = Vec::new();
        for t in videos.iter().chain(audios.iter()) {
            if let Some(k) = drm.keys.get(&t.id) {
                if !kids.contains(&&k.kid) {
                    kids.push(&k.kid);
                }
            }
        }
        for kid in kids {
            out.push_str(&drm.hls_keys(kid, true));
        }
    }
    for (i, a) in audios.iter().enumerate() {
        let default = if i == 0 { "YES" } else { "NO" };
        let _ = write!(
            out,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"{name}\",LANGUAGE=\"{lang}\",DEFAULT={default},AUTOSELECT=YES,CHANNELS=\"{ch}\"",
            name = rendition_name(&audios, i, "Audio"),
            lang = a.language,
            ch = a.channels.max(1),
        );
        // TS variants carry the default audio muxed in; the others are
        // audio-only TS renditions.
        if !(ts && i == 0) {
            let _ = write!(out, ",URI=\"{dir}{}.m3u8{q}\"", a.id);
        }
        out.push('\n');
    }
    for (i, s) in subs.iter().enumerate() {
        let _ = writeln!(
            out,
            "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"{name}\",LANGUAGE=\"{lang}\",DEFAULT=NO,AUTOSELECT=YES,FORCED=NO,URI=\"{dir}{id}.m3u8{q}\"",
            name = rendition_name(&subs, i, "Subtitles"),
            lang = s.language,
            id = s.id,
        );
    }
    let audio_codec = audios.first().map(|a| a.codec.as_str());
    for v in &videos {
        let codecs = match audio_codec {
            Some(ac) => format!("{},{}", v.codec, ac),
            None => v.codec.clone(),
        };
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{}\",RESOLUTION={}x{},FRAME-RATE={:.3}",
            v.bandwidth.saturating_add(audio_peak),
            v.average_bandwidth.saturating_add(audio_avg),
            codecs,
            v.width,
            v.height,
            v.frame_rate,
        );
        if !audios.is_empty() {
            out.push_str(",AUDIO=\"aud\"");
        }
        if !subs.is_empty() {
            out.push_str(",SUBTITLES=\"subs\"");
        }
        match (ts, audios.first()) {
            (true, Some(a)) => {
                let _ = writeln!(out, "\nts/{}.{}.m3u8{q}", v.id, a.id);
            }
            _ => {
                let _ = writeln!(out, "\n{dir}{}.m3u8{q}", v.id);
            }
        }
    }
    if iframes {
        for v in videos.iter().filter(|v| has_key_lengths(v)) {
            let _ = writeln!(
                out,
                "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={},CODECS=\"{}\",RESOLUTION={}x{},URI=\"{}.iframes.m3u8{q}\"",
                iframe_bandwidth(v),
                v.codec,
                v.width,
                v.height,
                v.id,
            );
        }
    }
    Ok(out)
}

/// Whether every fragment's keyframe length is known (manifests written
/// before trick play lack them).
pub(crate) fn has_key_lengths(t: &Track) -> bool {
    !t.fragments.is_empty()
        && t.fragments
            .iter()
            .all(|f| f.key_length > 0 && f.key_length <= f.range.length)
}

/// Peak bits per second of an I-frame playlist (or a DASH trick-mode
/// representation): the largest keyframe over its segment's duration.
pub(crate) fn iframe_bandwidth(t: &Track) -> u64 {
    let ts = f64::from(t.timescale.max(1));
    t.fragments
        .iter()
        .map(|f| f.key_length as f64 * 8.0 / (f.duration as f64 / ts))
        .fold(0.0, f64::max)
        .ceil() as u64
}

/// `#EXTM3U` through `#EXT-X-INDEPENDENT-SEGMENTS` of a VOD media playlist.
fn media_header(out: &mut String, version: u32, target: u64, first: u64) {
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
}

/// The fragments of `t` in `range` (segment numbers from 1), with their numbers.
fn clipped(t: &Track, range: Range<u64>) -> impl Iterator<Item = (u64, &crate::Fragment)> {
    t.fragments
        .iter()
        .zip(1u64..)
        .filter(move |(_, n)| range.contains(n))
        .map(|(f, n)| (n, f))
}

/// `EXT-X-TARGETDURATION`: every segment's duration, rounded to the
/// nearest second, is at most this.
fn target_duration(t: &Track, range: Range<u64>) -> u64 {
    let ts = f64::from(t.timescale.max(1));
    clipped(t, range)
        .map(|(_, f)| (f.duration as f64 / ts).round() as u64)
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The fMP4 media playlist of one video or audio track: each fragment in
/// `range` is one segment.
pub(crate) fn media_playlist(track: &Track, range: Range<u64>, keys: &str) -> String {
    let ts = f64::from(track.timescale.max(1));
    let mut out = String::with_capacity(128 + track.fragments.len() * 32);
    media_header(
        &mut out,
        FMP4_VERSION,
        target_duration(track, range.clone()),
        range.start,
    );
    out.push_str(keys);
    let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}/init.mp4\"", track.id);
    for (n, f) in clipped(track, range) {
        let _ = write!(
            out,
            "#EXTINF:{:.5},\n{}/{n}.m4s\n",
            f.duration as f64 / ts,
            track.id
        );
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// The I-frame playlist of a video track: each segment's keyframe, as a
/// byte range of the segment (its `moof`, the `mdat` header and the frame),
/// lasting until the next one.
pub(crate) fn iframe_playlist(track: &Track, range: Range<u64>) -> String {
    let ts = f64::from(track.timescale.max(1));
    let mut out = String::with_capacity(160 + track.fragments.len() * 56);
    media_header(
        &mut out,
        IFRAME_VERSION,
        target_duration(track, range.clone()),
        range.start,
    );
    let _ = writeln!(
        out,
        "#EXT-X-I-FRAMES-ONLY\n#EXT-X-MAP:URI=\"{}/init.mp4\"",
        track.id
    );
    for (n, f) in clipped(track, range) {
        let _ = write!(
            out,
            "#EXTINF:{:.5},\n#EXT-X-BYTERANGE:{}@0\n{}/{n}.m4s\n",
            f.duration as f64 / ts,
            f.key_length,
            track.id
        );
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// The media playlist of a TS variant (`ids` is `v0.a0`, `v0` or `a1`),
/// timed by `timing` (the video track, or the audio track of an
/// audio-only rendition). It lives at `ts/{ids}.m3u8`, so its segment URIs
/// are relative to `ts/`.
pub(crate) fn ts_playlist(
    ids: &str,
    timing: &Track,
    range: Range<u64>,
    key: Option<(&str, u64)>,
) -> String {
    let ts = f64::from(timing.timescale.max(1));
    let mut out = String::with_capacity(128 + timing.fragments.len() * 32);
    media_header(
        &mut out,
        TS_VERSION,
        target_duration(timing, range.clone()),
        range.start,
    );
    for (n, f) in clipped(timing, range) {
        // AES-128 from the first segment after the clear lead on.
        if let Some((line, clear)) = key {
            if n == clear + 1 || (n > clear && out.ends_with("INDEPENDENT-SEGMENTS\n")) {
                out.push_str(line);
            }
        }
        let _ = write!(
            out,
            "#EXTINF:{:.5},\n{ids}/{n}.ts\n",
            f.duration as f64 / ts
        );
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// The media playlist of a subtitle track: one WebVTT segment per video
/// segment. For TS it lives at `ts/{id}.m3u8`, and its segments carry the
/// TS timeline's timestamp map.
pub(crate) fn subtitle_playlist(m: &AssetManifest, sub: &Track, range: Range<u64>) -> String {
    debug_assert_eq!(sub.kind, TrackKind::Subtitle);
    let Some(timing) = m.timeline() else {
        return String::from("#EXTM3U\n#EXT-X-ENDLIST\n");
    };
    let ts = f64::from(timing.timescale.max(1));
    let mut out = String::with_capacity(128 + timing.fragments.len() * 32);
    media_header(
        &mut out,
        SUBTITLE_VERSION,
        target_duration(timing, range.clone()),
        range.start,
    );
    for (n, f) in clipped(timing, range) {
        let _ = write!(
            out,
            "#EXTINF:{:.5},\n{}/{n}.vtt\n",
            f.duration as f64 / ts,
            sub.id
        );
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// The NAME of rendition `i` of `group`: its language, with a number when
/// the language comes more than once (NAMEs must differ within a group),
/// or "Audio 2" when unknown.
fn rendition_name(group: &[&Track], i: usize, what: &str) -> String {
    let lang = &group[i].language;
    if lang == "und" {
        return format!("{what} {}", i + 1);
    }
    let same = group.iter().filter(|t| &t.language == lang).count();
    if same == 1 {
        return lang.clone();
    }
    let nth = group[..i].iter().filter(|t| &t.language == lang).count() + 1;
    format!("{lang} {nth}")
}
