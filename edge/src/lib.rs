//! The edge: the viewer-facing tier. One request pipeline, whatever the
//! protocol (see [`pipeline`] and the phase chart in `docs/architecture.md`):
//!
//! ```text
//! route ─┬─ /vod/…  → token → geo → cache key → lookup ─ hit → answer
//!        │                                          └ miss → asset manifest ─ mezzanine range ─ package → store
//!        ├─ /api/…  → origin, uncached
//!        ├─ /fleet/… → purge, pre-warm (fleet credential)
//!        └─ /…      → origin through an RFC 9111 shared cache (the web page)
//! ```
//!
//! Upstream for media is the object's shield by rendezvous hashing, then
//! the other shields, then the origin (see [`shields`]). A stale playlist
//! is served while it is refreshed, and when every upstream fails. A
//! player's CMCD `nor` makes the edge fetch the next segment before it is
//! asked for.
//!
//! One file per concern: [`config`], [`auth`] (tokens), [`geofence`],
//! [`media`] (produce on a miss), [`fleet`] (control's calls), [`api`]
//! (pass-through to the origin), [`generic`] (the RFC 9111 cache for
//! everything else), [`server`] (start and stop), [`metrics`], [`overload`]
//! (the shedding policy) and [`governor`] (load, shedding, caps and drain).

#![warn(unreachable_pub)]

mod ads;
mod api;
mod auth;
mod cmcd;
mod cmsd;
mod config;
mod events;
mod fleet;
mod generic;
mod geofence;
mod governor;
mod live;
mod media;
mod metrics;
mod overload;
mod pipeline;
mod protection;
mod server;
mod shields;

pub use config::EdgeConfig;
pub use server::{start, Edge};

/// This tier's name in `Cache-Status` and logs.
const CACHE_NAME: &str = "cascade-edge";
/// Largest mezzanine range or API answer fetched.
const MAX_UPSTREAM_BYTES: usize = 15 << 20;
