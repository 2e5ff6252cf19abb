//! `cascade flash`: publish a news flash to every viewer, a region's, or
//! a channel's (the origin's admin API); it reaches apps as a push message
//! and players inside live streams.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::ingest::ingest_credential;

#[derive(clap::Args)]
pub(crate) struct FlashArgs {
    /// The text (1 to 280 characters).
    text: Option<String>,
    /// `normal`, `high` or `critical`.
    #[arg(long, default_value = "normal")]
    priority: String,
    /// Only viewers in this country (ISO 3166-1 alpha-2, such as IN).
    #[arg(long, conflicts_with = "channel")]
    region: Option<String>,
    /// Only viewers of this live channel.
    #[arg(long)]
    channel: Option<String>,
    /// A title to link to (its id).
    #[arg(long)]
    link: Option<String>,
    /// How long it shows: 90s, 10m, 1h (10 s to 24 h; default 10m).
    #[arg(long = "for", default_value = "10m")]
    duration: String,
    /// List the flashes showing now instead.
    #[arg(long, conflicts_with = "text")]
    list: bool,
    /// End a flash now (its id) instead.
    #[arg(long, conflicts_with_all = ["text", "list"])]
    end: Option<String>,
    /// Origin base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8082",
        env = "CASCADE_ORIGIN_URL"
    )]
    origin: String,
    /// A file holding the origin's admin credential; else
    /// CASCADE_ORIGIN_ADMIN_TOKEN, else `cascade dev`'s data/control-admin-token.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

pub(crate) async fn flash(args: FlashArgs) -> anyhow::Result<()> {
    let origin = args.origin.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("making an HTTP client")?;
    if args.list {
        let v: Value = client
            .get(format!("{origin}/api/v1/flashes"))
            .send()
            .await
            .context("reaching the origin")?
            .json()
            .await
            .context("reading the origin's answer")?;
        let list = v["flashes"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            eprintln!("no flashes showing");
        }
        for f in list {
            println!(
                "{:<26} {:<9} {:<16} {}",
                f["id"].as_str().unwrap_or("?"),
                f["priority"].as_str().unwrap_or("?"),
                f["target"].as_str().unwrap_or("?"),
                f["text"].as_str().unwrap_or("")
            );
        }
        return Ok(());
    }
    let admin = ingest_credential(args.admin_token_file.as_deref())?;
    let admin = admin.trim();
    let (method, url, body) = match (&args.end, &args.text) {
        (Some(id), _) => (
            reqwest::Method::DELETE,
            format!("{origin}/api/v1/admin/flashes/{id}"),
            None,
        ),
        (None, Some(text)) => {
            let secs = crate::ctl::parse_duration(&args.duration)?;
            let mut body = json!({
                "text": text, "priority": args.priority, "expires_in_secs": secs,
            });
            if let Some(r) = &args.region {
                body["region"] = json!(r);
            }
            if let Some(c) = &args.channel {
                body["channel"] = json!(c);
            }
            if let Some(t) = &args.link {
                body["title_id"] = json!(t);
            }
            (
                reqwest::Method::POST,
                format!("{origin}/api/v1/admin/flashes"),
                Some(body),
            )
        }
        (None, None) => bail!("give the flash's text (or --list, or --end ID)"),
    };
    let v = crate::live::admin_call(&client, admin, method, url, body).await?;
    if args.end.is_some() {
        eprintln!("flash ended");
    } else {
        println!("{}", v["id"].as_str().unwrap_or("?"));
        eprintln!(
            "flash published to {} until {}",
            v["target"].as_str().unwrap_or("?"),
            cascade_packager::live::iso_time(v["expires_at"].as_u64().unwrap_or(0))
        );
    }
    Ok(())
}
