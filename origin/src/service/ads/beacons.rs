//! Server-side tracking: edges report which ad segments a session's
//! player fetched; the events those fetches reach (impression, start,
//! quartiles, complete) are recorded once each per session, break and ad,
//! in order, and sent by one sender per origin with retries. Several
//! origins share the work by claiming each beacon for a lease.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use utoipa::ToSchema;

use super::plan_of;
use crate::repo::ads::{self as repo, NewBeacon, ReportRow};
use crate::service::state::State;
use crate::storage::{clock, Error, Result};

/// Tries before a beacon is given up.
const MAX_ATTEMPTS: i64 = 5;
/// How long one origin holds a beacon it is sending.
const LEASE_MS: i64 = 30_000;
/// One beacon URL's time to answer.
const BEACON_TIMEOUT: Duration = Duration::from_secs(5);
/// Reports taken in one batch.
const MAX_REPORTS: usize = 10_000;

/// The events of a linear ad, in the order they happen, with the share of
/// the ad that must have been fetched for each.
const EVENTS: [(&str, f64); 6] = [
    ("impression", 0.0),
    ("start", 0.0),
    ("firstQuartile", 0.25),
    ("midpoint", 0.5),
    ("thirdQuartile", 0.75),
    ("complete", 1.0),
];

/// One edge's batch of ad segment fetches.
#[derive(Deserialize, ToSchema)]
pub(crate) struct Progress {
    reports: Vec<Fetched>,
}

/// A session's player fetched segment `segment` of `segments` of an ad.
#[derive(Deserialize, ToSchema)]
pub(crate) struct Fetched {
    stream: String,
    #[serde(rename = "break")]
    brk: u32,
    ad: u32,
    segment: u32,
    segments: u32,
}

/// The events a fetch of segment `n` of `of` reaches: every event whose
/// point lies before the segment's end (the last segment completes).
pub(crate) fn events_reached(n: u32, of: u32) -> Vec<&'static str> {
    if of == 0 || n == 0 || n > of {
        return Vec::new();
    }
    let end = f64::from(n) / f64::from(of);
    EVENTS
        .iter()
        .filter(|(name, at)| {
            if *name == "complete" {
                n == of
            } else {
                *at < end
            }
        })
        .map(|(name, _)| *name)
        .collect()
}

/// Records the beacons a batch of fetches reaches.
pub(crate) async fn progress(state: &Arc<State>, p: Progress) -> Result<serde_json::Value> {
    if p.reports.len() > MAX_REPORTS {
        return Err(Error::bad_request(
            "too_many_reports",
            format!("at most {MAX_REPORTS} reports a batch"),
        ));
    }
    let now = clock::now_ms() as i64;
    // What the batch reaches, owned, without the events recorded before
    // (kept in RAM: most fetches of an ad reach nothing new), then written
    // in one transaction.
    struct Owed {
        key: String,
        stream: String,
        brk: u32,
        ad: u32,
        event: &'static str,
        creative: String,
        asset: String,
        urls: Vec<String>,
    }
    let mut owed: Vec<Owed> = Vec::new();
    for r in &p.reports {
        if !cascade_packager::is_safe_id(&r.stream) {
            continue;
        }
        let events = events_reached(r.segment, r.segments);
        let keys: Vec<(String, &'static str)> = events
            .into_iter()
            .map(|e| (format!("{}/{}/{}/{e}", r.stream, r.brk, r.ad), e))
            .filter(|(k, _)| {
                !state.ads.recorded.contains_key(k) && !owed.iter().any(|o| &o.key == k)
            })
            .collect();
        if keys.is_empty() {
            continue;
        }
        let Some(plan) = plan_of(state, &r.stream).await? else {
            continue;
        };
        if plan.tracking != "server" {
            continue;
        }
        let Some(ad) = plan
            .breaks
            .iter()
            .find(|b| b.id == r.brk)
            .and_then(|b| b.ads.get(r.ad as usize))
        else {
            continue;
        };
        for (key, event) in keys {
            owed.push(Owed {
                key,
                stream: r.stream.clone(),
                brk: r.brk,
                ad: r.ad,
                event,
                creative: ad.creative.clone(),
                asset: plan.asset.clone(),
                urls: ad.events.get(event).cloned().unwrap_or_default(),
            });
        }
    }
    let rows: Vec<NewBeacon<'_>> = owed
        .iter()
        .map(|o| NewBeacon {
            stream: &o.stream,
            brk: i64::from(o.brk),
            ad: i64::from(o.ad),
            event: o.event,
            creative: &o.creative,
            asset: &o.asset,
            urls: &o.urls,
        })
        .collect();
    let new = if rows.is_empty() {
        0
    } else {
        repo::record_beacons(&state.db, &rows, now).await?
    };
    for o in owed {
        state.ads.recorded.insert(o.key, ());
    }
    if new > 0 {
        state
            .ads
            .beacons
            .with_label_values(&["recorded"])
            .inc_by(new);
        state.ads.beacons_due.notify_one();
    }
    Ok(serde_json::json!({ "recorded": new }))
}

/// Sends due beacons until `stop` is set.
pub(crate) async fn run(state: Arc<State>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let sent = match send_due(&state).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "sending beacons");
                0
            }
        };
        if sent == 0 {
            let _ =
                tokio::time::timeout(Duration::from_millis(500), state.ads.beacons_due.notified())
                    .await;
        }
    }
}

/// One pass: due beacons, each ad's in order, ads side by side.
async fn send_due(state: &Arc<State>) -> Result<usize> {
    let now = clock::now_ms() as i64;
    let due = repo::due_beacons(&state.db, now, 500).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut by_ad: BTreeMap<(String, i64, i64), Vec<repo::Beacon>> = BTreeMap::new();
    for b in due {
        by_ad
            .entry((b.stream.clone(), b.brk, b.ad))
            .or_default()
            .push(b);
    }
    let n = by_ad.len();
    futures::future::join_all(by_ad.into_values().map(|beacons| {
        let st = state.clone();
        async move {
            for b in beacons {
                // An ad's events go in order: one that must wait holds the rest.
                if !send_one(&st, b).await {
                    break;
                }
            }
        }
    }))
    .await;
    Ok(n)
}

/// Sends one beacon's URLs; `false` when it is to be tried again later.
async fn send_one(state: &Arc<State>, b: repo::Beacon) -> bool {
    let now = clock::now_ms() as i64;
    match repo::claim_beacon(&state.db, b.id, now, LEASE_MS).await {
        Ok(true) => {}
        _ => return false,
    }
    let macros = cascade_ads::Macros::new()
        .set(
            "CACHEBUSTING",
            format!("{:08}", super::decide::rand_u32() % 100_000_000),
        )
        .set(
            "TIMESTAMP",
            cascade_packager::live::iso_time(clock::now_ms()),
        );
    let mut failed = Vec::new();
    for url in &b.urls {
        let url = cascade_ads::expand(url, &macros);
        let ok = super::is_http_url(&url)
            && matches!(
                state.ads.http.get(&url).timeout(BEACON_TIMEOUT).send().await,
                Ok(r) if r.status().is_success() || r.status().is_redirection()
            );
        if !ok {
            failed.push(url);
        }
    }
    let attempts = b.attempts + 1;
    let now = clock::now_ms() as i64;
    let (outcome, state_name, retry_at) = if failed.is_empty() {
        ("sent", "sent", now)
    } else if attempts >= MAX_ATTEMPTS {
        ("failed", "failed", now)
    } else {
        // 1 s, 2 s, 4 s, 8 s.
        ("retried", "pending", now + 1000 * (1 << (attempts - 1)))
    };
    state.ads.beacons.with_label_values(&[outcome]).inc();
    if outcome == "failed" {
        tracing::warn!(stream = %b.stream, event = %b.event, "a beacon was given up");
    }
    let remaining = if failed.is_empty() {
        None
    } else {
        Some(failed)
    };
    if let Err(e) = repo::beacon_outcome(
        &state.db,
        b.id,
        state_name,
        attempts,
        retry_at,
        now,
        remaining.as_deref(),
    )
    .await
    {
        tracing::error!(error = %e, "recording a beacon");
    }
    outcome == "sent"
}

/// Impressions and completion rate per day, creative and title between
/// two `YYYY-MM-DD` days (default: the last 7 days).
pub(crate) async fn report(
    state: &State,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<ReportRow>> {
    let today = (clock::now_ms() / 86_400_000) as i64;
    let day = |s: Option<&str>, default: i64| -> Result<i64> {
        match s {
            None | Some("") => Ok(default),
            Some(s) => parse_day(s).ok_or_else(|| {
                Error::bad_request("bad_day", format!("`{s}` is not a YYYY-MM-DD date"))
            }),
        }
    };
    let (from, to) = (day(from, today - 6)?, day(to, today)?);
    if from > to {
        return Err(Error::bad_request("bad_range", "from is after to"));
    }
    repo::report(&state.db, from, to).await
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
pub(crate) fn parse_day(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_reach_events_in_order() {
        assert_eq!(events_reached(1, 4), vec!["impression", "start"]);
        assert_eq!(
            events_reached(2, 4),
            vec!["impression", "start", "firstQuartile"]
        );
        assert_eq!(events_reached(4, 4).last(), Some(&"complete"));
        assert_eq!(events_reached(4, 4).len(), 6);
        // Three segments: the first passes the first quartile.
        assert_eq!(
            events_reached(1, 3),
            vec!["impression", "start", "firstQuartile"]
        );
        assert!(events_reached(0, 3).is_empty());
        assert!(events_reached(4, 3).is_empty());
    }

    #[test]
    fn days_parse() {
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2026-12-07"), Some(20_794));
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_day("yesterday"), None);
    }
}
