//! The origin's one error type, used by every layer: what went wrong (a
//! [`Kind`]), a stable public code, a sentence for people, sometimes
//! details (the plan, the country, the active streams), and for faults of
//! ours a cause that is logged and never answered. Only the HTTP layer
//! turns it into a status and a JSON body.

use std::fmt;

use serde_json::Value;

/// Results of the origin's own operations.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as far as a caller needs to know; each kind is one HTTP
/// status at the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The request is malformed or breaks a rule (400).
    BadRequest,
    /// No credential, or not a valid one (401).
    Unauthorized,
    /// A valid credential that may not do this (403).
    Forbidden,
    /// Nothing by that name (404).
    NotFound,
    /// Clashes with what is stored (409).
    Conflict,
    /// Was there and is not any more: a stream whose slot is gone (410).
    Gone,
    /// A body over its limit (413).
    TooLarge,
    /// A byte range outside the object (416).
    Unsatisfiable,
    /// Well-formed but unusable: unreadable media, an unknown user (422).
    Unprocessable,
    /// Too many attempts or streams; retrying after the seconds may help (429).
    RateLimited {
        /// Seconds until a retry may succeed, when known.
        retry_after: Option<u64>,
    },
    /// Not in the viewer's country (451).
    Blocked,
    /// Not configured, or too busy now; retrying after the seconds may help (503).
    Unavailable {
        /// Seconds until a retry may succeed, when known.
        retry_after: Option<u64>,
    },
    /// A fault of ours (the database, the disk): the cause is logged (500).
    Internal,
}

/// An error as the origin's layers pass it up.
#[derive(Debug)]
pub(crate) struct Error {
    kind: Kind,
    code: &'static str,
    message: String,
    details: Option<Value>,
    /// What really failed, for the log only.
    cause: Option<String>,
}

impl Error {
    /// An error of a kind, with its public code and message.
    pub(crate) fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            message: message.into(),
            details: None,
            cause: None,
        }
    }

    /// Adds fields for the answer's body (the plan, the country, …).
    pub(crate) fn with(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Adds what really failed, for the log; it never reaches an answer.
    pub(crate) fn caused_by(mut self, cause: impl fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// 400 with a code of its own.
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, code, message)
    }

    /// 401: a viewer API call without a valid access token.
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            Kind::Unauthorized,
            "unauthorized",
            "log in first (Authorization: Bearer <access token>)",
        )
    }

    /// 404 `not_found`: "no such {what}".
    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(Kind::NotFound, "not_found", format!("no such {what}"))
    }

    /// 403 with a code of its own.
    pub(crate) fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, code, message)
    }

    /// 409 with a code of its own.
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }

    /// 500: a public code and message; the cause goes to the log.
    pub(crate) fn internal(
        code: &'static str,
        message: impl Into<String>,
        cause: impl fmt::Display,
    ) -> Self {
        Self::new(Kind::Internal, code, message).caused_by(cause)
    }

    /// What went wrong.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The stable public code, such as `premium_required`.
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }

    /// The sentence for people.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// Fields for the answer's body.
    pub(crate) fn details(&self) -> Option<&Value> {
        self.details.as_ref()
    }

    /// What really failed (for the log only).
    pub(crate) fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }
}

/// For logs and the worker's failure reasons: the cause when there is one
/// (what the database or the disk said), else the public message.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cause.as_deref().unwrap_or(&self.message))
    }
}

impl std::error::Error for Error {}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        // The viewer learns only that it failed; the cause is logged.
        Error::internal("database", "database error", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_stay_out_of_the_public_message() {
        let e = Error::from(sqlx::Error::RowNotFound);
        assert_eq!(e.kind(), Kind::Internal);
        assert_eq!((e.code(), e.message()), ("database", "database error"));
        assert!(e.cause().is_some_and(|c| c.contains("no rows")));
        assert_eq!(e.to_string(), sqlx::Error::RowNotFound.to_string());
        let public = Error::not_found("title");
        assert_eq!(public.to_string(), "no such title");
    }
}
