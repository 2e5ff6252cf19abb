//! Editing the catalog (the admin API): creating, changing and deleting
//! titles, with the rules of the tree (movies and series at the top,
//! seasons under a series, episodes under a season), and their artwork.

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use crate::repo::catalog::{self, CastMember, TitleRow};
use crate::service::browse::image_type;
use crate::service::state::State;
use crate::service::titles::{self, Title};
use crate::storage::db::Db;
use crate::storage::{clock, ids, Error, Result};

/// Largest artwork accepted.
pub(crate) const MAX_ARTWORK_BYTES: usize = 8 << 20;

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

/// Creates a title.
pub(crate) async fn create(state: &State, edit: TitleEdit) -> Result<Title> {
    let now = clock::now() as i64;
    let blank = TitleRow::blank(ids::short_id());
    if edit.kind.is_none() || edit.name.is_none() {
        return Err(Error::bad_request(
            "bad_title",
            "kind and name are required",
        ));
    }
    let t = apply_edit(&state.db, blank, edit).await?;
    catalog::insert(&state.db, &t, now).await?;
    titles::detail(&state.db, t).await
}

/// Changes a title.
pub(crate) async fn update(state: &State, id: &str, edit: TitleEdit) -> Result<Title> {
    let old = catalog::load(&state.db, id)
        .await?
        .ok_or_else(|| Error::not_found("title"))?;
    let t = apply_edit(&state.db, old, edit).await?;
    catalog::update(&state.db, &t, clock::now() as i64).await?;
    titles::detail(&state.db, t).await
}

/// Deletes a title and what is below it. Assets stay.
pub(crate) async fn delete(state: &State, id: &str) -> Result<()> {
    if catalog::delete_tree(&state.db, id).await? {
        Ok(())
    } else {
        Err(Error::not_found("title"))
    }
}

/// Sets a title's artwork: a JPEG, PNG or WebP image, kept in the object
/// store under a name made of its hash.
pub(crate) async fn put_artwork(state: &State, id: &str, body: Bytes) -> Result<Title> {
    let mut t = catalog::load(&state.db, id)
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
    catalog::set_artwork(&state.db, &t.id, &key, clock::now() as i64).await?;
    t.artwork = Some(key);
    titles::detail(&state.db, t).await
}

/// The limits on catalog text an editor or an upload sets.
pub(crate) fn check_metadata(
    synopsis: Option<&str>,
    year: Option<i64>,
    lists: &[&[String]],
) -> Result<()> {
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
async fn apply_edit(db: &Db, mut t: TitleRow, e: TitleEdit) -> Result<TitleRow> {
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
            *field = catalog::join_list(&l);
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
            let parent = catalog::load(db, p).await?;
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
