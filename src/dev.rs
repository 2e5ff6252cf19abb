//! `cascade dev`: origin, shield, edge and control in one process on
//! embedded defaults, with their secrets made once in the data directory.

use std::path::PathBuf;

use anyhow::Context;
use cascade_control::ControlConfig;
use cascade_edge::EdgeConfig;
use cascade_origin::OriginConfig;
use cascade_serve::config::TokenKeyConfig;
use cascade_shield::ShieldConfig;

use crate::wait_for_signal;

#[derive(clap::Args)]
pub(crate) struct DevArgs {
    /// Data directory (database, media, caches).
    #[arg(long, default_value = "data")]
    pub(crate) data: PathBuf,
    /// Edge HTTP port.
    #[arg(long, default_value_t = 8080)]
    pub(crate) edge_port: u16,
    /// Edge HTTPS port: HTTP/1.1 and HTTP/2 on TCP, HTTP/3 on UDP; 0 for none.
    #[arg(long, default_value_t = 8443)]
    pub(crate) tls_port: u16,
    /// Shield port.
    #[arg(long, default_value_t = 8081)]
    pub(crate) shield_port: u16,
    /// Origin port.
    #[arg(long, default_value_t = 8082)]
    pub(crate) origin_port: u16,
    /// Control port.
    #[arg(long, default_value_t = 8083)]
    pub(crate) control_port: u16,
    /// Events port: viewers' real-time connections to the edge (SSE and
    /// WebSocket); 0 for none.
    #[arg(long, default_value_t = 8084)]
    pub(crate) events_port: u16,
    /// RTMP ingest port for live channels; 0 for none.
    #[arg(long, default_value_t = 1935)]
    pub(crate) rtmp_port: u16,
    /// SRT ingest port (UDP) for live channels; 0 for none.
    #[arg(long, default_value_t = 8890)]
    pub(crate) srt_port: u16,
    /// Do not create the sample titles on first start.
    #[arg(long)]
    pub(crate) no_samples: bool,
}

pub(crate) async fn dev(args: DevArgs) -> anyhow::Result<()> {
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
            let bytes = cascade_geo_testdb::build_from_csv(csv, cascade_serve::unix_now())?;
            std::fs::write(&path, bytes).with_context(|| format!("writing {path}"))?;
            path
        }
    };

    let origin_cfg = OriginConfig {
        listen: format!("{host}:{}", args.origin_port),
        data_dir: data.clone(),
        public_edge_url: url(args.edge_port),
        token_keys: vec![dev_key.clone()],
        geoip_db: geoip_db.clone(),
        admin_token: admin_token.clone(),
        fleet_token: fleet_token.clone(),
        // The playback API asks control which edge a session starts on.
        control_url: url(args.control_port),
        rtmp_listen: if args.rtmp_port == 0 {
            String::new()
        } else {
            format!("{host}:{}", args.rtmp_port)
        },
        rtmp_public_url: format!("rtmp://{host}:{}/live", args.rtmp_port),
        srt_listen: if args.srt_port == 0 {
            String::new()
        } else {
            format!("{host}:{}", args.srt_port)
        },
        srt_public_url: format!("srt://{host}:{}", args.srt_port),
        // One process: origin and edge share the in-process bus.
        nats_url: String::new(),
        public_events_url: url(args.events_port),
        kek_file: dev_kek(&data)?,
        ..OriginConfig::default()
    };
    let origin = cascade_origin::start(&origin_cfg)
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
        public_url: url(args.edge_port),
        // One edge: no second pathway yet, but a second edge registered
        // with this control is offered to players at once.
        steering_url: url(args.control_port),
        fleet_token: fleet_token.clone(),
        geoip_db: geoip_db.clone(),
        // The certificate is a local one: a browser must not be told to
        // insist on HTTPS for localhost everywhere.
        hsts_max_age_secs: 0,
        nats_url: String::new(),
        events_listen: if args.events_port == 0 {
            String::new()
        } else {
            format!("{host}:{}", args.events_port)
        },
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
        "  mail       {}/  (sign-up links: the newest .eml file there)",
        origin_cfg.mail_outbox().display()
    );
    if let Some(rtmp) = origin.rtmp_addr {
        println!("  live       rtmp://{rtmp}/live  (cascade live create NAME prints a channel's publish URLs)");
    }
    if let Some(srt) = origin.srt_addr {
        println!("  live       srt://{srt}  (caller mode, ?streamid=publish:KEY)");
    }
    if let Some(events) = edge.events_addr {
        println!("  together   http://{events}/events/live/NAME  (comments, reactions, polls, flashes: SSE or WebSocket; cascade flash TEXT)");
    }
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
pub(crate) fn dev_token_key(data: &str) -> anyhow::Result<TokenKeyConfig> {
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

/// The development key-encryption key (64 hex digits, AES-256): made once
/// per data directory, kept in a file only its owner can read, and never
/// printed. Answers the file's path.
pub(crate) fn dev_kek(data: &str) -> anyhow::Result<String> {
    let path = format!("{data}/kek");
    if std::fs::metadata(&path).is_err() {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| anyhow::anyhow!("no randomness for the dev key-encryption key"))?;
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, &hex)?;
    }
    Ok(path)
}

/// A random credential kept in a file only its owner can read.
pub(crate) fn dev_secret(path: &str) -> anyhow::Result<String> {
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

pub(crate) fn write_private(path: &str, text: &str) -> anyhow::Result<()> {
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
