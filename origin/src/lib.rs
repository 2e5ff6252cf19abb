//! The origin: upload, transcode, catalog and mezzanine serving.

pub mod transcode;
