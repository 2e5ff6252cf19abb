//! Credentials: argon2id password hashes, HS256 access and stream tokens,
//! refresh tokens stored as digests, and the per-address login throttle
//! (in memory, per origin). No IO but the hashing threads.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a signed token is for; a token of one kind is refused as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TokenKind {
    /// Calls the API as a user.
    Access,
    /// Reports the position of one stream.
    Stream,
}

/// The claims of our JWTs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The user id.
    pub(crate) sub: String,
    pub(crate) typ: TokenKind,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
    /// Stream tokens: the stream, profile and asset they report for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) aid: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Past its `exp`.
    Expired,
    /// Forged, malformed, or of another kind.
    Invalid,
}

/// Signing keys and the per-address login throttle.
pub(crate) struct Accounts {
    encoding: EncodingKey,
    decoding: DecodingKey,
    per_address: moka::sync::Cache<IpAddr, Arc<Mutex<Window>>>,
    /// Password hashes at once: each takes 19 MiB and a core for tens of
    /// milliseconds, so a burst of logins must queue, not exhaust memory.
    hashing: tokio::sync::Semaphore,
}

/// A fixed one-minute window of attempts from one address.
struct Window {
    started: Instant,
    attempts: u32,
}

impl Accounts {
    pub(crate) fn new(secret: &[u8]) -> Accounts {
        Accounts {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            per_address: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            hashing: tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }
    }

    /// Runs a password hash or check with the others, a few at a time.
    pub(crate) async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.hashing.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }

    /// Signs claims (HS256).
    pub(crate) fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Checks a token's signature, expiry and kind.
    pub(crate) fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "sub"]);
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &v) {
            Ok(t) if t.claims.typ == kind => Ok(t.claims),
            Ok(_) => Err(TokenError::Invalid),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }

    /// Counts an attempt from `ip`; `Err(seconds)` when it is over the limit.
    pub(crate) fn throttle(&self, ip: IpAddr, per_minute: u32) -> Result<(), u64> {
        let ip = address_block(ip);
        let w = self.per_address.get_with(ip, || {
            Arc::new(Mutex::new(Window {
                started: Instant::now(),
                attempts: 0,
            }))
        });
        let Ok(mut w) = w.lock() else {
            return Ok(());
        };
        if w.started.elapsed() >= Duration::from_secs(60) {
            w.started = Instant::now();
            w.attempts = 0;
        }
        w.attempts += 1;
        if w.attempts > per_minute {
            Err(60u64.saturating_sub(w.started.elapsed().as_secs()))
        } else {
            Ok(())
        }
    }
}

/// An access token for `user`, valid `ttl` seconds from `now`.
pub(crate) fn access_claims(user: &str, now: u64, ttl: u64) -> Claims {
    Claims {
        sub: user.to_string(),
        typ: TokenKind::Access,
        iat: now,
        exp: now + ttl,
        sid: None,
        pid: None,
        aid: None,
    }
}

/// An argon2id PHC string for a password (OWASP's parameters: 19 MiB, 2 passes).
pub(crate) fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether a password matches a stored hash.
pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to check against when the email is unknown, so an unknown
/// account takes as long to refuse as a wrong password.
pub(crate) fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

/// A new random token (256 bits, base64url) and the digest stored for it:
/// refresh tokens and sign-up codes.
pub(crate) fn new_secret_token() -> crate::storage::Result<(String, String)> {
    let mut raw = [0u8; 32];
    // A secret from a failed random source would be all zeros: refuse.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).map_err(|_| {
        crate::storage::Error::internal(
            "internal",
            "could not make a secret",
            "the system's random source failed",
        )
    })?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let digest = token_digest(&token);
    Ok((token, digest))
}

/// The stored form of a refresh token or sign-up code: its SHA-256, hex.
pub(crate) fn token_digest(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The block an address stands for: the address itself for IPv4; its /64
/// for IPv6, as a host usually holds a whole /64.
pub(crate) fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsf"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn tokens_check_signature_expiry_and_kind() {
        let a = Accounts::new(b"0123456789abcdef0123456789abcdef");
        let now = crate::storage::clock::now();
        let t = a.sign(&access_claims("u1", now, 60));
        assert_eq!(a.verify(&t, TokenKind::Access).unwrap().sub, "u1");
        assert_eq!(
            a.verify(&t, TokenKind::Stream).unwrap_err(),
            TokenError::Invalid
        );
        let old = a.sign(&access_claims("u1", now - 7200, 60));
        assert_eq!(
            a.verify(&old, TokenKind::Access).unwrap_err(),
            TokenError::Expired
        );
        let other = Accounts::new(b"another secret, another secret!!");
        assert_eq!(
            other.verify(&t, TokenKind::Access).unwrap_err(),
            TokenError::Invalid
        );
        let mut forged = t.clone();
        forged.pop();
        assert_eq!(
            a.verify(&forged, TokenKind::Access).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_as_digests() {
        let (t1, d1) = new_secret_token().unwrap();
        let (t2, _) = new_secret_token().unwrap();
        assert_ne!(t1, t2);
        assert_eq!(token_digest(&t1), d1);
        assert_eq!(d1.len(), 64);
        assert!(!d1.contains(&t1));
    }
}
