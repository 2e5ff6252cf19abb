//! Plans, subscriptions and the payment webhook.
//!
//! The webhook speaks Stripe's scheme: `Stripe-Signature: t=…,v1=…`, where
//! v1 is HMAC-SHA256 of `t.payload` under the endpoint secret, and the
//! timestamp must be within the tolerance. Events are applied once each (the
//! event id is recorded in the same transaction) and in order (an event
//! older than the last one applied to a subscription changes nothing).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;
use utoipa::ToSchema;

use crate::http::error::{ErrorBody};
use crate::storage::{Error, Kind};
use crate::storage::db::Db;
use crate::State;
use cascade_token::webhook::{verify_signature, SignatureError};

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

/// The plans on offer.
#[derive(Serialize, ToSchema)]
pub(crate) struct Plans {
    plans: Vec<Plan>,
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

/// The plan in force for a user: the subscribed plan while the
/// subscription is good (with a day's grace for a late renewal), else free.
pub(crate) async fn plan_of(db: &Db, user: &str, now: u64) -> Result<Plan, Error> {
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
        Some(r) => plan_from_row(&r),
        None => free_plan(db).await,
    }
}

async fn free_plan(db: &Db) -> Result<Plan, Error> {
    let r = sqlx::query(
        "SELECT id, name, premium, ads, max_streams, price_cents FROM plans WHERE id = 'free'",
    )
    .fetch_one(&db.pool)
    .await?;
    plan_from_row(&r)
}

fn plan_from_row(r: &sqlx::any::AnyRow) -> Result<Plan, Error> {
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
pub(crate) async fn subscription_of(
    db: &Db,
    user: &str,
) -> Result<Option<SubscriptionView>, Error> {
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

/// The plans on offer.
#[utoipa::path(get, path = "/api/v1/plans", tag = "billing",
    responses((status = 200, body = Plans)))]
pub(crate) async fn plans(AxState(state): AxState<Arc<State>>) -> Result<Response, Error> {
    let rows = sqlx::query(
        "SELECT id, name, premium, ads, max_streams, price_cents FROM plans ORDER BY price_cents, id",
    )
    .fetch_all(&state.db.pool)
    .await?;
    let plans = rows.iter().map(plan_from_row).collect::<Result<_, _>>()?;
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(Plans { plans }),
    )
        .into_response())
}

/// The payment provider's webhook (Stripe's event format and signature).
/// Handles `customer.subscription.created|updated|deleted` and
/// `invoice.paid`; other events are acknowledged and ignored.
#[utoipa::path(post, path = "/api/v1/billing/webhook", tag = "billing",
    params(("Stripe-Signature" = String, Header, description = "t=<unix>,v1=<hex HMAC-SHA256 of t.payload>")),
    request_body(content = String, description = "a Stripe event object", content_type = "application/json"),
    responses((status = 200, description = "applied, ignored, or a duplicate"),
              (status = 400, description = "bad_signature, stale_signature or bad_event", body = ErrorBody),
              (status = 422, description = "unknown_user", body = ErrorBody),
              (status = 503, description = "no webhook secret configured", body = ErrorBody)))]
pub(crate) async fn webhook(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let secret = state.cfg.billing_webhook_secret.as_bytes();
    if secret.is_empty() {
        return Err(Error::new(
            Kind::Unavailable { retry_after: None },
            "not_configured",
            "billing_webhook_secret is not set",
        ));
    }
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let now = crate::storage::clock::now();
    let outcome = |o: &str| state.billing_events.with_label_values(&[o]).inc();
    match verify_signature(sig, &body, secret, now, state.cfg.billing_tolerance_secs) {
        Ok(_) => {}
        Err(SignatureError::Stale) => {
            outcome("stale");
            return Err(Error::bad_request(
                "stale_signature",
                "the signature's timestamp is outside the tolerance",
            ));
        }
        Err(_) => {
            outcome("bad_signature");
            return Err(Error::bad_request(
                "bad_signature",
                "the Stripe-Signature header does not match the payload",
            ));
        }
    }
    let event: Value = serde_json::from_slice(&body)
        .map_err(|_| Error::bad_request("bad_event", "the payload is not JSON"))?;
    let id = event["id"]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 255);
    let kind = event["type"].as_str().filter(|s| s.len() <= 255);
    let (Some(id), Some(kind)) = (id, kind) else {
        return Err(Error::bad_request(
            "bad_event",
            "an event needs an id and a type",
        ));
    };
    let created = event["created"].as_i64().unwrap_or(now as i64);
    let object = &event["data"]["object"];

    let mut tx = state.db.pool.begin().await?;
    let fresh = sqlx::query(
        "INSERT INTO billing_events (id, kind, received_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(kind)
    .bind(now as i64)
    .execute(&mut *tx)
    .await?;
    if fresh.rows_affected() == 0 {
        outcome("duplicate");
        return Ok(Json(json!({ "received": true, "duplicate": true })).into_response());
    }
    let applied = match kind {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            let sub = SubscriptionEvent::parse(object, kind == "customer.subscription.deleted")?;
            apply_subscription(&mut tx, &sub, created, now).await?
        }
        "invoice.paid" => {
            let sub_id = object["subscription"]
                .as_str()
                .or_else(|| object["parent"]["subscription_details"]["subscription"].as_str());
            let end = object["lines"]["data"][0]["period"]["end"]
                .as_i64()
                .or_else(|| object["period_end"].as_i64());
            match (sub_id, end) {
                (Some(s), Some(end)) => {
                    let r = sqlx::query(
                        "UPDATE subscriptions SET status = 'active', current_period_end = $1,
                            last_event_at = $2, updated_at = $3
                         WHERE provider_subscription = $4 AND last_event_at <= $2
                           AND status <> 'canceled'",
                    )
                    .bind(end)
                    .bind(created)
                    .bind(now as i64)
                    .bind(s)
                    .execute(&mut *tx)
                    .await?;
                    r.rows_affected() > 0
                }
                _ => false,
            }
        }
        _ => false,
    };
    tx.commit().await?;
    outcome(if applied { "applied" } else { "ignored" });
    tracing::info!(event = id, kind, applied, "billing event");
    Ok(Json(json!({ "received": true, "applied": applied })).into_response())
}

/// What a subscription event says.
struct SubscriptionEvent {
    user: String,
    provider_id: String,
    plan: String,
    status: String,
    period_end: i64,
}

impl SubscriptionEvent {
    fn parse(o: &Value, deleted: bool) -> Result<SubscriptionEvent, Error> {
        let bad = |what: &str| {
            Error::bad_request("bad_event", format!("the subscription has no {what}"))
        };
        let user = o["metadata"]["user_id"]
            .as_str()
            .filter(|s| s.len() <= 64)
            .ok_or_else(|| bad("metadata.user_id"))?;
        let provider_id = o["id"]
            .as_str()
            .filter(|s| s.len() <= 255)
            .ok_or_else(|| bad("id"))?;
        let item = &o["items"]["data"][0];
        let plan = o["metadata"]["plan"]
            .as_str()
            .or_else(|| item["price"]["lookup_key"].as_str())
            .unwrap_or("premium");
        // Newer API versions keep the period on the item.
        let period_end = o["current_period_end"]
            .as_i64()
            .or_else(|| item["current_period_end"].as_i64())
            .ok_or_else(|| bad("current_period_end"))?;
        let status = if deleted {
            "canceled"
        } else {
            o["status"].as_str().ok_or_else(|| bad("status"))?
        };
        Ok(SubscriptionEvent {
            user: user.to_string(),
            provider_id: provider_id.to_string(),
            plan: plan.to_string(),
            status: status.chars().take(32).collect(),
            period_end,
        })
    }
}

async fn apply_subscription(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sub: &SubscriptionEvent,
    created: i64,
    now: u64,
) -> Result<bool, Error> {
    let known_user = sqlx::query("SELECT 1 AS one FROM users WHERE id = $1")
        .bind(&sub.user)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
    if !known_user {
        // Not recorded (the transaction is dropped): a retry after the
        // account exists applies it.
        return Err(Error::new(
            Kind::Unprocessable,
            "unknown_user",
            "the subscription names no known user",
        ));
    }
    let known_plan = sqlx::query("SELECT 1 AS one FROM plans WHERE id = $1")
        .bind(&sub.plan)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
    if !known_plan {
        return Err(Error::bad_request(
            "bad_event",
            "the subscription names no known plan",
        ));
    }
    // One row per account: the subscription that entitles it. An event
    // about another, ended subscription (the old one, cancelled after the
    // account moved to a new one) does not replace a good one.
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
    .bind(&sub.user)
    .bind(&sub.plan)
    .bind(&sub.status)
    .bind(sub.period_end)
    .bind(&sub.provider_id)
    .bind(created)
    .bind(now as i64)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() > 0)
}
