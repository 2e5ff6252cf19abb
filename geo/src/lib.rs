//! Geo-fencing: country lookups from MaxMind databases (memory-mapped,
//! swapped while serving) and the pure decision rules.
//!
//! The decision functions (`decide`, `client_ip`) take values and return
//! values; only [`Geo`] touches files.

#![warn(unreachable_pub)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use ipnet::IpNet;
use maxminddb::{path, Mmap, Reader};
use serde::{Deserialize, Serialize};

/// What a lookup found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    /// City name in English, for City databases.
    pub city: Option<String>,
    /// Autonomous system number, for databases that carry it.
    pub asn: Option<u32>,
}

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// The file could not be opened or mapped.
    #[error("{path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not a valid MaxMind database (corrupt or truncated).
    #[error("{path}: not a valid MaxMind database: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// One opened database.
pub struct GeoDb {
    reader: Reader<Mmap>,
    /// Whether records carry a city (City databases) or an AS number (ASN,
    /// ISP databases): each decode costs, so only what exists is decoded.
    has_city: bool,
    has_asn: bool,
    /// Country by data record, for databases with nothing else to decode: a
    /// Country database has a few hundred distinct records, and decoding one
    /// costs more than the tree walk.
    countries: std::sync::RwLock<std::collections::HashMap<usize, Option<String>>>,
    /// Its `database_type`, such as `GeoLite2-Country`.
    pub database_type: String,
    /// When it was built (Unix seconds).
    pub build_epoch: u64,
}

impl GeoDb {
    /// Maps and fully verifies a database file.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let shown = path.display().to_string();
        // SAFETY: the map is read-only and the reader bounds-checks every
        // access. Operators replace the file by renaming a new one over it
        // (see the runbook), which leaves this mapping on the old inode; a
        // file rewritten in place could change under the map.
        let reader = unsafe { Reader::open_mmap(path) }.map_err(|e| GeoError::Open {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        reader.verify().map_err(|e| GeoError::Invalid {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let meta = reader.metadata();
        let kind = meta.database_type.clone();
        Ok(GeoDb {
            countries: Default::default(),
            has_city: kind.contains("City") || kind.contains("Enterprise"),
            has_asn: kind.contains("ASN") || kind.contains("ISP") || kind.contains("Enterprise"),
            database_type: meta.database_type.clone(),
            build_epoch: meta.build_epoch,
            reader,
        })
    }

    /// Looks an address up. Nothing found is a default (empty) location.
    pub fn lookup(&self, ip: IpAddr) -> Location {
        let Ok(result) = self.reader.lookup(ip) else {
            return Location::default();
        };
        if !result.has_data() {
            return Location::default();
        }
        let memo = !self.has_city && !self.has_asn;
        if memo {
            if let (Some(off), Ok(map)) = (result.offset(), self.countries.read()) {
                if let Some(c) = map.get(&off) {
                    return Location {
                        country: c.clone(),
                        ..Location::default()
                    };
                }
            }
        }
        let country: Option<&str> = result
            .decode_path(&path!["country", "iso_code"])
            .ok()
            .flatten();
        if memo {
            if let (Some(off), Ok(mut map)) = (result.offset(), self.countries.write()) {
                if map.len() < MEMO_ENTRIES {
                    map.insert(off, country.map(str::to_string));
                }
            }
        }
        let city: Option<&str> = if self.has_city {
            result
                .decode_path(&path!["city", "names", "en"])
                .ok()
                .flatten()
        } else {
            None
        };
        let asn: Option<u32> = if self.has_asn {
            result
                .decode_path(&path!["autonomous_system_number"])
                .ok()
                .flatten()
        } else {
            None
        };
        Location {
            country: country.map(str::to_string),
            city: city.map(str::to_string),
            asn,
        }
    }
}

/// Distinct records remembered per database.
const MEMO_ENTRIES: usize = 65_536;

/// The database in use, swapped atomically when a new file is loaded.
/// Lookups never block on a reload.
pub struct Geo {
    path: Option<PathBuf>,
    current: ArcSwapOption<GeoDb>,
}

impl Geo {
    /// No database: every lookup is unknown.
    pub fn none() -> Geo {
        Geo {
            path: None,
            current: ArcSwapOption::empty(),
        }
    }

    /// Loads the database at `path`.
    pub fn open(path: &Path) -> Result<Geo, GeoError> {
        let db = GeoDb::open(path)?;
        Ok(Geo {
            path: Some(path.to_path_buf()),
            current: ArcSwapOption::from_pointee(db),
        })
    }

    /// The configured file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Loads the file again and swaps it in. A file that fails to open or
    /// verify is refused and the database in use stays.
    pub fn reload(&self) -> Result<(), GeoError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let db = GeoDb::open(path)?;
        self.current.store(Some(Arc::new(db)));
        Ok(())
    }

    /// Looks an address up in the database in use.
    pub fn lookup(&self, ip: IpAddr) -> Location {
        match &*self.current.load() {
            Some(db) => db.lookup(ip),
            None => Location::default(),
        }
    }

    /// The `database_type` and build time in use.
    pub fn describe(&self) -> Option<(String, u64)> {
        self.current
            .load()
            .as_ref()
            .map(|db| (db.database_type.clone(), db.build_epoch))
    }
}

/// Country rules: when `allow` is non-empty only those countries may watch;
/// countries in `deny` may not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountryRule {
    /// ISO 3166-1 alpha-2 codes allowed (empty: all not denied).
    pub allow: Vec<String>,
    /// ISO 3166-1 alpha-2 codes denied.
    pub deny: Vec<String>,
}

impl CountryRule {
    /// Whether the rule restricts anything.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Checks the codes: two upper-case letters each.
    pub fn validate(&self) -> Result<(), String> {
        for c in self.allow.iter().chain(&self.deny) {
            if !is_country_code(c) {
                return Err(format!("{c:?} is not an ISO 3166-1 alpha-2 code"));
            }
        }
        Ok(())
    }

    /// Parses `IN,NP` lists.
    pub fn parse_list(s: &str) -> Result<Vec<String>, String> {
        let list: Vec<String> = s
            .split(',')
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty())
            .collect();
        match list.iter().find(|c| !is_country_code(c)) {
            Some(bad) => Err(format!("{bad:?} is not an ISO 3166-1 alpha-2 code")),
            None => Ok(list),
        }
    }
}

/// Whether `s` looks like an ISO 3166-1 alpha-2 code.
pub fn is_country_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// A rule for every path under a prefix (edge config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// Path prefix, such as `/vod/final/`.
    pub prefix: String,
    /// Countries allowed.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Countries denied.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// What to do with a viewer whose country is unknown, where a rule applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    /// Let them watch, whatever the rules.
    Allow,
    /// Refuse wherever a rule applies.
    Deny,
    /// Refuse where an allow-list applies (only the listed countries may
    /// watch, and an unknown one is not listed); let them watch where only
    /// deny-lists apply. The default.
    #[default]
    #[serde(rename = "allowlist")]
    AllowList,
}

/// The outcome of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// May watch.
    Allow,
    /// May not: the country seen (`unknown` when none) and the rule that matched.
    Block {
        /// The country code, or `unknown`.
        country: String,
        /// Which rule: `title:allow`, `title:deny`, `path:/prefix/:allow`, … or `unknown`.
        rule: String,
    },
}

/// Applies the path rules (those whose prefix `path` starts with) and then
/// the title's rule. Any rule that refuses blocks.
pub fn decide(
    country: Option<&str>,
    path: &str,
    path_rules: &[PathRule],
    title: Option<&CountryRule>,
    unknown: UnknownPolicy,
) -> Verdict {
    // No allocation unless the answer is a refusal: this runs per request.
    let applicable = path_rules
        .iter()
        .filter(|r| path.starts_with(&r.prefix))
        .map(|r| {
            (
                Some(r.prefix.as_str()),
                r.allow.as_slice(),
                r.deny.as_slice(),
            )
        })
        .chain(title.map(|t| (None, t.allow.as_slice(), t.deny.as_slice())))
        .filter(|(_, a, d)| !a.is_empty() || !d.is_empty());
    let name = |prefix: Option<&str>, which: &str| match prefix {
        Some(p) => format!("path:{p}:{which}"),
        None => format!("title:{which}"),
    };
    let mut any = false;
    let mut allow_list = false;
    for (prefix, allow, deny) in applicable {
        any = true;
        allow_list |= !allow.is_empty();
        let Some(cc) = country else {
            continue;
        };
        if deny.iter().any(|d| d == cc) {
            return Verdict::Block {
                country: cc.into(),
                rule: name(prefix, "deny"),
            };
        }
        if !allow.is_empty() && !allow.iter().any(|a| a == cc) {
            return Verdict::Block {
                country: cc.into(),
                rule: name(prefix, "allow"),
            };
        }
    }
    match (any, country, unknown) {
        (true, None, UnknownPolicy::Deny) => Verdict::Block {
            country: "unknown".into(),
            rule: "unknown".into(),
        },
        (true, None, UnknownPolicy::AllowList) if allow_list => Verdict::Block {
            country: "unknown".into(),
            rule: "unknown".into(),
        },
        _ => Verdict::Allow,
    }
}

/// Checks the geo keys of a role's config, naming each bad entry.
pub fn check_config(trusted_proxies: &[String], rules: &[PathRule], errors: &mut Vec<String>) {
    for (i, c) in trusted_proxies.iter().enumerate() {
        if c.parse::<IpNet>().is_err() {
            errors.push(format!(
                "trusted_proxies[{i}]: {c:?} is not a CIDR like 10.0.0.0/8"
            ));
        }
    }
    for (i, r) in rules.iter().enumerate() {
        let rule = CountryRule {
            allow: r.allow.clone(),
            deny: r.deny.clone(),
        };
        if let Err(e) = rule.validate() {
            errors.push(format!("geo_rules[{i}]: {e}"));
        }
        if !r.prefix.starts_with('/') {
            errors.push(format!("geo_rules[{i}].prefix: must start with /"));
        }
    }
}

/// The viewer's address: the peer's, unless the peer is a trusted proxy; then
/// the right-most address in `X-Forwarded-For` (or `Forwarded: for=`) that
/// is not itself trusted. Headers from untrusted peers are never read.
pub fn client_ip(
    peer: IpAddr,
    forwarded_for: &[&str],
    forwarded: &[&str],
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .filter_map(|s| parse_addr(s.trim()))
        .collect();
    if chain.is_empty() {
        chain = forwarded
            .iter()
            .flat_map(|h| h.split(','))
            .flat_map(|e| e.split(';'))
            .filter_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_addr(v.trim().trim_matches('"')))
                    .flatten()
            })
            .collect();
    }
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:80` or `2001:db8::1`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests;
