//! The first bytes of FLV audio and video tags (what RTMP carries): which
//! codec, and whether a video frame is a keyframe or a codec configuration.
//! Pure; checks lengths, never panics.

/// What a video tag holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Video {
    /// H.264: its decoder configuration (`avcC`).
    AvcConfig,
    /// H.264 frames.
    Avc {
        /// A keyframe (IDR): a segment may start here.
        keyframe: bool,
    },
    /// The end of the H.264 sequence.
    AvcEnd,
}

/// What an audio tag holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audio {
    /// AAC: its `AudioSpecificConfig`.
    AacConfig,
    /// AAC frames.
    Aac,
}

/// Why a tag is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// Not H.264 (named).
    VideoCodec(&'static str),
    /// Not AAC (named).
    AudioCodec(&'static str),
    /// Too short to say.
    Truncated,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsupported::VideoCodec(c) => {
                write!(f, "video codec {c} is not supported: publish H.264")
            }
            Unsupported::AudioCodec(c) => {
                write!(f, "audio codec {c} is not supported: publish AAC")
            }
            Unsupported::Truncated => f.write_str("a media message too short to read"),
        }
    }
}

/// Reads a video tag's header.
pub fn video(tag: &[u8]) -> Result<Video, Unsupported> {
    let Some(&first) = tag.first() else {
        return Err(Unsupported::Truncated);
    };
    // Enhanced RTMP (HEVC, AV1… by FourCC) sets the top bit.
    if first & 0x80 != 0 {
        return Err(Unsupported::VideoCodec("enhanced RTMP (HEVC, AV1, VP9)"));
    }
    let frame_type = first >> 4;
    match first & 0x0f {
        7 => {}
        2 => return Err(Unsupported::VideoCodec("Sorenson H.263")),
        3 => return Err(Unsupported::VideoCodec("Screen video")),
        4 | 5 => return Err(Unsupported::VideoCodec("VP6")),
        6 => return Err(Unsupported::VideoCodec("Screen video 2")),
        12 => return Err(Unsupported::VideoCodec("HEVC")),
        _ => return Err(Unsupported::VideoCodec("unknown")),
    }
    match tag.get(1) {
        Some(0) => Ok(Video::AvcConfig),
        Some(1) => Ok(Video::Avc {
            keyframe: frame_type == 1,
        }),
        Some(2) => Ok(Video::AvcEnd),
        Some(_) => Err(Unsupported::VideoCodec("H.264 with an unknown packet type")),
        None => Err(Unsupported::Truncated),
    }
}

/// Reads an audio tag's header.
pub fn audio(tag: &[u8]) -> Result<Audio, Unsupported> {
    let Some(&first) = tag.first() else {
        return Err(Unsupported::Truncated);
    };
    match first >> 4 {
        10 => {}
        2 => return Err(Unsupported::AudioCodec("MP3")),
        0 | 3 => return Err(Unsupported::AudioCodec("PCM")),
        4..=6 => return Err(Unsupported::AudioCodec("Nellymoser")),
        7 | 8 => return Err(Unsupported::AudioCodec("G.711")),
        11 => return Err(Unsupported::AudioCodec("Speex")),
        _ => return Err(Unsupported::AudioCodec("unknown")),
    }
    match tag.get(1) {
        Some(0) => Ok(Audio::AacConfig),
        Some(1) => Ok(Audio::Aac),
        Some(_) => Err(Unsupported::AudioCodec("AAC with an unknown packet type")),
        None => Err(Unsupported::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(video(&[0x17, 0]), Ok(Video::AvcConfig));
        assert_eq!(
            video(&[0x17, 1, 0, 0, 0]),
            Ok(Video::Avc { keyframe: true })
        );
        assert_eq!(video(&[0x27, 1]), Ok(Video::Avc { keyframe: false }));
        assert_eq!(
            video(&[0x22, 0]),
            Err(Unsupported::VideoCodec("Sorenson H.263"))
        );
        assert!(matches!(video(&[0x90]), Err(Unsupported::VideoCodec(_))));
        assert_eq!(video(&[]), Err(Unsupported::Truncated));
        assert_eq!(video(&[0x17]), Err(Unsupported::Truncated));
        assert_eq!(audio(&[0xaf, 0]), Ok(Audio::AacConfig));
        assert_eq!(audio(&[0xaf, 1, 9]), Ok(Audio::Aac));
        assert_eq!(audio(&[0x2f, 1]), Err(Unsupported::AudioCodec("MP3")));
        assert_eq!(audio(&[]), Err(Unsupported::Truncated));
    }

    #[test]
    fn any_bytes_are_read_without_panic() {
        for a in 0..=255u8 {
            for b in [None, Some(0u8), Some(1), Some(2), Some(255)] {
                let tag: Vec<u8> = std::iter::once(a).chain(b).collect();
                let _ = video(&tag);
                let _ = audio(&tag);
            }
        }
    }
}
