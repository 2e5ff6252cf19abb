//! The asset manifest reader (bytes from the network) never panics, and what
//! it accepts can be packaged, under any view and that view settled against
//! it (as the edge keys manifests), without panicking.
#![no_main]

use cascade_packager::{default_profiles, package, AssetManifest, Output, View};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = AssetManifest::from_json(data) {
        let profiles = default_profiles();
        for q in [
            "",
            "format=ts",
            "profile=mobile",
            "start=3&end=9",
            "audio=en&subtitles=hi",
            "max_bitrate=1500000&max_height=500&start=0.001&end=99999",
        ] {
            let Ok(view) = View::from_query(q, &profiles) else {
                continue;
            };
            let view = view.settle(&m);
            let _ = package(&m, &Output::Multivariant, &view, &[]);
            let _ = package(&m, &Output::Mpd, &view, &[]);
            for t in &m.tracks {
                for o in [
                    Output::MediaPlaylist(t.id.clone()),
                    Output::IframePlaylist(t.id.clone()),
                    Output::TsPlaylist(t.id.clone()),
                ] {
                    let _ = package(&m, &o, &view.clip_only(), &[]);
                }
            }
        }
    }
});
