//! Purge rules kept as bans: a rule and the time it was made. An object
//! stored before a ban that matches it is purged.
//!
//! Pure: times come in with the bans, and saving the list is the cache's
//! business (`TieredCache` writes what [`Bans::add`] hands back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

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

/// The bans in force, oldest first.
pub(crate) struct Bans {
    list: RwLock<Vec<Ban>>,
    newest_ms: AtomicU64,
}

impl Bans {
    /// Bans from a saved list (in any order).
    pub(crate) fn from_list(mut list: Vec<Ban>) -> Bans {
        list.sort_by_key(|b| b.at_ms);
        let newest = list.last().map_or(0, |b| b.at_ms);
        Bans {
            list: RwLock::new(list),
            newest_ms: AtomicU64::new(newest),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.read().map(|l| l.len()).unwrap_or(0)
    }

    /// Adds bans; answers the whole list as it now stands, to save.
    pub(crate) fn add(&self, new: Vec<Ban>) -> Vec<Ban> {
        let at = new.iter().map(|b| b.at_ms).max().unwrap_or(0);
        let Ok(mut list) = self.list.write() else {
            return Vec::new();
        };
        list.extend(new);
        // Bans made at once are in order; one made "earlier" by a clock
        // step back still sorts in.
        list.sort_by_key(|b| b.at_ms);
        if list.len() > MAX_BANS {
            let drop = list.len() - MAX_BANS;
            tracing::warn!(
                forgotten = drop,
                "over {MAX_BANS} purge bans; forgetting the oldest"
            );
            list.drain(..drop);
        }
        self.newest_ms.fetch_max(at, Ordering::SeqCst);
        list.clone()
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
    fn only_objects_stored_before_a_ban_are_purged() {
        let bans = Bans::from_list(Vec::new());
        let saved = bans.add(vec![Ban {
            rule: PurgeRule::Prefix("/vod/".into()),
            at_ms: 100,
        }]);
        assert_eq!(saved.len(), 1, "the list to save");
        assert!(bans.bans("/vod/a/1.m4s", &obj(100, "")));
        assert!(!bans.bans("/vod/a/1.m4s", &obj(101, "")));
        assert!(!bans.bans("/mezz/a", &obj(50, "")));
        let reloaded = Bans::from_list(saved);
        assert_eq!(reloaded.len(), 1);
        assert!(reloaded.bans("/vod/a/1.m4s", &obj(99, "")));
    }
}
