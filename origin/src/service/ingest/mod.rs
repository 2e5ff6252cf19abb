pub(crate) mod sidecars;
pub mod transcode;
pub(crate) mod worker;
