//! `cascade live`: live channels on an origin (its admin API).

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::ingest::ingest_credential;

#[derive(clap::Args)]
pub(crate) struct LiveArgs {
    #[command(subcommand)]
    command: LiveCommand,
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
enum LiveCommand {
    /// Make a channel; prints its RTMP and SRT publish URLs (with the
    /// stream key, shown only now) and its HLS and DASH playback URLs.
    Create {
        /// The channel's handle: a-z, 0-9 and -.
        name: String,
        /// What viewers see (default: the name).
        #[arg(long)]
        title: Option<String>,
        /// Only viewers on the premium plan may watch.
        #[arg(long)]
        premium: bool,
        /// Only these countries may watch (ISO 3166-1 alpha-2), such as IN,NP.
        #[arg(long)]
        allow_countries: Option<String>,
        /// These countries may not watch, such as US,GB.
        #[arg(long)]
        deny_countries: Option<String>,
        /// Minutes viewers may seek back (0 to 1440; default 120).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1440))]
        dvr_minutes: Option<u32>,
        /// An SRT passphrase (10 to 79 characters): SRT encoders must
        /// encrypt with it; it is put in the printed SRT URL.
        #[arg(long)]
        srt_passphrase: Option<String>,
        /// Serve the channel encrypted only (cbcs, its key rotating every
        /// drm_live_key_period_secs), played with a license.
        #[arg(long)]
        protect: bool,
    },
    /// The channels, one per line.
    List,
    /// One channel's state and URLs.
    Status {
        /// The channel's name.
        name: String,
    },
    /// A new stream key (the old one is refused from now on); prints the
    /// new publish URLs.
    RotateKey {
        /// The channel's name.
        name: String,
    },
    /// Stop a channel: its encoders' key is refused until rotated.
    Stop {
        /// The channel's name.
        name: String,
    },
    /// Open a poll on a channel: its viewers vote once each and see the
    /// results live; it closes after --for. Prints the poll's id.
    Poll {
        /// The channel's name.
        name: String,
        /// The question.
        #[arg(long)]
        question: String,
        /// An option (2 to 6: repeat the flag).
        #[arg(long = "option", required = true)]
        options: Vec<String>,
        /// How long it stays open: 90s, 10m, 1h (10 s to 24 h; default 2m).
        #[arg(long = "for", default_value = "2m")]
        duration: String,
    },
    /// Call an ad break now: it starts with the channel's next segment and
    /// players see it (HLS date ranges and cue tags, a DASH SCTE-35 event);
    /// `--end` returns to the programme with the next segment.
    Break {
        /// The channel's name.
        name: String,
        /// The break's length in seconds (1 to 3600).
        #[arg(long, required_unless_present = "end", conflicts_with = "end")]
        secs: Option<f64>,
        /// End the break running now instead.
        #[arg(long)]
        end: bool,
    },
    /// Close a poll now; prints its results.
    PollClose {
        /// The poll's id.
        id: String,
    },
}

pub(crate) async fn live(args: LiveArgs) -> anyhow::Result<()> {
    let admin = ingest_credential(args.admin_token_file.as_deref())?;
    let admin = admin.trim();
    let base = format!(
        "{}/api/v1/admin/channels",
        args.origin.trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("making an HTTP client")?;
    let call = |method: reqwest::Method, url: String, body: Option<Value>| {
        admin_call(&client, admin, method, url, body)
    };
    let countries = |s: &Option<String>| -> Vec<String> {
        s.iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    match &args.command {
        LiveCommand::Create {
            name,
            title,
            premium,
            allow_countries,
            deny_countries,
            dvr_minutes,
            srt_passphrase,
            protect,
        } => {
            let mut body = json!({
                "name": name,
                "premium": premium,
                "protect": protect,
                "allow_countries": countries(allow_countries),
                "deny_countries": countries(deny_countries),
            });
            if let Some(t) = title {
                body["title"] = json!(t);
            }
            if let Some(d) = dvr_minutes {
                body["dvr_minutes"] = json!(d);
            }
            if let Some(p) = srt_passphrase {
                body["srt_passphrase"] = json!(p);
            }
            let v = call(reqwest::Method::POST, base, Some(body)).await?;
            print_publish(&v)?;
            print_playback(&v["channel"])?;
            eprintln!(
                "the stream key is in the publish URLs and is shown only now: keep it secret"
            );
        }
        LiveCommand::List => {
            let v = call(reqwest::Method::GET, base, None).await?;
            let channels = v["channels"].as_array().cloned().unwrap_or_default();
            if channels.is_empty() {
                eprintln!("no channels");
            }
            for c in channels {
                println!(
                    "{:<20} {:<8} {:<12} {}",
                    c["name"].as_str().unwrap_or("?"),
                    c["state"].as_str().unwrap_or("?"),
                    c["id"].as_str().unwrap_or("?"),
                    c["title"].as_str().unwrap_or("")
                );
            }
        }
        LiveCommand::Status { name } => {
            let c = call(reqwest::Method::GET, format!("{base}/{name}"), None).await?;
            for key in [
                "name",
                "id",
                "title",
                "state",
                "key_version",
                "dvr_minutes",
                "premium",
                "srt_encrypted",
            ] {
                println!("{key:<16} {}", plain(&c[key]));
            }
            for key in ["allow_countries", "deny_countries"] {
                let list: Vec<String> = c[key]
                    .as_array()
                    .map(|a| a.iter().map(plain).collect())
                    .unwrap_or_default();
                println!("{key:<16} {}", list.join(","));
            }
            println!("{:<16} {}", "hls", plain(&c["playback"]["hls"]));
            println!("{:<16} {}", "dash", plain(&c["playback"]["dash"]));
            let ingest = &c["ingest"];
            if ingest.is_null() {
                println!("{:<16} none (no encoder publishing)", "encoder");
            } else {
                for key in [
                    "encoder",
                    "role",
                    "standby",
                    "since",
                    "video_frames",
                    "keyframes",
                    "audio_frames",
                    "kbps",
                    "fps",
                    "last_keyframe_age_ms",
                    "parts_published",
                    "dropped_frames",
                ] {
                    println!("{key:<16} {}", plain(&ingest[key]));
                }
            }
        }
        LiveCommand::RotateKey { name } => {
            let v = call(
                reqwest::Method::POST,
                format!("{base}/{name}/rotate-key"),
                Some(json!({})),
            )
            .await?;
            print_publish(&v)?;
            eprintln!("the old key is refused from now on; the new one is shown only now");
        }
        LiveCommand::Poll {
            name,
            question,
            options,
            duration,
        } => {
            let secs = crate::ctl::parse_duration(duration)?;
            let origin = args.origin.trim_end_matches('/');
            let p = call(
                reqwest::Method::POST,
                format!("{origin}/api/v1/admin/polls"),
                Some(json!({
                    "channel": name, "question": question, "options": options, "duration_secs": secs,
                })),
            )
            .await?;
            println!("{}", plain(&p["id"]));
            eprintln!(
                "poll open on {name} until {} (cascade live poll-close {} to close it now)",
                cascade_packager::live::iso_time(p["closes_at"].as_u64().unwrap_or(0)),
                plain(&p["id"])
            );
        }
        LiveCommand::PollClose { id } => {
            let origin = args.origin.trim_end_matches('/');
            let p = call(
                reqwest::Method::POST,
                format!("{origin}/api/v1/admin/polls/{id}/close"),
                Some(json!({})),
            )
            .await?;
            print_results(&p);
        }
        LiveCommand::Break { name, secs, end } => {
            let end = *end;
            let body = if end {
                json!({})
            } else {
                json!({ "duration_secs": secs })
            };
            let b = call(
                reqwest::Method::POST,
                format!("{base}/{name}/breaks"),
                Some(body),
            )
            .await?;
            if end {
                eprintln!("{name}: the break ends with the next segment");
            } else {
                println!(
                    "break {} on {name}: {:.1} s from segment {}",
                    b["id"].as_u64().unwrap_or(0),
                    b["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                    b["start_msn"].as_u64().unwrap_or(0)
                );
            }
        }
        LiveCommand::Stop { name } => {
            let c = call(
                reqwest::Method::POST,
                format!("{base}/{name}/stop"),
                Some(json!({})),
            )
            .await?;
            println!("{} {}", plain(&c["name"]), plain(&c["state"]));
        }
    }
    Ok(())
}

fn print_publish(v: &Value) -> anyhow::Result<()> {
    for proto in ["rtmp", "srt"] {
        let url = v["publish"][proto]
            .as_str()
            .with_context(|| format!("the origin's answer has no {proto} publish URL"))?;
        println!("{url}");
    }
    Ok(())
}

fn print_playback(c: &Value) -> anyhow::Result<()> {
    for kind in ["hls", "dash"] {
        let url = c["playback"][kind]
            .as_str()
            .with_context(|| format!("the origin's answer has no {kind} playback URL"))?;
        println!("{url}");
    }
    Ok(())
}

/// A JSON value as plain text: strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A poll's results, one option per line.
fn print_results(p: &Value) {
    println!("{} ({})", plain(&p["question"]), plain(&p["state"]));
    let total = p["total"].as_i64().unwrap_or(0).max(1);
    let options = p["options"].as_array().cloned().unwrap_or_default();
    for (i, o) in options.iter().enumerate() {
        let n = p["counts"][i].as_i64().unwrap_or(0);
        println!(
            "  {:<30} {:>8} {:>5.1}%",
            plain(o),
            n,
            100.0 * n as f64 / total as f64
        );
    }
}

/// One call of the origin's admin API; its JSON answer, or the origin's
/// refusal in words.
pub(crate) async fn admin_call(
    client: &reqwest::Client,
    admin: &str,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut r = client.request(method, url).bearer_auth(admin);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.context("reaching the origin")?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "the origin answered {}: {} ({})",
            status.as_u16(),
            v["message"].as_str().unwrap_or("no reason given"),
            v["error"].as_str().unwrap_or("?")
        );
    }
    Ok(v)
}
