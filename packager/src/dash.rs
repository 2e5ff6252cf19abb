//! DASH MPD (ISO/IEC 23009-1), static, with SegmentTemplate and SegmentTimeline.
//!
//! Segment URLs are the same as the HLS ones (`{track}/{n}.m4s`), so an edge
//! caches one copy of each segment for both protocols.

use std::fmt::Write;

use crate::manifest::{AssetManifest, Track};

/// The MPD for a whole title.
pub(crate) fn mpd(m: &AssetManifest) -> String {
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" type=\"static\" mediaPresentationDuration=\"{}\" minBufferTime=\"PT2S\">\n  <Period id=\"0\" start=\"PT0S\">\n",
        iso_duration(m.duration)
    );
    let videos: Vec<&Track> = m.videos().collect();
    if !videos.is_empty() {
        let max_w = videos.iter().map(|v| v.width).max().unwrap_or(0);
        let max_h = videos.iter().map(|v| v.height).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "    <AdaptationSet id=\"0\" contentType=\"video\" mimeType=\"video/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\" maxWidth=\"{max_w}\" maxHeight=\"{max_h}\">"
        );
        for v in &videos {
            let _ = writeln!(
                out,
                "      <Representation id=\"{}\" bandwidth=\"{}\" codecs=\"{}\" width=\"{}\" height=\"{}\" frameRate=\"{}\" sar=\"1:1\">",
                v.id, v.bandwidth, v.codec, v.width, v.height, frame_rate(v.frame_rate)
            );
            template(&mut out, v);
            out.push_str("      </Representation>\n");
        }
        out.push_str("    </AdaptationSet>\n");
    }
    for (i, a) in m.audios().enumerate() {
        let _ = writeln!(
            out,
            "    <AdaptationSet id=\"{}\" contentType=\"audio\" mimeType=\"audio/mp4\" lang=\"{}\" segmentAlignment=\"true\" startWithSAP=\"1\">",
            i + 1,
            a.language
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
        template(&mut out, a);
        out.push_str("      </Representation>\n    </AdaptationSet>\n");
    }
    out.push_str("  </Period>\n</MPD>\n");
    out
}

/// A SegmentTemplate whose timeline lists every fragment exactly, runs of
/// equal durations folded into `@r`.
fn template(out: &mut String, t: &Track) {
    let pto = t.fragments.first().map_or(0, |f| f.start);
    let _ = writeln!(
        out,
        "        <SegmentTemplate timescale=\"{}\" presentationTimeOffset=\"{}\" initialization=\"$RepresentationID$/init.mp4\" media=\"$RepresentationID$/$Number$.m4s\" startNumber=\"1\">\n          <SegmentTimeline>",
        t.timescale, pto
    );
    let mut i = 0;
    let mut expected_start = None;
    while i < t.fragments.len() {
        let f = t.fragments[i];
        let mut repeat = 0;
        while i + repeat + 1 < t.fragments.len()
            && t.fragments[i + repeat + 1].duration == f.duration
            && t.fragments[i + repeat + 1].start
                == t.fragments[i + repeat]
                    .start
                    .saturating_add(t.fragments[i + repeat].duration)
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
        let last = t.fragments[i + repeat];
        expected_start = Some(last.start.saturating_add(last.duration));
        i += repeat + 1;
    }
    out.push_str("          </SegmentTimeline>\n        </SegmentTemplate>\n");
}

/// `PT1H2M3.456S` style durations.
fn iso_duration(secs: f64) -> String {
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
