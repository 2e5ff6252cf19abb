//! `cascade`: one binary, a subcommand per role, `dev` for the whole stack
//! in one process, and operator commands.

mod ads;
mod ctl;
mod dev;
mod flash;
mod ingest;
mod live;
mod token;
mod watermark;

use std::path::PathBuf;

use cascade_control::ControlConfig;
use cascade_edge::EdgeConfig;
use cascade_origin::OriginConfig;
use cascade_serve::config::load_file;
use cascade_shield::ShieldConfig;
use clap::{Parser, Subcommand};

use ctl::{ctl, CtlArgs};
use dev::{dev, DevArgs};
use flash::{flash, FlashArgs};
use ingest::{ingest, IngestArgs};
use live::{live, LiveArgs};
use token::{token_sign, token_verify, TokenCommand};

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
    /// Live channels on an origin: create, list, status, rotate-key, stop,
    /// poll, poll-close, break.
    Live(LiveArgs),
    /// Publish a news flash to everyone, a region or a channel.
    Flash(FlashArgs),
    /// The built-in ad service's inventory (add, list, remove) and the
    /// ad report.
    Ads(ads::AdsArgs),
    /// Forensic watermarks: read the mark from a captured copy (detect).
    Watermark(watermark::WatermarkArgs),
}

#[derive(clap::Args)]
struct RoleArgs {
    /// TOML config file; `CASCADE_{ROLE}_{KEY}` variables override its keys.
    #[arg(long)]
    config: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let text_logs = matches!(cli.command, Command::Dev(_));
    let logs = (!matches!(
        cli.command,
        Command::Ingest(_)
            | Command::Token(_)
            | Command::Ctl(_)
            | Command::Live(_)
            | Command::Flash(_)
            | Command::Ads(_)
            | Command::Watermark(_)
    ))
    .then(|| cascade_serve::init_logging(text_logs));
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
    let result = runtime.block_on(run(cli));
    drop(runtime);
    // Writes out the queued log lines before the process ends.
    drop(logs);
    if let Err(e) = result {
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
        Command::Live(a) => live(a).await,
        Command::Flash(a) => flash(a).await,
        Command::Ads(a) => ads::ads(a).await,
        Command::Watermark(a) => watermark::watermark(a).await,
    }
}

pub(crate) async fn wait_for_signal() {
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
