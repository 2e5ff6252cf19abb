//! Protected live channels: `cbcs` with keys that rotate.
//!
//! Time is cut into key periods of `period_secs` from the Unix epoch; a
//! segment belongs to the period its first frame's wall-clock time falls
//! in (its program date-time), so every edge puts it under the same key.
//! Each period's init segments carry that period's KID (`tenc`, `pssh`),
//! and playlists switch `EXT-X-MAP` and `EXT-X-KEY` where a period starts.
//! The next period's key is announced ahead: the multivariant playlist
//! lists it (`EXT-X-SESSION-KEY`) beside the current one, and licenses
//! carry both, so players hold it before the first segment under it.
//!
//! `cbcs` uses a constant IV, so a part encrypted alone and the same part
//! inside its whole segment are the same bytes: parts and segments agree.

use std::collections::BTreeMap;

use crate::cenc::{protect_fragment, protect_init, ContentKey, Scheme, TrackProtection};
use crate::drm::Drm;
use crate::live::LiveManifest;
use crate::mp4::BoxHeader;
use crate::Error;

/// The key period of a wall-clock time (Unix ms) under periods of
/// `period_secs`: what every edge and the origin agree a segment is under.
pub fn key_period(period_secs: u64, unix_ms: u64) -> u64 {
    unix_ms / 1000 / period_secs.max(1)
}

/// A protected channel's keys, by key period.
#[derive(Debug, Clone)]
pub struct LiveKeys {
    /// Seconds per key period.
    pub period_secs: u64,
    /// Keys by period number (Unix seconds / `period_secs`).
    pub keys: BTreeMap<u64, ContentKey>,
    /// The systems signalled (its `keys` are not used).
    pub drm: Drm,
}

impl LiveKeys {
    /// The key period of a wall-clock time (Unix ms).
    pub fn period_of(&self, unix_ms: u64) -> u64 {
        key_period(self.period_secs, unix_ms)
    }

    /// The key periods the manifest's window needs: each listed segment's,
    /// and the one after the live edge's (announced ahead).
    pub fn periods_needed(period_secs: u64, m: &LiveManifest) -> Vec<u64> {
        let mut out: Vec<u64> = m
            .segments
            .iter()
            .map(|s| key_period(period_secs, s.pdt_ms))
            .collect();
        if let Some(last) = m.segments.last() {
            out.push(key_period(period_secs, last.pdt_ms) + 1);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn key(&self, period: u64) -> Result<&ContentKey, Error> {
        self.keys.get(&period).ok_or(Error::NotFound)
    }

    /// How a period's media is protected.
    pub fn protection(&self, period: u64) -> Result<TrackProtection, Error> {
        Ok(TrackProtection {
            scheme: Scheme::Cbcs,
            key: self.key(period)?.clone(),
            track: 0,
            clear_segments: 0,
            variant_b: false,
        })
    }

    /// `EXT-X-KEY` (or `EXT-X-SESSION-KEY`) tags of a period's key.
    pub fn hls_key_tags(&self, period: u64, session: bool) -> Result<String, Error> {
        Ok(self.drm.hls_keys(&self.key(period)?.kid, session))
    }

    /// The multivariant playlist with the current and the next period's
    /// keys as `EXT-X-SESSION-KEY`s, for players to fetch licenses early.
    pub fn multivariant(&self, m: &LiveManifest) -> Result<String, Error> {
        let base = crate::live::multivariant(m)?;
        let mut keys = String::new();
        if let Some(last) = m.segments.last() {
            let now = self.period_of(last.pdt_ms);
            for p in [now, now + 1] {
                if self.keys.contains_key(&p) {
                    keys.push_str(&self.hls_key_tags(p, true)?);
                }
            }
        }
        // After the header lines, before the renditions.
        let at = base
            .find("#EXT-X-MEDIA")
            .or_else(|| base.find("#EXT-X-STREAM-INF"))
            .unwrap_or(base.len());
        let mut out = String::with_capacity(base.len() + keys.len());
        out.push_str(&base[..at]);
        out.push_str(&keys);
        out.push_str(&base[at..]);
        Ok(out)
    }

    /// A clear init segment under a period's key.
    pub fn init(&self, clear: &[u8], period: u64) -> Result<Vec<u8>, Error> {
        let p = self.protection(period)?;
        let pssh = self.drm.pssh_boxes(&p.key.kid, Scheme::Cbcs);
        protect_init(clear, &p, &pssh)
    }

    /// A part or a whole segment (one or more `moof`+`mdat` pairs) under a
    /// period's key; `init` is the track's clear init segment, `msn` the
    /// segment's number.
    pub fn media(
        &self,
        init: &[u8],
        media: &[u8],
        period: u64,
        msn: u64,
    ) -> Result<Vec<u8>, Error> {
        let p = self.protection(period)?;
        let mut out = Vec::with_capacity(media.len() + 1024);
        let mut moof: Option<usize> = None;
        let mut at = 0usize;
        while at < media.len() {
            let rest = &media[at..];
            let header = BoxHeader::parse(rest)?;
            let len = match header.size {
                Some(s) => usize::try_from(s).map_err(|_| Error::Truncated)?,
                None => rest.len(),
            };
            if (len as u64) < header.header_len || len > rest.len() {
                return Err(Error::Truncated);
            }
            let start = at;
            at += len;
            match &header.kind {
                b"moof" => moof = Some(start),
                b"mdat" => {
                    let Some(m_start) = moof.take() else {
                        return Err(Error::Malformed("mdat without its moof"));
                    };
                    out.extend_from_slice(&protect_fragment(init, &media[m_start..at], &p, msn)?);
                }
                // `styp`, `prft` and the like before a fragment go as they are.
                _ if moof.is_none() => out.extend_from_slice(&media[start..at]),
                _ => {}
            }
        }
        if moof.is_some() {
            return Err(Error::Malformed("moof without its mdat"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmaf::{fragment, init_segment, InitTrack, OutSample};
    use crate::live::Blocking;

    const AVCC: [u8; 17] = [
        1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 2, 0x68, 0xee,
    ];

    fn keys(period_secs: u64, periods: std::ops::Range<u64>) -> LiveKeys {
        LiveKeys {
            period_secs,
            keys: periods
                .map(|p| {
                    let b = (p % 251) as u8;
                    (
                        p,
                        ContentKey {
                            kid: [b; 16],
                            key: [b ^ 0x5a; 16],
                            iv: [0x10; 16],
                        },
                    )
                })
                .collect(),
            drm: Drm::default(),
        }
    }

    #[test]
    fn parts_encrypted_alone_make_the_segment_encrypted_whole() {
        let init = init_segment(&InitTrack::Avc {
            avcc: AVCC.to_vec(),
            width: 320,
            height: 180,
        });
        let mut sample = vec![0, 0, 0, 200, 0x65];
        sample.extend((1..200).map(|i| (i * 31 % 251) as u8));
        let s = OutSample {
            duration: 3000,
            cts_offset: 0,
            keyframe: true,
            data: &sample,
        };
        let part1 = fragment(1, 0, &[s, s]).unwrap();
        let part2 = fragment(2, 6000, &[s, s]).unwrap();
        let whole = [part1.clone(), part2.clone()].concat();
        let k = keys(10, 5..7);
        let a = k.media(&init, &part1, 5, 9).unwrap();
        let b = k.media(&init, &part2, 5, 9).unwrap();
        assert_eq!(
            k.media(&init, &whole, 5, 9).unwrap(),
            [a.clone(), b].concat()
        );
        assert_ne!(a, part1, "encrypted");
        // Another period, another key, other bytes.
        assert_ne!(k.media(&init, &part1, 6, 9).unwrap(), a);
        // No key for the period: refused, not served clear.
        assert!(k.media(&init, &part1, 7, 9).is_err());
        // A fragment cut short is an error.
        assert!(k.media(&init, &whole[..whole.len() - 3], 5, 9).is_err());
        // The init segment names the period's KID.
        let i5 = k.init(&init, 5).unwrap();
        assert!(i5.windows(16).any(|w| w == [5u8; 16]));
    }

    #[test]
    fn playlists_switch_keys_where_a_period_starts_and_announce_the_next() {
        // Segments every 2 s from Unix second 1,700,000,000; periods of 4 s.
        let m = crate::live::tests::manifest(5, 4, true);
        let first = 1_700_000_000 / 4;
        assert_eq!(
            LiveKeys::periods_needed(4, &m),
            vec![first, first + 1, first + 2, first + 3]
        );
        let k = keys(4, first..first + 4);
        let pl = crate::live::protected_media_playlist(&m, "v0", Blocking::default(), &k).unwrap();
        assert_eq!(
            pl.matches("#EXT-X-KEY:METHOD=SAMPLE-AES").count(),
            3,
            "{pl}"
        );
        for p in first..first + 3 {
            assert!(
                pl.contains(&format!("#EXT-X-MAP:URI=\"v0/init-0-k{p}.mp4\"")),
                "{pl}"
            );
        }
        assert!(!pl.contains("init-0.mp4"), "no clear init: {pl}");
        // The key comes before the map and the segments it covers.
        let key_at = pl.find("#EXT-X-KEY").unwrap();
        assert!(key_at < pl.find("#EXT-X-MAP").unwrap());
        let mv = k.multivariant(&m).unwrap();
        assert_eq!(mv.matches("#EXT-X-SESSION-KEY").count(), 2, "{mv}");
        let next = crate::cenc::hex(&k.keys[&(first + 3)].kid);
        assert!(
            mv.contains(&format!("KEYID=0x{next}")),
            "the next key is announced: {mv}"
        );
        // A window whose key is missing is not listed in the clear.
        let few = keys(4, first..first + 1);
        assert!(
            crate::live::protected_media_playlist(&m, "v0", Blocking::default(), &few).is_err()
        );
    }
}
