//! The tiered object cache shared by edge and shield: moka in RAM in front of
//! foyer on disk. A restart keeps the disk tier.
//!
//! Objects are whole HTTP responses (status, the headers worth keeping, body).
//! Freshness is decided by the caller's policy; the cache stores what it is
//! given with the expiry the caller computed, and never returns an expired
//! object as fresh.
//!
//! Purge works as bans, as in Varnish: a rule (exact key, prefix or
//! surrogate-key tag) with the time it was made. An object stored before a
//! ban that matches it is gone: `get` drops it on sight, in either tier, so
//! a purge costs nothing up front however many objects it names, and reaches
//! the disk tier too, which cannot be scanned. RAM is also swept at once so
//! the memory comes back. Bans are kept on disk beside the disk tier, so a
//! restart does not bring purged objects back.

#![warn(unreachable_pub)]

mod bans;
mod policy;
pub use bans::{Ban, PurgeRule, MAX_BANS};
pub use policy::{freshness, shared_lifetime, AnswerHeaders, Freshness, Lifetime, MAX_TTL};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, RecoverMode,
};

/// One cached response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedObject {
    /// HTTP status.
    pub status: u16,
    /// Headers to replay, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// When the fetch that made it started, in Unix milliseconds: a purge
    /// made while the fetch was in flight still applies to it.
    pub stored_at_ms: u64,
    /// Until when it is fresh, in Unix seconds.
    pub fresh_until: u64,
    /// Seconds past `fresh_until` it may be served while it is refreshed
    /// in the background (`stale-while-revalidate`).
    pub stale_while_revalidate: u32,
    /// Seconds past `fresh_until` it may be served when the upstream fails
    /// (`stale-if-error`).
    pub stale_if_error: u32,
}

impl CachedObject {
    /// Whether it is fresh at `now` (Unix seconds).
    pub fn is_fresh(&self, now: u64) -> bool {
        self.fresh_until > now
    }

    /// Whether, stale, it may still be served while being refreshed.
    pub fn may_revalidate_stale(&self, now: u64) -> bool {
        now < self
            .fresh_until
            .saturating_add(u64::from(self.stale_while_revalidate))
    }

    /// Whether, stale, it may still be served when the upstream fails.
    pub fn may_serve_on_error(&self, now: u64) -> bool {
        now < self
            .fresh_until
            .saturating_add(u64::from(self.stale_if_error))
    }

    /// The value of a kept header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// RAM (moka).
    Memory,
    /// Disk (foyer).
    Disk,
}

impl Tier {
    /// The word used in `Cache-Status` `detail=` and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

/// Sizes and places of the two tiers.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of RAM for the moka tier.
    pub memory_bytes: u64,
    /// Directory of the foyer disk tier; `None` for RAM only.
    pub disk_dir: Option<PathBuf>,
    /// Bytes of disk.
    pub disk_bytes: u64,
    /// Largest object kept; larger ones pass through uncached.
    pub max_object_bytes: u64,
}

/// Why the cache could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The disk tier could not be created or recovered.
    #[error("disk cache at {dir}: {reason}")]
    Disk {
        /// The configured directory.
        dir: String,
        /// What went wrong.
        reason: String,
    },
}

/// The two-tier cache.
#[derive(Clone)]
pub struct TieredCache {
    memory: moka::future::Cache<String, Arc<CachedObject>>,
    disk: Option<HybridCache<String, Bytes>>,
    max_object_bytes: u64,
    bans: Arc<bans::Bans>,
    /// Where the bans are saved (beside the disk tier), if anywhere.
    bans_file: Option<PathBuf>,
}

/// Block size of the disk engine; also the hard ceiling on one object.
const DISK_BLOCK_BYTES: usize = 16 * 1024 * 1024;

impl TieredCache {
    /// Opens the cache, recovering the disk tier if it exists.
    pub async fn open(cfg: &CacheConfig) -> Result<TieredCache, CacheError> {
        let memory = moka::future::Cache::builder()
            .max_capacity(cfg.memory_bytes)
            .weigher(|k: &String, v: &Arc<CachedObject>| {
                let w = k.len() + v.body.len() + 256;
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            .build();
        let disk = match &cfg.disk_dir {
            None => None,
            Some(dir) => {
                Some(
                    open_disk(dir, cfg.disk_bytes)
                        .await
                        .map_err(|e| CacheError::Disk {
                            dir: dir.display().to_string(),
                            reason: e.to_string(),
                        })?,
                )
            }
        };
        let bans_file = cfg.disk_dir.as_deref().map(|d| d.join("bans.json"));
        let bans = bans::Bans::from_list(bans_file.as_deref().map(load_bans).unwrap_or_default());
        Ok(TieredCache {
            bans_file,
            memory,
            disk,
            max_object_bytes: cfg
                .max_object_bytes
                .min(DISK_BLOCK_BYTES as u64 - 64 * 1024),
            bans: Arc::new(bans),
        })
    }

    /// Purges what `rules` name: from now on, objects stored before this
    /// call that match are gone. Returns the number of rules applied.
    pub async fn purge(&self, rules: &[PurgeRule]) -> std::io::Result<usize> {
        let at = now_ms();
        let new: Vec<Ban> = rules
            .iter()
            .map(|r| Ban {
                rule: r.clone(),
                at_ms: at,
            })
            .collect();
        let list = self.bans.add(new.clone());
        if let Some(file) = &self.bans_file {
            save_bans(file, &list)?;
        }
        // RAM now, so the memory comes back; disk lazily, on the next read.
        let sweep = new;
        if let Err(e) = self
            .memory
            .invalidate_entries_if(move |k, v| sweep.iter().any(|b| b.applies(k, v)))
        {
            tracing::warn!(error = %e, "sweeping RAM after a purge");
        }
        Ok(rules.len())
    }

    /// The largest object stored.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    /// Bans in force.
    pub fn bans(&self) -> usize {
        self.bans.len()
    }

    /// Looks a key up in RAM, then on disk; a disk hit is promoted to RAM.
    /// Returns stale objects too: the caller checks `fresh_until`.
    pub async fn get(&self, key: &str) -> Option<(Arc<CachedObject>, Tier)> {
        if let Some(obj) = self.memory.get(key).await {
            if self.bans.bans(key, &obj) {
                self.remove(key).await;
                return None;
            }
            return Some((obj, Tier::Memory));
        }
        let disk = self.disk.as_ref()?;
        let entry = match disk.get(key).await {
            Ok(Some(e)) => e,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "disk cache read failed");
                return None;
            }
        };
        let obj = match decode(entry.value().clone()) {
            Some(o) => Arc::new(o),
            None => {
                tracing::warn!(key, "dropping undecodable disk cache entry");
                disk.remove(key);
                return None;
            }
        };
        if self.bans.bans(key, &obj) {
            disk.remove(key);
            return None;
        }
        self.memory.insert(key.to_string(), obj.clone()).await;
        Some((obj, Tier::Disk))
    }

    /// Stores an object in both tiers. Objects over the size limit are not
    /// stored; the return value says whether it was.
    pub async fn put(&self, key: &str, obj: CachedObject) -> bool {
        if obj.body.len() as u64 > self.max_object_bytes {
            return false;
        }
        let obj = Arc::new(obj);
        if let Some(disk) = &self.disk {
            disk.insert(key.to_string(), encode(&obj));
        }
        self.memory.insert(key.to_string(), obj).await;
        true
    }

    /// Removes one key from both tiers.
    pub async fn remove(&self, key: &str) {
        self.memory.invalidate(key).await;
        if let Some(disk) = &self.disk {
            disk.remove(key);
        }
    }

    /// Bytes and objects in RAM, after the cache's pending bookkeeping.
    pub async fn memory_usage(&self) -> (u64, u64) {
        self.memory.run_pending_tasks().await;
        (self.memory.weighted_size(), self.memory.entry_count())
    }

    /// Approximate bytes in RAM.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.weighted_size()
    }

    /// Objects in RAM.
    pub fn memory_entries(&self) -> u64 {
        self.memory.entry_count()
    }

    /// Flushes the disk tier; call before the process exits.
    pub async fn close(&self) {
        self.memory.run_pending_tasks().await;
        if let Some(disk) = &self.disk {
            if let Err(e) = disk.close().await {
                tracing::warn!(error = %e, "closing disk cache");
            }
        }
    }
}

/// Milliseconds since the Unix epoch: when a purge is made. The shell's
/// clock; the ban list itself is given its times.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The bans saved beside the disk tier; none if the file is missing or
/// unreadable (logged).
fn load_bans(file: &std::path::Path) -> Vec<Ban> {
    let Ok(bytes) = std::fs::read(file) else {
        return Vec::new();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::error!(error = %e, "unreadable purge bans; starting with none");
        Vec::new()
    })
}

/// Saves the bans (written aside, then renamed over the old file).
fn save_bans(file: &std::path::Path, list: &[Ban]) -> std::io::Result<()> {
    let tmp = file.with_extension("json.tmp");
    let bytes = serde_json::to_vec(list).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

async fn open_disk(
    dir: &std::path::Path,
    bytes: u64,
) -> anyhow::Result<HybridCache<String, Bytes>> {
    std::fs::create_dir_all(dir)?;
    let capacity = usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .max(4 * DISK_BLOCK_BYTES);
    let device = FsDeviceBuilder::new(dir).with_capacity(capacity).build()?;
    let cache = HybridCacheBuilder::new()
        .with_name("cascade")
        // Write through, so that what is in RAM survives a restart on disk.
        .with_policy(HybridCachePolicy::WriteOnInsertion)
        // moka is the RAM tier; foyer's own memory tier only buffers.
        .memory(8 * 1024 * 1024)
        .with_weighter(|k: &String, v: &Bytes| k.len() + v.len())
        .storage()
        .with_engine_config(BlockEngineConfig::new(device).with_block_size(DISK_BLOCK_BYTES))
        .with_recover_mode(RecoverMode::Quiet)
        .build()
        .await?;
    Ok(cache)
}

/// Disk format, version 2: magic, status, store time (ms), expiry (s), the
/// two stale windows (s), header count, then length-prefixed header names
/// and values, then the body. Version 1 entries are dropped on read.
const MAGIC: u32 = 0xCA5C_0002;
/// Bytes before the headers.
const FIXED: usize = 4 + 2 + 8 + 8 + 4 + 4 + 4;

fn encode(obj: &CachedObject) -> Bytes {
    let header_bytes: usize = obj.headers.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut b = BytesMut::with_capacity(32 + header_bytes + obj.body.len());
    b.put_u32(MAGIC);
    b.put_u16(obj.status);
    b.put_u64(obj.stored_at_ms);
    b.put_u64(obj.fresh_until);
    b.put_u32(obj.stale_while_revalidate);
    b.put_u32(obj.stale_if_error);
    b.put_u32(obj.headers.len() as u32);
    for (k, v) in &obj.headers {
        b.put_u32(k.len() as u32);
        b.put_slice(k.as_bytes());
        b.put_u32(v.len() as u32);
        b.put_slice(v.as_bytes());
    }
    b.put_slice(&obj.body);
    b.freeze()
}

fn decode(mut b: Bytes) -> Option<CachedObject> {
    if b.remaining() < FIXED || b.get_u32() != MAGIC {
        return None;
    }
    let status = b.get_u16();
    let stored_at_ms = b.get_u64();
    let fresh_until = b.get_u64();
    let stale_while_revalidate = b.get_u32();
    let stale_if_error = b.get_u32();
    let count = b.get_u32() as usize;
    // Each header needs at least 8 bytes: check before allocating.
    if count > b.remaining() / 8 {
        return None;
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let k = take_string(&mut b)?;
        let v = take_string(&mut b)?;
        headers.push((k, v));
    }
    Some(CachedObject {
        status,
        headers,
        body: b,
        stored_at_ms,
        fresh_until,
        stale_while_revalidate,
        stale_if_error,
    })
}

fn take_string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    if n > b.remaining() {
        return None;
    }
    String::from_utf8(b.split_to(n).to_vec()).ok()
}

/// A default for tests and `cascade dev`: 256 MiB RAM, no disk.
pub fn memory_only(bytes: u64) -> CacheConfig {
    CacheConfig {
        memory_bytes: bytes,
        disk_dir: None,
        disk_bytes: 0,
        max_object_bytes: 8 * 1024 * 1024,
    }
}

/// How long to wait for the disk tier when shutting down.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(body: &'static [u8]) -> CachedObject {
        CachedObject {
            status: 200,
            headers: vec![("content-type".into(), "video/mp4".into())],
            body: Bytes::from_static(body),
            stored_at_ms: 10_000,
            fresh_until: 20,
            stale_while_revalidate: 5,
            stale_if_error: 60,
        }
    }

    #[test]
    fn codec_round_trip_and_rejects_garbage() {
        let o = obj(b"hello");
        assert_eq!(decode(encode(&o)), Some(o));
        assert_eq!(decode(Bytes::from_static(b"short")), None);
        let mut bad = encode(&obj(b"x")).to_vec();
        bad[FIXED - 4..FIXED].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(bad)), None);
    }

    #[tokio::test]
    async fn disk_tier_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CacheConfig {
            memory_bytes: 1 << 20,
            disk_dir: Some(dir.path().to_path_buf()),
            disk_bytes: 64 << 20,
            max_object_bytes: 1 << 20,
        };
        let cache = TieredCache::open(&cfg).await.unwrap();
        assert!(cache.put("k", obj(b"segment bytes")).await);
        assert_eq!(cache.get("k").await.unwrap().1, Tier::Memory);
        cache.close().await;
        drop(cache);

        let cache = TieredCache::open(&cfg).await.unwrap();
        let (o, tier) = cache.get("k").await.expect("recovered from disk");
        assert_eq!(tier, Tier::Disk);
        assert_eq!(&o.body[..], b"segment bytes");
        // Promoted to RAM on the way.
        assert_eq!(cache.get("k").await.unwrap().1, Tier::Memory);
        cache.remove("k").await;
        assert!(cache.get("k").await.is_none());
    }

    #[tokio::test]
    async fn a_purge_outlives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CacheConfig {
            memory_bytes: 1 << 20,
            disk_dir: Some(dir.path().to_path_buf()),
            disk_bytes: 64 << 20,
            max_object_bytes: 1 << 20,
        };
        let mut stored = obj(b"old");
        stored.stored_at_ms = 1;
        let cache = TieredCache::open(&cfg).await.unwrap();
        assert!(cache.put("/vod/a/1.m4s", stored).await);
        assert_eq!(
            cache
                .purge(&[PurgeRule::Prefix("/vod/a/".into())])
                .await
                .unwrap(),
            1
        );
        assert!(cache.get("/vod/a/1.m4s").await.is_none());
        cache.close().await;
        drop(cache);
        // The disk tier still holds the object; the saved ban keeps it gone.
        let cache = TieredCache::open(&cfg).await.unwrap();
        assert_eq!(cache.bans(), 1);
        assert!(cache.get("/vod/a/1.m4s").await.is_none());
    }
}
