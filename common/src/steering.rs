//! Which edge a viewer should use, best first: the one ranking that
//! control's steering server, the pathways control gives each edge, and
//! the origin's playback API all use. Pure: the fleet's state in, an order
//! out.
//!
//! Edges that take new sessions come first, then those capping them,
//! those refusing them, and last those drained or down (still listed: a
//! last resort is better than none). Within a tier, edges of the viewer's
//! region first; then the viewer's current edge, so a player is not moved
//! for a small difference; then the least loaded (by tenths, so that
//! jitter does not reorder), then by name.

use serde::{Deserialize, Serialize};

/// One edge as control sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeStatus {
    /// Node name: the pathway id (HLS) and service location (DASH).
    pub name: String,
    /// Base URL viewers reach it at.
    pub url: String,
    /// Region.
    pub region: String,
    /// Heard from recently.
    pub up: bool,
    /// Drained by an operator.
    pub draining: bool,
    /// Share of its fullest capacity in use.
    pub utilisation: f64,
    /// Its shedding level (0 to 4).
    pub shed_level: u8,
}

impl EdgeStatus {
    /// 0 takes new sessions; 1 caps them; 2 refuses them; 3 drained or down.
    fn tier(&self) -> u8 {
        match (self.up && !self.draining, self.shed_level) {
            (false, _) => 3,
            (true, 0..=2) => 0,
            (true, 3) => 1,
            (true, _) => 2,
        }
    }

    /// Whether a new session may start here now.
    pub fn takes_new_sessions(&self) -> bool {
        self.tier() < 2
    }
}

/// The edges in order of preference for a viewer in `region` now on
/// `current` (an edge name).
pub fn rank<'a>(
    edges: &'a [EdgeStatus],
    region: Option<&str>,
    current: Option<&str>,
) -> Vec<&'a EdgeStatus> {
    let mut out: Vec<&EdgeStatus> = edges.iter().collect();
    out.sort_by_key(|e| {
        (
            e.tier(),
            region.is_some_and(|r| r != e.region),
            current != Some(e.name.as_str()),
            (e.utilisation.clamp(0.0, 100.0) * 10.0) as u32,
            e.name.clone(),
        )
    });
    out
}

/// A steering ticket: the right to ask control's steering server about
/// one session, for a while, written by the edge into the playlist's
/// steering URI and checked by control. Signed with a key derived from the
/// fleet credential both hold, so control needs no viewer token keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The region of the edge that wrote it: the viewer's region.
    pub region: String,
    /// The playback session (or a digest of its token).
    pub session: String,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

impl Ticket {
    /// `expires~region~session~mac`.
    pub fn sign(&self, fleet_token: &str) -> String {
        let body = format!("{}~{}~{}", self.expires, self.region, self.session);
        format!("{body}~{}", mac(fleet_token, &body))
    }

    /// The ticket in `text` if its signature holds and it has not expired.
    pub fn check(text: &str, fleet_token: &str, now: u64) -> Option<Ticket> {
        if text.len() > 512 || fleet_token.is_empty() {
            return None;
        }
        let (body, given) = text.rsplit_once('~')?;
        let want = mac(fleet_token, body);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            want.as_bytes(),
            given.as_bytes(),
        )) {
            return None;
        }
        let mut parts = body.splitn(3, '~');
        let expires: u64 = parts.next()?.parse().ok()?;
        let region = parts.next()?.to_string();
        let session = parts.next()?.to_string();
        (expires > now && is_ticket_word(&region) && is_ticket_word(&session)).then_some(Ticket {
            region,
            session,
            expires,
        })
    }
}

/// Letters, digits, `-`, `_`, `.`; 1 to 128 of them.
pub fn is_ticket_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A short digest of a token, as the session of a ticket whose token
/// names no playback session.
pub fn digest(token: &str) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref()[..12])
}

fn mac(fleet_token: &str, body: &str) -> String {
    use ring::hmac;
    // A key of its own, so the credential itself is never an HMAC key
    // anyone else uses.
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, fleet_token.as_bytes()),
        b"cascade steering ticket v1",
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
    hex::encode(&hmac::sign(&key, body.as_bytes()).as_ref()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_signed_and_expire() {
        let t = Ticket {
            region: "IN".into(),
            session: "s-1".into(),
            expires: 100,
        };
        let text = t.sign("fleet-secret-0123456789");
        assert_eq!(Ticket::check(&text, "fleet-secret-0123456789", 99), Some(t));
        assert_eq!(Ticket::check(&text, "fleet-secret-0123456789", 100), None);
        assert_eq!(Ticket::check(&text, "another-secret-000000", 99), None);
        let forged = text.replacen("~IN~", "~UK~", 1);
        assert_eq!(Ticket::check(&forged, "fleet-secret-0123456789", 99), None);
        assert_eq!(Ticket::check("", "fleet-secret-0123456789", 0), None);
        assert_eq!(Ticket::check("1~2", "", 0), None);
        for odd in ["~~~", "x~IN~s~00", "~", "é~é~é~é", &"~".repeat(600)] {
            assert_eq!(
                Ticket::check(odd, "fleet-secret-0123456789", 0),
                None,
                "{odd}"
            );
        }
        // A well-signed ticket with words a URL would need quoted in is refused.
        let odd = Ticket {
            region: "IN".into(),
            session: "a b".into(),
            expires: 100,
        }
        .sign("fleet-secret-0123456789");
        assert_eq!(Ticket::check(&odd, "fleet-secret-0123456789", 0), None);
    }

    fn edge(name: &str, region: &str, utilisation: f64) -> EdgeStatus {
        EdgeStatus {
            name: name.into(),
            url: format!("http://{name}"),
            region: region.into(),
            up: true,
            draining: false,
            utilisation,
            shed_level: 0,
        }
    }

    fn names(v: Vec<&EdgeStatus>) -> Vec<&str> {
        v.into_iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn the_viewers_region_then_the_least_loaded() {
        let edges = [
            edge("a", "in", 0.5),
            edge("b", "in", 0.2),
            edge("c", "uk", 0.0),
        ];
        assert_eq!(names(rank(&edges, Some("in"), None)), ["b", "a", "c"]);
        assert_eq!(names(rank(&edges, Some("uk"), None)), ["c", "b", "a"]);
        // A viewer on `a` stays there while it is healthy.
        assert_eq!(names(rank(&edges, Some("in"), Some("a"))), ["a", "b", "c"]);
    }

    #[test]
    fn drained_down_and_refusing_edges_go_last() {
        let mut edges = [
            edge("a", "in", 0.1),
            edge("b", "in", 0.3),
            edge("c", "uk", 0.3),
            edge("d", "in", 0.0),
        ];
        edges[0].draining = true;
        edges[3].shed_level = 4;
        assert_eq!(
            names(rank(&edges, Some("in"), Some("a"))),
            ["b", "c", "d", "a"]
        );
        edges[1].up = false;
        assert_eq!(names(rank(&edges, Some("in"), None)), ["c", "d", "a", "b"]);
        assert!(!edges[3].takes_new_sessions());
        edges[3].shed_level = 3;
        assert!(edges[3].takes_new_sessions());
    }
}
