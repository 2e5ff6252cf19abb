//! Playback tokens in the Akamai EdgeAuth 2.0 format: signing and
//! verification as a pure library. The caller passes `now`; nothing here
//! reads a clock or a socket.
//!
//! A token is `~`-separated fields in this order: `ip=`, `st=`, `exp=`,
//! `acl=` (ACL tokens; several ACLs joined by `!`), `id=`, `data=`, `hmac=`.
//! The HMAC (keyed with the hex-decoded key) covers the fields before `hmac`
//! joined by `~`, then `~url=<path>` for URL tokens (no `acl`) and
//! `~salt=<salt>` when the key is salted; neither is sent. With escape-early,
//! `ip`, `id`, `data` and `url` are form-encoded with lowercase `%xx`.
//! Verification runs over the field text as received.

#![warn(unreachable_pub)]

mod escape;
mod path;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

pub use escape::{escape_early, unescape};
pub use path::{acl_matches, normalize_path, scope_contains};

/// The HMAC algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA256, the default.
    Sha256,
    /// HMAC-SHA1, for legacy partners.
    Sha1,
    /// HMAC-MD5, for legacy partners.
    Md5,
}

impl Algorithm {
    /// Parses `sha256`, `sha1` or `md5` (any case).
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" => Some(Algorithm::Sha256),
            "sha1" => Some(Algorithm::Sha1),
            "md5" => Some(Algorithm::Md5),
            _ => None,
        }
    }

    /// The length of the MAC in bytes.
    pub fn mac_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha1 => 20,
            Algorithm::Md5 => 16,
        }
    }
}

/// A signing key. Its secret never appears in `Debug` output.
#[derive(Clone)]
pub struct Key {
    /// The key's name (`kid`), reported in metrics when it matches.
    pub kid: String,
    secret: Vec<u8>,
    /// The keyed HMAC state, computed once: re-keying per request would
    /// double the cost of a verification.
    keyed: Keyed,
    /// HMAC algorithm.
    pub algorithm: Algorithm,
    /// Salt appended to the signed text, if any.
    pub salt: Option<String>,
    /// Whether `ip`, `id`, `data` and `url` are escaped before signing.
    pub escape_early: bool,
}

#[derive(Clone)]
enum Keyed {
    Ring(ring::hmac::Key),
    Md5(hmac::Hmac<md_5::Md5>),
}

impl Keyed {
    fn new(algorithm: Algorithm, secret: &[u8]) -> Keyed {
        use hmac::Mac;
        match algorithm {
            Algorithm::Sha256 => Keyed::Ring(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)),
            Algorithm::Sha1 => Keyed::Ring(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                secret,
            )),
            // ring has no MD5, which legacy partners still use; RustCrypto does.
            // HMAC takes keys of any length, so this cannot fail.
            Algorithm::Md5 => Keyed::Md5(
                hmac::Hmac::<md_5::Md5>::new_from_slice(secret)
                    .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
            ),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("salted", &self.salt.is_some())
            .field("escape_early", &self.escape_early)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is not an even number of hex digits.
    #[error("key {0:?}: not an even number of hex digits")]
    Hex(String),
    /// The key is shorter than 16 bytes.
    #[error("key {0:?}: shorter than 16 bytes")]
    TooShort(String),
    /// A `kid:hexkey` list entry has no `:`.
    #[error("key list entry {0:?}: expected kid:hexkey")]
    Entry(String),
}

impl Key {
    /// A key from its hex text.
    pub fn from_hex(kid: &str, hex: &str) -> Result<Key, KeyError> {
        let secret = decode_hex(hex).ok_or_else(|| KeyError::Hex(kid.to_string()))?;
        if secret.len() < 16 {
            return Err(KeyError::TooShort(kid.to_string()));
        }
        Ok(Key {
            kid: kid.to_string(),
            keyed: Keyed::new(Algorithm::Sha256, &secret),
            secret,
            algorithm: Algorithm::Sha256,
            salt: None,
            escape_early: false,
        })
    }

    /// Sets the algorithm.
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Key {
        self.algorithm = algorithm;
        self.keyed = Keyed::new(algorithm, &self.secret);
        self
    }

    /// Sets a salt.
    pub fn with_salt(mut self, salt: Option<String>) -> Key {
        self.salt = salt.filter(|s| !s.is_empty());
        self
    }

    /// Sets escape-early.
    pub fn with_escape_early(mut self, on: bool) -> Key {
        self.escape_early = on;
        self
    }

    /// The MAC of the concatenation of `parts`, in a fixed buffer.
    fn mac(&self, parts: &[&[u8]]) -> ([u8; 32], usize) {
        let mut out = [0u8; 32];
        match &self.keyed {
            Keyed::Ring(k) => {
                let mut ctx = ring::hmac::Context::with_key(k);
                for p in parts {
                    ctx.update(p);
                }
                let tag = ctx.sign();
                let t = tag.as_ref();
                out[..t.len()].copy_from_slice(t);
                (out, t.len())
            }
            Keyed::Md5(state) => {
                use hmac::Mac;
                let mut m = state.clone();
                for p in parts {
                    m.update(p);
                }
                let t = m.finalize().into_bytes();
                out[..t.len()].copy_from_slice(&t);
                (out, t.len())
            }
        }
    }

    /// Checks `mac` against the MAC of `parts` in constant time.
    fn verify(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        let (want, len) = self.mac(parts);
        len == mac.len()
            && want[..len]
                .iter()
                .zip(mac)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Parses `kid:hexkey[,kid:hexkey…]` (the `CASCADE_TOKEN_KEYS` format).
pub fn parse_key_list(list: &str) -> Result<Vec<Key>, KeyError> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (kid, hex) = entry
                .split_once(':')
                .ok_or_else(|| KeyError::Entry(entry.chars().take(8).collect()))?;
            Key::from_hex(kid.trim(), hex.trim())
        })
        .collect()
}

/// What a token grants, before signing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Bind to one client address.
    pub ip: Option<String>,
    /// Not valid before (Unix seconds).
    pub start: Option<u64>,
    /// Not valid from (Unix seconds).
    pub expires: u64,
    /// ACL patterns; empty for a URL token.
    pub acl: Vec<String>,
    /// The URL path of a URL token.
    pub url: Option<String>,
    /// Session id.
    pub id: Option<String>,
    /// Opaque payload; `kid=NAME` at its start names a partner key.
    pub data: Option<String>,
}

/// Signs claims with a key; returns the token text.
pub fn sign(key: &Key, claims: &Claims) -> String {
    let esc = |s: &str| {
        if key.escape_early {
            escape_early(s)
        } else {
            s.to_string()
        }
    };
    let mut fields = Vec::with_capacity(7);
    if let Some(ip) = &claims.ip {
        fields.push(format!("ip={}", esc(ip)));
    }
    if let Some(st) = claims.start {
        fields.push(format!("st={st}"));
    }
    fields.push(format!("exp={}", claims.expires));
    if !claims.acl.is_empty() {
        fields.push(format!("acl={}", claims.acl.join("!")));
    }
    if let Some(id) = &claims.id {
        fields.push(format!("id={}", esc(id)));
    }
    if let Some(data) = &claims.data {
        fields.push(format!("data={}", esc(data)));
    }
    let mut signed = fields.join("~");
    if claims.acl.is_empty() {
        signed.push_str("~url=");
        signed.push_str(&esc(claims.url.as_deref().unwrap_or("")));
    }
    if let Some(salt) = &key.salt {
        signed.push_str("~salt=");
        signed.push_str(salt);
    }
    let (mac, len) = key.mac(&[signed.as_bytes()]);
    fields.push(format!("hmac={}", encode_hex(&mac[..len])));
    fields.join("~")
}

/// A token split into its fields, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    /// `ip=` text.
    pub ip: Option<&'a str>,
    /// `st=`.
    pub start: Option<u64>,
    /// `exp=`.
    pub expires: u64,
    /// `acl=` text (patterns joined by `!`).
    pub acl: Option<&'a str>,
    /// `id=` text.
    pub id: Option<&'a str>,
    /// `data=` text.
    pub data: Option<&'a str>,
    /// The MAC, decoded from hex (the first `mac_len` bytes).
    mac: [u8; 32],
    mac_len: usize,
    /// Everything before `~hmac=`: the signed fields.
    pub signed: &'a str,
}

/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Splits a token into fields. Unknown, duplicate, empty-named or misplaced
/// fields, a missing `exp` or `hmac`, and non-numeric times are malformed.
pub fn parse(token: &str) -> Result<Token<'_>, Rejection> {
    if token.is_empty() {
        return Err(Rejection::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(Rejection::Malformed);
    }
    let (signed, hmac_hex) = match token.rfind("~hmac=") {
        Some(i) => (&token[..i], &token[i + 6..]),
        None => match token.strip_prefix("hmac=") {
            Some(_) => return Err(Rejection::Malformed),
            None => return Err(Rejection::Malformed),
        },
    };
    let mut mac = [0u8; 32];
    let mac_len = hmac_hex.len() / 2;
    if hmac_hex.is_empty() || !hmac_hex.len().is_multiple_of(2) || mac_len > mac.len() {
        return Err(Rejection::Malformed);
    }
    for (out, pair) in mac.iter_mut().zip(hmac_hex.as_bytes().chunks_exact(2)) {
        *out = (hex_value(pair[0]).ok_or(Rejection::Malformed)? << 4)
            | hex_value(pair[1]).ok_or(Rejection::Malformed)?;
    }
    let mut t = Token {
        ip: None,
        start: None,
        expires: 0,
        acl: None,
        id: None,
        data: None,
        mac,
        mac_len,
        signed,
    };
    let mut seen_exp = false;
    let mut last_rank = 0;
    for field in signed.split('~') {
        let (name, value) = field.split_once('=').ok_or(Rejection::Malformed)?;
        let rank = match name {
            "ip" => 1,
            "st" => 2,
            "exp" => 3,
            "acl" => 4,
            "id" => 5,
            "data" => 6,
            _ => return Err(Rejection::Malformed),
        };
        // Fields come in the format's order, each once.
        if rank <= last_rank {
            return Err(Rejection::Malformed);
        }
        last_rank = rank;
        match name {
            "ip" => t.ip = Some(value),
            "st" => t.start = Some(parse_time(value)?),
            "exp" => {
                t.expires = parse_time(value)?;
                seen_exp = true;
            }
            "acl" if !value.is_empty() => t.acl = Some(value),
            "id" => t.id = Some(value),
            "data" => t.data = Some(value),
            _ => return Err(Rejection::Malformed),
        }
    }
    if !seen_exp {
        return Err(Rejection::Malformed);
    }
    Ok(t)
}

fn parse_time(v: &str) -> Result<u64, Rejection> {
    if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed);
    }
    v.parse().map_err(|_| Rejection::Malformed)
}

/// Why a request was refused. Each has a short code used in the 403 body
/// and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// No token in the query, cookie or header.
    #[error("missing")]
    Missing,
    /// The token does not parse.
    #[error("malformed")]
    Malformed,
    /// No key's MAC matches.
    #[error("bad_signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("expired")]
    Expired,
    /// `st` is still to come.
    #[error("not_yet_valid")]
    NotYetValid,
    /// The path is outside the token's ACL or URL (or the partner's scope).
    #[error("acl_mismatch")]
    AclMismatch,
    /// The token is bound to another address.
    #[error("ip_mismatch")]
    IpMismatch,
    /// The token names a partner key this edge does not know.
    #[error("unknown_key")]
    UnknownKey,
    /// The playback session the token belongs to (its `id`) has ended:
    /// stopped, replaced, or gone quiet.
    #[error("revoked")]
    Revoked,
}

impl Rejection {
    /// Every reason, for metrics.
    pub const ALL: [Rejection; 9] = [
        Rejection::Missing,
        Rejection::Malformed,
        Rejection::BadSignature,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::AclMismatch,
        Rejection::IpMismatch,
        Rejection::UnknownKey,
        Rejection::Revoked,
    ];

    /// The short code.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::AclMismatch => "acl_mismatch",
            Rejection::IpMismatch => "ip_mismatch",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Revoked => "revoked",
        }
    }
}

/// A partner's keys and the paths its tokens may grant.
#[derive(Debug, Clone, Default)]
pub struct Partner {
    /// Active keys (several during a rotation).
    pub keys: Vec<Key>,
    /// ACL patterns such as `/vod/*`; a token's ACLs must lie inside one.
    pub scope: Vec<String>,
}

/// Checks tokens against the CDN keys and partner keys.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    /// The CDN's own keys, all tried (for rotation).
    pub cdn_keys: Vec<Key>,
    /// Partners by name.
    pub partners: HashMap<String, Partner>,
    /// Seconds of clock skew allowed on `st` and `exp`.
    pub skew_secs: u64,
}

/// An accepted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The key that matched.
    pub kid: String,
    /// The partner, when a partner key matched.
    pub partner: Option<String>,
    /// Seconds until the token expires (from `now`).
    pub expires_in: u64,
    /// The playback session it belongs to (its `id`), if any.
    pub session: Option<String>,
    /// The token's `data` payload, unescaped, if any.
    pub data: Option<String>,
}

impl Verifier {
    /// Verifies `token` for a request of normalised `path` from `client`.
    /// The order is: parse, pick the keys, signature, times, address, path.
    pub fn verify(
        &self,
        token: &str,
        path: &str,
        client: Option<IpAddr>,
        now: u64,
    ) -> Result<Grant, Rejection> {
        let t = parse(token)?;
        let partner_name = t.data.and_then(partner_of);
        let (keys, partner) = match &partner_name {
            Some(name) => match self.partners.get(name) {
                Some(p) => (&p.keys, Some(p)),
                None => return Err(Rejection::UnknownKey),
            },
            None => (&self.cdn_keys, None),
        };
        if keys.is_empty() {
            return Err(Rejection::UnknownKey);
        }
        let mut escaped_path = None;
        let key = keys
            .iter()
            .find(|k| {
                let url = match (t.acl.is_none(), k.escape_early) {
                    (false, _) => None,
                    (true, false) => Some(path),
                    (true, true) => Some(
                        escaped_path
                            .get_or_insert_with(|| escape_early(path))
                            .as_str(),
                    ),
                };
                k.verify(&signed_parts(&t, k, url), &t.mac[..t.mac_len])
            })
            .ok_or(Rejection::BadSignature)?;
        if let Some(st) = t.start {
            if st > now.saturating_add(self.skew_secs) {
                return Err(Rejection::NotYetValid);
            }
        }
        if t.expires.saturating_add(self.skew_secs) <= now {
            return Err(Rejection::Expired);
        }
        if let Some(ip) = t.ip {
            let bound: Option<IpAddr> = unescape(ip).and_then(|s| s.parse().ok());
            if bound.is_none() || bound != client {
                return Err(Rejection::IpMismatch);
            }
        }
        match t.acl {
            Some(acl) => {
                if !acl.split('!').any(|p| acl_matches(p, path)) {
                    return Err(Rejection::AclMismatch);
                }
                if let Some(p) = partner {
                    if !acl
                        .split('!')
                        .all(|a| p.scope.iter().any(|s| scope_contains(s, a)))
                    {
                        return Err(Rejection::AclMismatch);
                    }
                }
            }
            None => {
                // A URL token: the signature covered the path itself.
                if let Some(p) = partner {
                    if !p.scope.iter().any(|s| acl_matches(s, path)) {
                        return Err(Rejection::AclMismatch);
                    }
                }
            }
        }
        Ok(Grant {
            kid: key.kid.clone(),
            partner: partner_name,
            expires_in: t.expires.saturating_sub(now),
            session: t.id.and_then(unescape),
            data: t.data.and_then(unescape),
        })
    }
}

/// The pieces a key signs for this token: the fields as received, then
/// `url` for URL tokens, then the salt. Fed to the MAC without copying.
fn signed_parts<'a>(t: &'a Token<'_>, key: &'a Key, url: Option<&'a str>) -> [&'a [u8]; 5] {
    let (url_label, url): (&[u8], &[u8]) = match url {
        Some(u) => (b"~url=", u.as_bytes()),
        None => (b"", b""),
    };
    let (salt_label, salt): (&[u8], &[u8]) = match &key.salt {
        Some(s) => (b"~salt=", s.as_bytes()),
        None => (b"", b""),
    };
    [t.signed.as_bytes(), url_label, url, salt_label, salt]
}

/// The partner named by `kid=NAME` at the start of a `data` field.
fn partner_of(data: &str) -> Option<String> {
    let data = unescape(data)?;
    let rest = data.strip_prefix("kid=")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some((hex_value(p[0])? << 4) | hex_value(p[1])?))
        .collect()
}

fn encode_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for byte in b {
        s.push(DIGITS[usize::from(byte >> 4)] as char);
        s.push(DIGITS[usize::from(byte & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests;
