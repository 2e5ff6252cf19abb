//! Panic controls: quality caps by region, channel or for everyone
//! (`cascade ctl degrade`), automatic caps when a region's egress passes
//! its threshold, and drains of edges for maintenance (`cascade ctl
//! drain`). The state lives in control's database; every change is pushed
//! to each edge at once (`POST {edge}/fleet/state`), and every heartbeat's
//! answer carries it too, so an edge that missed a push or joined later
//! catches up within a beat.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cascade_common::{HeartbeatReply, QualityCap};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{error, not_admin, BadField, Ctx, JsonObject};

/// How long an edge has to take a push.
const PUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Edges pushed to at once.
const FAN_OUT: usize = 256;
/// Longest a cap may be set for: a week.
const MAX_FOR_SECS: u64 = 7 * 86_400;
/// Most caps in force at once.
const MAX_CAPS: usize = 1000;

/// A region's automatic cap: when the egress of its edges together passes
/// `egress_mbps`, rungs over `max_height` leave its manifests, until the
/// egress falls under 80% of it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoDegrade {
    /// The region.
    pub region: String,
    /// Total egress of its edges, in Mbit/s, that starts the cap.
    pub egress_mbps: f64,
    /// The tallest rung left while it holds.
    pub max_height: u32,
}

/// What control keeps: the caps in force and the drained edges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FleetState {
    pub(crate) caps: Vec<QualityCap>,
    pub(crate) drained: BTreeSet<String>,
    /// Grows with every change (see `HeartbeatReply::version`).
    #[serde(default)]
    pub(crate) version: u64,
}

impl FleetState {
    /// What one node is told.
    pub(crate) fn reply_for(&self, node: &str, now: u64) -> HeartbeatReply {
        HeartbeatReply {
            caps: self
                .caps
                .iter()
                .filter(|c| c.until.is_none_or(|u| u > now))
                .cloned()
                .collect(),
            draining: self.drained.contains(node),
            pathways: Vec::new(),
            version: self.version,
        }
    }

    /// Drops caps past their time; whether any went.
    fn prune(&mut self, now: u64) -> bool {
        let before = self.caps.len();
        self.caps.retain(|c| c.until.is_none_or(|u| u > now));
        self.caps.len() != before
    }

    /// Sets the cap of one scope (region and channel), replacing the one
    /// there was.
    fn set(&mut self, cap: QualityCap) {
        self.caps
            .retain(|c| !(c.region == cap.region && c.channel == cap.channel));
        self.caps.push(cap);
        self.caps
            .sort_by(|a, b| (&a.region, &a.channel).cmp(&(&b.region, &b.channel)));
    }

    /// Lifts the cap of one scope; whether there was one.
    fn clear(&mut self, region: &Option<String>, channel: &Option<String>) -> bool {
        let before = self.caps.len();
        self.caps
            .retain(|c| !(&c.region == region && &c.channel == channel));
        self.caps.len() != before
    }

    /// Applies the automatic caps to the regions' egress now (Mbit/s, by
    /// region); whether anything changed. A region's operator cap is left
    /// alone; an automatic one goes once egress is under 80% of the
    /// threshold.
    pub(crate) fn auto(
        &mut self,
        rules: &[AutoDegrade],
        egress_mbps: &BTreeMap<String, f64>,
    ) -> bool {
        let mut changed = false;
        for r in rules {
            let region = Some(r.region.clone());
            let now = egress_mbps.get(&r.region).copied().unwrap_or(0.0);
            let existing = self
                .caps
                .iter()
                .find(|c| c.region == region && c.channel.is_none())
                .map(|c| c.source.clone());
            match existing.as_deref() {
                None if now > r.egress_mbps => {
                    tracing::warn!(region = %r.region, egress_mbps = now, max_height = r.max_height, "region over its egress threshold: capping quality");
                    self.set(QualityCap {
                        region,
                        channel: None,
                        max_height: r.max_height,
                        until: None,
                        source: "auto".into(),
                    });
                    changed = true;
                }
                Some("auto") if now < r.egress_mbps * 0.8 => {
                    tracing::warn!(region = %r.region, egress_mbps = now, "region back under its egress threshold: cap lifted");
                    self.clear(&region, &None);
                    changed = true;
                }
                _ => {}
            }
        }
        changed
    }
}

/// Loads the state kept in the database.
pub(crate) async fn load(db: &sqlx::SqlitePool) -> sqlx::Result<FleetState> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT value FROM fleet_state WHERE key = 'state'")
            .fetch_optional(db)
            .await?;
    Ok(row
        .and_then(|(v,)| serde_json::from_str(&v).ok())
        .unwrap_or_default())
}

async fn store(db: &sqlx::SqlitePool, state: &FleetState) -> sqlx::Result<()> {
    let value = serde_json::to_string(state).unwrap_or_default();
    sqlx::query(
        "INSERT INTO fleet_state (key, value) VALUES ('state', ?)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(value)
    .execute(db)
    .await?;
    Ok(())
}

/// `GET /api/v1/degrade` (admin): the caps in force and the drained edges.
pub(crate) async fn list(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    let state = snapshot(&ctx);
    let now = cascade_common::unix_now();
    let caps: Vec<&QualityCap> = state
        .caps
        .iter()
        .filter(|c| c.until.is_none_or(|u| u > now))
        .collect();
    Json(json!({ "caps": caps, "drained": state.drained })).into_response()
}

/// `POST /api/v1/degrade` (admin): caps the rungs of new manifests for a
/// region's edges, a channel, or everyone, for a while or until lifted.
pub(crate) async fn set(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    let obj = match JsonObject::parse(&body, &["region", "channel", "max_height", "for_secs"]) {
        Ok(o) => o,
        Err(e) => return e.response(),
    };
    let parsed = (|| {
        let region: Option<String> = obj.field("region")?;
        let channel: Option<String> = obj.field("channel")?;
        let max_height: u32 = obj
            .field("max_height")?
            .ok_or_else(|| BadField::new("max_height", "required"))?;
        let for_secs: Option<u64> = obj.field("for_secs")?;
        Ok::<_, BadField>((region, channel, max_height, for_secs))
    })();
    let (region, channel, max_height, for_secs) = match parsed {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    if let Err(r) = check_scope(&ctx, &region, &channel).await {
        return r;
    }
    let floor = ctx.cfg.min_cap_height;
    if max_height < floor || max_height > 16_384 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_cap",
            &format!("max_height: {floor} to 16384 lines; below {floor} a cap would remove every rung of the ladder"),
        );
    }
    if for_secs.is_some_and(|s| s == 0 || s > MAX_FOR_SECS) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_duration",
            "for_secs: 1 second to 7 days",
        );
    }
    let now = cascade_common::unix_now();
    let cap = QualityCap {
        region,
        channel,
        max_height,
        until: for_secs.map(|s| now + s),
        source: "operator".into(),
    };
    let changed = change(&ctx, |s| {
        if s.caps.len() >= MAX_CAPS {
            return Err((
                StatusCode::CONFLICT,
                "too_many_caps",
                "too many caps in force; lift some first",
            ));
        }
        s.set(cap.clone());
        Ok(())
    })
    .await;
    match changed {
        Ok(pushed) => {
            tracing::warn!(region = ?cap.region, channel = ?cap.channel, max_height, until = ?cap.until, "quality cap set");
            Json(json!({ "cap": cap, "edges": pushed })).into_response()
        }
        Err(r) => r,
    }
}

/// The scope of a cap to lift.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scope {
    region: Option<String>,
    channel: Option<String>,
}

/// `DELETE /api/v1/degrade?region=…&channel=…` (admin): lifts the cap of
/// exactly that scope (none given: the cap on everyone).
pub(crate) async fn clear(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    scope: Result<Query<Scope>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    let Ok(Query(scope)) = scope else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "region and channel are the only parameters",
        );
    };
    if let Err(r) = check_scope(&ctx, &scope.region, &scope.channel).await {
        return r;
    }
    let changed = change(&ctx, |s| {
        if s.clear(&scope.region, &scope.channel) {
            Ok(())
        } else {
            Err((
                StatusCode::NOT_FOUND,
                "no_cap",
                "no cap is set for that region and channel",
            ))
        }
    })
    .await;
    match changed {
        Ok(pushed) => {
            tracing::warn!(region = ?scope.region, channel = ?scope.channel, "quality cap lifted");
            Json(json!({ "cleared": true, "edges": pushed })).into_response()
        }
        Err(r) => r,
    }
}

/// `POST /api/v1/nodes/{name}/drain` (admin): new sessions go elsewhere
/// (steering, the playback API, and 503 at the edge); sessions there move
/// away at their next steering reload. `DELETE` ends it.
pub(crate) async fn drain(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    method: axum::http::Method,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    let known = crate::fleet_targets(&ctx)
        .iter()
        .any(|t| t.name == name && t.role == "edge");
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_edge",
            "no edge of that name is registered or configured",
        );
    }
    let on = method == axum::http::Method::POST;
    let changed = change(&ctx, |s| {
        if on {
            s.drained.insert(name.clone());
        } else {
            s.drained.remove(&name);
        }
        Ok(())
    })
    .await;
    match changed {
        Ok(pushed) => {
            tracing::warn!(edge = %name, draining = on, "drain changed");
            Json(json!({ "edge": name, "draining": on, "edges": pushed })).into_response()
        }
        Err(r) => r,
    }
}

/// Refuses a region no edge is in and a channel the origin does not have.
async fn check_scope(
    ctx: &Ctx,
    region: &Option<String>,
    channel: &Option<String>,
) -> Result<(), Response> {
    if let Some(r) = region {
        let known = ctx.cfg.regions.iter().any(|k| k == r)
            || crate::fleet_targets(ctx)
                .iter()
                .any(|t| t.region.as_deref() == Some(r.as_str()));
        if !known {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "unknown_region",
                "no edge is in that region (regions come from heartbeats and `regions` in control.toml)",
            ));
        }
    }
    if let Some(c) = channel {
        let url = format!("{}/api/v1/live", ctx.cfg.origin_url.trim_end_matches('/'));
        #[derive(Deserialize)]
        struct Channels {
            channels: Vec<Named>,
        }
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        let list = match ctx.client.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.json::<Channels>().await.ok(),
            _ => None,
        };
        match list {
            None => {
                return Err(error(
                    StatusCode::BAD_GATEWAY,
                    "origin_unavailable",
                    "cannot ask the origin whether the channel exists",
                ))
            }
            Some(l) if !l.channels.iter().any(|n| &n.name == c) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "unknown_channel",
                    "the origin has no such live channel",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Why a change was refused: status, code and message.
type Refusal = (StatusCode, &'static str, &'static str);

/// Changes the state under its lock, stores it and pushes it to the edges;
/// answers the edges reached and not.
async fn change(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&mut FleetState) -> Result<(), Refusal>,
) -> Result<serde_json::Value, Response> {
    let state = {
        let Ok(mut s) = ctx.fleet_state.lock() else {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "state",
                "fleet state unavailable",
            ));
        };
        s.prune(cascade_common::unix_now());
        f(&mut s).map_err(|(status, code, message)| error(status, code, message))?;
        s.version += 1;
        s.clone()
    };
    if let Err(e) = store(&ctx.db, &state).await {
        tracing::error!(error = %e, "cannot store the fleet state");
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "db",
            "cannot store the fleet state",
        ));
    }
    Ok(push(ctx, &state).await)
}

/// Sends each edge its state; answers who took it and who did not.
pub(crate) async fn push(ctx: &Arc<Ctx>, state: &FleetState) -> serde_json::Value {
    let now = cascade_common::unix_now();
    let edges: Vec<_> = crate::fleet_targets(ctx)
        .into_iter()
        .filter(|t| t.role == "edge" && !t.down)
        .collect();
    let results: Vec<(String, Result<(), String>)> = futures::stream::iter(edges)
        .map(|t| {
            let mut body = state.reply_for(&t.name, now);
            body.pathways =
                crate::steering::pathways_for(ctx, &t.name, t.region.as_deref().unwrap_or(""));
            let client = ctx.client.clone();
            let token = ctx.cfg.fleet_token.clone();
            async move {
                let sent = client
                    .post(format!("{}/fleet/state", t.url))
                    .bearer_auth(token)
                    .timeout(PUSH_TIMEOUT)
                    .json(&body)
                    .send()
                    .await;
                let r = match sent {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status().as_u16())),
                    Err(e) => Err(e.without_url().to_string()),
                };
                (t.name, r)
            }
        })
        .buffer_unordered(FAN_OUT)
        .collect()
        .await;
    let mut applied = Vec::new();
    let mut failed = Vec::new();
    for (name, r) in results {
        match r {
            Ok(()) => applied.push(json!(name)),
            Err(reason) => {
                tracing::warn!(edge = %name, %reason, "edge did not take the fleet state; it will at its next heartbeat");
                failed.push(json!({ "node": name, "reason": reason }));
            }
        }
    }
    json!({ "applied": applied, "failed": failed })
}

/// Re-evaluates automatic caps after a heartbeat; pushes when one changed.
pub(crate) fn after_heartbeat(ctx: &Arc<Ctx>) {
    if ctx.cfg.auto_degrade.is_empty() {
        return;
    }
    let egress = region_egress(ctx);
    let changed = match ctx.fleet_state.lock() {
        Ok(mut s) => s.auto(&ctx.cfg.auto_degrade, &egress).then(|| {
            s.version += 1;
            s.clone()
        }),
        Err(_) => None,
    };
    if let Some(state) = changed {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = store(&ctx.db, &state).await {
                tracing::error!(error = %e, "cannot store the fleet state");
            }
            push(&ctx, &state).await;
        });
    }
}

/// Egress of each region's edges that are up, in Mbit/s.
fn region_egress(ctx: &Ctx) -> BTreeMap<String, f64> {
    let down_after = Duration::from_secs(ctx.cfg.node_down_after_secs);
    let mut out = BTreeMap::new();
    if let Ok(reg) = ctx.registry.lock() {
        for r in reg.values() {
            if r.beat.role != "edge" || r.last_seen.elapsed() > down_after {
                continue;
            }
            if let Some(l) = &r.beat.load {
                *out.entry(r.beat.region.clone()).or_insert(0.0) += l.egress_bps as f64 / 1e6;
            }
        }
    }
    out
}

/// The state now (a copy).
pub(crate) fn snapshot(ctx: &Ctx) -> FleetState {
    ctx.fleet_state
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(region: Option<&str>, h: u32, source: &str) -> QualityCap {
        QualityCap {
            region: region.map(Into::into),
            channel: None,
            max_height: h,
            until: None,
            source: source.into(),
        }
    }

    #[test]
    fn a_scope_has_one_cap_and_lapsed_caps_go() {
        let mut s = FleetState::default();
        s.set(cap(Some("in"), 480, "operator"));
        s.set(cap(Some("in"), 360, "operator"));
        s.set(cap(None, 720, "operator"));
        assert_eq!(s.caps.len(), 2);
        assert_eq!(s.caps[1].max_height, 360);
        s.caps[0].until = Some(10);
        assert!(s.prune(11));
        assert_eq!(s.caps.len(), 1);
        assert!(s.clear(&Some("in".into()), &None));
        assert!(!s.clear(&Some("in".into()), &None));
    }

    #[test]
    fn a_region_over_its_threshold_is_capped_until_well_under() {
        let rules = [AutoDegrade {
            region: "in".into(),
            egress_mbps: 100.0,
            max_height: 480,
        }];
        let mut s = FleetState::default();
        let at = |mbps: f64| BTreeMap::from([("in".to_string(), mbps)]);
        assert!(!s.auto(&rules, &at(90.0)));
        assert!(s.auto(&rules, &at(120.0)));
        assert_eq!(s.caps, vec![cap(Some("in"), 480, "auto")]);
        assert!(!s.auto(&rules, &at(85.0)), "hysteresis: held above 80%");
        assert!(s.auto(&rules, &at(70.0)));
        assert!(s.caps.is_empty());
        // An operator's cap on the region is never lifted by the automation.
        s.set(cap(Some("in"), 720, "operator"));
        assert!(!s.auto(&rules, &at(10.0)));
        assert_eq!(s.caps.len(), 1);
    }

    #[test]
    fn each_node_hears_its_own_drain() {
        let mut s = FleetState::default();
        s.drained.insert("edge-a".into());
        s.set(QualityCap {
            until: Some(5),
            ..cap(None, 480, "operator")
        });
        assert!(s.reply_for("edge-a", 1).draining);
        assert!(!s.reply_for("edge-b", 1).draining);
        assert_eq!(s.reply_for("edge-b", 1).caps.len(), 1);
        assert!(s.reply_for("edge-b", 6).caps.is_empty());
    }
}
