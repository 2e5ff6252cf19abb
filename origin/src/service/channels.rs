//! Live channels: catalog entries with a stream key for their encoders.
//!
//! A stream key is `{channel name}.{secret}`: ingest finds the channel by
//! its name and compares the key's SHA-256 digest with the stored one in
//! constant time, so the secret is never looked up by value and never
//! stored. Rotating the key (or stopping the channel) refuses the old one.
//! Keys appear once, in the answer that made them, and never in logs.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::repo::channels::{self, ChannelRow};
use crate::service::auth::{new_secret_token, token_digest};
use crate::service::live_media::DEFAULT_DVR_MINUTES;
use crate::service::state::State;
use crate::storage::{clock, ids, Error, Kind, Result};

/// Longest DVR window, in minutes (a day).
pub(crate) const MAX_DVR_MINUTES: u32 = 24 * 60;
/// Longest channel name.
const MAX_NAME_LEN: usize = 40;
/// Longest stream key looked at (ours are about 85 characters).
const MAX_KEY_LEN: usize = 256;

/// `POST /api/v1/admin/channels`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewChannel {
    /// The operator's handle: 1 to 40 of `a-z`, `0-9` and `-`, not
    /// starting with `-`.
    pub(crate) name: String,
    /// What viewers see; the name if absent.
    #[serde(default)]
    pub(crate) title: Option<String>,
    #[serde(default)]
    pub(crate) synopsis: String,
    /// Premium plans only.
    #[serde(default)]
    pub(crate) premium: bool,
    /// Countries that may watch (ISO 3166-1 alpha-2); empty: all.
    #[serde(default)]
    pub(crate) allow_countries: Vec<String>,
    /// Countries that may not.
    #[serde(default)]
    pub(crate) deny_countries: Vec<String>,
    /// Minutes viewers may seek back; 120 if absent, at most 1440.
    #[serde(default)]
    pub(crate) dvr_minutes: Option<u32>,
    /// The schedule: when the event starts and ends (Unix seconds).
    #[serde(default)]
    pub(crate) starts_at: Option<i64>,
    #[serde(default)]
    pub(crate) ends_at: Option<i64>,
    /// An SRT passphrase (10 to 79 characters): encoders publishing over
    /// SRT must encrypt with it (`passphrase=` in the SRT URL). Absent: none.
    #[serde(default)]
    pub(crate) srt_passphrase: Option<String>,
    /// Serve the channel encrypted only (`cbcs`, keys rotating every
    /// `drm_live_key_period_secs`), played with a license.
    #[serde(default)]
    pub(crate) protect: bool,
}

/// Where encoders publish (the key is in these URLs).
#[derive(Serialize, ToSchema)]
pub(crate) struct PublishUrls {
    rtmp: String,
    srt: String,
}

/// Where viewers play (through the edge; media needs a token).
#[derive(Serialize, ToSchema)]
pub(crate) struct PlaybackUrls {
    hls: String,
    dash: String,
}

/// A channel as operators see it (never its key).
#[derive(Serialize, ToSchema)]
pub(crate) struct Channel {
    id: String,
    name: String,
    title: String,
    synopsis: String,
    premium: bool,
    allow_countries: Vec<String>,
    deny_countries: Vec<String>,
    dvr_minutes: i64,
    starts_at: Option<i64>,
    ends_at: Option<i64>,
    /// `idle` (no encoder), `live` or `stopped` (keys refused).
    state: String,
    /// Counts key rotations: 1 for the first key.
    key_version: i64,
    /// SRT publishers must encrypt (the passphrase is shown only with a key).
    srt_encrypted: bool,
    /// Served encrypted only, with rotating keys.
    protected: bool,
    /// The encoder publishing now, if any, and its health.
    ingest: Option<crate::service::live_health::IngestStatus>,
    playback: PlaybackUrls,
    created_at: i64,
    updated_at: i64,
}

/// A channel with a new stream key: shown once.
#[derive(Serialize, ToSchema)]
pub(crate) struct ChannelWithKey {
    channel: Channel,
    stream_key: String,
    publish: PublishUrls,
}

/// The channels.
#[derive(Serialize, ToSchema)]
pub(crate) struct Channels {
    channels: Vec<Channel>,
}

/// Makes a channel and its first stream key.
pub(crate) async fn create(state: &State, new: NewChannel) -> Result<ChannelWithKey> {
    let name = parse_name(&new.name)?;
    let title = match new.title.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => name.clone(),
    };
    if title.chars().count() > 200 || new.synopsis.chars().count() > 5000 {
        return Err(Error::bad_request(
            "bad_title",
            "title up to 200 characters, synopsis up to 5000",
        ));
    }
    let dvr = new.dvr_minutes.unwrap_or(DEFAULT_DVR_MINUTES);
    if dvr > MAX_DVR_MINUTES {
        return Err(Error::bad_request(
            "bad_dvr",
            format!("dvr_minutes: 0 to {MAX_DVR_MINUTES}"),
        ));
    }
    if let (Some(a), Some(b)) = (new.starts_at, new.ends_at) {
        if b <= a {
            return Err(Error::bad_request(
                "bad_schedule",
                "ends_at must be after starts_at",
            ));
        }
    }
    let allow = parse_countries(&new.allow_countries)?;
    let deny = parse_countries(&new.deny_countries)?;
    if new.protect {
        // Refused before the channel exists: without a KEK no key can be kept.
        state.keys.kek()?;
    }
    let passphrase = new.srt_passphrase.unwrap_or_default();
    if !passphrase.is_empty()
        && (!(10..=79).contains(&passphrase.len())
            || !passphrase.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Error::bad_request(
            "bad_passphrase",
            "srt_passphrase: 10 to 79 printable ASCII characters, no spaces",
        ));
    }
    let (key, digest) = new_key(&name)?;
    let now = clock::now() as i64;
    let row = ChannelRow {
        id: ids::short_id(),
        name,
        title,
        synopsis: new.synopsis,
        premium: new.premium,
        starts_at: new.starts_at,
        ends_at: new.ends_at,
        allow_countries: allow.join(","),
        deny_countries: deny.join(","),
        dvr_minutes: i64::from(dvr),
        key_digest: digest,
        key_version: 1,
        state: "idle".into(),
        created_at: now,
        updated_at: now,
        srt_passphrase: passphrase,
        protected: new.protect,
    };
    if !channels::insert(&state.db, &row).await? {
        return Err(Error::conflict(
            "name_taken",
            "a channel with that name exists",
        ));
    }
    Ok(with_key(state, &row, key))
}

/// Every channel.
pub(crate) async fn list(state: &State) -> Result<Channels> {
    let rows = channels::list(&state.db).await?;
    Ok(Channels {
        channels: rows.iter().map(|r| view(state, r)).collect(),
    })
}

/// A channel as viewers see it (the "Live now" rail).
#[derive(Serialize, ToSchema)]
pub(crate) struct LiveChannel {
    /// The channel's name: `POST /api/v1/live/{name}/playback` plays it.
    name: String,
    title: String,
    synopsis: String,
    premium: bool,
    /// An encoder publishes now.
    live: bool,
    starts_at: Option<i64>,
    ends_at: Option<i64>,
}

/// `GET /api/v1/live`.
#[derive(Serialize, ToSchema)]
pub(crate) struct LiveChannels {
    /// Live channels first, then the scheduled ones by start time.
    channels: Vec<LiveChannel>,
}

/// The channels viewers may see: not stopped; live ones first.
pub(crate) async fn public_list(state: &State) -> Result<LiveChannels> {
    let rows = channels::list(&state.db).await?;
    let mut list: Vec<LiveChannel> = rows
        .into_iter()
        .filter(|r| r.state != "stopped")
        .map(|r| LiveChannel {
            live: r.state == "live",
            name: r.name,
            title: r.title,
            synopsis: r.synopsis,
            premium: r.premium,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
        })
        .collect();
    list.sort_by_key(|c| (!c.live, c.starts_at.unwrap_or(i64::MAX), c.name.clone()));
    Ok(LiveChannels { channels: list })
}

/// A channel's country rules (a stopped or unknown channel: not found).
pub(crate) async fn country_rule(state: &State, name: &str) -> Result<cascade_geo::CountryRule> {
    let row = find(state, name).await?;
    if row.state == "stopped" {
        return Err(Error::not_found("channel"));
    }
    Ok(cascade_geo::CountryRule {
        allow: split(&row.allow_countries),
        deny: split(&row.deny_countries),
    })
}

/// A channel as stored, by name.
pub(crate) async fn get_row(state: &State, name: &str) -> Result<ChannelRow> {
    find(state, name).await
}

/// Whether a channel is served encrypted only.
pub(crate) async fn is_protected(state: &State, name: &str) -> Result<bool> {
    Ok(find(state, name).await?.protected)
}

/// One channel, by name.
pub(crate) async fn get(state: &State, name: &str) -> Result<Channel> {
    Ok(view(state, &find(state, name).await?))
}

/// A new stream key for a channel; the old one stops working at once.
pub(crate) async fn rotate_key(state: &State, name: &str) -> Result<ChannelWithKey> {
    let row = find(state, name).await?;
    let (key, digest) = new_key(&row.name)?;
    let now = clock::now() as i64;
    channels::set_key(&state.db, &row.name, &digest, now)
        .await?
        .ok_or_else(|| Error::not_found("channel"))?;
    let row = find(state, name).await?;
    Ok(with_key(state, &row, key))
}

/// Stops a channel: its key is refused until it is rotated.
pub(crate) async fn stop(state: &State, name: &str) -> Result<Channel> {
    let row = find(state, name).await?;
    channels::set_state(&state.db, &row.name, "stopped", clock::now() as i64).await?;
    get(state, name).await
}

/// The channel a presented stream key publishes to, if the key is its
/// current one and the channel is not stopped. Every refusal is the same
/// error, so a caller learns nothing about which part was wrong.
pub(crate) async fn authorize_publish(state: &State, key: &str) -> Result<ChannelRow> {
    let refused = || {
        Error::new(
            Kind::Unauthorized,
            "bad_stream_key",
            "the stream key is not valid",
        )
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(refused());
    }
    let Some((name, _)) = key.split_once('.') else {
        return Err(refused());
    };
    if parse_name(name).is_err() {
        return Err(refused());
    }
    let Some(row) = channels::by_name(&state.db, name).await? else {
        return Err(refused());
    };
    let presented = token_digest(key);
    let matches: bool = presented.as_bytes().ct_eq(row.key_digest.as_bytes()).into();
    if !matches || row.state == "stopped" {
        return Err(refused());
    }
    Ok(row)
}

async fn find(state: &State, name: &str) -> Result<ChannelRow> {
    let name = parse_name(name).map_err(|_| Error::not_found("channel"))?;
    channels::by_name(&state.db, &name)
        .await?
        .ok_or_else(|| Error::not_found("channel"))
}

/// A key for channel `name`, and its digest.
fn new_key(name: &str) -> Result<(String, String)> {
    let (secret, _) = new_secret_token()?;
    let key = format!("{name}.{secret}");
    let digest = token_digest(&key);
    Ok((key, digest))
}

fn with_key(state: &State, row: &ChannelRow, key: String) -> ChannelWithKey {
    let rtmp = format!("{}/{key}", state.cfg.rtmp_public_url.trim_end_matches('/'));
    let mut srt = format!(
        "{}?streamid=publish:{key}",
        state.cfg.srt_public_url.trim_end_matches('/')
    );
    if !row.srt_passphrase.is_empty() {
        // As FFmpeg's `srt://` takes it, with the key length said (AES-128).
        srt = format!("{srt}&passphrase={}&pbkeylen=16", row.srt_passphrase);
    }
    ChannelWithKey {
        channel: view(state, row),
        stream_key: key,
        publish: PublishUrls { rtmp, srt },
    }
}

/// A stored country list (`IN,GB`) as a list.
fn split(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

fn view(state: &State, r: &ChannelRow) -> Channel {
    let edge = state.cfg.public_edge_url.trim_end_matches('/');
    Channel {
        id: r.id.clone(),
        name: r.name.clone(),
        title: r.title.clone(),
        synopsis: r.synopsis.clone(),
        premium: r.premium,
        allow_countries: split(&r.allow_countries),
        deny_countries: split(&r.deny_countries),
        dvr_minutes: r.dvr_minutes,
        starts_at: r.starts_at,
        ends_at: r.ends_at,
        state: r.state.clone(),
        key_version: r.key_version,
        srt_encrypted: !r.srt_passphrase.is_empty(),
        protected: r.protected,
        ingest: state.live.status(&r.name).map(|mut s| {
            s.parts_published = state.live_media.parts.with_label_values(&[&r.name]).get();
            s.dropped_frames = state.live_media.dropped.with_label_values(&[&r.name]).get();
            s
        }),
        playback: PlaybackUrls {
            hls: format!("{edge}/live/{}/master.m3u8", r.name),
            dash: format!("{edge}/live/{}/manifest.mpd", r.name),
        },
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// A channel name: 1 to 40 of `a-z`, `0-9`, `-`, not starting with `-`.
pub(crate) fn parse_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(name.to_string())
    } else {
        Err(Error::bad_request(
            "bad_name",
            "a channel name is 1 to 40 of a-z, 0-9 and -, not starting with -",
        ))
    }
}

/// Country codes: two letters each, upper-cased, at most 250.
fn parse_countries(list: &[String]) -> Result<Vec<String>> {
    if list.len() > 250 {
        return Err(Error::bad_request("bad_country", "at most 250 countries"));
    }
    list.iter()
        .map(|c| {
            let c = c.trim().to_ascii_uppercase();
            if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) {
                Ok(c)
            } else {
                Err(Error::bad_request(
                    "bad_country",
                    "countries are ISO 3166-1 alpha-2 codes such as IN",
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_countries() {
        for good in ["final", "ipl-2026", "a", "0"] {
            assert!(parse_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "Final", "a_b", "a.b", "a b", &"x".repeat(41)] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_countries(&["in".into(), " np ".into()]).unwrap(),
            vec!["IN", "NP"]
        );
        assert!(parse_countries(&["India".into()]).is_err());
        assert!(parse_countries(&["I1".into()]).is_err());
    }

    #[test]
    fn keys_name_their_channel_and_differ() {
        let (a, da) = new_key("final").unwrap();
        let (b, _) = new_key("final").unwrap();
        assert!(a.starts_with("final.") && a.len() > 40, "{a}");
        assert_ne!(a, b);
        assert_eq!(da, token_digest(&a));
        assert!(!da.contains(&a[6..]));
    }
}
