//! What handlers take from a request besides its body: the viewer's
//! address, the logged-in viewer, and the bearer credentials.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use crate::service::accounts;
use crate::service::state::State;
use crate::storage::Error;

/// The viewer's address: the peer, or the address trusted proxies (the
/// edges) forwarded.
pub(crate) struct ClientIp(pub(crate) IpAddr);

impl FromRequestParts<Arc<State>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<State>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        let values = |name: &str| -> Vec<&str> {
            parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        let xff = values("x-forwarded-for");
        let fwd = values("forwarded");
        Ok(ClientIp(cascade_geo::client_ip(
            peer,
            &xff,
            &fwd,
            &state.trusted,
        )))
    }
}

/// The user an access token names; handlers that take it need a login.
pub(crate) struct Viewer {
    pub(crate) user: String,
}

impl FromRequestParts<Arc<State>> for Viewer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Result<Self, Error> {
        let user = accounts::viewer(state, bearer(&parts.headers))?;
        Ok(Viewer { user })
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

/// The access token of `Authorization: Bearer <token>` (at most 4096 bytes).
pub(crate) use cascade_common::bearer;

/// A stream's heartbeat token: `Authorization: Bearer <token>`, as it came.
pub(crate) fn stream_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether the request carries `credential` as its bearer (never, when the
/// credential is not configured).
pub(crate) fn carries(headers: &HeaderMap, credential: &str) -> bool {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    cascade_common::bearer_matches(auth, credential)
}

/// Whether the caller carries the origin's admin credential.
pub(crate) fn is_admin(state: &State, headers: &HeaderMap) -> bool {
    carries(headers, &state.cfg.admin_token)
}

/// The fleet credential (edges' calls), or 401.
pub(crate) fn require_fleet(state: &State, headers: &HeaderMap) -> Result<(), Error> {
    if carries(headers, &state.cfg.fleet_token) {
        Ok(())
    } else {
        Err(Error::new(
            crate::storage::Kind::Unauthorized,
            "unauthorized",
            "the fleet credential is required",
        ))
    }
}

/// The admin credential, or 401.
pub(crate) fn require_admin(state: &State, headers: &HeaderMap) -> Result<(), Error> {
    if is_admin(state, headers) {
        Ok(())
    } else {
        Err(Error::new(
            crate::storage::Kind::Unauthorized,
            "unauthorized",
            "admin credential required",
        ))
    }
}
