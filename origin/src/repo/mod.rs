//! The repository layer: SQL and row types only, one module per area. Each
//! function takes the [`Db`](crate::storage::db::Db) (or a connection of a
//! transaction) and names only the storage layer.

pub(crate) mod accounts;
pub(crate) mod ads;
pub(crate) mod assets;
pub(crate) mod billing;
pub(crate) mod catalog;
pub(crate) mod channels;
pub(crate) mod history;
pub(crate) mod interactive;
pub(crate) mod jobs;
pub(crate) mod keys;
pub(crate) mod settings;
pub(crate) mod signups;
pub(crate) mod streams;
pub(crate) mod watermarks;
