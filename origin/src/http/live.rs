//! `GET /live-mezz/{channel}/…`: live media for shields and edges, the
//! live counterpart of `/mezz/`. Requests for what does not exist yet are
//! held until it does (for at most three target durations), so a blocking
//! playlist reload or a preload hint costs one request per tier:
//!
//! - `manifest.json?_HLS_msn=M&_HLS_part=P`: the live manifest once part
//!   `P` of segment `M` exists (without a query: as it stands);
//! - `{track}/init-{g}.mp4`: an init segment;
//! - `{track}/{M}.{P}.m4s`: a part;
//! - `{track}/{M}.m4s`: a segment, streamed part by part as they are made.
//!
//! Errors are [`Plain`], like `/mezz/`'s.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cascade_packager::live::{Blocking, LiveOutput};

use crate::http::error::Plain;
use crate::service::live_media::{ChannelMedia, PartLookup};
use crate::service::state::State;
use crate::storage::Error;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET /live-mezz/{channel}/manifest.json`.
pub(crate) async fn manifest(
    state: AxState<Arc<State>>,
    Path(channel): Path<String>,
    query: RawQuery,
) -> Result<Response, Plain> {
    let r = manifest_inner(state, &channel, query).await;
    Ok(tagged(r?, &channel))
}

async fn manifest_inner(
    AxState(state): AxState<Arc<State>>,
    channel: &str,
    RawQuery(query): RawQuery,
) -> Result<Response, Plain> {
    let media = channel_media(&state, channel)?;
    let kind = if query.as_deref().unwrap_or("").contains("_HLS_msn") {
        "manifest_blocking"
    } else {
        "manifest"
    };
    state.live_media.requests.with_label_values(&[kind]).inc();
    let b = Blocking::from_query(query.as_deref().unwrap_or(""))
        .map_err(|why| Error::bad_request("bad_query", why))?;
    let Some(msn) = b.msn else {
        let (m, json) = media
            .manifest_when(Duration::ZERO, |_| true)
            .await
            .ok_or_else(|| Error::not_found("live stream"))?;
        // The live edge moves every part: shared caches keep it for at most
        // a second (the edges make playlists from it).
        let cc = if m.ended {
            "public, max-age=60"
        } else {
            "public, max-age=1"
        };
        return Ok(json_response(json, cc));
    };
    let current = media
        .manifest()
        .ok_or_else(|| Error::not_found("live stream"))?;
    if let Some((last, _)) = current.last_part() {
        // RFC 8216bis 6.2.5.2: more than two segments ahead is a bad request.
        if msn > last + 2 && !current.ended {
            return Err(
                Error::bad_request("too_far_ahead", "_HLS_msn is beyond the live edge").into(),
            );
        }
    }
    let wait = block_limit(&current);
    match media
        .manifest_when(wait, |m| m.satisfies(msn, b.part))
        .await
    {
        // Any later request for this part gets an answer at least this
        // new: shared caches may keep it (HLS asks for six target durations).
        Some((m, json)) => {
            let cc = format!("public, max-age={}", 6 * m.target_duration());
            Ok(json_response(json, &cc))
        }
        None => Ok(not_yet()),
    }
}

/// `GET /live-mezz/{channel}/meta.json`: the channel's country rules, for
/// the edges' geo fence (as `/mezz/{asset}/meta.json` for a title).
pub(crate) async fn meta(
    AxState(state): AxState<Arc<State>>,
    Path(channel): Path<String>,
) -> Result<Response, Plain> {
    if !cascade_packager::is_safe_id(&channel) {
        return Err(Error::not_found("channel").into());
    }
    let geo = crate::service::channels::country_rule(&state, &channel).await?;
    let protected = crate::service::channels::is_protected(&state, &channel).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CACHE_CONTROL,
                crate::http::mezzanine::metadata_cache_control(&state.cfg),
            ),
        ],
        axum::Json(serde_json::json!({ "geo": geo, "protected": protected })),
    )
        .into_response())
}

/// `GET /live-mezz/{channel}/{track}/{file}`.
pub(crate) async fn media(
    state: AxState<Arc<State>>,
    Path((channel, track, file)): Path<(String, String, String)>,
) -> Result<Response, Plain> {
    let r = media_inner(state, &channel, &track, &file).await;
    Ok(tagged(r?, &channel))
}

async fn media_inner(
    AxState(state): AxState<Arc<State>>,
    channel: &str,
    track: &str,
    file: &str,
) -> Result<Response, Plain> {
    let media = channel_media(&state, channel)?;
    let output =
        LiveOutput::parse(&format!("{track}/{file}")).ok_or_else(|| Error::not_found("file"))?;
    let current = media
        .manifest()
        .ok_or_else(|| Error::not_found("live stream"))?;
    let content_type = output.content_type(Some(&current));
    let kind = match output {
        LiveOutput::Init(..) => "init",
        LiveOutput::Part(..) => "part",
        _ => "segment",
    };
    state.live_media.requests.with_label_values(&[kind]).inc();
    let wait = block_limit(&current);
    match output {
        LiveOutput::Init(t, g) => {
            let bytes = media
                .init(&t, g)
                .ok_or_else(|| Error::not_found("init segment"))?;
            Ok(media_response(Body::from(bytes), content_type))
        }
        LiveOutput::Part(t, msn, part) => match media.part(&t, msn, part, wait).await {
            PartLookup::Found(bytes) => Ok(media_response(Body::from(bytes), content_type)),
            // A part of a segment that is only kept whole now: players ask
            // for parts near the live edge, never this far back.
            PartLookup::Gone | PartLookup::Stored => Err(Error::not_found("part").into()),
            PartLookup::NotYet => Ok(not_yet()),
        },
        LiveOutput::Segment(t, msn) => {
            // The first part decides: a segment that will never exist is a
            // 404, one that has not begun in time a 503.
            let first = match media.part(&t, msn, 0, wait).await {
                PartLookup::Found(b) => b,
                // Older than what RAM keeps: whole, from the media store
                // (the DVR window).
                PartLookup::Stored => {
                    let bytes = media
                        .stored_segment(&t, msn)
                        .await
                        .ok_or_else(|| Error::not_found("segment"))?;
                    return Ok(media_response(Body::from(bytes), content_type));
                }
                PartLookup::Gone => return Err(Error::not_found("segment").into()),
                PartLookup::NotYet => return Ok(not_yet()),
            };
            let stream = segment_stream(media, t, msn, first, wait);
            Ok(media_response(Body::from_stream(stream), content_type))
        }
        _ => Err(Error::not_found("file").into()),
    }
}

/// The parts of a segment, each as soon as it is made, ending with the
/// segment.
fn segment_stream(
    media: Arc<ChannelMedia>,
    track: String,
    msn: u64,
    first: Bytes,
    wait: Duration,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold((Some(first), 1u32, false), move |(ready, next, done)| {
        let (media, track) = (media.clone(), track.clone());
        async move {
            if let Some(b) = ready {
                return Some((Ok(b), (None, next, false)));
            }
            if done {
                return None;
            }
            match media.part(&track, msn, next, wait).await {
                PartLookup::Found(b) => Some((Ok(b), (None, next + 1, false))),
                // No more parts: the segment is complete.
                PartLookup::Gone | PartLookup::Stored => None,
                // A stall longer than the block limit: end the body
                // short, so caches do not keep it (the length is wrong).
                PartLookup::NotYet => Some((
                    Err(std::io::Error::other("the segment stalled")),
                    (None, next, true),
                )),
            }
        }
    })
}

fn channel_media(state: &State, channel: &str) -> Result<Arc<ChannelMedia>, Plain> {
    if !cascade_packager::is_safe_id(channel) {
        return Err(Error::not_found("live stream").into());
    }
    state
        .live_media
        .channel(channel)
        .ok_or_else(|| Error::not_found("live stream").into())
}

/// How long a request may wait for what it asks: three target durations.
fn block_limit(m: &cascade_packager::live::LiveManifest) -> Duration {
    Duration::from_secs(3 * m.target_duration())
}

/// Tags what caches keep of a channel (`Surrogate-Key: live-{name}`), so
/// `cascade ctl purge --tag live-{name}` clears it from shields and edges.
fn tagged(mut r: Response, channel: &str) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("live-{channel}")) {
        r.headers_mut().insert("surrogate-key", v);
    }
    r
}

fn json_response(json: Bytes, cache_control: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CACHE_CONTROL, cache_control.to_string()),
        ],
        json,
    )
        .into_response()
}

fn media_response(body: Body, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, IMMUTABLE),
        ],
        body,
    )
        .into_response()
}

/// What was waited for did not come in time; caches must not keep this.
fn not_yet() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::RETRY_AFTER, "1"),
        ],
        "not available yet\n",
    )
        .into_response()
}
