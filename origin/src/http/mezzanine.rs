//! `GET /mezz/{asset}/{file}`: mezzanine files, the asset manifest and
//! title metadata for shields and edges, with single byte ranges. Media is
//! immutable once published. Errors here are [`Plain`], like the proxy
//! tiers', so caches in front apply their own rules.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::config::OriginConfig;
use crate::http::error::Plain;
use crate::service::assets;
use crate::service::state::State;
use crate::storage::{Error, Kind};

/// What a `Range` header asks of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    /// No usable range: send the whole object (RFC 9110 lets a server ignore
    /// ranges in units it does not know, and lists of ranges).
    Whole,
    /// Bytes `[start, end)`.
    Part(u64, u64),
    /// A byte range that lies outside the object: 416.
    Unsatisfiable,
}

/// Mezzanine files and the asset manifest of published assets, and their
/// title metadata (`meta.json`).
pub(crate) async fn mezzanine(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    Path((asset, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Plain> {
    let stem = file
        .strip_suffix(".mp4")
        .or_else(|| file.strip_suffix(".json"))
        .or_else(|| file.strip_suffix(".vtt"));
    if !cascade_packager::is_safe_id(&asset) || !stem.is_some_and(cascade_packager::is_safe_id) {
        return Err(Error::not_found("file").into());
    }
    // Only published assets: the manifest is written last.
    assets::published(&state, &asset).await?;
    if file == "meta.json" {
        // Title metadata edges need per request: its country rules.
        let meta = assets::meta(&state, &asset).await?;
        return Ok((
            [
                (header::CACHE_CONTROL, metadata_cache_control(&state.cfg)),
                (header::CONTENT_TYPE, "application/json".to_string()),
            ],
            [("surrogate-key", format!("asset-{asset}"))],
            Json(meta),
        )
            .into_response());
    }
    let file_meta = assets::file_meta(&state, &asset, &file).await?;
    let size = file_meta.size;
    let is_manifest = file == "manifest.json";
    let cache_control = if is_manifest {
        metadata_cache_control(&state.cfg)
    } else {
        "public, max-age=31536000, immutable".to_string()
    };
    // A shield revalidating a stale copy (the asset manifest, every minute)
    // gets a 304 and keeps its bytes.
    if let Some(etag) = &file_meta.etag {
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .map(|t| t.trim().trim_start_matches("W/"))
                    .any(|t| t == "*" || t == etag)
            });
        if matches {
            return Ok(Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header(header::ETAG, etag.as_str())
                .header(header::CACHE_CONTROL, cache_control)
                .header("surrogate-key", format!("asset-{asset}"))
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
        }
    }
    let asked = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeRequest::Whole, |v| parse_range(v, size));
    let range = match asked {
        RangeRequest::Whole => None,
        RangeRequest::Part(a, b) => Some((a, b)),
        RangeRequest::Unsatisfiable => {
            let mut r = Plain(Error::new(
                Kind::Unsatisfiable,
                "bad_range",
                "the range lies outside the file",
            ))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let (start, end) = range.unwrap_or((0, size));
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
        .header(header::CACHE_CONTROL, cache_control);
    if let Some(etag) = &file_meta.etag {
        builder = builder.header(header::ETAG, etag.as_str());
    }
    builder = if range.is_some() {
        builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        )
    } else {
        builder.status(StatusCode::OK)
    };
    if method == Method::HEAD {
        return Ok(builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    }
    let got = assets::read(&state, &asset, &file, start, end).await?;
    if !is_manifest {
        state.account_mezzanine(&format!("{asset}/{file}"), start, end);
    }
    Ok(builder
        .body(Body::from_stream(got.into_stream()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Reads a `Range` header against an object of `size` bytes. A list of
/// ranges, another unit or bad syntax gets the whole object (RFC 9110
/// §14.2 lets a server ignore them); one range is clamped to the object.
pub(crate) fn parse_range(value: &str, size: u64) -> RangeRequest {
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
pub(crate) fn metadata_cache_control(cfg: &OriginConfig) -> String {
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
