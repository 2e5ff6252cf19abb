//! Packager tests on CMAF made at test time by the project's own transcoder.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicBool;

use cascade_origin::transcode::{self, Rung, Source, Spec};
use cascade_packager::{index_bytes, package, AssetManifest, Output, Track, TrackKind, View};

/// A 4 s, 320x180 clip with a moving picture and a tone, transcoded to two rungs.
fn tiny_title() -> (tempfile::TempDir, AssetManifest) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec {
        source: Source::Lavfi(
            "testsrc2=s=320x180:r=25:d=4[out0];sine=f=440:sample_rate=44100:d=4[out1]".into(),
        ),
        out_dir: dir.path().to_path_buf(),
        ladder: vec![
            Rung {
                height: 180,
                kbps: 300,
            },
            Rung {
                height: 120,
                kbps: 150,
            },
        ],
        preset: "ultrafast".into(),
        segment_secs: 2,
        extra_audio: Vec::new(),
        extra_codecs: Vec::new(),
        fill_ladder: false,
        loudness_lufs: None,
        watermark: None,
    };
    let outcome =
        transcode::transcode(&spec, &mut |_| {}, &AtomicBool::new(false)).expect("transcode");
    let tracks = outcome
        .files
        .iter()
        .map(|w| {
            let bytes = std::fs::read(dir.path().join(&w.file)).expect("read mezzanine");
            let index = index_bytes(&bytes).expect("index");
            Track::from_index(&w.track, &w.file, &index)
        })
        .collect();
    (dir, AssetManifest::new("tiny", tracks))
}

#[test]
fn tiny_title_packages() {
    let (dir, m) = tiny_title();
    assert_eq!(m.videos().count(), 2);
    assert_eq!(m.audios().count(), 1);
    assert!((m.duration - 4.0).abs() < 0.2, "duration {}", m.duration);

    // Every rung has the same fragment boundaries: 2 s each.
    let v: Vec<&Track> = m.videos().collect();
    assert_eq!(v[0].fragments.len(), 2);
    for (a, b) in v[0].fragments.iter().zip(&v[1].fragments) {
        let ta = a.start as f64 / f64::from(v[0].timescale);
        let tb = b.start as f64 / f64::from(v[1].timescale);
        assert!((ta - tb).abs() < 1e-6);
    }
    assert!(
        v[0].codec.starts_with("avc1.64")
            || v[0].codec.starts_with("avc1.42")
            || v[0].codec.starts_with("avc1.4d"),
        "{}",
        v[0].codec
    );
    assert_eq!((v[0].width, v[0].height), (320, 180));
    assert_eq!(v[1].height, 120);
    assert!((v[0].frame_rate - 25.0).abs() < 0.01);
    let a = m.audios().next().unwrap();
    assert_eq!(a.codec, "mp4a.40.2");
    assert_eq!(a.sample_rate, 48000);

    // The manifest survives a JSON round trip.
    let again = AssetManifest::from_json(&m.to_json()).unwrap();
    assert_eq!(again, m);

    let master =
        String::from_utf8(package(&m, &Output::Multivariant, &View::default(), &[]).unwrap())
            .unwrap();
    assert!(master.contains("#EXT-X-STREAM-INF"), "{master}");
    assert!(master.contains("RESOLUTION=320x180"));
    assert!(master.contains("mp4a.40.2"));
    let mpd = String::from_utf8(package(&m, &Output::Mpd, &View::default(), &[]).unwrap()).unwrap();
    assert!(mpd.contains("media=\"$RepresentationID$/$Number$.m4s\""));

    // Segments are the mezzanine's fragments, checked against the manifest.
    for t in &m.tracks {
        let file = std::fs::read(dir.path().join(&t.file)).unwrap();
        let init = Output::Init(t.id.clone());
        let r = init.sources(&m).unwrap()[0].range;
        let bytes = &file[r.offset as usize..(r.offset + r.length) as usize];
        assert_eq!(
            package(&m, &init, &View::default(), &[bytes]).unwrap(),
            bytes
        );
        for n in 1..=t.fragments.len() as u64 {
            let out = Output::Segment(t.id.clone(), n);
            let r = out.sources(&m).unwrap()[0].range;
            let bytes = &file[r.offset as usize..(r.offset + r.length) as usize];
            assert_eq!(
                package(&m, &out, &View::default(), &[bytes]).unwrap().len(),
                bytes.len()
            );
            // The wrong bytes are refused, not passed on.
            assert!(package(&m, &out, &View::default(), &[&bytes[1..]]).is_err());
        }
        assert!(Output::Segment(t.id.clone(), t.fragments.len() as u64 + 1)
            .sources(&m)
            .is_err());
        if t.kind == TrackKind::Audio {
            let pl = String::from_utf8(
                package(
                    &m,
                    &Output::MediaPlaylist(t.id.clone()),
                    &View::default(),
                    &[],
                )
                .unwrap(),
            )
            .unwrap();
            assert!(pl.contains("#EXT-X-MAP:URI=\"a0/init.mp4\""));
        }
    }
}

/// Damaged mezzanine (truncated anywhere, any byte changed) is refused or
/// indexed, never a panic. A cheap, deterministic cousin of the fuzz targets.
#[test]
fn indexer_survives_damaged_files() {
    let (dir, m) = tiny_title();
    let file = std::fs::read(dir.path().join(&m.tracks[0].file)).unwrap();
    let moov_end = m.tracks[0].init.length as usize;
    let first_frag_end = (m.tracks[0].fragments[0].range.offset + 4096) as usize;
    for cut in (0..first_frag_end.min(file.len())).step_by(7) {
        let _ = index_bytes(&file[..cut]);
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..4000 {
        let mut damaged = file[..first_frag_end.min(file.len())].to_vec();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pos = (seed as usize) % moov_end.max(1);
        damaged[pos] = (seed >> 32) as u8 ^ (i as u8);
        let _ = index_bytes(&damaged);
    }
    let json = m.to_json();
    for cut in (0..json.len()).step_by(13) {
        assert!(AssetManifest::from_json(&json[..cut]).is_err());
    }
}
