//! The one clock of the origin.

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    cascade_common::unix_now()
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    now_precise().as_millis() as u64
}

/// Time since the Unix epoch now, to the nanosecond where the system has
/// it: for names that must sort by time within a second.
pub(crate) fn now_precise() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
