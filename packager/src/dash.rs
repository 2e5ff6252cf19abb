//! DASH MPD (ISO/IEC 23009-1), static, with SegmentTemplate and SegmentTimeline.
//!
//! Segment URLs are the same as the HLS ones (`{track}/{n}.m4s`), so an edge
//! caches one copy of each segment for both protocols. Video renditions are
//! grouped by codec family, one AdaptationSet each (players switch within
//! one codec); each group gets a trick-mode AdaptationSet made of its
//! smallest rendition's keyframes. Audio tracks get one AdaptationSet each,
//! with `lang`; subtitles are side-loaded WebVTT files in text AdaptationSets.
//! A static VOD MPD has no `availabilityStartTime`.

use std::fmt::Write;
use std::ops::Range;

use crate::cenc::Scheme;
use crate::drm::Drm;
use crate::hls::{has_key_lengths, iframe_bandwidth};
use crate::manifest::{AssetManifest, Track};
use crate::view::View;
use crate::Error;

/// The MPD for a title as `view` shows it.
pub(crate) fn mpd(m: &AssetManifest, view: &View) -> Result<String, Error> {
    mpd_protected(m, view, None)
}

/// The MPD, protected when `drm` is given: segment URLs under `prefix`
/// (`cbcs/`, `cenc/`, or nothing when the MPD itself is there) and
/// `ContentProtection` in every Representation.
pub(crate) fn mpd_protected(
    m: &AssetManifest,
    view: &View,
    drm: Option<(&Drm, Scheme, &str)>,
) -> Result<String, Error> {
    let audio_peak = view
        .audios(m)
        .iter()
        .map(|a| a.bandwidth)
        .max()
        .unwrap_or(0);
    if view.videos(m, audio_peak).is_empty() {
        return Err(Error::EmptyView("video rendition"));
    }
    let range = view.segments(m);
    if range.is_empty() {
        return Err(Error::EmptyView("segment in the clip"));
    }
    let duration = m
        .timeline()
        .map(|t| {
            let ticks: u64 = t
                .fragments
                .iter()
                .zip(1u64..)
                .filter(|(_, n)| range.contains(n))
                .map(|(f, _)| f.duration)
                .sum();
            ticks as f64 / f64::from(t.timescale.max(1))
        })
        .unwrap_or(m.duration);
    let mut out = String::with_capacity(4096);
    let namespaces = if drm.is_some() {
        " xmlns:cenc=\"urn:mpeg:cenc:2013\" xmlns:dashif=\"https://dashif.org/CPS\" xmlns:mspr=\"urn:microsoft:playready\""
    } else {
        ""
    };
    header(&mut out, duration, namespaces);
    period(
        &mut out,
        m,
        view,
        range,
        &PeriodOpts {
            id: "0",
            start: 0.0,
            prefix: drm.map_or("", |d| d.2),
            drm: drm.map(|d| (d.0, d.1)),
            trick: true,
            // Side-loaded subtitle files keep the title's own times, so a
            // clip, whose period starts later, leaves them out.
            subtitles: !view.is_clip(),
            events: "",
            query: "",
            ato: None,
        },
    )?;
    out.push_str("</MPD>\n");
    Ok(out)
}

/// The `<MPD>` start tag of a static MPD lasting `duration` seconds, with
/// `namespaces` (` xmlns:x="…"`, or nothing) added.
pub(crate) fn header(out: &mut String, duration: f64, namespaces: &str) {
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\"{namespaces} profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" type=\"static\" mediaPresentationDuration=\"{}\" minBufferTime=\"PT2S\">\n",
        iso_duration(duration)
    );
}

/// How one `Period` is written.
pub(crate) struct PeriodOpts<'a> {
    /// `Period@id`.
    pub(crate) id: &'a str,
    /// `Period@start`, seconds.
    pub(crate) start: f64,
    /// Put before every segment URL (`ad/0.1/{creative}/` for an ad).
    pub(crate) prefix: &'a str,
    /// Whether video groups get a trick-mode AdaptationSet.
    pub(crate) trick: bool,
    /// Keys and scheme of a protected title: `ContentProtection` in each
    /// Representation.
    pub(crate) drm: Option<(&'a Drm, Scheme)>,
    /// Whether side-loaded subtitle files are listed.
    pub(crate) subtitles: bool,
    /// Written first inside the period (an `EventStream`), or nothing.
    pub(crate) events: &'a str,
    /// Put after every segment URL (`?__token__=…`, XML-escaped), or nothing.
    pub(crate) query: &'a str,
    /// `availabilityTimeOffset`, seconds, for a dynamic MPD's period whose
    /// segments exist before their time (a live break's ads).
    pub(crate) ato: Option<f64>,
}

/// One `Period` of `m` as `view` shows it, over the segments in `range`.
pub(crate) fn period(
    out: &mut String,
    m: &AssetManifest,
    view: &View,
    range: Range<u64>,
    opts: &PeriodOpts<'_>,
) -> Result<(), Error> {
    let audios = view.audios(m);
    let audio_peak = audios.iter().map(|a| a.bandwidth).max().unwrap_or(0);
    let videos = view.videos(m, audio_peak);
    if videos.is_empty() {
        return Err(Error::EmptyView("video rendition"));
    }
    let prefix = opts.prefix;
    let q = opts.query;
    let rep_init = format!("{prefix}$RepresentationID$/init.mp4{q}");
    let rep_media = format!("{prefix}$RepresentationID$/$Number$.m4s{q}");
    let _ = writeln!(
        out,
        "  <Period id=\"{}\" start=\"{}\">",
        opts.id,
        if opts.start > 0.0 {
            iso_duration(opts.start)
        } else {
            "PT0S".to_string()
        }
    );
    out.push_str(opts.events);
    let mut next_id = 0u32;
    let mut families: Vec<&str> = Vec::new();
    for v in &videos {
        if !families.contains(&v.codec_family()) {
            families.push(v.codec_family());
        }
    }
    // One AdaptationSet per codec family; a protected title's is split
    // further by content key (DASH-IF: one default_KID per AdaptationSet),
    // the parts of a family linked for switching.
    let mut sets: Vec<Vec<&Track>> = Vec::new();
    for family in families {
        let group: Vec<&Track> = videos
            .iter()
            .copied()
            .filter(|v| v.codec_family() == family)
            .collect();
        let first = sets.len();
        for v in group {
            let kid = kid_of(opts, &v.id);
            match sets[first..]
                .iter_mut()
                .find(|s| kid_of(opts, &s[0].id) == kid)
            {
                Some(set) => set.push(v),
                None => sets.push(vec![v]),
            }
        }
    }
    let family_ids: Vec<(u32, &str)> = sets
        .iter()
        .scan(next_id, |id, set| {
            let this = *id;
            // A set, and its trick-mode set if it has one.
            *id += if has_trick(opts, set) { 2 } else { 1 };
            Some((this, set[0].codec_family()))
        })
        .collect();
    for (n, group) in sets.iter().enumerate() {
        let main_id = next_id;
        next_id += 1;
        let max_w = group.iter().map(|v| v.width).max().unwrap_or(0);
        let max_h = group.iter().map(|v| v.height).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "    <AdaptationSet id=\"{main_id}\" contentType=\"video\" mimeType=\"video/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\" maxWidth=\"{max_w}\" maxHeight=\"{max_h}\">"
        );
        protection(out, opts, &group[0].id);
        let family = group[0].codec_family();
        let siblings: Vec<String> = family_ids
            .iter()
            .enumerate()
            .filter(|(i, (_, f))| *i != n && *f == family)
            .map(|(_, (id, _))| id.to_string())
            .collect();
        if !siblings.is_empty() {
            let _ = writeln!(
                out,
                "      <SupplementalProperty schemeIdUri=\"urn:mpeg:dash:adaptation-set-switching:2016\" value=\"{}\"/>",
                siblings.join(",")
            );
        }
        for v in group {
            let _ = writeln!(
                out,
                "      <Representation id=\"{}\" bandwidth=\"{}\" codecs=\"{}\" width=\"{}\" height=\"{}\" frameRate=\"{}\" sar=\"1:1\">",
                v.id, v.bandwidth, v.codec, v.width, v.height, frame_rate(v.frame_rate)
            );
            template(out, v, range.clone(), &rep_init, &rep_media, opts.ato);
            out.push_str("      </Representation>\n");
        }
        out.push_str("    </AdaptationSet>\n");
        // Trick mode: the smallest rendition's keyframes, one per segment.
        if let Some(t) = group
            .iter()
            .rev()
            .find(|v| opts.trick && has_key_lengths(v))
        {
            let id = next_id;
            next_id += 1;
            let secs = t.duration() / t.fragments.len().max(1) as f64;
            let rate = (secs * t.frame_rate).round().max(1.0) as u64;
            let _ = writeln!(
                out,
                "    <AdaptationSet id=\"{id}\" contentType=\"video\" mimeType=\"video/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\" maxWidth=\"{w}\" maxHeight=\"{h}\">",
                w = t.width,
                h = t.height,
            );
            protection(out, opts, &t.id);
            let _ = writeln!(
                out,
                "      <EssentialProperty schemeIdUri=\"http://dashif.org/guidelines/trickmode\" value=\"{main_id}\"/>\n      <Representation id=\"{tid}-trick\" bandwidth=\"{bw}\" codecs=\"{codec}\" width=\"{w}\" height=\"{h}\" sar=\"1:1\" maxPlayoutRate=\"{rate}\" codingDependency=\"false\">",
                w = t.width,
                h = t.height,
                tid = t.id,
                bw = iframe_bandwidth(t).max(1),
                codec = t.codec,
            );
            let init = format!("{prefix}{}/init.mp4{q}", t.id);
            let media = format!("{prefix}{}/$Number$.key.m4s{q}", t.id);
            template(out, t, range.clone(), &init, &media, opts.ato);
            out.push_str("      </Representation>\n    </AdaptationSet>\n");
        }
    }
    for (i, a) in audios.iter().enumerate() {
        let id = next_id;
        next_id += 1;
        let role = if i == 0 { "main" } else { "alternate" };
        let _ = writeln!(
            out,
            "    <AdaptationSet id=\"{id}\" contentType=\"audio\" mimeType=\"audio/mp4\" lang=\"{}\" segmentAlignment=\"true\" startWithSAP=\"1\">",
            a.language
        );
        protection(out, opts, &a.id);
        let _ = writeln!(
            out,
            "      <Role schemeIdUri=\"urn:mpeg:dash:role:2011\" value=\"{role}\"/>"
        );
        let _ = writeln!(
            out,
            "      <Representation id=\"{}\" bandwidth=\"{}\" codecs=\"{}\" audioSamplingRate=\"{}\">",
            a.id, a.bandwidth, a.codec, a.sample_rate
        );
        let _ = writeln!(
            out,
            "        <AudioChannelConfiguration schemeIdUri=\"urn:mpeg:dash:23003:3:audio_channel_configuration:2011\" value=\"{}\"/>",
            a.channels.max(1)
        );
        template(out, a, range.clone(), &rep_init, &rep_media, opts.ato);
        out.push_str("      </Representation>\n    </AdaptationSet>\n");
    }
    if opts.subtitles {
        for s in view.subtitles(m) {
            let id = next_id;
            next_id += 1;
            let _ = writeln!(
                out,
                "    <AdaptationSet id=\"{id}\" contentType=\"text\" mimeType=\"text/vtt\" lang=\"{lang}\">\n      <Role schemeIdUri=\"urn:mpeg:dash:role:2011\" value=\"subtitle\"/>\n      <Representation id=\"{sid}\" bandwidth=\"{bw}\">\n        <BaseURL>{prefix}{sid}.vtt{q}</BaseURL>\n      </Representation>\n    </AdaptationSet>",
                lang = s.language,
                sid = s.id,
                bw = s.bandwidth,
            );
        }
    }
    out.push_str("  </Period>\n");
    Ok(())
}

/// The `ContentProtection` elements of the AdaptationSet of track `id`.
fn protection(out: &mut String, opts: &PeriodOpts<'_>, id: &str) {
    if let Some((drm, scheme)) = opts.drm {
        if let Some(k) = drm.keys.get(id) {
            out.push_str(&drm.dash_elements(&k.kid, scheme, "      "));
        }
    }
}

/// Whether a set of renditions gets a trick-mode AdaptationSet.
fn has_trick(opts: &PeriodOpts<'_>, set: &[&Track]) -> bool {
    opts.trick && set.iter().any(|v| has_key_lengths(v))
}

/// The KID of track `id` in a protected period (`None` in the clear).
fn kid_of(opts: &PeriodOpts<'_>, id: &str) -> Option<[u8; 16]> {
    opts.drm.and_then(|(d, _)| d.keys.get(id)).map(|k| k.kid)
}

/// A SegmentTemplate whose timeline lists every fragment in `range`
/// (segment numbers from 1) exactly, runs of equal durations folded into
/// `@r`. The presentation time offset is the first listed fragment's start,
/// so a clip's period begins at its first segment.
fn template(
    out: &mut String,
    t: &Track,
    range: Range<u64>,
    init: &str,
    media: &str,
    ato: Option<f64>,
) {
    let frags: Vec<_> = t
        .fragments
        .iter()
        .zip(1u64..)
        .filter(|(_, n)| range.contains(n))
        .map(|(f, _)| *f)
        .collect();
    let pto = frags.first().map_or(0, |f| f.start);
    let start_number = range.start.max(1);
    let early = ato.map_or(String::new(), |a| {
        format!(" availabilityTimeOffset=\"{a:.3}\" availabilityTimeComplete=\"true\"")
    });
    let _ = writeln!(
        out,
        "        <SegmentTemplate timescale=\"{}\" presentationTimeOffset=\"{}\" initialization=\"{init}\" media=\"{media}\" startNumber=\"{start_number}\"{early}>\n          <SegmentTimeline>",
        t.timescale, pto
    );
    let mut i = 0;
    let mut expected_start = None;
    while i < frags.len() {
        let f = frags[i];
        let mut repeat = 0;
        while i + repeat + 1 < frags.len()
            && frags[i + repeat + 1].duration == f.duration
            && frags[i + repeat + 1].start
                == frags[i + repeat]
                    .start
                    .saturating_add(frags[i + repeat].duration)
        {
            repeat += 1;
        }
        out.push_str("            <S");
        if expected_start != Some(f.start) {
            let _ = write!(out, " t=\"{}\"", f.start);
        }
        let _ = write!(out, " d=\"{}\"", f.duration);
        if repeat > 0 {
            let _ = write!(out, " r=\"{repeat}\"");
        }
        out.push_str("/>\n");
        let last = frags[i + repeat];
        expected_start = Some(last.start.saturating_add(last.duration));
        i += repeat + 1;
    }
    out.push_str("          </SegmentTimeline>\n        </SegmentTemplate>\n");
}

/// `PT1H2M3.456S` style durations.
pub(crate) fn iso_duration(secs: f64) -> String {
    let ms = (secs * 1000.0).round() as u64;
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let mut s = String::from("PT");
    if h > 0 {
        let _ = write!(s, "{h}H");
    }
    if m > 0 {
        let _ = write!(s, "{m}M");
    }
    let _ = write!(s, "{}.{:03}S", rest / 1000, rest % 1000);
    s
}

/// DASH frame rates are integers or ratios; 29.97 becomes `30000/1001`.
fn frame_rate(fps: f64) -> String {
    let rounded = fps.round();
    if (fps - rounded).abs() < 0.01 {
        format!("{}", rounded as u64)
    } else if (fps * 1.001 - (fps * 1.001).round()).abs() < 0.01 {
        format!("{}/1001", ((fps * 1.001).round() as u64) * 1000)
    } else {
        format!("{}/1000", (fps * 1000.0).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(iso_duration(30.0), "PT30.000S");
        assert_eq!(iso_duration(3723.5), "PT1H2M3.500S");
        assert_eq!(frame_rate(30.0), "30");
        assert_eq!(frame_rate(29.97), "30000/1001");
    }
}
