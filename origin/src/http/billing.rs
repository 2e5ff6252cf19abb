//! `/api/v1/plans` and the payment provider's webhook.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::error::ErrorBody;
use crate::service::billing::{self, Plans};
use crate::service::state::State;
use crate::storage::Error;

/// The plans on offer.
#[utoipa::path(get, path = "/api/v1/plans", tag = "billing",
    responses((status = 200, body = Plans)))]
pub(crate) async fn plans(AxState(state): AxState<Arc<State>>) -> Result<Response, Error> {
    let plans = billing::plans(&state).await?;
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(plans),
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
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(Json(billing::webhook(&state, sig, &body).await?).into_response())
}
