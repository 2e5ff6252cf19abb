//! `cascade`: one binary, a subcommand per role, `dev` for the whole stack
//! in one process, and operator commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use cascade_control::ControlConfig;
use cascade_edge::EdgeConfig;
use cascade_origin::OriginConfig;
use cascade_serve::config::{load_file, TokenKeyConfig, TOKEN_KEYS_ENV};
use cascade_shield::ShieldConfig;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "cascade",
    version,
    about = "Cascade: a video CDN and streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Origin, shield, edge and control in one process on 127.0.0.1, zero config.
    Dev(DevArgs),
    /// Run the origin role.
    Origin(RoleArgs),
    /// Run a shield.
    Shield(RoleArgs),
    /// Run an edge.
    Edge(RoleArgs),
    /// Run control.
    Control(RoleArgs),
    /// Upload a media file to an origin and follow its transcode.
    Ingest(IngestArgs),
    /// Sign or check playback tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Operate the fleet through control.
    Ctl(CtlArgs),
}

#[derive(clap::Args)]
struct CtlArgs {
    /// Control's base URL.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8083",
        env = "CASCADE_CONTROL_URL"
    )]
    control: String,
    /// File holding the admin credential (`cascade dev` writes data/control-admin-token);
    /// else CASCADE_CONTROL_ADMIN_TOKEN.
    #[arg(long, global = true)]
    admin_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Manage token-API partners.
    #[command(subcommand)]
    Partner(PartnerCommand),
    /// List the fleet: role, region, health, cache fill and hit ratio.
    Nodes,
    /// Drop cached objects on every edge and shield, by URL, prefix or tag.
    Purge(PurgeArgs),
    /// Have edges fetch titles ahead of viewers, following the job live.
    Prewarm(PrewarmArgs),
}

#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("rules")
        .required(true)
        .multiple(true)
        .args(["urls", "prefixes", "tags"])
))]
struct PurgeArgs {
    /// A path or URL to drop, such as /vod/abc/v0/3.m4s (repeat for several).
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Drop everything under a path prefix, such as /vod/abc/ (repeatable).
    #[arg(long = "prefix")]
    prefixes: Vec<String>,
    /// Drop everything with a tag, such as asset-abc (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only this node (repeatable); default: every edge and shield.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Only this role (repeatable); default: both.
    #[arg(long = "role", value_parser = ["edge", "shield"])]
    roles: Vec<String>,
}

#[derive(clap::Args)]
struct PrewarmArgs {
    /// An asset id to warm (repeat for several).
    #[arg(long = "title", required = true)]
    titles: Vec<String>,
    /// Only edges in this region (repeatable).
    #[arg(long = "region")]
    regions: Vec<String>,
    /// Only this edge (repeatable); with --region, edges matching either.
    #[arg(long = "edge")]
    edges: Vec<String>,
    /// Only this track, such as v0 or a0 (repeatable); default: every track.
    #[arg(long = "rendition")]
    renditions: Vec<String>,
    /// Only the first N segments (of those --from/--to choose).
    #[arg(long)]
    first_segments: Option<u64>,
    /// Only segments that end after this second of the title.
    #[arg(long = "from")]
    from_secs: Option<f64>,
    /// Only segments that start before this second of the title.
    #[arg(long = "to")]
    to_secs: Option<f64>,
    /// Only this format's manifests: hls or dash (repeatable); default: both.
    #[arg(long = "format", value_parser = ["hls", "dash"])]
    formats: Vec<String>,
}

#[derive(Subcommand)]
enum PartnerCommand {
    /// Create a partner; prints its API key once.
    Add {
        /// Partner name.
        name: String,
        /// Paths it may grant, such as '/vod/*' (repeat for several).
        #[arg(long, required = true)]
        scope: Vec<String>,
        /// Longest token lifetime, such as 6h or 30m.
        #[arg(long, default_value = "6h")]
        max_ttl: String,
        /// Token requests per minute.
        #[arg(long, default_value_t = 600)]
        rate: u32,
        /// Also print the partner's own signing key (for partners who sign tokens themselves).
        #[arg(long)]
        show_signing_key: bool,
    },
    /// New API key and signing key; the old signing key lives on for max-ttl.
    Rotate {
        /// Partner name.
        name: String,
        /// Also print the new signing key.
        #[arg(long)]
        show_signing_key: bool,
    },
    /// Revoke a partner's API key and signing keys.
    Revoke {
        /// Partner name.
        name: String,
    },
    /// List partners.
    List,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token (ACL or URL) and print it.
    Sign(SignArgs),
    /// Check a token for a path and print each field and the verdict.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
struct KeyArgs {
    /// A file holding `kid:hexkey` (such as `data/dev-token-key`); else the
    /// first key of CASCADE_TOKEN_KEYS.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// HMAC algorithm: sha256, sha1 or md5.
    #[arg(long, default_value = "sha256")]
    algo: String,
    /// Salt.
    #[arg(long)]
    salt: Option<String>,
    /// Escape-early mode.
    #[arg(long)]
    escape_early: bool,
}

#[derive(clap::Args)]
struct SignArgs {
    /// ACL pattern(s), `!`-separated, such as '/vod/abc/*'.
    #[arg(long, conflicts_with = "url")]
    acl: Option<String>,
    /// The one path of a URL token.
    #[arg(long)]
    url: Option<String>,
    /// Seconds until expiry.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Bind to a client address.
    #[arg(long)]
    ip: Option<String>,
    /// Session id.
    #[arg(long)]
    id: Option<String>,
    /// Payload.
    #[arg(long)]
    data: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The token.
    token: String,
    /// The request path to check it for.
    #[arg(long)]
    path: String,
    /// The client address, for tokens bound to one.
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(clap::Args)]
struct DevArgs {
    /// Data directory (database, media, caches).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Edge HTTP port.
    #[arg(long, default_value_t = 8080)]
    edge_port: u16,
    /// Edge HTTPS port: HTTP/1.1 and HTTP/2 on TCP, HTTP/3 on UDP; 0 for none.
    #[arg(long, default_value_t = 8443)]
    tls_port: u16,
    /// Shield port.
    #[arg(long, default_value_t = 8081)]
    shield_port: u16,
    /// Origin port.
    #[arg(long, default_value_t = 8082)]
    origin_port: u16,
    /// Control port.
    #[arg(long, default_value_t = 8083)]
    control_port: u16,
    /// Do not create the sample titles on first start.
    #[arg(long)]
    no_samples: bool,
}

#[derive(clap::Args)]
struct RoleArgs {
    /// TOML config file; `CASCADE_{ROLE}_{KEY}` variables override its keys.
    #[arg(long)]
    config: PathBuf,
}

#[derive(clap::Args)]
struct IngestArgs {
    /// The media file.
    file: PathBuf,
    /// Title shown in the catalog (default: the file name).
    #[arg(long)]
    title: Option<String>,
    /// Origin base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8082",
        env = "CASCADE_ORIGIN_URL"
    )]
    origin: String,
    /// Only these countries may watch (ISO 3166-1 alpha-2), such as IN,NP.
    #[arg(long)]
    allow_countries: Option<String>,
    /// These countries may not watch, such as US,GB.
    #[arg(long)]
    deny_countries: Option<String>,
    /// Catalog synopsis.
    #[arg(long)]
    synopsis: Option<String>,
    /// Genres, comma-separated, such as Drama,Sport.
    #[arg(long)]
    genres: Option<String>,
    /// Audio languages, comma-separated, such as hi,en.
    #[arg(long)]
    languages: Option<String>,
    /// Release year.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1870..=2200))]
    year: Option<i64>,
    /// A file holding the origin's admin credential; else
    /// CASCADE_ORIGIN_ADMIN_TOKEN, else `cascade dev`'s data/control-admin-token.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// WebVTT subtitle files with their languages: en=a.vtt,hi=b.vtt.
    #[arg(long, value_parser = parse_lang_files)]
    subtitles: Option<Vec<(String, PathBuf)>>,
    /// Extra audio tracks (dubs, commentary) with their languages:
    /// fr=dub.m4a. Each source audio stream is a track already.
    #[arg(long, value_parser = parse_lang_files)]
    audio: Option<Vec<(String, PathBuf)>>,
    /// Video codecs beside H.264, each a full ladder: hevc, av1 or hevc,av1.
    #[arg(long)]
    codecs: Option<String>,
    /// Only viewers on the premium plan may watch.
    #[arg(long)]
    premium: bool,
}

fn main() {
    let cli = Cli::parse();
    let text_logs = matches!(cli.command, Command::Dev(_));
    if !matches!(
        cli.command,
        Command::Ingest(_) | Command::Token(_) | Command::Ctl(_)
    ) {
        cascade_serve::init_logging(text_logs);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Origin(a) => {
            let cfg: OriginConfig = load_file("origin", &a.config)?;
            let origin = cascade_origin::start(&cfg).await?;
            wait_for_signal().await;
            origin.shutdown().await;
            Ok(())
        }
        Command::Shield(a) => {
            let cfg: ShieldConfig = load_file("shield", &a.config)?;
            let shield = cascade_shield::start(&cfg).await?;
            wait_for_signal().await;
            shield.shutdown().await;
            Ok(())
        }
        Command::Edge(a) => {
            let cfg: EdgeConfig = load_file("edge", &a.config)?;
            let edge = cascade_edge::start(&cfg).await?;
            wait_for_signal().await;
            edge.shutdown().await;
            Ok(())
        }
        Command::Control(a) => {
            let cfg: ControlConfig = load_file("control", &a.config)?;
            let control = cascade_control::start(&cfg).await?;
            wait_for_signal().await;
            control.shutdown().await;
            Ok(())
        }
        Command::Ingest(a) => ingest(a).await,
        Command::Token(TokenCommand::Sign(a)) => token_sign(a),
        Command::Token(TokenCommand::Verify(a)) => token_verify(a),
        Command::Ctl(a) => ctl(a).await,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let data = args
        .data
        .to_str()
        .context("--data must be a UTF-8 path")?
        .trim_end_matches('/')
        .to_string();
    cascade_common::private_dir(std::path::Path::new(&data))
        .with_context(|| format!("creating {data}"))?;
    let host = "127.0.0.1";
    let url = |port: u16| format!("http://{host}:{port}");
    let dev_key = dev_token_key(&data)?;
    let admin_token = dev_secret(&format!("{data}/control-admin-token"))?;
    let fleet_token = dev_secret(&format!("{data}/fleet-token"))?;
    // Without a real database, the project's labelled test data (geo/testdata).
    let geoip_db = match std::env::var("CASCADE_GEOIP_DB") {
        Ok(p) => p,
        Err(_) => {
            let path = format!("{data}/geo-test-data.mmdb");
            let csv = include_str!("../geo/testdata/countries.csv");
            let bytes = cascade_geo::writer::build_from_csv(csv, cascade_serve::unix_now())?;
            std::fs::write(&path, bytes).with_context(|| format!("writing {path}"))?;
            path
        }
    };

    let origin = cascade_origin::start(&OriginConfig {
        listen: format!("{host}:{}", args.origin_port),
        data_dir: data.clone(),
        public_edge_url: url(args.edge_port),
        token_keys: vec![dev_key.clone()],
        geoip_db: geoip_db.clone(),
        admin_token: admin_token.clone(),
        fleet_token: fleet_token.clone(),
        ..OriginConfig::default()
    })
    .await
    .context("starting the origin")?;
    let node = |name: &str, role: &str, port: u16| cascade_control::Node {
        name: name.into(),
        role: role.into(),
        url: url(port),
    };
    let control = cascade_control::start(&ControlConfig {
        listen: format!("{host}:{}", args.control_port),
        data_dir: format!("{data}/control"),
        admin_token,
        fleet_token: fleet_token.clone(),
        public_edge_url: url(args.edge_port),
        origin_url: url(origin.addr.port()),
        nodes: vec![
            node("edge-1", "edge", args.edge_port),
            node("shield-1", "shield", args.shield_port),
            node("origin-1", "origin", origin.addr.port()),
        ],
        ..ControlConfig::default()
    })
    .await
    .context("starting control")?;
    let shield = cascade_shield::start(&ShieldConfig {
        listen: format!("{host}:{}", args.shield_port),
        origins: vec![url(origin.addr.port())],
        cache_dir: format!("{data}/cache/shield"),
        cache_disk_mib: 1024,
        control_url: url(args.control_port),
        fleet_token: fleet_token.clone(),
        ..ShieldConfig::default()
    })
    .await
    .context("starting the shield")?;
    let cert = if args.tls_port == 0 {
        None
    } else {
        Some(
            cascade_serve::tls::dev_certificate(std::path::Path::new(&format!("{data}/tls")))
                .context("making the development certificate")?,
        )
    };
    let edge = cascade_edge::start(&EdgeConfig {
        listen: format!("{host}:{}", args.edge_port),
        tls_listen: cert
            .as_ref()
            .map(|_| format!("{host}:{}", args.tls_port))
            .unwrap_or_default(),
        tls_cert: cert
            .as_ref()
            .map(|c| c.cert.display().to_string())
            .unwrap_or_default(),
        tls_key: cert
            .as_ref()
            .map(|c| c.key.display().to_string())
            .unwrap_or_default(),
        shields: vec![url(shield.addr.port())],
        origin: url(origin.addr.port()),
        cache_dir: format!("{data}/cache/edge"),
        cache_disk_mib: 1024,
        token_keys: vec![dev_key.clone()],
        control_url: url(args.control_port),
        fleet_token: fleet_token.clone(),
        geoip_db: geoip_db.clone(),
        // The certificate is a local one: a browser must not be told to
        // insist on HTTPS for localhost everywhere.
        hsts_max_age_secs: 0,
        ..EdgeConfig::default()
    })
    .await
    .context("starting the edge")?;

    let samples = if args.no_samples {
        Vec::new()
    } else {
        origin.ensure_samples().await?
    };
    let page = url(edge.addr.port());
    println!();
    println!("Cascade is running.");
    println!("  web page   {page}/");
    println!(
        "  edge       {page}    shield {}    origin {}    control {}",
        url(shield.addr.port()),
        url(origin.addr.port()),
        url(control.addr.port())
    );
    if samples.is_empty() {
        println!("  catalog    {page}/api/v1/assets");
    } else {
        println!("  two sample titles are transcoding now (progress: {page}/api/v1/assets); once ready they play at:");
        for id in &samples {
            println!("    HLS  {page}/vod/{id}/master.m3u8?__token__=…");
            println!("    DASH {page}/vod/{id}/manifest.mpd?__token__=…");
        }
        println!("  sign up on the web page to watch; media needs a token: the playback API");
        println!("    (POST {page}/api/v1/playback/ID with a viewer's access token) gives signed URLs, or");
        println!("    cascade token sign --acl '/vod/ID/*' --key-file {data}/dev-token-key");
    }
    println!(
        "  upload     cascade ingest FILE --origin {}",
        url(origin.addr.port())
    );
    if let (Some(cert), Some(addr)) = (&cert, edge.tls_addr) {
        println!(
            "  https      https://{host}:{}/   (HTTP/1.1 and HTTP/2 on TCP, HTTP/3 on UDP)",
            addr.port()
        );
        println!(
            "  certificate {} ({}), signed by a local CA made for it;",
            cert.cert.display(),
            if cert.created { "new" } else { "kept" }
        );
        println!(
            "    to trust it: sudo cp {} /usr/local/share/ca-certificates/cascade-dev.crt && sudo update-ca-certificates",
            cert.ca.display()
        );
        println!(
            "    Chromium/Firefox (NSS): certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n cascade-dev -i {}",
            cert.ca.display()
        );
        println!(
            "    or, for a throwaway Chromium: --ignore-certificate-errors-spki-list={} --origin-to-force-quic-on={host}:{}",
            cert.spki_sha256,
            addr.port()
        );
    }
    println!("  geo        {geoip_db}");
    println!("  partners   cascade ctl --control {} --admin-token-file {data}/control-admin-token partner add NAME --scope '/vod/*'", url(control.addr.port()));
    println!("Press Ctrl-C to stop.");
    wait_for_signal().await;
    println!("Stopping…");
    edge.shutdown().await;
    shield.shutdown().await;
    control.shutdown().await;
    origin.shutdown().await;
    Ok(())
}

/// The development token key: made once per data directory, kept in a file
/// only its owner can read, and never printed.
fn dev_token_key(data: &str) -> anyhow::Result<TokenKeyConfig> {
    let path = format!("{data}/dev-token-key");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) => {
            let mut secret = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| anyhow::anyhow!("no randomness for the dev token key"))?;
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            let text = format!("dev:{hex}\n");
            write_private(&path, &text)?;
            text
        }
    };
    let (kid, key) = text
        .trim()
        .split_once(':')
        .with_context(|| format!("{path}: expected kid:hexkey"))?;
    Ok(TokenKeyConfig {
        kid: kid.to_string(),
        key: key.to_string(),
        algorithm: "sha256".into(),
        salt: String::new(),
        escape_early: false,
    })
}

/// A random credential kept in a file only its owner can read.
fn dev_secret(path: &str) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        return Ok(t.trim().to_string());
    }
    let mut secret = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("no randomness for {path}"))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &hex)?;
    Ok(hex)
}

fn write_private(path: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {path}"))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The key for `cascade token`: `--key-file`, else the first key of
/// CASCADE_TOKEN_KEYS.
fn cli_key(args: &KeyArgs) -> anyhow::Result<cascade_token::Key> {
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

fn token_sign(a: SignArgs) -> anyhow::Result<()> {
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

fn token_verify(a: VerifyArgs) -> anyhow::Result<()> {
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

async fn ctl_nodes(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<()> {
    let r = client
        .get(format!("{base}/api/v1/nodes"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("contacting control at {base}"))?;
    if !r.status().is_success() {
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        bail!(
            "control answered {status}: {}",
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    let body: serde_json::Value = r.json().await.context("reading control's answer")?;
    println!(
        "{:<14} {:<7} {:<10} {:<6} {:>12} {:>9}  url",
        "name", "role", "region", "health", "cache", "hit ratio"
    );
    for n in body["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let cache = n["cache_memory_bytes"]
            .as_u64()
            .map_or("-".to_string(), |b| {
                format!("{:.1} MiB", b as f64 / 1048576.0)
            });
        let ratio = n["hit_ratio"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
        println!(
            "{:<14} {:<7} {:<10} {:<6} {:>12} {:>9}  {}",
            n["name"].as_str().unwrap_or("?"),
            n["role"].as_str().unwrap_or("?"),
            n["region"].as_str().unwrap_or("-"),
            n["health"].as_str().unwrap_or("?"),
            cache,
            ratio,
            n["url"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Parses `90`, `90s`, `30m`, `6h` or `2d` into seconds.
fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 6h or 30m"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{s:?}: use s, m, h or d"),
    };
    n.checked_mul(mult).context("duration too long")
}

async fn ctl(a: CtlArgs) -> anyhow::Result<()> {
    let token = match &a.admin_token_file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => std::env::var("CASCADE_CONTROL_ADMIN_TOKEN").context(
            "no admin credential: pass --admin-token-file or set CASCADE_CONTROL_ADMIN_TOKEN",
        )?,
    };
    let token = token.trim();
    let base = a.control.trim_end_matches('/');
    let client = reqwest::Client::builder().no_proxy().build()?;
    let cmd = match a.command {
        CtlCommand::Partner(cmd) => cmd,
        CtlCommand::Purge(p) => return ctl_purge(&client, base, token, p).await,
        CtlCommand::Prewarm(p) => return ctl_prewarm(&client, base, token, p).await,
        CtlCommand::Nodes => return ctl_nodes(&client, base, token).await,
    };
    let (req, show_key) = match cmd {
        PartnerCommand::Add {
            name,
            scope,
            max_ttl,
            rate,
            show_signing_key,
        } => {
            let max_ttl_secs = parse_duration(&max_ttl).context("--max-ttl")?;
            let body = serde_json::json!({
                "name": name, "scope": scope, "max_ttl_secs": max_ttl_secs,
                "rate_per_minute": rate, "include_signing_key": show_signing_key,
            });
            (
                client.post(format!("{base}/api/v1/partners")).json(&body),
                show_signing_key,
            )
        }
        PartnerCommand::Rotate {
            name,
            show_signing_key,
        } => (
            client.post(format!(
                "{base}/api/v1/partners/{name}/rotate?include_signing_key={show_signing_key}"
            )),
            show_signing_key,
        ),
        PartnerCommand::Revoke { name } => (
            client.post(format!("{base}/api/v1/partners/{name}/revoke")),
            false,
        ),
        PartnerCommand::List => (client.get(format!("{base}/api/v1/partners")), false),
    };
    let resp = req
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("contacting control at {base}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading control's answer")?;
    if !status.is_success() {
        bail!(
            "control refused ({status}): {}",
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    if let Some(list) = body["partners"].as_array() {
        for p in list {
            println!(
                "{:<20} scope {:<24} max-ttl {:>6}s rate {:>5}/min {}",
                p["name"].as_str().unwrap_or("?"),
                p["scope"]
                    .as_array()
                    .map(|s| s
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default(),
                p["max_ttl_secs"],
                p["rate_per_minute"],
                if p["revoked"].as_bool() == Some(true) {
                    "revoked"
                } else {
                    "active"
                },
            );
        }
        return Ok(());
    }
    if let Some(r) = body["revoked"].as_str() {
        println!("revoked {r}");
        return Ok(());
    }
    if let Some(k) = body["api_key"].as_str() {
        println!("api key (shown once): {k}");
    }
    if show_key {
        if let (Some(kid), Some(key)) = (
            body["signing_key"]["kid"].as_str(),
            body["signing_key"]["key"].as_str(),
        ) {
            println!("signing key (kid {kid}): {key}");
            println!(
                "  tokens signed with it must carry data=kid={}",
                kid.rsplit_once('-').map_or(kid, |x| x.0)
            );
        }
    }
    Ok(())
}

/// Control's JSON answer, or an error with its message when the status is not one of `ok`.
async fn control_answer(
    resp: reqwest::Response,
    ok: &[u16],
) -> anyhow::Result<(u16, serde_json::Value)> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading control's answer")?;
    if !ok.contains(&status.as_u16()) {
        bail!(
            "control refused ({status}): {}",
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    Ok((status.as_u16(), body))
}

/// The strings of a JSON array, joined with `, `; `-` when there are none.
fn names(v: &serde_json::Value) -> String {
    let list: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

async fn ctl_purge(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    a: PurgeArgs,
) -> anyhow::Result<()> {
    let mut body = serde_json::json!({ "urls": a.urls, "prefixes": a.prefixes, "tags": a.tags });
    if !a.nodes.is_empty() {
        body["nodes"] = serde_json::json!(a.nodes);
    }
    if !a.roles.is_empty() {
        body["roles"] = serde_json::json!(a.roles);
    }
    let resp = client
        .post(format!("{base}/api/v1/purge"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("contacting control at {base}"))?;
    let (_, r) = control_answer(resp, &[200, 207]).await?;
    let count = |k: &str| r[k].as_array().map_or(0, Vec::len);
    println!(
        "acknowledged {:>4}  {}",
        count("acknowledged"),
        names(&r["acknowledged"])
    );
    println!("failed       {:>4}", count("failed"));
    for f in r["failed"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "  {}: {}",
            f["node"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("no reason given")
        );
    }
    println!("down         {:>4}  {}", count("down"), names(&r["down"]));
    println!(
        "elapsed      {:>4} ms",
        r["elapsed_ms"].as_u64().unwrap_or(0)
    );
    if r["complete"].as_bool() != Some(true) {
        bail!(
            "purge incomplete: {} node(s) failed and {} down may still serve the old objects",
            count("failed"),
            count("down")
        );
    }
    println!("purge complete");
    Ok(())
}

async fn ctl_prewarm(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    a: PrewarmArgs,
) -> anyhow::Result<()> {
    let mut body = serde_json::json!({ "titles": a.titles });
    for (key, list) in [
        ("regions", a.regions),
        ("edges", a.edges),
        ("renditions", a.renditions),
        ("formats", a.formats),
    ] {
        if !list.is_empty() {
            body[key] = serde_json::json!(list);
        }
    }
    if let Some(n) = a.first_segments {
        body["first_segments"] = n.into();
    }
    if let Some(s) = a.from_secs {
        body["from_secs"] = s.into();
    }
    if let Some(s) = a.to_secs {
        body["to_secs"] = s.into();
    }
    let resp = client
        .post(format!("{base}/api/v1/prewarm"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("contacting control at {base}"))?;
    let (_, started) = control_answer(resp, &[202]).await?;
    let id = started["id"]
        .as_str()
        .context("control's answer has no job id")?
        .to_string();
    println!(
        "job {id}: {} objects on each of {}; down (skipped): {}",
        started["objects"].as_u64().unwrap_or(0),
        names(&started["nodes"]),
        names(&started["down"])
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("prewarm [{bar:40}] {pos}/{len} objects {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let show = |p: &serde_json::Value| {
        bar.set_length(p["objects_total"].as_u64().unwrap_or(0));
        bar.set_position(p["objects_done"].as_u64().unwrap_or(0));
        bar.set_message(format!(
            "{} {} failed",
            indicatif::HumanBytes(p["bytes"].as_u64().unwrap_or(0)),
            p["failures"].as_u64().unwrap_or(0)
        ));
    };
    let last = match follow_events(client, base, token, &id, &show).await {
        Ok(Some(done)) => done,
        // The stream broke off: follow the job by polling instead.
        Ok(None) | Err(_) => loop {
            let resp = client
                .get(format!("{base}/api/v1/prewarm/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .with_context(|| format!("contacting control at {base}"))?;
            let (_, p) = control_answer(resp, &[200]).await?;
            show(&p);
            if p["state"] == "done" {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        },
    };
    bar.finish();
    let failures = last["failures"].as_u64().unwrap_or(0);
    println!(
        "pre-warmed {} of {} objects, {}, {failures} failed, in {:.1} s",
        last["objects_done"].as_u64().unwrap_or(0),
        last["objects_total"].as_u64().unwrap_or(0),
        indicatif::HumanBytes(last["bytes"].as_u64().unwrap_or(0)),
        last["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    let mut down = 0;
    for n in last["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = n["node"].as_str().unwrap_or("?");
        if n["down"].as_bool() == Some(true) {
            down += 1;
            println!("  {name:<16} down: not warmed");
            continue;
        }
        println!(
            "  {name:<16} {}/{} objects  {:>10}  {} failed{}",
            n["objects_done"].as_u64().unwrap_or(0),
            n["objects_total"].as_u64().unwrap_or(0),
            indicatif::HumanBytes(n["bytes"].as_u64().unwrap_or(0)).to_string(),
            n["failures"].as_u64().unwrap_or(0),
            n["error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    if failures > 0 || down > 0 {
        bail!("pre-warm incomplete: {failures} object(s) failed, {down} edge(s) down");
    }
    Ok(())
}

/// Follows a pre-warm job's event stream, showing each `progress` event;
/// the `done` event's figures, or `None` if the stream ended without one.
async fn follow_events(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    show: &impl Fn(&serde_json::Value),
) -> anyhow::Result<Option<serde_json::Value>> {
    use futures::StreamExt;
    let resp = client
        .get(format!("{base}/api/v1/prewarm/{id}/events"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("control refused the event stream ({})", resp.status());
    }
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        for (event, data) in take_sse_events(&mut buf) {
            let Ok(p) = serde_json::from_str::<serde_json::Value>(&data) else {
                continue;
            };
            show(&p);
            if event == "done" {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

/// Removes the complete server-sent events from the front of `buf`:
/// (event name, data) pairs; comments (keep-alives) are skipped.
fn take_sse_events(buf: &mut Vec<u8>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some((end, gap)) = blank_line(buf) {
        let block: Vec<u8> = buf.drain(..end + gap).collect();
        let text = String::from_utf8_lossy(&block[..end]);
        let (mut event, mut data) = (String::from("message"), Vec::new());
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            out.push((event, data.join("\n")));
        }
    }
    out
}

/// Where the first event of `buf` ends, and the length of the blank line ending it.
fn blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The origin's admin credential for uploads.
fn ingest_credential(file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(f) = file {
        return std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()));
    }
    if let Ok(t) = std::env::var("CASCADE_ORIGIN_ADMIN_TOKEN") {
        return Ok(t);
    }
    std::fs::read_to_string("data/control-admin-token").context(
        "uploads need the origin's admin credential: pass --admin-token-file, set \
         CASCADE_ORIGIN_ADMIN_TOKEN, or run from the directory of `cascade dev` (data/control-admin-token)",
    )
}

/// `en=a.vtt,hi=b.vtt` as (language, file) pairs.
fn parse_lang_files(s: &str) -> Result<Vec<(String, PathBuf)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (lang, file) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: use LANGUAGE=FILE, such as en=subs.vtt"))?;
            let lang = lang.trim();
            if !cascade_packager::is_safe_lang(lang) {
                return Err(format!(
                    "{lang:?} is not a language tag such as en or pt-BR"
                ));
            }
            Ok((lang.to_string(), PathBuf::from(file.trim())))
        })
        .collect()
}

/// Sends one subtitle or audio file ahead of the media; returns its id.
async fn send_sidecar(
    client: &reqwest::Client,
    origin: &str,
    admin: &str,
    kind: &str,
    language: &str,
    file: &Path,
) -> anyhow::Result<String> {
    let bytes = tokio::fs::read(file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let resp = client
        .post(format!("{origin}/api/v1/uploads/sidecars"))
        .query(&[("kind", kind), ("language", language)])
        .bearer_auth(admin)
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("uploading {} to {origin}", file.display()))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading the origin's answer")?;
    if !status.is_success() {
        bail!(
            "the origin refused {} ({status}): {}",
            file.display(),
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(body["sidecar"]
        .as_str()
        .context("the origin's answer has no sidecar id")?
        .to_string())
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let path: &Path = &args.file;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await?.len();
    if size == 0 {
        bail!("{} is empty", path.display());
    }
    for list in [&args.allow_countries, &args.deny_countries]
        .into_iter()
        .flatten()
    {
        if let Err(e) = cascade_geo::CountryRule::parse_list(list) {
            bail!("country list {list:?}: {e}");
        }
    }
    let title = args.title.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "Untitled".into())
    });
    let origin = args.origin.trim_end_matches('/').to_string();
    let admin = ingest_credential(args.admin_token_file.as_deref())?;
    let client = reqwest::Client::builder().no_proxy().build()?;

    // Subtitles and extra audio first: a bad file is refused before the media goes.
    let mut sidecars = Vec::new();
    for (kind, list) in [("subtitles", &args.subtitles), ("audio", &args.audio)] {
        for (lang, file) in list.iter().flatten() {
            sidecars.push(send_sidecar(&client, &origin, admin.trim(), kind, lang, file).await?);
            println!("{kind:<9} {lang} {} sent", file.display());
        }
    }

    let sidecar_list = sidecars.join(",");
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("upload    [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let counted = {
        let bar = bar.clone();
        futures::StreamExt::inspect(tokio_util::io::ReaderStream::new(file), move |c| {
            if let Ok(c) = c {
                bar.inc(c.len() as u64);
            }
        })
    };
    let resp = client
        .post(format!("{origin}/api/v1/uploads"))
        .query(&[("title", title.as_str())])
        .query(&[
            (
                "allow_countries",
                args.allow_countries.as_deref().unwrap_or(""),
            ),
            (
                "deny_countries",
                args.deny_countries.as_deref().unwrap_or(""),
            ),
        ])
        .query(&[
            ("synopsis", args.synopsis.as_deref().unwrap_or("")),
            ("genres", args.genres.as_deref().unwrap_or("")),
            ("languages", args.languages.as_deref().unwrap_or("")),
            ("premium", if args.premium { "true" } else { "false" }),
            ("sidecars", sidecar_list.as_str()),
            ("codecs", args.codecs.as_deref().unwrap_or("")),
        ])
        .query(&args.year.map(|y| vec![("year", y)]).unwrap_or_default())
        .bearer_auth(admin.trim())
        .header("content-length", size)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(counted))
        .send()
        .await
        .with_context(|| {
            format!(
                "uploading to {origin}: the connection broke while the file was being sent \
                 (is the admin credential right, and the file within the origin's upload limit?)"
            )
        })?;
    bar.finish();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading the origin's answer")?;
    if !status.is_success() {
        bail!(
            "the origin refused the upload ({status}): {}",
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    let job = body["job"]
        .as_str()
        .context("the origin's answer has no job id")?
        .to_string();
    let asset = body["asset"]
        .as_str()
        .context("the origin's answer has no asset id")?
        .to_string();

    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("transcode [{bar:40}] {percent}% {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    loop {
        let j: serde_json::Value = client
            .get(format!("{origin}/api/v1/jobs/{job}"))
            .bearer_auth(admin.trim())
            .send()
            .await?
            .json()
            .await?;
        let progress = j["progress"].as_f64().unwrap_or(0.0);
        bar.set_position((progress * 1000.0) as u64);
        match j["state"].as_str() {
            Some("done") => {
                bar.finish_with_message("done");
                break;
            }
            Some("failed") => {
                bar.abandon_with_message("failed");
                bail!(
                    "transcode failed: {}",
                    j["error"].as_str().unwrap_or("no reason given")
                );
            }
            Some(s) => bar.set_message(s.to_string()),
            None => bail!("the origin answered without a job state"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Signed URLs come from the playback API, which needs a viewer's login
    // (the web page does that); here, the URLs and how to sign them.
    let a: serde_json::Value = client
        .get(format!("{origin}/api/v1/assets/{asset}"))
        .bearer_auth(admin.trim())
        .send()
        .await?
        .json()
        .await?;
    let (hls, dash) = (
        a["playback"]["hls"].as_str().unwrap_or("?").to_string(),
        a["playback"]["dash"].as_str().unwrap_or("?").to_string(),
    );
    println!("{title} is playable (asset {asset}):");
    println!("  HLS  {hls}");
    println!("  DASH {dash}");
    println!("  (media needs a token: log in on the web page, or POST /api/v1/playback/{asset} with a viewer's access token)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_split_as_they_arrive() {
        let mut buf = b": keep-alive\n\nevent: progress\ndata: {\"a\":1}\n\nevent: do".to_vec();
        assert_eq!(
            take_sse_events(&mut buf),
            [("progress".to_string(), "{\"a\":1}".to_string())]
        );
        buf.extend_from_slice(b"ne\r\ndata: {}\r\n\r\n");
        assert_eq!(
            take_sse_events(&mut buf),
            [("done".to_string(), "{}".to_string())]
        );
        assert!(buf.is_empty());
    }
}
