//! Server-side ad insertion: a title's media playlists and MPD with ad
//! breaks stitched in, for one viewer's session.
//!
//! A pure transform like the rest of the packager: the title's manifest,
//! each ad's manifest (a creative conditioned into mezzanine like any
//! title) and where the breaks go in; text out. Ads are addressed under the
//! title (`ad/{break}.{n}/{creative}/…`) so the viewer's token covers them,
//! while the edge caches their segments once under the creative's own
//! path for every title and viewer.
//!
//! - HLS (fMP4 and TS): `EXT-X-DISCONTINUITY` around each ad, an
//!   `EXT-X-MAP` per run, `EXT-X-PROGRAM-DATE-TIME` on a fixed clock
//!   (2000-01-01 plus stitched time, the same in every playlist of the
//!   session; not the Unix epoch itself, which hls.js reads as no date), `EXT-X-DATERANGE` with `SCTE35-OUT`/`SCTE35-IN`, and
//!   `EXT-X-CUE-OUT`/`EXT-X-CUE-IN`. Subtitle playlists get the same
//!   discontinuities, with the ads' time as `EXT-X-GAP` segments.
//! - DASH: a Period per content run and per ad; the first ad period of a
//!   break carries an `EventStream` (`urn:scte:scte35:2013:xml`).
//!
//! Every playlist of a session must have the same runs, or players that
//! switch renditions lose their place: an ad is used only when it has a
//! rendition for every video codec family and the audio the title shows;
//! otherwise it is left out of every playlist alike.

use std::fmt::Write;
use std::ops::Range;

use cascade_ads::scte35::SpliceInfo;

use crate::dash::{self, PeriodOpts};
use crate::manifest::{AssetManifest, Track, TrackKind};
use crate::view::{Format, View};
use crate::{Error, Output};

/// The stitched timeline's clock starts here: 2000-01-01T00:00:00Z, in
/// Unix milliseconds.
const CLOCK_ORIGIN_MS: u64 = 946_684_800_000;

/// One ad of a break, as the stitcher sees it.
#[derive(Debug, Clone)]
pub struct StitchAd<'a> {
    /// The creative's asset id (its conditioned mezzanine).
    pub creative: &'a str,
    /// Its manifest.
    pub manifest: &'a AssetManifest,
}

/// One break: where it goes and its ads in play order.
#[derive(Debug, Clone)]
pub struct StitchBreak<'a> {
    /// Its number in the session's plan (in URLs and `DATERANGE` ids).
    pub id: u32,
    /// Where it goes, in milliseconds of the title (snapped to the nearest
    /// segment boundary; at or past the end: a post-roll).
    pub at_ms: u64,
    /// The ads, in order.
    pub ads: Vec<StitchAd<'a>>,
}

/// The outputs that a session's ads change.
pub fn is_stitched(output: &Output) -> bool {
    matches!(
        output,
        Output::MediaPlaylist(_) | Output::TsPlaylist(_) | Output::Mpd
    )
}

/// `output` of title `m` as `view` shows it, with `breaks` stitched in;
/// `query` (the viewer's `__token__=…`, or empty) goes after every child
/// URL, as [`crate::with_query`] would put it, in the same pass. Outputs
/// ads do not change are [`Error::Unsupported`].
pub fn stitch(
    m: &AssetManifest,
    output: &Output,
    view: &View,
    breaks: &[StitchBreak<'_>],
    query: &str,
) -> Result<Vec<u8>, Error> {
    let range = view.segments(m);
    if range.is_empty() {
        return Err(Error::EmptyView("segment in the clip"));
    }
    let pieces = plan(m, view, range, breaks);
    let track = |t: &str| m.track(t).ok_or(Error::NotFound);
    let text = match output {
        Output::MediaPlaylist(t) => {
            let t = track(t)?;
            hls(m, &pieces, &Lane::of(t, Format::Fmp4), query)
        }
        Output::TsPlaylist(ids) => {
            let mut video = None;
            let mut audio = None;
            let mut sub = None;
            for id in ids.split('.') {
                let t = track(id)?;
                match t.kind {
                    TrackKind::Video => video = Some(t),
                    TrackKind::Audio => audio = Some(t),
                    TrackKind::Subtitle => sub = Some(t),
                }
            }
            let lane = match (video, audio, sub) {
                (_, _, Some(s)) => Lane::of(s, Format::Ts),
                (Some(v), a, None) => Lane::Ts {
                    video: Some(v),
                    audio: a,
                },
                (None, Some(a), None) => Lane::Ts {
                    video: None,
                    audio: Some(a),
                },
                (None, None, None) => return Err(Error::NotFound),
            };
            hls(m, &pieces, &lane, query)
        }
        Output::Mpd => mpd(m, view, &pieces, query)?,
        _ => return Err(Error::Unsupported("ads change playlists and MPDs only")),
    };
    Ok(text.into_bytes())
}

/// A run of the stitched timeline.
enum Piece<'a> {
    /// Title segments.
    Content(Range<u64>),
    /// One whole ad.
    Ad {
        brk: &'a StitchBreak<'a>,
        /// Its index in the break.
        n: usize,
        ad: &'a StitchAd<'a>,
        /// Seconds of the whole break (every usable ad of it).
        break_secs: f64,
    },
}

/// The title's segment runs with the usable ads of each break between them.
fn plan<'a>(
    m: &AssetManifest,
    view: &View,
    range: Range<u64>,
    breaks: &'a [StitchBreak<'a>],
) -> Vec<Piece<'a>> {
    let Some(timeline) = m.timeline() else {
        return vec![Piece::Content(range)];
    };
    let ts = f64::from(timeline.timescale.max(1));
    let first = timeline.fragments.first().map_or(0, |f| f.start);
    // Title time (ms) at each boundary `k`: before segment `k`, or after
    // the last one for `range.end`.
    let boundary_ms = |k: u64| -> u64 {
        let ticks = match timeline.segment(k) {
            Some(f) => f.start.saturating_sub(first),
            None => timeline
                .fragments
                .iter()
                .fold(0u64, |a, f| a.saturating_add(f.duration)),
        };
        (ticks as f64 / ts * 1000.0) as u64
    };
    let mut at: Vec<(u64, &StitchBreak<'a>)> = Vec::new();
    for b in breaks {
        if !b.ads.iter().any(|a| usable(a.manifest, m, view)) {
            continue;
        }
        let k = (range.start..=range.end)
            .min_by_key(|&k| boundary_ms(k).abs_diff(b.at_ms))
            .unwrap_or(range.end);
        at.push((k, b));
    }
    // Stable: breaks at one boundary play in the order given.
    at.sort_by_key(|(k, _)| *k);
    let mut pieces = Vec::new();
    let mut next = range.start;
    for (k, b) in at {
        if k > next {
            pieces.push(Piece::Content(next..k));
            next = k;
        }
        let ads: Vec<(usize, &StitchAd<'a>)> = b
            .ads
            .iter()
            .enumerate()
            .filter(|(_, a)| usable(a.manifest, m, view))
            .collect();
        let break_secs = ads.iter().map(|(_, a)| timing_secs(a.manifest)).sum();
        for (n, ad) in ads {
            pieces.push(Piece::Ad {
                brk: b,
                n,
                ad,
                break_secs,
            });
        }
    }
    if next < range.end {
        pieces.push(Piece::Content(next..range.end));
    }
    pieces
}

/// Whether an ad can go into every playlist of `m` as `view` shows it.
fn usable(ad: &AssetManifest, m: &AssetManifest, view: &View) -> bool {
    let Some(timeline) = ad.timeline() else {
        return false;
    };
    if timeline.fragments.is_empty() {
        return false;
    }
    let audio_peak = view
        .audios(m)
        .iter()
        .map(|a| a.bandwidth)
        .max()
        .unwrap_or(0);
    let families_ok = view
        .videos(m, audio_peak)
        .iter()
        .all(|v| ad.videos().any(|a| a.codec_family() == v.codec_family()));
    let audio_ok = m.audios().next().is_none() || ad.audios().next().is_some();
    families_ok && audio_ok
}

/// Seconds of an ad's timeline.
fn timing_secs(ad: &AssetManifest) -> f64 {
    ad.timeline().map_or(0.0, Track::duration)
}

/// The ad rendition that stands in for `t`: the same codec family, the
/// nearest height (the taller on a tie).
fn ad_video<'m>(ad: &'m AssetManifest, t: &Track) -> Option<&'m Track> {
    ad.videos()
        .filter(|a| a.codec_family() == t.codec_family())
        .min_by_key(|a| (a.height.abs_diff(t.height), std::cmp::Reverse(a.height)))
}

/// The ad's audio (it is conditioned with one track).
fn ad_audio(ad: &AssetManifest) -> Option<&Track> {
    ad.audios().next()
}

/// What one HLS media playlist lists.
enum Lane<'m> {
    /// An fMP4 video or audio track.
    Fmp4(&'m Track),
    /// A subtitle track, in the fMP4 or TS layout.
    Subtitle(&'m Track, Format),
    /// A TS variant: video with its muxed audio, or audio alone.
    Ts {
        video: Option<&'m Track>,
        audio: Option<&'m Track>,
    },
}

impl<'m> Lane<'m> {
    fn of(t: &'m Track, format: Format) -> Lane<'m> {
        match t.kind {
            TrackKind::Subtitle => Lane::Subtitle(t, format),
            _ => Lane::Fmp4(t),
        }
    }

    /// Directory of the playlist relative to the title (`ts/` for TS).
    fn up(&self) -> &'static str {
        match self {
            Lane::Ts { .. } | Lane::Subtitle(_, Format::Ts) => "../",
            _ => "",
        }
    }
}

/// One run of segments to write: its `EXT-X-MAP`, if any, and its
/// segments as fragments of a timing track, each URI `{dir}{n}{ext}` (or
/// always segment `fixed`, for gaps).
struct Run<'a> {
    map: Option<String>,
    timing: Option<&'a Track>,
    /// Fragment indices (segment `n` is index `n - 1`).
    frags: Range<usize>,
    dir: String,
    ext: &'static str,
    fixed: Option<u64>,
    gap: bool,
}

impl Run<'_> {
    fn empty() -> Run<'static> {
        Run {
            map: None,
            timing: None,
            frags: 0..0,
            dir: String::new(),
            ext: "",
            fixed: None,
            gap: false,
        }
    }

    /// The longest segment, rounded to whole seconds.
    fn longest(&self) -> u64 {
        let Some(t) = self.timing else { return 0 };
        let ts = u64::from(t.timescale.max(1));
        t.fragments
            .get(self.frags.clone())
            .unwrap_or(&[])
            .iter()
            .map(|f| (f.duration + ts / 2) / ts)
            .max()
            .unwrap_or(0)
    }

    fn len(&self) -> usize {
        self.frags.len()
    }

    /// Writes the segment lines. Hand-written number formatting: this
    /// runs for every segment of every personalised playlist request.
    fn write(&self, out: &mut String, query: &str) {
        let Some(t) = self.timing else { return };
        let ts = u64::from(t.timescale.max(1));
        let mut num = itoa::Buffer::new();
        for (i, f) in t
            .fragments
            .get(self.frags.clone())
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if self.gap {
                out.push_str("#EXT-X-GAP\n");
            }
            out.push_str("#EXTINF:");
            push_secs(out, f.duration, ts);
            out.push_str(",\n");
            out.push_str(&self.dir);
            let n = self.fixed.unwrap_or((self.frags.start + i + 1) as u64);
            out.push_str(num.format(n));
            out.push_str(self.ext);
            if !query.is_empty() {
                out.push('?');
                out.push_str(query);
            }
            out.push('\n');
        }
    }
}

/// `ticks / timescale` seconds with five decimals, as `{:.5}` would write
/// it (rounded half up).
fn push_secs(out: &mut String, ticks: u64, timescale: u64) {
    let scaled = (u128::from(ticks) * 100_000 + u128::from(timescale) / 2) / u128::from(timescale);
    let (whole, frac) = ((scaled / 100_000) as u64, (scaled % 100_000) as u64);
    let mut num = itoa::Buffer::new();
    out.push_str(num.format(whole));
    out.push('.');
    let digits = num.format(frac);
    for _ in digits.len()..5 {
        out.push('0');
    }
    out.push_str(digits);
}

/// A stitched HLS media playlist.
fn hls(m: &AssetManifest, pieces: &[Piece<'_>], lane: &Lane<'_>, query: &str) -> String {
    let runs: Vec<Run<'_>> = pieces
        .iter()
        .map(|p| match p {
            Piece::Content(r) => content_run(m, r.clone(), lane),
            Piece::Ad { brk, n, ad, .. } => ad_run(brk.id, *n, ad, lane),
        })
        .collect();
    let target = runs.iter().map(Run::longest).max().unwrap_or(1).max(1);
    let first_seq = match pieces.first() {
        Some(Piece::Content(r)) => r.start,
        _ => 1,
    };
    let version = match lane {
        Lane::Fmp4(_) => 6,
        _ => 3,
    };
    let lines: usize = runs.iter().map(Run::len).sum();
    let mut out = String::with_capacity(512 + lines * (48 + query.len()));
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{first_seq}\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
    // Positions on the session's clock come from the timing tracks, so
    // every playlist of the session puts each run at the same time.
    let mut clock_ms = 0u64;
    let mut open_break: Option<(u32, u64, f64)> = None;
    for (i, (p, run)) in pieces.iter().zip(&runs).enumerate() {
        if i > 0 {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            crate::live::iso_time(CLOCK_ORIGIN_MS + clock_ms)
        );
        match p {
            Piece::Content(r) => {
                if let Some((id, start, secs)) = open_break.take() {
                    cue_in(&mut out, id, start, secs);
                }
                clock_ms += content_ms(m, r.clone());
            }
            Piece::Ad {
                brk,
                ad,
                break_secs,
                ..
            } => {
                let first_of_break = !matches!(open_break, Some((id, ..)) if id == brk.id);
                if first_of_break {
                    if let Some((id, start, secs)) = open_break.take() {
                        cue_in(&mut out, id, start, secs);
                    }
                    cue_out(&mut out, brk.id, clock_ms, *break_secs);
                    open_break = Some((brk.id, clock_ms, *break_secs));
                }
                clock_ms += (timing_secs(ad.manifest) * 1000.0).round() as u64;
            }
        }
        if let Some(map) = &run.map {
            let _ = write!(out, "#EXT-X-MAP:URI=\"{map}");
            if !query.is_empty() {
                out.push('?');
                out.push_str(query);
            }
            out.push_str("\"\n");
        }
        run.write(&mut out, query);
    }
    if let Some((id, start, secs)) = open_break {
        cue_in(&mut out, id, start, secs);
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// Fragment indices of segments `r` (from 1) that `t` has.
fn indices(t: &Track, r: &Range<u64>) -> Range<usize> {
    let n = t.fragments.len();
    let start = usize::try_from(r.start.saturating_sub(1))
        .unwrap_or(n)
        .min(n);
    let end = usize::try_from(r.end.saturating_sub(1)).unwrap_or(n).min(n);
    start..end.max(start)
}

/// The title's segments in `r` for one lane.
fn content_run<'a>(m: &'a AssetManifest, r: Range<u64>, lane: &Lane<'a>) -> Run<'a> {
    match lane {
        Lane::Fmp4(t) => Run {
            map: Some(format!("{}/init.mp4", t.id)),
            timing: Some(t),
            frags: indices(t, &r),
            dir: format!("{}/", t.id),
            ext: ".m4s",
            fixed: None,
            gap: false,
        },
        Lane::Subtitle(s, _) => match m.timeline() {
            Some(timing) => Run {
                map: None,
                timing: Some(timing),
                frags: indices(timing, &r),
                dir: format!("{}/", s.id),
                ext: ".vtt",
                fixed: None,
                gap: false,
            },
            None => Run::empty(),
        },
        Lane::Ts { video, audio } => {
            let ids = ts_ids(*video, *audio);
            match video.or(*audio) {
                Some(timing) => Run {
                    map: None,
                    timing: Some(timing),
                    frags: indices(timing, &r),
                    dir: format!("{ids}/"),
                    ext: ".ts",
                    fixed: None,
                    gap: false,
                },
                None => Run::empty(),
            }
        }
    }
}

/// One ad's segments for one lane.
fn ad_run<'a>(brk: u32, n: usize, ad: &StitchAd<'a>, lane: &Lane<'_>) -> Run<'a> {
    let prefix = format!("{}ad/{brk}.{n}/{}/", lane.up(), ad.creative);
    // An ad's audio may run a few milliseconds past its video in a last,
    // tiny fragment: left out, so every lane of the ad ends together.
    let am: &'a AssetManifest = ad.manifest;
    let count = am.timeline().map_or(0, |t| t.fragments.len());
    let all = |t: &'a Track| 0..t.fragments.len().min(count);
    match lane {
        Lane::Fmp4(t) => {
            let stand_in = match t.kind {
                TrackKind::Video => ad_video(am, t),
                _ => ad_audio(am),
            };
            match stand_in {
                Some(a) => Run {
                    map: Some(format!("{prefix}{}/init.mp4", a.id)),
                    timing: Some(a),
                    frags: all(a),
                    dir: format!("{prefix}{}/", a.id),
                    ext: ".m4s",
                    fixed: None,
                    gap: false,
                },
                None => Run::empty(),
            }
        }
        Lane::Subtitle(s, _) => match am.timeline() {
            // No words during an ad: gaps a player never fetches, timed
            // like the ad's video, pointing at a real segment of the title.
            Some(timing) => Run {
                map: None,
                timing: Some(timing),
                frags: all(timing),
                dir: format!("{}/", s.id),
                ext: ".vtt",
                fixed: Some(1),
                gap: true,
            },
            None => Run::empty(),
        },
        Lane::Ts { video, audio } => {
            let v = video.and_then(|v| ad_video(am, v));
            let a = audio.and_then(|_| ad_audio(am));
            let ids = ts_ids(v, a);
            match v.or(a) {
                Some(timing) => Run {
                    map: None,
                    timing: Some(timing),
                    frags: all(timing),
                    dir: format!("{prefix}ts/{ids}/"),
                    ext: ".ts",
                    fixed: None,
                    gap: false,
                },
                None => Run::empty(),
            }
        }
    }
}

fn ts_ids(video: Option<&Track>, audio: Option<&Track>) -> String {
    match (video, audio) {
        (Some(v), Some(a)) => format!("{}.{}", v.id, a.id),
        (Some(t), None) | (None, Some(t)) => t.id.clone(),
        (None, None) => String::new(),
    }
}

/// Milliseconds of the title's timeline over segments `r`.
fn content_ms(m: &AssetManifest, r: Range<u64>) -> u64 {
    let Some(t) = m.timeline() else {
        return 0;
    };
    let ticks = r
        .filter_map(|n| t.segment(n))
        .fold(0u64, |a, f| a.saturating_add(f.duration));
    (ticks as f64 / f64::from(t.timescale.max(1)) * 1000.0).round() as u64
}

fn cue_out(out: &mut String, id: u32, start_ms: u64, secs: f64) {
    let scte = SpliceInfo::insert(id, true, None, Some((secs * 90_000.0).round() as u64));
    let _ = write!(
        out,
        "#EXT-X-DATERANGE:ID=\"ad-{id}\",CLASS=\"urn:cascade:ad\",START-DATE=\"{}\",PLANNED-DURATION={secs:.3},SCTE35-OUT={}\n#EXT-X-CUE-OUT:DURATION={secs:.3}\n",
        crate::live::iso_time(CLOCK_ORIGIN_MS + start_ms),
        scte.to_hex()
    );
}

fn cue_in(out: &mut String, id: u32, start_ms: u64, secs: f64) {
    let scte = SpliceInfo::insert(id, false, None, None);
    let _ = write!(
        out,
        "#EXT-X-DATERANGE:ID=\"ad-{id}\",CLASS=\"urn:cascade:ad\",START-DATE=\"{}\",DURATION={secs:.3},SCTE35-IN={}\n#EXT-X-CUE-IN\n",
        crate::live::iso_time(CLOCK_ORIGIN_MS + start_ms),
        scte.to_hex()
    );
}

/// A stitched MPD: a Period per run.
fn mpd(m: &AssetManifest, view: &View, pieces: &[Piece<'_>], query: &str) -> Result<String, Error> {
    let query = if query.is_empty() {
        String::new()
    } else {
        format!(
            "?{}",
            query
                .replace('&', "&amp;")
                .replace('"', "&quot;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        )
    };
    let total_ms: u64 = pieces
        .iter()
        .map(|p| match p {
            Piece::Content(r) => content_ms(m, r.clone()),
            Piece::Ad { ad, .. } => (timing_secs(ad.manifest) * 1000.0).round() as u64,
        })
        .sum();
    let mut out = String::with_capacity(4096 * pieces.len().max(1));
    dash::header(
        &mut out,
        total_ms as f64 / 1000.0,
        " xmlns:scte35=\"http://www.scte.org/schemas/35/2016\"",
    );
    // Ads show the viewer's filters (a profile's height cap), not the clip.
    let ad_view = View {
        start_ms: None,
        end_ms: None,
        ..view.clone()
    };
    let mut clock_ms = 0u64;
    let mut seen_break = None;
    for p in pieces {
        let start = clock_ms as f64 / 1000.0;
        match p {
            Piece::Content(r) => {
                let id = format!("c{}", r.start);
                dash::period(
                    &mut out,
                    m,
                    view,
                    r.clone(),
                    &PeriodOpts {
                        drm: None,
                        id: &id,
                        start,
                        prefix: "",
                        trick: true,
                        // Side-loaded files keep the title's times: right
                        // only in a period that starts with the title.
                        subtitles: r.start == 1 && !view.is_clip(),
                        events: "",
                        query: &query,
                        ato: None,
                    },
                )?;
                clock_ms += content_ms(m, r.clone());
            }
            Piece::Ad {
                brk,
                n,
                ad,
                break_secs,
            } => {
                let id = format!("ad-{}-{n}", brk.id);
                let prefix = format!("ad/{}.{n}/{}/", brk.id, ad.creative);
                let events = if seen_break != Some(brk.id) {
                    seen_break = Some(brk.id);
                    event_stream(brk.id, *break_secs)
                } else {
                    String::new()
                };
                let am = ad.manifest;
                let range = 1..am.timeline().map_or(0, |t| t.fragments.len() as u64) + 1;
                dash::period(
                    &mut out,
                    am,
                    &ad_view,
                    range,
                    &PeriodOpts {
                        drm: None,
                        id: &id,
                        start,
                        prefix: &prefix,
                        trick: false,
                        subtitles: false,
                        events: &events,
                        query: &query,
                        ato: None,
                    },
                )?;
                clock_ms += (timing_secs(am) * 1000.0).round() as u64;
            }
        }
    }
    out.push_str("</MPD>\n");
    Ok(out)
}

/// The SCTE-35 `splice_insert` that opens break `id`, as DASH XML.
fn event_stream(id: u32, secs: f64) -> String {
    let d = (secs * 90_000.0).round() as u64;
    format!(
        "    <EventStream schemeIdUri=\"urn:scte:scte35:2013:xml\" timescale=\"90000\">\n      <Event presentationTime=\"0\" duration=\"{d}\" id=\"{id}\">\n        <scte35:SpliceInfoSection protocolVersion=\"0\" ptsAdjustment=\"0\" tier=\"4095\">\n          <scte35:SpliceInsert spliceEventId=\"{id}\" spliceEventCancelIndicator=\"false\" outOfNetworkIndicator=\"true\" uniqueProgramId=\"1\" availNum=\"0\" availsExpected=\"0\" spliceImmediateFlag=\"true\">\n            <scte35:BreakDuration autoReturn=\"true\" duration=\"{d}\"/>\n          </scte35:SpliceInsert>\n        </scte35:SpliceInfoSection>\n      </Event>\n    </EventStream>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ByteRange, Fragment};

    fn track(id: &str, kind: TrackKind, height: u32, n: u64, secs: f64) -> Track {
        let timescale = if kind == TrackKind::Audio {
            48000
        } else {
            12800
        };
        let ticks = (secs * f64::from(timescale)) as u64;
        Track {
            marked: None,
            id: id.into(),
            kind,
            file: format!("{id}.mp4"),
            codec: if kind == TrackKind::Audio {
                "mp4a.40.2".into()
            } else {
                "avc1.640028".into()
            },
            bandwidth: 1000,
            average_bandwidth: 1000,
            width: height * 16 / 9,
            height,
            frame_rate: 25.0,
            sample_rate: 48000,
            channels: 2,
            language: "en".into(),
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
                    start: i * ticks,
                    duration: ticks,
                    key_length: 0,
                })
                .collect(),
        }
    }

    /// A 20-second title of 2-second segments in 720p and 360p with audio.
    fn title() -> AssetManifest {
        AssetManifest::new(
            "t1",
            vec![
                track("v0", TrackKind::Video, 720, 10, 2.0),
                track("v1", TrackKind::Video, 360, 10, 2.0),
                track("a0", TrackKind::Audio, 0, 10, 2.0),
                Track::subtitle("s0", "s0.vtt", "en", 100),
            ],
        )
    }

    /// A 6-second ad conditioned at 1080p, 720p and 480p.
    fn ad() -> AssetManifest {
        AssetManifest::new(
            "ad1",
            vec![
                track("v0", TrackKind::Video, 1080, 3, 2.0),
                track("v1", TrackKind::Video, 720, 3, 2.0),
                track("v2", TrackKind::Video, 480, 3, 2.0),
                track("a0", TrackKind::Audio, 0, 3, 2.0),
            ],
        )
    }

    fn text(m: &AssetManifest, out: Output, breaks: &[StitchBreak<'_>]) -> String {
        String::from_utf8(stitch(m, &out, &View::default(), breaks, "").unwrap()).unwrap()
    }

    #[test]
    fn pre_mid_and_post_rolls_in_an_fmp4_playlist() {
        let (m, a) = (title(), ad());
        let ad = |c| StitchAd {
            creative: c,
            manifest: &a,
        };
        let breaks = [
            StitchBreak {
                id: 0,
                at_ms: 0,
                ads: vec![ad("ad1")],
            },
            // Snaps to the boundary at 10 s.
            StitchBreak {
                id: 1,
                at_ms: 9_400,
                ads: vec![ad("ad1"), ad("ad2")],
            },
            StitchBreak {
                id: 2,
                at_ms: 99_000,
                ads: vec![ad("ad1")],
            },
        ];
        let p = text(&m, Output::MediaPlaylist("v1".into()), &breaks);
        // 360p content gets the ad's 480p rendition, the nearest.
        assert!(
            p.contains("#EXT-X-MAP:URI=\"ad/0.0/ad1/v2/init.mp4\""),
            "{p}"
        );
        assert!(p.contains("ad/1.1/ad2/v2/3.m4s"), "{p}");
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY\n").count(), 5, "{p}");
        assert_eq!(p.matches("#EXT-X-CUE-OUT:DURATION=").count(), 3, "{p}");
        assert_eq!(p.matches("#EXT-X-CUE-IN").count(), 3, "{p}");
        assert_eq!(p.matches("SCTE35-OUT=0xFC").count(), 3, "{p}");
        assert_eq!(p.matches("SCTE35-IN=0xFC").count(), 3, "{p}");
        assert!(p.contains("#EXT-X-CUE-OUT:DURATION=12.000"), "{p}");
        // The mid-roll comes after content segment 5 (10 s), and the clock
        // there is the pre-roll's 6 s plus 10 s of the title.
        let mid = p.find("ad/1.0/").unwrap();
        assert!(p[..mid].contains("v1/5.m4s") && !p[..mid].contains("v1/6.m4s"));
        assert!(p.contains("START-DATE=\"2000-01-01T00:00:16.000Z\""), "{p}");
        assert!(p.ends_with("#EXT-X-CUE-IN\n#EXT-X-ENDLIST\n"), "{p}");
        // Every content segment once.
        for n in 1..=10 {
            assert_eq!(p.matches(&format!("\nv1/{n}.m4s\n")).count(), 1);
        }
    }

    #[test]
    fn every_playlist_of_a_session_has_the_same_runs() {
        let (m, a) = (title(), ad());
        let breaks = [StitchBreak {
            id: 0,
            at_ms: 4_000,
            ads: vec![StitchAd {
                creative: "ad1",
                manifest: &a,
            }],
        }];
        let clocks = |p: &str| {
            p.lines()
                .filter(|l| {
                    l.starts_with("#EXT-X-PROGRAM-DATE-TIME") || *l == "#EXT-X-DISCONTINUITY"
                })
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let video = text(&m, Output::MediaPlaylist("v0".into()), &breaks);
        let audio = text(&m, Output::MediaPlaylist("a0".into()), &breaks);
        let subs = text(&m, Output::MediaPlaylist("s0".into()), &breaks);
        let ts = text(&m, Output::TsPlaylist("v0.a0".into()), &breaks);
        assert_eq!(clocks(&video), clocks(&audio));
        assert_eq!(clocks(&video), clocks(&subs));
        assert_eq!(clocks(&video), clocks(&ts));
        assert!(audio.contains("ad/0.0/ad1/a0/1.m4s"), "{audio}");
        assert_eq!(subs.matches("#EXT-X-GAP").count(), 3, "{subs}");
        assert!(ts.contains("\n../ad/0.0/ad1/ts/v1.a0/3.ts\n"), "{ts}");
        assert!(ts.contains("\nv0.a0/3.ts\n"), "{ts}");
    }

    #[test]
    fn an_ad_missing_a_codec_family_is_left_out_everywhere() {
        let m = title();
        let mut hevc_only = ad();
        for t in &mut hevc_only.tracks {
            if t.kind == TrackKind::Video {
                t.codec = "hvc1.1.6.L93.B0".into();
            }
        }
        let breaks = [StitchBreak {
            id: 0,
            at_ms: 0,
            ads: vec![StitchAd {
                creative: "ad1",
                manifest: &hevc_only,
            }],
        }];
        let p = text(&m, Output::MediaPlaylist("v0".into()), &breaks);
        assert!(!p.contains("ad/") && !p.contains("DISCONTINUITY"), "{p}");
    }

    #[test]
    fn the_mpd_has_a_period_per_run_and_scte35_events() {
        let (m, a) = (title(), ad());
        let breaks = [
            StitchBreak {
                id: 0,
                at_ms: 0,
                ads: vec![StitchAd {
                    creative: "ad1",
                    manifest: &a,
                }],
            },
            StitchBreak {
                id: 1,
                at_ms: 10_000,
                ads: vec![StitchAd {
                    creative: "ad1",
                    manifest: &a,
                }],
            },
        ];
        let mpd = text(&m, Output::Mpd, &breaks);
        assert_eq!(mpd.matches("<Period ").count(), 4, "{mpd}");
        assert!(
            mpd.contains("<Period id=\"ad-0-0\" start=\"PT0S\">"),
            "{mpd}"
        );
        assert!(
            mpd.contains("<Period id=\"c1\" start=\"PT6.000S\">"),
            "{mpd}"
        );
        assert!(
            mpd.contains("<Period id=\"ad-1-0\" start=\"PT16.000S\">"),
            "{mpd}"
        );
        assert!(
            mpd.contains("<Period id=\"c6\" start=\"PT22.000S\">"),
            "{mpd}"
        );
        assert!(
            mpd.contains("mediaPresentationDuration=\"PT32.000S\""),
            "{mpd}"
        );
        assert!(mpd.contains("media=\"ad/1.0/ad1/$RepresentationID$/$Number$.m4s\""));
        assert_eq!(mpd.matches("urn:scte:scte35:2013:xml").count(), 2);
        // The second content period starts at segment 6, offset to its time.
        assert!(mpd.contains("presentationTimeOffset=\"128000\""), "{mpd}");
        // Subtitles only where the title's own times hold.
        assert_eq!(mpd.matches("<BaseURL>s0.vtt</BaseURL>").count(), 1, "{mpd}");
    }

    #[test]
    fn no_breaks_is_the_plain_output() {
        let m = title();
        let p = text(&m, Output::MediaPlaylist("v0".into()), &[]);
        assert!(!p.contains("DISCONTINUITY") && p.contains("v0/10.m4s"));
        assert!(stitch(&m, &Output::Multivariant, &View::default(), &[], "").is_err());
        // The viewer's token goes after every child URL, as the rewrite
        // of shared playlists puts it.
        let a = ad();
        let breaks = [StitchBreak {
            id: 0,
            at_ms: 0,
            ads: vec![StitchAd {
                creative: "ad1",
                manifest: &a,
            }],
        }];
        for out in [Output::MediaPlaylist("v0".into()), Output::Mpd] {
            let bare = stitch(&m, &out, &View::default(), &breaks, "").unwrap();
            let with = stitch(&m, &out, &View::default(), &breaks, "t=1&u=2").unwrap();
            assert_eq!(
                String::from_utf8(with).unwrap(),
                String::from_utf8(crate::with_query(&out, &bare, "t=1&u=2")).unwrap()
            );
        }
    }
}
