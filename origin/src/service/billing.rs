//! Plans, subscriptions and the payment webhook.
//!
//! The webhook speaks Stripe's scheme: `Stripe-Signature: t=…,v1=…`, where
//! v1 is HMAC-SHA256 of `t.payload` under the endpoint secret, and the
//! timestamp must be within the tolerance. Events are applied once each (the
//! event id is recorded in the same transaction) and in order (an event
//! older than the last one applied to a subscription changes nothing).

use cascade_webhook::{verify_signature, SignatureError};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::repo::billing::{self, Plan, Subscription};
use crate::service::state::State;
use crate::storage::{clock, Error, Kind, Result};

/// The plans on offer.
#[derive(Serialize, ToSchema)]
pub(crate) struct Plans {
    plans: Vec<Plan>,
}

/// What a subscription event says.
struct SubscriptionEvent {
    user: String,
    provider_id: String,
    plan: String,
    status: String,
    period_end: i64,
}

/// The plans on offer, cheapest first.
pub(crate) async fn plans(state: &State) -> Result<Plans> {
    Ok(Plans {
        plans: billing::plans(&state.db).await?,
    })
}

/// Applies a payment event (Stripe's format, `sig` its `Stripe-Signature`)
/// once: `customer.subscription.created|updated|deleted` and
/// `invoice.paid`; other events are acknowledged and ignored. Answers
/// `{received, applied}` or `{received, duplicate}`.
pub(crate) async fn webhook(state: &State, sig: &str, body: &[u8]) -> Result<Value> {
    let secret = state.cfg.billing_webhook_secret.as_bytes();
    if secret.is_empty() {
        return Err(Error::new(
            Kind::Unavailable { retry_after: None },
            "not_configured",
            "billing_webhook_secret is not set",
        ));
    }
    let now = clock::now();
    let outcome = |o: &str| state.billing_events.with_label_values(&[o]).inc();
    match verify_signature(sig, body, secret, now, state.cfg.billing_tolerance_secs) {
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
    let event: Value = serde_json::from_slice(body)
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
    if !billing::record_event(&mut tx, id, kind, now as i64).await? {
        outcome("duplicate");
        return Ok(json!({ "received": true, "duplicate": true }));
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
                    billing::invoice_paid(&mut tx, s, end, created, now as i64).await?
                }
                _ => false,
            }
        }
        _ => false,
    };
    tx.commit().await?;
    outcome(if applied { "applied" } else { "ignored" });
    tracing::info!(event = id, kind, applied, "billing event");
    Ok(json!({ "received": true, "applied": applied }))
}

impl SubscriptionEvent {
    fn parse(o: &Value, deleted: bool) -> Result<SubscriptionEvent> {
        let bad =
            |what: &str| Error::bad_request("bad_event", format!("the subscription has no {what}"));
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
) -> Result<bool> {
    if !billing::user_exists(tx, &sub.user).await? {
        // Not recorded (the transaction is dropped): a retry after the
        // account exists applies it.
        return Err(Error::new(
            Kind::Unprocessable,
            "unknown_user",
            "the subscription names no known user",
        ));
    }
    if !billing::plan_exists(tx, &sub.plan).await? {
        return Err(Error::bad_request(
            "bad_event",
            "the subscription names no known plan",
        ));
    }
    let stated = Subscription {
        user: &sub.user,
        provider_id: &sub.provider_id,
        plan: &sub.plan,
        status: &sub.status,
        period_end: sub.period_end,
    };
    billing::upsert_subscription(tx, &stated, created, now as i64).await
}
