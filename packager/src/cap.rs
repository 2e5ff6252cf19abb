//! Quality caps on manifests already made: an edge under load, or an
//! operator's panic cap, leaves the tallest rungs out of what a player is
//! offered. A filter over the text rather than a view of the asset
//! manifest, so the same cap applies to titles and live channels, to
//! cached manifests and stitched ones alike, and no cache entry changes:
//! segments already cached stay valid.
//!
//! A cap never removes every rung: the shortest rungs stay whatever it says.

/// The multivariant playlist `text` without the variants (and I-frame
/// variants) taller than `max_height` lines. `None` when nothing changes.
pub fn cap_hls(text: &str, max_height: u32) -> Option<String> {
    let heights = text.lines().filter_map(|l| {
        let attrs = l
            .strip_prefix("#EXT-X-STREAM-INF:")
            .or_else(|| l.strip_prefix("#EXT-X-I-FRAME-STREAM-INF:"))?;
        hls_height(attrs)
    });
    let limit = effective_limit(heights, max_height)?;
    let mut out = String::with_capacity(text.len());
    let mut skip_uri = false;
    for line in text.split_inclusive('\n') {
        let l = line.trim_end();
        if skip_uri && !l.is_empty() && !l.starts_with('#') {
            skip_uri = false;
            continue;
        }
        if let Some(attrs) = l.strip_prefix("#EXT-X-STREAM-INF:") {
            if hls_height(attrs).is_some_and(|h| h > limit) {
                skip_uri = true;
                continue;
            }
        }
        if let Some(attrs) = l.strip_prefix("#EXT-X-I-FRAME-STREAM-INF:") {
            if hls_height(attrs).is_some_and(|h| h > limit) {
                continue;
            }
        }
        out.push_str(line);
    }
    Some(out)
}

/// The MPD `text` without the video Representations taller than
/// `max_height` lines. `None` when nothing changes.
pub fn cap_mpd(text: &str, max_height: u32) -> Option<String> {
    let heights = text
        .lines()
        .filter(|l| l.trim_start().starts_with("<Representation "))
        .filter_map(|l| xml_attr(l, "height")?.parse::<u32>().ok());
    let limit = effective_limit(heights, max_height)?;
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        let l = line.trim();
        if skipping {
            if l.starts_with("</Representation>") {
                skipping = false;
            }
            continue;
        }
        if l.starts_with("<Representation ") {
            let tall = xml_attr(l, "height")
                .and_then(|h| h.parse::<u32>().ok())
                .is_some_and(|h| h > limit);
            if tall {
                // `<Representation …/>` ends here; otherwise at its end tag.
                skipping = !l.ends_with("/>") && !l.contains("</Representation>");
                continue;
            }
        }
        out.push_str(line);
    }
    Some(out)
}

/// The height of the tallest rung to keep: `max_height`, or the shortest
/// rung when every rung is taller. `None` when no rung is over it.
fn effective_limit(heights: impl Iterator<Item = u32>, max_height: u32) -> Option<u32> {
    let (mut shortest, mut tallest) = (u32::MAX, 0);
    for h in heights {
        shortest = shortest.min(h);
        tallest = tallest.max(h);
    }
    (tallest > max_height).then_some(max_height.max(shortest))
}

/// `H` of `RESOLUTION=WxH` in a tag's attribute list.
fn hls_height(attrs: &str) -> Option<u32> {
    let at = attrs.find("RESOLUTION=")?;
    let value = &attrs[at + "RESOLUTION=".len()..];
    let value = value.split(',').next()?;
    value.split_once('x')?.1.trim().parse().ok()
}

/// The value of `name="…"` in one XML start tag.
fn xml_attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(" {name}=\"");
    let at = tag.find(&needle)? + needle.len();
    let rest = &tag[at..];
    Some(&rest[..rest.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MV: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"en\",URI=\"a0.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=3128000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=1280x720,AUDIO=\"audio\"\nv0.m3u8?t=1\n#EXT-X-STREAM-INF:BANDWIDTH=1128000,CODECS=\"avc1.64001e,mp4a.40.2\",RESOLUTION=854x480,AUDIO=\"audio\"\nv1.m3u8?t=1\n#EXT-X-STREAM-INF:BANDWIDTH=528000,CODECS=\"avc1.64001e,mp4a.40.2\",RESOLUTION=640x360,AUDIO=\"audio\"\nv2.m3u8?t=1\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,CODECS=\"avc1.64001f\",RESOLUTION=1280x720,URI=\"v0.iframes.m3u8\"\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=50000,CODECS=\"avc1.64001e\",RESOLUTION=640x360,URI=\"v2.iframes.m3u8\"\n";

    #[test]
    fn hls_loses_its_top_rungs() {
        let capped = cap_hls(MV, 480).unwrap();
        assert!(!capped.contains("v0.m3u8"));
        assert!(!capped.contains("v0.iframes"));
        assert!(capped.contains("RESOLUTION=854x480,AUDIO=\"audio\"\nv1.m3u8?t=1\n"));
        assert!(capped.contains("v2.m3u8") && capped.contains("v2.iframes"));
        assert!(capped.contains("#EXT-X-MEDIA:TYPE=AUDIO"));
        assert_eq!(cap_hls(MV, 720), None, "nothing over the cap");
        assert_eq!(cap_hls(MV, 1080), None);
    }

    #[test]
    fn a_cap_under_every_rung_keeps_the_shortest() {
        let capped = cap_hls(MV, 144).unwrap();
        assert!(capped.contains("v2.m3u8"));
        assert!(!capped.contains("v1.m3u8") && !capped.contains("v0.m3u8"));
    }

    const MPD: &str = "<MPD>\n  <Period>\n    <AdaptationSet id=\"0\" contentType=\"video\">\n      <Representation id=\"v0\" bandwidth=\"3000000\" codecs=\"avc1\" width=\"1280\" height=\"720\" frameRate=\"30\" sar=\"1:1\">\n        <SegmentTemplate media=\"v0/$Number$.m4s\"/>\n      </Representation>\n      <Representation id=\"v1\" bandwidth=\"1000000\" codecs=\"avc1\" width=\"854\" height=\"480\" frameRate=\"30\" sar=\"1:1\">\n        <SegmentTemplate media=\"v1/$Number$.m4s\"/>\n      </Representation>\n      <Representation id=\"v2\" codecs=\"avc1\" bandwidth=\"500000\" width=\"640\" height=\"360\"/>\n    </AdaptationSet>\n    <AdaptationSet id=\"1\" contentType=\"audio\">\n      <Representation id=\"a0\" codecs=\"mp4a.40.2\" bandwidth=\"128000\" audioSamplingRate=\"48000\">\n      </Representation>\n    </AdaptationSet>\n  </Period>\n</MPD>\n";

    #[test]
    fn mpd_loses_its_top_representations() {
        let capped = cap_mpd(MPD, 400).unwrap();
        assert!(!capped.contains("id=\"v0\"") && !capped.contains("v0/$Number$"));
        assert!(!capped.contains("id=\"v1\""));
        assert!(capped.contains("id=\"v2\""));
        assert!(capped.contains("id=\"a0\""), "audio stays");
        assert_eq!(capped.matches("</Representation>").count(), 1);
        assert!(capped.ends_with("</MPD>\n"));
        assert_eq!(cap_mpd(MPD, 720), None);
        assert!(cap_mpd(MPD, 100).unwrap().contains("id=\"v2\""));
    }

    #[test]
    fn odd_text_is_left_alone() {
        assert_eq!(cap_hls("", 360), None);
        assert_eq!(cap_hls("#EXT-X-STREAM-INF:RESOLUTION=x\nv.m3u8", 1), None);
        assert_eq!(cap_mpd("<Representation height=\"", 1), None);
    }
}
