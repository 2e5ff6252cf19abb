//! The catalog: movies, and series → seasons → episodes, above the assets
//! that play them. Viewers browse (rails), search (SQLite FTS5 or
//! PostgreSQL tsvector, ranked name > people and genres > synopsis) and read
//! titles; editors change them through the admin API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use utoipa::{IntoParams, ToSchema};

use crate::service::accounts::MaybeViewer;
use crate::http::error::{ErrorBody, JsonBody};
use crate::storage::{Error, Kind};
use crate::storage::db::{Backend, Db};
use crate::State;

/// Titles per page at most.
const MAX_PER_PAGE: i64 = 100;
/// Titles per rail.
const RAIL_LEN: i64 = 20;
/// Genre rails on the browse page.
const GENRE_RAILS: usize = 4;
/// Largest artwork accepted.
pub(crate) const MAX_ARTWORK_BYTES: usize = 8 << 20;

/// A title as lists show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TitleCard {
    pub(crate) id: String,
    /// `movie`, `series`, `season` or `episode`.
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) year: Option<i64>,
    /// Season or episode number.
    pub(crate) number: Option<i64>,
    pub(crate) genres: Vec<String>,
    /// Needs the premium plan.
    pub(crate) premium: bool,
    /// Unix seconds; playable from then.
    pub(crate) available_from: Option<i64>,
    /// Unix seconds; playable until then.
    pub(crate) available_until: Option<i64>,
    /// URL of the artwork.
    pub(crate) artwork: Option<String>,
    /// The asset that plays it (movies and episodes).
    pub(crate) asset: Option<String>,
    /// Seconds.
    pub(crate) duration: Option<f64>,
    /// Resume position (continue-watching rail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) position: Option<f64>,
}

/// One cast member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct CastMember {
    name: String,
    #[serde(default)]
    role: String,
}

/// A season and its episodes.
#[derive(Serialize, ToSchema)]
pub(crate) struct Season {
    id: String,
    number: Option<i64>,
    name: String,
    episodes: Vec<TitleCard>,
}

/// A title in full.
#[derive(Serialize, ToSchema)]
pub(crate) struct Title {
    #[serde(flatten)]
    card: TitleCard,
    synopsis: String,
    languages: Vec<String>,
    cast: Vec<CastMember>,
    parent: Option<String>,
    /// Series only.
    seasons: Vec<Season>,
    /// Seasons only.
    episodes: Vec<TitleCard>,
}

/// A page of titles.
#[derive(Serialize, ToSchema)]
pub(crate) struct TitlePage {
    items: Vec<TitleCard>,
    page: i64,
    per_page: i64,
    total: i64,
}

/// A row of titles on the browse page.
#[derive(Serialize, ToSchema)]
pub(crate) struct Rail {
    /// `continue`, `new`, or `genre:<name>`.
    id: String,
    name: String,
    items: Vec<TitleCard>,
}

/// The browse page.
#[derive(Serialize, ToSchema)]
pub(crate) struct Browse {
    rails: Vec<Rail>,
}

/// `GET /api/v1/titles` parameters.
#[derive(Deserialize, IntoParams)]
pub(crate) struct TitleQuery {
    /// Words to search for; the last one matches as a prefix.
    q: Option<String>,
    /// Only this genre.
    genre: Option<String>,
    /// From 1.
    page: Option<i64>,
    /// 1 to 100; 20 if absent.
    per_page: Option<i64>,
}

/// `GET /api/v1/browse` parameters.
#[derive(Deserialize, IntoParams)]
pub(crate) struct BrowseQuery {
    /// The profile whose continue-watching rail to include (needs a login).
    profile: Option<String>,
}

/// What the playback API needs of the title an asset plays, with what
/// seasons and series pass down (premium, availability).
#[derive(Debug, Clone)]
pub(crate) struct Playable {
    pub(crate) title_id: String,
    pub(crate) name: String,
    pub(crate) premium: bool,
    pub(crate) available_from: Option<i64>,
    pub(crate) available_until: Option<i64>,
}

/// A stored title row.
#[derive(Debug, Clone)]
struct TitleRow {
    id: String,
    kind: String,
    parent_id: Option<String>,
    number: Option<i64>,
    name: String,
    synopsis: String,
    year: Option<i64>,
    genres: String,
    languages: String,
    cast_json: String,
    premium: bool,
    available_from: Option<i64>,
    available_until: Option<i64>,
    artwork: Option<String>,
    asset_id: Option<String>,
    duration: Option<f64>,
    /// The asset's status, when there is one.
    asset_status: Option<String>,
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

    fn card(&self) -> TitleCard {
        TitleCard {
            id: self.id.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            year: self.year,
            number: self.number,
            genres: split_list(&self.genres),
            premium: self.premium,
            available_from: self.available_from,
            available_until: self.available_until,
            artwork: self.artwork.as_ref().map(|key| {
                let version = key.rsplit('/').next().unwrap_or("");
                format!("/api/v1/titles/{}/artwork?v={version}", self.id)
            }),
            asset: self.asset_id.clone(),
            duration: self.duration,
            position: None,
        }
    }

    fn cast(&self) -> Vec<CastMember> {
        serde_json::from_str(&self.cast_json).unwrap_or_default()
    }
}

/// `,a,b,` → `[a, b]`.
fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// `[A, b]` → `,a,b,` (lower-cased, trimmed, deduplicated, commas removed).
fn join_list(items: &[String]) -> String {
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

/// Search words from what a viewer typed: letters and digits only, at most
/// eight words of at most 64 characters, lower case.
pub(crate) fn search_words(q: &str) -> Vec<String> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(8)
        .map(|w| w.chars().take(64).collect::<String>().to_lowercase())
        .collect()
}

/// The words as a query in each database's syntax (all words must match;
/// the last as a prefix, for search-as-you-type). Safe to pass as a bound
/// parameter: words hold letters and digits only.
pub(crate) fn search_expression(words: &[String], backend: Backend) -> String {
    let n = words.len();
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let last = i + 1 == n;
            match backend {
                Backend::Sqlite => format!("\"{w}\"{}", if last { "*" } else { "" }),
                Backend::Postgres => format!("{w}{}", if last { ":*" } else { "" }),
            }
        })
        .collect::<Vec<_>>()
        .join(match backend {
            Backend::Sqlite => " ",
            Backend::Postgres => " & ",
        })
}

// ---- viewer handlers ---------------------------------------------------------

/// List or search the catalog (movies and series).
#[utoipa::path(get, path = "/api/v1/titles", tag = "catalog", params(TitleQuery),
    responses((status = 200, body = TitlePage), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<TitleQuery>,
) -> Result<Response, Error> {
    let per_page = q.per_page.unwrap_or(20);
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(Error::bad_request(
            "bad_page",
            "per_page must be 1 to 100",
        ));
    }
    let page = q.page.unwrap_or(1);
    if !(1..=10_000).contains(&page) {
        return Err(Error::bad_request("bad_page", "page must be 1 to 10000"));
    }
    let offset = (page - 1) * per_page;
    let now = crate::storage::clock::now() as i64;
    let genre = q.genre.as_deref().map(|g| join_list(&[g.to_string()]));
    let genre = genre.filter(|g| !g.is_empty());
    let genre_filter = if genre.is_some() {
        " AND t.genres LIKE $4"
    } else {
        ""
    };
    let like = genre.map(|g| format!("%{g}%")).unwrap_or_default();
    let words = q.q.as_deref().map(search_words).unwrap_or_default();
    let db = &state.db;
    let (items, total) = if words.is_empty() {
        let sql = format!(
            "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
             WHERE t.kind IN ('movie', 'series') AND {VISIBLE}{genre_filter}
             ORDER BY t.created_at DESC, t.id LIMIT $2 OFFSET $3"
        );
        let rows = bind_page(
            sqlx::query(&sql),
            now,
            per_page,
            offset,
            genre_filter,
            &like,
        )
        .fetch_all(&db.pool)
        .await?;
        let count_sql = format!(
            "SELECT COUNT(*) AS n FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
             WHERE t.kind IN ('movie', 'series') AND {VISIBLE}{}",
            genre_filter.replace("$4", "$2")
        );
        let mut cq = sqlx::query(&count_sql).bind(now);
        if !genre_filter.is_empty() {
            cq = cq.bind(&like);
        }
        let total: i64 = cq.fetch_one(&db.pool).await?.try_get("n")?;
        (rows, total)
    } else {
        let expr = search_expression(&words, db.backend);
        let (from, score, order) = match db.backend {
            // bm25 weights per column: title_id, name, people, synopsis, genres.
            // Lower is better.
            Backend::Sqlite => (
                "titles_fts f JOIN titles t ON t.id = f.title_id LEFT JOIN assets a ON a.id = t.asset_id",
                "bm25(titles_fts, 0.0, 10.0, 4.0, 1.0, 4.0)",
                "score ASC",
            ),
            Backend::Postgres => (
                "titles t LEFT JOIN assets a ON a.id = t.asset_id",
                "CAST(ts_rank(t.search, to_tsquery('simple', $5)) AS DOUBLE PRECISION)",
                "score DESC",
            ),
        };
        let matcher = match db.backend {
            Backend::Sqlite => "titles_fts MATCH $5",
            Backend::Postgres => "t.search @@ to_tsquery('simple', $5)",
        };
        // $4 is the genre (or unused); keep numbering fixed by always binding it.
        let genre_filter = if genre_filter.is_empty() {
            " AND $4 = $4"
        } else {
            genre_filter
        };
        let sql = format!(
            "SELECT {TITLE_COLUMNS}, {score} AS score FROM {from}
             WHERE {matcher} AND t.kind IN ('movie', 'series') AND {VISIBLE}{genre_filter}
             ORDER BY {order}, t.id LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(per_page)
            .bind(offset)
            .bind(&like)
            .bind(&expr)
            .fetch_all(&db.pool)
            .await?;
        let count_sql = format!(
            "SELECT COUNT(*) AS n FROM {from}
             WHERE {matcher} AND t.kind IN ('movie', 'series') AND {VISIBLE}{genre_filter}
             AND $2 = $2 AND $3 = $3"
        );
        let total: i64 = sqlx::query(&count_sql)
            .bind(now)
            .bind(per_page)
            .bind(offset)
            .bind(&like)
            .bind(&expr)
            .fetch_one(&db.pool)
            .await?
            .try_get("n")?;
        (rows, total)
    };
    let items = items
        .iter()
        .map(|r| TitleRow::from_row(r).map(|t| t.card()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=30")],
        Json(TitlePage {
            items,
            page,
            per_page,
            total,
        }),
    )
        .into_response())
}

fn bind_page<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    now: i64,
    per_page: i64,
    offset: i64,
    genre_filter: &str,
    like: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let q = q.bind(now).bind(per_page).bind(offset);
    if genre_filter.is_empty() {
        q
    } else {
        q.bind(like)
    }
}

/// One title; a series with its seasons and episodes.
#[utoipa::path(get, path = "/api/v1/titles/{id}", tag = "catalog",
    params(("id" = String, Path, description = "title id")),
    responses((status = 200, body = Title), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_title(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let t = load(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("title"))?;
    // Viewers do not see what is not theirs to see yet or any more.
    let closed = t.available_until.is_some_and(|u| u <= crate::storage::clock::now() as i64);
    let unready = t.asset_id.is_some() && t.asset_status.as_deref() != Some("ready");
    if closed || unready {
        return Err(Error::not_found("title"));
    }
    let title = detail(&state.db, t).await?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=30")], Json(title)).into_response())
}

/// Rails for the home page: continue watching (with a login and a
/// profile), new, and the biggest genres.
#[utoipa::path(get, path = "/api/v1/browse", tag = "catalog", params(BrowseQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = Browse)))]
pub(crate) async fn browse(
    AxState(state): AxState<Arc<State>>,
    MaybeViewer(viewer): MaybeViewer,
    Query(q): Query<BrowseQuery>,
) -> Result<Response, Error> {
    let now = crate::storage::clock::now() as i64;
    let db = &state.db;
    let mut rails = Vec::new();
    let personal = viewer.is_some() && q.profile.is_some();
    if let (Some(v), Some(p)) = (&viewer, &q.profile) {
        if !crate::service::accounts::owns_profile(db, &v.user, p).await? {
            return Err(Error::not_found("profile"));
        }
        let items = crate::service::playback::continue_watching(&state, p, RAIL_LEN).await?;
        if !items.is_empty() {
            rails.push(Rail {
                id: "continue".into(),
                name: "Continue watching".into(),
                items,
            });
        }
    }
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.kind IN ('movie', 'series') AND {VISIBLE}
         ORDER BY t.created_at DESC, t.id LIMIT $2"
    );
    let rows = sqlx::query(&sql)
        .bind(now)
        .bind(RAIL_LEN)
        .fetch_all(&db.pool)
        .await?;
    let newest = rows
        .iter()
        .map(|r| TitleRow::from_row(r).map(|t| t.card()))
        .collect::<Result<Vec<_>, _>>()?;
    rails.push(Rail {
        id: "new".into(),
        name: "New".into(),
        items: newest,
    });
    // The biggest genres among what viewers can see.
    let sql = format!(
        "SELECT t.genres FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.kind IN ('movie', 'series') AND t.genres <> '' AND {VISIBLE} LIMIT 5000"
    );
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in sqlx::query(&sql).bind(now).fetch_all(&db.pool).await? {
        for g in split_list(&r.try_get::<String, _>("genres")?) {
            *counts.entry(g).or_default() += 1;
        }
    }
    let mut genres: Vec<_> = counts.into_iter().collect();
    genres.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.kind IN ('movie', 'series') AND {VISIBLE} AND t.genres LIKE $3
         ORDER BY t.created_at DESC, t.id LIMIT $2"
    );
    for (g, _) in genres.into_iter().take(GENRE_RAILS) {
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(RAIL_LEN)
            .bind(format!("%,{g},%"))
            .fetch_all(&db.pool)
            .await?;
        let items = rows
            .iter()
            .map(|r| TitleRow::from_row(r).map(|t| t.card()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut name = g.clone();
        if let Some(first) = name.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        rails.push(Rail {
            id: format!("genre:{g}"),
            name,
            items,
        });
    }
    let cache = if personal {
        "private, no-store"
    } else {
        "public, max-age=30"
    };
    Ok(([(header::CACHE_CONTROL, cache)], Json(Browse { rails })).into_response())
}

/// A title's artwork.
#[utoipa::path(get, path = "/api/v1/titles/{id}/artwork", tag = "catalog",
    params(("id" = String, Path, description = "title id")),
    responses((status = 200, description = "the image", content_type = "image/*"),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn artwork(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let t = load(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("title"))?;
    let key = t.artwork.ok_or_else(|| Error::not_found("artwork"))?;
    let got = state
        .store
        .get(&object_store::path::Path::from(key.as_str()))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading artwork");
            Error::not_found("artwork")
        })?;
    let bytes = got
        .bytes()
        .await
        .map_err(|_| Error::not_found("artwork"))?;
    let kind = image_type(&bytes).unwrap_or("application/octet-stream");
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        bytes,
    )
        .into_response())
}

// ---- admin ---------------------------------------------------------------------

/// A title to create, or the fields to change (absent: unchanged; `null`
/// clears the optional ones).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TitleEdit {
    /// `movie`, `series`, `season` or `episode` (required to create).
    kind: Option<String>,
    name: Option<String>,
    #[serde(default, deserialize_with = "double")]
    #[schema(value_type = Option<String>)]
    parent_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    #[schema(value_type = Option<i64>)]
    number: Option<Option<i64>>,
    synopsis: Option<String>,
    #[serde(default, deserialize_with = "double")]
    #[schema(value_type = Option<i64>)]
    year: Option<Option<i64>>,
    genres: Option<Vec<String>>,
    languages: Option<Vec<String>>,
    cast: Option<Vec<CastMember>>,
    premium: Option<bool>,
    #[serde(default, deserialize_with = "double")]
    #[schema(value_type = Option<i64>)]
    available_from: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double")]
    #[schema(value_type = Option<i64>)]
    available_until: Option<Option<i64>>,
    /// The asset that plays it (movies and episodes).
    #[serde(default, deserialize_with = "double")]
    #[schema(value_type = Option<String>)]
    asset_id: Option<Option<String>>,
}

/// Present-but-null becomes `Some(None)`.
fn double<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Some(Option::deserialize(d)?))
}

fn admin(state: &State, headers: &HeaderMap) -> Result<(), Error> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if cascade_common::bearer_matches(auth, &state.cfg.admin_token) {
        Ok(())
    } else {
        Err(Error::new(
            Kind::Unauthorized,
            "unauthorized",
            "admin credential required",
        ))
    }
}

/// Create a title (admin).
#[utoipa::path(post, path = "/api/v1/admin/titles", tag = "admin", request_body = TitleEdit,
    security(("admin" = [])),
    responses((status = 201, body = Title), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn create(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(edit): JsonBody<TitleEdit>,
) -> Result<Response, Error> {
    admin(&state, &headers)?;
    let now = crate::storage::clock::now() as i64;
    let blank = TitleRow {
        id: crate::storage::ids::short_id(),
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
    };
    if edit.kind.is_none() || edit.name.is_none() {
        return Err(Error::bad_request(
            "bad_title",
            "kind and name are required",
        ));
    }
    let t = apply_edit(&state.db, blank, edit).await?;
    let mut conn = state.db.pool.acquire().await?;
    bind_title(sqlx::query(
        "INSERT INTO titles (id, kind, parent_id, number, name, synopsis, year, genres, languages,
            cast_json, premium, available_from, available_until, asset_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)",
    ), &t)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(conflict)?;
    reindex(&mut conn, state.db.backend, &t).await?;
    drop(conn);
    let title = detail(&state.db, t).await?;
    Ok((StatusCode::CREATED, Json(title)).into_response())
}

/// Change a title (admin).
#[utoipa::path(patch, path = "/api/v1/admin/titles/{id}", tag = "admin", request_body = TitleEdit,
    security(("admin" = [])), params(("id" = String, Path, description = "title id")),
    responses((status = 200, body = Title), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn update(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(edit): JsonBody<TitleEdit>,
) -> Result<Response, Error> {
    admin(&state, &headers)?;
    let old = load(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("title"))?;
    let t = apply_edit(&state.db, old, edit).await?;
    let mut conn = state.db.pool.acquire().await?;
    bind_title(
        sqlx::query(
            "UPDATE titles SET kind = $2, parent_id = $3, number = $4, name = $5, synopsis = $6,
            year = $7, genres = $8, languages = $9, cast_json = $10, premium = $11,
            available_from = $12, available_until = $13, asset_id = $14, updated_at = $15
         WHERE id = $1",
        ),
        &t,
    )
    .bind(crate::storage::clock::now() as i64)
    .execute(&mut *conn)
    .await
    .map_err(conflict)?;
    reindex(&mut conn, state.db.backend, &t).await?;
    drop(conn);
    Ok(Json(detail(&state.db, t).await?).into_response())
}

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

/// Delete a title and what is below it (admin). Assets stay.
#[utoipa::path(delete, path = "/api/v1/admin/titles/{id}", tag = "admin",
    security(("admin" = [])), params(("id" = String, Path, description = "title id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    admin(&state, &headers)?;
    let mut tx = state.db.pool.begin().await?;
    // Children first (seasons' episodes, then seasons), so the search index
    // loses them too.
    let mut doomed = vec![id.clone()];
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
        if state.db.backend == Backend::Sqlite {
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
        return Err(Error::not_found("title"));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a title's artwork (admin): a JPEG, PNG or WebP body up to 8 MiB,
/// kept in the object store.
#[utoipa::path(put, path = "/api/v1/admin/titles/{id}/artwork", tag = "admin",
    security(("admin" = [])), params(("id" = String, Path, description = "title id")),
    request_body(content = Vec<u8>, content_type = "image/jpeg"),
    responses((status = 200, body = Title), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
pub(crate) async fn put_artwork(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    admin(&state, &headers)?;
    let mut t = load(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("title"))?;
    let Some(kind) = image_type(&body) else {
        return Err(Error::bad_request(
            "bad_image",
            "artwork must be a JPEG, PNG or WebP image",
        ));
    };
    let ext = kind.trim_start_matches("image/");
    // The content's hash names the object, so a new image gets a new URL
    // and caches never serve the old one.
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    let version: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = format!("artwork/{}/{version}.{ext}", t.id);
    state
        .store
        .put(&object_store::path::Path::from(key.as_str()), body.into())
        .await
        .map_err(|e| {
            Error::internal(
                "storage",
                "cannot store the artwork",
                format_args!("storing artwork: {e}"),
            )
        })?;
    sqlx::query("UPDATE titles SET artwork = $1, updated_at = $2 WHERE id = $3")
        .bind(&key)
        .bind(crate::storage::clock::now() as i64)
        .bind(&t.id)
        .execute(&state.db.pool)
        .await?;
    t.artwork = Some(key);
    Ok(Json(detail(&state.db, t).await?).into_response())
}

/// The type of an image by its first bytes.
fn image_type(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

fn conflict(e: sqlx::Error) -> Error {
    let unique = e
        .as_database_error()
        .is_some_and(|d| d.is_unique_violation() || d.is_foreign_key_violation());
    if unique {
        Error::new(
            Kind::Conflict,
            "conflict",
            "that asset already has a title, or the parent or asset does not exist",
        )
    } else {
        Error::from(e)
    }
}

/// The limits on catalog text an editor or an upload sets.
pub(crate) fn check_metadata(
    synopsis: Option<&str>,
    year: Option<i64>,
    lists: &[&[String]],
) -> Result<(), Error> {
    let bad = |m: &str| Error::bad_request("bad_title", m.to_string());
    if synopsis.is_some_and(|s| s.chars().count() > 4000) {
        return Err(bad("synopsis must be at most 4000 characters"));
    }
    if year.is_some_and(|y| !(1870..=2200).contains(&y)) {
        return Err(bad("year must be 1870 to 2200"));
    }
    if lists
        .iter()
        .any(|l| l.len() > 20 || l.iter().any(|g| g.chars().count() > 40))
    {
        return Err(bad("at most 20 genres or languages of 40 characters"));
    }
    Ok(())
}

/// Applies an edit to a row and checks the result.
async fn apply_edit(db: &Db, mut t: TitleRow, e: TitleEdit) -> Result<TitleRow, Error> {
    let bad = |m: &str| Error::bad_request("bad_title", m.to_string());
    if let Some(k) = e.kind {
        if !["movie", "series", "season", "episode"].contains(&k.as_str()) {
            return Err(bad("kind must be movie, series, season or episode"));
        }
        t.kind = k;
    }
    if let Some(n) = e.name {
        let n = n.trim();
        if n.is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control) {
            return Err(bad("name must be 1 to 200 printable characters"));
        }
        t.name = n.to_string();
    }
    check_metadata(
        e.synopsis.as_deref(),
        e.year.flatten(),
        &[
            e.genres.as_deref().unwrap_or_default(),
            e.languages.as_deref().unwrap_or_default(),
        ],
    )?;
    if let Some(s) = e.synopsis {
        t.synopsis = s;
    }
    if let Some(p) = e.parent_id {
        t.parent_id = p;
    }
    if let Some(n) = e.number {
        t.number = n;
    }
    if let Some(y) = e.year {
        t.year = y;
    }
    for (list, field) in [(e.genres, &mut t.genres), (e.languages, &mut t.languages)] {
        if let Some(l) = list {
            *field = join_list(&l);
        }
    }
    if let Some(c) = e.cast {
        if c.len() > 200 {
            return Err(bad("at most 200 cast members"));
        }
        t.cast_json = serde_json::to_string(&c).unwrap_or_else(|_| "[]".into());
    }
    if let Some(p) = e.premium {
        t.premium = p;
    }
    if let Some(f) = e.available_from {
        t.available_from = f;
    }
    if let Some(u) = e.available_until {
        t.available_until = u;
    }
    if let Some(a) = e.asset_id {
        t.asset_id = a;
    }
    if let (Some(f), Some(u)) = (t.available_from, t.available_until) {
        if u <= f {
            return Err(bad("available_until must be after available_from"));
        }
    }
    // The shape of the tree: movies and series at the top, seasons under a
    // series, episodes under a season; only movies and episodes play.
    let want_parent = match t.kind.as_str() {
        "season" => Some("series"),
        "episode" => Some("season"),
        _ => None,
    };
    match (want_parent, &t.parent_id) {
        (None, Some(_)) => return Err(bad("movies and series have no parent")),
        (Some(k), None) => return Err(bad(&format!("a {} needs a {k} as parent", t.kind))),
        (Some(k), Some(p)) => {
            let parent = load(db, p).await?;
            if parent.as_ref().map(|x| x.kind.as_str()) != Some(k) || p == &t.id {
                return Err(bad(&format!("the parent of a {} must be a {k}", t.kind)));
            }
        }
        (None, None) => {}
    }
    if t.asset_id.is_some() && !matches!(t.kind.as_str(), "movie" | "episode") {
        return Err(bad("only movies and episodes have an asset"));
    }
    Ok(t)
}

/// Rewrites a title's search entry.
async fn reindex(conn: &mut AnyConnection, backend: Backend, t: &TitleRow) -> Result<(), Error> {
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

/// Creates the movie title of a new upload, in the upload's transaction.
pub(crate) async fn insert_movie(
    conn: &mut AnyConnection,
    backend: Backend,
    asset: &str,
    meta: &UploadMeta,
    now: i64,
) -> Result<(), sqlx::Error> {
    let t = TitleRow {
        id: asset.to_string(),
        kind: "movie".into(),
        parent_id: None,
        number: None,
        name: meta.name.clone(),
        synopsis: meta.synopsis.clone(),
        year: meta.year,
        genres: join_list(&meta.genres),
        languages: join_list(&meta.languages),
        cast_json: "[]".into(),
        premium: meta.premium,
        available_from: None,
        available_until: None,
        artwork: None,
        asset_id: Some(asset.to_string()),
        duration: None,
        asset_status: None,
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
    reindex(conn, backend, &t)
        .await
        .map_err(|_| sqlx::Error::WorkerCrashed)
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

async fn load(db: &Db, id: &str) -> Result<Option<TitleRow>, Error> {
    if id.len() > 64 {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id WHERE t.id = $1"
    );
    let row = sqlx::query(&sql).bind(id).fetch_optional(&db.pool).await?;
    Ok(row.as_ref().map(TitleRow::from_row).transpose()?)
}

async fn children(db: &Db, id: &str) -> Result<Vec<TitleRow>, Error> {
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.parent_id = $2 AND {VISIBLE}
         ORDER BY t.number IS NULL, t.number, t.name, t.id LIMIT 1000"
    );
    let rows = sqlx::query(&sql)
        .bind(crate::storage::clock::now() as i64)
        .bind(id)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(TitleRow::from_row)
        .collect::<Result<_, _>>()?)
}

async fn detail(db: &Db, t: TitleRow) -> Result<Title, Error> {
    let mut seasons = Vec::new();
    let mut episodes = Vec::new();
    match t.kind.as_str() {
        "series" => {
            for s in children(db, &t.id).await? {
                let eps = children(db, &s.id).await?;
                seasons.push(Season {
                    id: s.id.clone(),
                    number: s.number,
                    name: s.name.clone(),
                    episodes: eps.iter().map(TitleRow::card).collect(),
                });
            }
        }
        "season" => {
            episodes = children(db, &t.id)
                .await?
                .iter()
                .map(TitleRow::card)
                .collect();
        }
        _ => {}
    }
    Ok(Title {
        card: t.card(),
        synopsis: t.synopsis.clone(),
        languages: split_list(&t.languages),
        cast: t.cast(),
        parent: t.parent_id.clone(),
        seasons,
        episodes,
    })
}

/// The title an asset plays, with premium and availability passed down from
/// its season and series: premium if any of them is; the window is the
/// intersection of theirs.
pub(crate) async fn playable(db: &Db, asset: &str) -> Result<Option<Playable>, Error> {
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id WHERE t.asset_id = $1"
    );
    let Some(row) = sqlx::query(&sql)
        .bind(asset)
        .fetch_optional(&db.pool)
        .await?
    else {
        return Ok(None);
    };
    let t = TitleRow::from_row(&row)?;
    let mut p = Playable {
        title_id: t.id.clone(),
        name: t.name.clone(),
        premium: t.premium,
        available_from: t.available_from,
        available_until: t.available_until,
    };
    let mut parent = t.parent_id.clone();
    for _ in 0..3 {
        let Some(id) = parent else { break };
        let Some(up) = load(db, &id).await? else {
            break;
        };
        p.premium |= up.premium;
        p.available_from = max_opt(p.available_from, up.available_from);
        p.available_until = min_opt(p.available_until, up.available_until);
        if up.kind == "series" && t.kind == "episode" {
            p.name = format!("{}: {}", up.name, t.name);
        }
        parent = up.parent_id;
    }
    Ok(Some(p))
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Cards of the titles that play these assets.
pub(crate) async fn cards_for_assets(
    db: &Db,
    assets: &[String],
) -> Result<HashMap<String, TitleCard>, Error> {
    let mut out = HashMap::new();
    // One query per asset keeps the SQL portable; rails hold at most 20.
    let sql = format!(
        "SELECT {TITLE_COLUMNS} FROM titles t LEFT JOIN assets a ON a.id = t.asset_id
         WHERE t.asset_id = $2 AND a.status = 'ready' AND {VISIBLE}"
    );
    let now = crate::storage::clock::now() as i64;
    for a in assets {
        if let Some(r) = sqlx::query(&sql)
            .bind(now)
            .bind(a)
            .fetch_optional(&db.pool)
            .await?
        {
            let t = TitleRow::from_row(&r)?;
            out.insert(a.clone(), t.card());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_are_letters_and_digits() {
        assert_eq!(
            search_words("  Star-Wars: \"episode\" 4*  "),
            vec!["star", "wars", "episode", "4"]
        );
        assert!(search_words("\"*():^-").is_empty());
        assert_eq!(search_words(&"a ".repeat(50)).len(), 8);
    }

    #[test]
    fn search_expressions_per_database() {
        let w = search_words("cricket fin");
        assert_eq!(
            search_expression(&w, Backend::Sqlite),
            "\"cricket\" \"fin\"*"
        );
        assert_eq!(search_expression(&w, Backend::Postgres), "cricket & fin:*");
    }

    #[test]
    fn lists_are_normalised() {
        assert_eq!(
            join_list(&["Drama".into(), " drama".into(), "Sci,Fi".into()]),
            ",drama,sci fi,"
        );
        assert_eq!(split_list(",drama,sci fi,"), vec!["drama", "sci fi"]);
        assert_eq!(join_list(&[]), "");
    }

    #[test]
    fn images_are_known_by_their_magic() {
        assert_eq!(image_type(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(image_type(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(image_type(b"<svg"), None);
    }
}
