//! Advertising: titles' ad breaks, the built-in inventory and its
//! frequency caps, conditioned creatives, sessions' ad plans and the
//! beacons they owe. Times are Unix milliseconds; days are Unix days.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::storage::db::Db;
use crate::storage::Result;

// ---- titles' breaks ---------------------------------------------------------

/// Where a title's breaks come from.
#[derive(Debug, Clone, Default)]
pub(crate) struct AssetAds {
    /// Seconds into the title, comma-separated.
    pub(crate) breaks: String,
    /// A VMAP schedule, instead.
    pub(crate) vmap_url: String,
    /// Its catalog genres (`,drama,thriller,`).
    pub(crate) genres: String,
}

/// A title's breaks and genres; `None` for no such asset.
pub(crate) async fn asset_ads(db: &Db, asset: &str) -> Result<Option<AssetAds>> {
    let row = sqlx::query(
        "SELECT a.ad_breaks, a.vmap_url, COALESCE(t.genres, '') AS genres
         FROM assets a LEFT JOIN titles t ON t.asset_id = a.id WHERE a.id = $1",
    )
    .bind(asset)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| {
        Ok(AssetAds {
            breaks: r.try_get("ad_breaks")?,
            vmap_url: r.try_get("vmap_url")?,
            genres: r.try_get("genres")?,
        })
    })
    .transpose()
}

/// Sets a title's breaks; `false` when there is no such asset.
pub(crate) async fn set_asset_ads(db: &Db, asset: &str, breaks: &str, vmap: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE assets SET ad_breaks = $1, vmap_url = $2 WHERE id = $3 AND kind = 'title'",
    )
    .bind(breaks)
    .bind(vmap)
    .bind(asset)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

// ---- the built-in inventory ------------------------------------------------

/// An ad of the built-in service's inventory.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct InventoryAd {
    pub(crate) id: String,
    /// Unique; what `cascade ads remove` names.
    pub(crate) name: String,
    /// The creative's media (the VAST `MediaFile`).
    pub(crate) media_url: String,
    pub(crate) duration_ms: i64,
    /// Two-letter countries it may play in; empty: anywhere.
    pub(crate) countries: Vec<String>,
    /// Genres of the titles it may play in; empty: any.
    pub(crate) genres: Vec<String>,
    /// Device types; empty: any.
    pub(crate) devices: Vec<String>,
    /// Plans; empty: any plan that has ads.
    pub(crate) plans: Vec<String>,
    /// Times one viewer sees it a day; 0: no cap.
    pub(crate) cap_per_day: i64,
    /// Share of the fill among ads that match.
    pub(crate) weight: i64,
    /// Where a click goes, if anywhere.
    pub(crate) click_url: String,
    pub(crate) created_ms: i64,
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn inventory_ad(r: &AnyRow) -> Result<InventoryAd> {
    Ok(InventoryAd {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        media_url: r.try_get("media_url")?,
        duration_ms: r.try_get("duration_ms")?,
        countries: split(&r.try_get::<String, _>("countries")?),
        genres: split(&r.try_get::<String, _>("genres")?),
        devices: split(&r.try_get::<String, _>("devices")?),
        plans: split(&r.try_get::<String, _>("plans")?),
        cap_per_day: r.try_get("cap_per_day")?,
        weight: r.try_get("weight")?,
        click_url: r.try_get("click_url")?,
        created_ms: r.try_get("created_ms")?,
    })
}

/// Adds an ad; `false` when its name is taken.
pub(crate) async fn insert_inventory(db: &Db, a: &InventoryAd) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO ad_inventory (id, name, media_url, duration_ms, countries, genres, devices, plans, cap_per_day, weight, click_url, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&a.id)
    .bind(&a.name)
    .bind(&a.media_url)
    .bind(a.duration_ms)
    .bind(a.countries.join(","))
    .bind(a.genres.join(","))
    .bind(a.devices.join(","))
    .bind(a.plans.join(","))
    .bind(a.cap_per_day)
    .bind(a.weight)
    .bind(&a.click_url)
    .bind(a.created_ms)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Every ad of the inventory, oldest first.
pub(crate) async fn list_inventory(db: &Db) -> Result<Vec<InventoryAd>> {
    let rows = sqlx::query("SELECT * FROM ad_inventory ORDER BY created_ms, id")
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(inventory_ad).collect()
}

/// Removes an ad by id or name; `false` when there is none.
pub(crate) async fn remove_inventory(db: &Db, id_or_name: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM ad_inventory WHERE id = $1 OR name = $1")
        .bind(id_or_name)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// How many times each ad was served to `viewer` on `day`.
pub(crate) async fn served_today(db: &Db, viewer: &str, day: i64) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT ad_id, count FROM ad_served WHERE viewer = $1 AND day = $2")
        .bind(viewer)
        .bind(day)
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("ad_id")?, r.try_get("count")?)))
        .collect()
}

/// Counts one serving of `ad` to `viewer` on `day`.
pub(crate) async fn count_served(db: &Db, viewer: &str, ad: &str, day: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO ad_served (viewer, ad_id, day, count) VALUES ($1, $2, $3, 1)
         ON CONFLICT (viewer, ad_id, day) DO UPDATE SET count = ad_served.count + 1",
    )
    .bind(viewer)
    .bind(ad)
    .bind(day)
    .execute(&db.pool)
    .await?;
    Ok(())
}

// ---- creatives -------------------------------------------------------------

/// A creative and where its conditioning stands.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Creative {
    pub(crate) id: String,
    pub(crate) url: String,
    /// The conditioned mezzanine's asset, once there is one.
    pub(crate) asset_id: Option<String>,
    /// `fetching`, `conditioning`, `ready` or `failed`.
    pub(crate) status: String,
    pub(crate) error: Option<String>,
    pub(crate) updated_ms: i64,
}

fn creative(r: &AnyRow) -> Result<Creative> {
    Ok(Creative {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        asset_id: r.try_get("asset_id")?,
        status: r.try_get("status")?,
        error: r.try_get("error")?,
        updated_ms: r.try_get("updated_ms")?,
    })
}

/// A creative by id, with its status read through its asset's.
pub(crate) async fn creative_by_id(db: &Db, id: &str) -> Result<Option<Creative>> {
    let row = sqlx::query(
        "SELECT c.id, c.url, c.asset_id, c.updated_ms,
                CASE WHEN a.status = 'ready' THEN 'ready'
                     WHEN a.status = 'failed' THEN 'failed'
                     ELSE c.status END AS status,
                COALESCE(c.error, a.error) AS error
         FROM creatives c LEFT JOIN assets a ON a.id = c.asset_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(creative).transpose()
}

/// Every creative, newest first.
pub(crate) async fn list_creatives(db: &Db) -> Result<Vec<Creative>> {
    let rows = sqlx::query(
        "SELECT c.id, c.url, c.asset_id, c.updated_ms,
                CASE WHEN a.status = 'ready' THEN 'ready'
                     WHEN a.status = 'failed' THEN 'failed'
                     ELSE c.status END AS status,
                COALESCE(c.error, a.error) AS error
         FROM creatives c LEFT JOIN assets a ON a.id = c.asset_id ORDER BY c.updated_ms DESC",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(creative).collect()
}

/// Claims a creative for fetching: `true` for the one caller that inserted
/// it (or took over a failed one after `retry_after_ms`).
pub(crate) async fn claim_creative(
    db: &Db,
    id: &str,
    url: &str,
    now: i64,
    retry_after_ms: i64,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO creatives (id, url, status, created_ms, updated_ms) VALUES ($1, $2, 'fetching', $3, $3)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(url)
    .bind(now)
    .execute(&db.pool)
    .await?;
    if inserted.rows_affected() > 0 {
        return Ok(true);
    }
    let retried = sqlx::query(
        "UPDATE creatives SET status = 'fetching', error = NULL, asset_id = NULL, updated_ms = $2
         WHERE id = $1 AND updated_ms < $3
           AND (status = 'failed' OR asset_id IN (SELECT id FROM assets WHERE status = 'failed'))",
    )
    .bind(id)
    .bind(now)
    .bind(now - retry_after_ms)
    .execute(&db.pool)
    .await?;
    Ok(retried.rows_affected() > 0)
}

/// Records that a creative is being conditioned into `asset`.
pub(crate) async fn creative_conditioning(db: &Db, id: &str, asset: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE creatives SET status = 'conditioning', asset_id = $2, updated_ms = $3 WHERE id = $1")
        .bind(id)
        .bind(asset)
        .bind(now)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Records that a creative could not be fetched.
pub(crate) async fn creative_failed(db: &Db, id: &str, why: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE creatives SET status = 'failed', error = $2, updated_ms = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(why)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

// ---- sessions --------------------------------------------------------------

/// The stream a plan is for: who, what, on which device.
pub(crate) struct StreamOf {
    pub(crate) user: String,
    pub(crate) asset: String,
    pub(crate) device_type: String,
}

/// A playback session's owner, title and device, while it holds a slot.
pub(crate) async fn stream_of(db: &Db, stream: &str) -> Result<Option<StreamOf>> {
    let row = sqlx::query("SELECT user_id, asset_id, device_type FROM streams WHERE id = $1")
        .bind(stream)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| {
        Ok(StreamOf {
            user: r.try_get("user_id")?,
            asset: r.try_get("asset_id")?,
            device_type: r.try_get("device_type")?,
        })
    })
    .transpose()
}

/// A session's stored plan (JSON), if decided.
pub(crate) async fn session_plan(db: &Db, stream: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT plan FROM ad_sessions WHERE stream_id = $1")
        .bind(stream)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| Ok(r.try_get("plan")?)).transpose()
}

/// Stores a session's plan unless one is there; answers the one that is.
pub(crate) async fn store_plan(
    db: &Db,
    stream: &str,
    asset: &str,
    plan: &str,
    now: i64,
) -> Result<String> {
    sqlx::query(
        "INSERT INTO ad_sessions (stream_id, asset_id, plan, created_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (stream_id) DO NOTHING",
    )
    .bind(stream)
    .bind(asset)
    .bind(plan)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(session_plan(db, stream)
        .await?
        .unwrap_or_else(|| plan.to_string()))
}

/// Replaces a session's plan if it is still `old`; `false` when another
/// writer changed it first.
pub(crate) async fn replace_plan(db: &Db, stream: &str, old: &str, new: &str) -> Result<bool> {
    let r = sqlx::query("UPDATE ad_sessions SET plan = $1 WHERE stream_id = $2 AND plan = $3")
        .bind(new)
        .bind(stream)
        .bind(old)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

// ---- beacons ---------------------------------------------------------------

/// A beacon owed.
#[derive(Debug, Clone)]
pub(crate) struct Beacon {
    pub(crate) id: i64,
    pub(crate) stream: String,
    pub(crate) brk: i64,
    pub(crate) ad: i64,
    pub(crate) event: String,
    pub(crate) urls: Vec<String>,
    pub(crate) attempts: i64,
}

/// A beacon to record.
pub(crate) struct NewBeacon<'a> {
    pub(crate) stream: &'a str,
    pub(crate) brk: i64,
    pub(crate) ad: i64,
    pub(crate) event: &'a str,
    pub(crate) creative: &'a str,
    pub(crate) asset: &'a str,
    pub(crate) urls: &'a [String],
}

/// Records beacons in order, each at most once per session, break, ad and
/// event; those with no URL are sent already. Answers how many were new.
pub(crate) async fn record_beacons(db: &Db, beacons: &[NewBeacon<'_>], now: i64) -> Result<u64> {
    let mut tx = db.pool.begin().await?;
    let mut new = 0;
    let day = now / 86_400_000;
    for b in beacons {
        let urls = serde_json::to_string(b.urls).unwrap_or_else(|_| "[]".into());
        let state = if b.urls.is_empty() { "sent" } else { "pending" };
        let done = sqlx::query(
            "INSERT INTO ad_beacons (stream_id, brk, ad, event, creative, asset_id, day, urls, state, next_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (stream_id, brk, ad, event) DO NOTHING",
        )
        .bind(b.stream)
        .bind(b.brk)
        .bind(b.ad)
        .bind(b.event)
        .bind(b.creative)
        .bind(b.asset)
        .bind(day)
        .bind(urls)
        .bind(state)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        new += done.rows_affected();
    }
    tx.commit().await?;
    Ok(new)
}

/// Beacons due: pending ones whose time has come and claims that lapsed,
/// oldest first; never one whose ad has an earlier beacon still to send
/// (waiting for a retry), so each ad's beacons go in order.
pub(crate) async fn due_beacons(db: &Db, now: i64, limit: i64) -> Result<Vec<Beacon>> {
    let rows = sqlx::query(
        "SELECT b.id, b.stream_id, b.brk, b.ad, b.event, b.urls, b.attempts FROM ad_beacons b
         WHERE b.state IN ('pending', 'sending') AND b.next_ms <= $1
           AND NOT EXISTS (SELECT 1 FROM ad_beacons e
                           WHERE e.stream_id = b.stream_id AND e.brk = b.brk AND e.ad = b.ad
                             AND e.id < b.id AND e.state IN ('pending', 'sending'))
         ORDER BY b.id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let urls: String = r.try_get("urls")?;
            Ok(Beacon {
                id: r.try_get("id")?,
                stream: r.try_get("stream_id")?,
                brk: r.try_get("brk")?,
                ad: r.try_get("ad")?,
                event: r.try_get("event")?,
                urls: serde_json::from_str(&urls).unwrap_or_default(),
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
}

/// Claims a due beacon for `lease_ms`: `true` for the one origin that gets it.
pub(crate) async fn claim_beacon(db: &Db, id: i64, now: i64, lease_ms: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE ad_beacons SET state = 'sending', next_ms = $2
         WHERE id = $1 AND state IN ('pending', 'sending') AND next_ms <= $3",
    )
    .bind(id)
    .bind(now + lease_ms)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Records how sending a beacon went: sent, to retry at `retry_at` (with
/// only the URLs that failed left to send), or given up.
pub(crate) async fn beacon_outcome(
    db: &Db,
    id: i64,
    state: &str,
    attempts: i64,
    retry_at: i64,
    now: i64,
    remaining: Option<&[String]>,
) -> Result<()> {
    let sent_ms = (state == "sent").then_some(now);
    match remaining {
        Some(urls) => {
            let urls = serde_json::to_string(urls).unwrap_or_else(|_| "[]".into());
            sqlx::query("UPDATE ad_beacons SET state = $2, attempts = $3, next_ms = $4, urls = $5 WHERE id = $1")
                .bind(id)
                .bind(state)
                .bind(attempts)
                .bind(retry_at)
                .bind(urls)
                .execute(&db.pool)
                .await?;
        }
        None => {
            sqlx::query("UPDATE ad_beacons SET state = $2, attempts = $3, next_ms = $4, sent_ms = $5 WHERE id = $1")
                .bind(id)
                .bind(state)
                .bind(attempts)
                .bind(retry_at)
                .bind(sent_ms)
                .execute(&db.pool)
                .await?;
        }
    }
    Ok(())
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ReportRow {
    /// `YYYY-MM-DD` (UTC).
    pub(crate) day: String,
    /// The creative's asset.
    pub(crate) creative: String,
    /// The title it played in.
    pub(crate) asset: String,
    pub(crate) impressions: i64,
    pub(crate) completes: i64,
    /// `completes / impressions`.
    pub(crate) completion_rate: f64,
}

/// Impressions and completions per day, creative and title, from day
/// `from` to day `to` (Unix days, inclusive).
pub(crate) async fn report(db: &Db, from: i64, to: i64) -> Result<Vec<ReportRow>> {
    let rows = sqlx::query(
        "SELECT day, creative, asset_id,
                SUM(CASE WHEN event = 'impression' THEN 1 ELSE 0 END) AS impressions,
                SUM(CASE WHEN event = 'complete' THEN 1 ELSE 0 END) AS completes
         FROM ad_beacons WHERE day >= $1 AND day <= $2 AND ad >= 0
         GROUP BY day, creative, asset_id ORDER BY day, creative, asset_id",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let day: i64 = r.try_get("day")?;
            let impressions: i64 = r.try_get("impressions")?;
            let completes: i64 = r.try_get("completes")?;
            Ok(ReportRow {
                day: cascade_packager::live::iso_time((day * 86_400_000) as u64)[..10].to_string(),
                creative: r.try_get("creative")?,
                asset: r.try_get("asset_id")?,
                impressions,
                completes,
                completion_rate: if impressions > 0 {
                    completes as f64 / impressions as f64
                } else {
                    0.0
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A beacon waiting for a retry holds back the later beacons of its ad
    /// (not those of other ads), so each ad's beacons arrive in order.
    #[tokio::test]
    async fn a_retried_beacon_holds_back_the_rest_of_its_ad() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}/t.db", dir.path().display());
        let db = crate::storage::db::open(&url, 1).await.unwrap();
        let urls = vec!["http://t.example/x".to_string()];
        let beacon = |ad: i64, event: &'static str| NewBeacon {
            stream: "s1",
            brk: 0,
            ad,
            event,
            creative: "c1",
            asset: "a1",
            urls: &urls,
        };
        let rows = [
            beacon(0, "impression"),
            beacon(0, "start"),
            beacon(1, "impression"),
        ];
        assert_eq!(record_beacons(&db, &rows, 1000).await.unwrap(), 3);
        // Recorded again: nothing new.
        assert_eq!(record_beacons(&db, &rows, 1000).await.unwrap(), 0);
        let due = due_beacons(&db, 1000, 10).await.unwrap();
        let names: Vec<(i64, &str)> = due.iter().map(|b| (b.ad, b.event.as_str())).collect();
        assert_eq!(names, vec![(0, "impression"), (1, "impression")]);
        // The first fails and waits until 5000: ad 0's start still waits.
        assert!(claim_beacon(&db, due[0].id, 1000, 30_000).await.unwrap());
        beacon_outcome(&db, due[0].id, "pending", 1, 5000, 1000, Some(&urls))
            .await
            .unwrap();
        let due = due_beacons(&db, 2000, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].ad, due[0].event.as_str()), (1, "impression"));
        // Sent at its retry: then the start is due.
        let first = due_beacons(&db, 5000, 10).await.unwrap();
        assert_eq!(first[0].event, "impression");
        beacon_outcome(&db, first[0].id, "sent", 2, 5000, 5000, None)
            .await
            .unwrap();
        let due = due_beacons(&db, 5000, 10).await.unwrap();
        assert!(
            due.iter().any(|b| b.ad == 0 && b.event == "start"),
            "{due:?}"
        );
    }
}
