//! Purge fan-out: control purges a fleet of real edges and shields (all on
//! this machine, over HTTP) and answers when every node acknowledged.
//! Prints the time to a complete answer, as control measured it and as the
//! caller saw it: median and worst of `--rounds` purges.
//!
//! `cargo run --release -p cascade-benches --bin purge_fanout -- --nodes 10`

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cascade_control::ControlConfig;
use cascade_edge::EdgeConfig;
use cascade_serve::config::TokenKeyConfig;
use cascade_shield::ShieldConfig;
use clap::Parser;

const FLEET: &str = "bench-fleet-credential-0123";
const ADMIN: &str = "bench-admin-credential-0123";

#[derive(Parser)]
struct Args {
    /// Nodes in the fleet: half edges, half shields.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Purges timed.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.nodes < 2 || args.rounds == 0 {
        bail!("--nodes at least 2, --rounds at least 1");
    }
    let dir = tempfile::tempdir()?;
    let control = cascade_control::start(&ControlConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: format!("{}/control", dir.path().display()),
        admin_token: ADMIN.into(),
        fleet_token: FLEET.into(),
        ..ControlConfig::default()
    })
    .await?;
    let control_url = format!("http://{}", control.addr);
    let (shields_n, edges_n) = (args.nodes / 2, args.nodes - args.nodes / 2);
    let mut shields = Vec::new();
    for i in 0..shields_n {
        shields.push(
            cascade_shield::start(&ShieldConfig {
                listen: "127.0.0.1:0".into(),
                cache_dir: String::new(),
                cache_memory_mib: 16,
                control_url: control_url.clone(),
                fleet_token: FLEET.into(),
                node_name: format!("shield-{i}"),
                heartbeat_secs: 1,
                ..ShieldConfig::default()
            })
            .await?,
        );
    }
    let mut edges = Vec::new();
    for i in 0..edges_n {
        edges.push(
            cascade_edge::start(&EdgeConfig {
                listen: "127.0.0.1:0".into(),
                shields: shields
                    .iter()
                    .map(|s| format!("http://{}", s.addr))
                    .collect(),
                cache_dir: String::new(),
                cache_memory_mib: 16,
                control_url: control_url.clone(),
                fleet_token: FLEET.into(),
                node_name: format!("edge-{i}"),
                heartbeat_secs: 1,
                token_keys: vec![TokenKeyConfig {
                    kid: "bench".into(),
                    key: "00112233445566778899aabbccddeeff".into(),
                    algorithm: "sha256".into(),
                    salt: String::new(),
                    escape_early: false,
                }],
                ..EdgeConfig::default()
            })
            .await?,
        );
    }
    let client = reqwest::Client::builder().no_proxy().build()?;
    // Wait for every node to register.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = client
            .get(format!("{control_url}/api/v1/nodes"))
            .bearer_auth(FLEET)
            .send()
            .await?
            .json()
            .await?;
        let up = v["nodes"]
            .as_array()
            .map_or(0, |l| l.iter().filter(|n| n["health"] == "up").count());
        if up == args.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {up} of {} nodes registered", args.nodes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut seen, mut reported) = (Vec::new(), Vec::new());
    for i in 0..args.rounds {
        let started = Instant::now();
        let r = client
            .post(format!("{control_url}/api/v1/purge"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({
                "urls": [format!("/vod/t{i}/master.m3u8")],
                "prefixes": [format!("/vod/t{i}/")],
                "tags": [format!("asset-t{i}")],
            }))
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.context("purge answer")?;
        seen.push(started.elapsed().as_secs_f64() * 1000.0);
        if status != 200 || body["complete"] != true {
            bail!("purge {i} incomplete ({status}): {body}");
        }
        let acked = body["acknowledged"].as_array().map_or(0, Vec::len);
        if acked != args.nodes {
            bail!("purge {i}: {acked} of {} acknowledged", args.nodes);
        }
        reported.push(body["elapsed_ms"].as_f64().unwrap_or(f64::NAN));
    }
    let worst = seen.iter().copied().fold(0.0, f64::max);
    println!(
        "purge fan-out to {} nodes ({edges_n} edges, {shields_n} shields), {} purges of 3 rules each:",
        args.nodes, args.rounds
    );
    println!(
        "  caller: median {:.1} ms, worst {:.1} ms; control's own figure: median {:.1} ms",
        median(&mut seen),
        worst,
        median(&mut reported)
    );
    println!("  goal: under 200 ms");
    for e in edges {
        e.shutdown().await;
    }
    for s in shields {
        s.shutdown().await;
    }
    control.shutdown().await;
    Ok(())
}
