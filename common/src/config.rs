//! Loading a role's TOML config with environment overrides, reporting every
//! bad key at once.

use serde::de::DeserializeOwned;

/// Every problem found in a config, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} error(s) in config:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A config that can check itself after parsing.
pub trait Validate {
    /// Pushes one message per problem, naming the key.
    fn validate(&self, errors: &mut Vec<String>);
}

/// Parses `text` as the config of `role`. Environment variables
/// `CASCADE_{ROLE}_{KEY}` (upper case) override top-level keys; their values
/// are read as TOML values when they parse as such, else as strings.
/// Every unknown key, badly typed value and failed check is reported.
pub fn load<T: DeserializeOwned + Validate>(
    role: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigErrors> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("syntax: {}", e.message())]))?;
    let prefix = format!("CASCADE_{}_", role.to_ascii_uppercase());
    let mut from_env = std::collections::HashMap::new();
    for (k, v) in env {
        if let Some(key) = k.strip_prefix(&prefix) {
            let key = key.to_ascii_lowercase();
            let value = format!("v = {v}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.clone()));
            table.insert(key.clone(), value);
            from_env.insert(key, v);
        }
    }
    // Each key alone, so that one bad key does not hide the next.
    let mut errors = Vec::new();
    let one = |key: &str, value: toml::Value| {
        let mut t = toml::Table::new();
        t.insert(key.to_string(), value);
        T::deserialize(toml::Value::Table(t)).map(|_| ())
    };
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let Some(value) = table.get(&key).cloned() else {
            continue;
        };
        if let Err(e) = one(&key, value) {
            // An environment value that reads as a number may be meant as text.
            match from_env.get(&key) {
                Some(raw) if one(&key, toml::Value::String(raw.clone())).is_ok() => {
                    table.insert(key, toml::Value::String(raw.clone()));
                }
                _ => errors.push(format!("{key}: {}", e.message().trim())),
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let cfg = T::deserialize(toml::Value::Table(table))
        .map_err(|e| ConfigErrors(vec![e.message().trim().to_string()]))?;
    cfg.validate(&mut errors);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads and parses a config file.
pub fn load_file<T: DeserializeOwned + Validate>(
    role: &str,
    path: &std::path::Path,
) -> Result<T, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
    load(role, &text, std::env::vars())
}

/// Checks that `value` is an `http://` or `https://` URL; for `validate`.
pub fn check_url(key: &str, value: &str, errors: &mut Vec<String>) {
    match value.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some() => {}
        _ => errors.push(format!("{key}: {value:?} is not an http(s) URL")),
    }
}

/// Checks that `value` is a socket address such as `127.0.0.1:8080`.
pub fn check_addr(key: &str, value: &str, errors: &mut Vec<String>) {
    if value.parse::<std::net::SocketAddr>().is_err() {
        errors.push(format!(
            "{key}: {value:?} is not an address like 127.0.0.1:8080"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        listen: String,
        limit: u32,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                listen: "127.0.0.1:1".into(),
                limit: 5,
            }
        }
    }

    impl Validate for Demo {
        fn validate(&self, errors: &mut Vec<String>) {
            check_addr("listen", &self.listen, errors);
        }
    }

    #[test]
    fn reports_every_bad_key() {
        let err =
            load::<Demo>("edge", "limit = \"x\"\nlisten = 3\nbogus = 1\n", vec![]).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.0.iter().any(|e| e.starts_with("limit:")));
        assert!(err.0.iter().any(|e| e.starts_with("listen:")));
        assert!(err.0.iter().any(|e| e.starts_with("bogus:")));
    }

    #[test]
    fn env_overrides_and_validation() {
        let cfg: Demo = load(
            "edge",
            "limit = 1\n",
            vec![("CASCADE_EDGE_LIMIT".into(), "9".into())],
        )
        .unwrap();
        assert_eq!(cfg.limit, 9);
        // A value that reads as a number still reaches a text key as text:
        // the error is the address check, not a type error.
        let err = load::<Demo>(
            "edge",
            "",
            vec![("CASCADE_EDGE_LISTEN".into(), "8080".into())],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].contains("not an address"), "{err}");
        let err = load::<Demo>(
            "edge",
            "",
            vec![("CASCADE_EDGE_LISTEN".into(), "nowhere".into())],
        )
        .unwrap_err();
        assert!(err.0[0].starts_with("listen:"), "{err}");
    }
}

/// One playback-token key in a config file.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    /// The key's name, reported in metrics when it matches.
    pub kid: String,
    /// The key, hex.
    pub key: String,
    /// `sha256` (default), `sha1` or `md5`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Salt, if the key has one.
    #[serde(default)]
    pub salt: String,
    /// Escape-early mode.
    #[serde(default)]
    pub escape_early: bool,
}

fn default_algorithm() -> String {
    "sha256".into()
}

/// The environment variable that overrides the CDN keys in every role.
pub const TOKEN_KEYS_ENV: &str = "CASCADE_TOKEN_KEYS";

/// Builds the CDN keys: from `CASCADE_TOKEN_KEYS` (`kid:hexkey,…`) when it
/// is set (pass its value), else from the config list. Errors name the key
/// by position and kid, never its value.
pub fn build_token_keys(
    key: &str,
    list: &[TokenKeyConfig],
    env: Option<&str>,
) -> Result<Vec<cascade_token::Key>, Vec<String>> {
    if let Some(v) = env {
        return cascade_token::parse_key_list(v)
            .map_err(|e| vec![format!("{TOKEN_KEYS_ENV}: {e}")]);
    }
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    for (i, k) in list.iter().enumerate() {
        let Some(algorithm) = cascade_token::Algorithm::parse(&k.algorithm) else {
            errors.push(format!(
                "{key}[{i}].algorithm: {:?} is not sha256, sha1 or md5",
                k.algorithm
            ));
            continue;
        };
        match cascade_token::Key::from_hex(&k.kid, &k.key) {
            Ok(built) => keys.push(
                built
                    .with_algorithm(algorithm)
                    .with_salt(Some(k.salt.clone()))
                    .with_escape_early(k.escape_early),
            ),
            Err(e) => errors.push(format!("{key}[{i}].key: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}
