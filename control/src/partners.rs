//! Partners: who may mint playback tokens, for which paths, how long-lived,
//! and how often. API keys are stored only as SHA-256 hashes; signing keys
//! are kept so that edges can verify partner tokens, sealed under a
//! key-encryption key ([`Sealer`]) so that the database, its WAL and its
//! backups hold no usable key. A revoked partner's keys are deleted with
//! SQLite's `secure_delete` on and the WAL checkpointed away.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

/// One partner as stored.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartnerInfo {
    /// Unique name; tokens name it as `data=kid=NAME`.
    pub name: String,
    /// ACL patterns the partner may grant, such as `/vod/*`.
    pub scope: Vec<String>,
    /// Longest token lifetime, seconds.
    pub max_ttl_secs: u64,
    /// Token requests allowed per minute.
    pub rate_per_minute: u32,
    /// Whether the partner is revoked.
    pub revoked: bool,
}

/// A signing key for edges (fleet API only).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SigningKey {
    /// Key id.
    pub kid: String,
    /// The key, hex.
    pub key: String,
}

/// What edges need to verify a partner's tokens.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetPartner {
    /// Name.
    pub name: String,
    /// Scope patterns.
    pub scope: Vec<String>,
    /// Active keys (several during a rotation).
    pub keys: Vec<SigningKey>,
}

pub(crate) async fn migrate(pool: &SqlitePool, sealer: &Sealer) -> sqlx::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    // Keys stored in clear by an older control are sealed now.
    let clear = sqlx::query(
        "SELECT rowid, partner, kid, secret FROM partner_keys WHERE secret NOT LIKE 'sealed1:%'",
    )
    .fetch_all(pool)
    .await?;
    for r in &clear {
        let (rowid, partner, kid, secret): (i64, String, String, String) = (
            r.get("rowid"),
            r.get("partner"),
            r.get("kid"),
            r.get("secret"),
        );
        sqlx::query("UPDATE partner_keys SET secret = ? WHERE rowid = ?")
            .bind(sealer.seal(&partner, &kid, &secret))
            .bind(rowid)
            .execute(pool)
            .await?;
    }
    if !clear.is_empty() {
        checkpoint(pool).await?;
    }
    // Every stored key must open: a wrong key-encryption key is an
    // operator's mistake to hear about now, not at an edge's next refresh.
    for r in sqlx::query("SELECT partner, kid, secret FROM partner_keys")
        .fetch_all(pool)
        .await?
    {
        let (partner, kid, secret): (String, String, String) =
            (r.get("partner"), r.get("kid"), r.get("secret"));
        opened(sealer, &partner, &kid, &secret)?;
    }
    Ok(())
}

/// Moves the WAL into the database file and empties it, so that pages
/// with old contents (a key before sealing, a deleted key) leave the disk.
pub(crate) async fn checkpoint(pool: &SqlitePool) -> sqlx::Result<()> {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await?;
    Ok(())
}

/// Prefix of a sealed value: `sealed1:` then hex of nonce and ciphertext.
const SEALED: &str = "sealed1:";

/// Seals and opens partners' signing keys with ChaCha20-Poly1305 under the
/// key-encryption key; the partner and key id are the associated data, so
/// a sealed key cannot be moved to another partner or id.
pub(crate) struct Sealer {
    key: ring::aead::LessSafeKey,
}

impl Sealer {
    /// A sealer under a 32-byte key-encryption key.
    pub(crate) fn new(kek: &[u8; 32]) -> Sealer {
        // A 32-byte key always fits ChaCha20-Poly1305.
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, kek)
            .unwrap_or_else(|_| unreachable!("a 32-byte key"));
        Sealer {
            key: ring::aead::LessSafeKey::new(unbound),
        }
    }

    /// The stored form of `clear` (a signing key, hex).
    pub(crate) fn seal(&self, partner: &str, kid: &str, clear: &str) -> String {
        let mut nonce = [0u8; 12];
        // The system RNG does not fail on Linux; a repeated all-zero nonce
        // is still refused below by failing the seal instead.
        if SystemRandom::new().fill(&mut nonce).is_err() {
            return String::new();
        }
        let mut buf = clear.as_bytes().to_vec();
        let aad = ring::aead::Aad::from(format!("{partner}\0{kid}"));
        let n = ring::aead::Nonce::assume_unique_for_key(nonce);
        if self.key.seal_in_place_append_tag(n, aad, &mut buf).is_err() {
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{SEALED}{}", hex::encode(out))
    }

    /// The clear signing key of a stored value; `None` when it is not
    /// sealed under this key for this partner and id.
    pub(crate) fn open(&self, partner: &str, kid: &str, stored: &str) -> Option<String> {
        let raw = hex::decode(stored.strip_prefix(SEALED)?).ok()?;
        if raw.len() < 12 + ring::aead::CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let (nonce, sealed) = raw.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let aad = ring::aead::Aad::from(format!("{partner}\0{kid}"));
        let clear = self.key.open_in_place(nonce, aad, &mut buf).ok()?;
        String::from_utf8(clear.to_vec()).ok()
    }
}

/// The clear key of a stored row, or an error that says the
/// key-encryption key is not the one it was sealed with.
fn opened(sealer: &Sealer, partner: &str, kid: &str, stored: &str) -> sqlx::Result<String> {
    sealer.open(partner, kid, stored).ok_or_else(|| {
        sqlx::Error::Protocol(format!(
            "partner {partner} key {kid}: cannot be opened with this key-encryption key"
        ))
    })
}

/// A new random secret, hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    // The system RNG does not fail on Linux; a zero key would be refused later.
    let _ = SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

pub(crate) fn hash_api_key(key: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()))
}

fn now() -> i64 {
    cascade_common::unix_now() as i64
}

fn row_to_info(r: &sqlx::sqlite::SqliteRow) -> PartnerInfo {
    let scope: String = r.get("scope");
    PartnerInfo {
        name: r.get("name"),
        scope: scope.split('!').map(str::to_string).collect(),
        max_ttl_secs: r.get::<i64, _>("max_ttl") as u64,
        rate_per_minute: r.get::<i64, _>("rate_per_minute") as u32,
        revoked: r.get::<i64, _>("revoked") != 0,
    }
}

/// A new API key and a new signing key for a partner.
fn new_credentials(partner: &str) -> (String, SigningKey) {
    let api_key = format!("cpk_{}", random_hex(24));
    let signing = SigningKey {
        kid: format!("{partner}-{}", random_hex(3)),
        key: random_hex(32),
    };
    (api_key, signing)
}

/// Creates a partner with a new API key and signing key; returns both.
pub(crate) async fn create(
    pool: &SqlitePool,
    sealer: &Sealer,
    info: &PartnerInfo,
) -> sqlx::Result<(String, SigningKey)> {
    let (api_key, signing) = new_credentials(&info.name);
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO partners (name, scope, max_ttl, rate_per_minute, api_key_hash, revoked, created_at) VALUES (?, ?, ?, ?, ?, 0, ?)")
        .bind(&info.name)
        .bind(info.scope.join("!"))
        .bind(info.max_ttl_secs as i64)
        .bind(i64::from(info.rate_per_minute))
        .bind(hash_api_key(&api_key))
        .bind(now())
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO partner_keys (partner, kid, secret, created_at) VALUES (?, ?, ?, ?)")
        .bind(&info.name)
        .bind(&signing.kid)
        .bind(sealer.seal(&info.name, &signing.kid, &signing.key))
        .bind(now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((api_key, signing))
}

/// New API key and signing key. The old signing key stays valid for the
/// partner's longest token lifetime, so tokens already issued keep working.
pub(crate) async fn rotate(
    pool: &SqlitePool,
    sealer: &Sealer,
    name: &str,
) -> sqlx::Result<Option<(String, SigningKey)>> {
    let Some(info) = get(pool, name).await? else {
        return Ok(None);
    };
    let (api_key, signing) = new_credentials(&info.name);
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE partners SET api_key_hash = ?, revoked = 0 WHERE name = ?")
        .bind(hash_api_key(&api_key))
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE partner_keys SET retire_at = ? WHERE partner = ? AND retire_at IS NULL")
        .bind(now() + info.max_ttl_secs as i64)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO partner_keys (partner, kid, secret, created_at) VALUES (?, ?, ?, ?)")
        .bind(name)
        .bind(&signing.kid)
        .bind(sealer.seal(name, &signing.kid, &signing.key))
        .bind(now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some((api_key, signing)))
}

/// Revokes a partner: its API key stops working and its keys are dropped,
/// so edges refuse its tokens at their next refresh.
pub(crate) async fn revoke(pool: &SqlitePool, name: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let r = sqlx::query("UPDATE partners SET revoked = 1 WHERE name = ?")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM partner_keys WHERE partner = ?")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // The deleted rows were zeroed in place (secure_delete); the WAL
    // still holds the old pages until checkpointed.
    checkpoint(pool).await?;
    Ok(r.rows_affected() > 0)
}

pub(crate) async fn get(pool: &SqlitePool, name: &str) -> sqlx::Result<Option<PartnerInfo>> {
    let row = sqlx::query("SELECT * FROM partners WHERE name = ?")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(row_to_info))
}

pub(crate) async fn list(pool: &SqlitePool) -> sqlx::Result<Vec<PartnerInfo>> {
    let rows = sqlx::query("SELECT * FROM partners ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(row_to_info).collect())
}

/// The partner an API key belongs to, if the key is current and not revoked.
pub(crate) async fn by_api_key(
    pool: &SqlitePool,
    api_key: &str,
) -> sqlx::Result<Option<PartnerInfo>> {
    let row = sqlx::query("SELECT * FROM partners WHERE api_key_hash = ? AND revoked = 0")
        .bind(hash_api_key(api_key))
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(row_to_info))
}

/// The newest active signing key of a partner.
pub(crate) async fn current_key(
    pool: &SqlitePool,
    sealer: &Sealer,
    name: &str,
) -> sqlx::Result<Option<SigningKey>> {
    let row = sqlx::query("SELECT kid, secret FROM partner_keys WHERE partner = ? AND retire_at IS NULL ORDER BY created_at DESC, rowid DESC LIMIT 1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        let kid: String = r.get("kid");
        let key = opened(sealer, name, &kid, &r.get::<String, _>("secret"))?;
        Ok(SigningKey { kid, key })
    })
    .transpose()
}

/// Every partner that is not revoked, with its active keys.
pub(crate) async fn fleet(pool: &SqlitePool, sealer: &Sealer) -> sqlx::Result<Vec<FleetPartner>> {
    let mut out = Vec::new();
    for p in list(pool).await?.into_iter().filter(|p| !p.revoked) {
        let rows = sqlx::query("SELECT kid, secret FROM partner_keys WHERE partner = ? AND (retire_at IS NULL OR retire_at > ?) ORDER BY created_at DESC, rowid DESC")
            .bind(&p.name)
            .bind(now())
            .fetch_all(pool)
            .await?;
        let keys = rows
            .iter()
            .map(|r| {
                let kid: String = r.get("kid");
                let key = opened(sealer, &p.name, &kid, &r.get::<String, _>("secret"))?;
                Ok(SigningKey { kid, key })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        out.push(FleetPartner {
            name: p.name,
            scope: p.scope,
            keys,
        });
    }
    Ok(out)
}

/// Per-partner token-request limits.
#[derive(Default)]
pub(crate) struct Limits {
    limiters: Mutex<HashMap<String, (u32, Arc<DefaultDirectRateLimiter>)>>,
}

impl Limits {
    /// `Ok` if the partner may make a request now, else the seconds to wait.
    pub(crate) fn check(&self, name: &str, per_minute: u32) -> Result<(), u64> {
        let limiter = {
            let Ok(mut map) = self.limiters.lock() else {
                return Ok(());
            };
            let entry = map
                .entry(name.to_string())
                .or_insert_with(|| (0, limiter(per_minute)));
            if entry.0 != per_minute {
                *entry = (per_minute, limiter(per_minute));
            }
            entry.1.clone()
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            wait.as_secs().max(1)
        })
    }
}

fn limiter(per_minute: u32) -> Arc<DefaultDirectRateLimiter> {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    Arc::new(governor::RateLimiter::direct(Quota::per_minute(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_for_their_partner_and_id() {
        let sealer = Sealer::new(&[7u8; 32]);
        let stored = sealer.seal("acme", "k1", "00ff");
        assert!(stored.starts_with(SEALED) && !stored.contains("00ff"));
        assert_eq!(sealer.open("acme", "k1", &stored).as_deref(), Some("00ff"));
        assert_eq!(sealer.open("other", "k1", &stored), None);
        assert_eq!(sealer.open("acme", "k2", &stored), None);
        assert_eq!(Sealer::new(&[8u8; 32]).open("acme", "k1", &stored), None);
        // Tampered, short, or not sealed at all: refused, never a panic.
        let mut bad = stored.clone();
        bad.pop();
        bad.push(if stored.ends_with('0') { '1' } else { '0' });
        assert_eq!(sealer.open("acme", "k1", &bad), None);
        assert_eq!(sealer.open("acme", "k1", "sealed1:00"), None);
        assert_eq!(sealer.open("acme", "k1", "00ff"), None);
        // A fresh nonce each time.
        assert_ne!(sealer.seal("acme", "k1", "00ff"), stored);
    }
}
