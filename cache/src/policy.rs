//! Cache policy: what to store and for how long, from `Cache-Control`.
//! Pure: the caller passes the header and gets a decision.

/// Longer lifetimes are read as this (ten years), so `now + ttl` cannot overflow.
pub const MAX_TTL: u64 = 10 * 365 * 24 * 3600;

/// What `Cache-Control` allows a shared cache to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Seconds the response is fresh; `None` when it must not be stored.
    pub ttl: Option<u64>,
    /// Seconds past expiry it may be served while the upstream fails.
    pub stale_if_error: u64,
    /// Seconds past expiry it may be served while it is refreshed.
    pub stale_while_revalidate: u64,
}

/// Reads `Cache-Control` as a shared cache: `no-store` and `private` forbid
/// storing; `s-maxage` wins over `max-age`; `no-cache` stores with no
/// freshness. With no directive, `default_ttl` applies.
pub fn freshness(cache_control: Option<&str>, default_ttl: Option<u64>) -> Freshness {
    let mut ttl = None;
    let mut s_maxage = None;
    let mut stale_if_error = 0;
    let mut stale_while_revalidate = 0;
    let mut forbid = false;
    let mut no_cache = false;
    let Some(cc) = cache_control else {
        return Freshness {
            ttl: default_ttl,
            stale_if_error,
            stale_while_revalidate,
        };
    };
    for directive in cc.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (
                n.trim().to_string(),
                Some(v.trim().trim_matches('"').to_string()),
            ),
            None => (directive.clone(), None),
        };
        let secs = value
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| s.min(MAX_TTL));
        match name.as_str() {
            "no-store" | "private" => forbid = true,
            "no-cache" => no_cache = true,
            "max-age" => ttl = secs.or(ttl),
            "s-maxage" => s_maxage = secs,
            "stale-if-error" => stale_if_error = secs.unwrap_or(0),
            "stale-while-revalidate" => stale_while_revalidate = secs.unwrap_or(0),
            _ => {}
        }
    }
    let ttl = if forbid {
        None
    } else if no_cache {
        Some(0)
    } else {
        s_maxage.or(ttl).or(default_ttl)
    };
    // What may not be stored may not be served stale either.
    if ttl.is_none() {
        stale_if_error = 0;
        stale_while_revalidate = 0;
    }
    Freshness {
        ttl,
        stale_if_error,
        stale_while_revalidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        assert_eq!(freshness(Some("public, max-age=60"), None).ttl, Some(60));
        assert_eq!(
            freshness(Some("max-age=60, s-maxage=10"), None).ttl,
            Some(10)
        );
        assert_eq!(freshness(Some("no-store, max-age=60"), None).ttl, None);
        assert_eq!(freshness(Some("private"), Some(5)).ttl, None);
        assert_eq!(freshness(Some("no-cache"), None).ttl, Some(0));
        assert_eq!(freshness(None, Some(7)).ttl, Some(7));
        assert_eq!(freshness(Some("max-age=x"), None).ttl, None);
        assert_eq!(
            freshness(Some("max-age=18446744073709551615"), None).ttl,
            Some(MAX_TTL)
        );
        let f = freshness(Some("max-age=1, stale-if-error=300"), None);
        assert_eq!((f.ttl, f.stale_if_error), (Some(1), 300));
        let f = freshness(Some("s-maxage=2, stale-while-revalidate=30"), None);
        assert_eq!((f.ttl, f.stale_while_revalidate), (Some(2), 30));
        let f = freshness(Some("no-store, stale-if-error=300"), None);
        assert_eq!((f.ttl, f.stale_if_error), (None, 0));
    }
}
