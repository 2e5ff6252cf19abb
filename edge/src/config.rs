//! The edge's config file (`edge.toml`): serde with a default for every
//! key, and one `validate` that reports every error at once.

use cascade_packager::{is_safe_id, Profile};
use cascade_serve::config::{build_token_keys, check_addr, check_url, TokenKeyConfig, Validate};
use serde::Deserialize;

/// The edge's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Address to listen on.
    pub listen: String,
    /// The region's shields; each object goes to one of them by rendezvous
    /// hashing, then to the others if it fails.
    pub shields: Vec<String>,
    /// Seconds between active health checks of the shields.
    pub shield_health_secs: u64,
    /// Seconds a shield is passed over after a request to it failed.
    pub shield_eject_secs: u64,
    /// Origin base URL: the web page and API, and media when every shield fails.
    pub origin: String,
    /// Whether media may be fetched from the origin directly when no shield answers.
    pub origin_fallback: bool,
    /// RAM cache size in MiB.
    pub cache_memory_mib: u64,
    /// Disk cache directory; empty for RAM only.
    pub cache_dir: String,
    /// Disk cache size in MiB.
    pub cache_disk_mib: u64,
    /// Seconds to wait for an upstream.
    pub upstream_timeout_secs: u64,
    /// Seconds playlists and MPDs stay fresh in the cache.
    pub manifest_ttl_secs: u64,
    /// Name of the token's query parameter, cookie and header.
    pub token_name: String,
    /// The CDN's token keys; `CASCADE_TOKEN_KEYS` overrides them.
    pub token_keys: Vec<TokenKeyConfig>,
    /// Seconds of clock skew allowed on a token's `st` and `exp`.
    pub token_skew_secs: u64,
    /// Path prefixes of the generic path (not media, API or fleet) whose
    /// query string is part of the cache key, because the origin's answer
    /// depends on it. Everywhere else the query is left out of the key, so
    /// no one can fill the cache by varying it.
    pub cache_query_paths: Vec<String>,
    /// Paths served without a token (`*` matches any run of characters).
    /// Everything else, media included, needs one.
    pub open_paths: Vec<String>,
    /// Control's URL, to learn partners' signing keys; empty for none.
    pub control_url: String,
    /// The credential for control's fleet API.
    pub fleet_token: String,
    /// Seconds between partner-key refreshes.
    pub partner_refresh_secs: u64,
    /// Seconds between polls of the origin's list of ended playback
    /// sessions (with `fleet_token`); their media tokens are refused.
    pub revocation_poll_secs: u64,
    /// This node's name in control's registry (with `control_url`).
    pub node_name: String,
    /// This node's region.
    pub region: String,
    /// The URL control and operators reach this node at; empty: from `listen`.
    pub public_url: String,
    /// Seconds between heartbeats to control.
    pub heartbeat_secs: u64,
    /// MaxMind database (GeoLite2/GeoIP2 Country or City); `CASCADE_GEOIP_DB`
    /// overrides; empty: every country unknown.
    pub geoip_db: String,
    /// Seconds between checks of the database file for a new version.
    pub geoip_reload_secs: u64,
    /// Viewers of unknown country, where a rule applies: `allowlist` (refused
    /// where an allow-list applies; the default), `deny` or `allow`.
    pub geo_unknown: cascade_geo::UnknownPolicy,
    /// Country rules by path prefix.
    pub geo_rules: Vec<cascade_geo::PathRule>,
    /// Proxies (CIDRs) whose `X-Forwarded-For`/`Forwarded` is believed.
    pub trusted_proxies: Vec<String>,
    /// Pre-warm fetches run at once; viewers' requests are never held back.
    pub prewarm_concurrency: usize,
    /// Fetch the next segment a player names in CMCD `nor`.
    pub cmcd_prefetch: bool,
    /// Prefetches in flight per viewer address.
    pub cmcd_prefetch_per_viewer: usize,
    /// Address for HTTPS: HTTP/1.1 and HTTP/2 over TLS on TCP, and HTTP/3
    /// on UDP, on the same port. Empty: no TLS listener.
    pub tls_listen: String,
    /// Certificate chain file (PEM), leaf first.
    pub tls_cert: String,
    /// Private key file (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: String,
    /// Seconds between checks of the certificate files; a changed pair is
    /// loaded without a restart.
    pub tls_reload_secs: u64,
    /// Serve HTTP/3 beside TLS on TCP, announced with `Alt-Svc`.
    pub http3: bool,
    /// Accept QUIC 0-RTT. Replayable: GET and HEAD are answered at once,
    /// other methods wait for the handshake.
    pub h3_allow_0rtt: bool,
    /// Concurrent request streams per HTTP/3 connection.
    pub h3_max_streams: u32,
    /// Seconds an HTTP/3 connection may sit idle.
    pub h3_idle_secs: u64,
    /// Largest HTTP/3 request header section, in bytes.
    pub h3_max_header_bytes: u64,
    /// Most HTTP/3 connections open at once.
    pub h3_max_connections: usize,
    /// Threads that run the TCP listeners' connections, each on a
    /// single-threaded runtime of its own (a connection stays on one thread,
    /// as with nginx's workers: no cross-thread wake-ups per request); 0
    /// runs them on the process's shared runtime. Default: one per core.
    pub connection_threads: usize,
    /// Device profiles (`?profile=NAME` on a manifest): filters and a
    /// segment format. These add to, or replace by name, the built-in
    /// `web`, `mobile`, `tv` and `legacy-ts`.
    pub profiles: std::collections::BTreeMap<String, Profile>,
    /// `ma` of the `Alt-Svc` header, in seconds: how long a browser may
    /// remember that HTTP/3 is here.
    pub alt_svc_max_age_secs: u64,
    /// `Strict-Transport-Security` max-age on every answer over TLS, in
    /// seconds; 0 sends none (`cascade dev`, whose certificate is local).
    pub hsts_max_age_secs: u64,
    /// Networks (CIDRs) that may read `/metrics` without a credential;
    /// anyone else needs the fleet credential. Loopback by default.
    pub metrics_networks: Vec<String>,
    /// Address of the events listener: viewers' real-time connections
    /// (`/events/live/{channel}`, `/events/vod/{asset}`) over Server-Sent
    /// Events or WebSocket; empty (the default) for none. `cascade dev`
    /// and `deploy/edge.toml` listen on port 8084.
    pub events_listen: String,
    /// The real-time bus: `nats://host:4222` (NATS with JetStream; several
    /// comma-separated for a cluster), or empty for the in-process bus
    /// (`cascade dev`). `CASCADE_EDGE_NATS_URL` overrides.
    pub nats_url: String,
    /// Most real-time connections held at once; more are refused with 503.
    pub events_max_connections: usize,
    /// Most real-time connections from one address.
    pub events_max_per_address: usize,
    /// Seconds between keep-alives on an idle connection.
    pub events_keepalive_secs: u64,
    /// Seconds a write to a viewer may wait; a viewer who does not read is
    /// dropped after this.
    pub events_send_timeout_secs: u64,
    /// Most stored events replayed to a reconnecting viewer.
    pub events_replay_limit: usize,
    /// Reactions one viewer may send per second, sustained.
    pub reactions_per_sec: u32,
    /// Reactions one viewer may send in a burst.
    pub reactions_burst: u32,
    /// Milliseconds between the reaction counts sent to the origin.
    pub reaction_flush_ms: u64,
    /// Milliseconds a session's ad plan may take from the origin (which
    /// asks the ad server); past it the session plays without ads.
    pub ads_plan_timeout_ms: u64,
    /// Milliseconds between the ad segment fetches reported to the origin
    /// (which sends the beacons).
    pub ads_report_ms: u64,
    /// Egress this edge can carry, in Mbit/s; 0: not limited (no shedding
    /// on egress). Shedding starts as egress nears it.
    pub capacity_egress_mbps: f64,
    /// Client connections (TCP and QUIC) this edge can hold; 0: not limited.
    pub capacity_connections: u64,
    /// CPU this edge may use, in percent of all its cores; 0: not limited.
    pub capacity_cpu_percent: u64,
    /// Utilisation (share of the fullest capacity) at which each shedding
    /// step starts, rising: no CMCD prefetch or pre-warm; reaction batches
    /// sent less often; new sessions capped; new sessions refused.
    pub shed_at: Vec<f64>,
    /// A step is released once utilisation is this far below where it starts.
    pub shed_hysteresis: f64,
    /// Milliseconds a step is held before shedding steps down.
    pub shed_hold_ms: u64,
    /// The tallest rung (lines) new sessions are offered while capping.
    pub shed_max_height: u32,
    /// `Retry-After` seconds of a new session refused under load.
    pub shed_retry_after_secs: u64,
    /// Milliseconds between reaction batches sent to viewers while fan-out
    /// is slowed (batches in between are merged).
    pub shed_fanout_ms: u64,
    /// Seconds after which a session not heard from counts as new.
    pub session_idle_secs: u64,
    /// Send `CMSD-Static` and `CMSD-Dynamic` (CTA-5006) on media answers.
    pub cmsd: bool,
    /// The least CMSD `mb` (maximum suggested bit rate) sent, in kbit/s.
    pub cmsd_mb_floor_kbps: u64,
    /// Control's steering server as players reach it (such as
    /// `https://control.example.com`); empty: manifests carry no content
    /// steering. The pathways come from control (with `control_url`).
    pub steering_url: String,
    /// Seconds a steering ticket written into a manifest stays valid.
    pub steering_ticket_secs: u64,
    /// Fetches in flight to each shield (and to the origin) at once; more
    /// wait, live first, then on-demand, then pre-warm and prefetch.
    pub upstream_concurrency: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: "127.0.0.1:8080".into(),
            shields: vec!["http://127.0.0.1:8081".into()],
            origin: "http://127.0.0.1:8082".into(),
            origin_fallback: true,
            shield_health_secs: 2,
            shield_eject_secs: 10,
            cache_memory_mib: 512,
            cache_dir: "data/cache/edge".into(),
            cache_disk_mib: 4096,
            upstream_timeout_secs: 30,
            manifest_ttl_secs: 300,
            token_name: "__token__".into(),
            token_keys: Vec::new(),
            token_skew_secs: 30,
            cache_query_paths: Vec::new(),
            open_paths: vec![
                "/".into(),
                "/static/*".into(),
                "/api/*".into(),
                "/favicon.ico".into(),
            ],
            control_url: String::new(),
            fleet_token: String::new(),
            partner_refresh_secs: 5,
            revocation_poll_secs: 5,
            node_name: "edge-1".into(),
            region: "local".into(),
            public_url: String::new(),
            heartbeat_secs: 5,
            geoip_db: String::new(),
            geoip_reload_secs: 2,
            geo_unknown: cascade_geo::UnknownPolicy::AllowList,
            geo_rules: Vec::new(),
            trusted_proxies: Vec::new(),
            prewarm_concurrency: 2,
            cmcd_prefetch: true,
            cmcd_prefetch_per_viewer: 2,
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_reload_secs: 30,
            http3: true,
            h3_allow_0rtt: false,
            h3_max_streams: 100,
            h3_idle_secs: 30,
            h3_max_header_bytes: 16 * 1024,
            h3_max_connections: 10_000,
            connection_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            alt_svc_max_age_secs: 86_400,
            hsts_max_age_secs: 31_536_000,
            metrics_networks: cascade_common::default_operator_networks(),
            profiles: std::collections::BTreeMap::new(),
            events_listen: String::new(),
            nats_url: String::new(),
            events_max_connections: 200_000,
            events_max_per_address: 64,
            events_keepalive_secs: 15,
            events_send_timeout_secs: 10,
            events_replay_limit: 1000,
            reactions_per_sec: 10,
            reactions_burst: 30,
            reaction_flush_ms: 1000,
            ads_plan_timeout_ms: 2500,
            ads_report_ms: 1000,
            capacity_egress_mbps: 0.0,
            capacity_connections: 0,
            capacity_cpu_percent: 0,
            shed_at: vec![0.7, 0.8, 0.9, 1.0],
            shed_hysteresis: 0.1,
            shed_hold_ms: 5000,
            shed_max_height: 480,
            shed_retry_after_secs: 5,
            shed_fanout_ms: 5000,
            session_idle_secs: 60,
            cmsd: true,
            cmsd_mb_floor_kbps: 300,
            steering_url: String::new(),
            steering_ticket_secs: 6 * 3600,
            upstream_concurrency: 256,
        }
    }
}

impl EdgeConfig {
    /// The governor's settings from this file.
    pub(crate) fn governor(&self) -> crate::governor::GovernorConfig {
        let mut enter = [0.7, 0.8, 0.9, 1.0];
        for (e, at) in enter.iter_mut().zip(&self.shed_at) {
            *e = *at;
        }
        crate::governor::GovernorConfig {
            capacity: crate::overload::Capacity {
                egress_bps: (self.capacity_egress_mbps * 1e6) as u64,
                connections: self.capacity_connections,
                cpu: self.capacity_cpu_percent as f64 / 100.0,
            },
            policy: crate::overload::Policy {
                enter,
                hysteresis: self.shed_hysteresis,
                hold: std::time::Duration::from_millis(self.shed_hold_ms),
            },
            shed_max_height: self.shed_max_height,
            retry_after_secs: self.shed_retry_after_secs,
            session_idle: std::time::Duration::from_secs(self.session_idle_secs),
            region: self.region.clone(),
            node: self.node_name.clone(),
            mb_floor_kbps: self.cmsd_mb_floor_kbps,
        }
    }
}

impl Validate for EdgeConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        check_addr("listen", &self.listen, errors);
        if !self.events_listen.is_empty() {
            check_addr("events_listen", &self.events_listen, errors);
        }
        if !cascade_bus::is_bus_url(&self.nats_url) {
            errors.push("nats_url: nats://host:port (comma-separated for a cluster), memory://name, or empty".into());
        }
        if self.events_max_connections == 0 || self.events_max_per_address == 0 {
            errors.push("events_max_connections, events_max_per_address: at least 1".into());
        }
        if !(1..=300).contains(&self.events_keepalive_secs) {
            errors.push("events_keepalive_secs: 1 to 300".into());
        }
        if !(1..=300).contains(&self.events_send_timeout_secs) {
            errors.push("events_send_timeout_secs: 1 to 300".into());
        }
        if self.events_replay_limit > 100_000 {
            errors.push("events_replay_limit: at most 100000".into());
        }
        if self.reactions_per_sec == 0 || self.reactions_burst == 0 {
            errors.push("reactions_per_sec, reactions_burst: at least 1".into());
        }
        if !(100..=60_000).contains(&self.reaction_flush_ms) {
            errors.push("reaction_flush_ms: 100 to 60000".into());
        }
        if !(100..=30_000).contains(&self.ads_plan_timeout_ms) {
            errors.push("ads_plan_timeout_ms: 100 to 30000".into());
        }
        if !(100..=60_000).contains(&self.ads_report_ms) {
            errors.push("ads_report_ms: 100 to 60000".into());
        }
        if !(self.capacity_egress_mbps >= 0.0 && self.capacity_egress_mbps <= 1e6) {
            errors.push("capacity_egress_mbps: 0 (not limited) to 1000000".into());
        }
        if self.capacity_cpu_percent > 100 {
            errors.push("capacity_cpu_percent: 0 (not limited) to 100".into());
        }
        let rising = self.shed_at.windows(2).all(|w| w[0] < w[1]);
        if self.shed_at.len() != 4
            || !rising
            || self.shed_at.iter().any(|a| !(0.05..=10.0).contains(a))
        {
            errors.push(
                "shed_at: four rising shares of capacity, 0.05 to 10, such as [0.7, 0.8, 0.9, 1.0]"
                    .into(),
            );
        }
        if !(0.0..=0.5).contains(&self.shed_hysteresis) {
            errors.push("shed_hysteresis: 0 to 0.5".into());
        }
        if self.shed_hold_ms > 600_000 {
            errors.push("shed_hold_ms: at most 600000".into());
        }
        if !(1..=16_384).contains(&self.shed_max_height) {
            errors.push("shed_max_height: 1 to 16384 lines".into());
        }
        if !(1..=3600).contains(&self.shed_retry_after_secs) {
            errors.push("shed_retry_after_secs: 1 to 3600".into());
        }
        if !(100..=60_000).contains(&self.shed_fanout_ms) {
            errors.push("shed_fanout_ms: 100 to 60000".into());
        }
        if !(5..=3600).contains(&self.session_idle_secs) {
            errors.push("session_idle_secs: 5 to 3600".into());
        }
        if !self.steering_url.is_empty() {
            check_url("steering_url", &self.steering_url, errors);
            if self.control_url.is_empty() {
                errors.push(
                    "steering_url: needs control_url (the pathways come from control)".into(),
                );
            }
        }
        if !(1..=100_000).contains(&self.upstream_concurrency) {
            errors.push("upstream_concurrency: 1 to 100000".into());
        }
        if !(60..=86_400).contains(&self.steering_ticket_secs) {
            errors.push("steering_ticket_secs: 60 to 86400".into());
        }
        check_url("origin", &self.origin, errors);
        for (i, s) in self.shields.iter().enumerate() {
            check_url(&format!("shields[{i}]"), s, errors);
        }
        if self.shields.is_empty() && !self.origin_fallback {
            errors.push("shields: empty, and origin_fallback is off: media has no upstream".into());
        }
        if self.cache_memory_mib == 0 {
            errors.push("cache_memory_mib: must be at least 1".into());
        }
        if self.upstream_timeout_secs == 0 {
            errors.push("upstream_timeout_secs: must be at least 1".into());
        }
        if self.shield_health_secs == 0 {
            errors.push("shield_health_secs: must be at least 1".into());
        }
        if self.prewarm_concurrency == 0 || self.prewarm_concurrency > 64 {
            errors.push("prewarm_concurrency: 1 to 64".into());
        }
        if self.cmcd_prefetch_per_viewer > 16 {
            errors.push("cmcd_prefetch_per_viewer: at most 16".into());
        }
        if self.token_name.is_empty()
            || !self
                .token_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            errors.push("token_name: use letters, digits, _ and -".into());
        }
        if let Err(e) = build_token_keys("token_keys", &self.token_keys, None) {
            errors.extend(e);
        }
        if !self.control_url.is_empty() {
            check_url("control_url", &self.control_url, errors);
            if self.fleet_token.is_empty() {
                errors.push("fleet_token: needed with control_url".into());
            }
        }
        cascade_geo::check_config(&self.trusted_proxies, &self.geo_rules, errors);
        cascade_common::check_networks("metrics_networks", &self.metrics_networks, errors);
        if self.geoip_reload_secs == 0 {
            errors.push("geoip_reload_secs: must be at least 1".into());
        }
        if !(1..=60).contains(&self.revocation_poll_secs) {
            errors.push("revocation_poll_secs: 1 to 60".into());
        }
        if self.partner_refresh_secs == 0 {
            errors.push("partner_refresh_secs: must be at least 1".into());
        }
        if !self.tls_listen.is_empty() {
            check_addr("tls_listen", &self.tls_listen, errors);
            if self.tls_cert.is_empty() {
                errors.push("tls_cert: needed with tls_listen".into());
            }
            if self.tls_key.is_empty() {
                errors.push("tls_key: needed with tls_listen".into());
            }
        }
        if self.tls_reload_secs == 0 {
            errors.push("tls_reload_secs: must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.h3_max_streams) {
            errors.push("h3_max_streams: 1 to 10000".into());
        }
        if !(1..=600).contains(&self.h3_idle_secs) {
            errors.push("h3_idle_secs: 1 to 600".into());
        }
        if !(1024..=1 << 20).contains(&self.h3_max_header_bytes) {
            errors.push("h3_max_header_bytes: 1024 to 1048576".into());
        }
        if self.h3_max_connections == 0 {
            errors.push("h3_max_connections: must be at least 1".into());
        }
        if self.connection_threads > 256 {
            errors.push("connection_threads: 0 (the shared runtime) to 256".into());
        }
        for (name, p) in &self.profiles {
            if !is_safe_id(name) {
                errors.push(format!("profiles.{name}: use letters, digits, _ and -"));
            }
            for c in p.codecs.iter().flatten() {
                if !cascade_packager::CODEC_FAMILIES.contains(&c.as_str()) {
                    errors.push(format!(
                        "profiles.{name}.codecs: unknown codec {c:?} (avc, hevc, av1)"
                    ));
                }
            }
            for l in p.audio.iter().chain(&p.subtitles).flatten() {
                if !cascade_packager::is_safe_lang(l) {
                    errors.push(format!("profiles.{name}: {l:?} is not a language tag"));
                }
            }
        }
        for (i, p) in self.cache_query_paths.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(format!("cache_query_paths[{i}]: {p:?} must start with /"));
            }
        }
        for (i, p) in self.open_paths.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(format!("open_paths[{i}]: {p:?} must start with /"));
            }
            if p.starts_with("/vod/") || p == "/vod*" || p == "/*" || p == "*" {
                errors.push(format!(
                    "open_paths[{i}]: {p:?} would open media to everyone"
                ));
            }
        }
    }
}
