//! The catalog's rows: movies, and series → seasons → episodes, above the
//! assets that play them, with their search entries (SQLite FTS5 or
//! PostgreSQL tsvector, ranked name > people and genres > synopsis).

mod search;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::storage::clock;
use crate::storage::db::{Backend, Db};
use crate::storage::{Error, Result};

pub(crate) use search::page;

/// A stored title, joined with its asset's length and state.
#[derive(Debug, Clone)]
pub(crate) struct TitleRow {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) parent_id: Option<String>,
    pub(crate) number: Option<i64>,
    pub(crate) name: String,
    pub(crate) synopsis: String,
    pub(crate) year: Option<i64>,
    /// `,a,b,` (see [`join_list`]).
    pub(crate) genres: String,
    /// `,a,b,` (see [`join_list`]).
    pub(crate) languages: String,
    pub(crate) cast_json: String,
    pub(crate) premium: bool,
    pub(crate) available_from: Option<i64>,
    pub(crate) available_until: Option<i64>,
    /// The object key of the artwork.
    pub(crate) artwork: Option<String>,
    pub(crate) asset_id: Option<String>,
    pub(crate) duration: Option<f64>,
    /// The asset's status, when there is one.
    pub(crate) asset_status: Option<String>,
}

/// One cast member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct CastMember {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) role: String,
}

/// The catalog fields an upload (`cascade ingest`) may set.
#[derive(Debug, Clone, Default)]
pub(crate) struct UploadMeta {
    pub(crate) name: String,
    pub(crate) synopsis: String,
    pub(crate) year: Option<i64>,
    pub(crate) genres: Vec<String>,
    pub(crate) languages: Vec<String>,
    pub(crate) premium: bool,
}

const TITLE_COLUMNS: &str = "t.id, t.kind, t.parent_id, t.number, t.name, t.synopsis, t.year, \
    t.genres, t.languages, t.cast_json, t.premium, t.available_from, t.available_until, \
    t.artwork, t.asset_id, a.duration, a.status AS asset_status";

/// Viewers see titles whose asset is ready (or that have none: series) and
/// whose window has not closed.
const VISIBLE: &str = "(t.asset_id IS NULL OR a.status = 'ready') \
    AND (t.available_until IS NULL OR t.available_until > $1)";

impl TitleRow {
    fn from_row(r: &AnyRow) -> Result<TitleRow, sqlx::Error> {
        Ok(TitleRow {
            id: r.try_get("id")?,
            kind: r.try_get("kind")?,
            parent_id: r.try_get("parent_id")?,
            number: r.try_get("number")?,
            name: r.try_get("name")?,
            synopsis: r.try_get("synopsis")?,
            year: r.try_get("year")?,
            genres: r.try_get("genres")?,
            languages: r.try_get("languages")?,
            cast_json: r.try_get("cast_json")?,
            premium: r.try_get::<i64, _>("premium")? != 0,
            available_from: r.try_get("available_from")?,
            available_until: r.try_get("available_until")?,
            artwork: r.try_get("artwork")?,
            asset_id: r.try_get("asset_id")?,
            duration: r.try_get("duration")?,
            asset_status: r.try_get("asset_status")?,
        })
    }

    /// A row with nothing set yet but its id.
    pub(crate) fn blank(id: String) -> TitleRow {
        TitleRow {
            id,
            kind: String::new(),
            parent_id: None,
            number: None,
            name: String::new(),
            synopsis: String::new(),
            year: None,
            genres: String::new(),
            languages: String::new(),
            cast_json: "[]".into(),
            premium: false,
            available_from: None,
            available_until: None,
            artwork: None,
            asset_id: None,
            duration: None,
            asset_status: None,
        }
    }

    /// The cast, from its stored JSON.
    pub(crate) fn cast(&self) -> Vec<CastMember> {
        serde_json::from_str(&self.cast_json).unwrap_or_default()
    }
}

/// `,a,b,` → `[a, b]`.
pub(crate) fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// `[A, b]` → `,a,b,` (lower-cased, trimmed, deduplicated, commas removed).
pub(crate) fn join_list(items: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        let v: String = i.trim().to_lowercase().replace(',', " ");
        if !v.is_empty() && !out.contains(&v) {
            out.push(v);
        }
    }
    if out.is_empty() {
        String::new()
    } else {
        format!(",{},", out.join(","))
    }
}

// ---- viewers' reads -------------------------------------------------------------

/// The newest visible movies and series.
pub(crate) async fn newest(db: &Db, now: i64, limit: i64) -> Result<Vec<TitleRow>> {
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.kind IN ('movie', 'series') AND {VISIBLE}
         ORDER BY t.created_at DESC, t.id LIMIT $2"
    );
    let rows = sqlx::query(&sql)
        .bind(now)
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(TitleRow::from_row)
        .collect::<Result<Vec<_>, _>>()?)
}

/// The genre lists (`,a,b,`) of the visible movies and series, up to 5000.
pub(crate) async fn visible_genres(db: &Db, now: i64) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT t.genres FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.kind IN ('movie', 'series') AND t.genres <> '' AND {VISIBLE} LIMIT 5000"
    );
    let rows = sqlx::query(&sql).bind(now).fetch_all(&db.pool).await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String, _>("genres"))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The newest visible movies and series of a genre.
pub(crate) async fn newest_in_genre(
    db: &Db,
    now: i64,
    limit: i64,
    genre: &str,
) -> Result<Vec<TitleRow>> {
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.kind IN ('movie', 'series') AND {VISIBLE} AND t.genres LIKE $3
         ORDER BY t.created_at DESC, t.id LIMIT $2"
    );
    let rows = sqlx::query(&sql)
        .bind(now)
        .bind(limit)
        .bind(format!("%,{genre},%"))
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(TitleRow::from_row)
        .collect::<Result<Vec<_>, _>>()?)
}

/// One title, visible or not.
pub(crate) async fn load(db: &Db, id: &str) -> Result<Option<TitleRow>> {
    if id.len() > 64 {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id WHERE t.id = $1"
    );
    let row = sqlx::query(&sql).bind(id).fetch_optional(&db.pool).await?;
    Ok(row.as_ref().map(TitleRow::from_row).transpose()?)
}

/// The visible children of a title (seasons, episodes), in number order.
pub(crate) async fn children(db: &Db, id: &str) -> Result<Vec<TitleRow>> {
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.parent_id = $2 AND {VISIBLE}
         ORDER BY t.number IS NULL, t.number, t.name, t.id LIMIT 1000"
    );
    let rows = sqlx::query(&sql)
        .bind(clock::now() as i64)
        .bind(id)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(TitleRow::from_row)
        .collect::<Result<_, _>>()?)
}

/// The title an asset plays, visible or not.
pub(crate) async fn of_asset(db: &Db, asset: &str) -> Result<Option<TitleRow>> {
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id WHERE t.asset_id = $1"
    );
    let row = sqlx::query(&sql)
        .bind(asset)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(TitleRow::from_row).transpose()?)
}

/// The visible titles that play these assets, by asset.
pub(crate) async fn of_assets(db: &Db, assets: &[String]) -> Result<HashMap<String, TitleRow>> {
    let mut out = HashMap::new();
    // One query per asset keeps the SQL portable; rails hold at most 20.
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.asset_id = $2 AND a.status = 'ready' AND {VISIBLE}"
    );
    let now = clock::now() as i64;
    for a in assets {
        if let Some(r) = sqlx::query(&sql)
            .bind(now)
            .bind(a)
            .fetch_optional(&db.pool)
            .await?
        {
            out.insert(a.clone(), TitleRow::from_row(&r)?);
        }
    }
    Ok(out)
}

// ---- editors' writes ---------------------------------------------------------------

/// Stores a new title and its search entry; a title whose asset has one
/// already, or whose parent or asset does not exist, is a conflict.
pub(crate) async fn insert(db: &Db, t: &TitleRow, now: i64) -> Result<()> {
    let mut conn = db.pool.acquire().await?;
    bind_title(sqlx::query(
        "INSERT INTO titles (id, kind, parent_id, number, name, synopsis, year, genres, languages,
            cast_json, premium, available_from, available_until, asset_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)",
    ), t)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(conflict)?;
    reindex(&mut conn, db.backend, t).await?;
    Ok(())
}

/// Stores a changed title and its search entry; conflicts as [`insert`].
pub(crate) async fn update(db: &Db, t: &TitleRow, now: i64) -> Result<()> {
    let mut conn = db.pool.acquire().await?;
    bind_title(
        sqlx::query(
            "UPDATE titles SET kind = $2, parent_id = $3, number = $4, name = $5, synopsis = $6,
            year = $7, genres = $8, languages = $9, cast_json = $10, premium = $11,
            available_from = $12, available_until = $13, asset_id = $14, updated_at = $15
         WHERE id = $1",
        ),
        t,
    )
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(conflict)?;
    reindex(&mut conn, db.backend, t).await?;
    Ok(())
}

/// Deletes a title and what is below it, with their search entries;
/// whether it existed. Assets stay.
pub(crate) async fn delete_tree(db: &Db, id: &str) -> Result<bool> {
    let mut tx = db.pool.begin().await?;
    // Children first (seasons' episodes, then seasons), so the search index
    // loses them too.
    let mut doomed = vec![id.to_string()];
    let mut i = 0;
    while i < doomed.len() && doomed.len() < 10_000 {
        let rows = sqlx::query("SELECT id FROM titles WHERE parent_id = $1")
            .bind(&doomed[i])
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            doomed.push(r.try_get("id")?);
        }
        i += 1;
    }
    let mut found = false;
    for d in doomed.iter().rev() {
        if db.backend == Backend::Sqlite {
            sqlx::query("DELETE FROM titles_fts WHERE title_id = $1")
                .bind(d)
                .execute(&mut *tx)
                .await?;
        }
        let r = sqlx::query("DELETE FROM titles WHERE id = $1")
            .bind(d)
            .execute(&mut *tx)
            .await?;
        found |= r.rows_affected() > 0;
    }
    if !found {
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Records the object key of a title's artwork.
pub(crate) async fn set_artwork(db: &Db, id: &str, key: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE titles SET artwork = $1, updated_at = $2 WHERE id = $3")
        .bind(key)
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Creates the movie title of a new upload, in the upload's transaction.
pub(crate) async fn insert_movie(
    conn: &mut AnyConnection,
    backend: Backend,
    asset: &str,
    meta: &UploadMeta,
    now: i64,
) -> Result<()> {
    let t = TitleRow {
        kind: "movie".into(),
        name: meta.name.clone(),
        synopsis: meta.synopsis.clone(),
        year: meta.year,
        genres: join_list(&meta.genres),
        languages: join_list(&meta.languages),
        premium: meta.premium,
        asset_id: Some(asset.to_string()),
        ..TitleRow::blank(asset.to_string())
    };
    sqlx::query(
        "INSERT INTO titles (id, kind, name, synopsis, year, genres, languages, premium, asset_id, created_at, updated_at)
         VALUES ($1, 'movie', $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(&t.synopsis)
    .bind(t.year)
    .bind(&t.genres)
    .bind(&t.languages)
    .bind(i64::from(t.premium))
    .bind(asset)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    reindex(conn, backend, &t).await
}

// ---- helpers ----------------------------------------------------------------------

/// Binds a title's stored fields as `$1` to `$14`, in column order.
fn bind_title<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    t: &'q TitleRow,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&t.id)
        .bind(&t.kind)
        .bind(&t.parent_id)
        .bind(t.number)
        .bind(&t.name)
        .bind(&t.synopsis)
        .bind(t.year)
        .bind(&t.genres)
        .bind(&t.languages)
        .bind(&t.cast_json)
        .bind(i64::from(t.premium))
        .bind(t.available_from)
        .bind(t.available_until)
        .bind(&t.asset_id)
}

fn conflict(e: sqlx::Error) -> Error {
    let unique = e
        .as_database_error()
        .is_some_and(|d| d.is_unique_violation() || d.is_foreign_key_violation());
    if unique {
        Error::conflict(
            "conflict",
            "that asset already has a title, or the parent or asset does not exist",
        )
    } else {
        Error::from(e)
    }
}

/// Rewrites a title's search entry.
async fn reindex(conn: &mut AnyConnection, backend: Backend, t: &TitleRow) -> Result<()> {
    let people = t
        .cast()
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let genres = split_list(&t.genres).join(" ");
    match backend {
        Backend::Sqlite => {
            sqlx::query("DELETE FROM titles_fts WHERE title_id = $1")
                .bind(&t.id)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO titles_fts (title_id, name, people, synopsis, genres) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&t.id)
            .bind(&t.name)
            .bind(&people)
            .bind(&t.synopsis)
            .bind(&genres)
            .execute(&mut *conn)
            .await?;
        }
        Backend::Postgres => {
            sqlx::query(
                "UPDATE titles SET search =
                    setweight(to_tsvector('simple', $2), 'A') ||
                    setweight(to_tsvector('simple', $3), 'B') ||
                    setweight(to_tsvector('simple', $5), 'B') ||
                    setweight(to_tsvector('simple', $4), 'C')
                 WHERE id = $1",
            )
            .bind(&t.id)
            .bind(&t.name)
            .bind(&people)
            .bind(&t.synopsis)
            .bind(&genres)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_normalised() {
        assert_eq!(
            join_list(&["Drama".into(), " drama".into(), "Sci,Fi".into()]),
            ",drama,sci fi,"
        );
        assert_eq!(split_list(",drama,sci fi,"), vec!["drama", "sci fi"]);
        assert_eq!(join_list(&[]), "");
    }
}
