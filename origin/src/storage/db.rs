//! The database: one code path for SQLite (one machine) and PostgreSQL (a
//! fleet of origins), through sqlx's Any driver.
//!
//! Queries are written once, in the SQL both databases share: `$1`-style
//! parameters (SQLite reads them too), `ON CONFLICT … DO UPDATE`,
//! `RETURNING`, integers as i64 and reals as f64. Where the two differ
//! (full-text search) the caller branches on [`Backend`]. Each database has
//! its own migrations, kept in step by number.

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// One machine: a file, WAL journal.
    Sqlite,
    /// A fleet: several origins share it.
    Postgres,
}

impl Backend {
    /// The backend a URL names, if it is one we run on.
    pub(crate) fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The pool and what is behind it.
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

impl Db {
    /// Closes the pool.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// Stream slots and resume positions are short-lived: on PostgreSQL
    /// their transactions commit without waiting for the WAL flush. A crash
    /// of the database loses at most its last fraction of a second of them
    /// (a slot frees itself, a heartbeat brings the position back); nothing
    /// is ever left half-written. SQLite in WAL mode with
    /// `synchronous = NORMAL` already behaves this way.
    pub(crate) async fn relax_durability(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SET LOCAL synchronous_commit TO OFF")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// Opens (creating a SQLite file if needed) the database and runs the migrations.
pub(crate) async fn open(url: &str, max_connections: u32) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let Some(backend) = Backend::of_url(url) else {
        anyhow::bail!("database_url: not a sqlite: or postgres:// URL");
    };
    let url = match backend {
        Backend::Sqlite if !url.contains("mode=") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        }
        _ => url.to_string(),
    };
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // WAL lets readers run beside the writer; NORMAL sync is
                    // durable across process crashes, which is what WAL needs.
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA busy_timeout = 5000",
                    ] {
                        conn.execute(pragma).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("database: cannot connect ({})", redact_db_error(&e)))?;
    let migrator = match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    };
    migrator.run(&pool).await?;
    Ok(Db { pool, backend })
}

/// A connection error without the URL (which may hold a password).
fn redact_db_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "the URL is not valid".into(),
        other => other.to_string(),
    }
}
