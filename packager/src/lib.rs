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
//! | `master.m3u8` | HLS multivariant playlist |
//! | `manifest.mpd` | DASH MPD |
//! | `{track}.m3u8` | HLS media playlist |
//! | `{track}/init.mp4` | init segment (HLS and DASH) |
//! | `{track}/{n}.m4s` | media segment `n`, from 1 (HLS and DASH) |

#![warn(unreachable_pub)]

mod dash;
pub mod fmp4;
mod hls;
mod index;
mod manifest;
mod mp4;
mod query;
pub mod ts;
pub mod vtt;

pub use index::{index_bytes, Indexer, InitInfo, TrackIndex};
pub use manifest::{
    is_safe_id, AssetManifest, ByteRange, Fragment, Track, TrackKind, MANIFEST_VERSION,
    MAX_MANIFEST_BYTES,
};
pub use mp4::BoxHeader;
pub use query::with_query;

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
}

/// What a request path under `/vod/{asset}/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `master.m3u8`.
    Multivariant,
    /// `manifest.mpd`.
    Mpd,
    /// `{track}.m3u8`.
    MediaPlaylist(String),
    /// `{track}/init.mp4`.
    Init(String),
    /// `{track}/{n}.m4s`.
    Segment(String, u64),
}

/// Where the bytes of an output come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<'a> {
    /// Mezzanine file name within the asset.
    pub file: &'a str,
    /// The bytes of it that are needed.
    pub range: ByteRange,
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
        if let Some(track) = rest.strip_suffix(".m3u8") {
            return is_safe_id(track).then(|| Output::MediaPlaylist(track.to_string()));
        }
        let (track, file) = rest.split_once('/')?;
        if !is_safe_id(track) {
            return None;
        }
        if file == "init.mp4" {
            return Some(Output::Init(track.to_string()));
        }
        let n = file.strip_suffix(".m4s")?;
        // Plain decimal only: no sign, no leading zeros, so each segment has one URL.
        if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = n.parse().ok()?;
        Some(Output::Segment(track.to_string(), n))
    }

    /// The `Content-Type` of this output.
    pub fn content_type(&self, m: Option<&AssetManifest>) -> &'static str {
        match self {
            Output::Multivariant | Output::MediaPlaylist(_) => "application/vnd.apple.mpegurl",
            Output::Mpd => "application/dash+xml",
            Output::Init(t) | Output::Segment(t, _) => {
                match m.and_then(|m| m.track(t)).map(|t| t.kind) {
                    Some(TrackKind::Audio) => "audio/mp4",
                    _ => "video/mp4",
                }
            }
        }
    }

    /// Whether the output is a playlist or MPD (short-lived in caches once
    /// live streams exist) rather than immutable media.
    pub fn is_manifest(&self) -> bool {
        matches!(
            self,
            Output::Multivariant | Output::Mpd | Output::MediaPlaylist(_)
        )
    }

    /// The mezzanine bytes this output needs, if any.
    pub fn source<'m>(&self, m: &'m AssetManifest) -> Result<Option<Source<'m>>, Error> {
        match self {
            Output::Multivariant | Output::Mpd => Ok(None),
            Output::MediaPlaylist(t) => m.track(t).map(|_| None).ok_or(Error::NotFound),
            Output::Init(t) => {
                let track = m.track(t).ok_or(Error::NotFound)?;
                Ok(Some(Source {
                    file: &track.file,
                    range: track.init,
                }))
            }
            Output::Segment(t, n) => {
                let track = m.track(t).ok_or(Error::NotFound)?;
                let frag = track.segment(*n).ok_or(Error::NotFound)?;
                Ok(Some(Source {
                    file: &track.file,
                    range: frag.range,
                }))
            }
        }
    }
}

/// Makes the bytes of `output`. `source` holds the bytes named by
/// [`Output::source`], and must be empty for outputs that need none.
pub fn package(m: &AssetManifest, output: &Output, source: &[u8]) -> Result<Vec<u8>, Error> {
    match output {
        Output::Multivariant => Ok(hls::multivariant(m).into_bytes()),
        Output::Mpd => Ok(dash::mpd(m).into_bytes()),
        Output::MediaPlaylist(t) => {
            let track = m.track(t).ok_or(Error::NotFound)?;
            Ok(hls::media_playlist(track).into_bytes())
        }
        Output::Init(t) => {
            let track = m.track(t).ok_or(Error::NotFound)?;
            check_len(source, track.init.length)?;
            expect_boxes(source, &[b"ftyp", b"moov"])?;
            Ok(source.to_vec())
        }
        Output::Segment(t, n) => {
            let track = m.track(t).ok_or(Error::NotFound)?;
            let frag = track.segment(*n).ok_or(Error::NotFound)?;
            check_len(source, frag.range.length)?;
            expect_boxes(source, &[b"moof", b"mdat"])?;
            // A CMAF segment may open with `styp`; players need it for nothing
            // we serve, so the fragment goes out exactly as the mezzanine has it.
            Ok(source.to_vec())
        }
    }
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
        out.push(format!("/vod/{asset}/{}/init.mp4", t.id));
        let ts = f64::from(t.timescale.max(1));
        let first = t.fragments.first().map_or(0, |f| f.start);
        let limit = sel
            .first_segments
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let numbers = t
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
        out.extend(numbers.map(|n| format!("/vod/{asset}/{}/{n}.m4s", t.id)));
    }
    out
}

fn check_len(source: &[u8], want: u64) -> Result<(), Error> {
    if source.len() as u64 != want {
        return Err(Error::Malformed("source bytes do not match the manifest"));
    }
    Ok(())
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
        for line in hls::multivariant(&m).lines() {
            // Variants on their own lines; audio renditions in `URI="…"`.
            let uri = match line.split_once("URI=\"") {
                Some((_, rest)) => rest.split('"').next().unwrap_or_default(),
                None if !line.starts_with('#') => line,
                None => continue,
            };
            listed.push(format!("/vod/t1/{uri}"));
        }
        for t in &m.tracks {
            let playlist = hls::media_playlist(t);
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
        assert!(dash::mpd(&m).contains("startNumber=\"1\""));
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
