//! The origin: upload, transcode, catalog and mezzanine serving.
//!
//! Uploads are streamed to disk, probed, and queued; one worker transcodes
//! them into CMAF mezzanine with an asset manifest; published titles are
//! served to shields as byte ranges under `/mezz/`.
//!
//! The crate is built in four layers, each naming only the ones below it
//! (`tests/layers.rs` checks this, and that no modules import each other in
//! a circle):
//!
//! - `http`: the router, extractors, handlers, mezzanine serving, the web
//!   page, the OpenAPI document, and the one place errors become statuses
//!   and JSON bodies;
//! - `service`: what the origin does (playback, browsing, ingest and the
//!   transcoder, accounts, billing) and the `State` they share;
//! - `repo`: SQL and row types per area, taking the database, never the
//!   state;
//! - `storage`: the database pool and migrations, the object store, the
//!   clock, ids, and the one error type.
//!
//! `config` is read by every layer and names none; this file only wires the
//! layers together.

#![warn(unreachable_pub)]

pub mod config;
mod http;
mod repo;
mod service;
mod storage;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use cascade_webhook::sign as sign_webhook;
pub use config::OriginConfig;
pub use http::app;
pub use http::openapi::openapi_json;
pub use service::ingest::transcode;
pub use service::state::State;

/// A running origin.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the RTMP ingest listens, if it does.
    pub rtmp_addr: Option<SocketAddr>,
    rtmp: Option<cascade_live::rtmp::RtmpServer>,
    /// Where the SRT ingest listens (UDP), if it does.
    pub srt_addr: Option<SocketAddr>,
    srt: Option<cascade_live::srt::SrtServer>,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
    flusher: tokio::task::JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Origin {
    /// Mezzanine bytes served so far, and how many of them were repeats.
    pub fn mezzanine_bytes(&self) -> (u64, u64) {
        (
            self.state.mezz_bytes.get(),
            self.state.mezz_repeat_bytes.get(),
        )
    }

    /// Requests for mezzanine media files (ranges or whole) answered so far.
    pub fn mezzanine_requests(&self) -> u64 {
        self.state.mezz_requests.get()
    }

    /// Queues the two sample titles once per data directory.
    pub async fn ensure_samples(&self) -> anyhow::Result<Vec<String>> {
        service::ingest::ensure_samples(&self.state).await
    }

    /// Stops serving and lets the worker stop; an interrupted job resumes on
    /// the next start.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.jobs_notify.notify_one();
        if let Some(rtmp) = self.rtmp {
            rtmp.shutdown().await;
        }
        if let Some(srt) = self.srt {
            srt.shutdown().await;
        }
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        let _ = self.worker.await;
        // The last heartbeats are written before the pool closes.
        let _ = self.flusher.await;
        self.state.db.close().await;
    }
}

/// Starts an origin: database, store, worker and HTTP listener.
pub async fn start(cfg: &OriginConfig) -> anyhow::Result<Origin> {
    transcode::init();
    // The database holds the token secret: owner-only, like its directory.
    cascade_common::private_dir(std::path::Path::new(&cfg.data_dir))?;
    cascade_common::private_sqlite(&cfg.database_url())?;
    let state = Arc::new(State::open(cfg).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(service::ingest::worker::run(state.clone(), stop.clone()));
    tokio::spawn(service::ads::beacons::run(state.clone(), stop.clone()));
    // The slate is conditioned before the first live break wants it.
    if state.cfg.ads_live_fill == "slate" {
        let st = state.clone();
        tokio::spawn(async move {
            let _ = service::ads::creatives::ready(&st, &st.cfg.ads_slate_url).await;
        });
    }
    if let Some(rx) = state.recordings.lock().ok().and_then(|mut r| r.take()) {
        tokio::spawn(service::live_vod::run(state.clone(), rx));
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(service::playback::run_flusher(
        state.clone(),
        std::time::Duration::from_millis(cfg.history_flush_ms),
        tx.subscribe(),
    ));
    tokio::spawn(service::interactive::run(state.clone(), tx.subscribe()));
    let router = app(state.clone());
    let server = tokio::spawn(cascade_common::serve_router(
        listener,
        router,
        cascade_common::HttpLimits::default(),
        async move {
            let _ = rx.changed().await;
        },
    ));
    tracing::info!(%addr, "origin listening");
    let rtmp = if cfg.rtmp_listen.is_empty() {
        None
    } else {
        let l = tokio::net::TcpListener::bind(&cfg.rtmp_listen)
            .await
            .map_err(|e| anyhow::anyhow!("rtmp_listen {}: {e}", cfg.rtmp_listen))?;
        let ingest = Arc::new(service::live::LiveIngest {
            state: state.clone(),
        });
        let server = cascade_live::rtmp::serve(l, ingest)?;
        tracing::info!(addr = %server.addr, "RTMP ingest listening");
        Some(server)
    };
    let srt = if cfg.srt_listen.is_empty() {
        None
    } else {
        let socket = tokio::net::UdpSocket::bind(&cfg.srt_listen)
            .await
            .map_err(|e| anyhow::anyhow!("srt_listen {}: {e}", cfg.srt_listen))?;
        let ingest = Arc::new(service::live::LiveIngest {
            state: state.clone(),
        });
        let server = cascade_live::srt::serve(socket, ingest).await?;
        tracing::info!(addr = %server.addr, "SRT ingest listening");
        Some(server)
    };
    Ok(Origin {
        addr,
        rtmp_addr: rtmp.as_ref().map(|r| r.addr),
        rtmp,
        srt_addr: srt.as_ref().map(|s| s.addr),
        srt,
        state,
        stop,
        server,
        worker,
        flusher,
        shutdown: tx,
    })
}
