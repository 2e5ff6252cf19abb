//! The origin's config file.

use cascade_serve::config::{build_token_keys, check_addr, check_url, TokenKeyConfig, Validate};
use serde::Deserialize;

use crate::transcode::{Rung, DEFAULT_LADDER};

/// The origin's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Address to listen on.
    pub listen: String,
    /// Directory for the database, uploads in progress and local media.
    pub data_dir: String,
    /// `sqlite://…` database URL; empty means `{data_dir}/cascade.db`.
    pub database_url: String,
    /// Directory of the local object store; empty means `{data_dir}/media`.
    pub media_dir: String,
    /// Largest upload accepted, in MiB.
    pub max_upload_mib: u64,
    /// x264 preset for transcoding.
    pub preset: String,
    /// Video ladder, capped at each source's height.
    pub ladder: Vec<Rung>,
    /// Fragment and keyframe interval in seconds.
    pub segment_secs: u32,
    /// The edge URL viewers use, for playback links in API answers.
    pub public_edge_url: String,
    /// Keys for signing playback URLs (the first signs); `CASCADE_TOKEN_KEYS` overrides.
    pub token_keys: Vec<TokenKeyConfig>,
    /// Name of the token's query parameter at the edges.
    pub token_name: String,
    /// Lifetime of a signed playback URL, in seconds.
    pub playback_ttl_secs: u64,
    /// MaxMind database for the playback API's geo verdict; `CASCADE_GEOIP_DB` overrides.
    pub geoip_db: String,
    /// Viewers of unknown country, where a rule applies: `allow` or `deny`.
    pub geo_unknown: cascade_geo::UnknownPolicy,
    /// The same path rules as the edges', so both give one verdict.
    pub geo_rules: Vec<cascade_geo::PathRule>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: the edges.
    pub trusted_proxies: Vec<String>,
    /// Bearer credential for catalog writes (`PUT /api/v1/assets/{id}/geo`); empty: refused.
    pub admin_token: String,
    /// Seconds caches may keep an asset manifest (`/mezz/{id}/manifest.json`)
    /// and title metadata fresh.
    pub metadata_max_age_secs: u64,
    /// Seconds past that they may serve it while refreshing it.
    pub metadata_stale_while_revalidate_secs: u64,
    /// Seconds past that they may serve it while the origin fails.
    pub metadata_stale_if_error_secs: u64,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            listen: "127.0.0.1:8082".into(),
            data_dir: "data".into(),
            database_url: String::new(),
            media_dir: String::new(),
            max_upload_mib: 8192,
            preset: "fast".into(),
            ladder: DEFAULT_LADDER.to_vec(),
            segment_secs: 2,
            public_edge_url: "http://127.0.0.1:8080".into(),
            token_keys: Vec::new(),
            token_name: "__token__".into(),
            playback_ttl_secs: 6 * 3600,
            geoip_db: String::new(),
            geo_unknown: cascade_geo::UnknownPolicy::Allow,
            geo_rules: Vec::new(),
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            admin_token: String::new(),
            metadata_max_age_secs: 60,
            metadata_stale_while_revalidate_secs: 30,
            metadata_stale_if_error_secs: 24 * 3600,
        }
    }
}

const PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

impl Validate for OriginConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_addr("listen", &self.listen, errors);
        check_url("public_edge_url", &self.public_edge_url, errors);
        if self.data_dir.is_empty() {
            errors.push("data_dir: must not be empty".into());
        }
        if !self.database_url.is_empty() && !self.database_url.starts_with("sqlite:") {
            errors.push("database_url: only sqlite: URLs are supported so far".into());
        }
        if !PRESETS.contains(&self.preset.as_str()) {
            errors.push(format!(
                "preset: {:?} is not an x264 preset ({})",
                self.preset,
                PRESETS.join(", ")
            ));
        }
        if self.ladder.is_empty() {
            errors.push("ladder: needs at least one rung".into());
        }
        for (i, r) in self.ladder.iter().enumerate() {
            if !(16..=4320).contains(&r.height) {
                errors.push(format!(
                    "ladder[{i}].height: {} is not 16 to 4320",
                    r.height
                ));
            }
            if !(50..=100_000).contains(&r.kbps) {
                errors.push(format!("ladder[{i}].kbps: {} is not 50 to 100000", r.kbps));
            }
        }
        if !(1..=10).contains(&self.segment_secs) {
            errors.push("segment_secs: must be 1 to 10".into());
        }
        if self.max_upload_mib == 0 {
            errors.push("max_upload_mib: must be at least 1".into());
        }
        if let Err(e) = build_token_keys("token_keys", &self.token_keys, None) {
            errors.extend(e);
        }
        cascade_geo::check_config(&self.trusted_proxies, &self.geo_rules, errors);
        if !(60..=7 * 24 * 3600).contains(&self.playback_ttl_secs) {
            errors.push("playback_ttl_secs: must be 60 to 604800".into());
        }
    }
}

impl OriginConfig {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}/cascade.db", self.data_dir)
        } else {
            self.database_url.clone()
        }
    }

    /// The media directory in effect.
    pub fn media_dir(&self) -> std::path::PathBuf {
        if self.media_dir.is_empty() {
            std::path::Path::new(&self.data_dir).join("media")
        } else {
            self.media_dir.clone().into()
        }
    }
}
