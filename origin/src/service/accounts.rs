//! Accounts: sign-up and login with argon2id, short-lived JWT access tokens,
//! rotated refresh tokens with reuse detection, logout, login throttling per
//! account (in the database, so a fleet shares it) and per address (in
//! memory, per origin), and viewer profiles.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Path, State as AxState};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::http::error::{ErrorBody, JsonBody};
use crate::storage::ids::new_id;
use crate::storage::{Error, Kind};
use crate::service::billing;
use crate::storage::db::Db;
use crate::State;

/// Profiles one account may have.
pub(crate) const MAX_PROFILES: i64 = 5;

/// What a signed token is for; a token of one kind is refused as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TokenKind {
    /// Calls the API as a user.
    Access,
    /// Reports the position of one stream.
    Stream,
}

/// The claims of our JWTs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The user id.
    pub(crate) sub: String,
    pub(crate) typ: TokenKind,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
    /// Stream tokens: the stream, profile and asset they report for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) aid: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Past its `exp`.
    Expired,
    /// Forged, malformed, or of another kind.
    Invalid,
}

/// Signing keys and the per-address login throttle.
pub(crate) struct Accounts {
    encoding: EncodingKey,
    decoding: DecodingKey,
    per_address: moka::sync::Cache<IpAddr, Arc<Mutex<Window>>>,
    /// Password hashes at once: each takes 19 MiB and a core for tens of
    /// milliseconds, so a burst of logins must queue, not exhaust memory.
    hashing: tokio::sync::Semaphore,
}

/// A fixed one-minute window of attempts from one address.
struct Window {
    started: Instant,
    attempts: u32,
}

impl Accounts {
    pub(crate) fn new(secret: &[u8]) -> Accounts {
        Accounts {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            per_address: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            hashing: tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }
    }

    /// Runs a password hash or check with the others, a few at a time.
    async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.hashing.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }

    /// Signs claims (HS256).
    pub(crate) fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Checks a token's signature, expiry and kind.
    pub(crate) fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "sub"]);
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &v) {
            Ok(t) if t.claims.typ == kind => Ok(t.claims),
            Ok(_) => Err(TokenError::Invalid),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }

    /// Counts an attempt from `ip`; `Err(seconds)` when it is over the limit.
    fn throttle(&self, ip: IpAddr, per_minute: u32) -> Result<(), u64> {
        let ip = address_block(ip);
        let w = self.per_address.get_with(ip, || {
            Arc::new(Mutex::new(Window {
                started: Instant::now(),
                attempts: 0,
            }))
        });
        let Ok(mut w) = w.lock() else {
            return Ok(());
        };
        if w.started.elapsed() >= Duration::from_secs(60) {
            w.started = Instant::now();
            w.attempts = 0;
        }
        w.attempts += 1;
        if w.attempts > per_minute {
            Err(60u64.saturating_sub(w.started.elapsed().as_secs()))
        } else {
            Ok(())
        }
    }
}

/// An access token for `user`, valid `ttl` seconds from `now`.
pub(crate) fn access_claims(user: &str, now: u64, ttl: u64) -> Claims {
    Claims {
        sub: user.to_string(),
        typ: TokenKind::Access,
        iat: now,
        exp: now + ttl,
        sid: None,
        pid: None,
        aid: None,
    }
}

/// An argon2id PHC string for a password (OWASP's parameters: 19 MiB, 2 passes).
pub(crate) fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether a password matches a stored hash.
pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to check against when the email is unknown, so an unknown
/// account takes as long to refuse as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

/// A new refresh token and the digest stored for it.
pub(crate) fn new_refresh_token() -> (String, String) {
    let mut raw = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let digest = token_digest(&token);
    (token, digest)
}

/// The stored form of a refresh token: its SHA-256, hex.
pub(crate) fn token_digest(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A normalised email, or why it is not one.
pub(crate) fn parse_email(raw: &str) -> Result<String, Error> {
    let e = raw.trim().to_lowercase();
    let bad = || Error::bad_request("bad_email", "that is not an email address");
    if e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = e.split_once('@').ok_or_else(bad)?;
    if local.is_empty() || domain.contains('@') || !domain.contains('.') || domain.ends_with('.') {
        return Err(bad());
    }
    Ok(e)
}

fn check_password(p: &str) -> Result<(), Error> {
    let n = p.chars().count();
    if !(8..=256).contains(&n) {
        return Err(Error::bad_request(
            "weak_password",
            "passwords must be 8 to 256 characters",
        ));
    }
    Ok(())
}

/// A profile name: 1 to 40 printable characters.
fn parse_profile_name(raw: &str) -> Result<String, Error> {
    let n = raw.trim();
    if n.is_empty() || n.chars().count() > 40 || n.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "bad_name",
            "profile names are 1 to 40 printable characters",
        ));
    }
    Ok(n.to_string())
}

// ---- the logged-in viewer --------------------------------------------------

/// The user an access token names; handlers that take it need a login.
pub(crate) struct Viewer {
    pub(crate) user: String,
}

impl FromRequestParts<Arc<State>> for Viewer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Result<Self, Error> {
        let token = bearer(parts).ok_or_else(Error::unauthorized)?;
        match state.accounts.verify(token, TokenKind::Access) {
            Ok(c) => Ok(Viewer { user: c.sub }),
            Err(TokenError::Expired) => Err(Error::new(
                Kind::Unauthorized,
                "token_expired",
                "the access token has expired; refresh it",
            )),
            Err(TokenError::Invalid) => Err(Error::unauthorized()),
        }
    }
}

/// A viewer if a valid access token came, else none (for pages that show
/// more to a logged-in viewer).
pub(crate) struct MaybeViewer(pub(crate) Option<Viewer>);

impl FromRequestParts<Arc<State>> for MaybeViewer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Result<Self, Error> {
        Ok(MaybeViewer(
            Viewer::from_request_parts(parts, state).await.ok(),
        ))
    }
}

pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 4096)
}

// ---- API types ---------------------------------------------------------------

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

/// A viewer profile: its own history and continue-watching rail.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct Profile {
    pub(crate) id: String,
    pub(crate) name: String,
}

/// An account.
#[derive(Serialize, ToSchema)]
pub(crate) struct User {
    id: String,
    email: String,
    /// `free` or `premium`.
    plan: String,
    /// Streams the plan allows at once.
    max_streams: i64,
    profiles: Vec<Profile>,
    /// The paid subscription, if any.
    subscription: Option<billing::SubscriptionView>,
}

/// What login, sign-up and refresh answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct Session {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds the access token lives.
    expires_in: u64,
    /// Single use: each refresh answers a new one.
    refresh_token: String,
    refresh_expires_in: u64,
    user: User,
}

/// `POST /api/v1/profiles`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct NewProfile {
    name: String,
}

/// A list of profiles.
#[derive(Serialize, ToSchema)]
pub(crate) struct Profiles {
    profiles: Vec<Profile>,
}

// ---- handlers -------------------------------------------------------------------

fn throttle(state: &State, ip: IpAddr) -> Result<(), Error> {
    state
        .accounts
        .throttle(ip, state.cfg.login_attempts_per_minute)
        .map_err(|wait| {
            state.auth_events.with_label_values(&["rate_limited"]).inc();
            Error::new(
                Kind::RateLimited {
                    retry_after: Some(wait),
                },
                "rate_limited",
                "too many attempts from your address; wait a minute",
            )
        })
}

/// The block an address stands for: the address itself for IPv4; its /64
/// for IPv6, as a host usually holds a whole /64.
fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

/// Sign up: an account with one profile, logged in.
#[utoipa::path(post, path = "/api/v1/auth/signup", tag = "session", request_body = SignupRequest,
    responses((status = 201, body = Session), (status = 400, body = ErrorBody),
              (status = 409, description = "email_taken", body = ErrorBody),
              (status = 429, description = "rate_limited", body = ErrorBody)))]
pub(crate) async fn signup(
    AxState(state): AxState<Arc<State>>,
    crate::ClientIp(ip): crate::ClientIp,
    JsonBody(req): JsonBody<SignupRequest>,
) -> Result<Response, Error> {
    throttle(&state, ip)?;
    let email = parse_email(&req.email)?;
    check_password(&req.password)?;
    let name = match req.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => parse_profile_name(n)?,
        None => parse_profile_name(email.split('@').next().unwrap_or("me"))
            .unwrap_or_else(|_| "Me".into()),
    };
    let password = req.password;
    let hash = state
        .accounts
        .hash_work(move || hash_password(&password))
        .await
        .and_then(Result::ok)
        .ok_or_else(|| {
            Error::internal(
                "internal",
                "could not hash",
                "hashing a password failed or its task died",
            )
        })?;
    let now = crate::storage::clock::now();
    let user = new_id();
    let mut tx = state.db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(&user)
    .bind(&email)
    .bind(&hash)
    .bind(now as i64)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(Error::new(
            Kind::Conflict,
            "email_taken",
            "an account with that email exists; log in instead",
        ));
    }
    sqlx::query("INSERT INTO profiles (id, user_id, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(new_id())
        .bind(&user)
        .bind(&name)
        .bind(now as i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.auth_events.with_label_values(&["signup"]).inc();
    let session = start_session(&state, &user).await?;
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
    crate::ClientIp(ip): crate::ClientIp,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Response, Error> {
    throttle(&state, ip)?;
    let bad = || {
        Error::new(
            Kind::Unauthorized,
            "bad_credentials",
            "wrong email or password",
        )
    };
    let email = parse_email(&req.email).map_err(|_| bad())?;
    let now = crate::storage::clock::now() as i64;
    let max = i64::from(state.cfg.login_max_failures);
    let locked = |state: &State, until: i64| {
        state.auth_events.with_label_values(&["locked"]).inc();
        Error::new(
            Kind::RateLimited {
                retry_after: Some(until.saturating_sub(now).max(1) as u64),
            },
            "account_locked",
            "too many wrong passwords; the account is locked for a while",
        )
    };
    let row = sqlx::query("SELECT id, password_hash FROM users WHERE email = $1")
        .bind(&email)
        .fetch_optional(&state.db.pool)
        .await?;
    let Some(row) = row else {
        // Unknown: as slow as a wrong password, and the same answer.
        state
            .accounts
            .hash_work(|| verify_password(decoy_hash(), "not the decoy"))
            .await;
        state.auth_events.with_label_values(&["failed"]).inc();
        return Err(bad());
    };
    let user: String = row.try_get("id")?;
    let hash: String = row.try_get("password_hash")?;
    // Wrong passwords count per account and address: guesses from one
    // address lock that address out of this account, never the account's
    // owner elsewhere (who also has the per-address throttle on their side).
    let addr = address_block(ip).to_string();
    // Count the attempt before checking it, in one statement, so parallel
    // guesses cannot all slip in before the lock: attempt k of a cycle
    // learns k, and attempts past the limit (or while locked) are refused
    // unchecked.
    let attempt: Option<i64> = sqlx::query(
        "INSERT INTO login_locks (user_id, addr, failures, locked_until) VALUES ($1, $2, 1, 0)
         ON CONFLICT (user_id, addr) DO UPDATE SET failures = login_locks.failures + 1
         WHERE login_locks.locked_until <= $3
         RETURNING failures",
    )
    .bind(&user)
    .bind(&addr)
    .bind(now)
    .fetch_optional(&state.db.pool)
    .await?
    .map(|r| r.try_get("failures"))
    .transpose()?;
    let until = now + state.cfg.login_lockout_secs as i64;
    let lock = || {
        sqlx::query(
            "UPDATE login_locks SET locked_until = $1, failures = 0
             WHERE user_id = $2 AND addr = $3",
        )
        .bind(until)
        .bind(&user)
        .bind(&addr)
        .execute(&state.db.pool)
    };
    let attempt = match attempt {
        None => {
            let locked_until: i64 = sqlx::query(
                "SELECT locked_until FROM login_locks WHERE user_id = $1 AND addr = $2",
            )
            .bind(&user)
            .bind(&addr)
            .fetch_optional(&state.db.pool)
            .await?
            .map(|r| r.try_get("locked_until"))
            .transpose()?
            .unwrap_or(until);
            return Err(locked(&state, locked_until));
        }
        Some(k) if k > max => {
            lock().await?;
            return Err(locked(&state, until));
        }
        Some(k) => k,
    };
    let password = req.password;
    let ok = state
        .accounts
        .hash_work(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    if !ok {
        state.auth_events.with_label_values(&["failed"]).inc();
        if attempt >= max {
            lock().await?;
        }
        return Err(bad());
    }
    sqlx::query("DELETE FROM login_locks WHERE user_id = $1 AND addr = $2")
        .bind(&user)
        .bind(&addr)
        .execute(&state.db.pool)
        .await?;
    state.auth_events.with_label_values(&["login"]).inc();
    let session = start_session(&state, &user).await?;
    Ok(no_store(Json(session)).into_response())
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
    let invalid = || {
        Error::new(
            Kind::Unauthorized,
            "invalid_refresh",
            "the refresh token is not valid; log in again",
        )
    };
    if req.refresh_token.len() > 256 {
        return Err(invalid());
    }
    let digest = token_digest(&req.refresh_token);
    let now = crate::storage::clock::now() as i64;
    let row = sqlx::query(
        "SELECT family, user_id, expires_at, rotated_at, revoked_at FROM refresh_tokens WHERE digest = $1",
    )
    .bind(&digest)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(invalid)?;
    let family: String = row.try_get("family")?;
    let user: String = row.try_get("user_id")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    let rotated: Option<i64> = row.try_get("rotated_at")?;
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    if revoked.is_some() || expires_at <= now {
        return Err(invalid());
    }
    if rotated.is_some() {
        return Err(reused(&state, &user, &family, now).await?);
    }
    // Rotate and issue the next token in one transaction that first locks
    // the user's row, as revocation does: a logout or a reuse revocation
    // either lands before (and this rotation finds the token revoked) or
    // after (and revokes the new token too).
    let mut tx = state.db.pool.begin().await?;
    lock_user(&mut tx, &user).await?;
    let won = sqlx::query(
        "UPDATE refresh_tokens SET rotated_at = $1 WHERE digest = $2 AND rotated_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(&digest)
    .execute(&mut *tx)
    .await?;
    if won.rows_affected() != 1 {
        drop(tx);
        let revoked: Option<i64> =
            sqlx::query("SELECT revoked_at FROM refresh_tokens WHERE digest = $1")
                .bind(&digest)
                .fetch_optional(&state.db.pool)
                .await?
                .map(|r| r.try_get("revoked_at"))
                .transpose()?
                .flatten();
        // Revoked meanwhile (a logout): plainly invalid. Otherwise another
        // request rotated it first: two parties hold this token.
        return Err(if revoked.is_some() {
            invalid()
        } else {
            reused(&state, &user, &family, now).await?
        });
    }
    let refresh_token = insert_refresh(&mut tx, &state.cfg, &user, &family, now as u64).await?;
    tx.commit().await?;
    state.auth_events.with_label_values(&["refresh"]).inc();
    let session = session_for(&state, &user, refresh_token).await?;
    Ok(no_store(Json(session)).into_response())
}

/// A rotated refresh token came again: its whole login is revoked.
async fn reused(state: &State, user: &str, family: &str, now: i64) -> Result<Error, Error> {
    revoke_family(&state.db, user, family, now).await?;
    state
        .auth_events
        .with_label_values(&["refresh_reused"])
        .inc();
    tracing::warn!(
        user,
        "a rotated refresh token was presented again: its login is revoked"
    );
    Ok(Error::new(
        Kind::Unauthorized,
        "refresh_reused",
        "this refresh token was already used; the session is revoked, log in again",
    ))
}

/// Takes the user's row lock for the rest of the transaction (on SQLite,
/// the write lock): session changes and stream starts of one account
/// serialise on it.
async fn lock_user(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET stream_epoch = stream_epoch + 1 WHERE id = $1")
        .bind(user)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Log out: the refresh token and every token rotated from the same login die.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "session", request_body = RefreshRequest,
    responses((status = 204, description = "logged out (also for an unknown token)")))]
pub(crate) async fn logout(
    AxState(state): AxState<Arc<State>>,
    JsonBody(req): JsonBody<RefreshRequest>,
) -> Result<StatusCode, Error> {
    if req.refresh_token.len() <= 256 {
        let row = sqlx::query("SELECT family, user_id FROM refresh_tokens WHERE digest = $1")
            .bind(token_digest(&req.refresh_token))
            .fetch_optional(&state.db.pool)
            .await?;
        if let Some(r) = row {
            let family: String = r.try_get("family")?;
            let user: String = r.try_get("user_id")?;
            revoke_family(&state.db, &user, &family, crate::storage::clock::now() as i64).await?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The logged-in account.
#[utoipa::path(get, path = "/api/v1/me", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub(crate) async fn me(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
) -> Result<Response, Error> {
    Ok(no_store(Json(user_view(&state, &viewer.user).await?)).into_response())
}

/// The account's profiles.
#[utoipa::path(get, path = "/api/v1/profiles", tag = "profiles", security(("bearer" = [])),
    responses((status = 200, body = Profiles), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_profiles(
    AxState(state): AxState<Arc<State>>,
    viewer: Viewer,
) -> Result<Response, Error> {
    let profiles = profiles_of(&state.db, &viewer.user).await?;
    Ok(no_store(Json(Profiles { profiles })).into_response())
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
    let name = parse_profile_name(&req.name)?;
    let id = new_id();
    // Insert only while under the limit, with the account's row locked so
    // two racing creates cannot both see room for one more.
    let mut tx = state.db.pool.begin().await?;
    lock_user(&mut tx, &viewer.user).await?;
    let r = sqlx::query(
        "INSERT INTO profiles (id, user_id, name, created_at)
         SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM profiles WHERE user_id = $2) < $5
         ON CONFLICT (user_id, name) DO NOTHING",
    )
    .bind(&id)
    .bind(&viewer.user)
    .bind(&name)
    .bind(crate::storage::clock::now() as i64)
    .bind(MAX_PROFILES)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if r.rows_affected() == 0 {
        let n = profiles_of(&state.db, &viewer.user).await?;
        return Err(if n.iter().any(|p| p.name == name) {
            Error::new(
                Kind::Conflict,
                "name_taken",
                "a profile has that name",
            )
        } else {
            Error::new(
                Kind::Conflict,
                "too_many_profiles",
                format!("an account has at most {MAX_PROFILES} profiles"),
            )
        });
    }
    Ok((StatusCode::CREATED, Json(Profile { id, name })).into_response())
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
    let mut tx = state.db.pool.begin().await?;
    lock_user(&mut tx, &viewer.user).await?;
    let ids: Vec<String> = sqlx::query("SELECT id FROM profiles WHERE user_id = $1")
        .bind(&viewer.user)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    if !ids.contains(&id) {
        return Err(Error::not_found("profile"));
    }
    if ids.len() == 1 {
        return Err(Error::new(
            Kind::Conflict,
            "last_profile",
            "an account keeps at least one profile",
        ));
    }
    // Its streams end with it: their heartbeats would name a missing profile.
    let ended: Vec<String> = sqlx::query("DELETE FROM streams WHERE profile_id = $1 RETURNING id")
        .bind(&id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .filter_map(|r| r.try_get("id").ok())
        .collect();
    sqlx::query("DELETE FROM watch_history WHERE profile_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM profiles WHERE id = $1 AND user_id = $2")
        .bind(&id)
        .bind(&viewer.user)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.heartbeats.end(ended);
    state.heartbeats.forget_profile(&id);
    Ok(StatusCode::NO_CONTENT)
}

// ---- helpers ----------------------------------------------------------------------

fn no_store<T: IntoResponse>(body: T) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// The profiles of an account, oldest first.
pub(crate) async fn profiles_of(db: &Db, user: &str) -> Result<Vec<Profile>, Error> {
    let rows =
        sqlx::query("SELECT id, name FROM profiles WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user)
            .fetch_all(&db.pool)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Profile {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
            })
        })
        .collect()
}

/// Whether a profile belongs to a user.
pub(crate) async fn owns_profile(db: &Db, user: &str, profile: &str) -> Result<bool, Error> {
    Ok(
        sqlx::query("SELECT 1 AS one FROM profiles WHERE id = $1 AND user_id = $2")
            .bind(profile)
            .bind(user)
            .fetch_optional(&db.pool)
            .await?
            .is_some(),
    )
}

async fn user_view(state: &State, user: &str) -> Result<User, Error> {
    let row = sqlx::query("SELECT email FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(Error::unauthorized)?;
    let now = crate::storage::clock::now();
    let plan = billing::plan_of(&state.db, user, now).await?;
    Ok(User {
        id: user.to_string(),
        email: row.try_get("email")?,
        plan: plan.id.clone(),
        max_streams: plan.max_streams,
        profiles: profiles_of(&state.db, user).await?,
        subscription: billing::subscription_of(&state.db, user).await?,
    })
}

/// A new login: a new refresh-token family and the session.
async fn start_session(state: &State, user: &str) -> Result<Session, Error> {
    let mut conn = state.db.pool.acquire().await?;
    let refresh_token =
        insert_refresh(&mut conn, &state.cfg, user, &new_id(), crate::storage::clock::now()).await?;
    drop(conn);
    session_for(state, user, refresh_token).await
}

/// Stores the next refresh token of a family; answers the token. Tokens of
/// the user past their expiry go at the same time (rotated ones are kept
/// until then, to recognise their reuse).
async fn insert_refresh(
    conn: &mut sqlx::AnyConnection,
    cfg: &crate::OriginConfig,
    user: &str,
    family: &str,
    now: u64,
) -> Result<String, sqlx::Error> {
    let (refresh_token, digest) = new_refresh_token();
    sqlx::query(
        "INSERT INTO refresh_tokens (digest, family, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&digest)
    .bind(family)
    .bind(user)
    .bind((now + cfg.refresh_token_ttl_secs) as i64)
    .bind(now as i64)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1 AND expires_at < $2")
        .bind(user)
        .bind(now as i64)
        .execute(&mut *conn)
        .await?;
    Ok(refresh_token)
}

/// The session answer: a fresh access token, the refresh token, the user.
async fn session_for(
    state: &State,
    user: &str,
    refresh_token: String,
) -> Result<Session, Error> {
    let access = state.accounts.sign(&access_claims(
        user,
        crate::storage::clock::now(),
        state.cfg.access_token_ttl_secs,
    ));
    Ok(Session {
        access_token: access,
        token_type: "Bearer",
        expires_in: state.cfg.access_token_ttl_secs,
        refresh_token,
        refresh_expires_in: state.cfg.refresh_token_ttl_secs,
        user: user_view(state, user).await?,
    })
}

async fn revoke_family(db: &Db, user: &str, family: &str, now: i64) -> Result<(), Error> {
    let mut tx = db.pool.begin().await?;
    lock_user(&mut tx, user).await?;
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsf"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn tokens_check_signature_expiry_and_kind() {
        let a = Accounts::new(b"0123456789abcdef0123456789abcdef");
        let now = crate::storage::clock::now();
        let t = a.sign(&access_claims("u1", now, 60));
        assert_eq!(a.verify(&t, TokenKind::Access).unwrap().sub, "u1");
        assert_eq!(
            a.verify(&t, TokenKind::Stream).unwrap_err(),
            TokenError::Invalid
        );
        let old = a.sign(&access_claims("u1", now - 7200, 60));
        assert_eq!(
            a.verify(&old, TokenKind::Access).unwrap_err(),
            TokenError::Expired
        );
        let other = Accounts::new(b"another secret, another secret!!");
        assert_eq!(
            other.verify(&t, TokenKind::Access).unwrap_err(),
            TokenError::Invalid
        );
        let mut forged = t.clone();
        forged.pop();
        assert_eq!(
            a.verify(&forged, TokenKind::Access).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn emails_are_normalised_or_refused() {
        assert_eq!(parse_email(" A@Example.COM ").unwrap(), "a@example.com");
        for bad in ["", "a", "a@b", "@b.c", "a@b@c.d", "a b@c.d", "a@b."] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_as_digests() {
        let (t1, d1) = new_refresh_token();
        let (t2, _) = new_refresh_token();
        assert_ne!(t1, t2);
        assert_eq!(token_digest(&t1), d1);
        assert_eq!(d1.len(), 64);
        assert!(!d1.contains(&t1));
    }
}
