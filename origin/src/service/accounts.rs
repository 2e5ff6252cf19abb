//! Accounts: login with argon2id, short-lived JWT access tokens,
//! rotated refresh tokens with reuse detection, logout, login throttling per
//! account (in the database, so a fleet shares it) and per address (in
//! memory, per origin), and viewer profiles. Sign-up is `service::signup`.

use std::net::IpAddr;

use serde::Serialize;
use utoipa::ToSchema;

pub(crate) use crate::repo::accounts::Profile;
use crate::repo::accounts::{self, NewRefresh, ProfileDeletion};
use crate::repo::billing::{self, SubscriptionView};
use crate::service::auth::{
    access_claims, address_block, decoy_hash, new_secret_token, token_digest, verify_password,
    TokenError, TokenKind,
};
use crate::service::state::State;
use crate::storage::{clock, ids, Error, Kind, Result};

/// Profiles one account may have.
pub(crate) const MAX_PROFILES: i64 = 5;

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
    subscription: Option<SubscriptionView>,
}

/// What login, sign-up's verification and refresh answer.
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

/// A list of profiles.
#[derive(Serialize, ToSchema)]
pub(crate) struct Profiles {
    profiles: Vec<Profile>,
}

/// The user an access token (`Authorization: Bearer …`) names.
pub(crate) fn viewer(state: &State, token: Option<&str>) -> Result<String> {
    let token = token.ok_or_else(Error::unauthorized)?;
    match state.accounts.verify(token, TokenKind::Access) {
        Ok(c) => Ok(c.sub),
        Err(TokenError::Expired) => Err(Error::new(
            Kind::Unauthorized,
            "token_expired",
            "the access token has expired; refresh it",
        )),
        Err(TokenError::Invalid) => Err(Error::unauthorized()),
    }
}

/// Logs in. Five wrong passwords in a row from one address lock that
/// address out of the account for a while.
pub(crate) async fn login(
    state: &State,
    ip: IpAddr,
    email: &str,
    password: String,
) -> Result<Session> {
    throttle(state, ip)?;
    let bad = || {
        Error::new(
            Kind::Unauthorized,
            "bad_credentials",
            "wrong email or password",
        )
    };
    let email = parse_email(email).map_err(|_| bad())?;
    let now = clock::now() as i64;
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
    let Some((user, hash)) = accounts::credentials(&state.db, &email).await? else {
        // Unknown: as slow as a wrong password, and the same answer.
        state
            .accounts
            .hash_work(|| verify_password(decoy_hash(), "not the decoy"))
            .await;
        state.auth_events.with_label_values(&["failed"]).inc();
        return Err(bad());
    };
    // Wrong passwords count per account and address: guesses from one
    // address lock that address out of this account, never the account's
    // owner elsewhere (who also has the per-address throttle on their side).
    let addr = address_block(ip).to_string();
    // Counted before it is checked; attempts past the limit (or while
    // locked) are refused unchecked.
    let attempt = accounts::count_attempt(&state.db, &user, &addr, now).await?;
    let until = now + state.cfg.login_lockout_secs as i64;
    let attempt = match attempt {
        None => {
            let locked_until = accounts::locked_until(&state.db, &user, &addr)
                .await?
                .unwrap_or(until);
            return Err(locked(state, locked_until));
        }
        Some(k) if k > max => {
            accounts::lock_out(&state.db, &user, &addr, until).await?;
            return Err(locked(state, until));
        }
        Some(k) => k,
    };
    let ok = state
        .accounts
        .hash_work(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    if !ok {
        state.auth_events.with_label_values(&["failed"]).inc();
        if attempt >= max {
            accounts::lock_out(&state.db, &user, &addr, until).await?;
        }
        return Err(bad());
    }
    accounts::clear_attempts(&state.db, &user, &addr).await?;
    state.auth_events.with_label_values(&["login"]).inc();
    start_session(state, &user).await
}

/// Trades a refresh token for a new session. The old token dies; using it
/// again revokes every token of its login.
pub(crate) async fn refresh(state: &State, refresh_token: &str) -> Result<Session> {
    let invalid = || {
        Error::new(
            Kind::Unauthorized,
            "invalid_refresh",
            "the refresh token is not valid; log in again",
        )
    };
    if refresh_token.len() > 256 {
        return Err(invalid());
    }
    let digest = token_digest(refresh_token);
    let now = clock::now() as i64;
    let old = accounts::refresh_token(&state.db, &digest)
        .await?
        .ok_or_else(invalid)?;
    let (user, family) = (old.user, old.family);
    if old.revoked_at.is_some() || old.expires_at <= now {
        return Err(invalid());
    }
    if old.rotated_at.is_some() {
        return Err(reused(state, &user, &family, now).await?);
    }
    let (next_token, next_digest) = new_secret_token()?;
    let next = NewRefresh {
        digest: &next_digest,
        family: &family,
        user: &user,
        expires_at: now + state.cfg.refresh_token_ttl_secs as i64,
    };
    if !accounts::rotate(&state.db, &digest, &next, now).await? {
        let revoked = accounts::revoked_at(&state.db, &digest).await?;
        // Revoked meanwhile (a logout): plainly invalid. Otherwise another
        // request rotated it first: two parties hold this token.
        return Err(if revoked.is_some() {
            invalid()
        } else {
            reused(state, &user, &family, now).await?
        });
    }
    state.auth_events.with_label_values(&["refresh"]).inc();
    session_for(state, &user, next_token).await
}

/// Logs out: the refresh token and every token rotated from the same login
/// die. An unknown token changes nothing.
pub(crate) async fn logout(state: &State, refresh_token: &str) -> Result<()> {
    if refresh_token.len() <= 256 {
        if let Some((family, user)) =
            accounts::family_of(&state.db, &token_digest(refresh_token)).await?
        {
            accounts::revoke_family(&state.db, &user, &family, clock::now() as i64).await?;
        }
    }
    Ok(())
}

/// The logged-in account.
pub(crate) async fn me(state: &State, user: &str) -> Result<User> {
    user_view(state, user).await
}

/// The account's profiles.
pub(crate) async fn profiles(state: &State, user: &str) -> Result<Profiles> {
    let profiles = accounts::profiles_of(&state.db, user).await?;
    Ok(Profiles { profiles })
}

/// Adds a profile (at most [`MAX_PROFILES`] per account).
pub(crate) async fn create_profile(state: &State, user: &str, name: &str) -> Result<Profile> {
    let profile = Profile {
        id: ids::new_id(),
        name: parse_profile_name(name)?,
    };
    if !accounts::create_profile(&state.db, user, &profile, clock::now() as i64, MAX_PROFILES)
        .await?
    {
        let n = accounts::profiles_of(&state.db, user).await?;
        return Err(if n.iter().any(|p| p.name == profile.name) {
            Error::conflict("name_taken", "a profile has that name")
        } else {
            Error::conflict(
                "too_many_profiles",
                format!("an account has at most {MAX_PROFILES} profiles"),
            )
        });
    }
    Ok(profile)
}

/// Deletes a profile and its history (not the last one).
pub(crate) async fn delete_profile(state: &State, user: &str, id: &str) -> Result<()> {
    match accounts::delete_profile(&state.db, user, id).await? {
        ProfileDeletion::NotFound => Err(Error::not_found("profile")),
        ProfileDeletion::Last => Err(Error::conflict(
            "last_profile",
            "an account keeps at least one profile",
        )),
        ProfileDeletion::Deleted { ended } => {
            state.heartbeats.end(ended);
            state.heartbeats.forget_profile(id);
            Ok(())
        }
    }
}

/// A normalised email, or why it is not one.
pub(crate) fn parse_email(raw: &str) -> Result<String> {
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

// ---- helpers ----------------------------------------------------------------------

/// A password we accept: 8 to 256 characters.
pub(crate) fn check_password(p: &str) -> Result<()> {
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
pub(crate) fn parse_profile_name(raw: &str) -> Result<String> {
    let n = raw.trim();
    if n.is_empty() || n.chars().count() > 40 || n.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "bad_name",
            "profile names are 1 to 40 printable characters",
        ));
    }
    Ok(n.to_string())
}

/// Counts a login, sign-up or verify attempt from an address; refused
/// past the per-minute limit.
pub(crate) fn throttle(state: &State, ip: IpAddr) -> Result<()> {
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

/// A rotated refresh token came again: its whole login is revoked.
async fn reused(state: &State, user: &str, family: &str, now: i64) -> Result<Error> {
    accounts::revoke_family(&state.db, user, family, now).await?;
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

async fn user_view(state: &State, user: &str) -> Result<User> {
    let email = accounts::email_of(&state.db, user)
        .await?
        .ok_or_else(Error::unauthorized)?;
    let now = clock::now();
    let plan = billing::plan_of(&state.db, user, now).await?;
    Ok(User {
        id: user.to_string(),
        email,
        plan: plan.id.clone(),
        max_streams: plan.max_streams,
        profiles: accounts::profiles_of(&state.db, user).await?,
        subscription: billing::subscription_of(&state.db, user).await?,
    })
}

/// A new login: a new refresh-token family and the session.
pub(crate) async fn start_session(state: &State, user: &str) -> Result<Session> {
    let now = clock::now();
    let (token, digest) = new_secret_token()?;
    let family = ids::new_id();
    let first = NewRefresh {
        digest: &digest,
        family: &family,
        user,
        expires_at: (now + state.cfg.refresh_token_ttl_secs) as i64,
    };
    accounts::start_family(&state.db, &first, now as i64).await?;
    session_for(state, user, token).await
}

/// The session answer: a fresh access token, the refresh token, the user.
async fn session_for(state: &State, user: &str, refresh_token: String) -> Result<Session> {
    let access = state.accounts.sign(&access_claims(
        user,
        clock::now(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_or_refused() {
        assert_eq!(parse_email(" A@Example.COM ").unwrap(), "a@example.com");
        for bad in ["", "a", "a@b", "@b.c", "a@b@c.d", "a b@c.d", "a@b."] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
    }
}
