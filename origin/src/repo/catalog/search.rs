//! Listing and searching the visible movies and series: one SQL statement
//! for a page and one for the total, with full-text search in each
//! database's own syntax.

use sqlx::Row;

use super::{TitleRow, TITLE_COLUMNS, VISIBLE};
use crate::storage::db::{Backend, Db};
use crate::storage::Result;

/// One page of the visible movies and series, newest first, or of those
/// matching `words` (best first); with the total. `genre` is a stored list
/// of one (`,drama,`).
pub(crate) async fn page(
    db: &Db,
    now: i64,
    per_page: i64,
    offset: i64,
    genre: Option<&str>,
    words: &[String],
) -> Result<(Vec<TitleRow>, i64)> {
    let genre_filter = if genre.is_some() {
        " AND t.genres LIKE $4"
    } else {
        ""
    };
    let like = genre.map(|g| format!("%{g}%")).unwrap_or_default();
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
        let expr = search_expression(words, db.backend);
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
        .map(TitleRow::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((items, total))
}

/// The words as a query in each database's syntax (all words must match;
/// the last as a prefix, for search-as-you-type). Safe to pass as a bound
/// parameter: words hold letters and digits only.
fn search_expression(words: &[String], backend: Backend) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_expressions_per_database() {
        let w = vec!["cricket".to_string(), "fin".to_string()];
        assert_eq!(
            search_expression(&w, Backend::Sqlite),
            "\"cricket\" \"fin\"*"
        );
        assert_eq!(search_expression(&w, Backend::Postgres), "cricket & fin:*");
    }
}
