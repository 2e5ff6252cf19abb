//! Plans and subscriptions, and the record of payment events applied.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::storage::db::Db;
use crate::storage::Result;

/// A plan and what it entitles.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Plan {
    /// `free` or `premium`.
    pub(crate) id: String,
    pub(crate) name: String,
    /// Whether it plays titles marked premium.
    pub(crate) premium: bool,
    /// Whether playback carries ads.
    pub(crate) ads: bool,
    /// Streams at once, per account.
    pub(crate) max_streams: i64,
    pub(crate) price_cents: i64,
}

/// An account's paid subscription.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SubscriptionView {
    plan: String,
    /// `active`, `trialing`, `past_due`, `canceled`, …
    status: String,
    /// Unix seconds.
    current_period_end: i64,
}

/// A subscription as a payment event states it.
pub(crate) struct Subscription<'a> {
    pub(crate) user: &'a str,
    pub(crate) provider_id: &'a str,
    pub(crate) plan: &'a str,
    pub(crate) status: &'a str,
    pub(crate) period_end: i64,
}

/// The plan in force for a user: the subscribed plan while the
/// subscription is good (with a day's grace for a late renewal), else free.
pub(crate) async fn plan_of(db: &Db, user: &str, now: u64) -> Result<Plan> {
    let row = sqlx::query(
        "SELECT p.id, p.name, p.premium, p.ads, p.max_streams, p.price_cents
         FROM subscriptions s JOIN plans p ON p.id = s.plan_id
         WHERE s.user_id = $1 AND s.status IN ('active', 'trialing', 'past_due')
           AND s.current_period_end + 86400 > $2",
    )
    .bind(user)
    .bind(now as i64)
    .fetch_optional(&db.pool)
    .await?;
    match row {
        Some(r) => Ok(plan_from_row(&r)?),
        None => free_plan(db).await,
    }
}

async fn free_plan(db: &Db) -> Result<Plan> {
    let r = sqlx::query(
        "SELECT id, name, premium, ads, max_streams, price_cents FROM plans WHERE id = 'free'",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(plan_from_row(&r)?)
}

fn plan_from_row(r: &sqlx::any::AnyRow) -> Result<Plan, sqlx::Error> {
    Ok(Plan {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        premium: r.try_get::<i64, _>("premium")? != 0,
        ads: r.try_get::<i64, _>("ads")? != 0,
        max_streams: r.try_get("max_streams")?,
        price_cents: r.try_get("price_cents")?,
    })
}

/// A user's subscription row, good or not.
pub(crate) async fn subscription_of(db: &Db, user: &str) -> Result<Option<SubscriptionView>> {
    let row = sqlx::query(
        "SELECT plan_id, status, current_period_end FROM subscriptions WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(&db.pool)
    .await?;
    Ok(match row {
        Some(r) => Some(SubscriptionView {
            plan: r.try_get("plan_id")?,
            status: r.try_get("status")?,
            current_period_end: r.try_get("current_period_end")?,
        }),
        None => None,
    })
}

/// The plans on offer, cheapest first.
pub(crate) async fn plans(db: &Db) -> Result<Vec<Plan>> {
    let rows = sqlx::query(
        "SELECT id, name, premium, ads, max_streams, price_cents FROM plans ORDER BY price_cents, id",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(plan_from_row).collect::<Result<_, _>>()?)
}

/// Records a payment event; false when it was recorded before (a retry).
pub(crate) async fn record_event(
    conn: &mut AnyConnection,
    id: &str,
    kind: &str,
    now: i64,
) -> Result<bool> {
    let fresh = sqlx::query(
        "INSERT INTO billing_events (id, kind, received_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(kind)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(fresh.rows_affected() > 0)
}

/// Whether a user exists.
pub(crate) async fn user_exists(conn: &mut AnyConnection, user: &str) -> Result<bool> {
    Ok(sqlx::query("SELECT 1 AS one FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// Whether a plan exists.
pub(crate) async fn plan_exists(conn: &mut AnyConnection, plan: &str) -> Result<bool> {
    Ok(sqlx::query("SELECT 1 AS one FROM plans WHERE id = $1")
        .bind(plan)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// Stores a subscription as an event at `created` states it; whether it
/// changed anything. One row per account: the subscription that entitles
/// it. An event about another, ended subscription (the old one, cancelled
/// after the account moved to a new one) does not replace a good one, and
/// an event older than the last one applied changes nothing.
pub(crate) async fn upsert_subscription(
    conn: &mut AnyConnection,
    sub: &Subscription<'_>,
    created: i64,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO subscriptions (user_id, plan_id, status, current_period_end, provider_subscription, last_event_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (user_id) DO UPDATE SET
            plan_id = excluded.plan_id, status = excluded.status,
            current_period_end = excluded.current_period_end,
            provider_subscription = excluded.provider_subscription,
            last_event_at = excluded.last_event_at, updated_at = excluded.updated_at
         WHERE subscriptions.last_event_at <= excluded.last_event_at
           AND (subscriptions.provider_subscription = excluded.provider_subscription
                OR excluded.status IN ('active', 'trialing', 'past_due')
                OR subscriptions.status NOT IN ('active', 'trialing', 'past_due'))",
    )
    .bind(sub.user)
    .bind(sub.plan)
    .bind(sub.status)
    .bind(sub.period_end)
    .bind(sub.provider_id)
    .bind(created)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Renews the subscription a paid invoice names, unless it was cancelled
/// or a later event was applied; whether it changed anything.
pub(crate) async fn invoice_paid(
    conn: &mut AnyConnection,
    provider_subscription: &str,
    period_end: i64,
    created: i64,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE subscriptions SET status = 'active', current_period_end = $1,
            last_event_at = $2, updated_at = $3
         WHERE provider_subscription = $4 AND last_event_at <= $2
           AND status <> 'canceled'",
    )
    .bind(period_end)
    .bind(created)
    .bind(now)
    .bind(provider_subscription)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}
