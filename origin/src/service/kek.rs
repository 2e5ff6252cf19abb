//! The key-encryption key (KEK) that wraps content keys at rest, and the
//! per-session counters that rate-limit licenses. The KEK comes from
//! `CASCADE_KEK` or `kek_file`, never from the database, and is never
//! logged: errors name where it came from, not what it holds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::OriginConfig;
use crate::repo::keys::StoredKey;
use crate::storage::{Error, Kind, Result};

/// The environment variable that holds the KEK (64 hex digits).
pub(crate) const KEK_ENV: &str = "CASCADE_KEK";

/// The KEK, the per-session license counters and the license metrics.
pub(crate) struct KeyService {
    kek: Option<LessSafeKey>,
    /// Requests per session in the current minute.
    recent: moka::sync::Cache<String, Arc<AtomicU32>>,
    per_minute: u32,
    /// License answers, by result (`granted`, or the refusal's code).
    pub(crate) licenses: IntCounterVec,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("kek", &self.kek.is_some())
            .finish_non_exhaustive()
    }
}

impl KeyService {
    /// Reads the KEK (`CASCADE_KEK`, else `kek_file`); none is not an
    /// error, but a KEK that is there and unreadable is.
    pub(crate) fn new(cfg: &OriginConfig, registry: &Registry) -> anyhow::Result<KeyService> {
        let kek = load_kek(cfg)?.map(|raw| {
            // 32 bytes always make an AES-256 key.
            UnboundKey::new(&AES_256_GCM, &raw).map(LessSafeKey::new)
        });
        let kek = match kek {
            Some(Ok(k)) => Some(k),
            Some(Err(_)) => anyhow::bail!("kek_file: not an AES-256 key"),
            None => None,
        };
        if kek.is_none() {
            tracing::info!(
                "no key-encryption key (kek_file or CASCADE_KEK): protected titles cannot play"
            );
        }
        let licenses = IntCounterVec::new(
            Opts::new(
                "origin_licenses_total",
                "License and key requests answered, by result",
            ),
            &["result"],
        )?;
        registry.register(Box::new(licenses.clone()))?;
        Ok(KeyService {
            kek,
            recent: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            per_minute: cfg.license_requests_per_minute,
            licenses,
        })
    }

    pub(crate) fn kek(&self) -> Result<&LessSafeKey> {
        self.kek.as_ref().ok_or_else(|| {
            Error::new(
                Kind::Unavailable { retry_after: None },
                "no_kek",
                "content keys are not available: the origin has no key-encryption key",
            )
        })
    }

    /// Seals 32 bytes (key, then IV) for storage; the KID and asset are
    /// bound in, so a wrapped key cannot be moved to another row.
    pub(crate) fn wrap(&self, kid: &str, asset: &str, material: &[u8; 32]) -> Result<String> {
        let kek = self.kek()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::internal("random", "no randomness", "the system RNG failed"))?;
        let mut sealed = material.to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(format!("{kid}/{asset}").as_bytes()),
            &mut sealed,
        )
        .map_err(|_| Error::internal("kek", "cannot wrap a key", "sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(cascade_packager::cenc::hex(&out))
    }

    pub(crate) fn unwrap(&self, k: &StoredKey) -> Result<[u8; 32]> {
        let kek = self.kek()?;
        let bad = || {
            Error::internal(
                "kek",
                "a stored key cannot be unwrapped",
                format_args!("key {} of {} does not open under this KEK", k.kid, k.asset),
            )
        };
        let raw = from_hex(&k.wrapped).ok_or_else(bad)?;
        if raw.len() != NONCE_LEN + 32 + AES_256_GCM.tag_len() {
            return Err(bad());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut sealed = sealed.to_vec();
        let plain = kek
            .open_in_place(
                nonce,
                Aad::from(format!("{}/{}", k.kid, k.asset).as_bytes()),
                &mut sealed,
            )
            .map_err(|_| bad())?;
        let mut out = [0u8; 32];
        out.copy_from_slice(plain);
        Ok(out)
    }

    /// Counts one request of `stream`; false once it is over the minute's limit.
    pub(crate) fn admit(&self, stream: &str) -> bool {
        let n = self
            .recent
            .get_with(stream.to_string(), || Arc::new(AtomicU32::new(0)));
        n.fetch_add(1, Ordering::Relaxed) < self.per_minute
    }
}

/// Bytes from hex digits; `None` for anything else.
pub(crate) fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The KEK from `CASCADE_KEK` or `kek_file`; errors never show its bytes.
fn load_kek(cfg: &OriginConfig) -> anyhow::Result<Option<[u8; 32]>> {
    let (text, from) = match std::env::var(KEK_ENV) {
        Ok(v) if !v.trim().is_empty() => (v, KEK_ENV.to_string()),
        _ if cfg.kek_file.is_empty() => return Ok(None),
        _ => (
            std::fs::read_to_string(&cfg.kek_file)
                .map_err(|e| anyhow::anyhow!("kek_file {}: {e}", cfg.kek_file))?,
            format!("kek_file {}", cfg.kek_file),
        ),
    };
    match from_hex(text.trim()) {
        Some(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            Ok(Some(k))
        }
        _ => anyhow::bail!("{from}: the key-encryption key must be 64 hex digits"),
    }
}
