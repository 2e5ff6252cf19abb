//! Sign-up by email, which never tells whether an address has an account.
//!
//! [`signup`] answers the same to every well-formed request and does the
//! same work for each: it hashes the password, runs one statement that
//! keeps a pending sign-up unless the email has an account, and writes one
//! mail. A new address is mailed a link with a single-use code; an address
//! that has an account is mailed a notice that it does (and no code).
//! [`verify`] trades the code for the account and a session.

use std::net::IpAddr;

use lettre::message::Mailbox;
use lettre::Address;
use serde::Serialize;
use utoipa::ToSchema;

use crate::repo::signups::{self, NewPending};
use crate::service::accounts::{
    check_password, parse_email, parse_profile_name, start_session, throttle, Session,
};
use crate::service::auth::{hash_password, new_secret_token, token_digest};
use crate::service::mail::Mail;
use crate::service::state::State;
use crate::storage::{clock, ids, Error, Result};

/// What sign-up answers, whether or not the email has an account.
#[derive(Serialize, ToSchema)]
pub(crate) struct SignupAccepted {
    /// Always `check_email`.
    status: &'static str,
    message: &'static str,
}

/// Longest code looked up; ours are 43 characters.
const MAX_CODE_LEN: usize = 256;

/// Signs up: a pending sign-up and a mail with its link for a new email, a
/// notice for one that has an account; the same answer for both.
pub(crate) async fn signup(
    state: &State,
    ip: IpAddr,
    email: &str,
    password: String,
    name: Option<&str>,
) -> Result<SignupAccepted> {
    throttle(state, ip)?;
    let email = parse_email(email)?;
    // An address we can write to, refused before any work that could
    // differ between known and unknown addresses.
    let to: Address = email
        .parse()
        .map_err(|_| Error::bad_request("bad_email", "that is not an email address"))?;
    check_password(&password)?;
    let name = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => parse_profile_name(n)?,
        None => parse_profile_name(email.split('@').next().unwrap_or("me"))
            .unwrap_or_else(|_| "Me".into()),
    };
    // Hashed for every sign-up, kept only for a new one: the same time either way.
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
    let (code, digest) = new_secret_token()?;
    let now = clock::now() as i64;
    signups::sweep(&state.db, now).await?;
    let kept = signups::offer(
        &state.db,
        &NewPending {
            email: &email,
            code_digest: &digest,
            password_hash: &hash,
            profile_name: &name,
            created_at: now,
            expires_at: now + state.cfg.signup_code_ttl_secs as i64,
        },
    )
    .await?;
    let page = state.cfg.public_edge_url.trim_end_matches('/');
    let mail = if kept {
        finish_mail(
            &state.mail_from,
            &to,
            page,
            &code,
            state.cfg.signup_code_ttl_secs,
        )
    } else {
        account_exists_mail(&state.mail_from, &to, page)
    };
    state.mailer.send(mail.build()?).await?;
    state
        .auth_events
        .with_label_values(&["signup_mailed"])
        .inc();
    Ok(SignupAccepted {
        status: "check_email",
        message: "we sent a link to finish signing up to that address",
    })
}

/// Finishes a sign-up with the code from its mail: the account with its
/// first profile, logged in. The code works once, until it expires.
pub(crate) async fn verify(state: &State, ip: IpAddr, code: &str) -> Result<Session> {
    throttle(state, ip)?;
    let bad = || {
        state.auth_events.with_label_values(&["bad_code"]).inc();
        Error::bad_request(
            "bad_code",
            "the link is invalid or has expired; sign up again",
        )
    };
    let code = code.trim();
    if code.is_empty() || code.len() > MAX_CODE_LEN {
        return Err(bad());
    }
    let now = clock::now() as i64;
    let user = ids::new_id();
    let created =
        signups::redeem(&state.db, &token_digest(code), now, &user, &ids::new_id()).await?;
    signups::sweep(&state.db, now).await?;
    if !created {
        return Err(bad());
    }
    state.auth_events.with_label_values(&["signup"]).inc();
    start_session(state, &user).await
}

// ---- helpers ----------------------------------------------------------------------

/// The mail with the link (and the code) that finishes a sign-up.
fn finish_mail<'a>(
    from: &'a Mailbox,
    to: &'a Address,
    page: &str,
    code: &str,
    ttl_secs: u64,
) -> Mail<'a> {
    Mail {
        from,
        to,
        subject: "Finish signing up to Cascade",
        text: format!(
            "Hello,\n\n\
             Someone, perhaps you, asked to sign up to Cascade with this address.\n\
             To finish signing up, open this link within {}:\n\n\
             \x20 {page}/#verify={code}\n\n\
             The code in the link, should you need to type it:\n\n\
             \x20 {code}\n\n\
             If it was not you, ignore this mail: no account is made without\n\
             the link.\n",
            lifetime(ttl_secs)
        ),
    }
}

/// The mail to an address that already has an account: no code.
fn account_exists_mail<'a>(from: &'a Mailbox, to: &'a Address, page: &str) -> Mail<'a> {
    Mail {
        from,
        to,
        subject: "Signing up to Cascade with your address",
        text: format!(
            "Hello,\n\n\
             Someone, perhaps you, tried to sign up to Cascade with this address.\n\
             You already have an account: log in at\n\n\
             \x20 {page}/\n\n\
             with this address and your password.\n\n\
             If it was not you, you need do nothing: nothing has changed.\n"
        ),
    }
}

/// "24 hours", "90 minutes": how long a link lives, for people.
fn lifetime(secs: u64) -> String {
    match secs {
        s if s >= 7200 && s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s.div_ceil(60)),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_as_people_say_them() {
        assert_eq!(lifetime(86_400), "24 hours");
        assert_eq!(lifetime(5400), "90 minutes");
        assert_eq!(lifetime(60), "60 seconds");
    }

    #[test]
    fn only_the_new_address_gets_a_code() {
        let from: Mailbox = "Cascade <no-reply@cascade.invalid>".parse().unwrap();
        let to: Address = "new@example.com".parse().unwrap();
        let code = "c0de-C0DE_c0de";
        let finish = finish_mail(&from, &to, "https://tv.example", code, 86_400).text;
        assert!(
            finish.contains("https://tv.example/#verify=c0de-C0DE_c0de\n"),
            "{finish}"
        );
        assert!(finish.contains("within 24 hours"), "{finish}");
        let exists = account_exists_mail(&from, &to, "https://tv.example").text;
        assert!(exists.contains("already have an account"), "{exists}");
        assert!(!exists.contains("verify"), "{exists}");
    }
}
