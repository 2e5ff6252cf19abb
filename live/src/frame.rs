//! Frames as the segmenter takes them, whatever protocol brought them:
//! H.264 in length-prefixed NAL units with its `avcC`, AAC raw frames with
//! their AudioSpecificConfig, times at 90 kHz. Pure; checks lengths, never
//! panics.

use bytes::Bytes;

/// One unit of media from an encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A new H.264 decoder configuration (the body of `avcC`).
    VideoConfig(Bytes),
    /// A new AAC AudioSpecificConfig.
    AudioConfig(Bytes),
    /// An H.264 access unit.
    Video {
        /// Decode time, 90 kHz.
        dts: i64,
        /// Presentation minus decode time, 90 kHz.
        cts: i32,
        /// An IDR frame: a segment may start here.
        keyframe: bool,
        /// NAL units, each behind a 4-byte length.
        data: Bytes,
    },
    /// One AAC frame (1024 samples).
    Audio {
        /// Presentation time, 90 kHz.
        pts: i64,
        /// The raw frame, without ADTS.
        data: Bytes,
    },
}

/// The frame an FLV video tag body carries (`None` for an end of sequence
/// or a tag too short to hold one).
pub fn from_flv_video(timestamp_ms: u32, tag: &Bytes) -> Option<Frame> {
    let header = tag.get(..5)?;
    let keyframe = header[0] >> 4 == 1;
    match header[1] {
        0 => Some(Frame::VideoConfig(tag.slice(5..))),
        1 => {
            // A signed 24-bit composition time, in milliseconds.
            let raw =
                (u32::from(header[2]) << 16) | (u32::from(header[3]) << 8) | u32::from(header[4]);
            let cts_ms = ((raw << 8) as i32) >> 8;
            Some(Frame::Video {
                dts: i64::from(timestamp_ms) * 90,
                cts: cts_ms.saturating_mul(90),
                keyframe,
                data: tag.slice(5..),
            })
        }
        _ => None,
    }
}

/// The frame an FLV audio tag body carries.
pub fn from_flv_audio(timestamp_ms: u32, tag: &Bytes) -> Option<Frame> {
    match tag.get(1)? {
        0 => Some(Frame::AudioConfig(tag.slice(2..))),
        1 => Some(Frame::Audio {
            pts: i64::from(timestamp_ms) * 90,
            data: tag.slice(2..),
        }),
        _ => None,
    }
}

/// What an `avcC` says about the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picture {
    /// Pixels, after cropping.
    pub width: u32,
    /// Pixels, after cropping.
    pub height: u32,
}

/// The picture size from the first SPS of an `avcC`, if it parses.
pub fn picture(avcc: &[u8]) -> Option<Picture> {
    // avcC: version, profile, compat, level, length size, SPS count, then
    // each SPS behind a 16-bit length.
    if avcc.first() != Some(&1) {
        return None;
    }
    let count = avcc.get(5)? & 0x1f;
    if count == 0 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*avcc.get(6)?, *avcc.get(7)?]));
    let sps = avcc.get(8..8usize.checked_add(len)?)?;
    // h264-reader 0.7 underflows on a unit shorter than two bytes; an SPS
    // is never shorter than four.
    if sps.len() < 4 {
        return None;
    }
    let rbsp = h264_reader::rbsp::decode_nal(sps).ok()?;
    let sps = h264_reader::nal::sps::SeqParameterSet::from_bits(h264_reader::rbsp::BitReader::new(
        &rbsp[..],
    ))
    .ok()?;
    let (width, height) = sps.pixel_dimensions().ok()?;
    Some(Picture { width, height })
}

/// An `avcC` made from the SPS and PPS carried in a frame's own NAL units
/// (4-byte lengths), for encoders whose sequence header is missing or
/// unreadable but that repeat their parameter sets in the stream.
pub fn inband_avcc(data: &[u8]) -> Option<Bytes> {
    let (mut sps, mut pps) = (None, None);
    let mut rest = data;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let nal = rest.get(4..4usize.checked_add(len)?)?;
        match nal.first().map(|h| h & 0x1f) {
            Some(7) => sps = Some(nal),
            Some(8) => pps = Some(nal),
            _ => {}
        }
        rest = &rest[4 + len..];
    }
    let (sps, pps) = (sps?, pps?);
    if sps.len() < 4 || sps.len() > 0xffff || pps.len() > 0xffff {
        return None;
    }
    let mut a = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
    a.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    a.extend_from_slice(sps);
    a.push(1);
    a.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    a.extend_from_slice(pps);
    picture(&a).map(|_| Bytes::from(a))
}

/// The sample rate and channel count an AudioSpecificConfig names.
pub fn audio_format(asc: &[u8]) -> Option<(u32, u16)> {
    const RATES: [u32; 13] = [
        96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025,
        8_000, 7_350,
    ];
    let b0 = *asc.first()?;
    let b1 = *asc.get(1)?;
    let index = ((b0 & 0x07) << 1) | (b1 >> 7);
    let rate = *RATES.get(usize::from(index))?;
    let channels = u16::from((b1 >> 3) & 0x0f);
    (channels > 0).then_some((rate, channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flv_tags_become_frames() {
        let tag = Bytes::from_static(&[0x17, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 1, 0x65]);
        assert_eq!(
            from_flv_video(40, &tag),
            Some(Frame::Video {
                dts: 3600,
                cts: -180,
                keyframe: true,
                data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
            })
        );
        let cfg = Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64]);
        assert_eq!(
            from_flv_video(0, &cfg),
            Some(Frame::VideoConfig(Bytes::from_static(&[1, 0x64])))
        );
        assert_eq!(from_flv_video(0, &Bytes::from_static(&[0x17, 1])), None);
        let aac = Bytes::from_static(&[0xaf, 1, 9, 9]);
        assert_eq!(
            from_flv_audio(1000, &aac),
            Some(Frame::Audio {
                pts: 90_000,
                data: Bytes::from_static(&[9, 9]),
            })
        );
        assert_eq!(audio_format(&[0x11, 0x90]), Some((48_000, 2)));
        assert_eq!(audio_format(&[0x12, 0x10]), Some((44_100, 2)));
        assert_eq!(audio_format(&[0x17, 0x90]), None);
    }

    #[test]
    fn picture_size_from_an_sps() {
        // 1280x720 High profile SPS as x264 writes it.
        let sps = [
            0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00,
            0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
        ];
        let mut avcc = vec![1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, sps.len() as u8];
        avcc.extend_from_slice(&sps);
        avcc.extend_from_slice(&[1, 0, 4, 0x68, 0xeb, 0xe3, 0xcb]);
        assert_eq!(
            picture(&avcc),
            Some(Picture {
                width: 1280,
                height: 720
            })
        );
        assert_eq!(picture(&avcc[..10]), None);
        assert_eq!(picture(&[]), None);

        // The same parameter sets in a frame (an encoder with no sequence header).
        let mut frame = Vec::new();
        for nal in [&sps[..], &[0x68, 0xeb, 0xe3, 0xcb][..], &[0x65, 0x88][..]] {
            frame.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            frame.extend_from_slice(nal);
        }
        assert_eq!(inband_avcc(&frame).as_deref(), Some(&avcc[..]));
        assert_eq!(inband_avcc(&frame[..20]), None);
    }
}
