//! Encryption of untrusted fragments: any init segment and fragment bytes
//! give an encrypted fragment or an error, never a panic, under both
//! schemes, and an encrypted fragment keeps its sample count; a live
//! channel's run of fragments (parts, segments) too.
#![no_main]

use cascade_packager::cenc::{protect_fragment, protect_init, Scheme, TrackProtection};
use cascade_packager::ContentKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes say where the init segment ends.
    if data.len() < 2 {
        return;
    }
    let split = (usize::from(data[0]) << 8 | usize::from(data[1])).min(data.len() - 2);
    let (init, fragment) = data[2..].split_at(split);
    for scheme in [Scheme::Cbcs, Scheme::Cenc] {
        let p = TrackProtection {
            scheme,
            key: ContentKey {
                kid: [1; 16],
                key: [2; 16],
                iv: [3; 16],
            },
            track: 0,
            clear_segments: u64::from(data[0] & 1),
            variant_b: data[1] & 1 == 1,
        };
        let _ = protect_init(init, &p, &[]);
        if let Ok(out) = protect_fragment(init, fragment, &p, 1) {
            let cfg = cascade_packager::fmp4::parse_init(init).expect("protected, so readable");
            let before = cascade_packager::fmp4::parse_fragment(&cfg, fragment).map(|s| s.len());
            let after = cascade_packager::fmp4::parse_fragment(&cfg, &out).map(|s| s.len());
            assert_eq!(before, after);
        }
    }

    // A live part or segment: any run of boxes.
    let live = cascade_packager::live_protect::LiveKeys {
        period_secs: 10,
        keys: [(
            7u64,
            ContentKey {
                kid: [1; 16],
                key: [2; 16],
                iv: [3; 16],
            },
        )]
        .into_iter()
        .collect(),
        drm: Default::default(),
    };
    let _ = live.init(init, 7);
    let _ = live.media(init, fragment, 7, 1);
});
