//! VAST and VMAP documents (ad server answers: untrusted) never panic the
//! parsers, and macros expand in any text.
#![no_main]

use cascade_ads::{expand, parse_vast, parse_vmap, pick_media_file, AdBody, Macros};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = parse_vast(data) {
        for ad in &v.ads {
            if let AdBody::InLine(i) = &ad.body {
                for l in &i.linears {
                    let _ = pick_media_file(&l.media_files, 3000);
                }
            }
        }
    }
    let _ = parse_vmap(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let m = Macros::new().set("CACHEBUSTING", "1").set("TITLE", text);
        let _ = expand(text, &m);
    }
});
