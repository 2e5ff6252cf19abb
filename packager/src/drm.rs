//! Signalling of protected media for DRM systems: `pssh` boxes for init
//! segments, `ContentProtection` elements for MPDs and `EXT-X-KEY` /
//! `EXT-X-SESSION-KEY` tags for HLS, for ClearKey, Widevine, PlayReady and
//! FairPlay. Cascade serves ClearKey licenses itself; for the commercial
//! systems it writes what their clients need and the license URLs the
//! operator configured, so a commercial license service that holds the same
//! keys (exported as CPIX) plugs in without code changes.

use std::collections::BTreeMap;
use std::fmt::Write;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::cenc::{hex, ContentKey, Scheme, TrackProtection};
use crate::{AssetManifest, Error};

/// Widevine's system id.
pub const WIDEVINE: [u8; 16] = uuid(0xedef8ba979d64acea3c827dcd51d21ed);
/// PlayReady's system id.
pub const PLAYREADY: [u8; 16] = uuid(0x9a04f07998404286ab92e65be0885f95);
/// The W3C common system id (ClearKey in `pssh` boxes).
pub const CLEARKEY: [u8; 16] = uuid(0x1077efecc0b24d02ace33c1e52e2fb4b);
/// The DASH-IF ClearKey scheme of `ContentProtection`.
const CLEARKEY_DASH: &str = "urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e";

const fn uuid(v: u128) -> [u8; 16] {
    v.to_be_bytes()
}

/// The DRM systems a title is signalled for, and their license URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Systems {
    /// Widevine: `pssh` and `ContentProtection`; its license proxy URL.
    pub widevine: Option<String>,
    /// PlayReady: `pssh`, `mspr:pro` and `ContentProtection`; its license URL.
    pub playready: Option<String>,
    /// FairPlay: `skd://` key tags in HLS; the license (key server) URL
    /// the player is told about out of band.
    pub fairplay: Option<String>,
}

/// A protected title as the packager needs it: which key each track uses,
/// the clear lead, and the systems to signal.
#[derive(Debug, Clone)]
pub struct Drm {
    /// Track id to its content key (tracks of one rung group share one).
    pub keys: BTreeMap<String, ContentKey>,
    /// Segments from the start left clear (0: none).
    pub clear_segments: u64,
    /// Commercial systems to signal besides ClearKey.
    pub systems: Systems,
}

impl Drm {
    /// How track `id` (the manifest's) is protected under `scheme`.
    pub fn track(
        &self,
        m: &AssetManifest,
        id: &str,
        scheme: Scheme,
    ) -> Result<TrackProtection, Error> {
        let key = self.keys.get(id).ok_or(Error::NotFound)?.clone();
        let index = m
            .tracks
            .iter()
            .position(|t| t.id == id)
            .ok_or(Error::NotFound)?;
        Ok(TrackProtection {
            scheme,
            key,
            track: u8::try_from(index).unwrap_or(u8::MAX),
            clear_segments: self.clear_segments,
        })
    }

    /// The `pssh` boxes of an init segment whose track uses `kid`.
    pub fn pssh_boxes(&self, kid: &[u8; 16], scheme: Scheme) -> Vec<Vec<u8>> {
        let mut out = vec![pssh(&CLEARKEY, &[*kid], &[])];
        if self.systems.widevine.is_some() {
            out.push(pssh(&WIDEVINE, &[], &widevine_data(kid, scheme)));
        }
        if self.systems.playready.is_some() {
            out.push(pssh(
                &PLAYREADY,
                &[],
                &playready_object(kid, scheme, self.systems.playready.as_deref()),
            ));
        }
        out
    }

    /// `ContentProtection` elements for a Representation whose track uses
    /// `kid`, each line indented by `indent`.
    pub(crate) fn dash_elements(&self, kid: &[u8; 16], scheme: Scheme, indent: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{indent}<ContentProtection schemeIdUri=\"urn:mpeg:dash:mp4protection:2011\" value=\"{}\" cenc:default_KID=\"{}\"/>",
            scheme.as_str(),
            kid_uuid(kid)
        );
        let _ = writeln!(
            out,
            "{indent}<ContentProtection schemeIdUri=\"{CLEARKEY_DASH}\" value=\"ClearKey1.0\"/>"
        );
        let _ = writeln!(
            out,
            "{indent}<ContentProtection schemeIdUri=\"urn:uuid:{}\" value=\"ClearKey1.0\"><cenc:pssh>{}</cenc:pssh></ContentProtection>",
            kid_uuid(&CLEARKEY),
            STANDARD.encode(pssh(&CLEARKEY, &[*kid], &[]))
        );
        if let Some(url) = &self.systems.widevine {
            let _ = writeln!(
                out,
                "{indent}<ContentProtection schemeIdUri=\"urn:uuid:{}\" value=\"Widevine\"><cenc:pssh>{}</cenc:pssh>{}</ContentProtection>",
                kid_uuid(&WIDEVINE),
                STANDARD.encode(pssh(&WIDEVINE, &[], &widevine_data(kid, scheme))),
                laurl(url)
            );
        }
        if let Some(url) = &self.systems.playready {
            let pro = playready_object(kid, scheme, Some(url));
            let _ = writeln!(
                out,
                "{indent}<ContentProtection schemeIdUri=\"urn:uuid:{}\" value=\"MSPR 2.0\"><cenc:pssh>{}</cenc:pssh><mspr:pro>{}</mspr:pro>{}</ContentProtection>",
                kid_uuid(&PLAYREADY),
                STANDARD.encode(pssh(&PLAYREADY, &[], &pro)),
                STANDARD.encode(&pro),
                laurl(url)
            );
        }
        out
    }

    /// `EXT-X-KEY` tags (or, with `session`, `EXT-X-SESSION-KEY`) for
    /// `cbcs` media under `kid`: ClearKey (W3C EME), then FairPlay
    /// (`skd://`), Widevine and PlayReady as configured.
    pub(crate) fn hls_keys(&self, kid: &[u8; 16], session: bool) -> String {
        let tag = if session {
            "#EXT-X-SESSION-KEY"
        } else {
            "#EXT-X-KEY"
        };
        let k = hex(kid);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{tag}:METHOD=SAMPLE-AES,URI=\"data:text/plain;base64,{}\",KEYID=0x{k},KEYFORMAT=\"org.w3.clearkey\",KEYFORMATVERSIONS=\"1\"",
            STANDARD.encode(pssh(&CLEARKEY, &[*kid], &[]))
        );
        if self.systems.fairplay.is_some() {
            let _ = writeln!(
                out,
                "{tag}:METHOD=SAMPLE-AES,URI=\"skd://{k}\",KEYFORMAT=\"com.apple.streamingkeydelivery\",KEYFORMATVERSIONS=\"1\""
            );
        }
        if self.systems.widevine.is_some() {
            let _ = writeln!(
                out,
                "{tag}:METHOD=SAMPLE-AES,URI=\"data:text/plain;base64,{}\",KEYID=0x{k},KEYFORMAT=\"urn:uuid:{}\",KEYFORMATVERSIONS=\"1\"",
                STANDARD.encode(pssh(&WIDEVINE, &[], &widevine_data(kid, Scheme::Cbcs))),
                kid_uuid(&WIDEVINE)
            );
        }
        if let Some(url) = &self.systems.playready {
            let _ = writeln!(
                out,
                "{tag}:METHOD=SAMPLE-AES,URI=\"data:text/plain;charset=UTF-16;base64,{}\",KEYFORMAT=\"com.microsoft.playready\",KEYFORMATVERSIONS=\"1\"",
                STANDARD.encode(playready_object(kid, Scheme::Cbcs, Some(url)))
            );
        }
        out
    }
}

/// A `pssh` box: version 1 with `kids` when there are any, else version 0.
pub fn pssh(system: &[u8; 16], kids: &[[u8; 16]], data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + kids.len() * 16 + data.len());
    let version: u8 = if kids.is_empty() { 0 } else { 1 };
    body.extend_from_slice(&[version, 0, 0, 0]);
    body.extend_from_slice(system);
    if version == 1 {
        body.extend_from_slice(&(kids.len() as u32).to_be_bytes());
        for k in kids {
            body.extend_from_slice(k);
        }
    }
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
    out.extend_from_slice(b"pssh");
    out.extend_from_slice(&body);
    out
}

/// A KID as a UUID string (`8-4-4-4-12` lower-case hex).
pub fn kid_uuid(kid: &[u8; 16]) -> String {
    let h = hex(kid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The `WidevinePsshData` protobuf: the key id (field 2) and the
/// protection scheme as a four-character code (field 9).
fn widevine_data(kid: &[u8; 16], scheme: Scheme) -> Vec<u8> {
    let mut out = vec![0x12, 16];
    out.extend_from_slice(kid);
    out.push(0x48);
    let mut v = u32::from_be_bytes(match scheme {
        Scheme::Cbcs => *b"cbcs",
        Scheme::Cenc => *b"cenc",
    });
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// A PlayReady Object holding one WRM header (version 4.3, one KID, which
/// PlayReady writes as a little-endian GUID), in UTF-16LE.
fn playready_object(kid: &[u8; 16], scheme: Scheme, la_url: Option<&str>) -> Vec<u8> {
    let mut guid = *kid;
    guid[..4].reverse();
    guid[4..6].reverse();
    guid[6..8].reverse();
    let alg = match scheme {
        Scheme::Cbcs => "AESCBC",
        Scheme::Cenc => "AESCTR",
    };
    let mut xml = format!(
        "<WRMHEADER xmlns=\"http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader\" version=\"4.3.0.0\"><DATA><PROTECTINFO><KIDS><KID ALGID=\"{alg}\" VALUE=\"{}\"></KID></KIDS></PROTECTINFO>",
        STANDARD.encode(guid)
    );
    if let Some(url) = la_url {
        let _ = write!(xml, "<LA_URL>{}</LA_URL>", xml_escape(url));
    }
    xml.push_str("</DATA></WRMHEADER>");
    let record: Vec<u8> = xml.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut out = Vec::with_capacity(record.len() + 10);
    out.extend_from_slice(&((record.len() + 10) as u32).to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&(record.len() as u16).to_le_bytes());
    out.extend_from_slice(&record);
    out
}

fn laurl(url: &str) -> String {
    format!("<dashif:laurl>{}</dashif:laurl>", xml_escape(url))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
