//! Cache policy: what to store and for how long, from `Cache-Control`.
//! Pure: the caller passes the headers and the times and gets a decision.
//!
//! [`shared_lifetime`] is RFC 9111's freshness for a shared cache, written
//! here rather than taken from `http-cache-semantics` (which the edge's
//! generic path uses) because that crate does not understand partial
//! answers (206), and the shield caches mezzanine as 206 slices.

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

/// The response headers a shared cache reads for freshness, as sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerHeaders<'a> {
    /// `Cache-Control` (all fields joined with `,`).
    pub cache_control: Option<&'a str>,
    /// `Expires`.
    pub expires: Option<&'a str>,
    /// `Date`.
    pub date: Option<&'a str>,
    /// `Age`.
    pub age: Option<&'a str>,
    /// `Vary`.
    pub vary: Option<&'a str>,
}

/// How long an answer stays fresh in a shared cache, and how old it was
/// when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Seconds of freshness left on arrival (`ttl: None`: not storable),
    /// with the stale windows that still apply.
    pub freshness: Freshness,
    /// Its age on arrival (RFC 9111 §4.2.3 `corrected_initial_age`): what
    /// `Age` says once the cache has added the time it held it.
    pub initial_age: u64,
}

/// RFC 9111 §4.2 for a shared cache: the freshness lifetime from
/// `s-maxage`, `max-age` or `Expires` − `Date`, less the answer's age on
/// arrival (from `Age`, `Date` and the time the request took); `no-store`,
/// `private` and `Vary: *` forbid storing; `no-cache` stores with no
/// freshness (every reuse is revalidated); `must-revalidate`,
/// `proxy-revalidate` and `s-maxage` forbid serving it stale, so the stale
/// windows close. Times are Unix seconds: `requested` when the request
/// went out, `received` when the answer came.
pub fn shared_lifetime(h: &AnswerHeaders<'_>, requested: u64, received: u64) -> Lifetime {
    let date = h.date.and_then(http_date);
    // §4.2.3: the larger of the age the clocks show and the age upstream
    // caches declared plus the time the request took.
    let apparent_age = date.map_or(0, |d| received.saturating_sub(d));
    let age_value = h
        .age
        .and_then(|a| a.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_TTL);
    let initial_age =
        apparent_age.max(age_value.saturating_add(received.saturating_sub(requested)));
    let vary_star = h
        .vary
        .is_some_and(|v| v.split(',').any(|f| f.trim() == "*"));
    let mut f = freshness(h.cache_control, None);
    let directives = directives(h.cache_control);
    let has = |name: &str| directives.iter().any(|(n, _)| n == name);
    if f.ttl.is_none() && !has("no-store") && !has("private") && !has("no-cache") {
        // §4.2.1: no max-age or s-maxage: Expires − Date; an Expires that
        // is not a date means already expired.
        f.ttl = h.expires.map(|e| match (http_date(e), date) {
            (Some(e), Some(d)) => e.saturating_sub(d).min(MAX_TTL),
            (Some(e), None) => e.saturating_sub(received).min(MAX_TTL),
            (None, _) => 0,
        });
    }
    if vary_star {
        f.ttl = None;
    }
    f.ttl = f.ttl.map(|ttl| ttl.saturating_sub(initial_age));
    if f.ttl.is_none() || has("must-revalidate") || has("proxy-revalidate") || has("s-maxage") {
        f.stale_if_error = 0;
        f.stale_while_revalidate = 0;
    }
    Lifetime {
        freshness: f,
        initial_age,
    }
}

/// `Cache-Control` as lower-case `(name, value)` pairs.
fn directives(cache_control: Option<&str>) -> Vec<(String, Option<String>)> {
    cache_control
        .into_iter()
        .flat_map(|cc| cc.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .map(|d| match d.split_once('=') {
            Some((n, v)) => (
                n.trim().to_string(),
                Some(v.trim().trim_matches('"').to_string()),
            ),
            None => (d, None),
        })
        .collect()
}

/// An HTTP date (RFC 9110 §5.6.7, all three formats) as Unix seconds.
fn http_date(v: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
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
    if cache_control.is_none() {
        return Freshness {
            ttl: default_ttl,
            stale_if_error,
            stale_while_revalidate,
        };
    }
    for (name, value) in directives(cache_control) {
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

    const T: u64 = 1_700_000_000;

    fn at(secs: u64) -> String {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    #[test]
    fn shared_lifetimes() {
        let cc = |v: &'static str| AnswerHeaders {
            cache_control: Some(v),
            ..Default::default()
        };
        // Age on arrival comes off the lifetime and is remembered.
        let l = shared_lifetime(
            &AnswerHeaders {
                cache_control: Some("max-age=100"),
                age: Some("30"),
                ..Default::default()
            },
            T,
            T + 2,
        );
        assert_eq!((l.freshness.ttl, l.initial_age), (Some(68), 32));
        // The Date header's age counts when it is the larger.
        let date = at(T - 50);
        let l = shared_lifetime(
            &AnswerHeaders {
                cache_control: Some("max-age=100"),
                date: Some(&date),
                age: Some("10"),
                ..Default::default()
            },
            T,
            T,
        );
        assert_eq!((l.freshness.ttl, l.initial_age), (Some(50), 50));
        // Older than its lifetime: stored with no freshness left.
        let l = shared_lifetime(
            &AnswerHeaders {
                cache_control: Some("max-age=10"),
                age: Some("600"),
                ..Default::default()
            },
            T,
            T,
        );
        assert_eq!(l.freshness.ttl, Some(0));
        // Expires − Date, when no max-age.
        let (d, e) = (at(T), at(T + 120));
        let h = AnswerHeaders {
            expires: Some(&e),
            date: Some(&d),
            ..Default::default()
        };
        assert_eq!(shared_lifetime(&h, T, T).freshness.ttl, Some(120));
        // max-age wins over Expires; an invalid Expires is already expired.
        let h = AnswerHeaders {
            cache_control: Some("max-age=5"),
            expires: Some(&e),
            date: Some(&d),
            ..Default::default()
        };
        assert_eq!(shared_lifetime(&h, T, T).freshness.ttl, Some(5));
        let h = AnswerHeaders {
            expires: Some("0"),
            ..Default::default()
        };
        assert_eq!(shared_lifetime(&h, T, T).freshness.ttl, Some(0));
        // Nothing said: not stored.
        assert_eq!(
            shared_lifetime(&AnswerHeaders::default(), T, T)
                .freshness
                .ttl,
            None
        );
        // Never stored.
        for v in ["no-store", "private, max-age=60", "no-store, max-age=60"] {
            assert_eq!(shared_lifetime(&cc(v), T, T).freshness.ttl, None, "{v}");
        }
        let e = at(T + 60);
        let h = AnswerHeaders {
            cache_control: Some("private"),
            expires: Some(&e),
            ..Default::default()
        };
        assert_eq!(shared_lifetime(&h, T, T).freshness.ttl, None);
        let h = AnswerHeaders {
            cache_control: Some("max-age=60"),
            vary: Some("Accept, *"),
            ..Default::default()
        };
        assert_eq!(shared_lifetime(&h, T, T).freshness.ttl, None);
        // no-cache: stored, revalidated on every reuse.
        assert_eq!(
            shared_lifetime(&cc("no-cache"), T, T).freshness.ttl,
            Some(0)
        );
        // Stale windows stay unless revalidation is required.
        let f = shared_lifetime(
            &cc("max-age=1, stale-if-error=60, stale-while-revalidate=9"),
            T,
            T,
        )
        .freshness;
        assert_eq!((f.stale_if_error, f.stale_while_revalidate), (60, 9));
        for v in [
            "max-age=1, must-revalidate, stale-if-error=60",
            "max-age=1, proxy-revalidate, stale-if-error=60",
            "s-maxage=1, stale-if-error=60, stale-while-revalidate=9",
        ] {
            let f = shared_lifetime(&cc(v), T, T).freshness;
            assert_eq!((f.stale_if_error, f.stale_while_revalidate), (0, 0), "{v}");
        }
    }

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
