//! Titles as viewers see them: cards for lists and rails, a title in full
//! with its seasons and episodes, and what the playback API needs of the
//! title an asset plays.

use std::collections::HashMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::repo::catalog::{self, CastMember, TitleRow};
use crate::storage::db::Db;
use crate::storage::Result;

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

/// The card of a stored title.
pub(crate) fn card(t: &TitleRow) -> TitleCard {
    TitleCard {
        id: t.id.clone(),
        kind: t.kind.clone(),
        name: t.name.clone(),
        year: t.year,
        number: t.number,
        genres: catalog::split_list(&t.genres),
        premium: t.premium,
        available_from: t.available_from,
        available_until: t.available_until,
        artwork: t.artwork.as_ref().map(|key| {
            let version = key.rsplit('/').next().unwrap_or("");
            format!("/api/v1/titles/{}/artwork?v={version}", t.id)
        }),
        asset: t.asset_id.clone(),
        duration: t.duration,
        position: None,
    }
}

/// A title in full: a series with its seasons and their episodes, a season
/// with its episodes.
pub(crate) async fn detail(db: &Db, t: TitleRow) -> Result<Title> {
    let mut seasons = Vec::new();
    let mut episodes = Vec::new();
    match t.kind.as_str() {
        "series" => {
            for s in catalog::children(db, &t.id).await? {
                let eps = catalog::children(db, &s.id).await?;
                seasons.push(Season {
                    id: s.id.clone(),
                    number: s.number,
                    name: s.name.clone(),
                    episodes: eps.iter().map(card).collect(),
                });
            }
        }
        "season" => {
            episodes = catalog::children(db, &t.id)
                .await?
                .iter()
                .map(card)
                .collect();
        }
        _ => {}
    }
    Ok(Title {
        card: card(&t),
        synopsis: t.synopsis.clone(),
        languages: catalog::split_list(&t.languages),
        cast: t.cast(),
        parent: t.parent_id.clone(),
        seasons,
        episodes,
    })
}

/// The title an asset plays, with premium and availability passed down from
/// its season and series: premium if any of them is; the window is the
/// intersection of theirs.
pub(crate) async fn playable(db: &Db, asset: &str) -> Result<Option<Playable>> {
    let Some(t) = catalog::of_asset(db, asset).await? else {
        return Ok(None);
    };
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
        let Some(up) = catalog::load(db, &id).await? else {
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

/// Cards of the titles that play these assets.
pub(crate) async fn cards_for_assets(
    db: &Db,
    assets: &[String],
) -> Result<HashMap<String, TitleCard>> {
    Ok(catalog::of_assets(db, assets)
        .await?
        .into_iter()
        .map(|(asset, t)| (asset, card(&t)))
        .collect())
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
