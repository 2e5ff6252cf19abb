//! Watch history as viewers see it: a profile's history, the continue
//! watching rail, and where playback resumes. Positions still waiting in
//! the heartbeat batcher count as much as stored ones.

use serde::Serialize;
use utoipa::ToSchema;

use crate::repo::accounts;
use crate::repo::history::{self, Position};
use crate::service::state::State;
use crate::service::titles::{self, TitleCard};
use crate::storage::{Error, Result};

/// One row of watch history.
#[derive(Serialize, ToSchema)]
pub(crate) struct HistoryItem {
    asset: String,
    position: f64,
    duration: Option<f64>,
    updated_at: i64,
    title: Option<TitleCard>,
}

/// A profile's history, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct History {
    items: Vec<HistoryItem>,
}

/// A profile's watch history, newest first, if it is the user's.
pub(crate) async fn of_profile(state: &State, user: &str, profile: &str) -> Result<History> {
    if !accounts::owns_profile(&state.db, user, profile).await? {
        return Err(Error::not_found("profile"));
    }
    let mut rows = positions_of(state, profile, 100).await?;
    rows.truncate(100);
    let assets: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let cards = titles::cards_for_assets(&state.db, &assets).await?;
    let items = rows
        .into_iter()
        .map(|(asset, p)| HistoryItem {
            title: cards.get(&asset).cloned(),
            asset,
            position: p.position,
            duration: p.duration,
            updated_at: p.at,
        })
        .collect();
    Ok(History { items })
}

/// The continue-watching rail: titles begun and not finished.
pub(crate) async fn continue_watching(
    state: &State,
    profile: &str,
    limit: i64,
) -> Result<Vec<TitleCard>> {
    let rows = positions_of(state, profile, limit * 2).await?;
    let assets: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let cards = titles::cards_for_assets(&state.db, &assets).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(asset, p)| {
            let mut card = cards.get(&asset)?.clone();
            let length = card.duration.or(p.duration);
            unfinished(p.position, length).then(|| {
                card.position = Some(p.position);
                card
            })
        })
        .take(limit as usize)
        .collect())
}

/// Where to start: the last position, unless the title was finished (the
/// last 5 %, or the last 30 s) or barely begun.
pub(crate) async fn resume_position(
    state: &State,
    profile: &str,
    asset: &str,
    duration: Option<f64>,
) -> Result<f64> {
    let p = match state.heartbeats.pending_position(profile, asset) {
        Some(p) => Some((p.position, p.duration)),
        None => history::position(&state.db, profile, asset).await?,
    };
    let Some((position, reported)) = p else {
        return Ok(0.0);
    };
    let length = duration.or(reported);
    Ok(if unfinished(position, length) {
        position
    } else {
        0.0
    })
}

/// A profile's positions, stored and pending, newest first.
async fn positions_of(state: &State, profile: &str, limit: i64) -> Result<Vec<(String, Position)>> {
    let mut out = history::positions(&state.db, profile, limit).await?;
    out.extend(state.heartbeats.pending_of(profile));
    let mut v: Vec<_> = out.into_iter().collect();
    v.sort_by(|a, b| b.1.at.cmp(&a.1.at).then(a.0.cmp(&b.0)));
    Ok(v)
}

fn unfinished(position: f64, length: Option<f64>) -> bool {
    position >= 5.0 && length.is_none_or(|d| position < (d * 0.95).min(d - 30.0).max(d * 0.8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_and_barely_begun_titles_start_over() {
        assert!(!unfinished(2.0, Some(600.0)));
        assert!(unfinished(300.0, Some(600.0)));
        assert!(!unfinished(590.0, Some(600.0)));
        assert!(
            unfinished(20.0, Some(30.0)),
            "short titles resume until 80 %"
        );
        assert!(!unfinished(25.0, Some(30.0)));
        assert!(unfinished(100.0, None));
    }
}
