pub(crate) mod accounts;
pub(crate) mod billing;
pub(crate) mod ingest;
pub(crate) mod playback;
