//! Browsing the catalog: pages of titles and search (ranked by the
//! database), one title in full, the home page's rails (continue watching,
//! new, the biggest genres), and artwork.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

use crate::repo::{accounts, catalog};
use crate::service::history;
use crate::service::state::State;
use crate::service::titles::{self, Title, TitleCard};
use crate::storage::{clock, Error, Result};

/// Titles per page at most.
const MAX_PER_PAGE: i64 = 100;
/// Titles per rail.
const RAIL_LEN: i64 = 20;
/// Genre rails on the browse page.
const GENRE_RAILS: usize = 4;

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

/// A page of the movies and series viewers can see, of one genre or all;
/// with search words, the best matches first.
pub(crate) async fn list(
    state: &State,
    q: Option<&str>,
    genre: Option<&str>,
    page: Option<i64>,
    per_page: Option<i64>,
) -> Result<TitlePage> {
    let per_page = per_page.unwrap_or(20);
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(Error::bad_request("bad_page", "per_page must be 1 to 100"));
    }
    let page = page.unwrap_or(1);
    if !(1..=10_000).contains(&page) {
        return Err(Error::bad_request("bad_page", "page must be 1 to 10000"));
    }
    let offset = (page - 1) * per_page;
    let now = clock::now() as i64;
    let genre = genre.map(|g| catalog::join_list(&[g.to_string()]));
    let genre = genre.filter(|g| !g.is_empty());
    let words = q.map(search_words).unwrap_or_default();
    let (rows, total) =
        catalog::page(&state.db, now, per_page, offset, genre.as_deref(), &words).await?;
    Ok(TitlePage {
        items: rows.iter().map(titles::card).collect(),
        page,
        per_page,
        total,
    })
}

/// One title in full, if viewers may see it.
pub(crate) async fn title(state: &State, id: &str) -> Result<Title> {
    let t = catalog::load(&state.db, id)
        .await?
        .ok_or_else(|| Error::not_found("title"))?;
    // Viewers do not see what is not theirs to see yet or any more.
    let closed = t.available_until.is_some_and(|u| u <= clock::now() as i64);
    let unready = t.asset_id.is_some() && t.asset_status.as_deref() != Some("ready");
    if closed || unready {
        return Err(Error::not_found("title"));
    }
    titles::detail(&state.db, t).await
}

/// Rails for the home page: continue watching (for a viewer's own
/// profile), new, and the biggest genres.
pub(crate) async fn browse(
    state: &State,
    viewer: Option<&str>,
    profile: Option<&str>,
) -> Result<Browse> {
    let now = clock::now() as i64;
    let db = &state.db;
    let mut rails = Vec::new();
    if let (Some(user), Some(p)) = (viewer, profile) {
        if !accounts::owns_profile(db, user, p).await? {
            return Err(Error::not_found("profile"));
        }
        let items = history::continue_watching(state, p, RAIL_LEN).await?;
        if !items.is_empty() {
            rails.push(Rail {
                id: "continue".into(),
                name: "Continue watching".into(),
                items,
            });
        }
    }
    let newest = catalog::newest(db, now, RAIL_LEN).await?;
    rails.push(Rail {
        id: "new".into(),
        name: "New".into(),
        items: newest.iter().map(titles::card).collect(),
    });
    // The biggest genres among what viewers can see.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for list in catalog::visible_genres(db, now).await? {
        for g in catalog::split_list(&list) {
            *counts.entry(g).or_default() += 1;
        }
    }
    let mut genres: Vec<_> = counts.into_iter().collect();
    genres.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (g, _) in genres.into_iter().take(GENRE_RAILS) {
        let rows = catalog::newest_in_genre(db, now, RAIL_LEN, &g).await?;
        let mut name = g.clone();
        if let Some(first) = name.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        rails.push(Rail {
            id: format!("genre:{g}"),
            name,
            items: rows.iter().map(titles::card).collect(),
        });
    }
    Ok(Browse { rails })
}

/// A title's artwork and its media type.
pub(crate) async fn artwork(state: &State, id: &str) -> Result<(Bytes, &'static str)> {
    let t = catalog::load(&state.db, id)
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
    let bytes = got.bytes().await.map_err(|_| Error::not_found("artwork"))?;
    let kind = image_type(&bytes).unwrap_or("application/octet-stream");
    Ok((bytes, kind))
}

/// Search words from what a viewer typed: letters and digits only, at most
/// eight words of at most 64 characters, lower case.
fn search_words(q: &str) -> Vec<String> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(8)
        .map(|w| w.chars().take(64).collect::<String>().to_lowercase())
        .collect()
}

/// The type of an image by its first bytes.
pub(crate) fn image_type(b: &[u8]) -> Option<&'static str> {
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
        assert_eq!(search_words("cricket fin"), vec!["cricket", "fin"]);
    }

    #[test]
    fn images_are_known_by_their_magic() {
        assert_eq!(image_type(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(image_type(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(image_type(b"<svg"), None);
    }
}
