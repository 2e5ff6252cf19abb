//! Errors as the origin answers them: the status of each [`Kind`], the JSON
//! body `{"error": code, "message": sentence, …details}`, `Retry-After` when
//! a retry may help; the causes of internal errors go to the log only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use crate::storage::{Error, Kind};

/// The body of every error answer (for the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// Stable machine-readable code, such as `premium_required`.
    error: String,
    /// A sentence for people.
    message: String,
}

/// The viewer API's answers carry `Cache-Control: no-store`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut r = respond(self);
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// An error answered the proxy tiers' way, without `Cache-Control`, so the
/// caches in front apply their own rules: the operator API, mezzanine, the
/// web page and unknown paths.
#[derive(Debug)]
pub(crate) struct Plain(pub(crate) Error);

impl From<Error> for Plain {
    fn from(e: Error) -> Self {
        Plain(e)
    }
}

impl IntoResponse for Plain {
    fn into_response(self) -> Response {
        respond(self.0)
    }
}

/// The status an error kind is answered with.
fn status(kind: Kind) -> StatusCode {
    match kind {
        Kind::BadRequest => StatusCode::BAD_REQUEST,
        Kind::Unauthorized => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::Gone => StatusCode::GONE,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::Unsatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Kind::Blocked => StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
        Kind::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Status, body and `Retry-After`; the cause, if any, is logged here.
fn respond(e: Error) -> Response {
    if let Some(cause) = e.cause() {
        tracing::error!(error = %cause, "{}", e.code());
    }
    let mut body = json!({ "error": e.code(), "message": e.message() });
    if let (Some(Value::Object(extra)), Some(obj)) = (e.details(), body.as_object_mut()) {
        for (k, v) in extra {
            obj.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let retry_after = match e.kind() {
        Kind::RateLimited { retry_after } | Kind::Unavailable { retry_after } => retry_after,
        _ => None,
    };
    let mut r = (status(e.kind()), Json(body)).into_response();
    if let Some(s) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&s.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// A JSON request body, refused with our error shape when it does not parse.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Error> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(Error::new(
                Kind::TooLarge,
                "body_too_large",
                "the request body is over the limit",
            )),
            Err(e) => Err(Error::bad_request("bad_json", e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_answer_their_status_code_details_and_retry_after() {
        let e = Error::new(
            Kind::RateLimited {
                retry_after: Some(0),
            },
            "rate_limited",
            "wait",
        )
        .with(json!({ "limit": 2, "error": "ignored" }));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({ "error": "rate_limited", "message": "wait", "limit": 2 })
        );
    }

    #[tokio::test]
    async fn internal_causes_are_never_answered() {
        let e = Error::internal("storage", "storage error", "disk /secret/path is full");
        let r = Plain(e).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.headers().get(header::CACHE_CONTROL).is_none());
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("storage error"), "{text}");
    }
}
