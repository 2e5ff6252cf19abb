//! The origin's config file.

use cascade_common::config::{build_token_keys, check_addr, check_url, TokenKeyConfig, Validate};
use serde::Deserialize;

/// One rung of the video ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rung {
    /// Output height in pixels; the width keeps the source's aspect ratio.
    pub height: u32,
    /// Target bitrate in kbit/s for H.264; the peak is capped at 1.5 times
    /// this. Other codecs get a share of it (see [`VideoCodec`](crate::transcode::VideoCodec)).
    pub kbps: u32,
}

/// The default ladder, capped at the source's height when used.
pub const DEFAULT_LADDER: [Rung; 4] = [
    Rung {
        height: 1080,
        kbps: 5000,
    },
    Rung {
        height: 720,
        kbps: 2800,
    },
    Rung {
        height: 480,
        kbps: 1200,
    },
    Rung {
        height: 240,
        kbps: 400,
    },
];

/// The origin's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Address to listen on.
    pub listen: String,
    /// Directory for the database, uploads in progress and local media.
    pub data_dir: String,
    /// `sqlite://…` or `postgres://…` database URL; empty means
    /// `{data_dir}/cascade.db`. `DATABASE_URL` overrides.
    pub database_url: String,
    /// Connections in the database pool.
    pub database_max_connections: u32,
    /// Secret (32+ characters) that signs access and stream tokens;
    /// `CASCADE_JWT_SECRET` overrides. Empty: one is made and kept in the
    /// database, shared by every origin on it.
    pub jwt_secret: String,
    /// Lifetime of an access token, in seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token, in seconds.
    pub refresh_token_ttl_secs: u64,
    /// Wrong passwords in a row that lock an account.
    pub login_max_failures: u32,
    /// Seconds an account stays locked.
    pub login_lockout_secs: u64,
    /// Login, sign-up and verify attempts per minute from one address.
    pub login_attempts_per_minute: u32,
    /// Seconds a sign-up's emailed link stays valid.
    pub signup_code_ttl_secs: u64,
    /// Directory where sign-up mail is written, one RFC 5322 `.eml` file a
    /// message (owner-only); empty means `{data_dir}/mail`. A mail relay
    /// sends what it finds there, unless `smtp_url` is set.
    pub mail_outbox: String,
    /// The `From` of the origin's mail, `Name <address>` or an address.
    pub mail_from: String,
    /// SMTP relay for the origin's mail: `smtps://user:pass@host:465`, or
    /// `smtp://host:587?tls=required` (STARTTLS); `CASCADE_ORIGIN_SMTP_URL`
    /// overrides. Each message is still written to `mail_outbox` first and
    /// removed once the relay took it. Empty: the outbox only.
    pub smtp_url: String,
    /// The payment webhook's signing secret (Stripe's `whsec_…`);
    /// `CASCADE_BILLING_WEBHOOK_SECRET` overrides. Empty: the webhook answers 503.
    pub billing_webhook_secret: String,
    /// Largest age, in seconds, of a webhook signature's timestamp.
    pub billing_tolerance_secs: u64,
    /// Seconds between a player's heartbeats.
    pub heartbeat_interval_secs: u64,
    /// The edge device profile each `device_type` of the playback API
    /// plays with (`phone = "mobile"`). The profiles themselves are the
    /// edges' (`[profiles.NAME]` there).
    pub device_profiles: std::collections::BTreeMap<String, String>,
    /// A stream's slot frees itself this many seconds after its last heartbeat.
    pub stream_slot_secs: u64,
    /// Milliseconds between watch-history flushes.
    pub history_flush_ms: u64,
    /// Heartbeat entries held for the next flush before heartbeats get 503.
    pub history_buffer_max: usize,
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
    /// Address the RTMP ingest listens on, such as `0.0.0.0:1935`; empty:
    /// no RTMP ingest (`cascade dev` listens on 127.0.0.1:1935).
    pub rtmp_listen: String,
    /// Where encoders publish live channels over RTMP: the base of the
    /// publish URL, to which `/{stream key}` is added.
    pub rtmp_public_url: String,
    /// Address (UDP) the SRT ingest listens on, such as `0.0.0.0:8890`;
    /// empty: no SRT ingest (`cascade dev` listens on 127.0.0.1:8890).
    pub srt_listen: String,
    /// Where encoders publish live channels over SRT (caller mode): the
    /// base of the publish URL, to which `?streamid=publish:{stream key}`
    /// is added.
    pub srt_public_url: String,
    /// Live part target, in milliseconds (LL-HLS `PART-TARGET`).
    pub live_part_ms: u32,
    /// Live segment target, in milliseconds; a segment starts at the first
    /// keyframe after it, so encoders should send one at least this often.
    pub live_segment_ms: u32,
    /// The live ladder: rungs encoded in real time below the encoder's own
    /// picture, which is passed through as the top rung. Rungs at or above
    /// the source's height are skipped; empty: the source alone.
    pub live_ladder: Vec<Rung>,
    /// x264 preset of the live ladder (fast enough to keep up is the rule).
    pub live_preset: String,
    /// Segments of a live event whose parts stay in RAM; older ones are
    /// read from the media store (the DVR window and the recording).
    pub live_ram_segments: u64,
    /// How long an event waits for its encoder to come back before it ends,
    /// in seconds; a reconnect within it continues the event.
    pub live_reconnect_grace_secs: u64,
    /// Keys for signing playback URLs (the first signs); `CASCADE_TOKEN_KEYS` overrides.
    pub token_keys: Vec<TokenKeyConfig>,
    /// Name of the token's query parameter at the edges.
    pub token_name: String,
    /// Lifetime of a signed playback URL, in seconds.
    pub playback_ttl_secs: u64,
    /// MaxMind database for the playback API's geo verdict; `CASCADE_GEOIP_DB` overrides.
    pub geoip_db: String,
    /// Viewers of unknown country, where a rule applies: `allowlist` (refused
    /// where an allow-list applies; the default), `deny` or `allow`.
    pub geo_unknown: cascade_geo::UnknownPolicy,
    /// The same path rules as the edges', so both give one verdict.
    pub geo_rules: Vec<cascade_geo::PathRule>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: the edges.
    pub trusted_proxies: Vec<String>,
    /// Bearer credential for catalog writes (`PUT /api/v1/assets/{id}/geo`); empty: refused.
    pub admin_token: String,
    /// Networks (CIDRs) that may read `/metrics` without a credential;
    /// anyone else needs the admin credential. Loopback by default.
    pub metrics_networks: Vec<String>,
    /// The fleet credential edges present to read the list of ended
    /// playback sessions (`/api/v1/fleet/revocations`); empty: refused.
    pub fleet_token: String,
    /// Control's URL: the playback API asks it which edge a new session
    /// starts on (with `fleet_token`); empty: always `public_edge_url`.
    pub control_url: String,
    /// Seconds caches may keep an asset manifest (`/mezz/{id}/manifest.json`)
    /// and title metadata fresh.
    pub metadata_max_age_secs: u64,
    /// Seconds past that they may serve it while refreshing it.
    pub metadata_stale_while_revalidate_secs: u64,
    /// Seconds past that they may serve it while the origin fails.
    pub metadata_stale_if_error_secs: u64,
    /// The real-time bus: `nats://host:4222` (NATS with JetStream; several
    /// comma-separated for a cluster), or empty for the in-process bus
    /// (one process: `cascade dev`). `CASCADE_ORIGIN_NATS_URL` overrides.
    pub nats_url: String,
    /// Seconds JetStream keeps stored events: how far back a reconnecting
    /// viewer's `Last-Event-ID` can replay.
    pub bus_retention_secs: u64,
    /// Where viewers' real-time connections go: the edges' events listener,
    /// as viewers reach it.
    pub public_events_url: String,
    /// Longest comment, in characters.
    pub comment_max_chars: usize,
    /// Comments one viewer may post in a minute.
    pub comments_per_minute: u32,
    /// Words refused in comments (whole words, any case).
    pub comment_blocklist: Vec<String>,
    /// Milliseconds between reaction swarms and poll results pushed to
    /// viewers.
    pub reaction_interval_ms: u64,
    /// The ad server's VAST tag URL, with macros (`[VIEWER]`, `[TITLE]`,
    /// `[GENRE]`, `[DEVICE]`, `[COUNTRY]`, `[PLAN]`, `[BREAKPOSITION]`,
    /// `[BREAKDURATION]`, `[CACHEBUSTING]`, `[TIMESTAMP]`); empty: the
    /// built-in ad decision service.
    pub ads_vast_url: String,
    /// Milliseconds a session's ad decision may take in all (every break,
    /// every wrapper); past it, breaks play without the late ads.
    pub ads_timeout_ms: u64,
    /// Wrappers followed below an ad server's answer (VAST error 302 past it).
    pub ads_wrapper_depth: u32,
    /// Ads in one break, at most.
    pub ads_max_per_break: usize,
    /// Device types (`tv`, `phone`, …) whose sessions track ads client-side:
    /// their players send the beacons, read from the session's tracking API
    /// (`GET /api/v1/streams/{id}/ads`). Others are tracked server-side: the
    /// origin sends beacons as edges see ad segments fetched.
    pub ads_client_tracking_devices: Vec<String>,
    /// What fills a live break after its ads, when they are shorter than
    /// the break: `content` (the channel's own break comes back early) or
    /// `slate` (the `ads_slate_url` video, round and round).
    pub ads_live_fill: String,
    /// The slate's media URL (conditioned like a creative); used when
    /// `ads_live_fill` is `slate`.
    pub ads_slate_url: String,
    /// The integrated loudness creatives are brought to when conditioned,
    /// in LUFS (EBU R128's -23; ATSC A/85 uses -24).
    pub ads_loudness_lufs: f64,
    /// Codecs creatives are made in besides H.264 (`hevc`, `av1`): titles
    /// whose manifests list those codecs get ads only from creatives that
    /// have them too (every rendition of a session must have its ad).
    pub ads_creative_codecs: Vec<String>,
    /// A file holding the key-encryption key: 64 hex digits (AES-256) that
    /// wrap every content key before it is stored. The environment variable
    /// `CASCADE_KEK` (64 hex digits) overrides it. Neither the key nor the
    /// file's contents ever reach the database or a log. Without one,
    /// protected titles cannot be played.
    pub kek_file: String,
    /// Separate content keys per group of rungs (`sd` up to 576 lines,
    /// `hd` up to 1080, `uhd` above, and `audio`); false (the default):
    /// one key a title. Players that match keys by KID (dash.js, Shaka,
    /// and every commercial DRM client) handle groups; hls.js with EME
    /// ClearKey asks for one key only.
    pub drm_key_groups: bool,
    /// Segments at the start of a protected title left clear, so playback
    /// starts while the license is fetched (0: none).
    pub drm_clear_lead_segments: u64,
    /// Widevine license proxy URL written into manifests (empty: Widevine
    /// is not signalled).
    pub drm_widevine_license_url: String,
    /// PlayReady license URL (empty: PlayReady is not signalled).
    pub drm_playready_license_url: String,
    /// FairPlay key server URL (empty: no `skd://` keys in playlists).
    pub drm_fairplay_license_url: String,
    /// License and key requests one playback session may make a minute.
    pub license_requests_per_minute: u32,
    /// Strength of the forensic watermark of titles ingested with
    /// `watermark` (luma levels, 1 to 8; 3 by default: unseen on moving
    /// pictures, found after a re-encode at a quarter of the bit rate).
    pub watermark_strength: u8,
    /// A protected live channel's key period in seconds: each period has
    /// its own key, the next announced ahead (10 to 86400; 3600 by default).
    pub drm_live_key_period_secs: u64,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            listen: "127.0.0.1:8082".into(),
            data_dir: "data".into(),
            database_url: String::new(),
            database_max_connections: 16,
            jwt_secret: String::new(),
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            login_max_failures: 5,
            login_lockout_secs: 900,
            login_attempts_per_minute: 30,
            signup_code_ttl_secs: 24 * 3600,
            mail_outbox: String::new(),
            mail_from: "Cascade <no-reply@cascade.invalid>".into(),
            smtp_url: String::new(),
            billing_webhook_secret: String::new(),
            billing_tolerance_secs: 300,
            heartbeat_interval_secs: 10,
            device_profiles: [
                ("web", "web"),
                ("phone", "mobile"),
                ("tablet", "mobile"),
                ("tv", "tv"),
                ("console", "tv"),
                ("stb", "legacy-ts"),
                ("legacy", "legacy-ts"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            stream_slot_secs: 60,
            history_flush_ms: 1000,
            history_buffer_max: 200_000,
            media_dir: String::new(),
            max_upload_mib: 8192,
            preset: "fast".into(),
            ladder: DEFAULT_LADDER.to_vec(),
            segment_secs: 2,
            public_edge_url: "http://127.0.0.1:8080".into(),
            rtmp_listen: String::new(),
            rtmp_public_url: "rtmp://127.0.0.1:1935/live".into(),
            srt_listen: String::new(),
            srt_public_url: "srt://127.0.0.1:8890".into(),
            live_part_ms: 500,
            live_segment_ms: 2000,
            live_reconnect_grace_secs: 10,
            live_ladder: vec![
                Rung {
                    height: 480,
                    kbps: 1200,
                },
                Rung {
                    height: 360,
                    kbps: 800,
                },
                Rung {
                    height: 240,
                    kbps: 400,
                },
            ],
            live_preset: "superfast".into(),
            live_ram_segments: 15,
            token_keys: Vec::new(),
            token_name: "__token__".into(),
            playback_ttl_secs: 6 * 3600,
            geoip_db: String::new(),
            geo_unknown: cascade_geo::UnknownPolicy::AllowList,
            geo_rules: Vec::new(),
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            admin_token: String::new(),
            metrics_networks: cascade_common::default_operator_networks(),
            fleet_token: String::new(),
            control_url: String::new(),
            metadata_max_age_secs: 60,
            metadata_stale_while_revalidate_secs: 30,
            metadata_stale_if_error_secs: 24 * 3600,
            nats_url: String::new(),
            bus_retention_secs: 24 * 3600,
            public_events_url: "http://127.0.0.1:8084".into(),
            comment_max_chars: 500,
            comments_per_minute: 10,
            comment_blocklist: Vec::new(),
            reaction_interval_ms: 1000,
            ads_vast_url: String::new(),
            ads_timeout_ms: 1500,
            ads_wrapper_depth: 5,
            ads_max_per_break: 5,
            ads_client_tracking_devices: Vec::new(),
            ads_live_fill: "content".into(),
            ads_slate_url: String::new(),
            ads_loudness_lufs: -23.0,
            ads_creative_codecs: Vec::new(),
            kek_file: String::new(),
            watermark_strength: cascade_watermark::DEFAULT_STRENGTH,
            drm_live_key_period_secs: 3600,
            drm_key_groups: false,
            drm_clear_lead_segments: 0,
            drm_widevine_license_url: String::new(),
            drm_playready_license_url: String::new(),
            drm_fairplay_license_url: String::new(),
            license_requests_per_minute: 30,
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
        if !self.control_url.is_empty() {
            check_url("control_url", &self.control_url, errors);
            if self.fleet_token.is_empty() {
                errors.push("control_url: needs fleet_token (control asks for it)".into());
            }
        }
        check_url("public_events_url", &self.public_events_url, errors);
        if !cascade_bus::is_bus_url(&self.nats_url) {
            errors.push("nats_url: nats://host:port (comma-separated for a cluster), memory://name, or empty".into());
        }
        if !(60..=30 * 86_400).contains(&self.bus_retention_secs) {
            errors.push("bus_retention_secs: 60 to 2592000".into());
        }
        if !(1..=10_000).contains(&self.comment_max_chars) {
            errors.push("comment_max_chars: 1 to 10000".into());
        }
        if self.comments_per_minute == 0 {
            errors.push("comments_per_minute: at least 1".into());
        }
        if !(100..=60_000).contains(&self.reaction_interval_ms) {
            errors.push("reaction_interval_ms: 100 to 60000".into());
        }
        // Macros in brackets are not URL characters, so no URI parser here.
        if !self.ads_vast_url.is_empty()
            && (!(self.ads_vast_url.starts_with("http://")
                || self.ads_vast_url.starts_with("https://"))
                || self.ads_vast_url.chars().any(char::is_whitespace))
        {
            errors.push("ads_vast_url: an http(s) URL, or empty for the built-in service".into());
        }
        if !(50..=10_000).contains(&self.ads_timeout_ms) {
            errors.push("ads_timeout_ms: 50 to 10000".into());
        }
        if !(1..=10).contains(&self.ads_wrapper_depth) {
            errors.push("ads_wrapper_depth: 1 to 10".into());
        }
        if !(1..=20).contains(&self.ads_max_per_break) {
            errors.push("ads_max_per_break: 1 to 20".into());
        }
        if self
            .ads_client_tracking_devices
            .iter()
            .any(|d| d.is_empty() || d.len() > 40)
        {
            errors.push("ads_client_tracking_devices: device type names".into());
        }
        if self.ads_creative_codecs.iter().any(|c| {
            !matches!(
                c.trim().to_ascii_lowercase().as_str(),
                "h264" | "avc" | "hevc" | "h265" | "av1"
            )
        }) {
            errors.push("ads_creative_codecs: h264, hevc or av1".into());
        }
        if !(10..=86_400).contains(&self.drm_live_key_period_secs) {
            errors.push("drm_live_key_period_secs: 10 to 86400".into());
        }
        if !(1..=8).contains(&self.watermark_strength) {
            errors.push("watermark_strength: 1 to 8".into());
        }
        if !(-40.0..=-5.0).contains(&self.ads_loudness_lufs) {
            errors.push("ads_loudness_lufs: -40 to -5".into());
        }
        for (key, url) in [
            ("drm_widevine_license_url", &self.drm_widevine_license_url),
            ("drm_playready_license_url", &self.drm_playready_license_url),
            ("drm_fairplay_license_url", &self.drm_fairplay_license_url),
        ] {
            if !url.is_empty()
                && !((url.starts_with("http://") || url.starts_with("https://"))
                    && !url
                        .chars()
                        .any(|c| c.is_whitespace() || c == '"' || c == '<'))
            {
                errors.push(format!("{key}: an http(s) URL, or empty"));
            }
        }
        if self.drm_clear_lead_segments > 100 {
            errors.push("drm_clear_lead_segments: at most 100".into());
        }
        if !(1..=10_000).contains(&self.license_requests_per_minute) {
            errors.push("license_requests_per_minute: 1 to 10000".into());
        }
        match self.ads_live_fill.as_str() {
            "content" => {}
            "slate"
                if (self.ads_slate_url.starts_with("http://")
                    || self.ads_slate_url.starts_with("https://"))
                    && !self.ads_slate_url.chars().any(char::is_whitespace) => {}
            "slate" => {
                errors.push("ads_slate_url: an http(s) URL, for ads_live_fill = \"slate\"".into())
            }
            _ => errors.push("ads_live_fill: \"content\" or \"slate\"".into()),
        }
        check_scheme_url(
            "rtmp_public_url",
            &self.rtmp_public_url,
            &["rtmp", "rtmps"],
            errors,
        );
        check_scheme_url("srt_public_url", &self.srt_public_url, &["srt"], errors);
        if !(100..=5000).contains(&self.live_part_ms) {
            errors.push("live_part_ms: from 100 to 5000".into());
        }
        if !(1000..=10_000).contains(&self.live_segment_ms)
            || self.live_segment_ms < 2 * self.live_part_ms
        {
            errors.push("live_segment_ms: from 1000 to 10000, and at least two parts".into());
        }
        if !PRESETS.contains(&self.live_preset.as_str()) {
            errors.push(format!("live_preset: one of {}", PRESETS.join(", ")));
        }
        if self.live_ladder.len() > 8
            || self
                .live_ladder
                .iter()
                .any(|r| r.height < 64 || r.kbps < 50)
        {
            errors.push(
                "live_ladder: at most 8 rungs, each at least 64 pixels high and 50 kbit/s".into(),
            );
        }
        if self.live_reconnect_grace_secs > 3600 {
            errors.push("live_reconnect_grace_secs: at most 3600".into());
        }
        cascade_common::check_networks("metrics_networks", &self.metrics_networks, errors);
        if self.data_dir.is_empty() {
            errors.push("data_dir: must not be empty".into());
        }
        if !self.database_url.is_empty()
            && !self.database_url.starts_with("sqlite:")
            && !self.database_url.starts_with("postgres://")
            && !self.database_url.starts_with("postgresql://")
        {
            errors.push("database_url: must be a sqlite: or postgres:// URL".into());
        }
        if !(1..=1000).contains(&self.database_max_connections) {
            errors.push("database_max_connections: must be 1 to 1000".into());
        }
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < 32 {
            errors.push("jwt_secret: must be at least 32 characters (or empty)".into());
        }
        if !(10..=86_400).contains(&self.access_token_ttl_secs) {
            errors.push("access_token_ttl_secs: must be 10 to 86400".into());
        }
        if !(60..=365 * 86_400).contains(&self.refresh_token_ttl_secs) {
            errors.push("refresh_token_ttl_secs: must be 60 to 31536000".into());
        }
        if !(1..=100).contains(&self.login_max_failures) {
            errors.push("login_max_failures: must be 1 to 100".into());
        }
        if self.login_attempts_per_minute == 0 {
            errors.push("login_attempts_per_minute: must be at least 1".into());
        }
        if !(60..=7 * 86_400).contains(&self.signup_code_ttl_secs) {
            errors.push("signup_code_ttl_secs: must be 60 to 604800".into());
        }
        if self.mail_from.parse::<lettre::message::Mailbox>().is_err() {
            errors.push(format!(
                "mail_from: {:?} is not a mailbox like `Name <user@example.com>`",
                self.mail_from
            ));
        }
        // The URL may hold a password: the message never repeats it.
        if !self.smtp_url.is_empty()
            && lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&self.smtp_url)
                .is_err()
        {
            errors.push("smtp_url: must be an smtp:// or smtps:// URL (or empty)".into());
        }
        if !(30..=3600).contains(&self.billing_tolerance_secs) {
            errors.push("billing_tolerance_secs: must be 30 to 3600".into());
        }
        for (kind, profile) in &self.device_profiles {
            if !cascade_packager::is_safe_id(kind) || !cascade_packager::is_safe_id(profile) {
                errors.push(format!(
                    "device_profiles.{kind}: device types and profile names use letters, digits, _ and -"
                ));
            }
        }
        if !(1..=300).contains(&self.heartbeat_interval_secs) {
            errors.push("heartbeat_interval_secs: must be 1 to 300".into());
        }
        // A live stream's slot is seen alive once a heartbeat is flushed:
        // the slot must outlast an interval plus two flushes, with room.
        if self.stream_slot_secs < 2 * self.heartbeat_interval_secs
            || self.stream_slot_secs * 1000
                <= self.heartbeat_interval_secs * 1000 + 2 * self.history_flush_ms
        {
            errors.push(
                "stream_slot_secs: must be at least twice heartbeat_interval_secs and longer than it plus two history_flush_ms"
                    .into(),
            );
        }
        if !(10..=60_000).contains(&self.history_flush_ms) {
            errors.push("history_flush_ms: must be 10 to 60000".into());
        }
        if self.history_buffer_max == 0 {
            errors.push("history_buffer_max: must be at least 1".into());
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
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.is_empty() {
                return url;
            }
        }
        if self.database_url.is_empty() {
            format!("sqlite://{}/cascade.db", self.data_dir)
        } else {
            self.database_url.clone()
        }
    }

    /// The sign-up mail outbox in effect.
    pub fn mail_outbox(&self) -> std::path::PathBuf {
        if self.mail_outbox.is_empty() {
            std::path::Path::new(&self.data_dir).join("mail")
        } else {
            self.mail_outbox.clone().into()
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

/// Checks that `value` is a URL with a host and one of `schemes`, with no
/// query (the stream key is added to it).
fn check_scheme_url(key: &str, value: &str, schemes: &[&str], errors: &mut Vec<String>) {
    match value.parse::<http::Uri>() {
        Ok(u)
            if u.scheme_str().is_some_and(|s| schemes.contains(&s))
                && u.host().is_some()
                && u.query().is_none() => {}
        _ => errors.push(format!(
            "{key}: {value:?} is not a {} URL without a query",
            schemes.join(" or ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(edit: impl FnOnce(&mut OriginConfig)) -> Vec<String> {
        let mut c = OriginConfig::default();
        edit(&mut c);
        let mut errors = Vec::new();
        c.validate(&mut errors);
        errors
    }

    #[test]
    fn ad_settings_are_checked() {
        assert!(errors(|_| {}).iter().all(|e| !e.starts_with("ads_")));
        let slate_without_url = errors(|c| c.ads_live_fill = "slate".into());
        assert!(slate_without_url
            .iter()
            .any(|e| e.starts_with("ads_slate_url")));
        assert!(errors(|c| {
            c.ads_live_fill = "slate".into();
            c.ads_slate_url = "https://cdn.example/slate.mp4".into();
        })
        .iter()
        .all(|e| !e.starts_with("ads_")));
        assert!(errors(|c| c.ads_live_fill = "black".into())
            .iter()
            .any(|e| e.starts_with("ads_live_fill")));
        assert!(errors(|c| c.ads_loudness_lufs = 0.0)
            .iter()
            .any(|e| e.starts_with("ads_loudness_lufs")));
        assert!(
            errors(|c| c.ads_creative_codecs = vec!["hevc".into(), "av1".into()])
                .iter()
                .all(|e| !e.starts_with("ads_"))
        );
        assert!(errors(|c| c.ads_creative_codecs = vec!["vp9".into()])
            .iter()
            .any(|e| e.starts_with("ads_creative_codecs")));
    }
}
