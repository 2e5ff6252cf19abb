//! The key service and the license server.
//!
//! Content keys are made per title and per group of rungs (`sd`, `hd`,
//! `uhd`, `audio`, or one `all` key), each with its own IV, and stored
//! wrapped (AES-256-GCM) under the key-encryption key (KEK), which is read
//! from `CASCADE_KEK` or `kek_file` and never from the database. Edges get
//! a protected title's keys over the fleet credential to encrypt just in
//! time; viewers get them only through a license, granted to a playback
//! session that the playback API would still let play (it holds a stream
//! slot within its plan's limit, its plan covers the title, the title is
//! in its window, and the viewer's country may watch), at most
//! `license_requests_per_minute` times a minute. CPIX documents carry the
//! keys to and from a commercial DRM service.
//!
//! Nothing here logs a key, the KEK, or a wrapped key.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::repo::keys::{self as repo, StoredKey};
use crate::repo::{assets, billing, streams};
use crate::service::kek::from_hex;
use crate::service::state::State;
use crate::service::titles;
use crate::storage::{clock, objects, Error, Kind, Result};

/// Most KIDs one license request may name.
const MAX_KIDS: usize = 32;

/// One key as an edge needs it to encrypt (hex), per track. No `Debug`:
/// it holds a key.
#[derive(Serialize)]
pub(crate) struct TrackKey {
    pub(crate) track: String,
    pub(crate) kid: String,
    pub(crate) key: String,
    pub(crate) iv: String,
}

/// `POST /api/v1/fleet/license`: an edge asking for keys on behalf of a
/// viewer's playback session.
#[derive(Deserialize, ToSchema)]
pub(crate) struct LicenseRequest {
    /// The playback session (the `id` of the viewer's media token).
    pub(crate) stream: String,
    /// The asset the token covers.
    pub(crate) asset: String,
    /// Key ids, 32 hex digits each.
    pub(crate) kids: Vec<String>,
    /// The viewer's address, as the edge saw it.
    #[schema(value_type = String)]
    pub(crate) ip: IpAddr,
}

/// The group of rungs a track's key belongs to.
pub(crate) fn group_of(t: &cascade_packager::Track, per_group: bool) -> &'static str {
    use cascade_packager::TrackKind;
    if !per_group {
        return "all";
    }
    match t.kind {
        TrackKind::Audio | TrackKind::Subtitle => "audio",
        TrackKind::Video if t.height <= 576 => "sd",
        TrackKind::Video if t.height <= 1080 => "hd",
        TrackKind::Video => "uhd",
    }
}

/// Marks an asset protected or clear (admin, and `cascade ingest --protect`).
pub(crate) async fn set_protected(state: &State, asset: &str, protected: bool) -> Result<()> {
    if protected {
        state.keys.kek()?;
    }
    if !repo::set_protected(&state.db, asset, protected).await? {
        return Err(Error::not_found("asset"));
    }
    Ok(())
}

/// The key of each group of an asset, made (and stored wrapped) the first
/// time; two origins racing keep the first one stored. `have`: the keys
/// the asset has already.
async fn ensure_keys(
    state: &State,
    asset: &str,
    have: Vec<StoredKey>,
    groups: &[&str],
) -> Result<Vec<(String, cascade_packager::ContentKey)>> {
    let wanted: Vec<(&str, i64)> = groups.iter().map(|g| (*g, 0)).collect();
    let mut have = ensure_period_keys(state, asset, have, &wanted).await?;
    have.retain(|k| k.period == 0);
    have.iter()
        .map(|k| Ok((k.group.clone(), content_key(state, k)?)))
        .collect()
}

/// The keys of each (group, period) wanted, made and stored for those
/// that `have` lacks (another origin racing keeps one).
async fn ensure_period_keys(
    state: &State,
    asset: &str,
    mut have: Vec<StoredKey>,
    wanted: &[(&str, i64)],
) -> Result<Vec<StoredKey>> {
    let now = clock::now() as i64;
    for &(g, period) in wanted {
        if have.iter().any(|k| k.group == g && k.period == period) {
            continue;
        }
        let mut raw = [0u8; 48];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| Error::internal("random", "no randomness", "the system RNG failed"))?;
        let kid = cascade_packager::cenc::hex(&raw[..16]);
        let mut material = [0u8; 32];
        material.copy_from_slice(&raw[16..]);
        let stored = StoredKey {
            wrapped: state.keys.wrap(&kid, asset, &material)?,
            kid,
            asset: asset.to_string(),
            group: g.to_string(),
            period,
        };
        have.push(repo::insert_or_get(&state.db, &stored, now).await?);
    }
    Ok(have)
}

/// Where a live channel's keys are kept: apart from titles' asset ids.
pub(crate) fn live_subject(channel: &str) -> String {
    format!("live:{channel}")
}

/// Most key periods an edge may ask for at once.
const MAX_LIVE_PERIODS: usize = 8;

/// `GET /api/v1/fleet/protection/live/{channel}?periods=P,P`: a protected
/// channel's keys of those key periods (made on first use), for edges to
/// encrypt with. Only periods from two days back to two ahead are made:
/// nobody asks a key of a time that has no media.
pub(crate) async fn live_protection_for_edge(
    state: &State,
    channel: &str,
    periods: &str,
) -> Result<Value> {
    if !crate::service::channels::is_protected(state, channel).await? {
        return Ok(json!({ "protected": false }));
    }
    let secs = state.cfg.drm_live_key_period_secs;
    let now = cascade_packager::live_protect::key_period(secs, clock::now().saturating_mul(1000));
    let back = (2 * 86_400 / secs).max(2);
    let mut wanted = Vec::new();
    for p in periods.split(',').filter(|p| !p.is_empty()) {
        let p: u64 = p.trim().parse().map_err(|_| {
            Error::bad_request(
                "bad_periods",
                "periods: key period numbers, comma-separated",
            )
        })?;
        if p + back < now || p > now + 2 {
            return Err(Error::bad_request(
                "bad_periods",
                "a key period from two days back to two ahead",
            ));
        }
        wanted.push(p as i64);
    }
    wanted.sort_unstable();
    wanted.dedup();
    let cfg = &state.cfg;
    let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
    let systems = json!({
        "widevine": opt(&cfg.drm_widevine_license_url),
        "playready": opt(&cfg.drm_playready_license_url),
        "fairplay": opt(&cfg.drm_fairplay_license_url),
    });
    // No periods: the key period and systems alone.
    if wanted.is_empty() {
        return Ok(
            json!({ "protected": true, "period_secs": secs, "keys": [], "systems": systems }),
        );
    }
    if wanted.len() > MAX_LIVE_PERIODS {
        return Err(Error::bad_request(
            "bad_periods",
            format!("at most {MAX_LIVE_PERIODS} key periods"),
        ));
    }
    let subject = live_subject(channel);
    let (from, to) = (wanted[0], wanted[wanted.len() - 1]);
    let have = repo::keys_of_periods(&state.db, &subject, from, to).await?;
    let pairs: Vec<(&str, i64)> = wanted.iter().map(|p| ("all", *p)).collect();
    let stored = ensure_period_keys(state, &subject, have, &pairs).await?;
    let mut keys = Vec::new();
    for k in stored.iter().filter(|k| wanted.contains(&k.period)) {
        let ck = content_key(state, k)?;
        keys.push(json!({
            "period": k.period,
            "kid": cascade_packager::cenc::hex(&ck.kid),
            "key": cascade_packager::cenc::hex(&ck.key),
            "iv": cascade_packager::cenc::hex(&ck.iv),
        }));
    }
    Ok(json!({
        "protected": true,
        "period_secs": secs,
        "keys": keys,
        "systems": systems,
    }))
}

fn content_key(state: &State, k: &StoredKey) -> Result<cascade_packager::ContentKey> {
    let m = state.keys.unwrap(k)?;
    let mut kid = [0u8; 16];
    let raw = from_hex(&k.kid).filter(|b| b.len() == 16).ok_or_else(|| {
        Error::internal(
            "kid",
            "a stored key id is malformed",
            format_args!("kid of {}", k.asset),
        )
    })?;
    kid.copy_from_slice(&raw);
    let mut key = [0u8; 16];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&m[..16]);
    iv.copy_from_slice(&m[16..]);
    Ok(cascade_packager::ContentKey { kid, key, iv })
}

async fn asset_manifest(state: &State, asset: &str) -> Result<cascade_packager::AssetManifest> {
    let bytes = state
        .store
        .get(&objects::object_path(asset, "manifest.json"))
        .await
        .map_err(|_| Error::not_found("asset"))?
        .bytes()
        .await
        .map_err(|e| Error::internal("storage", "cannot read the asset manifest", e))?;
    cascade_packager::AssetManifest::from_json(&bytes)
        .map_err(|e| Error::internal("manifest", "the asset manifest is unreadable", e))
}

/// `GET /api/v1/fleet/protection/{asset}`: whether the asset is protected,
/// and if so each track's key, the clear lead and the systems to signal.
pub(crate) async fn protection_for_edge(state: &State, asset: &str) -> Result<Value> {
    let Some(protected) = repo::is_protected(&state.db, asset).await? else {
        return Err(Error::not_found("asset"));
    };
    if !protected {
        return Ok(json!({ "protected": false }));
    }
    let m = asset_manifest(state, asset).await?;
    let stored = repo::keys_of(&state.db, asset).await?;
    // A key imported for every track (CPIX without usage rules) wins.
    let per_group =
        state.cfg.drm_key_groups && !stored.iter().any(|k| k.group == "all" && k.period == 0);
    let mut groups: Vec<&str> = m.tracks.iter().map(|t| group_of(t, per_group)).collect();
    groups.sort_unstable();
    groups.dedup();
    let keys = ensure_keys(state, asset, stored, &groups).await?;
    let mut tracks = Vec::new();
    for t in &m.tracks {
        let g = group_of(t, per_group);
        if let Some((_, k)) = keys.iter().find(|(kg, _)| kg == g) {
            tracks.push(TrackKey {
                track: t.id.clone(),
                kid: cascade_packager::cenc::hex(&k.kid),
                key: cascade_packager::cenc::hex(&k.key),
                iv: cascade_packager::cenc::hex(&k.iv),
            });
        }
    }
    let cfg = &state.cfg;
    let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
    Ok(json!({
        "protected": true,
        "clear_segments": cfg.drm_clear_lead_segments,
        "keys": tracks,
        "systems": {
            "widevine": opt(&cfg.drm_widevine_license_url),
            "playready": opt(&cfg.drm_playready_license_url),
            "fairplay": opt(&cfg.drm_fairplay_license_url),
        },
    }))
}

/// Answers a license request: the keys it names, if the session may play.
pub(crate) async fn license(state: &State, req: LicenseRequest) -> Result<Value> {
    let result = grant(state, &req).await;
    let label = match &result {
        Ok(_) => "granted",
        Err(e) => e.code(),
    };
    state.keys.licenses.with_label_values(&[label]).inc();
    result
}

async fn grant(state: &State, req: &LicenseRequest) -> Result<Value> {
    if req.kids.is_empty() || req.kids.len() > MAX_KIDS {
        return Err(Error::bad_request(
            "bad_kids",
            format!("a license request names 1 to {MAX_KIDS} key ids"),
        ));
    }
    let mut wanted = Vec::with_capacity(req.kids.len());
    for k in &req.kids {
        match from_hex(k) {
            Some(b) if b.len() == 16 => wanted.push(k.to_ascii_lowercase()),
            _ => {
                return Err(Error::bad_request(
                    "bad_kids",
                    "a key id is 16 bytes (32 hex digits, or unpadded base64url)",
                ))
            }
        }
    }
    if !state.keys.admit(&req.stream) {
        return Err(Error::new(
            Kind::RateLimited {
                retry_after: Some(60),
            },
            "rate_limited",
            "too many license requests for this session; wait a minute",
        ));
    }
    // The session still holds its slot, for this title.
    let Some((user, asset)) = streams::holder(&state.db, &req.stream).await? else {
        return Err(Error::new(
            Kind::Gone,
            "stream_ended",
            "this playback session has ended (stopped, replaced or quiet); start playback again",
        ));
    };
    let live = req.asset.strip_prefix("live:");
    if asset != live.unwrap_or(&req.asset) {
        return Err(Error::forbidden(
            "wrong_title",
            "this playback session is for another title",
        ));
    }
    if let Some(channel) = live {
        return grant_live(state, req, &user, channel, &wanted).await;
    }
    let now = clock::now();
    let Some(title) = titles::playable(&state.db, &asset).await? else {
        return Err(Error::not_found("title"));
    };
    if title.available_from.is_some_and(|f| f > now as i64)
        || title.available_until.is_some_and(|u| u <= now as i64)
    {
        return Err(Error::forbidden(
            "not_available",
            "this title is not available now",
        ));
    }
    let plan = billing::plan_of(&state.db, &user, now).await?;
    if title.premium && !plan.premium {
        return Err(
            Error::forbidden("premium_required", "this title needs the premium plan")
                .with(json!({ "plan": plan.id, "needs": "premium" })),
        );
    }
    let rule = assets::get_asset(&state.db, &asset)
        .await?
        .map(|a| a.geo)
        .unwrap_or_default();
    geo_allows(state, req.ip, &format!("/vod/{asset}/"), &rule, "title")?;
    within_stream_limit(state, &user, &req.stream, plan.max_streams).await?;
    let stored = repo::keys_of(&state.db, &asset).await?;
    let mut keys = Vec::with_capacity(wanted.len());
    for kid in &wanted {
        let Some(k) = stored.iter().find(|k| &k.kid == kid) else {
            return Err(Error::new(
                Kind::NotFound,
                "unknown_kid",
                format!("no key {kid} for this title"),
            ));
        };
        let ck = content_key(state, k)?;
        keys.push(json!({ "kid": kid, "key": cascade_packager::cenc::hex(&ck.key) }));
    }
    Ok(json!({ "keys": keys }))
}

/// 451 `geo_blocked` unless a viewer at `ip` may watch `path` under `rule`
/// (`what`: `title` or `channel`, for the message).
fn geo_allows(
    state: &State,
    ip: IpAddr,
    path: &str,
    rule: &cascade_geo::CountryRule,
    what: &str,
) -> Result<()> {
    let country = state.geo.lookup(ip).country;
    if let cascade_geo::Verdict::Block { country, rule } = cascade_geo::decide(
        country.as_deref(),
        path,
        &state.cfg.geo_rules,
        Some(rule),
        state.cfg.geo_unknown,
    ) {
        return Err(Error::new(
            Kind::Blocked,
            "geo_blocked",
            format!("this {what} is not available in your country"),
        )
        .with(json!({ "country": country, "rule": rule })));
    }
    Ok(())
}

/// 429 `too_many_streams` unless the session is among the user's first
/// `max_streams` (by start time).
async fn within_stream_limit(
    state: &State,
    user: &str,
    stream: &str,
    max_streams: i64,
) -> Result<()> {
    let rank = streams::rank(&state.db, user, stream).await?;
    if rank as i64 >= max_streams {
        return Err(Error::new(
            Kind::RateLimited { retry_after: None },
            "too_many_streams",
            format!("your plan allows {max_streams} stream(s) at once; stop one to play this"),
        ));
    }
    Ok(())
}

/// A live channel's license: the same checks as its playback start
/// (premium, countries, the stream limit), then the keys asked for and the
/// next period's, announced ahead so a player holds it before the rotation.
async fn grant_live(
    state: &State,
    req: &LicenseRequest,
    user: &str,
    channel: &str,
    wanted: &[String],
) -> Result<Value> {
    let now = clock::now();
    let row = crate::service::channels::get_row(state, channel).await?;
    if row.state == "stopped" {
        return Err(Error::not_found("channel"));
    }
    let plan = billing::plan_of(&state.db, user, now).await?;
    if row.premium && !plan.premium {
        return Err(
            Error::forbidden("premium_required", "this channel needs the premium plan")
                .with(json!({ "plan": plan.id, "needs": "premium" })),
        );
    }
    let rule = crate::service::channels::country_rule(state, channel).await?;
    geo_allows(
        state,
        req.ip,
        &format!("/live/{channel}/"),
        &rule,
        "channel",
    )?;
    within_stream_limit(state, user, &req.stream, plan.max_streams).await?;
    // Keys of the last two days and the next period: what a viewer may
    // still be shown.
    let secs = state.cfg.drm_live_key_period_secs;
    let current = cascade_packager::live_protect::key_period(secs, now.saturating_mul(1000)) as i64;
    let back = (2 * 86_400 / secs).max(2) as i64;
    let stored = repo::keys_of_periods(
        &state.db,
        &live_subject(channel),
        current - back,
        current + 2,
    )
    .await?;
    let mut keys = Vec::with_capacity(wanted.len() + 1);
    let mut latest = None;
    for kid in wanted {
        let Some(k) = stored.iter().find(|k| &k.kid == kid) else {
            return Err(Error::new(
                Kind::NotFound,
                "unknown_kid",
                format!("no current key {kid} for this channel"),
            ));
        };
        latest = latest.max(Some(k.period));
        let ck = content_key(state, k)?;
        keys.push(json!({ "kid": kid, "key": cascade_packager::cenc::hex(&ck.key) }));
    }
    if let Some(next) = latest.and_then(|p| stored.iter().find(|k| k.period == p + 1)) {
        if !wanted.contains(&next.kid) {
            let ck = content_key(state, next)?;
            keys.push(json!({ "kid": next.kid, "key": cascade_packager::cenc::hex(&ck.key) }));
        }
    }
    Ok(json!({ "keys": keys }))
}

/// The asset's keys as a CPIX 2.3 document (keys in the clear inside, as
/// a commercial DRM service's ingest expects over an authenticated channel).
pub(crate) async fn export_cpix(state: &State, asset: &str) -> Result<String> {
    if repo::is_protected(&state.db, asset).await?.is_none() {
        return Err(Error::not_found("asset"));
    }
    let stored = repo::keys_of(&state.db, asset).await?;
    let mut keys = String::new();
    let mut rules = String::new();
    for k in &stored {
        let ck = content_key(state, k)?;
        let kid = cascade_packager::drm::kid_uuid(&ck.kid);
        keys.push_str(&format!(
            "    <cpix:ContentKey kid=\"{kid}\" explicitIV=\"{}\" commonEncryptionScheme=\"cbcs\"><cpix:Data><pskc:Secret><pskc:PlainValue>{}</pskc:PlainValue></pskc:Secret></cpix:Data></cpix:ContentKey>\n",
            STANDARD.encode(ck.iv),
            STANDARD.encode(ck.key)
        ));
        rules.push_str(&format!(
            "    <cpix:ContentKeyUsageRule kid=\"{kid}\" intendedTrackType=\"{}\"/>\n",
            k.group.to_ascii_uppercase()
        ));
    }
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<cpix:CPIX xmlns:cpix=\"urn:dashif:org:cpix\" xmlns:pskc=\"urn:ietf:params:xml:ns:keyprov:pskc\" contentId=\"{asset}\" version=\"2.3\">\n  <cpix:ContentKeyList>\n{keys}  </cpix:ContentKeyList>\n  <cpix:ContentKeyUsageRuleList>\n{rules}  </cpix:ContentKeyUsageRuleList>\n</cpix:CPIX>\n"
    ))
}

/// Takes an asset's keys from a CPIX document (a DRM service's keys
/// replace the asset's own, group by group); answers how many.
pub(crate) async fn import_cpix(state: &State, asset: &str, doc: &str) -> Result<usize> {
    state.keys.kek()?;
    if repo::is_protected(&state.db, asset).await?.is_none() {
        return Err(Error::not_found("asset"));
    }
    let parsed = cascade_packager::drm::parse_cpix(doc)
        .map_err(|why| Error::bad_request("bad_cpix", why))?;
    let now = clock::now() as i64;
    for k in &parsed {
        let mut material = [0u8; 32];
        material[..16].copy_from_slice(&k.key);
        material[16..].copy_from_slice(&k.iv);
        let kid = cascade_packager::cenc::hex(&k.kid);
        let stored = StoredKey {
            wrapped: state.keys.wrap(&kid, asset, &material)?,
            kid,
            asset: asset.to_string(),
            group: k.group.clone(),
            period: 0,
        };
        repo::replace(&state.db, &stored, now).await?;
    }
    Ok(parsed.len())
}

/// `GET /api/v1/admin/watermarks/{mark}`: the playback sessions that were
/// given a forensic watermark's mark (a 16-bit number, so reused after
/// 65,536 sessions), newest first, with their accounts; the capture's
/// title and time tell which one leaked it.
pub(crate) async fn watermark_holders(state: &State, mark: &str) -> Result<Value> {
    let parsed = match mark.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => mark.parse::<u16>().ok(),
    };
    let Some(mark) = parsed else {
        return Err(Error::bad_request(
            "bad_mark",
            "a mark is a number from 0 to 65535 (or 0x0000 to 0xffff)",
        ));
    };
    let holders = crate::repo::watermarks::holders(&state.db, mark, 20).await?;
    Ok(json!({ "mark": mark, "mark_hex": format!("{mark:04x}"), "holders": holders }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_strict() {
        assert_eq!(from_hex("0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("é0"), None);
    }
}
