//! `/api/v1/auth/*`, `/api/v1/me` and `/api/v1/profiles`: sessions and
//! viewer profiles.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::http::error::{ErrorBody, JsonBody};
use crate::http::extract::{ClientIp, Viewer};
use crate::http::no_store;
use crate::service::accounts::{self, Profile, Profiles, Session, User};
use crate::service::signup::{self, SignupAccepted};
use crate::service::state::State;
use crate::storage::Error;

/// `POST /api/v1/auth/signup`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct SignupRequest {
    email: String,
    /// 8 to 256 characters.
    password: String,
    /// The first profile's name; the part of the email before `@` if absent.
    #[serde(default)]
    name: Option<String>,
}

/// `POST /api/v1/auth/verify`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct VerifyRequest {
    /// The code of the sign-up mail's link (`…/#verify=CODE`).
    code: String,
}

/// `POST /api/v1/auth/login`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct LoginRequest {
    email: String,
    password: String,
}

/// `POST /api/v1/auth/refresh` and `/logout`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct RefreshRequest {
    refresh_token: String,
}

/// `POST /api/v1/profiles`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct NewProfile {
    name: String,
}

/// Sign up: mails the address a link that finishes signing up (or, when
/// it has an account, a notice that it does). The answer is the same
/// either way, so it tells nobody whether an address has an account.
#[utoipa::path(post, path = "/api/v1/auth/signup", tag = "session", request_body = SignupRequest,
    responses((status = 202, description = "check_email: a mail is on its way", body = SignupAccepted),
              (status = 400, description = "bad_email, weak_password or bad_name", body = ErrorBody),
              (status = 429, description = "rate_limited", body = ErrorBody)))]
pub(crate) async fn signup(
    AxState(state): AxState<Arc<State>>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<SignupRequest>,
) -> Result<Response, Error> {
    let accepted =
        signup::signup(&state, ip, &req.email, req.password, req.name.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, no_store(Json(accepted))).into_response())
}

/// Finish signing up with the code of the mail's link: the account with
/// one profile, logged in. A code works once, until it expires.
#[utoipa::path(post, path = "/api/v1/auth/verify", tag = "session", request_body = VerifyRequest,
    responses((status = 201, body = Session),
              (status = 400, description = "bad_code: invalid, used or expired", body = ErrorBody),
              (status = 429, description = "rate_limited", body = ErrorBody)))]
pub(crate) async fn verify(
    AxState(state): AxState<Arc<State>>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<VerifyRequest>,
) -> Result<Response, Error> {
    let session = signup::verify(&state, ip, &req.code).await?;
    Ok((StatusCode::CREATED, no_store(Json(session))).into_response())
}

/// Log in. Five wrong passwords in a row from one address lock that
/// address out of the account for a while.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "session", request_body = LoginRequest,
    responses((status = 200, body = Session),
              (status = 401, description = "bad_credentials", body = ErrorBody),
              (status = 429, description = "account_locked or rate_limited, with Retry-After", body = ErrorBody)))]
pub(crate) async fn login(
    AxState(state): AxState<Arc<State>>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Response, Error> {
    let session = accounts::login(&state, ip, &req.email, req.password).await?;
    Ok(no_store(Json(session)))
}

/// Trade a refresh token for a new session. The old token dies; using it
/// again revokes every token of its login.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "session", request_body = RefreshRequest,
    responses((status = 200, body = Session),
              (status = 401, description = "invalid_refresh or refresh_reused", body = ErrorBody)))]
pub(crate) async fn refresh(
    AxState(state): AxState<Arc<State>>,
    JsonBody(req): JsonBody<RefreshRequest>,
) -> Result<Response, Error> {
    let session = accounts::refresh(&state, &req.refresh_token).await?;
    Ok(no_store(Json(session)))
}

/// Log out: the refresh token and every token rotated from the same login die.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "session", request_body = RefreshRequest,
    responses((status = 204, description = "logged out (also for an unknown token)")))]
pub(crate) async fn logout(
    AxState(state): AxState<Arc<State>>,
    JsonBody(req): JsonBody<RefreshRequest>,
) -> Result<StatusCode, Error> {
    accounts::logout(&state, &req.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The logged-in account.
#[utoipa::path(get, path = "/api/v1/me", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub(crate) async fn me(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
) -> Result<Response, Error> {
    Ok(no_store(Json(accounts::me(&state, &viewer.user).await?)))
}

/// The account's profiles.
#[utoipa::path(get, path = "/api/v1/profiles", tag = "profiles", security(("bearer" = [])),
    responses((status = 200, body = Profiles), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_profiles(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
) -> Result<Response, Error> {
    Ok(no_store(Json(
        accounts::profiles(&state, &viewer.user).await?,
    )))
}

/// Add a profile (at most five per account).
#[utoipa::path(post, path = "/api/v1/profiles", tag = "profiles", security(("bearer" = [])),
    request_body = NewProfile,
    responses((status = 201, body = Profile), (status = 400, body = ErrorBody),
              (status = 409, description = "too_many_profiles or name_taken", body = ErrorBody)))]
pub(crate) async fn create_profile(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
    JsonBody(req): JsonBody<NewProfile>,
) -> Result<Response, Error> {
    let profile = accounts::create_profile(&state, &viewer.user, &req.name).await?;
    Ok((StatusCode::CREATED, Json(profile)).into_response())
}

/// Delete a profile and its history (not the last one).
#[utoipa::path(delete, path = "/api/v1/profiles/{id}", tag = "profiles", security(("bearer" = [])),
    params(("id" = String, Path, description = "profile id")),
    responses((status = 204), (status = 404, body = ErrorBody),
              (status = 409, description = "last_profile", body = ErrorBody)))]
pub(crate) async fn delete_profile(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    accounts::delete_profile(&state, &viewer.user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
