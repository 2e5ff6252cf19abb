//! Writing a query (the viewer's token) into every child URL of a playlist
//! or MPD, so a player that knows only the master URL plays the whole title.
//! Cached outputs carry no token; this runs on the way out.

use crate::Output;

/// Appends `query` (such as `__token__=…`) to each child URL of a playlist
/// or MPD. Other outputs are returned unchanged.
pub fn with_query(output: &Output, body: &[u8], query: &str) -> Vec<u8> {
    if query.is_empty() {
        return body.to_vec();
    }
    match output {
        Output::Multivariant
        | Output::MediaPlaylist(_)
        | Output::IframePlaylist(_)
        | Output::TsPlaylist(_) => m3u8(body, query.as_bytes()),
        Output::Mpd => match std::str::from_utf8(body) {
            Ok(text) => mpd(text, &xml_escape(query)).into_bytes(),
            Err(_) => body.to_vec(),
        },
        _ => body.to_vec(),
    }
}

/// The same for a live output: playlists and the MPD get the query.
pub fn live_with_query(output: &crate::live::LiveOutput, body: &[u8], query: &str) -> Vec<u8> {
    use crate::live::LiveOutput;
    if query.is_empty() {
        return body.to_vec();
    }
    match output {
        LiveOutput::Multivariant
        | LiveOutput::Media(_)
        | LiveOutput::TsMultivariant
        | LiveOutput::TsPlaylist(..) => m3u8(body, query.as_bytes()),
        LiveOutput::Mpd => match std::str::from_utf8(body) {
            Ok(text) => mpd(text, &xml_escape(query)).into_bytes(),
            Err(_) => body.to_vec(),
        },
        _ => body.to_vec(),
    }
}

/// Appends `query` to `url` in `out`, with `?` or `&` as the URL needs.
fn join_into(out: &mut Vec<u8>, url: &[u8], query: &[u8]) {
    out.extend_from_slice(url);
    out.push(if url.contains(&b'?') { b'&' } else { b'?' });
    out.extend_from_slice(query);
}

fn join(url: &str, query: &str) -> String {
    let mut out = Vec::with_capacity(url.len() + 1 + query.len());
    join_into(&mut out, url.as_bytes(), query.as_bytes());
    String::from_utf8(out).unwrap_or_default()
}

/// One pass over the playlist into one buffer: this runs on every playlist
/// a viewer with a query token fetches (live players ask every second), so
/// it allocates once and copies each byte once. URI lines get the query;
/// tags get it inside their `URI="…"` attribute.
fn m3u8(text: &[u8], query: &[u8]) -> Vec<u8> {
    // Built once: making the searcher costs more than a playlist's search.
    static URI: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"URI=\""));
    let uri = &*URI;
    let lines = memchr::memchr_iter(b'\n', text).count() + 1;
    let mut out = Vec::with_capacity(text.len() + lines * (query.len() + 1));
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.first() == Some(&b'#') {
            let mut rest = line;
            while let Some(i) = uri.find(rest) {
                let start = i + uri.needle().len();
                let Some(len) = memchr::memchr(b'"', &rest[start..]) else {
                    break;
                };
                out.extend_from_slice(&rest[..start]);
                let value = &rest[start..start + len];
                // `data:` key descriptions and `skd://` FairPlay key URIs
                // are not edge URLs: no token.
                if value.contains(&b':') {
                    out.extend_from_slice(value);
                } else {
                    join_into(&mut out, value, query);
                }
                rest = &rest[start + len..];
            }
            out.extend_from_slice(rest);
        } else {
            join_into(&mut out, line, query);
        }
        out.push(b'\n');
    }
    out
}

fn mpd(text: &str, query: &str) -> String {
    let once = rewrite_attr(text, "initialization=\"", query);
    let twice = rewrite_attr(&once, "media=\"", query);
    rewrite_between(&twice, "<BaseURL>", '<', query)
}

/// Appends the query to the value of every `name"…"` attribute in `text`.
fn rewrite_attr(text: &str, name: &str, query: &str) -> String {
    rewrite_between(text, name, '"', query)
}

/// Appends the query to every run of text between `open` and `close`.
fn rewrite_between(text: &str, open: &str, close: char, query: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(open) {
        let start = i + open.len();
        let Some(len) = rest[start..].find(close) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&join(&rest[start..start + len], query));
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlists_get_the_query_on_every_child() {
        let master = "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",URI=\"a0.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv0.m3u8\n";
        let out =
            String::from_utf8(with_query(&Output::Multivariant, master.as_bytes(), "t=1")).unwrap();
        assert_eq!(
            out,
            "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",URI=\"a0.m3u8?t=1\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv0.m3u8?t=1\n"
        );
        let media =
            "#EXTM3U\n#EXT-X-MAP:URI=\"v0/init.mp4\"\n#EXTINF:2.0,\nv0/1.m4s\n#EXT-X-ENDLIST\n";
        let out = String::from_utf8(with_query(
            &Output::MediaPlaylist("v0".into()),
            media.as_bytes(),
            "t=1",
        ))
        .unwrap();
        assert!(
            out.contains("URI=\"v0/init.mp4?t=1\"") && out.contains("\nv0/1.m4s?t=1\n"),
            "{out}"
        );
        assert!(out.ends_with("#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn mpd_templates_get_the_query_escaped() {
        let mpd = "<SegmentTemplate initialization=\"$RepresentationID$/init.mp4\" media=\"$RepresentationID$/$Number$.m4s\"/>";
        let out = String::from_utf8(with_query(&Output::Mpd, mpd.as_bytes(), "a=1&b=2")).unwrap();
        assert_eq!(
            out,
            "<SegmentTemplate initialization=\"$RepresentationID$/init.mp4?a=1&amp;b=2\" media=\"$RepresentationID$/$Number$.m4s?a=1&amp;b=2\"/>"
        );
    }

    #[test]
    fn media_is_untouched() {
        let seg = b"\x00\x00\x00\x08moof";
        assert_eq!(
            with_query(&Output::Segment("v0".into(), 1), seg, "t=1"),
            seg.to_vec()
        );
    }
}
