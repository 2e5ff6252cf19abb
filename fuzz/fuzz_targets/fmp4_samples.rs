//! The fMP4 sample reader, the trick-mode fragment writer and the TS muxer
//! fed from them never panic on any bytes, and every keyframe fragment that
//! is written reads back as the one sample it was cut from.
#![no_main]

use cascade_packager::fmp4::{
    first_sample_end, keyframe_fragment, parse_fragment, parse_init, CodecConfig, TrackConfig,
};
use cascade_packager::ts::{mux_segment, AudioSample, VideoSample};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Two bytes of init segment length, the init segment, then the fragment.
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (init, fragment) = rest.split_at(split);
    let _ = first_sample_end(fragment, 0);
    let Ok(cfg) = parse_init(init) else {
        return;
    };
    let _ = first_sample_end(fragment, cfg.default_sample_size);
    let Ok(samples) = parse_fragment(&cfg, fragment) else {
        return;
    };

    if let Ok(key) = keyframe_fragment(&cfg, fragment, 1) {
        let back = parse_fragment(&cfg, &key).expect("a keyframe fragment reads back");
        assert_eq!(back.len(), 1);
        let (first, one) = (samples[0], back[0]);
        assert_eq!((one.dts, one.cts_offset), (first.dts, first.cts_offset));
        let total: u64 = samples.iter().map(|s| u64::from(s.duration)).sum();
        assert_eq!(u64::from(one.duration), total);
        assert!(one.keyframe);
        assert_eq!(
            &key[one.offset..one.offset + one.size],
            &fragment[first.offset..first.offset + first.size]
        );
    }

    // parse_fragment promises every sample lies inside the fragment, so the
    // slicing below panics (and the fuzzer reports it) if that ever breaks.
    match &cfg.codec {
        CodecConfig::Avc(avc) => {
            let video: Vec<_> = samples
                .iter()
                .map(|s| VideoSample {
                    dts: to_90k(&cfg, i128::from(s.dts)),
                    pts: to_90k(&cfg, i128::from(s.dts) + i128::from(s.cts_offset)),
                    keyframe: s.keyframe,
                    data: &fragment[s.offset..s.offset + s.size],
                })
                .collect();
            let _ = mux_segment(Some((avc, video.as_slice())), None);
        }
        CodecConfig::Aac(aac) => {
            let audio: Vec<_> = samples
                .iter()
                .map(|s| AudioSample {
                    pts: to_90k(&cfg, i128::from(s.dts) + i128::from(s.cts_offset)),
                    data: &fragment[s.offset..s.offset + s.size],
                })
                .collect();
            let _ = mux_segment(None, Some((aac, audio.as_slice())));
        }
        _ => {}
    }
});

/// Track ticks to 90 kHz from presentation zero, clamped at 0; the muxer
/// keeps 33 bits of whatever it is given.
fn to_90k(cfg: &TrackConfig, ticks: i128) -> u64 {
    let rel = (ticks - i128::from(cfg.media_time)).max(0);
    let t = rel * 90_000 / i128::from(cfg.timescale.max(1));
    u64::try_from(t).unwrap_or(u64::MAX)
}
