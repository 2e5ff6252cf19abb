//! Packaging cost per request with a warm asset manifest.
//!
//!     cargo bench -p cascade-benches --bench packager
//!
//! A two-hour title (3,600 fragments per track, four video rungs and audio):
//! the multivariant playlist, a media playlist, the MPD, and one segment;
//! and a media playlist and an MPD with four ad breaks stitched in. Live:
//! a 30-minute window (900 segments of four parts, two renditions and
//! audio) with seven 30-second breaks, the shared LL-HLS playlist and MPD
//! against a free session's with its ads in the breaks.

#![allow(clippy::unwrap_used)]

use cascade_packager::{
    package, stitch, AssetManifest, ByteRange, Fragment, Output, StitchAd, StitchBreak, Track,
    TrackKind, View,
};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn track(id: &str, kind: TrackKind, height: u32, frags: usize) -> Track {
    let timescale = if kind == TrackKind::Video {
        15360
    } else {
        48000
    };
    let mut offset = 1000;
    let fragments = (0..frags)
        .map(|i| {
            let f = Fragment {
                range: ByteRange {
                    offset,
                    length: 500_000,
                },
                start: i as u64 * 2 * u64::from(timescale),
                duration: 2 * u64::from(timescale),
                key_length: 0,
            };
            offset += 500_000;
            f
        })
        .collect();
    Track {
        marked: None,
        id: id.into(),
        kind,
        file: format!("{id}.mp4"),
        codec: if kind == TrackKind::Video {
            "avc1.640028".into()
        } else {
            "mp4a.40.2".into()
        },
        bandwidth: 2_000_000,
        average_bandwidth: 1_800_000,
        width: height * 16 / 9,
        height,
        frame_rate: 30.0,
        sample_rate: 48000,
        channels: 2,
        language: "und".into(),
        media_time: 0,
        timescale,
        init: ByteRange {
            offset: 0,
            length: 1000,
        },
        fragments,
    }
}

fn manifest() -> AssetManifest {
    let n = 3600;
    AssetManifest::new(
        "bench",
        vec![
            track("v0", TrackKind::Video, 1080, n),
            track("v1", TrackKind::Video, 720, n),
            track("v2", TrackKind::Video, 480, n),
            track("v3", TrackKind::Video, 240, n),
            track("a0", TrackKind::Audio, 0, n),
        ],
    )
}

fn segment_bytes(len: usize) -> Vec<u8> {
    // A moof box and an mdat box filling the rest.
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&16u32.to_be_bytes());
    b.extend_from_slice(b"moof");
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&((len - 16) as u32).to_be_bytes());
    b.extend_from_slice(b"mdat");
    b.resize(len, 0);
    b
}

fn bench(c: &mut Criterion) {
    let m = manifest();
    let seg = segment_bytes(500_000);
    c.bench_function("multivariant playlist", |b| {
        b.iter(|| package(black_box(&m), &Output::Multivariant, &View::default(), &[]).unwrap())
    });
    c.bench_function("media playlist, 3600 segments", |b| {
        b.iter(|| {
            package(
                black_box(&m),
                &Output::MediaPlaylist("v0".into()),
                &View::default(),
                &[],
            )
            .unwrap()
        })
    });
    c.bench_function("DASH MPD, 5 tracks", |b| {
        b.iter(|| package(black_box(&m), &Output::Mpd, &View::default(), &[]).unwrap())
    });
    c.bench_function("fMP4 segment, 500 kB", |b| {
        let out = Output::Segment("v0".into(), 1800);
        b.iter(|| package(black_box(&m), &out, &View::default(), &[black_box(&seg)]).unwrap())
    });
    // A 30-second ad in each of four breaks (its ladder like the title's).
    let ad = AssetManifest::new(
        "ad",
        vec![
            track("v0", TrackKind::Video, 1080, 15),
            track("v1", TrackKind::Video, 720, 15),
            track("v2", TrackKind::Video, 480, 15),
            track("v3", TrackKind::Video, 240, 15),
            track("a0", TrackKind::Audio, 0, 15),
        ],
    );
    let breaks: Vec<StitchBreak<'_>> = [0u64, 1_800_000, 3_600_000, 7_200_000]
        .iter()
        .zip(0u32..)
        .map(|(at, id)| StitchBreak {
            id,
            at_ms: *at,
            ads: vec![StitchAd {
                creative: "adcreative01",
                manifest: &ad,
            }],
        })
        .collect();
    c.bench_function("media playlist, 3600 segments, 4 ad breaks stitched", |b| {
        let out = Output::MediaPlaylist("v0".into());
        b.iter(|| stitch(black_box(&m), &out, &View::default(), &breaks, "").unwrap())
    });
    c.bench_function("DASH MPD, 5 tracks, 4 ad breaks stitched", |b| {
        b.iter(|| stitch(black_box(&m), &Output::Mpd, &View::default(), &breaks, "").unwrap())
    });
    live(c, &ad);
    c.bench_function("path to output", |b| {
        b.iter(|| Output::parse(black_box("v1/1234.m4s")))
    });
}

fn live(c: &mut Criterion, ad: &AssetManifest) {
    use cascade_packager::live::{
        media_playlist, mpd, stitched_media_playlist, stitched_mpd, Blocking, LiveAd, LiveBreak,
        LiveFill, LiveManifest, LivePart, LiveSegment, LiveTrack, Slots,
    };
    let part = LivePart {
        duration: 45_000,
        independent: true,
        published_ms: 0,
    };
    let n = 900u64;
    let segments: Vec<LiveSegment> = (0..n)
        .map(|i| LiveSegment {
            msn: 10_000 + i,
            start: i * 180_000,
            pdt_ms: 1_800_000_000_000 + i * 2000,
            init: 0,
            discontinuity: false,
            parts: vec![part; 4],
            complete: i + 1 < n,
        })
        .collect();
    let track = |id: &str, kind: TrackKind, height: u32| LiveTrack {
        id: id.into(),
        kind,
        codec: if kind == TrackKind::Video {
            "avc1.64001f".into()
        } else {
            "mp4a.40.2".into()
        },
        bandwidth: 3_000_000,
        width: height * 16 / 9,
        height,
        frame_rate: 25.0,
        sample_rate: 48_000,
        channels: 2,
        first_msn: 0,
    };
    // A break every four minutes, 30 s (15 segments) each.
    let breaks: Vec<LiveBreak> = (0..7u32)
        .map(|k| LiveBreak {
            id: k + 1,
            start_msn: 10_050 + u64::from(k) * 120,
            duration_ms: 30_000,
            source: "scte35".into(),
            end_msn: Some(10_065 + u64::from(k) * 120),
            end_start: Some((65 + u64::from(k) * 120) * 180_000),
        })
        .collect();
    let m = LiveManifest {
        channel: "final".into(),
        event: "e1".into(),
        part_target_ms: 500,
        segment_target_ms: 2000,
        epoch_ms: 1_800_000_000_000,
        tracks: vec![
            track("v0", TrackKind::Video, 720),
            track("v1", TrackKind::Video, 360),
            track("a0", TrackKind::Audio, 0),
        ],
        segments,
        discontinuity_sequence: 0,
        ended: false,
        breaks,
    };
    let fills: Vec<LiveFill<'_>> = m
        .breaks
        .iter()
        .zip(0u32..)
        .map(|(b, i)| LiveFill {
            break_id: b.id,
            plan_id: i,
            ads: vec![LiveAd {
                creative: "adcreative01",
                manifest: ad,
            }],
            slate: None,
        })
        .collect();
    c.bench_function("live LL-HLS playlist, 900 segments, shared", |b| {
        b.iter(|| media_playlist(black_box(&m), "v0", Blocking::default()).unwrap())
    });
    c.bench_function(
        "live LL-HLS playlist, 900 segments, 7 breaks with ads",
        |b| {
            b.iter(|| {
                let slots = Slots::new(black_box(&m), &fills);
                stitched_media_playlist(&m, "v0", Blocking::default(), &slots).unwrap()
            })
        },
    );
    c.bench_function("live MPD, 900 segments, shared", |b| {
        b.iter(|| mpd(black_box(&m), 1_800_001_800_000, 1800, "/live/time").unwrap())
    });
    c.bench_function("live MPD, 900 segments, 7 breaks with ads", |b| {
        b.iter(|| {
            let slots = Slots::new(black_box(&m), &fills);
            stitched_mpd(&m, 1_800_001_800_000, 1800, "/live/time", &slots).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
