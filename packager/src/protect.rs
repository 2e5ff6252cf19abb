//! Packaging of protected titles: the same outputs as [`crate::package`],
//! with samples encrypted ([`crate::cenc`]), TS segments under AES-128, and
//! manifests that say so ([`crate::drm`]).
//!
//! URL layout under `/vod/{asset}/` for a protected title:
//!
//! | path | what |
//! |---|---|
//! | `master.m3u8` | fMP4 variants under `cbcs/` (`SAMPLE-AES`), or with `?format=ts` TS variants under AES-128 |
//! | `manifest.mpd` | DASH, `cbcs` segments under `cbcs/` |
//! | `cbcs/manifest.mpd`, `cenc/manifest.mpd` | DASH in one scheme, segments beside it |
//! | `cbcs/{track}.m3u8` | HLS media playlist with the track's `EXT-X-KEY` tags |
//! | `{scheme}/{track}/init.mp4`, `{scheme}/{track}/{n}.m4s`, `{n}.key.m4s` | encrypted media |
//! | `{scheme}/{track}.vtt`, `{scheme}/{track}/{n}.vtt` | subtitles (clear) |
//! | `ts/…` | TS playlists with `EXT-X-KEY:METHOD=AES-128`, segments encrypted whole |
//!
//! The clear media paths of a protected title fail with [`Error::Protected`].

use aes::cipher::{BlockEncrypt, KeyInit};

use crate::cenc::{hex, protect_fragment, protect_init, Scheme};
use crate::drm::Drm;
use crate::manifest::TrackKind;
use crate::view::Format;
use crate::{dash, hls, AssetManifest, Error, Output, Source, View};

/// A path under `/vod/{asset}/`, with the scheme directory it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedOutput {
    /// `cbcs/…` or `cenc/…`; `None` for the top level and `ts/…`.
    pub scheme: Option<Scheme>,
    /// The output within.
    pub output: Output,
}

impl ProtectedOutput {
    /// Parses the part of a path after `/vod/{asset}/`, allowing a scheme
    /// directory in front of the outputs that can live there.
    pub fn parse(rest: &str) -> Option<ProtectedOutput> {
        if let Some((dir, tail)) = rest.split_once('/') {
            if let Some(scheme) = Scheme::parse(dir) {
                let output = Output::parse(tail)?;
                let ok = match &output {
                    Output::Mpd
                    | Output::Init(_)
                    | Output::Segment(..)
                    | Output::KeySegment(..)
                    | Output::Subtitles(_)
                    | Output::SubtitleSegment(_, _, Format::Fmp4) => true,
                    // HLS plays cbcs only.
                    Output::MediaPlaylist(_) => scheme == Scheme::Cbcs,
                    _ => false,
                };
                return ok.then_some(ProtectedOutput {
                    scheme: Some(scheme),
                    output,
                });
            }
        }
        Output::parse(rest).map(|output| ProtectedOutput {
            scheme: None,
            output,
        })
    }
}

/// The mezzanine bytes a protected output needs: as [`Output::sources`],
/// with the init segment in front of an encrypted segment (its codec
/// configuration says where the NAL units are).
pub fn protected_sources<'m>(
    m: &'m AssetManifest,
    p: &ProtectedOutput,
) -> Result<Vec<Source<'m>>, Error> {
    let mut out = p.output.sources(m)?;
    if let (Some(_), Output::Segment(t, _)) = (p.scheme, &p.output) {
        let t = m.track(t).ok_or(Error::NotFound)?;
        out.insert(
            0,
            Source {
                file: &t.file,
                range: t.init,
            },
        );
    }
    Ok(out)
}

/// Makes the bytes of a protected title's output. `sources` holds what
/// [`protected_sources`] named, in its order.
pub fn package_protected(
    m: &AssetManifest,
    p: &ProtectedOutput,
    view: &View,
    sources: &[&[u8]],
    drm: &Drm,
) -> Result<Vec<u8>, Error> {
    let wanted = protected_sources(m, p)?;
    if wanted.len() != sources.len()
        || wanted
            .iter()
            .zip(sources)
            .any(|(w, s)| s.len() as u64 != w.range.length)
    {
        return Err(Error::Malformed("source bytes do not match the manifest"));
    }
    let track = |t: &str| m.track(t).ok_or(Error::NotFound);
    let Some(scheme) = p.scheme else {
        return top_level(m, &p.output, view, sources, drm);
    };
    match &p.output {
        Output::Mpd => Ok(dash::mpd_protected(m, view, Some((drm, scheme, "")))?.into_bytes()),
        Output::MediaPlaylist(t) => {
            let t = track(t)?;
            let range = view.segments(m);
            Ok(match t.kind {
                TrackKind::Subtitle => hls::subtitle_playlist(m, t, range),
                _ => {
                    let key = drm.keys.get(&t.id).ok_or(Error::NotFound)?;
                    hls::media_playlist(t, range, &drm.hls_keys(&key.kid, false))
                }
            }
            .into_bytes())
        }
        Output::Init(t) => {
            let tp = drm.track(m, t, scheme)?;
            let pssh = drm.pssh_boxes(&tp.key.kid, scheme);
            protect_init(sources[0], &tp, &pssh)
        }
        Output::Segment(t, n) => {
            let tp = drm.track(m, t, scheme)?;
            protect_fragment(sources[0], sources[1], &tp, *n)
        }
        Output::KeySegment(t, n) => {
            let tp = drm.track(m, t, scheme)?;
            let clear = crate::package(m, &p.output, view, sources)?;
            protect_fragment(sources[0], &clear, &tp, *n)
        }
        Output::Subtitles(_) | Output::SubtitleSegment(..) => {
            crate::package(m, &p.output, view, sources)
        }
        _ => Err(Error::NotFound),
    }
}

/// Outputs at the top level (and under `ts/`) of a protected title.
fn top_level(
    m: &AssetManifest,
    output: &Output,
    view: &View,
    sources: &[&[u8]],
    drm: &Drm,
) -> Result<Vec<u8>, Error> {
    match output {
        Output::Multivariant => Ok(hls::multivariant_protected(m, view, Some(drm))?.into_bytes()),
        Output::Mpd => {
            Ok(dash::mpd_protected(m, view, Some((drm, Scheme::Cbcs, "cbcs/")))?.into_bytes())
        }
        Output::TsPlaylist(ids) => {
            let range = view.segments(m);
            match ts_key(m, ids, drm)? {
                None => crate::package(m, output, view, sources),
                Some((timing, kid)) => {
                    let line = format!(
                        "#EXT-X-KEY:METHOD=AES-128,URI=\"../license/aes128/{}\"\n",
                        hex(&kid)
                    );
                    Ok(
                        hls::ts_playlist(ids, timing, range, Some((&line, drm.clear_segments)))
                            .into_bytes(),
                    )
                }
            }
        }
        Output::TsSegment(ids, n) => {
            let clear = crate::package(m, output, view, sources)?;
            let first = ids.split('.').next().unwrap_or(ids);
            let key = drm.keys.get(first).ok_or(Error::NotFound)?;
            if *n <= drm.clear_segments {
                return Ok(clear);
            }
            Ok(aes128_segment(&key.key, *n, &clear))
        }
        Output::Subtitles(_) | Output::SubtitleSegment(..) => {
            crate::package(m, output, view, sources)
        }
        // Clear media, and I-frame playlists whose ranges point into it.
        _ => Err(Error::Protected),
    }
}

/// The track that times a TS playlist and the KID of its key; `None` for
/// a subtitle playlist, which stays clear.
fn ts_key<'m>(
    m: &'m AssetManifest,
    ids: &str,
    drm: &Drm,
) -> Result<Option<(&'m crate::Track, [u8; 16])>, Error> {
    let first = ids.split('.').next().unwrap_or(ids);
    let t = m.track(first).ok_or(Error::NotFound)?;
    if t.kind == TrackKind::Subtitle {
        return Ok(None);
    }
    let key = drm.keys.get(first).ok_or(Error::NotFound)?;
    Ok(Some((t, key.kid)))
}

/// HLS AES-128: the whole segment in AES-128-CBC with PKCS#7 padding; the
/// IV is the segment's media sequence number (the playlist names none).
pub(crate) fn aes128_segment(key: &[u8; 16], sequence: u64, clear: &[u8]) -> Vec<u8> {
    let cipher = aes::Aes128::new(key.into());
    let pad = 16 - clear.len() % 16;
    let mut out = Vec::with_capacity(clear.len() + pad);
    out.extend_from_slice(clear);
    out.extend(std::iter::repeat_n(pad as u8, pad));
    let mut chain = [0u8; 16];
    chain[8..].copy_from_slice(&sequence.to_be_bytes());
    for block in out.chunks_exact_mut(16) {
        for (b, c) in block.iter_mut().zip(chain.iter()) {
            *b ^= c;
        }
        cipher.encrypt_block(aes::Block::from_mut_slice(block));
        chain.copy_from_slice(block);
    }
    out
}
