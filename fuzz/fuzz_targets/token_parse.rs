//! The token parser and verifier never panic on any text.
#![no_main]

use cascade_token::{normalize_path, parse, Key, Verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse(text);
    let _ = normalize_path(text);
    if let Ok(key) = Key::from_hex("k", "52a152a152a152a152a152a152a152a1") {
        let v = Verifier {
            cdn_keys: vec![key],
            ..Verifier::default()
        };
        let _ = v.verify(text, "/vod/a/master.m3u8", None, 1_700_000_000);
    }
});
