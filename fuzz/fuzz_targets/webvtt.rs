//! The WebVTT parser never panics; what it accepts it writes back in a form
//! that parses to the same subtitles, and each segment holds exactly the
//! cues that overlap its window.
#![no_main]

use cascade_packager::vtt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = vtt::parse(data) else {
        return;
    };
    let text = vtt::serialize(&parsed);
    let again = vtt::parse(text.as_bytes()).expect("a serialized file parses");
    assert_eq!(again, parsed);
    assert_eq!(vtt::serialize(&again), text);

    let first = parsed.cues.first().map_or(0, |c| c.start_ms);
    let last = parsed.cues.iter().map(|c| c.end_ms).max().unwrap_or(0);
    let windows = [
        (0, u64::MAX),
        (0, 10_000),
        (first, first.saturating_add(1)),
        (first.saturating_add(2_000), last),
        (last.saturating_sub(1), last),
        (last, last),
        (last, first),
    ];
    for (start, end) in windows {
        let segment = vtt::segment(&parsed, start, end, 900_000);
        // The segment header is longer than the file's; only a file at the
        // size limit could make a segment too large to parse.
        if segment.len() > vtt::MAX_VTT_BYTES {
            continue;
        }
        let cut = vtt::parse(segment.as_bytes()).expect("a segment parses");
        let want: Vec<vtt::Cue> = parsed
            .cues
            .iter()
            .filter(|c| c.start_ms < end && c.end_ms > start)
            .cloned()
            .collect();
        assert_eq!(cut.cues, want);
    }
});
