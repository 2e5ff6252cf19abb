//! `cascade token`: signing and checking playback tokens by hand.

use std::path::PathBuf;

use anyhow::{bail, Context};
use cascade_serve::config::TOKEN_KEYS_ENV;
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token (ACL or URL) and print it.
    Sign(SignArgs),
    /// Check a token for a path and print each field and the verdict.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub(crate) struct KeyArgs {
    /// A file holding `kid:hexkey` (such as `data/dev-token-key`); else the
    /// first key of CASCADE_TOKEN_KEYS.
    #[arg(long)]
    pub(crate) key_file: Option<PathBuf>,
    /// HMAC algorithm: sha256, sha1 or md5.
    #[arg(long, default_value = "sha256")]
    pub(crate) algo: String,
    /// Salt.
    #[arg(long)]
    pub(crate) salt: Option<String>,
    /// Escape-early mode.
    #[arg(long)]
    pub(crate) escape_early: bool,
}

#[derive(clap::Args)]
pub(crate) struct SignArgs {
    /// ACL pattern(s), `!`-separated, such as '/vod/abc/*'.
    #[arg(long, conflicts_with = "url")]
    pub(crate) acl: Option<String>,
    /// The one path of a URL token.
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Seconds until expiry.
    #[arg(long, default_value_t = 3600)]
    pub(crate) ttl: u64,
    /// Bind to a client address.
    #[arg(long)]
    pub(crate) ip: Option<String>,
    /// Session id.
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Payload.
    #[arg(long)]
    pub(crate) data: Option<String>,
    #[command(flatten)]
    pub(crate) key: KeyArgs,
}

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// The token.
    pub(crate) token: String,
    /// The request path to check it for.
    #[arg(long)]
    pub(crate) path: String,
    /// The client address, for tokens bound to one.
    #[arg(long)]
    pub(crate) ip: Option<std::net::IpAddr>,
    #[command(flatten)]
    pub(crate) key: KeyArgs,
}

/// The key for `cascade token`: `--key-file`, else the first key of
/// CASCADE_TOKEN_KEYS.
pub(crate) fn cli_key(args: &KeyArgs) -> anyhow::Result<cascade_token::Key> {
    let list = match &args.key_file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => std::env::var(TOKEN_KEYS_ENV)
            .with_context(|| format!("no key: pass --key-file or set {TOKEN_KEYS_ENV}"))?,
    };
    let key = cascade_token::parse_key_list(&list)?
        .into_iter()
        .next()
        .context("the key list is empty")?;
    let algorithm = cascade_token::Algorithm::parse(&args.algo)
        .with_context(|| format!("--algo {:?}: use sha256, sha1 or md5", args.algo))?;
    Ok(key
        .with_algorithm(algorithm)
        .with_salt(args.salt.clone())
        .with_escape_early(args.escape_early))
}

pub(crate) fn token_sign(a: SignArgs) -> anyhow::Result<()> {
    let key = cli_key(&a.key)?;
    if a.acl.is_none() && a.url.is_none() {
        bail!("give --acl PATTERN or --url PATH");
    }
    if a.ttl == 0 {
        bail!("--ttl must be at least 1 second");
    }
    let now = cascade_serve::unix_now();
    let claims = cascade_token::Claims {
        ip: a.ip,
        start: Some(now),
        expires: now + a.ttl,
        acl: a
            .acl
            .map(|s| s.split('!').map(str::to_string).collect())
            .unwrap_or_default(),
        url: a.url,
        id: a.id,
        data: a.data,
    };
    println!("{}", cascade_token::sign(&key, &claims));
    Ok(())
}

pub(crate) fn token_verify(a: VerifyArgs) -> anyhow::Result<()> {
    let key = cli_key(&a.key)?;
    match cascade_token::parse(&a.token) {
        Ok(t) => {
            println!("ip     {}", t.ip.unwrap_or("-"));
            println!(
                "st     {}",
                t.start.map_or("-".to_string(), |v| v.to_string())
            );
            println!("exp    {}", t.expires);
            println!("acl    {}", t.acl.unwrap_or("- (URL token)"));
            println!("id     {}", t.id.unwrap_or("-"));
            println!("data   {}", t.data.unwrap_or("-"));
        }
        Err(e) => bail!("verdict: rejected ({})", e.code()),
    }
    let v = cascade_token::Verifier {
        cdn_keys: vec![key],
        ..Default::default()
    };
    let path =
        cascade_token::normalize_path(&a.path).context("--path is not an acceptable path")?;
    match v.verify(&a.token, &path, a.ip, cascade_serve::unix_now()) {
        Ok(g) => {
            println!(
                "verdict: valid (key {}, expires in {} s)",
                g.kid, g.expires_in
            );
            Ok(())
        }
        Err(e) => bail!("verdict: rejected ({})", e.code()),
    }
}
