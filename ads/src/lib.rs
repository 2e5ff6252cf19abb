//! Ad decisions as data, for server-side ad insertion: VAST (2.0, 3.0 and
//! 4.x) and VMAP documents parsed into checked types, the VAST error codes
//! an ad server is told, the macros of an ad tag URL, and SCTE-35 cue
//! messages ([`scte35`]).
//!
//! Pure: bytes in, values out; no sockets and no clock. Ad server answers
//! are untrusted input: sizes, counts and depth are limited before anything
//! is kept, and nothing here panics on any input (`fuzz/fuzz_targets/vast.rs`).

#![warn(unreachable_pub)]

mod macros;
pub mod scte35;
mod tree;
mod vast;
mod vmap;

pub use macros::{expand, Macros};
pub use vast::{
    parse_vast, pick_media_file, Ad, AdBody, InLine, Linear, MediaFile, Tracking, TrackingEvent,
    Vast, Wrapper,
};
pub use vmap::{parse_vmap, AdBreak, BreakSource, Offset, Vmap};

/// Reads a title's ad breaks, `0,600,1200` (seconds into the title; 0 is
/// a pre-roll, the length or more a post-roll), into milliseconds, sorted
/// and without repeats; at most 50.
pub fn parse_breaks(s: &str) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let secs: f64 = part
            .parse()
            .map_err(|_| format!("`{part}` is not a number of seconds"))?;
        if !secs.is_finite() || !(0.0..=1_000_000.0).contains(&secs) {
            return Err(format!("`{part}`: seconds from 0 to 1000000"));
        }
        out.push((secs * 1000.0).round() as u64);
        if out.len() > 50 {
            return Err("at most 50 breaks".into());
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Largest VAST or VMAP document read.
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Why a document could not be used, with the VAST error code an ad
/// server is told (VAST 4.2, section 2.3.6.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdError {
    /// Not well-formed XML, or larger or deeper than allowed (100).
    #[error("the document is not XML we can read: {0}")]
    Xml(String),
    /// Well-formed, but not a VAST or VMAP document as the schema says (101).
    #[error("the document is not valid VAST/VMAP: {0}")]
    Schema(String),
    /// A VAST version we do not take (102).
    #[error("VAST version {0} is not supported")]
    Version(String),
    /// No ad in the document (303 after a wrapper, else 900 in our use).
    #[error("the document holds no ad")]
    NoAd,
}

impl AdError {
    /// The VAST error code for `[ERRORCODE]`.
    pub fn code(&self) -> u16 {
        match self {
            AdError::Xml(_) => 100,
            AdError::Schema(_) => 101,
            AdError::Version(_) => 102,
            AdError::NoAd => 303,
        }
    }
}

/// VAST error codes this crate's callers report besides [`AdError`]'s.
pub mod codes {
    /// Wrapper error, general.
    pub const WRAPPER: u16 = 300;
    /// Timeout of the VAST URI of a wrapper (or of the ad server).
    pub const TIMEOUT: u16 = 301;
    /// Wrapper limit reached.
    pub const WRAPPER_LIMIT: u16 = 302;
    /// No ads after following wrappers.
    pub const NO_ADS_AFTER_WRAPPER: u16 = 303;
    /// General linear error: the media could not be played.
    pub const LINEAR: u16 = 400;
    /// The media file could not be found.
    pub const FILE_NOT_FOUND: u16 = 401;
    /// No supported media file.
    pub const NO_SUPPORTED_MEDIA: u16 = 403;
    /// Undefined error.
    pub const UNDEFINED: u16 = 900;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaks_parse_sorted_and_checked() {
        assert_eq!(
            parse_breaks("600, 0,1200,600"),
            Ok(vec![0, 600_000, 1_200_000])
        );
        assert_eq!(parse_breaks("1.5"), Ok(vec![1500]));
        assert_eq!(parse_breaks(""), Ok(vec![]));
        assert!(parse_breaks("ten").is_err());
        assert!(parse_breaks("-1").is_err());
        assert!(parse_breaks("NaN").is_err());
        assert!(parse_breaks(&vec!["1"; 51].join(",")).is_err());
    }
}
