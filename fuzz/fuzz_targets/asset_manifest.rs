//! The asset manifest reader (bytes from the network) never panics, and what
//! it accepts can be packaged without panicking.
#![no_main]

use cascade_packager::{package, AssetManifest, Output};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = AssetManifest::from_json(data) {
        let _ = package(&m, &Output::Multivariant, &[]);
        let _ = package(&m, &Output::Mpd, &[]);
        for t in &m.tracks {
            let _ = package(&m, &Output::MediaPlaylist(t.id.clone()), &[]);
        }
    }
});
