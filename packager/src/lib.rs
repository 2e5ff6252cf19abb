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
mod hls;
mod index;
mod manifest;
mod mp4;
mod query;

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
}
