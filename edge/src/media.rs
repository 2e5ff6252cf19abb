//! Media on a miss (the produce phase for `/vod/`): the asset manifest,
//! mezzanine ranges through the shields, packaging, storing. Also the
//! media cache key, and the fetch order (the object's shield, the others,
//! then the origin).

use std::sync::Arc;

use bytes::Bytes;
use cascade_cache::CachedObject;
use cascade_packager::{
    is_safe_id, package, package_protected, protected_sources, with_query, AssetManifest, Drm,
    Output, ProtectedOutput, View,
};
use cascade_serve::{
    cached_response, set_cache_status, unix_now_ms, CacheOutcome, CacheTier, Response,
    UpstreamError, UpstreamResponse,
};
use cascade_watermark::Variant;
use http::StatusCode;

use crate::{shields, CACHE_NAME};

/// Packaged media never changes for a published title.
const MEDIA_TTL: u64 = 365 * 24 * 3600;
/// Parsed asset manifests kept in RAM.
pub(crate) const MANIFEST_ENTRIES: u64 = 10_000;
/// How long a playlist may stand in for a fresh one while every upstream
/// fails: a day, so viewers keep watching through an origin outage.
const MANIFEST_STALE_IF_ERROR: u32 = 24 * 3600;

/// The part of the edge that makes media on a miss; cheap to clone into
/// the task of a coalesced fetch.
#[derive(Clone)]
pub(crate) struct Media {
    pub(crate) tier: CacheTier,
    pub(crate) pool: Arc<shields::ShieldPool>,
    pub(crate) manifests: moka::future::Cache<String, Arc<AssetManifest>>,
    pub(crate) manifest_ttl: u64,
    /// Live parts, segments and init segments: passed through as they
    /// arrive (a growing segment streams to every waiter), coalesced and
    /// cached, from the shields in order, then the origin.
    pub(crate) live: cascade_serve::CachingFetcher,
}

impl Media {
    /// The cache key of a packaged output: the path and the canonical query
    /// of the part of the view the output depends on (manifests only):
    /// never the token or other query parameters.
    pub(crate) fn key(path: &str, output: &Output, view: &View) -> String {
        let canonical = output.relevant_view(view).canonical();
        if canonical.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{canonical}")
        }
    }

    /// A packaged output by its path (`/vod/{asset}/…`, already checked) as
    /// `view` shows it: from cache, or made once however many viewers ask
    /// at once.
    pub(crate) async fn get(
        &self,
        path: &str,
        output: &Output,
        view: &View,
        request_id: &str,
    ) -> Response {
        let key = Media::key(path, output, view);
        // A hit needs none of the fill's clones.
        if let Some(hit) = self.tier.fresh_hit(&key).await {
            return hit;
        }
        self.fill(&key, path, output, view, Variant::A, request_id)
            .await
    }

    /// The answer on a miss for `key`: stale where allowed, else one
    /// packaging run however many viewers ask at once.
    pub(crate) async fn fill(
        &self,
        key: &str,
        path: &str,
        output: &Output,
        view: &View,
        variant: Variant,
        request_id: &str,
    ) -> Response {
        let Some((asset, _)) = path["/vod/".len()..].split_once('/') else {
            return not_found();
        };
        let media = self.clone();
        let view = output.relevant_view(view);
        let (a, o, k, rid) = (
            asset.to_string(),
            output.clone(),
            key.to_string(),
            request_id.to_string(),
        );
        self.tier
            .serve(key, move || async move {
                media.miss(&a, &o, &view, &k, &rid, variant, None).await
            })
            .await
    }

    /// The same for an output of a protected title: encrypted (or its
    /// manifests signalled) with `drm`'s keys.
    // The request's parts, each needed on the miss; a struct of them would
    // only be unpacked again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fill_protected(
        &self,
        key: &str,
        path: &str,
        output: &ProtectedOutput,
        drm: Arc<Drm>,
        view: &View,
        variant: Variant,
        request_id: &str,
    ) -> Response {
        let Some((asset, _)) = path["/vod/".len()..].split_once('/') else {
            return not_found();
        };
        let media = self.clone();
        let view = output.output.relevant_view(view);
        let (a, o, k, rid) = (
            asset.to_string(),
            output.clone(),
            key.to_string(),
            request_id.to_string(),
        );
        self.tier
            .serve(key, move || async move {
                let inner = o.output.clone();
                media
                    .miss(&a, &inner, &view, &k, &rid, variant, Some((&o, &drm)))
                    .await
            })
            .await
    }

    /// Makes an output on a cache miss: manifest, mezzanine ranges, package,
    /// store. `variant` B takes a watermarked title's segments from its B
    /// copy.
    // As `fill_protected`.
    #[allow(clippy::too_many_arguments)]
    async fn miss(
        &self,
        asset: &str,
        output: &Output,
        view: &View,
        key: &str,
        request_id: &str,
        variant: Variant,
        protected: Option<(&ProtectedOutput, &Drm)>,
    ) -> Response {
        let req_id = request_id;
        let started_ms = unix_now_ms();
        let now = started_ms / 1000;
        let manifest = match variant {
            Variant::A => self.manifest(asset, req_id).await,
            Variant::B => self.manifest_b(asset, req_id).await,
        };
        let manifest = match manifest {
            Ok(m) => m,
            Err(r) => return r,
        };
        let mut upstream_status = None;
        let sources = match protected {
            Some((p, _)) => protected_sources(&manifest, p),
            None => output.sources(&manifest),
        };
        let sources = match sources {
            Ok(s) => s,
            Err(_) => return not_found(),
        };
        // A TS segment needs four ranges (two inits, two fragments): fetched
        // at once; each goes through the shields and their caches.
        let fetches = sources.iter().map(|src| {
            let mezz = format!("/mezz/{asset}/{}", src.file);
            let range = src.range.http_range();
            async move { self.fetch_media(&mezz, Some(&range), req_id).await }
        });
        let mut parts = Vec::with_capacity(sources.len());
        for r in futures::future::join_all(fetches).await {
            match r {
                Ok(r) if r.status == StatusCode::PARTIAL_CONTENT => {
                    if upstream_status.is_none() {
                        upstream_status = header_str(&r, "cache-status");
                    }
                    parts.push(r.body);
                }
                Ok(r) => return upstream_failure(r.status),
                Err(r) => return r,
            }
        }
        let slices: Vec<&[u8]> = parts.iter().map(|b| b.as_ref()).collect();
        let packaged = match protected {
            Some((p, drm)) => package_protected(&manifest, p, view, &slices, drm),
            None => package(&manifest, output, view, &slices),
        };
        let body = match packaged {
            Ok(b) => Bytes::from(b),
            Err(cascade_packager::Error::Protected) => return protected_refusal(),
            Err(e @ cascade_packager::Error::EmptyView(_)) => {
                return Response::error(StatusCode::NOT_FOUND, "no_rendition", &e.to_string());
            }
            Err(cascade_packager::Error::NotFound) => return not_found(),
            Err(e) => {
                tracing::error!(request_id = %req_id, error = %e, key, "packaging failed");
                return Response::error(
                    StatusCode::BAD_GATEWAY,
                    "packaging",
                    "the mezzanine could not be packaged",
                );
            }
        };
        let (ttl, stale_while_revalidate, stale_if_error) = if output.is_manifest() {
            let ttl = u32::try_from(self.manifest_ttl).unwrap_or(u32::MAX);
            (self.manifest_ttl, ttl, MANIFEST_STALE_IF_ERROR)
        } else {
            (MEDIA_TTL, 0, 0)
        };
        let cache_control = if output.is_manifest() {
            format!("public, max-age={}", self.manifest_ttl.min(60))
        } else {
            "public, max-age=31536000, immutable".to_string()
        };
        let obj = CachedObject {
            status: 200,
            headers: vec![
                (
                    "content-type".into(),
                    output.content_type(Some(&manifest)).into(),
                ),
                ("cache-control".into(), cache_control),
                ("surrogate-key".into(), format!("asset-{asset}")),
            ],
            body,
            stored_at_ms: started_ms,
            fresh_until: now.saturating_add(ttl),
            stale_while_revalidate,
            stale_if_error,
        };
        let stored = self.tier.store(key, &obj).await;
        let mut r = from_cache(&obj, CacheOutcome::Miss { stored });
        set_cache_status(
            &mut r.headers,
            upstream_status.as_deref(),
            &CacheOutcome::Miss { stored }.entry(CACHE_NAME),
        );
        r
    }

    /// The parsed asset manifest, from RAM or fetched through the shields.
    pub(crate) async fn manifest(
        &self,
        asset: &str,
        request_id: &str,
    ) -> Result<Arc<AssetManifest>, Response> {
        if let Some(m) = self.manifests.get(asset).await {
            return Ok(m);
        }
        let path = format!("/mezz/{asset}/manifest.json");
        let r = self.fetch_media(&path, None, request_id).await?;
        if r.status == StatusCode::NOT_FOUND {
            return Err(not_found());
        }
        if r.status != StatusCode::OK {
            return Err(upstream_failure(r.status));
        }
        let m = AssetManifest::from_json(&r.body).map_err(|e| {
            tracing::error!(request_id, asset, error = %e, "bad asset manifest");
            Response::error(
                StatusCode::BAD_GATEWAY,
                "bad_manifest",
                "the asset manifest is unreadable",
            )
        })?;
        if m.asset != asset {
            return Err(Response::error(
                StatusCode::BAD_GATEWAY,
                "bad_manifest",
                "the asset manifest names another asset",
            ));
        }
        let m = Arc::new(m);
        self.manifests.insert(asset.to_string(), m.clone()).await;
        Ok(m)
    }

    /// The manifest that serves a watermarked title's variant B (its marked
    /// tracks' B copies), made once from the title's and kept beside it.
    /// 404 for a title that is not watermarked.
    pub(crate) async fn manifest_b(
        &self,
        asset: &str,
        request_id: &str,
    ) -> Result<Arc<AssetManifest>, Response> {
        let key = format!("{asset}#b");
        if let Some(m) = self.manifests.get(&key).await {
            return Ok(m);
        }
        let Some(b) = self.manifest(asset, request_id).await?.variant_b() else {
            return Err(not_found());
        };
        let b = Arc::new(b);
        self.manifests.insert(key, b.clone()).await;
        Ok(b)
    }

    /// Fetches from the object's shield, then the others, then the origin.
    pub(crate) async fn fetch_media(
        &self,
        path: &str,
        range: Option<&str>,
        request_id: &str,
    ) -> Result<UpstreamResponse, Response> {
        let mut last: Option<UpstreamError> = None;
        let mut last_answer = None;
        for (index, up) in self.pool.order(path) {
            match up.get(path, range, request_id).await {
                Ok(r) if r.status.is_server_error() => {
                    tracing::warn!(
                        upstream = up.base(),
                        status = r.status.as_u16(),
                        request_id,
                        "upstream error, trying next"
                    );
                    last_answer = Some(r);
                }
                Ok(r) => return Ok(r),
                Err(e) if e.retryable() => {
                    tracing::warn!(upstream = up.base(), error = %e, request_id, "upstream unreachable, trying next");
                    if let Some(i) = index {
                        self.pool.failed(i);
                    }
                    last = Some(e);
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        if let Some(r) = last_answer {
            return Ok(r);
        }
        let (status, code) = match last {
            Some(UpstreamError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
        };
        Err(Response::error(status, code, "no upstream could answer"))
    }
}

fn from_cache(obj: &CachedObject, outcome: CacheOutcome) -> Response {
    cached_response(obj, outcome, CACHE_NAME)
}

/// Writes the viewer's token into the child URLs of a playlist or MPD
/// that was made (never into an error body).
pub(crate) fn tokenize(mut r: Response, output: &Output, token_query: Option<&str>) -> Response {
    let Some(q) = token_query else {
        return r;
    };
    if output.is_manifest() && r.status == StatusCode::OK {
        r.body = Bytes::from(with_query(output, &r.body, q));
        // A tokenised playlist is the viewer's own: shared caches must not keep it.
        r.headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("private, max-age=60"),
        );
    }
    r
}

/// The packager output a `/vod/{asset}/…` path names, with the scheme
/// directory (`cbcs/`, `cenc/`) of a protected title's outputs.
pub(crate) fn protected_output(path: &str) -> Option<ProtectedOutput> {
    let (asset, rest) = path.strip_prefix("/vod/")?.split_once('/')?;
    is_safe_id(asset)
        .then(|| ProtectedOutput::parse(rest))
        .flatten()
}

/// 403 for a watermarked title's segment asked for with a token that
/// carries no session mark (only the playback API's tokens do).
pub(crate) fn unmarked_refusal() -> Response {
    Response::error(
        StatusCode::FORBIDDEN,
        "watermark",
        "this title is watermarked: play it through the playback API",
    )
}

/// 403 for the clear media of a protected title.
pub(crate) fn protected_refusal() -> Response {
    Response::error(
        StatusCode::FORBIDDEN,
        "protected",
        "this title is served encrypted only: play it from its manifests with a license",
    )
}

/// The packager output a `/vod/{asset}/…` path names.
pub(crate) fn media_output(path: &str) -> Option<Output> {
    let (asset, rest) = path.strip_prefix("/vod/")?.split_once('/')?;
    is_safe_id(asset).then(|| Output::parse(rest)).flatten()
}

fn header_str(r: &UpstreamResponse, name: &str) -> Option<String> {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(crate) fn not_found() -> Response {
    Response::error(StatusCode::NOT_FOUND, "not_found", "no such title or file")
}

fn upstream_failure(status: StatusCode) -> Response {
    if status == StatusCode::NOT_FOUND {
        return not_found();
    }
    Response::error(
        StatusCode::BAD_GATEWAY,
        "upstream_status",
        &format!("upstream answered {status}"),
    )
}
