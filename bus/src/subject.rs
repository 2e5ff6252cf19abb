//! NATS subject syntax and matching, for the in-process bus and for
//! checking what callers pass before it reaches a server.

/// Whether `token` may be one token of a subject: 1 to 64 bytes of ASCII
/// letters, digits, `-` and `_` (what channel names, title ids and country
/// codes are made of).
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `subject` is a subject (or, with `wildcards`, a filter whose
/// tokens may also be `*`, and whose last may be `>`).
pub fn is_valid_subject(subject: &str, wildcards: bool) -> bool {
    if subject.is_empty() || subject.len() > 256 {
        return false;
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    tokens
        .iter()
        .enumerate()
        .all(|(i, t)| is_valid_token(t) || (wildcards && (*t == "*" || (*t == ">" && i == last))))
}

/// Whether `subject` matches `filter` (NATS rules: `*` is one token, `>`
/// one or more).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_nats_does() {
        assert!(subject_matches("cascade.rt.>", "cascade.rt.live.final"));
        assert!(!subject_matches("cascade.rt.>", "cascade.rt"));
        assert!(subject_matches(
            "cascade.*.live.final",
            "cascade.rt.live.final"
        ));
        assert!(!subject_matches("cascade.*.live", "cascade.rt.live.final"));
        assert!(subject_matches(
            "cascade.rt.live.final",
            "cascade.rt.live.final"
        ));
        assert!(!subject_matches(
            "cascade.rt.live.final",
            "cascade.rt.live.finals"
        ));
    }

    #[test]
    fn subjects_are_checked() {
        assert!(is_valid_subject("cascade.rt.live.final-2026", false));
        assert!(!is_valid_subject("cascade.rt.>", false));
        assert!(is_valid_subject("cascade.rt.>", true));
        assert!(!is_valid_subject("cascade.>.x", true));
        assert!(!is_valid_subject("cascade..x", false));
        assert!(!is_valid_subject("cascade.rt.a b", false));
        assert!(!is_valid_subject("", false));
    }
}
