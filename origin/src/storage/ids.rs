//! The one source of new ids.

/// A new random id: 32 hex digits (users, profiles, logins, streams).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A new id short enough for URLs: the first 12 hex digits of [`new_id`]
/// (assets, jobs, titles, sidecars).
pub(crate) fn short_id() -> String {
    let mut id = new_id();
    id.truncate(12);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_of_their_length() {
        for (id, len) in [(new_id(), 32), (short_id(), 12)] {
            assert_eq!(id.len(), len);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(new_id(), new_id());
    }
}
