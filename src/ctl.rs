//! `cascade ctl`: operating the fleet through control (nodes, purge,
//! pre-warm, partners).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub(crate) struct CtlArgs {
    /// Control's base URL.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8083",
        env = "CASCADE_CONTROL_URL"
    )]
    pub(crate) control: String,
    /// File holding the admin credential (`cascade dev` writes data/control-admin-token);
    /// else CASCADE_CONTROL_ADMIN_TOKEN.
    #[arg(long, global = true)]
    pub(crate) admin_token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: CtlCommand,
}

#[derive(Subcommand)]
pub(crate) enum CtlCommand {
    /// Manage token-API partners.
    #[command(subcommand)]
    Partner(PartnerCommand),
    /// List the fleet: role, region, health, cache fill and hit ratio.
    Nodes,
    /// Drop cached objects on every edge and shield, by URL, prefix or tag.
    Purge(PurgeArgs),
    /// Have edges fetch titles ahead of viewers, following the job live.
    Prewarm(PrewarmArgs),
    /// Cap the quality new manifests offer (panic mode), for a region, a
    /// channel or everyone; --clear lifts it. Without a cap or --clear,
    /// lists the caps in force.
    Degrade(DegradeArgs),
    /// Drain an edge for maintenance: new sessions start elsewhere and
    /// players move away by steering; --clear ends it.
    Drain(DrainArgs),
}

#[derive(clap::Args)]
pub(crate) struct DegradeArgs {
    /// Only edges in this region, such as IN.
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Only this live channel.
    #[arg(long)]
    pub(crate) channel: Option<String>,
    /// Rungs taller than this many lines leave the manifests.
    #[arg(long, conflicts_with = "clear")]
    pub(crate) max_height: Option<u32>,
    /// For this long (such as 10m or 2h); default: until cleared.
    #[arg(long = "for", conflicts_with = "clear")]
    pub(crate) for_: Option<String>,
    /// Lift the cap of this region and channel (none: the cap on everyone).
    #[arg(long)]
    pub(crate) clear: bool,
}

#[derive(clap::Args)]
pub(crate) struct DrainArgs {
    /// The edge's name, as `cascade ctl nodes` lists it.
    pub(crate) edge: String,
    /// End the drain.
    #[arg(long)]
    pub(crate) clear: bool,
}

#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("rules")
        .required(true)
        .multiple(true)
        .args(["urls", "prefixes", "tags"])
))]
pub(crate) struct PurgeArgs {
    /// A path or URL to drop, such as /vod/abc/v0/3.m4s (repeat for several).
    #[arg(long = "url")]
    pub(crate) urls: Vec<String>,
    /// Drop everything under a path prefix, such as /vod/abc/ (repeatable).
    #[arg(long = "prefix")]
    pub(crate) prefixes: Vec<String>,
    /// Drop everything with a tag, such as asset-abc (repeatable).
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Only this node (repeatable); default: every edge and shield.
    #[arg(long = "node")]
    pub(crate) nodes: Vec<String>,
    /// Only this role (repeatable); default: both.
    #[arg(long = "role", value_parser = ["edge", "shield"])]
    pub(crate) roles: Vec<String>,
}

#[derive(clap::Args)]
pub(crate) struct PrewarmArgs {
    /// An asset id to warm (repeat for several).
    #[arg(long = "title", required_unless_present = "channels")]
    pub(crate) titles: Vec<String>,
    /// A live channel to warm (its playlists and current init segments;
    /// repeat for several).
    #[arg(long = "channel")]
    pub(crate) channels: Vec<String>,
    /// Only edges in this region (repeatable).
    #[arg(long = "region")]
    pub(crate) regions: Vec<String>,
    /// Only this edge (repeatable); with --region, edges matching either.
    #[arg(long = "edge")]
    pub(crate) edges: Vec<String>,
    /// Only this track, such as v0 or a0 (repeatable); default: every track.
    #[arg(long = "rendition")]
    pub(crate) renditions: Vec<String>,
    /// Only the first N segments (of those --from/--to choose).
    #[arg(long)]
    pub(crate) first_segments: Option<u64>,
    /// Only segments that end after this second of the title.
    #[arg(long = "from")]
    pub(crate) from_secs: Option<f64>,
    /// Only segments that start before this second of the title.
    #[arg(long = "to")]
    pub(crate) to_secs: Option<f64>,
    /// Only this format's manifests: hls or dash (repeatable); default: both.
    #[arg(long = "format", value_parser = ["hls", "dash"])]
    pub(crate) formats: Vec<String>,
}

#[derive(Subcommand)]
pub(crate) enum PartnerCommand {
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

pub(crate) async fn ctl_nodes(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<()> {
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
        "{:<14} {:<7} {:<10} {:<6} {:>12} {:>9} {:>6} {:>5}  url",
        "name", "role", "region", "health", "cache", "hit ratio", "load", "shed"
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
        // An edge's utilisation of its fullest capacity, and its shedding
        // level (0 to 4; `drain` while drained).
        let load = n["load"]["utilisation"]
            .as_f64()
            .map_or("-".to_string(), |u| format!("{:.0}%", u * 100.0));
        let shed = match (
            n["load"]["draining"].as_bool(),
            n["load"]["shed_level"].as_u64(),
        ) {
            (Some(true), _) => "drain".to_string(),
            (_, Some(l)) => l.to_string(),
            _ => "-".to_string(),
        };
        println!(
            "{:<14} {:<7} {:<10} {:<6} {:>12} {:>9} {:>6} {:>5}  {}",
            n["name"].as_str().unwrap_or("?"),
            n["role"].as_str().unwrap_or("?"),
            n["region"].as_str().unwrap_or("-"),
            n["health"].as_str().unwrap_or("?"),
            cache,
            ratio,
            load,
            shed,
            n["url"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Parses `90`, `90s`, `30m`, `6h` or `2d` into seconds.
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<u64> {
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

pub(crate) async fn ctl(a: CtlArgs) -> anyhow::Result<()> {
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
        CtlCommand::Degrade(d) => return ctl_degrade(&client, base, token, d).await,
        CtlCommand::Drain(d) => return ctl_drain(&client, base, token, d).await,
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

/// `cascade ctl degrade`: sets, lifts or lists quality caps.
pub(crate) async fn ctl_degrade(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    d: DegradeArgs,
) -> anyhow::Result<()> {
    let scope = match (&d.region, &d.channel) {
        (None, None) => "everyone".to_string(),
        (Some(r), None) => format!("region {r}"),
        (None, Some(c)) => format!("channel {c}"),
        (Some(r), Some(c)) => format!("channel {c} in region {r}"),
    };
    let req = if d.clear {
        let mut q = Vec::new();
        if let Some(r) = &d.region {
            q.push(("region", r.as_str()));
        }
        if let Some(c) = &d.channel {
            q.push(("channel", c.as_str()));
        }
        client.delete(format!("{base}/api/v1/degrade")).query(&q)
    } else if let Some(h) = d.max_height {
        let for_secs = d
            .for_
            .as_deref()
            .map(parse_duration)
            .transpose()
            .context("--for")?;
        let body = serde_json::json!({
            "region": d.region, "channel": d.channel, "max_height": h, "for_secs": for_secs,
        });
        client.post(format!("{base}/api/v1/degrade")).json(&body)
    } else if d.region.is_none() && d.channel.is_none() && d.for_.is_none() {
        let resp = client
            .get(format!("{base}/api/v1/degrade"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("contacting control at {base}"))?;
        let (_, body) = control_answer(resp, &[200]).await?;
        let caps = body["caps"].as_array().cloned().unwrap_or_default();
        if caps.is_empty() {
            println!("no quality caps in force");
        }
        for c in caps {
            println!(
                "region {:<10} channel {:<16} max-height {:>5} {:<8} {}",
                c["region"].as_str().unwrap_or("*"),
                c["channel"].as_str().unwrap_or("*"),
                c["max_height"],
                c["source"].as_str().unwrap_or(""),
                c["until"]
                    .as_u64()
                    .map(|u| format!("until {u} (Unix)"))
                    .unwrap_or_else(|| "until cleared".into()),
            );
        }
        println!("drained edges: {}", names(&body["drained"]));
        return Ok(());
    } else {
        bail!("give --max-height to set a cap, or --clear to lift one");
    };
    let resp = req
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("contacting control at {base}"))?;
    let (_, body) = control_answer(resp, &[200]).await?;
    if d.clear {
        println!("cap lifted for {scope}");
    } else {
        println!(
            "capped {scope} at {} lines{}",
            d.max_height.unwrap_or_default(),
            d.for_.map(|f| format!(" for {f}")).unwrap_or_default()
        );
    }
    print_pushed(&body["edges"]);
    Ok(())
}

/// `cascade ctl drain EDGE [--clear]`.
pub(crate) async fn ctl_drain(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    d: DrainArgs,
) -> anyhow::Result<()> {
    let url = format!("{base}/api/v1/nodes/{}/drain", d.edge);
    let req = if d.clear {
        client.delete(url)
    } else {
        client.post(url)
    };
    let resp = req
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("contacting control at {base}"))?;
    let (_, body) = control_answer(resp, &[200]).await?;
    if d.clear {
        println!("{} takes new sessions again", d.edge);
    } else {
        println!(
            "draining {}: new sessions start elsewhere; players move away at their next steering reload",
            d.edge
        );
    }
    print_pushed(&body["edges"]);
    Ok(())
}

/// Which edges took a change at once, and which will at their next heartbeat.
fn print_pushed(edges: &serde_json::Value) {
    println!("applied at: {}", names(&edges["applied"]));
    for f in edges["failed"].as_array().into_iter().flatten() {
        println!(
            "not reached: {} ({}); it applies the change at its next heartbeat",
            f["node"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("?")
        );
    }
}

/// Control's JSON answer, or an error with its message when the status is not one of `ok`.
pub(crate) async fn control_answer(
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
pub(crate) fn names(v: &serde_json::Value) -> String {
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

pub(crate) async fn ctl_purge(
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

pub(crate) async fn ctl_prewarm(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    a: PrewarmArgs,
) -> anyhow::Result<()> {
    let mut body = serde_json::json!({});
    for (key, list) in [
        ("titles", a.titles),
        ("channels", a.channels),
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
pub(crate) async fn follow_events(
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
pub(crate) fn take_sse_events(buf: &mut Vec<u8>) -> Vec<(String, String)> {
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
pub(crate) fn blank_line(buf: &[u8]) -> Option<(usize, usize)> {
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
