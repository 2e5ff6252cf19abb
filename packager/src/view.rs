//! What a manifest request asks to see: manifest filters (height, bitrate,
//! codecs, languages), a clip of whole segments, and the segment format,
//! from the query string or a named device profile.
//!
//! Filters narrow; they never widen. A profile (`?profile=mobile`) gives a
//! starting filter, and parameters given beside it can only narrow it
//! further (the smaller cap wins; lists intersect), except `format`, which a
//! client may choose. Every view has one canonical query string, so the edge
//! caches a filtered manifest once per distinct filter, however the client
//! spelled it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::manifest::{is_safe_lang, AssetManifest, Track};

/// The segment format of an HLS presentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// CMAF fragments (`.m4s`), the default.
    #[default]
    Fmp4,
    /// MPEG-2 transport stream (`.ts`), audio and video in one segment, for
    /// old set-top boxes and TVs. H.264 renditions only.
    Ts,
}

/// A named device profile, as configured (`[profiles.NAME]` in the edge's
/// TOML): a filter and a format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Tallest video rendition listed, in pixels.
    pub max_height: Option<u32>,
    /// Highest variant bandwidth listed (video peak plus audio peak), bit/s.
    pub max_bitrate: Option<u64>,
    /// Video codec families listed: `avc`, `hevc`, `av1`.
    pub codecs: Option<Vec<String>>,
    /// Audio languages listed.
    pub audio: Option<Vec<String>>,
    /// Subtitle languages listed.
    pub subtitles: Option<Vec<String>>,
    /// HLS segment format.
    pub format: Option<Format>,
}

/// The profiles every edge knows unless its configuration replaces them.
pub fn default_profiles() -> BTreeMap<String, Profile> {
    let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    BTreeMap::from([
        (
            // Browsers: MSE plays H.264 and AV1 everywhere; HEVC only on some.
            "web".to_string(),
            Profile {
                codecs: list(&["avc", "av1"]),
                ..Profile::default()
            },
        ),
        (
            // Phones on cellular: no more than 720p or 3 Mbit/s.
            "mobile".to_string(),
            Profile {
                max_height: Some(720),
                max_bitrate: Some(3_000_000),
                codecs: list(&["avc", "hevc"]),
                ..Profile::default()
            },
        ),
        (
            // Smart TVs decode every codec we make.
            "tv".to_string(),
            Profile {
                codecs: list(&["avc", "hevc", "av1"]),
                ..Profile::default()
            },
        ),
        (
            // Old set-top boxes and sticks: TS segments, H.264, up to 1080p.
            "legacy-ts".to_string(),
            Profile {
                max_height: Some(1080),
                codecs: list(&["avc"]),
                format: Some(Format::Ts),
                ..Profile::default()
            },
        ),
    ])
}

/// Video codec families a filter may name.
pub const CODEC_FAMILIES: [&str; 3] = ["avc", "hevc", "av1"];

/// Longest clip bound accepted, in seconds (a bit over 115 days).
const MAX_CLIP_SECS: f64 = 1e7;

/// What one manifest request shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// See [`Profile::max_height`].
    pub max_height: Option<u32>,
    /// See [`Profile::max_bitrate`].
    pub max_bitrate: Option<u64>,
    /// See [`Profile::codecs`]; sorted, deduplicated.
    pub codecs: Option<Vec<String>>,
    /// See [`Profile::audio`]; sorted, deduplicated, lower case.
    pub audio: Option<Vec<String>>,
    /// See [`Profile::subtitles`]; sorted, deduplicated, lower case.
    pub subtitles: Option<Vec<String>>,
    /// Clip start, in milliseconds of presentation time.
    pub start_ms: Option<u64>,
    /// Clip end, in milliseconds of presentation time.
    pub end_ms: Option<u64>,
    /// HLS segment format.
    pub format: Format,
}

/// Why a query could not be read; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ViewError(pub String);

fn bad(msg: impl Into<String>) -> ViewError {
    ViewError(msg.into())
}

impl View {
    /// Reads a view from a request's query string. Parameters other than the
    /// filter's own (the viewer's token, cache busters) are ignored.
    pub fn from_query(
        query: &str,
        profiles: &BTreeMap<String, Profile>,
    ) -> Result<View, ViewError> {
        if query.len() > 4096 {
            return Err(bad("the query is too long"));
        }
        let mut seen: Vec<String> = Vec::new();
        let mut profile = None;
        let mut given = Profile::default();
        let mut start = None;
        let mut end = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let key = key.as_ref();
            if !matches!(
                key,
                "profile"
                    | "max_height"
                    | "max_bitrate"
                    | "codecs"
                    | "audio"
                    | "subtitles"
                    | "start"
                    | "end"
                    | "format"
            ) {
                continue;
            }
            if seen.iter().any(|k| k == key) {
                return Err(bad(format!("`{key}` is given more than once")));
            }
            seen.push(key.to_string());
            let value = value.as_ref();
            match key {
                "profile" => {
                    profile =
                        Some(profiles.get(value).ok_or_else(|| {
                            bad(format!("no device profile `{}`", printable(value)))
                        })?);
                }
                "max_height" => {
                    given.max_height = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|h| (1..=16_384).contains(h))
                            .ok_or_else(|| {
                                bad("`max_height` must be a whole number of pixels, 1 to 16384")
                            })?,
                    );
                }
                "max_bitrate" => {
                    given.max_bitrate = Some(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|b| (1..=1u64 << 40).contains(b))
                            .ok_or_else(|| {
                                bad("`max_bitrate` must be a whole number of bits per second")
                            })?,
                    );
                }
                "codecs" => {
                    let list = split_list(value);
                    if let Some(c) = list.iter().find(|c| !CODEC_FAMILIES.contains(&c.as_str())) {
                        return Err(bad(format!(
                            "unknown codec `{}`: use avc, hevc or av1",
                            printable(c)
                        )));
                    }
                    given.codecs = Some(list);
                }
                "audio" | "subtitles" => {
                    let list = split_list(value);
                    if let Some(l) = list.iter().find(|l| !is_safe_lang(l)) {
                        return Err(bad(format!("`{}` is not a language tag", printable(l))));
                    }
                    if key == "audio" {
                        given.audio = Some(list);
                    } else {
                        given.subtitles = Some(list);
                    }
                }
                "start" => start = Some(parse_secs(key, value)?),
                "end" => end = Some(parse_secs(key, value)?),
                "format" => {
                    given.format = Some(match value {
                        "ts" => Format::Ts,
                        "fmp4" | "cmaf" => Format::Fmp4,
                        _ => return Err(bad("`format` must be ts or fmp4")),
                    });
                }
                _ => {}
            }
        }
        if let (Some(s), Some(e)) = (start, end) {
            if e <= s {
                return Err(bad("`end` must be after `start`"));
            }
        }
        let base = profile.cloned().unwrap_or_default();
        let mut view = View {
            max_height: narrower(base.max_height, given.max_height),
            max_bitrate: narrower(base.max_bitrate, given.max_bitrate),
            codecs: intersect(base.codecs, given.codecs),
            audio: intersect(base.audio, given.audio),
            subtitles: intersect(base.subtitles, given.subtitles),
            start_ms: start,
            end_ms: end,
            format: given.format.or(base.format).unwrap_or_default(),
        };
        view.normalize();
        Ok(view)
    }

    fn normalize(&mut self) {
        for list in [&mut self.codecs, &mut self.audio, &mut self.subtitles]
            .into_iter()
            .flatten()
        {
            for item in list.iter_mut() {
                item.make_ascii_lowercase();
            }
            list.sort();
            list.dedup();
        }
        if self.start_ms == Some(0) {
            self.start_ms = None;
        }
    }

    /// The canonical query string of this view (empty for the default):
    /// keys in order, lists sorted. Two requests that show the same thing
    /// have the same canonical query, so it keys the cache.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        let mut add = |k: &str, v: String| {
            if !out.is_empty() {
                out.push('&');
            }
            let _ = write!(out, "{k}={v}");
        };
        if let Some(a) = &self.audio {
            add("audio", a.join(","));
        }
        if let Some(c) = &self.codecs {
            add("codecs", c.join(","));
        }
        if let Some(e) = self.end_ms {
            add("end", secs(e));
        }
        if self.format == Format::Ts {
            add("format", "ts".into());
        }
        if let Some(b) = self.max_bitrate {
            add("max_bitrate", b.to_string());
        }
        if let Some(h) = self.max_height {
            add("max_height", h.to_string());
        }
        if let Some(s) = self.start_ms {
            add("start", secs(s));
        }
        if let Some(s) = &self.subtitles {
            add("subtitles", s.join(","));
        }
        out
    }

    /// The part of the view a media playlist depends on: the clip only.
    pub fn clip_only(&self) -> View {
        View {
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            ..View::default()
        }
    }

    /// `?start=…&end=…` for the child playlists of a clipped manifest, or
    /// the empty string.
    pub(crate) fn child_query(&self) -> String {
        let q = self.clip_only().canonical();
        if q.is_empty() {
            q
        } else {
            format!("?{q}")
        }
    }

    /// Whether the view is a clip.
    pub fn is_clip(&self) -> bool {
        self.start_ms.is_some() || self.end_ms.is_some()
    }

    /// Video renditions the view lists, highest first. `audio_peak` is the
    /// peak bitrate of the audio that plays beside them.
    pub fn videos<'m>(&self, m: &'m AssetManifest, audio_peak: u64) -> Vec<&'m Track> {
        m.videos()
            .filter(|v| {
                let family = v.codec_family();
                (self.format == Format::Fmp4 || family == "avc")
                    && self
                        .codecs
                        .as_ref()
                        .is_none_or(|c| c.iter().any(|c| c == family))
                    && self.max_height.is_none_or(|h| v.height <= h)
                    && self
                        .max_bitrate
                        .is_none_or(|b| v.bandwidth.saturating_add(audio_peak) <= b)
            })
            .collect()
    }

    /// Audio tracks the view lists, in manifest order.
    pub fn audios<'m>(&self, m: &'m AssetManifest) -> Vec<&'m Track> {
        m.audios()
            .filter(|a| lang_matches(self.audio.as_deref(), &a.language))
            .collect()
    }

    /// Subtitle tracks the view lists, in manifest order.
    pub fn subtitles<'m>(&self, m: &'m AssetManifest) -> Vec<&'m Track> {
        m.subtitles()
            .filter(|s| lang_matches(self.subtitles.as_deref(), &s.language))
            .collect()
    }

    /// The same view with its numbers snapped to what `m` makes of them:
    /// `max_height` and `max_bitrate` to the largest value a rendition
    /// reaches under them (dropped when every rendition passes), a clip's
    /// `start` and `end` to the boundaries of the segments it lists
    /// (dropped at the title's ends). Two views that list the same things
    /// then have one canonical query, so values chosen by a caller
    /// (`max_bitrate=9000001`, `9000002`, …) cannot make endless cache
    /// keys. A view that lists nothing is left as it is (its answer is an
    /// error, never stored).
    pub fn settle(&self, m: &AssetManifest) -> View {
        let mut v = self.clone();
        let eligible: Vec<&Track> = m
            .videos()
            .filter(|t| {
                let family = t.codec_family();
                (v.format == Format::Fmp4 || family == "avc")
                    && v.codecs
                        .as_ref()
                        .is_none_or(|c| c.iter().any(|c| c == family))
            })
            .collect();
        if let Some(h) = v.max_height {
            v.max_height = snap(eligible.iter().map(|t| u64::from(t.height)), u64::from(h))
                .map(|h| u32::try_from(h).unwrap_or(u32::MAX));
        }
        if let Some(b) = v.max_bitrate {
            let audio_peak = v.audios(m).iter().map(|a| a.bandwidth).max().unwrap_or(0);
            v.max_bitrate = snap(
                eligible
                    .iter()
                    .map(|t| t.bandwidth.saturating_add(audio_peak)),
                b,
            );
        }
        if v.is_clip() {
            if let Some(t) = m.timeline() {
                let r = v.segments(m);
                let n = t.fragments.len() as u64;
                if !r.is_empty() {
                    let first = t.fragments.first().map_or(0, |f| f.start);
                    let ts = u128::from(t.timescale.max(1));
                    // In milliseconds, rounded so that the snapped bounds
                    // select exactly the same segments: a start rounded up
                    // never reaches into the segment before, an end rounded
                    // down never into the one after.
                    let at = |units: u64, up: bool| -> u64 {
                        let num = u128::from(units) * 1000;
                        let ms = if up { num.div_ceil(ts) } else { num / ts };
                        u64::try_from(ms).unwrap_or(u64::MAX)
                    };
                    let idx = |i: u64| usize::try_from(i - 1).unwrap_or(usize::MAX);
                    v.start_ms = (r.start > 1)
                        .then(|| t.fragments.get(idx(r.start)))
                        .flatten()
                        .map(|f| at(f.start.saturating_sub(first), true));
                    let end_of_last = t.fragments.get(idx(r.end - 1)).map(|f| {
                        at(
                            f.start.saturating_sub(first).saturating_add(f.duration),
                            false,
                        )
                    });
                    v.end_ms = (r.end - 1 < n).then_some(end_of_last).flatten();
                    // A clip of the whole title is still a clip (a clipped
                    // MPD leaves out side-loaded subtitles): keep its end.
                    if v.start_ms.is_none() && v.end_ms.is_none() {
                        v.end_ms = end_of_last;
                    }
                }
            }
        }
        v
    }

    /// The segment numbers (from 1) in the clip: every segment of the
    /// title's timeline that overlaps `[start, end)`. The same numbers
    /// apply to every track, as their segment boundaries are shared.
    pub fn segments(&self, m: &AssetManifest) -> Range<u64> {
        let Some(t) = m.timeline() else {
            return 1..1;
        };
        let n = t.fragments.len() as u64;
        if !self.is_clip() {
            return 1..n + 1;
        }
        let first = t.fragments.first().map_or(0, |f| f.start);
        let ts = f64::from(t.timescale.max(1));
        let from = self.start_ms.map_or(0.0, |s| s as f64 / 1000.0);
        let to = self.end_ms.map_or(f64::INFINITY, |e| e as f64 / 1000.0);
        let mut lo = None;
        let mut hi = 0;
        for (f, i) in t.fragments.iter().zip(1u64..) {
            let s = f.start.saturating_sub(first) as f64 / ts;
            let e = s + f.duration as f64 / ts;
            if e > from && s < to {
                lo.get_or_insert(i);
                hi = i;
            }
        }
        match lo {
            Some(lo) => lo..hi + 1,
            None => 1..1,
        }
    }
}

/// `en` matches `en` and `en-GB`; no filter matches everything.
fn lang_matches(filter: Option<&[String]>, lang: &str) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    let lang = lang.to_ascii_lowercase();
    filter.iter().any(|f| {
        lang == *f
            || lang
                .strip_prefix(f.as_str())
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn narrower<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn intersect(a: Option<Vec<String>>, b: Option<Vec<String>>) -> Option<Vec<String>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(
            b.into_iter()
                .filter(|x| a.iter().any(|y| y.eq_ignore_ascii_case(x)))
                .collect(),
        ),
        (a, b) => a.or(b),
    }
}

fn parse_secs(key: &str, value: &str) -> Result<u64, ViewError> {
    let secs: f64 = value
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && (0.0..=MAX_CLIP_SECS).contains(s))
        .ok_or_else(|| bad(format!("`{key}` must be a number of seconds")))?;
    Ok((secs * 1000.0).round() as u64)
}

/// Milliseconds as seconds, no trailing zeros: 10500 is `10.5`.
/// A ceiling `limit` on `values`, snapped: the largest value at or under
/// it, `None` when every value is under it (no filter), or the limit
/// itself when none is (an empty view).
fn snap(values: impl Iterator<Item = u64> + Clone, limit: u64) -> Option<u64> {
    let all = values.clone().max()?;
    if limit >= all {
        return None;
    }
    Some(values.filter(|v| *v <= limit).max().unwrap_or(limit))
}

fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        return (ms / 1000).to_string();
    }
    let s = format!("{}.{:03}", ms / 1000, ms % 1000);
    s.trim_end_matches('0').to_string()
}

/// A value quoted back in an error: short and printable.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(32)
        .collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(q: &str) -> Result<View, ViewError> {
        View::from_query(q, &default_profiles())
    }

    #[test]
    fn canonical_ignores_spelling_and_foreign_parameters() {
        let a = view("max_height=720&codecs=hevc,avc&__token__=abc&audio=EN").unwrap();
        let b = view("audio=en&codecs=avc%2Chevc&max_height=720").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), "audio=en&codecs=avc,hevc&max_height=720");
        assert_eq!(view("").unwrap().canonical(), "");
        assert_eq!(view("t=1").unwrap(), View::default());
        assert_eq!(
            view("start=10.50&end=20").unwrap().canonical(),
            "end=20&start=10.5"
        );
    }

    #[test]
    fn profiles_narrow_and_never_widen() {
        let v = view("profile=mobile").unwrap();
        assert_eq!(v.max_height, Some(720));
        assert_eq!(
            v.canonical(),
            view("max_height=720&max_bitrate=3000000&codecs=avc,hevc")
                .unwrap()
                .canonical()
        );
        // A wider cap beside the profile does not lift it; a narrower one applies.
        assert_eq!(
            view("profile=mobile&max_height=1080").unwrap().max_height,
            Some(720)
        );
        assert_eq!(
            view("profile=mobile&max_height=360").unwrap().max_height,
            Some(360)
        );
        // Codecs intersect: av1 is not in the mobile profile.
        assert_eq!(
            view("profile=mobile&codecs=av1,avc").unwrap().codecs,
            Some(vec!["avc".to_string()])
        );
        assert_eq!(view("profile=legacy-ts").unwrap().format, Format::Ts);
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        for (q, why) in [
            ("profile=fridge", "no device profile"),
            ("max_height=0", "max_height"),
            ("max_height=abc", "max_height"),
            ("max_bitrate=-5", "max_bitrate"),
            ("codecs=vp9", "unknown codec"),
            ("audio=e%00n", "language"),
            ("start=-1", "start"),
            ("start=NaN", "start"),
            ("start=5&end=5", "after"),
            ("format=flv", "format"),
            ("max_height=1&max_height=2", "more than once"),
        ] {
            let e = view(q).expect_err(q);
            assert!(e.0.contains(why), "{q}: {e}");
        }
    }

    #[test]
    fn language_prefixes() {
        let f = vec!["en".to_string()];
        assert!(lang_matches(Some(&f), "en"));
        assert!(lang_matches(Some(&f), "en-GB"));
        assert!(!lang_matches(Some(&f), "eng"));
        assert!(lang_matches(None, "hi"));
    }
}
