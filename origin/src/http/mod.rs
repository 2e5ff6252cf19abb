//! The origin's HTTP surface: uploads, jobs, the catalog, mezzanine with
//! byte ranges, and the web page.

pub(crate) mod error;
pub(crate) mod openapi;
pub(crate) mod web;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use object_store::{GetOptions, GetRange};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::storage::objects as store;
use crate::transcode::{self, Source};
use crate::State;
use crate::repo::catalog;
use crate::service::{accounts, billing, playback};
use crate::storage::{db, ids};

/// Largest JSON request body (the payment webhook's events are the biggest).
const MAX_JSON_BODY: usize = 256 << 10;

/// Builds the router; tests call it in-process.
pub fn app(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/api/v1/uploads",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/uploads/sidecars",
            post(crate::service::ingest::sidecars::upload_sidecar).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/assets", get(list_assets))
        .route("/api/v1/assets/{id}", get(asset))
        .route("/api/v1/assets/{id}/geo", axum::routing::put(set_geo))
        .route("/api/v1/auth/signup", post(accounts::signup))
        .route("/api/v1/auth/login", post(accounts::login))
        .route("/api/v1/auth/refresh", post(accounts::refresh))
        .route("/api/v1/auth/logout", post(accounts::logout))
        .route("/api/v1/me", get(accounts::me))
        .route(
            "/api/v1/profiles",
            get(accounts::list_profiles).post(accounts::create_profile),
        )
        .route(
            "/api/v1/profiles/{id}",
            axum::routing::delete(accounts::delete_profile),
        )
        .route("/api/v1/titles", get(catalog::list))
        .route("/api/v1/titles/{id}", get(catalog::get_title))
        .route("/api/v1/titles/{id}/artwork", get(catalog::artwork))
        .route("/api/v1/browse", get(catalog::browse))
        .route("/api/v1/admin/titles", post(catalog::create))
        .route(
            "/api/v1/admin/titles/{id}",
            axum::routing::patch(catalog::update).delete(catalog::delete),
        )
        .route(
            "/api/v1/admin/titles/{id}/artwork",
            axum::routing::put(catalog::put_artwork)
                .layer(DefaultBodyLimit::max(catalog::MAX_ARTWORK_BYTES)),
        )
        .route("/api/v1/plans", get(billing::plans))
        .route("/api/v1/billing/webhook", post(billing::webhook))
        .route("/api/v1/playback/{id}", post(playback::playback))
        .route("/api/v1/streams/{id}/heartbeat", post(playback::heartbeat))
        .route("/api/v1/streams/{id}/stop", post(playback::stop))
        .route("/api/v1/history", get(playback::history))
        .route("/api/v1/fleet/revocations", get(playback::revocations))
        .route("/api/v1/openapi.json", get(crate::http::openapi::serve))
        .route("/mezz/{asset}/{file}", get(mezzanine))
        .route("/", get(crate::http::web::index))
        .route("/static/{file}", get(crate::http::web::asset_file))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such path") })
        // JSON bodies are small; uploads and artwork set their own limits.
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn(cascade_common::json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A JSON error body, the same shape as the proxy tiers'.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": code, "message": message }))).into_response()
}

/// Request id in and out, access log, request metrics.
async fn observe(AxState(state): AxState<Arc<State>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(cascade_common::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| cascade_common::valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(ids::new_id);
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(cascade_common::REQUEST_ID, v);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(cascade_common::REQUEST_ID, v);
    }
    // Every answer: no content sniffing, no referrer (media URLs carry
    // tokens).
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    state
        .http_requests
        .with_label_values(&[&status.to_string()])
        .inc();
    cascade_common::access_log!(
        &path,
        role = "cascade-origin",
        request_id = %id,
        method = %method,
        path,
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
    );
    resp
}

async fn metrics(AxState(state): AxState<Arc<State>>, req: axum::extract::Request) -> Response {
    let access =
        cascade_common::MetricsAccess::new(&state.cfg.metrics_networks, &[&state.cfg.admin_token])
            .unwrap_or_default();
    cascade_common::metrics_answer(&access, &state.metrics, &req)
}

#[derive(Deserialize)]
struct UploadQuery {
    title: Option<String>,
    /// `IN,NP`: only these countries may watch.
    allow_countries: Option<String>,
    /// `US,GB`: these countries may not.
    deny_countries: Option<String>,
    /// Catalog synopsis.
    synopsis: Option<String>,
    /// Comma-separated genres.
    genres: Option<String>,
    /// Comma-separated languages.
    languages: Option<String>,
    /// Release year.
    year: Option<i64>,
    /// Needs the premium plan: `true` or `false`.
    premium: Option<bool>,
    /// Subtitle and audio files sent before, by id: `ID,ID`.
    sidecars: Option<String>,
    /// Video codecs beside H.264: `hevc,av1`.
    codecs: Option<String>,
}

/// `POST /api/v1/uploads?title=T`: the body is the media file. It is
/// streamed to disk within the size limit, probed, and queued; a file FFmpeg
/// cannot read is answered 422 and recorded as a failed job.
/// How long a refused upload's body is still read (and thrown away)
/// before the refusal is sent, and how much of it at most.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_secs(10);
const REFUSAL_LINGER_BYTES: usize = 256 << 20;

/// Answers `refusal` to an upload whose body has not been read (a wrong
/// credential, a full queue), after reading and discarding that body for a
/// while (a lingering close, as nginx does): a client still sending would
/// otherwise meet a reset connection and never see why it was refused.
async fn refuse_upload(body: Body, refusal: Response) -> Response {
    let mut stream = body.into_data_stream();
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > REFUSAL_LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
    refusal
}

async fn upload(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Uploads publish titles: they need the admin (editor) credential.
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !cascade_common::bearer_matches(auth, &state.cfg.admin_token) {
        let refusal = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "uploads need the admin credential (Authorization: Bearer <admin_token>)",
        );
        return refuse_upload(body, refusal).await;
    }
    let limit = state.cfg.max_upload_mib << 20;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Reading a body over the limit to say so would cost more than it
        // is worth: answer now, and close.
        let mut refusal = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("uploads are limited to {} MiB", state.cfg.max_upload_mib),
        );
        refusal
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return refusal;
    }
    // Bounded work: a few uploads at once, and a bounded queue behind the worker.
    let Ok(_permit) = state.uploads.try_acquire() else {
        let refusal = busy("too many uploads in progress; try again shortly");
        return refuse_upload(body, refusal).await;
    };
    match db::queued_jobs(&state.db).await {
        Ok(n) if n >= MAX_QUEUED_JOBS => {
            return busy("the transcode queue is full; try again later")
        }
        Ok(_) => {}
        Err(e) => return db_error(e),
    }
    let geo = match (
        cascade_geo::CountryRule::parse_list(q.allow_countries.as_deref().unwrap_or("")),
        cascade_geo::CountryRule::parse_list(q.deny_countries.as_deref().unwrap_or("")),
    ) {
        (Ok(allow), Ok(deny)) => cascade_geo::CountryRule { allow, deny },
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, "bad_countries", &e),
    };
    let title = q.title.unwrap_or_default();
    let title = title.trim();
    if title.chars().count() > 200 || title.chars().any(char::is_control) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_title",
            "title must be at most 200 printable characters",
        );
    }
    let list = |s: &Option<String>| -> Vec<String> {
        s.as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect()
    };
    let synopsis = q.synopsis.clone().unwrap_or_default();
    let (genres, languages) = (list(&q.genres), list(&q.languages));
    if let Err(e) = catalog::check_metadata(Some(&synopsis), q.year, &[&genres, &languages]) {
        return e.into_response();
    }
    let extras = match crate::service::ingest::sidecars::extras_for_upload(
        &state,
        q.sidecars.as_deref(),
        q.codecs.as_deref(),
    )
    .await
    {
        Ok(e) => e,
        Err(r) => return r,
    };
    let asset = ids::short_id();
    let job = ids::short_id();
    let title = if title.is_empty() {
        format!("Untitled {asset}")
    } else {
        title.to_string()
    };
    let meta = catalog::UploadMeta {
        name: title.clone(),
        synopsis,
        year: q.year,
        genres,
        languages,
        premium: q.premium.unwrap_or(false),
    };

    let dir = std::path::Path::new(&state.cfg.data_dir).join("incoming");
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        tracing::error!(error = %e, "creating upload dir");
        return storage_error();
    }
    let path = dir.join(format!("{job}.upload"));
    match receive(body, &path, limit).await {
        Ok(0) => {
            let _ = tokio::fs::remove_file(&path).await;
            return error(StatusCode::BAD_REQUEST, "empty", "the upload is empty");
        }
        Ok(_) => {}
        Err(ReceiveError::TooLarge) => {
            let _ = tokio::fs::remove_file(&path).await;
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("uploads are limited to {} MiB", state.cfg.max_upload_mib),
            );
        }
        Err(ReceiveError::Io(e)) => {
            let _ = tokio::fs::remove_file(&path).await;
            tracing::warn!(error = %e, "upload broke off");
            return error(
                StatusCode::BAD_REQUEST,
                "incomplete",
                "the upload did not complete",
            );
        }
    }
    let source = path.to_string_lossy().to_string();
    // The sidecars become this upload's alone, now that its media is here.
    let extras = if extras == crate::service::ingest::sidecars::Extras::default() {
        extras
    } else {
        match crate::service::ingest::sidecars::claim(&state, q.sidecars.as_deref(), q.codecs.as_deref()).await {
            Ok(e) => e,
            Err(r) => {
                let _ = tokio::fs::remove_file(&path).await;
                return r;
            }
        }
    };
    // The worker reads the extras before it transcodes: written before the job exists.
    if extras != crate::service::ingest::sidecars::Extras::default() {
        let file = crate::service::ingest::sidecars::extras_path(&state.cfg.data_dir, &job);
        let bytes = serde_json::to_vec(&extras).unwrap_or_default();
        if let Err(e) = tokio::fs::write(&file, bytes).await {
            tracing::error!(error = %e, "recording an upload's extras");
            let _ = tokio::fs::remove_file(&path).await;
            return storage_error();
        }
    }
    if let Err(e) =
        db::create_asset_and_job(&state.db, &asset, &job, &title, "file", &source, &meta).await
    {
        tracing::error!(error = %e, "recording an upload");
        let _ = tokio::fs::remove_file(&path).await;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database",
            "cannot record the upload",
        );
    }
    if !geo.is_empty() {
        if let Err(e) = db::set_geo(&state.db, &asset, &geo).await {
            return db_error(e);
        }
    }
    let probe_path = path.clone();
    let probe =
        tokio::task::spawn_blocking(move || transcode::probe(&Source::File(probe_path))).await;
    match probe {
        Ok(Ok(p)) => {
            state.jobs_notify.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "asset": asset, "job": job, "status": "queued",
                    "source": { "width": p.width, "height": p.height, "duration": p.duration, "audio": p.has_audio, "audio_streams": p.audio_streams },
                })),
            )
                .into_response()
        }
        other => {
            let reason = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "the probe crashed".to_string(),
            };
            // Claim the job first so the worker never picks it up.
            let _ = db::fail(&state.db, &job, &asset, &reason).await;
            state.metrics_jobs.with_label_values(&["failed"]).inc();
            let _ = tokio::fs::remove_file(&path).await;
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": "unreadable_media", "message": reason, "asset": asset, "job": job, "status": "failed" })),
            )
                .into_response()
        }
    }
}

/// Jobs waiting for the transcoder before uploads are turned away.
const MAX_QUEUED_JOBS: i64 = 100;

/// 500 for an upload the origin could not keep on disk (the cause is logged).
pub(crate) fn storage_error() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage",
        "cannot store uploads",
    )
}

pub(crate) fn busy(message: &str) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "busy", message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    r
}

pub(crate) enum ReceiveError {
    TooLarge,
    Io(String),
}

pub(crate) async fn receive(
    body: Body,
    path: &std::path::Path,
    limit: u64,
) -> Result<u64, ReceiveError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ReceiveError::Io(e.to_string()))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ReceiveError::Io(e.to_string()))?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ReceiveError::TooLarge);
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ReceiveError::Io(e.to_string()))?;
    }
    file.flush()
        .await
        .map_err(|e| ReceiveError::Io(e.to_string()))?;
    Ok(total)
}

/// `GET /api/v1/jobs/{id}`: a job's state and progress; its failure's cause
/// (FFmpeg's words) only with the admin credential.
async fn job(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match db::get_job(&state.db, &id).await {
        Ok(Some(j)) => {
            let mut v = serde_json::to_value(&j).unwrap_or_default();
            if !is_admin(&state, &headers) {
                if let Some(obj) = v.as_object_mut() {
                    obj.remove("error");
                }
            }
            Json(v).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such job"),
        Err(e) => db_error(e),
    }
}

fn db_error(e: sqlx::Error) -> Response {
    tracing::error!(error = %e, "database");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "database",
        "database error",
    )
}

fn asset_json(state: &State, a: &db::Asset, job: Option<&db::Job>) -> serde_json::Value {
    let edge = state.cfg.public_edge_url.trim_end_matches('/');
    json!({
        "id": a.id, "title": a.title, "status": a.status, "duration": a.duration,
        "error": a.error, "created_at": a.created_at,
        "geo": a.geo,
        "hls": format!("/vod/{}/master.m3u8", a.id),
        "dash": format!("/vod/{}/manifest.mpd", a.id),
        "playback": {
            "hls": format!("{edge}/vod/{}/master.m3u8", a.id),
            "dash": format!("{edge}/vod/{}/manifest.mpd", a.id),
        },
        "job": job,
    })
}

/// What a caller without the admin credential sees of an asset: its id,
/// title, state, length and URLs; never a failure's cause, its country
/// rules or its job. Failed assets are not shown at all.
fn public_asset_json(state: &State, a: &db::Asset) -> serde_json::Value {
    let mut v = asset_json(state, a, None);
    if let Some(obj) = v.as_object_mut() {
        for private in ["error", "geo", "job"] {
            obj.remove(private);
        }
    }
    v
}

/// Whether the caller carries the origin's admin credential.
fn is_admin(state: &State, headers: &HeaderMap) -> bool {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    cascade_common::bearer_matches(auth, &state.cfg.admin_token)
}

/// `GET /api/v1/assets`: every asset for operators (admin credential);
/// for anyone else, the ones that are not failed, without their private
/// fields.
async fn list_assets(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    let admin = is_admin(&state, &headers);
    match db::list_assets(&state.db).await {
        Ok(list) => {
            let items: Vec<_> = list
                .iter()
                .filter(|a| admin || a.status != "failed")
                .map(|a| {
                    if admin {
                        asset_json(&state, a, None)
                    } else {
                        public_asset_json(&state, a)
                    }
                })
                .collect();
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({ "assets": items })),
            )
                .into_response()
        }
        Err(e) => db_error(e),
    }
}

/// `GET /api/v1/assets/{id}`: in full for operators; as in the list for
/// anyone else (a failed asset is not found).
async fn asset(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let admin = is_admin(&state, &headers);
    let a = match db::get_asset(&state.db, &id).await {
        Ok(Some(a)) if admin || a.status != "failed" => a,
        Ok(_) => return error(StatusCode::NOT_FOUND, "not_found", "no such asset"),
        Err(e) => return db_error(e),
    };
    let body = if admin {
        let job = db::job_of_asset(&state.db, &id).await.ok().flatten();
        asset_json(&state, &a, job.as_ref())
    } else {
        public_asset_json(&state, &a)
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// `PUT /api/v1/assets/{id}/geo` (admin): a title's country rules.
async fn set_geo(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(rule): Json<cascade_geo::CountryRule>,
) -> Response {
    if !is_admin(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin credential required",
        );
    }
    let rule = cascade_geo::CountryRule {
        allow: rule.allow.iter().map(|c| c.to_ascii_uppercase()).collect(),
        deny: rule.deny.iter().map(|c| c.to_ascii_uppercase()).collect(),
    };
    if let Err(e) = rule.validate() {
        return error(StatusCode::BAD_REQUEST, "bad_countries", &e);
    }
    match db::set_geo(&state.db, &id, &rule).await {
        Ok(true) => Json(json!({ "asset": id, "geo": rule })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "not_found", "no such asset"),
        Err(e) => db_error(e),
    }
}

/// `GET /mezz/{asset}/{file}`: mezzanine files and the asset manifest, with
/// single byte ranges. Media is immutable once published.
async fn mezzanine(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    Path((asset, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let stem = file
        .strip_suffix(".mp4")
        .or_else(|| file.strip_suffix(".json"))
        .or_else(|| file.strip_suffix(".vtt"));
    if !cascade_packager::is_safe_id(&asset) || !stem.is_some_and(cascade_packager::is_safe_id) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such file");
    }
    // Only published assets: the manifest is written last.
    match db::get_asset(&state.db, &asset).await {
        Ok(Some(a)) if a.status == "ready" => {}
        Ok(_) => return error(StatusCode::NOT_FOUND, "not_found", "no such asset"),
        Err(e) => return db_error(e),
    }
    if file == "meta.json" {
        // Title metadata edges need per request: its country rules.
        return match db::get_asset(&state.db, &asset).await {
            Ok(Some(a)) => (
                [
                    (header::CACHE_CONTROL, metadata_cache_control(&state.cfg)),
                    (header::CONTENT_TYPE, "application/json".to_string()),
                ],
                [("surrogate-key", format!("asset-{asset}"))],
                Json(json!({ "asset": asset, "geo": a.geo })),
            )
                .into_response(),
            Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such asset"),
            Err(e) => db_error(e),
        };
    }
    let path = store::object_path(&asset, &file);
    let meta = match state.store.head(&path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            return error(StatusCode::NOT_FOUND, "not_found", "no such file")
        }
        Err(e) => {
            tracing::error!(error = %e, "reading mezzanine");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                "storage error",
            );
        }
    };
    let size = meta.size;
    let asked = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeRequest::Whole, |v| parse_range(v, size));
    let range = match asked {
        RangeRequest::Whole => None,
        RangeRequest::Part(a, b) => Some((a, b)),
        RangeRequest::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                Json(json!({"error": "bad_range", "message": "the range lies outside the file"})),
            )
                .into_response()
        }
    };
    let (start, end) = range.unwrap_or((0, size));
    let is_manifest = file == "manifest.json";
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, end - start)
        .header("surrogate-key", format!("asset-{asset}"))
        .header(
            header::CONTENT_TYPE,
            if is_manifest {
                "application/json"
            } else if file.ends_with(".vtt") {
                "text/vtt; charset=utf-8"
            } else {
                "video/mp4"
            },
        )
        .header(
            header::CACHE_CONTROL,
            if is_manifest {
                metadata_cache_control(&state.cfg)
            } else {
                "public, max-age=31536000, immutable".to_string()
            },
        );
    builder = if range.is_some() {
        builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        )
    } else {
        builder.status(StatusCode::OK)
    };
    if method == Method::HEAD {
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let opts = GetOptions {
        range: Some(GetRange::Bounded(start..end)),
        ..Default::default()
    };
    let got = match state.store.get_opts(&path, opts).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "reading mezzanine");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                "storage error",
            );
        }
    };
    if !is_manifest {
        state.account_mezzanine(&format!("{asset}/{file}"), start, end);
    }
    builder
        .body(Body::from_stream(got.into_stream()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What a `Range` header asks of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole object (RFC 9110 lets a server ignore
    /// ranges in units it does not know, and lists of ranges).
    Whole,
    /// Bytes `[start, end)`.
    Part(u64, u64),
    /// A byte range that lies outside the object: 416.
    Unsatisfiable,
}

/// Reads a `Range` header against an object of `size` bytes. A list of
/// ranges, another unit or bad syntax gets the whole object (RFC 9110
/// §14.2 lets a server ignore them); one range is clamped to the object.
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    if value.contains(',') {
        return RangeRequest::Whole;
    }
    let Ok(parsed) = http_range_header::parse_range_header(value.trim()) else {
        return RangeRequest::Whole;
    };
    match parsed.validate(size) {
        Ok(spans) => match spans.as_slice() {
            [one] => RangeRequest::Part(*one.start(), one.end().saturating_add(1)),
            // No span: the object is empty, so nothing of it can be sent.
            _ => RangeRequest::Unsatisfiable,
        },
        Err(_) => RangeRequest::Unsatisfiable,
    }
}

/// `Cache-Control` of asset manifests and title metadata: short-lived, with
/// stale windows so shields and edges ride out an origin outage.
fn metadata_cache_control(cfg: &crate::OriginConfig) -> String {
    format!(
        "public, max-age={}, stale-while-revalidate={}, stale-if-error={}",
        cfg.metadata_max_age_secs,
        cfg.metadata_stale_while_revalidate_secs,
        cfg.metadata_stale_if_error_secs
    )
}

#[cfg(test)]
mod tests {
    use super::{parse_range, RangeRequest::*};

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-500", 100), Part(0, 100));
        assert_eq!(parse_range("bytes=95-200", 100), Part(95, 100));
        for ignored in [
            "bytes=0-1,3-4",
            "bytes=200-300,0-1",
            "items=0-1",
            "bytes=a-b",
            "bytes=5-1",
            "bytes",
        ] {
            assert_eq!(parse_range(ignored, 100), Whole, "{ignored}");
        }
        for outside in ["bytes=100-", "bytes=100-200", "bytes=-0"] {
            assert_eq!(parse_range(outside, 100), Unsatisfiable, "{outside}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-10", 0), Unsatisfiable);
    }
}
