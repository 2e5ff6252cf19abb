//! The one clock of the origin.

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    cascade_common::unix_now()
}
