//! `cascade ads`: the built-in ad decision service's inventory (add,
//! list, remove) and the ad report, through the origin's admin API.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};

use crate::ingest::ingest_credential;

#[derive(clap::Args)]
pub(crate) struct AdsArgs {
    #[command(subcommand)]
    command: AdsCommand,
    /// Origin base URL.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8082",
        env = "CASCADE_ORIGIN_URL"
    )]
    origin: String,
    /// A file holding the origin's admin credential; else
    /// CASCADE_ORIGIN_ADMIN_TOKEN, else `cascade dev`'s data/control-admin-token.
    #[arg(long, global = true)]
    admin_token_file: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum AdsCommand {
    /// Add an ad to the inventory; its creative is conditioned at once.
    Add {
        /// A unique name.
        name: String,
        /// The creative's media: an http(s) URL of an MP4.
        #[arg(long)]
        media: String,
        /// Its length in seconds.
        #[arg(long)]
        duration: f64,
        /// Only in these countries: IN,NP.
        #[arg(long, default_value = "")]
        countries: String,
        /// Only in titles of these genres: sports,drama.
        #[arg(long, default_value = "")]
        genres: String,
        /// Only on these device types: tv,phone.
        #[arg(long, default_value = "")]
        devices: String,
        /// Only on these plans: free.
        #[arg(long, default_value = "")]
        plans: String,
        /// Times one viewer may see it a day (0: no cap).
        #[arg(long, default_value_t = 0)]
        cap: i64,
        /// Its share among matching ads.
        #[arg(long, default_value_t = 1)]
        weight: i64,
        /// Where a click goes.
        #[arg(long, default_value = "")]
        click: String,
    },
    /// List the inventory and each creative's conditioning.
    List,
    /// Remove an ad by id or name.
    Remove {
        /// Its id or name.
        ad: String,
    },
    /// Impressions and completion rate per day, creative and title.
    Report {
        /// First day, YYYY-MM-DD (default: six days ago).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (default: today).
        #[arg(long)]
        to: Option<String>,
    },
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) async fn ads(args: AdsArgs) -> anyhow::Result<()> {
    let origin = args.origin.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("making an HTTP client")?;
    let admin = ingest_credential(args.admin_token_file.as_deref())?;
    let admin = admin.trim();
    let call = |method, path: String, body| {
        crate::live::admin_call(&client, admin, method, format!("{origin}{path}"), body)
    };
    match args.command {
        AdsCommand::Add {
            name,
            media,
            duration,
            countries,
            genres,
            devices,
            plans,
            cap,
            weight,
            click,
        } => {
            let body = json!({
                "name": name, "media_url": media, "duration": duration,
                "countries": list(&countries), "genres": list(&genres),
                "devices": list(&devices), "plans": list(&plans),
                "cap_per_day": cap, "weight": weight, "click_url": click,
            });
            let v = call(
                reqwest::Method::POST,
                "/api/v1/admin/ads".into(),
                Some(body),
            )
            .await?;
            println!("{}", v["id"].as_str().unwrap_or("?"));
            eprintln!("ad added; its creative is being conditioned (see `cascade ads list`)");
        }
        AdsCommand::List => {
            let ads = call(reqwest::Method::GET, "/api/v1/admin/ads".into(), None).await?;
            let creatives = call(
                reqwest::Method::GET,
                "/api/v1/admin/ads/creatives".into(),
                None,
            )
            .await?;
            let status_of = |url: &str| -> String {
                creatives
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["url"].as_str() == Some(url)))
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("not fetched")
                    .to_string()
            };
            let rows = ads.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                eprintln!("the inventory is empty");
            } else {
                println!(
                    "{:<12} {:<24} {:>6} {:<13} {:<5} TARGETING",
                    "ID", "NAME", "SECS", "CREATIVE", "CAP"
                );
            }
            for a in rows {
                let join = |k: &str| {
                    a[k].as_array()
                        .map(|l| {
                            l.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                };
                let mut targeting = Vec::new();
                for (k, label) in [
                    ("countries", "countries"),
                    ("genres", "genres"),
                    ("devices", "devices"),
                    ("plans", "plans"),
                ] {
                    let v = join(k);
                    if !v.is_empty() {
                        targeting.push(format!("{label}={v}"));
                    }
                }
                println!(
                    "{:<12} {:<24} {:>6.1} {:<13} {:<5} {}",
                    a["id"].as_str().unwrap_or("?"),
                    a["name"].as_str().unwrap_or("?"),
                    a["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                    status_of(a["media_url"].as_str().unwrap_or("")),
                    a["cap_per_day"].as_i64().unwrap_or(0),
                    if targeting.is_empty() {
                        "everyone".to_string()
                    } else {
                        targeting.join(" ")
                    }
                );
            }
        }
        AdsCommand::Remove { ad } => {
            call(
                reqwest::Method::DELETE,
                format!("/api/v1/admin/ads/{ad}"),
                None,
            )
            .await?;
            eprintln!("ad removed");
        }
        AdsCommand::Report { from, to } => {
            let mut q = Vec::new();
            if let Some(f) = from {
                q.push(format!("from={f}"));
            }
            if let Some(t) = to {
                q.push(format!("to={t}"));
            }
            let path = format!("/api/v1/admin/ads/report?{}", q.join("&"));
            let rows = call(reqwest::Method::GET, path, None).await?;
            let rows = rows.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                eprintln!("no impressions in these days");
                return Ok(());
            }
            println!(
                "{:<10} {:<14} {:<14} {:>11} {:>9} {:>10}",
                "DAY", "CREATIVE", "TITLE", "IMPRESSIONS", "COMPLETES", "COMPLETION"
            );
            for r in rows {
                println!(
                    "{:<10} {:<14} {:<14} {:>11} {:>9} {:>9.1}%",
                    r["day"].as_str().unwrap_or("?"),
                    r["creative"].as_str().unwrap_or("?"),
                    r["asset"].as_str().unwrap_or("?"),
                    r["impressions"].as_i64().unwrap_or(0),
                    r["completes"].as_i64().unwrap_or(0),
                    r["completion_rate"].as_f64().unwrap_or(0.0) * 100.0
                );
            }
        }
    }
    Ok(())
}
