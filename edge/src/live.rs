//! Live media on a miss (the produce phase for `/live/`): playlists and the
//! MPD made just in time from the live manifest, and parts, segments and
//! init segments passed through, all through the shields.
//!
//! A blocking playlist request (`_HLS_msn`, `_HLS_part`) asks upstream for
//! the manifest with the same two numbers, so every viewer waiting for one
//! part, on every rendition, shares one request per tier: here (the cache
//! tier's coalescing, keyed by path and the canonical query), at the shield
//! (keyed by path and query) and at the origin, which answers the moment
//! the part exists. Parts and preload hints work the same way.

use bytes::Bytes;
use cascade_cache::CachedObject;
use cascade_packager::live::{self, Blocking, LiveManifest, LiveOutput};
use cascade_serve::{set_cache_status, unix_now_ms, CacheOutcome, Response};
use http::StatusCode;

use std::sync::Arc;

use cascade_packager::live_protect::LiveKeys;

use crate::media::{not_found, Media};
use crate::protection::Protection;
use crate::CACHE_NAME;

/// What a `/live/{channel}/…` path names, if anything.
pub(crate) fn live_output(path: &str) -> Option<(String, Option<LiveOutput>)> {
    let rest = path.strip_prefix("/live/")?;
    let (channel, rest) = rest.split_once('/')?;
    if !cascade_packager::is_safe_id(channel) {
        return None;
    }
    Some((channel.to_string(), LiveOutput::parse(rest)))
}

/// A `/live/{channel}/ad/…` path: an ad's media in a session's live
/// playlists.
pub(crate) fn live_ad(path: &str) -> Option<(String, crate::ads::AdPath)> {
    let rest = path.strip_prefix("/live/")?;
    let (channel, rest) = rest.split_once('/')?;
    if !cascade_packager::is_safe_id(channel) {
        return None;
    }
    Some((channel.to_string(), crate::ads::AdPath::parse(rest)?))
}

/// The cache key of a live output: the path, and for playlists the
/// canonical blocking query (never the token).
pub(crate) fn live_key(path: &str, output: &LiveOutput, b: &Blocking) -> String {
    if *output == LiveOutput::TsMultivariant {
        return format!("{path}?format=ts");
    }
    let q = b.canonical();
    if output.is_manifest() && !q.is_empty() {
        format!("{path}?{q}")
    } else {
        path.to_string()
    }
}

impl Media {
    /// A live output on a miss for `key`: one fetch however many viewers ask.
    pub(crate) async fn live_fill(
        &self,
        key: &str,
        channel: &str,
        output: &LiveOutput,
        b: Blocking,
        request_id: &str,
    ) -> Response {
        // Media has its own coalescing, streaming fetcher; a TS segment is
        // made here from the fMP4 ones.
        if !output.is_manifest() && !matches!(output, LiveOutput::TsSegment(..)) {
            return self.live_media(channel, output, key, request_id).await;
        }
        let media = self.clone();
        let (c, o, k, rid) = (
            channel.to_string(),
            output.clone(),
            key.to_string(),
            request_id.to_string(),
        );
        self.tier
            .serve(key, move || async move {
                media.live_miss(&c, &o, b, &k, &rid, None).await
            })
            .await
    }

    /// A protected channel's output on a miss for `key` (playlists with
    /// their keys, init segments, parts and segments encrypted just in
    /// time under their key period's key), made once however many viewers
    /// ask. Only HLS in fMP4: the clear init segments, the MPD and the TS
    /// variants are refused.
    pub(crate) async fn live_protected_fill(
        &self,
        key: &str,
        channel: &str,
        output: &LiveOutput,
        b: Blocking,
        protection: Arc<Protection>,
        request_id: &str,
    ) -> Response {
        match output {
            LiveOutput::Init(..) => return crate::media::protected_refusal(),
            LiveOutput::Mpd
            | LiveOutput::TsMultivariant
            | LiveOutput::TsPlaylist(..)
            | LiveOutput::TsSegment(..) => {
                return Response::error(
                    StatusCode::NOT_FOUND,
                    "protected_hls_only",
                    "a protected channel plays over HLS in fMP4 (master.m3u8) only",
                )
            }
            _ => {}
        }
        let media = self.clone();
        let (c, o, k, rid) = (
            channel.to_string(),
            output.clone(),
            key.to_string(),
            request_id.to_string(),
        );
        self.tier
            .serve(key, move || async move {
                match &o {
                    LiveOutput::Multivariant | LiveOutput::Media(_) => {
                        media
                            .live_miss(&c, &o, b, &k, &rid, Some(&protection))
                            .await
                    }
                    _ => {
                        media
                            .live_protected_media(&c, &o, &k, &protection, &rid)
                            .await
                    }
                }
            })
            .await
    }

    /// A protected channel's init segment, part or segment: the clear bytes
    /// through the shields, the segment's key period from the manifest
    /// (asked to wait until the segment is listed), encrypted, kept.
    async fn live_protected_media(
        &self,
        channel: &str,
        output: &LiveOutput,
        key: &str,
        protection: &Protection,
        request_id: &str,
    ) -> Response {
        let started_ms = unix_now_ms();
        let base = format!("/live-mezz/{channel}");
        let get = |path: String| async move {
            match self.fetch_media(&path, None, request_id).await {
                Ok(r) if r.status == StatusCode::OK => Ok(r.body),
                Ok(r) => Err(passthrough_error(
                    r.status,
                    r.headers.get(http::header::RETRY_AFTER),
                )),
                Err(r) => Err(r),
            }
        };
        let made = match output {
            LiveOutput::KeyedInit(t, g, period) => {
                let clear = match get(format!("{base}/{t}/init-{g}.mp4")).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let keys = match protection.live_keys(channel, &[*period], request_id).await {
                    Ok(k) => k,
                    Err(r) => return r,
                };
                keys.init(&clear, *period)
            }
            LiveOutput::Segment(t, msn) | LiveOutput::Part(t, msn, _) => {
                let (file, part) = match output {
                    LiveOutput::Part(_, _, p) => (format!("{t}/{msn}.{p}.m4s"), Some(*p)),
                    _ => (format!("{t}/{msn}.m4s"), None),
                };
                let bytes = match get(format!("{base}/{file}")).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                // The bytes exist, so the manifest that lists them comes at once.
                let wait = Blocking {
                    msn: Some(*msn),
                    part,
                    skip: false,
                }
                .canonical();
                let m = match get(format!("{base}/manifest.json?{wait}")).await {
                    Ok(b) => match LiveManifest::from_json(&b) {
                        Ok(m) => m,
                        Err(_) => return not_found(),
                    },
                    Err(r) => return r,
                };
                let Some(seg) = m.segment(*msn) else {
                    return not_found();
                };
                let setup = match protection.live_setup(channel, request_id).await {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                let period =
                    cascade_packager::live_protect::key_period(setup.period_secs, seg.pdt_ms);
                let keys = match protection.live_keys(channel, &[period], request_id).await {
                    Ok(k) => k,
                    Err(r) => return r,
                };
                let init = match get(format!("{base}/{t}/init-{}.mp4", seg.init)).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                keys.media(&init, &bytes, period, *msn)
            }
            _ => return not_found(),
        };
        let body = match made {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(request_id, channel, error = %e, "encrypting live media");
                return Response::error(
                    StatusCode::BAD_GATEWAY,
                    "packaging",
                    "the live media could not be encrypted",
                );
            }
        };
        self.store_immutable(key, channel, output.content_type(None), body, started_ms)
            .await
    }

    /// Stores a live object that never changes (a TS or encrypted segment,
    /// an init segment) and answers it.
    async fn store_immutable(
        &self,
        key: &str,
        channel: &str,
        content_type: &str,
        body: Bytes,
        started_ms: u64,
    ) -> Response {
        let obj = CachedObject {
            status: 200,
            headers: vec![
                ("content-type".into(), content_type.into()),
                (
                    "cache-control".into(),
                    "public, max-age=31536000, immutable".into(),
                ),
                ("surrogate-key".into(), format!("live-{channel}")),
            ],
            body,
            stored_at_ms: started_ms,
            fresh_until: (started_ms / 1000).saturating_add(365 * 24 * 3600),
            stale_while_revalidate: 0,
            stale_if_error: 0,
        };
        let stored = self.tier.store(key, &obj).await;
        cascade_serve::cached_response(&obj, CacheOutcome::Miss { stored }, CACHE_NAME)
    }

    async fn live_miss(
        &self,
        channel: &str,
        output: &LiveOutput,
        b: Blocking,
        key: &str,
        request_id: &str,
        protection: Option<&Protection>,
    ) -> Response {
        let started_ms = unix_now_ms();
        let now = started_ms / 1000;
        if let LiveOutput::TsSegment(v, a, msn) = output {
            return self
                .ts_segment(channel, v, a, *msn, key, request_id, started_ms)
                .await;
        }
        // The manifest as the request needs it: blocking numbers only (a
        // delta update is made here from the whole manifest).
        let upstream_query = Blocking { skip: false, ..b }.canonical();
        let mut path = format!("/live-mezz/{channel}/manifest.json");
        if !upstream_query.is_empty() {
            path = format!("{path}?{upstream_query}");
        }
        let r = match self.fetch_media(&path, None, request_id).await {
            Ok(r) => r,
            Err(r) => return r,
        };
        if r.status != StatusCode::OK {
            return passthrough_error(r.status, r.headers.get(http::header::RETRY_AFTER));
        }
        let m = match LiveManifest::from_json(&r.body) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(request_id, channel, error = %e, "bad live manifest");
                return Response::error(
                    StatusCode::BAD_GATEWAY,
                    "bad_manifest",
                    "the live manifest is unreadable",
                );
            }
        };
        // A protected channel: its keys for the periods in the window and
        // the next one.
        let keys = match protection {
            Some(p) => {
                let setup = match p.live_setup(channel, request_id).await {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                let periods = LiveKeys::periods_needed(setup.period_secs, &m);
                match p.live_keys(channel, &periods, request_id).await {
                    Ok(k) => Some(k),
                    Err(r) => return r,
                }
            }
            None => None,
        };
        let made = match (output, &keys) {
            (LiveOutput::Multivariant, Some(k)) => k.multivariant(&m),
            (LiveOutput::Media(track), Some(k)) => live::protected_media_playlist(&m, track, b, k),
            (_, Some(_)) => Err(cascade_packager::Error::NotFound),
            (output, None) => match output {
                LiveOutput::Multivariant => live::multivariant(&m),
                LiveOutput::Media(track) => live::media_playlist(&m, track, b),
                LiveOutput::TsMultivariant => live::ts_multivariant(&m),
                LiveOutput::TsPlaylist(v, a) => live::ts_playlist(&m, v, a),
                _ => {
                    let window = m
                        .segments
                        .first()
                        .zip(m.segments.last())
                        .map_or(0, |(f, l)| {
                            (l.start + live::segment_duration(l) - f.start) / 90_000
                        });
                    live::mpd(&m, started_ms, window, "/live/time")
                }
            },
        };
        let body = match made {
            Ok(text) => Bytes::from(text),
            Err(cascade_packager::Error::NotFound) => return not_found(),
            Err(e) => {
                return Response::error(StatusCode::NOT_FOUND, "not_live", &e.to_string());
            }
        };
        // RFC 8216bis: a blocking answer may be kept (any later request for
        // the same part gets one at least as new); the live edge may not.
        let (ttl, cache_control) = if m.ended {
            (60, "public, max-age=60".to_string())
        } else if b.msn.is_some() {
            let t = 6 * m.target_duration();
            (t, format!("public, max-age={t}"))
        } else {
            (0, "public, max-age=1".to_string())
        };
        let obj = CachedObject {
            status: 200,
            headers: vec![
                ("content-type".into(), output.content_type(Some(&m)).into()),
                ("cache-control".into(), cache_control),
                ("surrogate-key".into(), format!("live-{channel}")),
            ],
            body,
            stored_at_ms: started_ms,
            fresh_until: now.saturating_add(ttl),
            stale_while_revalidate: 0,
            stale_if_error: 0,
        };
        let stored = ttl > 0 && self.tier.store(key, &obj).await;
        let mut resp =
            cascade_serve::cached_response(&obj, CacheOutcome::Miss { stored }, CACHE_NAME);
        set_cache_status(
            &mut resp.headers,
            r.headers.get("cache-status").and_then(|v| v.to_str().ok()),
            &CacheOutcome::Miss { stored }.entry(CACHE_NAME),
        );
        resp
    }

    /// An MPEG-TS segment for legacy players: the video and audio segments
    /// (complete ones only) muxed together, made once and kept.
    #[allow(clippy::too_many_arguments)]
    async fn ts_segment(
        &self,
        channel: &str,
        video: &str,
        audio: &str,
        msn: u64,
        key: &str,
        request_id: &str,
        started_ms: u64,
    ) -> Response {
        let m = match self
            .fetch_media(
                &format!("/live-mezz/{channel}/manifest.json"),
                None,
                request_id,
            )
            .await
        {
            Ok(r) if r.status == StatusCode::OK => match LiveManifest::from_json(&r.body) {
                Ok(m) => m,
                Err(_) => return not_found(),
            },
            Ok(r) => return passthrough_error(r.status, r.headers.get(http::header::RETRY_AFTER)),
            Err(r) => return r,
        };
        let Some(seg) = m.segment(msn).filter(|s| s.complete) else {
            return not_found();
        };
        let g = seg.init;
        let paths = [
            format!("/live-mezz/{channel}/{video}/init-{g}.mp4"),
            format!("/live-mezz/{channel}/{video}/{msn}.m4s"),
            format!("/live-mezz/{channel}/{audio}/init-{g}.mp4"),
            format!("/live-mezz/{channel}/{audio}/{msn}.m4s"),
        ];
        let fetched =
            futures::future::join_all(paths.iter().map(|p| self.fetch_media(p, None, request_id)))
                .await;
        let mut bodies = Vec::with_capacity(4);
        for r in fetched {
            match r {
                Ok(r) if r.status == StatusCode::OK => bodies.push(r.body),
                Ok(r) => {
                    return passthrough_error(r.status, r.headers.get(http::header::RETRY_AFTER))
                }
                Err(r) => return r,
            }
        }
        let body = match live::ts_segment(&bodies[0], &bodies[1], &bodies[2], &bodies[3]) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(request_id, channel, msn, error = %e, "muxing a live TS segment");
                return Response::error(
                    StatusCode::BAD_GATEWAY,
                    "packaging",
                    "the live segment could not be muxed",
                );
            }
        };
        self.store_immutable(key, channel, "video/mp2t", body, started_ms)
            .await
    }

    /// Init segments, parts and segments, passed through as their bytes
    /// arrive (a segment still growing at the origin streams to every
    /// viewer waiting for it) and kept by the upstream's `Cache-Control`
    /// (immutable).
    async fn live_media(
        &self,
        channel: &str,
        output: &LiveOutput,
        key: &str,
        request_id: &str,
    ) -> Response {
        let file = match output {
            LiveOutput::Init(t, g) => format!("{t}/init-{g}.mp4"),
            LiveOutput::Segment(t, msn) => format!("{t}/{msn}.m4s"),
            LiveOutput::Part(t, msn, p) => format!("{t}/{msn}.{p}.m4s"),
            _ => return not_found(),
        };
        let path = format!("/live-mezz/{channel}/{file}");
        let r = self.live.get_keyed(key, &path, None, request_id).await;
        if r.status == StatusCode::OK {
            return r;
        }
        let retry = r.headers.get(http::header::RETRY_AFTER).cloned();
        passthrough_error(r.status, retry.as_ref())
    }
}

/// An upstream's refusal as the viewer should see it: 404 stays 404, a part
/// that did not come in time is 503 with `Retry-After`, the rest 502.
pub(crate) fn passthrough_error(
    status: StatusCode,
    retry_after: Option<&http::HeaderValue>,
) -> Response {
    match status {
        StatusCode::NOT_FOUND => not_found(),
        StatusCode::BAD_REQUEST => Response::error(
            StatusCode::BAD_REQUEST,
            "bad_blocking_request",
            "_HLS_msn is beyond the live edge",
        ),
        StatusCode::SERVICE_UNAVAILABLE => {
            let mut r = Response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_yet",
                "not available yet; retry",
            );
            r.headers.insert(
                http::header::RETRY_AFTER,
                retry_after
                    .cloned()
                    .unwrap_or(http::HeaderValue::from_static("1")),
            );
            r.headers.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            r
        }
        s => Response::error(
            StatusCode::BAD_GATEWAY,
            "upstream_status",
            &format!("upstream answered {s}"),
        ),
    }
}

/// `GET /live/time`: the edge's clock for DASH players (`UTCTiming`,
/// `urn:mpeg:dash:utc:http-iso:2014`), never cached.
pub(crate) fn time_response() -> Response {
    let mut r = Response::new(
        StatusCode::OK,
        "text/plain",
        Bytes::from(live::iso_time(unix_now_ms())),
    );
    r.headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    cascade_serve::add_cors(&mut r.headers);
    r
}
