//! Assets for operators and shields: what the operator API shows of assets
//! and jobs (all of it with the admin credential, the public part without),
//! their country rules, and the published files served as mezzanine.

use object_store::{GetOptions, GetRange, GetResult};
use serde_json::{json, Value};

use crate::repo::assets::{self, Asset};
use crate::repo::jobs::{self, Job};
use crate::service::state::State;
use crate::storage::objects;
use crate::storage::{Error, Kind, Result};

/// A job's state and progress; its failure's cause (FFmpeg's words) only
/// for an admin.
pub(crate) async fn job(state: &State, id: &str, admin: bool) -> Result<Value> {
    let j = jobs::get_job(&state.db, id)
        .await?
        .ok_or_else(|| Error::not_found("job"))?;
    let mut v = serde_json::to_value(&j).unwrap_or_default();
    if !admin {
        if let Some(obj) = v.as_object_mut() {
            obj.remove("error");
        }
    }
    Ok(v)
}

/// Every asset for an admin; for anyone else, the ones that are not
/// failed, without their private fields: `{assets: […]}`.
pub(crate) async fn list(state: &State, admin: bool) -> Result<Value> {
    let list = assets::list_assets(&state.db).await?;
    let items: Vec<_> = list
        .iter()
        .filter(|a| admin || a.status != "failed")
        .map(|a| {
            if admin {
                asset_json(state, a, None)
            } else {
                public_asset_json(state, a)
            }
        })
        .collect();
    Ok(json!({ "assets": items }))
}

/// One asset: in full, with its latest job, for an admin; as in the list
/// for anyone else (a failed asset is not found).
pub(crate) async fn get(state: &State, id: &str, admin: bool) -> Result<Value> {
    let a = match assets::get_asset(&state.db, id).await? {
        Some(a) if admin || a.status != "failed" => a,
        _ => return Err(Error::not_found("asset")),
    };
    Ok(if admin {
        let job = jobs::job_of_asset(&state.db, id).await.ok().flatten();
        asset_json(state, &a, job.as_ref())
    } else {
        public_asset_json(state, &a)
    })
}

/// Sets an asset's country rules (codes upper-cased): `{asset, geo}`.
pub(crate) async fn set_geo(
    state: &State,
    id: &str,
    rule: cascade_geo::CountryRule,
) -> Result<Value> {
    let rule = cascade_geo::CountryRule {
        allow: rule.allow.iter().map(|c| c.to_ascii_uppercase()).collect(),
        deny: rule.deny.iter().map(|c| c.to_ascii_uppercase()).collect(),
    };
    if let Err(e) = rule.validate() {
        return Err(Error::bad_request("bad_countries", e));
    }
    if assets::set_geo(&state.db, id, &rule).await? {
        Ok(json!({ "asset": id, "geo": rule }))
    } else {
        Err(Error::not_found("asset"))
    }
}

/// Succeeds for a published asset (its manifest is written last), else
/// not found.
pub(crate) async fn published(state: &State, asset: &str) -> Result<()> {
    match assets::get_asset(&state.db, asset).await? {
        Some(a) if a.status == "ready" => Ok(()),
        _ => Err(Error::not_found("asset")),
    }
}

/// Title metadata edges need per request: `{asset, geo, protected,
/// watermarked}`.
pub(crate) async fn meta(state: &State, asset: &str) -> Result<Value> {
    let a = assets::get_asset(&state.db, asset)
        .await?
        .ok_or_else(|| Error::not_found("asset"))?;
    let protected = crate::repo::keys::is_protected(&state.db, asset)
        .await?
        .unwrap_or(false);
    let watermarked = crate::repo::watermarks::is_watermarked(&state.db, asset).await?;
    Ok(json!({ "asset": asset, "geo": a.geo, "protected": protected, "watermarked": watermarked }))
}

/// The size of a stored file of an asset.
/// A stored file of an asset: its size, and a validator that changes when
/// the file does (the store's entity tag, quoted as `ETag` wants it).
pub(crate) struct FileMeta {
    pub(crate) size: u64,
    pub(crate) etag: Option<String>,
}

pub(crate) async fn file_meta(state: &State, asset: &str, file: &str) -> Result<FileMeta> {
    match state.store.head(&objects::object_path(asset, file)).await {
        Ok(m) => Ok(FileMeta {
            size: m.size,
            etag: m
                .e_tag
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
                .map(|t| format!("\"{t}\"")),
        }),
        Err(object_store::Error::NotFound { .. }) => Err(Error::not_found("file")),
        Err(e) => Err(storage_error(e)),
    }
}

/// Bytes `[start, end)` of a stored file of an asset, as a stream.
pub(crate) async fn read(
    state: &State,
    asset: &str,
    file: &str,
    start: u64,
    end: u64,
) -> Result<GetResult> {
    let opts = GetOptions {
        range: Some(GetRange::Bounded(start..end)),
        ..Default::default()
    };
    state
        .store
        .get_opts(&objects::object_path(asset, file), opts)
        .await
        .map_err(storage_error)
}

fn storage_error(e: object_store::Error) -> Error {
    Error::new(Kind::Internal, "storage", "storage error")
        .caused_by(format_args!("reading mezzanine: {e}"))
}

fn asset_json(state: &State, a: &Asset, job: Option<&Job>) -> Value {
    let edge = state.cfg.public_edge_url.trim_end_matches('/');
    json!({
        "id": a.id, "title": a.title, "status": a.status, "duration": a.duration,
        "error": a.error, "created_at": a.created_at,
        "geo": a.geo,
        "hls": format!("/vod/{}/master.m3u8", a.id),
        "dash": format!("/vod/{}/manifest.mpd", a.id),
        "playback": {
            "hls": format!("{edge}/vod/{}/master.m3u8", a.id),
            "dash": format!("{edge}/vod/{}/manifest.mpd", a.id),
        },
        "job": job,
    })
}

/// What a caller without the admin credential sees of an asset: its id,
/// title, state, length and URLs; never a failure's cause, its country
/// rules or its job. Failed assets are not shown at all.
fn public_asset_json(state: &State, a: &Asset) -> Value {
    let mut v = asset_json(state, a, None);
    if let Some(obj) = v.as_object_mut() {
        for private in ["error", "geo", "job"] {
            obj.remove(private);
        }
    }
    v
}
