//! Content steering: a multivariant playlist or MPD that names several
//! edges (pathways, service locations), and the steering server players
//! ask which to use. HLS Content Steering (`EXT-X-CONTENT-STEERING`, each
//! variant and rendition group once per pathway with its `PATHWAY-ID`)
//! and DASH-IF content steering (`ContentSteering`, one MPD-level `BaseURL`
//! per `serviceLocation`). A filter over a manifest already made (and
//! tokenised): the cached manifest stays the same for everyone.
//!
//! The first pathway is the edge answering, and keeps its URLs relative;
//! the others get absolute URLs on their own hosts.

/// One edge a manifest offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteeringPathway<'a> {
    /// Pathway id / service location: the edge's node name.
    pub id: &'a str,
    /// Scheme and host (`http://edge-b:8080`); empty for the answering edge.
    pub origin: &'a str,
}

/// The multivariant playlist `text` (at `dir`, such as `/vod/abc/`) with
/// every variant, I-frame variant and rendition group once per pathway,
/// and the steering server's URI. `None` for fewer than two pathways or a
/// playlist with no variant.
pub fn steer_hls(
    text: &str,
    dir: &str,
    pathways: &[SteeringPathway<'_>],
    server_uri: &str,
) -> Option<String> {
    if pathways.len() < 2 || server_uri.contains('"') || pathways.iter().any(|p| !is_token(p.id)) {
        return None;
    }
    let mut global = Vec::new();
    let mut media = Vec::new();
    let mut variants: Vec<(&str, &str)> = Vec::new();
    let mut iframes = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("#EXT-X-MEDIA:") {
            media.push(line);
        } else if line.starts_with("#EXT-X-STREAM-INF:") {
            let uri = lines
                .by_ref()
                .find(|l| !l.trim().is_empty() && !l.starts_with('#'))?;
            variants.push((line, uri.trim()));
        } else if line.starts_with("#EXT-X-I-FRAME-STREAM-INF:") {
            iframes.push(line);
        } else if line.starts_with("#EXT-X-CONTENT-STEERING:") {
            // Already steered: leave it as it is.
            return None;
        } else if !line.trim().is_empty() {
            global.push(line);
        }
    }
    if variants.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len() * pathways.len() + 256);
    for l in &global {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&format!(
        "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{server_uri}\",PATHWAY-ID=\"{}\"\n",
        pathways[0].id
    ));
    for p in pathways {
        let abs = |u: &str| absolute(u, dir, p.origin);
        let group = |g: &str| format!("{g}-{}", p.id);
        for m in &media {
            let l = with_attr(m, "GROUP-ID", |g| group(g));
            let l = with_attr(&l, "URI", abs);
            out.push_str(&l);
            out.push('\n');
        }
        for (inf, uri) in &variants {
            let mut l = inf.to_string();
            for a in ["AUDIO", "SUBTITLES"] {
                l = with_attr(&l, a, |g| group(g));
            }
            out.push_str(&format!("{l},PATHWAY-ID=\"{}\"\n{}\n", p.id, abs(uri)));
        }
        for i in &iframes {
            let l = with_attr(i, "URI", abs);
            out.push_str(&format!("{l},PATHWAY-ID=\"{}\"\n", p.id));
        }
    }
    Some(out)
}

/// The MPD `text` (at `dir`) with one MPD-level `BaseURL` per pathway and
/// the steering server in `ContentSteering`, asked before playback starts.
/// Give every pathway its origin: dash.js reads no `BaseURL` after a
/// relative one. `None` for fewer than two
/// pathways or an MPD with no `Period`.
pub fn steer_mpd(
    text: &str,
    dir: &str,
    pathways: &[SteeringPathway<'_>],
    server_uri: &str,
) -> Option<String> {
    if pathways.len() < 2
        || text.contains("<ContentSteering")
        || pathways.iter().any(|p| !is_token(p.id))
    {
        return None;
    }
    let at = text.find("<Period")?;
    let indent = text[..at].rsplit('\n').next().unwrap_or("");
    let indent = if indent.trim().is_empty() {
        indent
    } else {
        "  "
    };
    let mut block = String::new();
    for p in pathways {
        block.push_str(&format!(
            "<BaseURL serviceLocation=\"{}\">{}{}</BaseURL>\n{indent}",
            p.id,
            xml_escape(p.origin),
            xml_escape(dir)
        ));
    }
    block.push_str(&format!(
        "<ContentSteering defaultServiceLocation=\"{}\" queryBeforeStart=\"true\">{}</ContentSteering>\n{indent}",
        pathways[0].id,
        xml_escape(server_uri)
    ));
    let mut out = String::with_capacity(text.len() + block.len());
    out.push_str(&text[..at]);
    out.push_str(&block);
    out.push_str(&text[at..]);
    Some(out)
}

/// A pathway id that needs no quoting anywhere: letters, digits, `-`, `_`, `.`.
fn is_token(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `uri` as seen from another edge: relative ones under `dir` on
/// `origin`; absolute ones as they are. For the answering edge (no
/// origin), unchanged.
fn absolute(uri: &str, dir: &str, origin: &str) -> String {
    if origin.is_empty() || uri.contains("://") {
        uri.to_string()
    } else if uri.starts_with('/') {
        format!("{origin}{uri}")
    } else {
        format!("{origin}{dir}{uri}")
    }
}

/// The tag line with the quoted attribute `name` rewritten by `f`.
fn with_attr(line: &str, name: &str, f: impl Fn(&str) -> String) -> String {
    let Some((tag, attrs)) = line.split_once(':') else {
        return line.to_string();
    };
    let mut out = String::with_capacity(line.len() + 32);
    out.push_str(tag);
    out.push(':');
    let mut rest = attrs;
    let mut first = true;
    while !rest.is_empty() {
        // One attribute: NAME=value, the value possibly quoted (commas inside).
        let end = attr_end(rest);
        let (attr, tail) = rest.split_at(end);
        if !first {
            out.push(',');
        }
        first = false;
        match attr.split_once('=') {
            Some((n, v)) if n == name && v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => {
                out.push_str(&format!("{n}=\"{}\"", f(&v[1..v.len() - 1])));
            }
            _ => out.push_str(attr),
        }
        rest = tail.strip_prefix(',').unwrap_or(tail);
    }
    out
}

/// Where the attribute at the start of `s` ends (at a comma outside quotes).
fn attr_end(s: &str) -> usize {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => return i,
            _ => {}
        }
    }
    s.len()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MV: &str = "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"Audio 1\",DEFAULT=YES,URI=\"a0.m3u8?t=1\"\n#EXT-X-STREAM-INF:BANDWIDTH=489892,CODECS=\"avc1.42c00d,mp4a.40.2\",RESOLUTION=320x180,AUDIO=\"aud\"\nv0.m3u8?t=1\n#EXT-X-STREAM-INF:BANDWIDTH=323752,CODECS=\"avc1.42c00c,mp4a.40.2\",RESOLUTION=214x120,AUDIO=\"aud\"\nv1.m3u8?t=1\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=28124,CODECS=\"avc1.42c00d\",RESOLUTION=320x180,URI=\"v0.iframes.m3u8?t=1\"\n";

    fn two() -> [SteeringPathway<'static>; 2] {
        [
            SteeringPathway {
                id: "edge-a",
                origin: "",
            },
            SteeringPathway {
                id: "edge-b",
                origin: "http://b:8080",
            },
        ]
    }

    #[test]
    fn each_pathway_gets_its_variants_and_groups() {
        let s = steer_hls(MV, "/vod/x/", &two(), "http://control/steer/hls?t=1").unwrap();
        assert!(s.starts_with("#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-CONTENT-STEERING:SERVER-URI=\"http://control/steer/hls?t=1\",PATHWAY-ID=\"edge-a\"\n"));
        assert!(
            s.contains("GROUP-ID=\"aud-edge-a\",NAME=\"Audio 1\",DEFAULT=YES,URI=\"a0.m3u8?t=1\"")
        );
        assert!(s.contains("GROUP-ID=\"aud-edge-b\",NAME=\"Audio 1\",DEFAULT=YES,URI=\"http://b:8080/vod/x/a0.m3u8?t=1\""));
        assert!(s.contains("CODECS=\"avc1.42c00d,mp4a.40.2\",RESOLUTION=320x180,AUDIO=\"aud-edge-a\",PATHWAY-ID=\"edge-a\"\nv0.m3u8?t=1\n"));
        assert!(s.contains(
            "AUDIO=\"aud-edge-b\",PATHWAY-ID=\"edge-b\"\nhttp://b:8080/vod/x/v1.m3u8?t=1\n"
        ));
        assert!(s.contains("URI=\"http://b:8080/vod/x/v0.iframes.m3u8?t=1\",PATHWAY-ID=\"edge-b\""));
        assert_eq!(s.matches("#EXT-X-STREAM-INF:").count(), 4);
        assert_eq!(s.matches("#EXT-X-MEDIA:").count(), 2);
    }

    #[test]
    fn one_pathway_or_odd_input_is_left_alone() {
        assert_eq!(steer_hls(MV, "/vod/x/", &two()[..1], "u"), None);
        assert_eq!(steer_hls("#EXTM3U\n", "/", &two(), "u"), None);
        assert_eq!(steer_hls("#EXT-X-STREAM-INF:A=1\n", "/", &two(), "u"), None);
        assert_eq!(steer_hls(MV, "/", &two(), "u\"x"), None);
        let bad = [
            two()[0].clone(),
            SteeringPathway {
                id: "a\"b",
                origin: "",
            },
        ];
        assert_eq!(steer_hls(MV, "/", &bad, "u"), None);
        assert_eq!(steer_mpd("<MPD></MPD>", "/", &two(), "u"), None);
    }

    #[test]
    fn an_mpd_gets_base_urls_and_the_steering_server() {
        let mpd = "<?xml version=\"1.0\"?>\n<MPD type=\"static\">\n  <Period id=\"0\">\n  </Period>\n</MPD>\n";
        let s = steer_mpd(mpd, "/vod/x/", &two(), "http://c/steer/dash?t=1&u=2").unwrap();
        assert!(s.contains("<MPD type=\"static\">\n  <BaseURL serviceLocation=\"edge-a\">/vod/x/</BaseURL>\n  <BaseURL serviceLocation=\"edge-b\">http://b:8080/vod/x/</BaseURL>\n  <ContentSteering defaultServiceLocation=\"edge-a\" queryBeforeStart=\"true\">http://c/steer/dash?t=1&amp;u=2</ContentSteering>\n  <Period id=\"0\">"), "{s}");
        assert_eq!(steer_mpd(&s, "/vod/x/", &two(), "u"), None, "once only");
    }
}
