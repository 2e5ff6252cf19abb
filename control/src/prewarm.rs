//! Pre-warm: before an event, have edges fetch a title's manifests and
//! segments through their normal pipeline, so edges and shields are both
//! warm when viewers arrive. Control expands each title's asset manifest into
//! request paths ([`cascade_packager::prewarm_paths`]) and feeds each edge
//! batches of them (`POST {edge}/fleet/warm`), one batch in flight per edge.
//! Jobs live in memory; progress is a `watch` channel per job, read by
//! `GET /api/v1/prewarm/{id}` and streamed by its `/events`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cascade_packager::{is_safe_id, AssetManifest, WarmSelection, MAX_MANIFEST_BYTES};
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fleet::Target;
use crate::{error, not_admin, BadField, Ctx, JsonObject};

/// Most titles in one job.
const MAX_TITLES: usize = 100;
/// Most objects one edge is asked to fetch in one job.
const MAX_OBJECTS: usize = 100_000;
/// Paths per `/fleet/warm` request (the edges' limit is 64).
const BATCH: usize = 16;
/// How long an edge may take over one batch.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// An edge whose batches fail this many times in a row is given up on.
const GIVE_UP_AFTER: u32 = 3;
/// Jobs remembered.
const MAX_JOBS: usize = 100;
/// How long the origin has to send one asset manifest.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Manifests fetched at once.
const MANIFEST_FETCHES: usize = 8;

/// A checked pre-warm request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PrewarmRequest {
    /// Asset ids, without repeats.
    pub(crate) titles: Vec<String>,
    /// Live channels (their playlists and current init segments).
    pub(crate) channels: Vec<String>,
    /// What to warm of each.
    pub(crate) selection: WarmSelection,
    /// Only edges in these regions (or named in `edges`).
    pub(crate) regions: Option<Vec<String>>,
    /// Only these edges (or those in `regions`).
    pub(crate) edges: Option<Vec<String>>,
}

/// Why no edge can take a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoEdges {
    /// A filter names something that is not there.
    Bad(BadField),
    /// No edge is configured or registered.
    None,
    /// Every edge the filters choose is down.
    AllDown(Vec<String>),
}

/// `running` or `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JobState {
    /// Edges are still fetching.
    Running,
    /// Every edge has answered for every object, or was given up on.
    Done,
}

/// A job's progress, as `GET /api/v1/prewarm/{id}` and its events show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Progress {
    /// The job id.
    pub(crate) id: String,
    /// Running or done.
    pub(crate) state: JobState,
    /// Objects to fetch, over all contacted edges.
    pub(crate) objects_total: u64,
    /// Objects fetched or failed so far.
    pub(crate) objects_done: u64,
    /// Bytes the edges fetched.
    pub(crate) bytes: u64,
    /// Objects that failed.
    pub(crate) failures: u64,
    /// `objects_done` as a whole percentage of `objects_total`, rounded down.
    pub(crate) percent: u64,
    /// Per edge, sorted by name.
    pub(crate) nodes: Vec<NodeProgress>,
    /// Milliseconds since the job started (until it ended, once done).
    pub(crate) elapsed_ms: u64,
}

/// One edge's part of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NodeProgress {
    /// The edge.
    pub(crate) node: String,
    /// Objects fetched or failed.
    pub(crate) objects_done: u64,
    /// Objects it is asked for (0 when down).
    pub(crate) objects_total: u64,
    /// Bytes fetched.
    pub(crate) bytes: u64,
    /// Objects that failed.
    pub(crate) failures: u64,
    /// Down when the job started, so not contacted.
    pub(crate) down: bool,
    /// Why the edge was given up on, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// Remembered jobs, newest last.
#[derive(Default)]
pub(crate) struct Jobs {
    list: Mutex<VecDeque<Job>>,
}

struct Job {
    id: String,
    started: Instant,
    progress: Arc<watch::Sender<Progress>>,
    task: Option<tokio::task::AbortHandle>,
}

/// Pre-warm counters on control's registry.
pub(crate) struct WarmMetrics {
    jobs: IntCounterVec,
    objects: IntCounterVec,
}

impl PrewarmRequest {
    /// Checks a request body.
    pub(crate) fn parse(body: &[u8]) -> Result<PrewarmRequest, BadField> {
        let obj = JsonObject::parse(
            body,
            &[
                "titles",
                "channels",
                "renditions",
                "first_segments",
                "from_secs",
                "to_secs",
                "formats",
                "regions",
                "edges",
            ],
        )?;
        let channels: Vec<String> = obj.field("channels")?.unwrap_or_default();
        if channels.len() > MAX_TITLES {
            return Err(BadField::new("channels", "give at most 100 channel names"));
        }
        if let Some(i) = channels.iter().position(|c| !is_safe_id(c)) {
            return Err(BadField::new(
                format!("channels[{i}]"),
                "channel names use letters, digits, - and _",
            ));
        }
        let titles: Vec<String> = match obj.field("titles")? {
            Some(t) => t,
            None if !channels.is_empty() => Vec::new(),
            None => {
                return Err(BadField::new(
                    "titles",
                    "give 1 to 100 asset ids (or live channels in `channels`)",
                ))
            }
        };
        if (titles.is_empty() && channels.is_empty()) || titles.len() > MAX_TITLES {
            return Err(BadField::new("titles", "give 1 to 100 asset ids"));
        }
        let mut unique: Vec<String> = Vec::with_capacity(titles.len());
        for (i, t) in titles.into_iter().enumerate() {
            if !is_safe_id(&t) {
                return Err(BadField::new(
                    format!("titles[{i}]"),
                    "asset ids use letters, digits, - and _",
                ));
            }
            if !unique.contains(&t) {
                unique.push(t);
            }
        }
        let renditions: Option<Vec<String>> = obj.field("renditions")?;
        if let Some(list) = &renditions {
            if list.is_empty() || list.len() > 64 {
                return Err(BadField::new(
                    "renditions",
                    "give 1 to 64 track ids, or leave it out for every track",
                ));
            }
            if let Some(i) = list.iter().position(|r| !is_safe_id(r)) {
                return Err(BadField::new(
                    format!("renditions[{i}]"),
                    "track ids use letters, digits, - and _",
                ));
            }
        }
        let first_segments: Option<u64> = obj.field("first_segments")?;
        let from_secs: Option<f64> = obj.field("from_secs")?;
        let to_secs: Option<f64> = obj.field("to_secs")?;
        for (name, v) in [("from_secs", from_secs), ("to_secs", to_secs)] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(BadField::new(name, "give seconds, 0 or more"));
            }
        }
        if let (Some(from), Some(to)) = (from_secs, to_secs) {
            if from >= to {
                return Err(BadField::new("to_secs", "must be after from_secs"));
            }
        }
        let formats: Option<Vec<String>> = obj.field("formats")?;
        let (hls, dash) = match &formats {
            None => (true, true),
            Some(list) => {
                if list.is_empty() {
                    return Err(BadField::new(
                        "formats",
                        "give hls, dash or both, or leave it out for both",
                    ));
                }
                if let Some(f) = list.iter().find(|f| !matches!(f.as_str(), "hls" | "dash")) {
                    return Err(BadField::new(
                        "formats",
                        format!("{f:?} is not hls or dash"),
                    ));
                }
                (
                    list.iter().any(|f| f == "hls"),
                    list.iter().any(|f| f == "dash"),
                )
            }
        };
        let regions: Option<Vec<String>> = obj.field("regions")?;
        let edges: Option<Vec<String>> = obj.field("edges")?;
        for (name, list) in [("regions", &regions), ("edges", &edges)] {
            if let Some(list) = list {
                if list.is_empty() || list.iter().any(|s| s.is_empty() || s.len() > 64) {
                    return Err(BadField::new(
                        name,
                        "give 1 or more names, or leave it out for every edge",
                    ));
                }
            }
        }
        let mut live = Vec::with_capacity(channels.len());
        for c in channels {
            if !live.contains(&c) {
                live.push(c);
            }
        }
        Ok(PrewarmRequest {
            channels: live,
            titles: unique,
            selection: WarmSelection {
                tracks: renditions,
                first_segments,
                from_secs,
                to_secs,
                hls,
                dash,
            },
            regions,
            edges,
        })
    }

    /// The edges the filters choose, those up and the names of those down.
    /// With both `regions` and `edges`, an edge matching either is chosen.
    pub(crate) fn select(&self, fleet: &[Target]) -> Result<(Vec<Target>, Vec<String>), NoEdges> {
        let edges: Vec<&Target> = fleet.iter().filter(|t| t.role == "edge").collect();
        if let Some(names) = &self.edges {
            if let Some(n) = names.iter().find(|n| !edges.iter().any(|e| e.name == **n)) {
                return Err(NoEdges::Bad(BadField::new(
                    "edges",
                    format!("no edge is named {n:?}"),
                )));
            }
        }
        if let Some(regions) = &self.regions {
            if let Some(r) = regions
                .iter()
                .find(|r| !edges.iter().any(|e| e.region.as_ref() == Some(*r)))
            {
                return Err(NoEdges::Bad(BadField::new(
                    "regions",
                    format!("no edge is registered in region {r:?}"),
                )));
            }
        }
        let filtered = self.edges.is_some() || self.regions.is_some();
        let chosen: Vec<&Target> = edges
            .into_iter()
            .filter(|e| {
                !filtered
                    || self.edges.as_ref().is_some_and(|n| n.contains(&e.name))
                    || self
                        .regions
                        .as_ref()
                        .is_some_and(|r| e.region.as_ref().is_some_and(|er| r.contains(er)))
            })
            .collect();
        if chosen.is_empty() {
            return Err(NoEdges::None);
        }
        let down: Vec<String> = chosen
            .iter()
            .filter(|e| e.down)
            .map(|e| e.name.clone())
            .collect();
        let up: Vec<Target> = chosen.into_iter().filter(|e| !e.down).cloned().collect();
        if up.is_empty() {
            return Err(NoEdges::AllDown(down));
        }
        Ok((up, down))
    }
}

impl Progress {
    /// A job about to start: `objects` for each edge in `up`; `down` edges get none.
    pub(crate) fn new(id: &str, objects: u64, up: &[String], down: &[String]) -> Progress {
        let mut nodes: Vec<NodeProgress> = up
            .iter()
            .map(|n| (n, false))
            .chain(down.iter().map(|n| (n, true)))
            .map(|(node, down)| NodeProgress {
                node: node.clone(),
                objects_done: 0,
                objects_total: if down { 0 } else { objects },
                bytes: 0,
                failures: 0,
                down,
                error: None,
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let mut p = Progress {
            id: id.to_string(),
            state: JobState::Running,
            objects_total: objects.saturating_mul(up.len() as u64),
            objects_done: 0,
            bytes: 0,
            failures: 0,
            percent: 0,
            nodes,
            elapsed_ms: 0,
        };
        p.percent = p.percent_done();
        p
    }

    /// Adds a node's results: `done` objects, of which `failed` failed, and `bytes`.
    pub(crate) fn record(&mut self, node: &str, done: u64, failed: u64, bytes: u64) {
        let Some(n) = self.nodes.iter_mut().find(|n| n.node == node) else {
            return;
        };
        // Never more than the node was asked for, whatever it answers.
        let done = done.min(n.objects_total.saturating_sub(n.objects_done));
        let failed = failed.min(done);
        n.objects_done += done;
        n.failures += failed;
        n.bytes = n.bytes.saturating_add(bytes);
        self.objects_done += done;
        self.failures += failed;
        self.bytes = self.bytes.saturating_add(bytes);
        self.percent = self.percent_done();
    }

    fn percent_done(&self) -> u64 {
        // Nothing to do is all done.
        self.objects_done
            .saturating_mul(100)
            .checked_div(self.objects_total)
            .unwrap_or(100)
    }
}

impl Jobs {
    /// Remembers a new job, forgetting the oldest finished one when full.
    /// `None` when every remembered job is still running.
    fn insert(&self, id: &str, progress: Arc<watch::Sender<Progress>>) -> Option<()> {
        let mut list = self.list.lock().ok()?;
        if list.len() >= MAX_JOBS {
            let oldest_done = list
                .iter()
                .position(|j| j.progress.borrow().state == JobState::Done)?;
            list.remove(oldest_done);
        }
        list.push_back(Job {
            id: id.to_string(),
            started: Instant::now(),
            progress,
            task: None,
        });
        Some(())
    }

    fn set_task(&self, id: &str, task: tokio::task::AbortHandle) {
        if let Ok(mut list) = self.list.lock() {
            if let Some(j) = list.iter_mut().find(|j| j.id == id) {
                j.task = Some(task);
            }
        }
    }

    /// A job's progress now.
    fn get(&self, id: &str) -> Option<Progress> {
        let list = self.list.lock().ok()?;
        let job = list.iter().find(|j| j.id == id)?;
        let mut p = job.progress.borrow().clone();
        if p.state == JobState::Running {
            p.elapsed_ms = job.started.elapsed().as_millis() as u64;
        }
        Some(p)
    }

    fn subscribe(&self, id: &str) -> Option<watch::Receiver<Progress>> {
        let list = self.list.lock().ok()?;
        list.iter()
            .find(|j| j.id == id)
            .map(|j| j.progress.subscribe())
    }

    /// Stops every running job (control is shutting down) and marks it done,
    /// so that its event streams end and do not hold the shutdown up.
    pub(crate) fn abort_all(&self) {
        let Ok(list) = self.list.lock() else {
            return;
        };
        for job in list.iter() {
            if let Some(task) = &job.task {
                task.abort();
            }
            job.progress.send_if_modified(|p| {
                if p.state == JobState::Done {
                    return false;
                }
                p.state = JobState::Done;
                p.elapsed_ms = job.started.elapsed().as_millis() as u64;
                for n in p
                    .nodes
                    .iter_mut()
                    .filter(|n| n.objects_done < n.objects_total)
                {
                    n.error = Some("control stopped before the job ended".into());
                }
                true
            });
        }
    }
}

impl WarmMetrics {
    pub(crate) fn new(registry: &prometheus::Registry) -> WarmMetrics {
        let jobs = IntCounterVec::new(
            Opts::new(
                "control_prewarm_jobs_total",
                "Pre-warm jobs: started, or done (clean or with failures)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let objects = IntCounterVec::new(
            Opts::new(
                "control_prewarm_objects_total",
                "Objects edges pre-warmed (ok) or could not (failed)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(jobs.clone()));
        let _ = registry.register(Box::new(objects.clone()));
        WarmMetrics { jobs, objects }
    }
}

/// `POST /api/v1/prewarm` (admin credential): checks the request, fetches
/// the titles' manifests, starts the job and answers 202 with its id.
pub(crate) async fn start_job(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    let req = match PrewarmRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    if ctx.cfg.fleet_token.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_fleet_token",
            "control has no fleet_token, so edges would refuse the job",
        );
    }
    let (up, down) = match req.select(&crate::fleet_targets(&ctx)) {
        Ok(x) => x,
        Err(NoEdges::Bad(e)) => return e.response(),
        Err(NoEdges::None) => {
            return error(
                StatusCode::CONFLICT,
                "no_edges",
                "no edge is configured or registered",
            )
        }
        Err(NoEdges::AllDown(names)) => {
            return error(
                StatusCode::CONFLICT,
                "edges_down",
                &format!("every chosen edge is down: {}", names.join(", ")),
            )
        }
    };
    let manifests = match fetch_manifests(&ctx, &req.titles).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(tracks) = &req.selection.tracks {
        if let Some(t) = tracks
            .iter()
            .find(|t| !manifests.iter().any(|m| m.track(t).is_some()))
        {
            return BadField::new("renditions", format!("no chosen title has a track {t:?}"))
                .response();
        }
    }
    let mut paths = Vec::new();
    for c in &req.channels {
        match fetch_live_manifest(&ctx, c).await {
            Ok(m) => paths.extend(cascade_packager::live::prewarm_paths(
                &m,
                req.selection.hls,
                req.selection.dash,
            )),
            Err(r) => return r,
        }
    }
    for m in &manifests {
        paths.extend(cascade_packager::prewarm_paths(m, &req.selection));
        if paths.len() > MAX_OBJECTS {
            return error(
                StatusCode::BAD_REQUEST,
                "too_many_objects",
                &format!(
                    "more than {MAX_OBJECTS} objects per edge; choose fewer titles, renditions or segments"
                ),
            );
        }
    }
    let id = crate::partners::random_hex(8);
    let up_names: Vec<String> = up.iter().map(|t| t.name.clone()).collect();
    let objects = paths.len() as u64;
    let (tx, _) = watch::channel(Progress::new(&id, objects, &up_names, &down));
    let tx = Arc::new(tx);
    if ctx.jobs.insert(&id, tx.clone()).is_none() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            &format!("{MAX_JOBS} pre-warm jobs are running; try when one is done"),
        );
    }
    ctx.warm_metrics.jobs.with_label_values(&["started"]).inc();
    tracing::info!(
        job = %id,
        titles = req.titles.len(),
        objects,
        edges = ?up_names,
        down = ?down,
        "pre-warm started"
    );
    let task = tokio::spawn(run(ctx.clone(), Arc::new(paths), up, tx));
    ctx.jobs.set_task(&id, task.abort_handle());
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "id": id,
            "objects": objects,
            "nodes": up_names,
            "down": down,
        })),
    )
        .into_response()
}

/// `GET /api/v1/prewarm/{id}` (admin credential).
pub(crate) async fn status(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    match ctx.jobs.get(&id) {
        Some(p) => Json(p).into_response(),
        None => unknown_job(),
    }
}

/// `GET /api/v1/prewarm/{id}/events` (admin credential): a `progress` event
/// with the job's progress now and at every change, then one `done` event
/// with the final figures, and the stream ends.
pub(crate) async fn events(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = not_admin(&ctx, &headers) {
        return r;
    }
    let Some(rx) = ctx.jobs.subscribe(&id) else {
        return unknown_job();
    };
    // (receiver, whether the current value was sent, whether the job is done)
    let stream =
        futures::stream::unfold((rx, false, false), |(mut rx, started, done)| async move {
            if done {
                return None;
            }
            // A closed channel without a final value (an aborted job) ends the stream.
            if started && rx.changed().await.is_err() {
                return None;
            }
            let p = rx.borrow_and_update().clone();
            let done = p.state == JobState::Done;
            let event = Event::default()
                .event(if done { "done" } else { "progress" })
                .data(serde_json::to_string(&p).unwrap_or_default());
            Some((Ok::<_, Infallible>(event), (rx, true, done)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn unknown_job() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such pre-warm job (control remembers the last 100)",
    )
}

/// A live channel's manifest, from the origin (404: not live now).
async fn fetch_live_manifest(
    ctx: &Ctx,
    channel: &str,
) -> Result<cascade_packager::live::LiveManifest, Response> {
    let origin = ctx.cfg.origin_url.trim_end_matches('/');
    let bytes = fetch_from_origin(
        &ctx.client,
        &format!("{origin}/live-mezz/{channel}/manifest.json"),
        &format!("the live manifest of channel {channel:?}"),
        (
            "not_live",
            format!("channel {channel:?} is not live: nothing to warm yet"),
        ),
    )
    .await?;
    cascade_packager::live::LiveManifest::from_json(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_GATEWAY,
            "origin",
            &format!("the live manifest of channel {channel:?}: {e}"),
        )
    })
}

/// The asset manifests of `titles`, from the origin, in order.
async fn fetch_manifests(ctx: &Ctx, titles: &[String]) -> Result<Vec<AssetManifest>, Response> {
    use futures::StreamExt;
    let origin = ctx.cfg.origin_url.trim_end_matches('/');
    let fetches: Vec<_> = titles
        .iter()
        .map(|t| fetch_manifest(&ctx.client, origin, t))
        .collect();
    let results: Vec<_> = futures::stream::iter(fetches)
        .buffered(MANIFEST_FETCHES)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn fetch_manifest(
    client: &reqwest::Client,
    origin: &str,
    title: &str,
) -> Result<AssetManifest, Response> {
    let what = format!("the manifest of title {title:?}");
    let bytes = fetch_from_origin(
        client,
        &format!("{origin}/mezz/{title}/manifest.json"),
        &what,
        (
            "unknown_title",
            format!("no published title {title:?} at the origin"),
        ),
    )
    .await?;
    AssetManifest::from_json(&bytes)
        .map_err(|e| error(StatusCode::BAD_GATEWAY, "origin", &format!("{what}: {e}")))
}

/// A manifest's bytes from the origin, at most `MAX_MANIFEST_BYTES`: 404
/// becomes `not_found` (a code and a message), any other failure 502.
async fn fetch_from_origin(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    not_found: (&str, String),
) -> Result<Vec<u8>, Response> {
    let bad_gateway = |why: String| {
        tracing::warn!(what, reason = %why, "pre-warm: a manifest is unavailable");
        error(StatusCode::BAD_GATEWAY, "origin", &format!("{what}: {why}"))
    };
    let transport = |e: reqwest::Error| {
        bad_gateway(format!(
            "origin {}",
            crate::purge::transport_failure(&e, MANIFEST_TIMEOUT)
        ))
    };
    let mut resp = client
        .get(url)
        .timeout(MANIFEST_TIMEOUT)
        .send()
        .await
        .map_err(transport)?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(error(StatusCode::NOT_FOUND, not_found.0, &not_found.1));
    }
    if !resp.status().is_success() {
        return Err(bad_gateway(format!(
            "the origin answered HTTP {}",
            resp.status().as_u16()
        )));
    }
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) if bytes.len() + c.len() <= MAX_MANIFEST_BYTES => {
                bytes.extend_from_slice(&c)
            }
            Ok(Some(_)) => return Err(bad_gateway("larger than allowed".into())),
            Ok(None) => return Ok(bytes),
            Err(e) => return Err(transport(e)),
        }
    }
}

/// Runs a job: every edge at once, each with one batch in flight.
async fn run(
    ctx: Arc<Ctx>,
    paths: Arc<Vec<String>>,
    edges: Vec<Target>,
    tx: Arc<watch::Sender<Progress>>,
) {
    let started = Instant::now();
    let per_edge = edges
        .iter()
        .map(|e| warm_edge(&ctx, e, &paths, &tx, started));
    futures::future::join_all(per_edge).await;
    let mut last = None;
    tx.send_modify(|p| {
        p.state = JobState::Done;
        p.elapsed_ms = started.elapsed().as_millis() as u64;
        last = Some(p.clone());
    });
    if let Some(p) = last {
        let result = if p.failures == 0 { "clean" } else { "failures" };
        ctx.warm_metrics.jobs.with_label_values(&[result]).inc();
        tracing::info!(
            job = %p.id,
            objects = p.objects_done,
            failures = p.failures,
            bytes = p.bytes,
            elapsed_ms = p.elapsed_ms,
            "pre-warm done"
        );
    }
}

/// Feeds one edge its batches in turn.
async fn warm_edge(
    ctx: &Ctx,
    edge: &Target,
    paths: &[String],
    tx: &watch::Sender<Progress>,
    started: Instant,
) {
    let url = format!("{}/fleet/warm", edge.url);
    let mut failed_in_a_row = 0;
    let mut batches = paths.chunks(BATCH);
    for batch in batches.by_ref() {
        let (ok, failed, bytes) = match warm_batch(ctx, &url, batch).await {
            Ok(results) => {
                failed_in_a_row = 0;
                tally(batch.len(), &results)
            }
            Err(reason) => {
                failed_in_a_row += 1;
                tracing::warn!(node = %edge.name, reason = %reason, "pre-warm batch failed");
                if failed_in_a_row >= GIVE_UP_AFTER {
                    give_up(ctx, edge, tx, batch.len(), &reason, started);
                    break;
                }
                (0, batch.len() as u64, 0)
            }
        };
        ctx.warm_metrics
            .objects
            .with_label_values(&["ok"])
            .inc_by(ok);
        ctx.warm_metrics
            .objects
            .with_label_values(&["failed"])
            .inc_by(failed);
        tx.send_modify(|p| {
            p.record(&edge.name, ok + failed, failed, bytes);
            p.elapsed_ms = started.elapsed().as_millis() as u64;
        });
    }
    // Whatever was left when the edge was given up on counts as failed.
    let left: usize = batches.map(<[String]>::len).sum();
    if left > 0 {
        ctx.warm_metrics
            .objects
            .with_label_values(&["failed"])
            .inc_by(left as u64);
        tx.send_modify(|p| p.record(&edge.name, left as u64, left as u64, 0));
    }
}

fn give_up(
    ctx: &Ctx,
    edge: &Target,
    tx: &watch::Sender<Progress>,
    batch: usize,
    reason: &str,
    started: Instant,
) {
    let why = format!("{GIVE_UP_AFTER} batches failed in a row; the last: {reason}");
    tracing::warn!(node = %edge.name, reason = %why, "pre-warm gave up on an edge");
    ctx.warm_metrics
        .objects
        .with_label_values(&["failed"])
        .inc_by(batch as u64);
    tx.send_modify(|p| {
        p.record(&edge.name, batch as u64, batch as u64, 0);
        if let Some(n) = p.nodes.iter_mut().find(|n| n.node == edge.name) {
            n.error = Some(why.clone());
        }
        p.elapsed_ms = started.elapsed().as_millis() as u64;
    });
}

/// One object's outcome, as an edge reports it.
#[derive(Debug, Deserialize)]
struct WarmResult {
    status: u16,
    #[serde(default)]
    bytes: u64,
}

#[derive(Debug, Deserialize)]
struct WarmAnswer {
    results: Vec<WarmResult>,
}

/// Sends one batch; the results in the batch's order, or why the whole batch failed.
async fn warm_batch(ctx: &Ctx, url: &str, batch: &[String]) -> Result<Vec<WarmResult>, String> {
    let resp = ctx
        .client
        .post(url)
        .bearer_auth(&ctx.cfg.fleet_token)
        .timeout(BATCH_TIMEOUT)
        .json(&serde_json::json!({ "urls": batch }))
        .send()
        .await
        .map_err(|e| crate::purge::transport_failure(&e, BATCH_TIMEOUT))?;
    if !resp.status().is_success() {
        return Err(crate::purge::refusal(resp).await);
    }
    resp.json::<WarmAnswer>()
        .await
        .map(|a| a.results)
        .map_err(|_| "sent an unreadable answer".to_string())
}

/// (ok, failed, bytes) of a batch of `asked` objects: a 2xx status is ok;
/// objects the edge did not report on failed.
fn tally(asked: usize, results: &[WarmResult]) -> (u64, u64, u64) {
    let reported = &results[..results.len().min(asked)];
    let ok: Vec<&WarmResult> = reported
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .collect();
    let bytes = ok.iter().fold(0u64, |a, r| a.saturating_add(r.bytes));
    let ok = ok.len() as u64;
    (ok, asked as u64 - ok, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<PrewarmRequest, BadField> {
        PrewarmRequest::parse(body.as_bytes())
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let r = parse(r#"{"titles":["abc","abc","def"]}"#).unwrap();
        assert_eq!(r.titles, ["abc", "def"]);
        assert_eq!(r.selection, WarmSelection::default());
        let r = parse(
            r#"{"titles":["abc"],"renditions":["v0","a0"],"first_segments":3,"from_secs":10,"to_secs":20.5,"formats":["hls"],"regions":["r1"]}"#,
        )
        .unwrap();
        assert!(r.selection.hls && !r.selection.dash);
        assert_eq!(r.selection.first_segments, Some(3));
        assert_eq!(r.selection.to_secs, Some(20.5));
        for (body, field) in [
            ("{}", "titles"),
            (r#"{"titles":[]}"#, "titles"),
            (r#"{"titles":["../x"]}"#, "titles[0]"),
            (r#"{"titles":"abc"}"#, "titles"),
            (r#"{"titles":["a"],"first_segments":-1}"#, "first_segments"),
            (r#"{"titles":["a"],"from_secs":"x"}"#, "from_secs"),
            (r#"{"titles":["a"],"from_secs":5,"to_secs":5}"#, "to_secs"),
            (r#"{"titles":["a"],"from_secs":-1}"#, "from_secs"),
            (r#"{"titles":["a"],"formats":["smooth"]}"#, "formats"),
            (r#"{"titles":["a"],"renditions":[]}"#, "renditions"),
            (r#"{"titles":["a"],"renditions":["v 0"]}"#, "renditions[0]"),
            (r#"{"titles":["a"],"regions":[]}"#, "regions"),
            (r#"{"titles":["a"],"edge":["e1"]}"#, "edge"),
            ("nope", "body"),
        ] {
            match parse(body) {
                Err(e) => assert_eq!(e.field, field, "{body}: {e:?}"),
                Ok(r) => panic!("{body} was accepted: {r:?}"),
            }
        }
        let many: Vec<String> = (0..=MAX_TITLES).map(|i| format!("t{i}")).collect();
        let body = serde_json::json!({ "titles": many }).to_string();
        assert_eq!(parse(&body).unwrap_err().field, "titles");
    }

    fn edge(name: &str, region: Option<&str>, down: bool) -> Target {
        Target {
            name: name.into(),
            role: "edge".into(),
            region: region.map(str::to_string),
            url: "http://127.0.0.1:1".into(),
            down,
        }
    }

    #[test]
    fn edges_are_chosen_by_region_or_name() {
        let fleet = [
            edge("e1", Some("r1"), false),
            edge("e2", Some("r1"), true),
            edge("e3", Some("r2"), false),
            edge("e4", None, false),
            Target {
                role: "shield".into(),
                ..edge("s1", Some("r1"), false)
            },
        ];
        let names = |t: &[Target]| t.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let all = parse(r#"{"titles":["a"]}"#)
            .unwrap()
            .select(&fleet)
            .unwrap();
        assert_eq!(names(&all.0), ["e1", "e3", "e4"]);
        assert_eq!(all.1, ["e2"]);
        let r1 = parse(r#"{"titles":["a"],"regions":["r1"]}"#)
            .unwrap()
            .select(&fleet)
            .unwrap();
        assert_eq!(names(&r1.0), ["e1"]);
        assert_eq!(r1.1, ["e2"]);
        let either = parse(r#"{"titles":["a"],"regions":["r2"],"edges":["e4"]}"#)
            .unwrap()
            .select(&fleet)
            .unwrap();
        assert_eq!(names(&either.0), ["e3", "e4"]);
        let bad = |body: &str| parse(body).unwrap().select(&fleet).unwrap_err();
        assert!(
            matches!(bad(r#"{"titles":["a"],"regions":["r9"]}"#), NoEdges::Bad(e) if e.field == "regions")
        );
        assert!(
            matches!(bad(r#"{"titles":["a"],"edges":["s1"]}"#), NoEdges::Bad(e) if e.field == "edges")
        );
        assert_eq!(
            bad(r#"{"titles":["a"],"edges":["e2"]}"#),
            NoEdges::AllDown(vec!["e2".into()])
        );
        assert_eq!(
            parse(r#"{"titles":["a"]}"#)
                .unwrap()
                .select(&[])
                .unwrap_err(),
            NoEdges::None
        );
    }

    #[test]
    fn progress_adds_up() {
        let mut p = Progress::new("j", 10, &["e2".into(), "e1".into()], &["e0".into()]);
        assert_eq!(p.objects_total, 20);
        assert_eq!(
            p.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(),
            ["e0", "e1", "e2"]
        );
        assert!(p.nodes[0].down && p.nodes[0].objects_total == 0);
        p.record("e1", 4, 1, 1000);
        assert_eq!(
            (p.objects_done, p.failures, p.bytes, p.percent),
            (4, 1, 1000, 20)
        );
        // An edge never counts for more than it was asked.
        p.record("e1", 50, 0, 0);
        p.record("e2", 10, 0, 5);
        p.record("nobody", 10, 10, 10);
        assert_eq!((p.objects_done, p.failures, p.percent), (20, 1, 100));
        assert_eq!(p.nodes[1].objects_done, 10);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["percent"], 100);
        assert!(json["nodes"][0].get("error").is_none());
    }

    #[test]
    fn batches_tally_by_status() {
        let r = |status, bytes| WarmResult { status, bytes };
        assert_eq!(tally(3, &[r(200, 10), r(404, 5), r(206, 1)]), (2, 1, 11));
        // Unreported objects failed; extra results are ignored.
        assert_eq!(tally(3, &[r(200, 10)]), (1, 2, 10));
        assert_eq!(tally(1, &[r(200, 10), r(200, 10)]), (1, 0, 10));
    }

    #[test]
    fn old_finished_jobs_make_room() {
        let jobs = Jobs::default();
        let job = |id: &str, done: bool| {
            let mut p = Progress::new(id, 1, &["e".into()], &[]);
            if done {
                p.state = JobState::Done;
            }
            Arc::new(watch::channel(p).0)
        };
        for i in 0..MAX_JOBS {
            assert!(jobs.insert(&format!("j{i}"), job("x", i != 5)).is_some());
        }
        assert!(jobs.insert("new", job("new", false)).is_some());
        assert!(jobs.get("j0").is_none() && jobs.get("j1").is_some());
        assert!(jobs.get("new").is_some());
        // With every remembered job running, a new one is refused.
        let busy = Jobs::default();
        for i in 0..MAX_JOBS {
            assert!(busy.insert(&format!("j{i}"), job("x", false)).is_some());
        }
        assert!(busy.insert("new", job("new", false)).is_none());
    }
}
