//! Purge rules kept as bans: a rule and the time it was made. An object
//! stored before a ban that matches it is purged.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::CachedObject;

/// Most bans kept; past this the oldest are forgotten (and logged), which
/// could let an object purged long ago come back from the disk tier.
pub const MAX_BANS: usize = 10_000;

/// What a purge names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum PurgeRule {
    /// One URL path: its key, and its variants by query, range or slice.
    Url(String),
    /// Every key that starts with this.
    Prefix(String),
    /// Every object whose `Surrogate-Key` lists this tag.
    Tag(String),
}

impl PurgeRule {
    /// Whether the rule names the object stored under `key`.
    pub fn matches(&self, key: &str, obj: &CachedObject) -> bool {
        match self {
            PurgeRule::Url(u) => key
                .strip_prefix(u.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['?', '|', '#'])),
            PurgeRule::Prefix(p) => key.starts_with(p.as_str()),
            PurgeRule::Tag(t) => obj
                .header("surrogate-key")
                .is_some_and(|v| v.split_ascii_whitespace().any(|k| k == t)),
        }
    }
}

/// A purge rule and when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// What it names.
    pub rule: PurgeRule,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

impl Ban {
    /// Whether this ban purges `obj`, stored under `key`.
    pub fn applies(&self, key: &str, obj: &CachedObject) -> bool {
        obj.stored_at_ms <= self.at_ms && self.rule.matches(key, obj)
    }
}

/// The bans in force, oldest first, optionally saved to a file.
pub(crate) struct Bans {
    list: RwLock<Vec<Ban>>,
    newest_ms: AtomicU64,
    file: Option<PathBuf>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Bans {
    /// Bans saved in `file`, if it exists and reads; else none.
    pub(crate) fn open(file: Option<PathBuf>) -> Bans {
        let mut list: Vec<Ban> = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "unreadable purge bans; starting with none");
                    None
                }
            })
            .unwrap_or_default();
        list.sort_by_key(|b| b.at_ms);
        let newest = list.last().map_or(0, |b| b.at_ms);
        Bans {
            list: RwLock::new(list),
            newest_ms: AtomicU64::new(newest),
            file,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.read().map(|l| l.len()).unwrap_or(0)
    }

    /// Adds bans (all made now) and saves the list.
    pub(crate) fn add(&self, new: Vec<Ban>) -> std::io::Result<()> {
        let Some(at) = new.iter().map(|b| b.at_ms).max() else {
            return Ok(());
        };
        let snapshot = {
            let mut list = self
                .list
                .write()
                .map_err(|_| std::io::Error::other("ban list poisoned"))?;
            list.extend(new);
            if list.len() > MAX_BANS {
                let drop = list.len() - MAX_BANS;
                tracing::warn!(
                    forgotten = drop,
                    "over {MAX_BANS} purge bans; forgetting the oldest"
                );
                list.drain(..drop);
            }
            self.newest_ms.fetch_max(at, Ordering::SeqCst);
            self.file.is_some().then(|| list.clone())
        };
        if let (Some(file), Some(list)) = (&self.file, snapshot) {
            let tmp = file.with_extension("json.tmp");
            let bytes = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, file)?;
        }
        Ok(())
    }

    /// Whether some ban purges `obj`, stored under `key`.
    pub(crate) fn bans(&self, key: &str, obj: &CachedObject) -> bool {
        // Nearly every object is newer than every ban: one load decides.
        if obj.stored_at_ms > self.newest_ms.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(list) = self.list.read() else {
            return false;
        };
        // Only bans made after the object was stored can apply.
        let first = list.partition_point(|b| b.at_ms < obj.stored_at_ms);
        list[first..].iter().any(|b| b.rule.matches(key, obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn obj(at_ms: u64, tags: &str) -> CachedObject {
        CachedObject {
            status: 200,
            headers: vec![("surrogate-key".into(), tags.into())],
            body: Bytes::new(),
            stored_at_ms: at_ms,
            fresh_until: 0,
            stale_while_revalidate: 0,
            stale_if_error: 0,
        }
    }

    #[test]
    fn rules_match_keys_and_tags() {
        let o = obj(1, "asset-a title-x");
        let url = PurgeRule::Url("/mezz/a/v1.mp4".into());
        assert!(url.matches("/mezz/a/v1.mp4", &o));
        assert!(url.matches("/mezz/a/v1.mp4|bytes=0-9", &o));
        assert!(url.matches("/mezz/a/v1.mp4#slice=3", &o));
        assert!(!url.matches("/mezz/a/v1.mp4x", &o));
        assert!(PurgeRule::Prefix("/vod/a/".into()).matches("/vod/a/v1/1.m4s", &o));
        assert!(!PurgeRule::Prefix("/vod/a/".into()).matches("/vod/ab/v1/1.m4s", &o));
        assert!(PurgeRule::Tag("title-x".into()).matches("/k", &o));
        assert!(!PurgeRule::Tag("asset".into()).matches("/k", &o));
    }

    #[test]
    fn only_objects_stored_before_a_ban_are_purged_and_bans_persist() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bans.json");
        let bans = Bans::open(Some(file.clone()));
        bans.add(vec![Ban {
            rule: PurgeRule::Prefix("/vod/".into()),
            at_ms: 100,
        }])
        .unwrap();
        assert!(bans.bans("/vod/a/1.m4s", &obj(100, "")));
        assert!(!bans.bans("/vod/a/1.m4s", &obj(101, "")));
        assert!(!bans.bans("/mezz/a", &obj(50, "")));
        let reopened = Bans::open(Some(file));
        assert_eq!(reopened.len(), 1);
        assert!(reopened.bans("/vod/a/1.m4s", &obj(99, "")));
    }
}
