//! What an encoder sends, once read into frames: the segmenter takes any
//! sequence of configurations and frames (any times, any bytes) without
//! panicking, and the manifest it keeps stays one the edges accept.
#![no_main]

use bytes::Bytes;
use cascade_live::frame;
use cascade_live::segmenter::{Segmenter, Targets, TrackFrame};
use cascade_packager::live::LiveManifest;
use cascade_packager::TrackKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = Segmenter::new(
        "fuzz",
        "e",
        7,
        Targets {
            part_ms: 200,
            segment_ms: 1000,
            window: 4,
        },
        &[("v0", TrackKind::Video), ("a0", TrackKind::Audio)],
    );
    let _ = frame::picture(data);
    let _ = frame::audio_format(data);
    // Records: [kind, time (2 bytes), length, bytes…].
    let mut rest = data;
    let mut wall = 0u64;
    while rest.len() >= 4 {
        let (kind, t, len) = (
            rest[0],
            u16::from_be_bytes([rest[1], rest[2]]),
            usize::from(rest[3]),
        );
        let body = Bytes::copy_from_slice(&rest[4..(4 + len).min(rest.len())]);
        rest = &rest[(4 + len).min(rest.len())..];
        wall += 40;
        let time = i64::from(t) * 900;
        let (track, f) = match kind % 6 {
            0 => (0, TrackFrame::Config(body)),
            1 => (1, TrackFrame::Config(body)),
            2 | 3 => (
                0,
                TrackFrame::Video {
                    dts: time,
                    cts: i32::from(kind) * 10,
                    keyframe: kind % 6 == 2,
                    data: body,
                },
            ),
            4 => (
                1,
                TrackFrame::Audio {
                    pts: time,
                    data: body,
                },
            ),
            _ => {
                let _ = s.discontinuity();
                continue;
            }
        };
        let _ = s.push(track, f, wall);
    }
    let _ = s.end();
    let json = s.manifest().to_json();
    if !s.manifest().segments.is_empty() {
        assert!(LiveManifest::from_json(&json).is_ok());
    }
});
