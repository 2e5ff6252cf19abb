//! The storage layer: the database pool and its migrations, the object
//! store, the clock, ids, and the one error type. It names no other layer.

pub(crate) mod clock;
pub(crate) mod db;
mod error;
pub(crate) mod ids;
pub(crate) mod objects;

pub(crate) use error::{Error, Kind, Result};
