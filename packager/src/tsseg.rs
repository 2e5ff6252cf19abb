//! An MPEG-TS segment from CMAF fragments: the samples are read out of the
//! video and audio fragments, their times moved to 90 kHz presentation
//! time, and muxed by [`crate::ts`].

use crate::fmp4::{self, CodecConfig, TrackConfig};
use crate::ts::{self, AudioSample, VideoSample};
use crate::Error;

/// Presentation time zero is PTS 900000 (10 s) in every TS segment, so the
/// decode times of the first frames, which run ahead of their presentation,
/// stay positive. HLS subtitle segments of the TS timeline map their local
/// time zero to this value (`X-TIMESTAMP-MAP=MPEGTS:900000`).
pub(crate) const TS_OFFSET: u64 = 900_000;

/// Muxes one segment from a video (init, fragment) pair and an audio one;
/// either may be absent.
pub(crate) fn segment(
    video: Option<(&[u8], &[u8])>,
    audio: Option<(&[u8], &[u8])>,
) -> Result<Vec<u8>, Error> {
    let video = match video {
        Some((init, frag)) => {
            let cfg = fmp4::parse_init(init)?;
            let CodecConfig::Avc(avc) = &cfg.codec else {
                return Err(Error::Unsupported("TS segments carry H.264 video only"));
            };
            let samples = fmp4::parse_fragment(&cfg, frag)?;
            // A CMAF fragment may present a frame before its decode time
            // (negative composition offsets); a TS decoder may not. Decode
            // times move back by the largest such lead, which is the
            // encoder's reorder delay and the same in every segment.
            let lead = samples
                .iter()
                .map(|s| -s.cts_offset)
                .max()
                .unwrap_or(0)
                .max(0);
            let samples = samples
                .iter()
                .map(|s| {
                    let dts = i128::from(s.dts);
                    Ok(VideoSample {
                        dts: to_90k(&cfg, dts - i128::from(lead))?,
                        pts: to_90k(&cfg, dts + i128::from(s.cts_offset))?,
                        keyframe: s.keyframe,
                        data: bytes(frag, s.offset, s.size)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Some((avc.clone(), samples))
        }
        None => None,
    };
    let audio = match audio {
        Some((init, frag)) => {
            let cfg = fmp4::parse_init(init)?;
            let CodecConfig::Aac(aac) = cfg.codec else {
                return Err(Error::Unsupported("TS segments carry AAC audio only"));
            };
            let samples = fmp4::parse_fragment(&cfg, frag)?
                .iter()
                .map(|s| {
                    Ok(AudioSample {
                        pts: to_90k(&cfg, i128::from(s.dts) + i128::from(s.cts_offset))?,
                        data: bytes(frag, s.offset, s.size)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Some((aac, samples))
        }
        None => None,
    };
    ts::mux_segment(
        video.as_ref().map(|(c, s)| (c, s.as_slice())),
        audio.as_ref().map(|(c, s)| (c, s.as_slice())),
    )
}

/// A decode-timeline tick of the track as a 90 kHz TS timestamp: the edit
/// list's media time is presentation zero, which is [`TS_OFFSET`].
fn to_90k(cfg: &TrackConfig, ticks: i128) -> Result<u64, Error> {
    let rel = ticks - i128::from(cfg.media_time);
    let t = i128::from(TS_OFFSET) + (rel * 90_000).div_euclid(i128::from(cfg.timescale.max(1)));
    u64::try_from(t).map_err(|_| Error::Malformed("sample time before the TS timeline"))
}

fn bytes(frag: &[u8], offset: usize, size: usize) -> Result<&[u8], Error> {
    frag.get(offset..offset.checked_add(size).ok_or(Error::Truncated)?)
        .ok_or(Error::Truncated)
}
