//! The manifest filters of degradation and steering (quality caps,
//! pathways) never panic over any text. (The steering ticket, which is
//! what players send, is checked by length before it is split; its unit
//! tests cover forged and truncated ones.)
#![no_main]

use cascade_packager::{cap_hls, cap_mpd, steer_hls, steer_mpd, SteeringPathway};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let height = data.first().map_or(0, |b| u32::from(*b) * 8);
    let _ = cap_hls(text, height);
    let _ = cap_mpd(text, height);
    let pathways = [
        SteeringPathway {
            id: "edge-a",
            origin: "",
        },
        SteeringPathway {
            id: "edge-b",
            origin: "http://b:8080",
        },
    ];
    if let Some(s) = steer_hls(text, "/vod/x/", &pathways, "http://c/steer/hls?t=1") {
        assert!(s.contains("#EXT-X-CONTENT-STEERING:"));
    }
    if let Some(s) = steer_mpd(text, "/vod/x/", &pathways, "http://c/steer/dash?t=1") {
        assert!(s.len() > text.len());
    }
});
