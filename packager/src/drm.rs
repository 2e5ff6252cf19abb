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
#[derive(Debug, Clone, Default)]
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
            variant_b: m.tracks[index].marked.as_ref().is_some_and(|c| !c.b),
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
        // ClearKey by the DASH-IF scheme, without a pssh: players build
        // `keyids` init data from the default KID (DASH-IF IOP 7.6.2.4);
        // the W3C common pssh stays in the init segment.
        let _ = writeln!(
            out,
            "{indent}<ContentProtection schemeIdUri=\"{CLEARKEY_DASH}\" value=\"ClearKey1.0\"/>"
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
        // ClearKey's URI carries the KID itself (as hls.js reads it).
        let _ = writeln!(
            out,
            "{tag}:METHOD=SAMPLE-AES,URI=\"data:text/plain;base64,{}\",KEYID=0x{k},KEYFORMAT=\"org.w3.clearkey\",KEYFORMATVERSIONS=\"1\"",
            STANDARD.encode(kid)
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

/// Largest CPIX document accepted.
pub const MAX_CPIX_BYTES: usize = 1024 * 1024;

/// One content key read from CPIX.
#[derive(PartialEq, Eq)]
pub struct CpixKey {
    /// The key id.
    pub kid: [u8; 16],
    /// The AES-128 key.
    pub key: [u8; 16],
    /// Its IV (`explicitIV`; zeros when the document gives none).
    pub iv: [u8; 16],
    /// `sd`, `hd`, `uhd`, `audio`, or `all` (no usage rule).
    pub group: String,
}

impl std::fmt::Debug for CpixKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpixKey")
            .field("kid", &hex(&self.kid))
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Reads the content keys of a CPIX document: each `ContentKey`'s `kid`
/// (a UUID), `explicitIV` (base64, 16 bytes; zeros when absent) and
/// plain secret (base64, 16 bytes), and the track type its usage rule
/// names (`SD`, `HD`, `UHD`, `AUDIO`; `all` without one).
pub fn parse_cpix(doc: &str) -> std::result::Result<Vec<CpixKey>, String> {
    use quick_xml::events::Event;
    if doc.len() > MAX_CPIX_BYTES {
        return Err(format!("a CPIX document is at most {MAX_CPIX_BYTES} bytes"));
    }
    let mut reader = quick_xml::Reader::from_str(doc);
    let mut keys: Vec<CpixKey> = Vec::new();
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, [u8; 16])> = None;
    let mut in_plain = false;
    let attr = |e: &quick_xml::events::BytesStart<'_>, name: &[u8]| -> Option<String> {
        e.attributes()
            .flatten()
            .find(|a| a.key.local_name().as_ref() == name)
            .and_then(|a| a.unescape_value().ok().map(|v| v.to_string()))
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => match e.local_name().as_ref() {
                b"ContentKey" => {
                    let kid = attr(&e, b"kid").ok_or("a ContentKey without a kid")?;
                    let iv = match attr(&e, b"explicitIV") {
                        Some(v) => b64_16(&v).ok_or("explicitIV: 16 bytes in base64")?,
                        None => [0; 16],
                    };
                    if keys.len() >= 1000 {
                        return Err("at most 1000 keys".into());
                    }
                    current = Some((kid, iv));
                }
                b"PlainValue" => in_plain = true,
                b"ContentKeyUsageRule" => {
                    if let (Some(k), Some(t)) = (attr(&e, b"kid"), attr(&e, b"intendedTrackType")) {
                        rules.push((k.to_ascii_lowercase(), t.to_ascii_lowercase()));
                    }
                }
                _ => {}
            },
            Ok(Event::Text(t)) if in_plain => {
                let text = t.decode().map_err(|_| "a key value is not text")?;
                let (kid, iv) = current.clone().ok_or("a key value outside a ContentKey")?;
                let key =
                    b64_16(text.trim()).ok_or("a content key is 16 bytes (128 bits) in base64")?;
                let id = uuid_bytes(&kid).ok_or("kid: a UUID")?;
                keys.push(CpixKey {
                    kid: id,
                    key,
                    iv,
                    group: String::new(),
                });
            }
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                b"PlainValue" => in_plain = false,
                b"ContentKey" => current = None,
                _ => {}
            },
            Ok(Event::Eof) => break,
            Err(e) => return Err(format!("not XML: {e}")),
            _ => {}
        }
    }
    if keys.is_empty() {
        return Err("no content keys with plain values".into());
    }
    for k in &mut keys {
        let uuid = kid_uuid(&k.kid);
        k.group = match rules
            .iter()
            .find(|(kid, _)| *kid == uuid)
            .map(|r| r.1.as_str())
        {
            Some(t @ ("sd" | "hd" | "uhd" | "audio")) => t.to_string(),
            Some(_) | None => "all".to_string(),
        };
    }
    Ok(keys)
}

fn b64_16(s: &str) -> Option<[u8; 16]> {
    let v = STANDARD.decode(s.trim()).ok()?;
    (v.len() == 16).then(|| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&v);
        a
    })
}

fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let v: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()
        .filter(|v: &Vec<u8>| v.len() == 16)?;
    let mut a = [0u8; 16];
    a.copy_from_slice(&v);
    Some(a)
}

/// The key ids of a W3C ClearKey license request (`{"kids": [...]}`), each
/// 16 bytes in base64url (padding allowed); at most 32, in at most 4 KiB.
pub fn clearkey_kids(body: &[u8]) -> Result<Vec<[u8; 16]>, &'static str> {
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    if body.len() > 4096 {
        return Err("the license request is over 4 KiB");
    }
    #[derive(serde::Deserialize)]
    struct Req {
        kids: Vec<String>,
    }
    let req: Req = serde_json::from_slice(body)
        .map_err(|_| "the license request is not W3C ClearKey JSON ({\"kids\": [...]})")?;
    if req.kids.is_empty() || req.kids.len() > 32 {
        return Err("a license request names 1 to 32 key ids");
    }
    req.kids
        .iter()
        .map(|k| {
            let raw = URL_SAFE_NO_PAD
                .decode(k.trim_end_matches('='))
                .or_else(|_| URL_SAFE.decode(k))
                .map_err(|_| "a key id is not base64url")?;
            <[u8; 16]>::try_from(raw.as_slice()).map_err(|_| "a key id is not 16 bytes")
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpix_round_trip_and_bad_lengths() {
        let doc = r#"<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc">
<cpix:ContentKeyList><cpix:ContentKey kid="00112233-4455-6677-8899-aabbccddeeff" explicitIV="AAECAwQFBgcICQoLDA0ODw=="><cpix:Data><pskc:Secret><pskc:PlainValue>EBESExQVFhcYGRobHB0eHw==</pskc:PlainValue></pskc:Secret></cpix:Data></cpix:ContentKey></cpix:ContentKeyList>
<cpix:ContentKeyUsageRuleList><cpix:ContentKeyUsageRule kid="00112233-4455-6677-8899-aabbccddeeff" intendedTrackType="HD"/></cpix:ContentKeyUsageRuleList></cpix:CPIX>"#;
        let keys = parse_cpix(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].group, "hd");
        assert_eq!(keys[0].key[0], 0x10);
        assert_eq!(keys[0].iv[15], 15);
        // A 15-byte key.
        let short = doc.replace("EBESExQVFhcYGRobHB0eHw==", "EBESExQVFhcYGRobHB0e");
        let e = parse_cpix(&short).unwrap_err();
        assert!(e.contains("16 bytes"), "{e}");
        assert!(parse_cpix("<not xml").is_err());
        assert!(parse_cpix("<a/>").is_err());
        let no_kid = doc.replace(
            "kid=\"00112233-4455-6677-8899-aabbccddeeff\" explicitIV",
            "explicitIV",
        );
        assert!(parse_cpix(&no_kid).is_err());
    }

    #[test]
    fn clearkey_requests() {
        let ok = br#"{"kids":["ABEiM0RVZneImaq7zN3u_w"],"type":"temporary"}"#;
        assert_eq!(clearkey_kids(ok).unwrap()[0][15], 0xff);
        let padded = br#"{"kids":["ABEiM0RVZneImaq7zN3u_w=="]}"#;
        assert_eq!(clearkey_kids(padded).unwrap().len(), 1);
        assert!(clearkey_kids(b"not json").is_err());
        assert!(clearkey_kids(br#"{"kids":[]}"#).is_err());
        assert!(clearkey_kids(br#"{"kids":["AAEC"]}"#).is_err());
        assert!(clearkey_kids(br#"{"kids":["!!!"]}"#).is_err());
        assert!(clearkey_kids(&vec![b' '; 5000]).is_err());
    }

    #[test]
    fn pssh_boxes_and_kids() {
        let kid = [0x11u8; 16];
        let b = pssh(&CLEARKEY, &[kid], &[]);
        assert_eq!(&b[4..8], b"pssh");
        assert_eq!(
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        assert_eq!(b[8], 1, "version 1 with KIDs");
        assert_eq!(&b[12..28], &CLEARKEY);
        assert_eq!(&b[32..48], &kid);
        assert_eq!(b.len(), 8 + 4 + 16 + 4 + 16 + 4);
        let w = pssh(&WIDEVINE, &[], &widevine_data(&kid, Scheme::Cbcs));
        assert_eq!(w[8], 0);
        assert!(w.windows(4).any(|x| x == b"scbc" || x.starts_with(&[0x48])));
        assert_eq!(
            kid_uuid(&[0xab; 16]),
            "abababab-abab-abab-abab-abababababab"
        );
        let pro = playready_object(&kid, Scheme::Cenc, Some("https://l.test/?a=1&b=2"));
        assert_eq!(
            u32::from_le_bytes([pro[0], pro[1], pro[2], pro[3]]) as usize,
            pro.len()
        );
        let xml: String = char::decode_utf16(
            pro[10..]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        )
        .map(|c| c.unwrap_or('?'))
        .collect();
        assert!(
            xml.contains("ALGID=\"AESCTR\"") && xml.contains("a=1&amp;b=2"),
            "{xml}"
        );
    }
}
