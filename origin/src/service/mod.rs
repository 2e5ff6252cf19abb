//! The service layer: what the origin does, over the repositories and
//! storage (playback, browsing, ingest, accounts and sign-up, mail, billing), and the
//! [`state::State`] they share. It never names the HTTP layer.

pub(crate) mod accounts;
pub(crate) mod ad_runtime;
pub(crate) mod ads;
pub(crate) mod assets;
pub(crate) mod auth;
pub(crate) mod billing;
pub(crate) mod browse;
pub(crate) mod catalog;
pub(crate) mod channels;
pub(crate) mod edges;
pub(crate) mod heartbeats;
pub(crate) mod history;
pub(crate) mod ingest;
pub(crate) mod interactive;
pub(crate) mod kek;
pub(crate) mod keys;
pub(crate) mod live;
pub(crate) mod live_breaks;
pub(crate) mod live_health;
pub(crate) mod live_media;
pub(crate) mod live_vod;
pub(crate) mod mail;
pub(crate) mod playback;
pub(crate) mod realtime;
pub(crate) mod signup;
pub(crate) mod state;
pub(crate) mod titles;
