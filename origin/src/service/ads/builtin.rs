//! The built-in ad decision service, for `cascade dev` and deployments
//! without an ad server of their own: an inventory of creatives, targeted
//! by country, genre, device type and plan, with a frequency cap per
//! viewer and day; it answers VAST 4.2 like any ad server
//! (`GET /api/v1/ads/vast`), and the origin reads its answer the same way.

use std::fmt::Write;

use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::Targeting;
use crate::repo::ads::{self as repo, InventoryAd};
use crate::service::state::State;
use crate::storage::{clock, ids, Error, Result};

/// Seconds of ads a built-in break is filled with, at most.
const BREAK_SECS: u64 = 30;

/// An ad to add to the inventory.
#[derive(Deserialize, ToSchema)]
pub(crate) struct NewAd {
    /// Unique name.
    name: String,
    /// The creative's media: an `http(s)://` MP4 (conditioned before it
    /// first plays).
    media_url: String,
    /// Its length in seconds.
    duration: f64,
    #[serde(default)]
    countries: Vec<String>,
    #[serde(default)]
    genres: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    plans: Vec<String>,
    /// Times one viewer may see it a day (0 or absent: no cap).
    #[serde(default)]
    cap_per_day: i64,
    /// Share among matching ads (default 1).
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    click_url: String,
}

/// The VAST endpoint's query: who is watching what.
#[derive(Deserialize, IntoParams, Default)]
pub(crate) struct VastQuery {
    /// A hashed viewer id (frequency caps).
    #[serde(default)]
    viewer: String,
    /// Comma-separated genres of the title.
    #[serde(default)]
    genre: String,
    #[serde(default)]
    device: String,
    /// Two-letter country.
    #[serde(default)]
    country: String,
    #[serde(default)]
    plan: String,
    /// The break's position in seconds.
    #[serde(default)]
    pos: f64,
    /// The break's length in seconds (a live break's); 0: up to 30.
    #[serde(default)]
    dur: f64,
}

fn clean_list(what: &'static str, list: Vec<String>, upper: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for v in list {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        if v.len() > 40
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::bad_request(
                "bad_targeting",
                format!("{what}: letters, digits, - and _ only, at most 40 each"),
            ));
        }
        out.push(if upper {
            v.to_ascii_uppercase()
        } else {
            v.to_ascii_lowercase()
        });
    }
    if out.len() > 100 {
        return Err(Error::bad_request(
            "bad_targeting",
            format!("{what}: at most 100"),
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Adds an ad to the inventory and starts conditioning its creative.
pub(crate) async fn add(state: &std::sync::Arc<State>, a: NewAd) -> Result<InventoryAd> {
    let name = a.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "bad_name",
            "name: 1 to 100 printable characters",
        ));
    }
    if !super::is_http_url(&a.media_url) {
        return Err(Error::bad_request(
            "bad_media_url",
            "media_url must be an http:// or https:// URL",
        ));
    }
    if !a.duration.is_finite() || !(1.0..=600.0).contains(&a.duration) {
        return Err(Error::bad_request(
            "bad_duration",
            "duration: 1 to 600 seconds",
        ));
    }
    if !(0..=1000).contains(&a.cap_per_day) {
        return Err(Error::bad_request("bad_cap", "cap_per_day: 0 to 1000"));
    }
    let weight = a.weight.unwrap_or(1);
    if !(1..=1000).contains(&weight) {
        return Err(Error::bad_request("bad_weight", "weight: 1 to 1000"));
    }
    if !a.click_url.is_empty() && !super::is_http_url(&a.click_url) {
        return Err(Error::bad_request(
            "bad_click_url",
            "click_url must be an http:// or https:// URL",
        ));
    }
    let ad = InventoryAd {
        id: ids::short_id(),
        name,
        media_url: a.media_url,
        duration_ms: (a.duration * 1000.0).round() as i64,
        countries: clean_list("countries", a.countries, true)?,
        genres: clean_list("genres", a.genres, false)?,
        devices: clean_list("devices", a.devices, false)?,
        plans: clean_list("plans", a.plans, false)?,
        cap_per_day: a.cap_per_day,
        weight,
        click_url: a.click_url,
        created_ms: clock::now_ms() as i64,
    };
    if !repo::insert_inventory(&state.db, &ad).await? {
        return Err(Error::conflict(
            "name_taken",
            "an ad with this name is in the inventory",
        ));
    }
    // Conditioned now, so it is ready before its first break.
    let _ = super::creatives::ready(state, &ad.media_url).await;
    Ok(ad)
}

/// The inventory.
pub(crate) async fn list(state: &State) -> Result<Vec<InventoryAd>> {
    repo::list_inventory(&state.db).await
}

/// Removes an ad by id or name.
pub(crate) async fn remove(state: &State, id_or_name: &str) -> Result<()> {
    if repo::remove_inventory(&state.db, id_or_name).await? {
        Ok(())
    } else {
        Err(Error::not_found("ad"))
    }
}

/// The built-in answer for a viewer's break, as the public endpoint asks.
pub(crate) async fn vast_for_query(state: &State, q: VastQuery) -> Result<String> {
    let t = Targeting {
        viewer: q.viewer.chars().take(64).collect(),
        title: String::new(),
        genres: q
            .genre
            .split(',')
            .map(|g| g.trim().to_ascii_lowercase())
            .filter(|g| !g.is_empty())
            .take(20)
            .collect(),
        device: q.device.chars().take(40).collect(),
        country: q.country.to_ascii_uppercase().chars().take(2).collect(),
        plan: q.plan.chars().take(40).collect(),
    };
    let pos = if q.pos.is_finite() && q.pos >= 0.0 {
        (q.pos * 1000.0) as u64
    } else {
        0
    };
    let dur = if q.dur.is_finite() && q.dur > 0.0 {
        (q.dur * 1000.0).min(3_600_000.0) as u64
    } else {
        0
    };
    vast(state, &t, pos, dur).await
}

/// VAST 4.2 for one break: a pod of the matching ads under their caps,
/// weighted at random, up to the break's length (`max_ms`, a live break's)
/// or 30 seconds; an empty VAST when none match.
pub(crate) async fn vast(state: &State, t: &Targeting, _at_ms: u64, max_ms: u64) -> Result<String> {
    // A live break must hold the whole pod; an on-demand one takes one ad
    // however long.
    let (limit, strict) = if max_ms > 0 {
        (max_ms, true)
    } else {
        (BREAK_SECS * 1000, false)
    };
    let day = (clock::now_ms() / 86_400_000) as i64;
    let inventory = repo::list_inventory(&state.db).await?;
    let served = if t.viewer.is_empty() {
        Vec::new()
    } else {
        repo::served_today(&state.db, &t.viewer, day).await?
    };
    let mut candidates: Vec<&InventoryAd> = inventory
        .iter()
        .filter(|a| matches(a, t))
        .filter(|a| {
            a.cap_per_day == 0
                || served
                    .iter()
                    .find(|(id, _)| *id == a.id)
                    .map_or(0, |(_, n)| *n)
                    < a.cap_per_day
        })
        .collect();
    let mut pod = Vec::new();
    let mut secs = 0;
    while !candidates.is_empty() && secs < limit && pod.len() < state.cfg.ads_max_per_break {
        let total: i64 = candidates.iter().map(|a| a.weight).sum();
        let mut pick = i64::from(super::decide::rand_u32()) % total.max(1);
        let i = candidates
            .iter()
            .position(|a| {
                pick -= a.weight;
                pick < 0
            })
            .unwrap_or(0);
        let ad = candidates.remove(i);
        if secs + ad.duration_ms as u64 > limit && (strict || !pod.is_empty()) {
            continue;
        }
        secs += ad.duration_ms as u64;
        pod.push(ad);
    }
    if !t.viewer.is_empty() {
        for ad in &pod {
            repo::count_served(&state.db, &t.viewer, &ad.id, day).await?;
        }
    }
    let mut out =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<VAST version=\"4.2\">\n");
    for (i, ad) in pod.iter().enumerate() {
        let ms = ad.duration_ms;
        let _ = write!(
            out,
            "  <Ad id=\"{id}\" sequence=\"{seq}\">\n    <InLine>\n      <AdSystem>Cascade</AdSystem>\n      <AdTitle>{title}</AdTitle>\n      <Creatives>\n        <Creative id=\"{id}\">\n          <Linear>\n            <Duration>{h:02}:{m:02}:{s:02}.{ms3:03}</Duration>\n            <MediaFiles>\n              <MediaFile delivery=\"progressive\" type=\"video/mp4\" width=\"1920\" height=\"1080\"><![CDATA[{url}]]></MediaFile>\n            </MediaFiles>\n",
            id = xml(&ad.id),
            seq = i + 1,
            title = xml(&ad.name),
            h = ms / 3_600_000,
            m = ms / 60_000 % 60,
            s = ms / 1000 % 60,
            ms3 = ms % 1000,
            url = ad.media_url.replace("]]>", ""),
        );
        if !ad.click_url.is_empty() {
            let _ = writeln!(
                out,
                "            <VideoClicks><ClickThrough><![CDATA[{}]]></ClickThrough></VideoClicks>",
                ad.click_url.replace("]]>", "")
            );
        }
        out.push_str("          </Linear>\n        </Creative>\n      </Creatives>\n    </InLine>\n  </Ad>\n");
    }
    out.push_str("</VAST>\n");
    Ok(out)
}

/// Whether an ad's targeting lets it play for `t`.
fn matches(a: &InventoryAd, t: &Targeting) -> bool {
    let any_or = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    any_or(&a.countries, &t.country)
        && any_or(&a.devices, &t.device)
        && any_or(&a.plans, &t.plan)
        && (a.genres.is_empty() || a.genres.iter().any(|g| t.genres.contains(g)))
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad(countries: &[&str], genres: &[&str], devices: &[&str], plans: &[&str]) -> InventoryAd {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        InventoryAd {
            id: "a".into(),
            name: "a".into(),
            media_url: "http://x/a.mp4".into(),
            duration_ms: 10_000,
            countries: v(countries),
            genres: v(genres),
            devices: v(devices),
            plans: v(plans),
            cap_per_day: 0,
            weight: 1,
            click_url: String::new(),
            created_ms: 0,
        }
    }

    #[test]
    fn targeting_matches_on_every_axis() {
        let t = Targeting {
            country: "IN".into(),
            genres: vec!["sports".into(), "drama".into()],
            device: "tv".into(),
            plan: "free".into(),
            ..Targeting::default()
        };
        assert!(matches(&ad(&[], &[], &[], &[]), &t));
        assert!(matches(
            &ad(&["IN", "NP"], &["sports"], &["tv"], &["free"]),
            &t
        ));
        assert!(!matches(&ad(&["US"], &[], &[], &[]), &t));
        assert!(!matches(&ad(&[], &["kids"], &[], &[]), &t));
        assert!(!matches(&ad(&[], &[], &["phone"], &[]), &t));
        assert!(!matches(&ad(&[], &[], &[], &["basic"]), &t));
    }
}
