//! Elementary streams as a transport stream carries them, turned into the
//! form the segmenter takes: H.264 from Annex B (start codes, in-band
//! parameter sets) to length-prefixed NAL units and an `avcC`; AAC from
//! ADTS frames to raw frames and an AudioSpecificConfig. Pure; checks
//! lengths, never panics.

use bytes::Bytes;

use crate::frame::Frame;

/// The H.264 state of one stream: its parameter sets, for the `avcC`.
#[derive(Debug, Default)]
pub struct H264 {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    announced: Option<Vec<u8>>,
}

impl H264 {
    /// The frames one access unit (a PES payload) makes: a new `avcC` first
    /// when its parameter sets changed, then the frame itself.
    pub fn access_unit(&mut self, au: &[u8], dts: i64, pts: i64, out: &mut Vec<Frame>) {
        let mut data = Vec::with_capacity(au.len() + 16);
        let mut keyframe = false;
        for nal in nal_units(au) {
            let Some(&header) = nal.first() else { continue };
            match header & 0x1f {
                7 => self.sps = Some(nal.to_vec()),
                8 => self.pps = Some(nal.to_vec()),
                // Access unit delimiters and filler have no place in MP4.
                9 | 12 => {}
                t => {
                    keyframe |= t == 5;
                    let Ok(len) = u32::try_from(nal.len()) else {
                        continue;
                    };
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(nal);
                }
            }
        }
        if let Some(avcc) = self.avcc() {
            if self.announced.as_ref() != Some(&avcc) {
                self.announced = Some(avcc.clone());
                out.push(Frame::VideoConfig(Bytes::from(avcc)));
            }
        }
        if data.is_empty() || self.announced.is_none() {
            return;
        }
        out.push(Frame::Video {
            dts,
            cts: i32::try_from(pts - dts).unwrap_or(0),
            keyframe,
            data: Bytes::from(data),
        });
    }

    fn avcc(&self) -> Option<Vec<u8>> {
        let (sps, pps) = (self.sps.as_ref()?, self.pps.as_ref()?);
        if sps.len() < 4 || sps.len() > 0xffff || pps.len() > 0xffff {
            return None;
        }
        let mut a = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        a.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        a.extend_from_slice(sps);
        a.push(1);
        a.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        a.extend_from_slice(pps);
        Some(a)
    }
}

/// The NAL units of an Annex B byte stream (between start codes).
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |n| n - 3);
        // A four-byte start code leaves a zero behind; trailing zeros are
        // not part of the unit either.
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        units.push(&data[s..end]);
    }
    units.into_iter()
}

/// The AAC state of one stream: the configuration last announced.
#[derive(Debug, Default)]
pub struct Aac {
    announced: Option<[u8; 2]>,
}

impl Aac {
    /// The frames a PES payload of ADTS frames makes (the first at `pts`).
    pub fn adts(&mut self, mut data: &[u8], pts: i64, out: &mut Vec<Frame>) {
        let mut n = 0i64;
        while data.len() >= 7 {
            if data[0] != 0xff || data[1] & 0xf0 != 0xf0 {
                return;
            }
            let protection_absent = data[1] & 0x01 != 0;
            let profile = (data[2] >> 6) & 0x03;
            let rate_index = (data[2] >> 2) & 0x0f;
            let channels = ((data[2] & 0x01) << 2) | (data[3] >> 6);
            let len = (usize::from(data[3] & 0x03) << 11)
                | (usize::from(data[4]) << 3)
                | usize::from(data[5] >> 5);
            let header = if protection_absent { 7 } else { 9 };
            if len < header || len > data.len() || rate_index > 12 {
                return;
            }
            let object_type = profile + 1;
            let asc = [
                (object_type << 3) | (rate_index >> 1),
                ((rate_index & 1) << 7) | (channels << 3),
            ];
            if self.announced != Some(asc) {
                self.announced = Some(asc);
                out.push(Frame::AudioConfig(Bytes::copy_from_slice(&asc)));
            }
            let rate = crate::frame::audio_format(&asc).map_or(48_000, |(r, _)| i64::from(r));
            out.push(Frame::Audio {
                pts: pts + n * 1024 * 90_000 / rate,
                data: Bytes::copy_from_slice(&data[header..len]),
            });
            n += 1;
            data = &data[len..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_becomes_length_prefixed_with_an_avcc() {
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, // AUD
            0, 0, 0, 1, 0x67, 0x64, 0, 0x1f, 0xac, // SPS
            0, 0, 1, 0x68, 0xee, // PPS
            0, 0, 1, 0x65, 0x88, 0x80, 0, // IDR slice, a trailing zero
        ];
        let mut h = H264::default();
        let mut out = Vec::new();
        h.access_unit(&au, 900, 3600, &mut out);
        assert_eq!(
            out[0],
            Frame::VideoConfig(Bytes::from_static(&[
                1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 5, 0x67, 0x64, 0, 0x1f, 0xac, 1, 0, 2, 0x68, 0xee
            ]))
        );
        assert_eq!(
            out[1],
            Frame::Video {
                dts: 900,
                cts: 2700,
                keyframe: true,
                data: Bytes::from_static(&[0, 0, 0, 3, 0x65, 0x88, 0x80]),
            }
        );
        // The same parameter sets again: no new configuration.
        out.clear();
        h.access_unit(&au, 4500, 4500, &mut out);
        assert_eq!(out.len(), 1);
        // A frame before any parameter set is dropped.
        let mut fresh = H264::default();
        out.clear();
        fresh.access_unit(&[0, 0, 1, 0x41, 1], 0, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn adts_becomes_raw_frames_with_a_config() {
        // Two AAC-LC 48 kHz stereo frames of 2 payload bytes each.
        let frame = [0xff, 0xf1, 0x4c, 0x80, 0x01, 0x3f, 0xfc, 0xaa, 0xbb];
        let pes = [frame, frame].concat();
        let mut a = Aac::default();
        let mut out = Vec::new();
        a.adts(&pes, 90_000, &mut out);
        assert_eq!(
            out[0],
            Frame::AudioConfig(Bytes::from_static(&[0x11, 0x90]))
        );
        assert_eq!(
            out[2],
            Frame::Audio {
                pts: 90_000 + 1920,
                data: Bytes::from_static(&[0xaa, 0xbb]),
            }
        );
        assert_eq!(out.len(), 3);
        // Garbage stops the walk without a panic.
        out.clear();
        a.adts(&[0xff, 0xf1, 0x4c, 0x80, 0xff, 0xff, 0xfc], 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn any_bytes_are_read_without_panic() {
        let mut h = H264::default();
        let mut a = Aac::default();
        let mut out = Vec::new();
        for seed in 0..2000u32 {
            let bytes: Vec<u8> = (0..(seed % 97))
                .map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503) >> 13) as u8)
                .collect();
            h.access_unit(&bytes, 0, 0, &mut out);
            a.adts(&bytes, 0, &mut out);
        }
    }
}
