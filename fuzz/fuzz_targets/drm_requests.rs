//! License requests (W3C ClearKey JSON from any viewer) and CPIX documents
//! (from an operator or a DRM service) never panic their parsers.
#![no_main]

use cascade_packager::drm::{clearkey_kids, parse_cpix};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kids) = clearkey_kids(data) {
        assert!(!kids.is_empty() && kids.len() <= 32);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_cpix(text);
    }
});
