//! The fMP4 indexer and the segment check never panic on any bytes.
#![no_main]

use cascade_packager::{index_bytes, package, AssetManifest, Output, Track, View};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = index_bytes(data) {
        let track = Track::from_index("v0", "v0.mp4", &index);
        let m = AssetManifest::new("fuzz", vec![track]);
        let _ = package(&m, &Output::Multivariant, &View::default(), &[]);
        let _ = package(&m, &Output::Mpd, &View::default(), &[]);
        let _ = package(
            &m,
            &Output::Segment("v0".into(), 1),
            &View::default(),
            &[data],
        );
        let _ = package(&m, &Output::Init("v0".into()), &View::default(), &[data]);
    }
});
