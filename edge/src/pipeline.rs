//! The edge's request pipeline: each phase of [`Pipeline`] for the edge,
//! and the per-request context they fill in. The phase chart is in
//! `docs/architecture.md`.
//!
//! | phase           | `/vod/…` media                          | `/api/…` | `/fleet/…` | anything else |
//! |-----------------|-----------------------------------------|----------|------------|---------------|
//! | route           | normalised path, output named, preflight| yes      | yes        | yes           |
//! | authorize       | token (query, cookie, header)           | open     | in produce | open paths    |
//! | admit           | geo fence (451)                         |          |            |               |
//! | cache key       | path + canonical view (never the token) |          |            |               |
//! | lookup          | fresh hit in RAM or disk                |          |            |               |
//! | produce         | shields → manifest, ranges → package    | origin   | purge/warm | RFC 9111 cache|
//! | response filter | token in child URLs, range, CORS        |          |            |               |

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use cascade_packager::live::{Blocking, LiveOutput};
use cascade_packager::{
    is_safe_id, live_with_query, Drm, Output, Profile, ProtectedOutput, Scheme, View,
};
use cascade_serve::{
    add_cors, apply_range, cors_preflight, Delivered, Pipeline, Request, Response, Step, Upstream,
};
use cascade_token::normalize_path;
use http::{Method, StatusCode};

use crate::ads::AdPath;
use crate::auth::{refusal, Auth, Authorized, TokenSource};
use crate::cmcd::Prefetcher;
use crate::fleet::FleetCall;
use crate::generic::Generic;
use crate::geofence::Geofence;
use crate::media::{not_found, protected_output, tokenize, Media};
use crate::protection::{LicenseKind, Protection};
use cascade_watermark::Variant;

/// The edge's phases and what they need.
pub(crate) struct EdgePipeline {
    /// Ad insertion: sessions' plans, stitching, ad segment reports.
    pub(crate) ads: std::sync::Arc<crate::ads::Ads>,
    /// News flashes, for live playlists.
    pub(crate) flashes: std::sync::Arc<crate::events::FlashBoard>,
    pub(crate) auth: Auth,
    pub(crate) geofence: Geofence,
    /// Protected titles' keys and the license proxy.
    pub(crate) protection: Arc<Protection>,
    pub(crate) media: Media,
    pub(crate) origin: Upstream,
    pub(crate) generic: Generic,
    pub(crate) fleet_token: String,
    pub(crate) node: String,
    pub(crate) prewarm: tokio::sync::Semaphore,
    pub(crate) prewarm_concurrency: usize,
    pub(crate) prefetch: Option<Prefetcher>,
    pub(crate) route_seconds: prometheus::HistogramVec,
    /// `Strict-Transport-Security` for answers over TLS, if any.
    pub(crate) hsts: Option<http::HeaderValue>,
    /// Built-in device profiles with the configured ones over them.
    pub(crate) profiles: BTreeMap<String, Profile>,
    /// Load, shedding, quality caps and drain.
    pub(crate) governor: Arc<crate::governor::Governor>,
    /// Send CMSD headers on media answers.
    pub(crate) cmsd: bool,
    /// Control's steering server for players, and tickets' lifetime.
    pub(crate) steering: Option<(String, u64)>,
}

/// What a request is, as the route phase decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Not routed yet.
    Unrouted,
    /// Control's call, with the fleet credential.
    Fleet(FleetCall),
    /// `/vod/{asset}/…`: protected media. `output` is `None` for a path
    /// that names no packager output (404 once authorised).
    Media {
        asset: String,
        output: Option<Output>,
        /// `cbcs/…` or `cenc/…`: a protected title's encrypted outputs.
        scheme: Option<Scheme>,
    },
    /// `/vod/{asset}/license/…`: a viewer's license or key request.
    License { asset: String, kind: LicenseKind },
    /// `/vod/{asset}/ad/{break}.{n}/{creative}/…` (or `/live/{channel}/ad/…`,
    /// `live`): an ad's media inside a title's or a channel's stitched
    /// playlists, under its token.
    Ad {
        asset: String,
        ad: AdPath,
        live: bool,
    },
    /// `/live/{channel}/…`: protected live media. `output` is `None` for a
    /// path that names nothing (404 once authorised).
    Live {
        channel: String,
        output: Option<LiveOutput>,
    },
    /// `/api/…`: to the origin, uncached.
    Api,
    /// Anything else: the origin's web page and files, cached.
    Page,
}

/// What the edge's phases learn about one request.
#[derive(Debug)]
pub(crate) struct EdgeCtx {
    /// What it is.
    pub(crate) route: Route,
    /// The decoded, checked path: what is authorised is what is served.
    pub(crate) path: String,
    /// The token that let it through, if one was needed.
    pub(crate) token: Option<Authorized>,
    /// The viewer's country, when admission looked it up.
    pub(crate) country: Option<String>,
    /// The view of a manifest (filters, profile, clip, format).
    pub(crate) view: View,
    /// The cache key of media.
    pub(crate) cache_key: Option<String>,
    /// A live playlist's blocking request (`_HLS_msn`, `_HLS_part`, `_HLS_skip`).
    pub(crate) blocking: Blocking,
    /// The playback session whose playlist this is, when its ads make it
    /// its own (never cached, never shared).
    pub(crate) personal: Option<String>,
    /// An ad segment fetch to report once it is served.
    pub(crate) ad_fetch: Option<crate::ads::Fetched>,
    /// The answer is a stitched playlist or MPD, its child URLs tokenised
    /// as it was made.
    pub(crate) stitched: bool,
    /// The title is served encrypted only (from its metadata).
    pub(crate) protected: bool,
    /// A protected title's keys, once the cache key needed them.
    pub(crate) drm: Option<Arc<Drm>>,
    /// The title is made in two watermarked copies (from its metadata).
    pub(crate) watermarked: bool,
    /// Which copy of a watermarked title's segment the session is served.
    pub(crate) variant: Variant,
    /// What load admission decided for the request's session.
    pub(crate) admission: Option<crate::governor::Admission>,
}

/// Outputs that carry a title's media in the clear (or point into it):
/// refused for a protected title.
fn is_clear_media(output: &Output) -> bool {
    matches!(
        output,
        Output::MediaPlaylist(_)
            | Output::IframePlaylist(_)
            | Output::Init(_)
            | Output::Segment(..)
            | Output::KeySegment(..)
    )
}

/// The video track and segment number of an output that is one segment
/// of a track's media (fMP4 or TS): what a watermark's copy is chosen for.
/// I-frame segments are left out (trick play, from copy A).
pub(crate) fn marked_segment(output: &Output) -> Option<(&str, u64)> {
    match output {
        Output::Segment(t, n) => Some((t.as_str(), *n)),
        Output::TsSegment(ids, n) => Some((ids.split('.').next().unwrap_or(""), *n)),
        _ => None,
    }
}

impl EdgeCtx {
    /// The query to write into child URLs: the token's, when it came in
    /// the query (players resend cookies and headers by themselves).
    fn child_query(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.child_query.as_deref())
    }
}

#[async_trait::async_trait]
impl Pipeline for EdgePipeline {
    type Ctx = EdgeCtx;

    fn new_ctx(&self, _req: &Request) -> EdgeCtx {
        EdgeCtx {
            route: Route::Unrouted,
            path: String::new(),
            token: None,
            country: None,
            view: View::default(),
            cache_key: None,
            blocking: Blocking::default(),
            personal: None,
            ad_fetch: None,
            stitched: false,
            protected: false,
            drm: None,
            watermarked: false,
            variant: Variant::A,
            admission: None,
        }
    }

    fn route(&self, req: &Request, ctx: &mut EdgeCtx) -> Step {
        if let Some(call) = FleetCall::from_path(req.uri.path()) {
            ctx.route = Route::Fleet(call);
            return Step::Continue;
        }
        let Some(path) = normalize_path(req.uri.path()) else {
            return Step::Answer(Response::error(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "the path is not acceptable",
            ));
        };
        ctx.route = if let Some(rest) = path.strip_prefix("/vod/") {
            let asset = rest.split('/').next().unwrap_or("").to_string();
            if req.method == Method::OPTIONS {
                ctx.path = path;
                return Step::Answer(cors_preflight());
            }
            let after_asset = rest.split_once('/').map_or("", |(_, r)| r);
            if let Some(ad) = AdPath::parse(after_asset) {
                ctx.path = path;
                ctx.route = Route::Ad {
                    asset,
                    ad,
                    live: false,
                };
                return Step::Continue;
            }
            if let Some(kind) = LicenseKind::parse(after_asset) {
                ctx.path = path;
                ctx.route = Route::License { asset, kind };
                return Step::Continue;
            }
            let p = protected_output(&path);
            Route::Media {
                scheme: p.as_ref().and_then(|p| p.scheme),
                output: p.map(|p| p.output),
                asset,
            }
        } else if path == "/live/time" {
            return Step::Answer(crate::live::time_response());
        } else if path.starts_with("/live/") {
            if req.method == Method::OPTIONS {
                ctx.path = path;
                return Step::Answer(cors_preflight());
            }
            if let Some((channel, ad)) = crate::live::live_ad(&path) {
                ctx.path = path;
                ctx.route = Route::Ad {
                    asset: channel,
                    ad,
                    live: true,
                };
                return Step::Continue;
            }
            // A protected channel's license: `/live/{channel}/license/clearkey`.
            if let Some((channel, kind)) = path
                .strip_prefix("/live/")
                .and_then(|r| r.split_once('/'))
                .filter(|(c, _)| is_safe_id(c))
                .and_then(|(c, rest)| Some((c, LicenseKind::parse(rest)?)))
            {
                ctx.route = Route::License {
                    asset: format!("live:{channel}"),
                    kind,
                };
                ctx.path = path;
                return Step::Continue;
            }
            match crate::live::live_output(&path) {
                Some((channel, output)) => {
                    // `master.m3u8?format=ts`: the MPEG-TS variants.
                    let ts = req
                        .uri
                        .query()
                        .is_some_and(|q| q.split('&').any(|kv| kv == "format=ts"));
                    let output = match output {
                        Some(LiveOutput::Multivariant) if ts => Some(LiveOutput::TsMultivariant),
                        o => o,
                    };
                    Route::Live { channel, output }
                }
                None => Route::Live {
                    channel: String::new(),
                    output: None,
                },
            }
        } else if path.starts_with("/api/") {
            Route::Api
        } else {
            Route::Page
        };
        ctx.path = path;
        Step::Continue
    }

    async fn authorize(&self, req: &Request, ctx: &mut EdgeCtx) -> Step {
        // Control's calls carry the fleet credential, checked by the call.
        if matches!(ctx.route, Route::Fleet(_)) || self.auth.is_open(&ctx.path) {
            return Step::Continue;
        }
        match self.auth.check(req, &ctx.path) {
            Ok(grant) => {
                ctx.token = Some(grant);
                Step::Continue
            }
            Err(why) => Step::Answer(refusal(why)),
        }
    }

    async fn admit(&self, req: &Request, ctx: &mut EdgeCtx) -> Step {
        // The subject whose country rules apply: a title, or a channel.
        let (key, meta) = match &ctx.route {
            Route::Media { asset, .. }
            | Route::License { asset, .. }
            | Route::Ad {
                asset, live: false, ..
            } if is_safe_id(asset) => (asset.clone(), format!("/mezz/{asset}/meta.json")),
            Route::License { asset, .. } if asset.starts_with("live:") => (
                asset.clone(),
                format!("/live-mezz/{}/meta.json", &asset["live:".len()..]),
            ),
            Route::Live {
                channel,
                output: Some(_),
            }
            | Route::Ad {
                asset: channel,
                live: true,
                ..
            } => (
                format!("live:{channel}"),
                format!("/live-mezz/{channel}/meta.json"),
            ),
            _ => return Step::Continue,
        };
        ctx.country = self.geofence.country(req);
        let blocked = self
            .geofence
            .check(
                ctx.country.as_deref(),
                &ctx.path,
                (&key, &meta),
                &self.media,
                &req.request_id,
            )
            .await;
        match blocked {
            Err(r) => Step::Answer(r),
            Ok(flags) => {
                ctx.protected = flags.protected;
                ctx.watermarked = flags.watermarked;
                // Load: a session already playing is always served; a new
                // one may be capped or refused (see `governor`).
                match self.governor.admit(&session_key(req, ctx)) {
                    Ok(a) => {
                        ctx.admission = Some(a);
                        Step::Continue
                    }
                    Err(r) => Step::Answer(*r),
                }
            }
        }
    }

    async fn cache_key(&self, req: &Request, ctx: &mut EdgeCtx) -> Step {
        if let Route::Live { output, .. } = &ctx.route {
            return self.live_key(req, ctx, output.clone());
        }
        if let Route::Ad { ad, live, .. } = &ctx.route {
            return self.ad_key(req, ctx, ad.clone(), *live).await;
        }
        if let Route::License { kind, .. } = &ctx.route {
            let ok = match kind {
                LicenseKind::ClearKey => req.method == Method::POST,
                LicenseKind::Aes128(_) => req.method == Method::GET,
            };
            if !ok {
                return Step::Answer(Response::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method",
                    "POST for a ClearKey license, GET for an AES-128 key",
                ));
            }
            if !ctx.protected {
                return Step::Answer(Response::error(
                    StatusCode::NOT_FOUND,
                    "not_protected",
                    "this title is not protected: it needs no license",
                ));
            }
            return Step::Continue;
        }
        let Route::Media {
            output,
            asset,
            scheme,
        } = &ctx.route
        else {
            return Step::Continue;
        };
        let scheme = *scheme;
        if req.method != Method::GET && req.method != Method::HEAD {
            return Step::Answer(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "GET or HEAD only",
            ));
        }
        let Some(output) = output else {
            return Step::Answer(not_found());
        };
        // Filters, profile, clip and format; only manifests read them.
        if output.is_manifest() {
            match View::from_query(req.uri.query().unwrap_or(""), &self.profiles) {
                Ok(v) => ctx.view = v,
                Err(e) => {
                    return Step::Answer(Response::error(
                        StatusCode::BAD_REQUEST,
                        "bad_filter",
                        &e.0,
                    ))
                }
            }
        }
        // Numbers a caller picks (a bitrate cap, a clip's bounds) are
        // snapped to what the title makes of them, so they cannot make
        // endless cache keys; that needs the title's manifest (kept in RAM).
        if output.relevant_view(&ctx.view) != View::default() {
            match self.media.manifest(asset, &req.request_id).await {
                Ok(m) => ctx.view = ctx.view.settle(&m),
                Err(r) => return Step::Answer(r),
            }
        }
        let mut key = Media::key(&ctx.path, output, &ctx.view);
        match (ctx.protected, scheme) {
            (false, Some(_)) => return Step::Answer(not_found()),
            (true, None) if is_clear_media(output) => {
                return Step::Answer(crate::media::protected_refusal())
            }
            (true, _) => {
                let drm = match self.protection.drm(asset, &req.request_id).await {
                    Ok(d) => d,
                    Err(r) => return Step::Answer(r),
                };
                // Never the clear output's key; new keys, new entries.
                key.push_str("#p");
                key.push_str(&crate::protection::fingerprint(&drm));
                ctx.drm = Some(drm);
            }
            (false, None) => {}
        }
        // A watermarked title: segment n comes from copy A or B by bit n of
        // the session's mark (from its signed token); each copy is cached
        // once for everyone.
        if let Some((track, n)) = marked_segment(output).filter(|_| ctx.watermarked) {
            let m = match self.media.manifest(asset, &req.request_id).await {
                Ok(m) => m,
                Err(r) => return Step::Answer(r),
            };
            if m.track(track).is_some_and(|t| t.marked.is_some()) {
                let Some(mark) = ctx.token.as_ref().and_then(|t| t.watermark) else {
                    return Step::Answer(crate::media::unmarked_refusal());
                };
                ctx.variant = cascade_watermark::variant_for(mark, n);
                if ctx.variant == Variant::B {
                    key.push_str("#wb");
                }
            }
        }
        ctx.cache_key = Some(key);
        // A session with ads gets playlists of its own (not yet for a
        // protected title: its stitched playlists would name clear media).
        if ctx.protected {
            return Step::Continue;
        }
        if let Some(Authorized {
            ads: true,
            session: Some(s),
            ..
        }) = &ctx.token
        {
            if cascade_packager::is_stitched(output) {
                ctx.personal = Some(s.clone());
            }
        }
        Step::Continue
    }

    async fn lookup(&self, req: &Request, ctx: &mut EdgeCtx) -> Option<Response> {
        if ctx.personal.is_some() {
            return None;
        }
        let key = ctx.cache_key.as_deref()?;
        if let Some(p) = &self.prefetch {
            // Prefetch is the first thing shed as load nears capacity.
            if crate::cmcd::has_next_object(req) && self.governor.allows_optional("prefetch") {
                p.consider(req, &ctx.path);
            }
        }
        self.media.tier.fresh_hit(key).await
    }

    async fn produce(&self, req: &Request, ctx: &mut EdgeCtx) -> Response {
        match &ctx.route {
            Route::Fleet(FleetCall::Purge) => self.purge(req).await,
            Route::Fleet(FleetCall::Warm) => self.warm(req).await,
            Route::Fleet(FleetCall::State) => self.fleet_state(req),
            Route::Media {
                output: Some(output),
                asset,
                ..
            } if ctx.personal.is_some() => {
                let session = ctx.personal.as_deref().unwrap_or_default();
                let plan = self.ads.plan(session, ctx.country.as_deref()).await;
                let query = ctx.child_query().unwrap_or("");
                if let Some(r) = self
                    .ads
                    .stitched(
                        &self.media,
                        &plan,
                        crate::ads::Wanted {
                            asset,
                            output,
                            view: &ctx.view,
                            query,
                            request_id: &req.request_id,
                        },
                    )
                    .await
                {
                    ctx.stitched = r.status == StatusCode::OK;
                    return r;
                }
                // No ads for this session after all: the shared output.
                self.media
                    .get(&ctx.path, output, &ctx.view, &req.request_id)
                    .await
            }
            Route::Ad { ad, .. } => match (&ctx.cache_key, &ad.output) {
                (Some(key), Some(output)) => {
                    self.media
                        .fill(
                            key,
                            &ad.media_path,
                            output,
                            &View::default(),
                            Variant::A,
                            &req.request_id,
                        )
                        .await
                }
                _ => not_found(),
            },
            Route::Media {
                output: Some(output),
                scheme,
                ..
            } if ctx.drm.is_some() => match (&ctx.cache_key, &ctx.drm) {
                (Some(key), Some(drm)) => {
                    let p = ProtectedOutput {
                        scheme: *scheme,
                        output: output.clone(),
                    };
                    self.media
                        .fill_protected(
                            key,
                            &ctx.path,
                            &p,
                            drm.clone(),
                            &ctx.view,
                            ctx.variant,
                            &req.request_id,
                        )
                        .await
                }
                _ => not_found(),
            },
            Route::License { asset, kind } => {
                let session = ctx.token.as_ref().and_then(|t| t.session.as_deref());
                self.protection
                    .license(
                        asset,
                        kind,
                        &req.body,
                        session,
                        self.geofence.client_ip(req),
                        &req.request_id,
                    )
                    .await
            }
            Route::Media {
                output: Some(output),
                ..
            } => match &ctx.cache_key {
                Some(key) => {
                    self.media
                        .fill(
                            key,
                            &ctx.path,
                            output,
                            &ctx.view,
                            ctx.variant,
                            &req.request_id,
                        )
                        .await
                }
                None => not_found(),
            },
            Route::Live {
                channel,
                output: Some(output),
            } if ctx.personal.is_some() => {
                let session = ctx.personal.as_deref().unwrap_or_default();
                let want = crate::ads::LiveWanted {
                    channel,
                    output,
                    blocking: ctx.blocking,
                    session,
                    country: ctx.country.as_deref(),
                    request_id: &req.request_id,
                };
                if let Some(r) = self.ads.live_stitched(&self.media, want).await {
                    return r;
                }
                // No break of the session in the window: the shared playlist.
                match &ctx.cache_key {
                    Some(key) => {
                        self.media
                            .live_fill(key, channel, output, ctx.blocking, &req.request_id)
                            .await
                    }
                    None => not_found(),
                }
            }
            Route::Live {
                channel,
                output: Some(output),
            } if ctx.protected => match &ctx.cache_key {
                Some(key) => {
                    self.media
                        .live_protected_fill(
                            key,
                            channel,
                            output,
                            ctx.blocking,
                            self.protection.clone(),
                            &req.request_id,
                        )
                        .await
                }
                None => not_found(),
            },
            Route::Live {
                channel,
                output: Some(output),
            } => match &ctx.cache_key {
                Some(key) => {
                    self.media
                        .live_fill(key, channel, output, ctx.blocking, &req.request_id)
                        .await
                }
                None => not_found(),
            },
            Route::Media { output: None, .. }
            | Route::Live { output: None, .. }
            | Route::Unrouted => not_found(),
            Route::Api => self.api(req).await,
            Route::Page => self.generic.serve(req, &ctx.path).await,
        }
    }

    fn response_filter(&self, req: &Request, ctx: &mut EdgeCtx, mut resp: Response) -> Response {
        if let (true, Some(v)) = (req.secure, &self.hsts) {
            resp.headers
                .insert(http::header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
        if let Route::Live { output, channel } = &ctx.route {
            if resp.status == StatusCode::OK {
                self.show_flashes(&mut resp, output.as_ref(), channel, ctx.country.as_deref());
                let hls = matches!(
                    output,
                    Some(LiveOutput::Multivariant | LiveOutput::TsMultivariant)
                );
                let mpd = matches!(output, Some(LiveOutput::Mpd));
                if hls || mpd {
                    self.cap_manifest(&mut resp, ctx, Some(channel), hls);
                }
                if self.cmsd {
                    crate::cmsd::add_live(&mut resp, output.as_ref(), &self.governor);
                }
            }
            let mut resp = match (output, ctx.child_query()) {
                (Some(o), Some(q)) if o.is_manifest() && resp.status == StatusCode::OK => {
                    resp.body = Bytes::from(live_with_query(o, &resp.body, q));
                    // A tokenised playlist is the viewer's own.
                    privatize(&mut resp.headers);
                    resp
                }
                _ => resp,
            };
            if resp.status == StatusCode::OK {
                match output {
                    Some(LiveOutput::Multivariant | LiveOutput::TsMultivariant) => {
                        self.steer(&mut resp, ctx, true)
                    }
                    Some(LiveOutput::Mpd) => self.steer(&mut resp, ctx, false),
                    _ => {}
                }
            }
            if matches!(
                ctx.token.as_ref().map(|t| t.source),
                Some(TokenSource::Cookie | TokenSource::Header)
            ) {
                privatize(&mut resp.headers);
            }
            add_cors(&mut resp.headers);
            return resp;
        }
        if let Route::License { .. } = &ctx.route {
            add_cors(&mut resp.headers);
            return resp;
        }
        let output = match &ctx.route {
            Route::Media { output, .. } => output,
            Route::Ad { ad, .. } => &ad.output,
            _ => return resp,
        };
        if let (Some(o @ (Output::Multivariant | Output::Mpd)), StatusCode::OK) =
            (output, resp.status)
        {
            self.cap_manifest(&mut resp, ctx, None, *o == Output::Multivariant);
        }
        if let (true, Some(o), true) = (self.cmsd, output, resp.status.is_success()) {
            crate::cmsd::add_vod(&mut resp, o, &self.governor);
        }
        let mut resp = match output {
            Some(output) if resp.status == StatusCode::OK => {
                let range = req
                    .headers
                    .get(http::header::RANGE)
                    .and_then(|v| v.to_str().ok());
                // A stitched answer has its tokens already.
                let mut resp = if ctx.stitched {
                    resp
                } else {
                    tokenize(resp, output, ctx.child_query())
                };
                match output {
                    Output::Multivariant => self.steer(&mut resp, ctx, true),
                    Output::Mpd => self.steer(&mut resp, ctx, false),
                    _ => {}
                }
                apply_range(resp, range)
            }
            _ => resp,
        };
        if matches!(
            ctx.token.as_ref().map(|t| t.source),
            Some(TokenSource::Cookie | TokenSource::Header)
        ) {
            // The URL alone does not carry the right to this answer: a
            // shared cache downstream must not keep it for others.
            privatize(&mut resp.headers);
        }
        add_cors(&mut resp.headers);
        resp
    }

    fn log(&self, _req: &Request, ctx: &EdgeCtx, delivered: &Delivered) {
        if let (Some(f), true) = (&ctx.ad_fetch, delivered.status.is_success()) {
            self.ads.note(f.clone());
        }
        self.log_route(ctx, delivered);
    }
}

/// Who a request's session is, for load admission: the playback session
/// its token is bound to; else the token itself (in the query); else the
/// viewer's address.
fn session_key(req: &Request, ctx: &EdgeCtx) -> String {
    let token = ctx.token.as_ref();
    if let Some(s) = token.and_then(|t| t.session.as_deref()) {
        return format!("s:{s}");
    }
    if let Some(q) = token.and_then(|t| t.child_query.as_deref()) {
        return format!("t:{q}");
    }
    req.client
        .map(|a| format!("a:{}", a.ip()))
        .unwrap_or_default()
}

impl EdgePipeline {
    /// Content steering: the multivariant playlist or MPD names every
    /// pathway control gave this edge, and control's steering server with
    /// a ticket for this session. Only for tokens in the query (another
    /// host gets no cookie) and at least two pathways.
    fn steer(&self, resp: &mut Response, ctx: &EdgeCtx, hls: bool) {
        let (Some((server, ticket_secs)), Some(q)) = (&self.steering, ctx.child_query()) else {
            return;
        };
        let pathways = self.governor.pathways();
        if pathways.len() < 2 {
            return;
        }
        let session = match ctx.token.as_ref().and_then(|t| t.session.as_deref()) {
            Some(s) if cascade_common::steering::is_ticket_word(s) => s.to_string(),
            _ => cascade_common::steering::digest(q),
        };
        let ticket = cascade_common::steering::Ticket {
            region: self.governor.region().to_string(),
            session,
            expires: cascade_serve::unix_now() + ticket_secs,
        }
        .sign(&self.fleet_token);
        let server_uri = format!(
            "{}/steer/{}?t={ticket}",
            server.trim_end_matches('/'),
            if hls { "hls" } else { "dash" }
        );
        let dir = match ctx.path.rfind('/') {
            Some(i) => &ctx.path[..=i],
            None => return,
        };
        let list: Vec<cascade_packager::SteeringPathway<'_>> = pathways
            .iter()
            .enumerate()
            .map(|(i, p)| cascade_packager::SteeringPathway {
                id: &p.name,
                // HLS keeps this edge's URLs relative; an MPD's BaseURLs
                // are all absolute (dash.js takes no BaseURL after a
                // relative one).
                origin: if i == 0 && hls { "" } else { &p.url },
            })
            .collect();
        let Ok(text) = std::str::from_utf8(&resp.body) else {
            return;
        };
        let steered = if hls {
            cascade_packager::steer_hls(text, dir, &list, &server_uri)
        } else {
            cascade_packager::steer_mpd(text, dir, &list, &server_uri)
        };
        if let Some(s) = steered {
            resp.body = Bytes::from(s);
            privatize(&mut resp.headers);
        }
    }

    /// Leaves the rungs over the session's cap and the operators' caps out
    /// of a multivariant playlist or MPD. A capped answer is the viewer's
    /// own: no shared cache downstream keeps it.
    fn cap_manifest(&self, resp: &mut Response, ctx: &EdgeCtx, channel: Option<&str>, hls: bool) {
        let Some(h) = self.governor.max_height(ctx.admission, channel) else {
            return;
        };
        let Ok(text) = std::str::from_utf8(&resp.body) else {
            return;
        };
        let capped = if hls {
            cascade_packager::cap_hls(text, h)
        } else {
            cascade_packager::cap_mpd(text, h)
        };
        if let Some(c) = capped {
            resp.body = Bytes::from(c);
            privatize(&mut resp.headers);
        }
    }

    /// News flashes for this viewer, inside a live playlist or MPD: after
    /// the cache, since a region's flash is not every viewer's.
    fn show_flashes(
        &self,
        resp: &mut Response,
        output: Option<&LiveOutput>,
        channel: &str,
        country: Option<&str>,
    ) {
        let is_hls = matches!(
            output,
            Some(LiveOutput::Media(_) | LiveOutput::TsPlaylist(..))
        );
        let is_mpd = matches!(output, Some(LiveOutput::Mpd));
        if !is_hls && !is_mpd {
            return;
        }
        let flashes = self
            .flashes
            .in_stream(country, channel, cascade_serve::unix_now_ms() as i64);
        if flashes.is_empty() {
            return;
        }
        let Ok(text) = std::str::from_utf8(&resp.body) else {
            return;
        };
        let out = if is_hls {
            cascade_packager::live::hls_with_flashes(text, &flashes)
        } else {
            cascade_packager::live::mpd_with_flashes(text, &flashes)
        };
        resp.body = Bytes::from(out);
        // Another viewer's flashes may differ: no shared cache keeps it.
        privatize(&mut resp.headers);
    }

    fn log_route(&self, ctx: &EdgeCtx, delivered: &Delivered) {
        let route = match &ctx.route {
            _ if delivered.status == StatusCode::FORBIDDEN
                || delivered.status == StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS =>
            {
                "refused"
            }
            Route::Media {
                output: Some(o), ..
            } if o.is_manifest() => "manifest",
            Route::Media { .. } | Route::Ad { .. } => "segment",
            Route::Live {
                output: Some(o), ..
            } if o.is_manifest() => "live_manifest",
            Route::Live { .. } => "live_media",
            Route::License { .. } => "license",
            Route::Api => "api",
            Route::Page => "page",
            Route::Fleet(_) => "fleet",
            Route::Unrouted => "other",
        };
        self.route_seconds
            .with_label_values(&[route])
            .observe(delivered.elapsed.as_secs_f64());
    }
}

impl EdgePipeline {
    /// The cache key phase for an ad's media: the creative's own key, so
    /// one copy serves every title and viewer; and, for a session, the
    /// fetch to report once it is served.
    async fn ad_key(&self, req: &Request, ctx: &mut EdgeCtx, ad: AdPath, live: bool) -> Step {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Step::Answer(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "GET or HEAD only",
            ));
        }
        let Some(output) = &ad.output else {
            return Step::Answer(not_found());
        };
        ctx.cache_key = Some(Media::key(&ad.media_path, output, &View::default()));
        if let Some(session) = ctx.token.as_ref().and_then(|t| t.session.clone()) {
            ctx.ad_fetch = self
                .ads
                .fetch_of(
                    &self.media,
                    &session,
                    ctx.country.as_deref(),
                    &ad,
                    live,
                    &req.request_id,
                )
                .await;
        }
        Step::Continue
    }

    /// The cache key phase for `/live/`: the blocking query read and checked.
    fn live_key(&self, req: &Request, ctx: &mut EdgeCtx, output: Option<LiveOutput>) -> Step {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Step::Answer(Response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "GET or HEAD only",
            ));
        }
        let Some(output) = output else {
            return Step::Answer(not_found());
        };
        if matches!(output, LiveOutput::Media(_)) {
            match Blocking::from_query(req.uri.query().unwrap_or("")) {
                Ok(b) => ctx.blocking = b,
                Err(why) => {
                    return Step::Answer(Response::error(
                        StatusCode::BAD_REQUEST,
                        "bad_blocking_request",
                        why,
                    ))
                }
            }
        }
        let mut key = crate::live::live_key(&ctx.path, &output, &ctx.blocking);
        if ctx.protected {
            // Never a clear output's entry; no personal playlists (their
            // ads would be clear media).
            key.push_str("#p");
            ctx.cache_key = Some(key);
            return Step::Continue;
        }
        ctx.cache_key = Some(key);
        // A session with ads gets media playlists and an MPD of its own
        // while a break is in the window.
        if let Some(Authorized {
            ads: true,
            session: Some(s),
            ..
        }) = &ctx.token
        {
            if matches!(
                output,
                LiveOutput::Media(_) | LiveOutput::TsPlaylist(..) | LiveOutput::Mpd
            ) {
                ctx.personal = Some(s.clone());
            }
        }
        Step::Continue
    }
}

/// Makes a shareable answer private: `public` becomes `private`, and an
/// answer with no `Cache-Control` gets `private`.
fn privatize(headers: &mut http::HeaderMap) {
    let cc = headers
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut directives: Vec<&str> = cc
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("public"))
        .filter(|d| !d.to_ascii_lowercase().starts_with("s-maxage"))
        .collect();
    if !directives.iter().any(|d| d.eq_ignore_ascii_case("private")) {
        directives.insert(0, "private");
    }
    if let Ok(v) = http::HeaderValue::from_str(&directives.join(", ")) {
        headers.insert(http::header::CACHE_CONTROL, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cascade_packager::default_profiles;
    use cascade_serve::CacheTier;
    use cascade_token::{sign, Claims, Key, Verifier};
    use http::{HeaderMap, HeaderValue, Uri};
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
    use std::time::Duration;

    const KEY: &str = "00112233445566778899aabbccddeeff";

    fn counter(name: &str, label: &str) -> IntCounterVec {
        IntCounterVec::new(Opts::new(name, "test"), &[label]).expect("counter")
    }

    /// An edge pipeline whose upstreams are never reached by these tests:
    /// each phase runs in-process, without sockets.
    async fn pipeline() -> EdgePipeline {
        let cache = cascade_cache::TieredCache::open(&cascade_cache::memory_only(1 << 20))
            .await
            .expect("cache");
        let nowhere = Upstream::new("http://127.0.0.1:9", Duration::from_secs(1), 1 << 20);
        let key = Key::from_hex("k1", KEY).expect("key");
        let bus = std::sync::Arc::new(cascade_bus::MemoryBus::new(100, Duration::from_secs(60)));
        let governor = crate::governor::Governor::new(
            crate::EdgeConfig::default().governor(),
            &cascade_serve::Metrics::new("edge"),
        )
        .expect("governor");
        let fanout = crate::events::Fanout {
            governor: governor.clone(),
            slow_every: Duration::from_secs(1),
        };
        EdgePipeline {
            governor,
            cmsd: true,
            steering: None,
            protection: Arc::new(Protection::new(
                "http://127.0.0.1:9",
                "",
                Duration::from_secs(1),
                counter("lic", "result"),
            )),
            ads: Arc::new(crate::ads::Ads::new(
                "http://127.0.0.1:9",
                "",
                Duration::from_secs(1),
                counter("ads", "event"),
            )),
            flashes: crate::events::Hub::new(bus, fanout).flashes.clone(),
            auth: Auth {
                verifier: Arc::new(arc_swap::ArcSwap::from_pointee(Verifier {
                    cdn_keys: vec![key],
                    ..Verifier::default()
                })),
                revoked: crate::auth::revoked_sessions(),
                token_name: "__token__".into(),
                open_paths: vec!["/".into(), "/static/*".into(), "/api/*".into()],
                rejections: counter("r", "reason"),
                accepted: counter("a", "kid"),
            },
            geofence: Geofence::new(
                Arc::new(cascade_geo::Geo::none()),
                Vec::new(),
                cascade_geo::UnknownPolicy::default(),
                Vec::new(),
                counter("l", "result"),
                IntCounterVec::new(Opts::new("b", "test"), &["country", "rule"]).expect("b"),
            ),
            media: Media {
                live: cascade_serve::CachingFetcher::new(
                    cache.clone(),
                    vec![nowhere.clone()],
                    crate::CACHE_NAME,
                    Duration::from_secs(1),
                ),
                tier: CacheTier::new(cache.clone(), crate::CACHE_NAME, Duration::from_secs(1)),
                pool: Arc::new(crate::shields::ShieldPool::new(
                    Vec::new(),
                    Some(nowhere.clone()),
                    Duration::from_secs(1),
                    IntCounterVec::new(Opts::new("s", "test"), &["shield", "state"]).expect("s"),
                )),
                manifests: moka::future::Cache::builder().max_capacity(10).build(),
                manifest_ttl: 60,
            },
            origin: nowhere.clone(),
            generic: Generic::new(cache, nowhere, Vec::new(), Duration::from_secs(1)),
            fleet_token: String::new(),
            node: "edge-test".into(),
            prewarm: tokio::sync::Semaphore::new(1),
            prewarm_concurrency: 1,
            prefetch: None,
            route_seconds: HistogramVec::new(HistogramOpts::new("t", "test"), &["route"])
                .expect("histogram"),
            hsts: None,
            profiles: default_profiles(),
        }
    }

    fn request(method: Method, uri: &str, headers: &[(&'static str, &str)]) -> Request {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        Request {
            method,
            uri: uri.parse::<Uri>().expect("uri"),
            headers: h,
            body: Bytes::new(),
            client: None,
            request_id: "t".into(),
            protocol: "http/1.1",
            secure: false,
        }
    }

    fn token(acl: &str, id: Option<&str>) -> String {
        let key = Key::from_hex("k1", KEY).expect("key");
        sign(
            &key,
            &Claims {
                expires: cascade_serve::unix_now() + 600,
                acl: vec![acl.into()],
                id: id.map(str::to_string),
                ..Claims::default()
            },
        )
    }

    fn answer(step: Step) -> Option<Response> {
        match step {
            Step::Answer(r) => Some(r),
            Step::Continue => None,
        }
    }

    #[tokio::test]
    async fn route_names_what_a_request_is() {
        let p = pipeline().await;
        for (uri, want) in [
            (
                "/vod/abc/master.m3u8?x=1",
                Route::Media {
                    asset: "abc".into(),
                    output: Some(Output::Multivariant),
                    scheme: None,
                },
            ),
            (
                "/vod/abc/cenc/v0/3.m4s",
                Route::Media {
                    asset: "abc".into(),
                    output: Some(Output::Segment("v0".into(), 3)),
                    scheme: Some(Scheme::Cenc),
                },
            ),
            (
                "/vod/abc/license/clearkey",
                Route::License {
                    asset: "abc".into(),
                    kind: LicenseKind::ClearKey,
                },
            ),
            (
                "/vod/abc/nonsense.txt",
                Route::Media {
                    asset: "abc".into(),
                    output: None,
                    scheme: None,
                },
            ),
            ("/api/v1/titles", Route::Api),
            ("/static/hls.min.js", Route::Page),
            ("/fleet/purge", Route::Fleet(FleetCall::Purge)),
        ] {
            let req = request(Method::GET, uri, &[]);
            let mut ctx = p.new_ctx(&req);
            assert!(answer(p.route(&req, &mut ctx)).is_none(), "{uri}");
            assert_eq!(ctx.route, want, "{uri}");
        }
        let req = request(Method::GET, "/vod/abc/%2e%2e/x", &[]);
        let mut ctx = p.new_ctx(&req);
        let r = answer(p.route(&req, &mut ctx)).expect("refused");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let req = request(Method::OPTIONS, "/vod/abc/master.m3u8", &[]);
        let mut ctx = p.new_ctx(&req);
        let r = answer(p.route(&req, &mut ctx)).expect("preflight");
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn authorize_finds_the_token_and_refuses_ended_sessions() {
        let p = pipeline().await;
        let run = |req: Request| {
            let p = &p;
            async move {
                let mut ctx = p.new_ctx(&req);
                assert!(answer(p.route(&req, &mut ctx)).is_none());
                let step = p.authorize(&req, &mut ctx).await;
                (answer(step), ctx)
            }
        };
        let (refused, _) = run(request(Method::GET, "/vod/abc/1.m4s", &[])).await;
        let refused = refused.expect("no token");
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(String::from_utf8_lossy(&refused.body).contains("missing"));
        let t = token("/vod/abc/*", None);
        let (ok, ctx) = run(request(
            Method::GET,
            &format!("/vod/abc/1.m4s?__token__={t}"),
            &[],
        ))
        .await;
        assert!(ok.is_none());
        let grant = ctx.token.expect("a grant");
        assert_eq!(grant.source, TokenSource::Query);
        assert_eq!(grant.child_query, Some(format!("__token__={t}")));
        let cookie = format!("__token__={t}");
        let (ok, ctx) = run(request(
            Method::GET,
            "/vod/abc/1.m4s",
            &[("cookie", &cookie)],
        ))
        .await;
        assert!(ok.is_none());
        assert_eq!(ctx.token.expect("grant").source, TokenSource::Cookie);
        // Open paths need none.
        let (ok, ctx) = run(request(Method::GET, "/static/x.js", &[])).await;
        assert!(ok.is_none() && ctx.token.is_none());
        // An ended session's token is refused however long it has to live.
        let t = token("/vod/abc/*", Some("stream-1"));
        p.auth.revoked.insert("stream-1".into(), ());
        let (refused, _) = run(request(
            Method::GET,
            &format!("/vod/abc/1.m4s?__token__={t}"),
            &[],
        ))
        .await;
        let refused = refused.expect("revoked");
        assert!(String::from_utf8_lossy(&refused.body).contains("revoked"));
    }

    #[tokio::test]
    async fn cache_key_leaves_out_the_token_and_refuses_bad_views() {
        let p = pipeline().await;
        let key_of = |method: Method, uri: &str| {
            let req = request(method, uri, &[]);
            let p = &p;
            async move {
                let mut ctx = p.new_ctx(&req);
                assert!(answer(p.route(&req, &mut ctx)).is_none());
                let step = p.cache_key(&req, &mut ctx).await;
                (answer(step), ctx.cache_key)
            }
        };
        let (none, key) = key_of(Method::GET, "/vod/abc/v0/3.m4s?__token__=x&CMCD=y").await;
        assert!(none.is_none());
        assert_eq!(key.as_deref(), Some("/vod/abc/v0/3.m4s"));
        let (none, key) = key_of(Method::GET, "/vod/abc/master.m3u8?__token__=x").await;
        assert!(none.is_none());
        assert_eq!(key.as_deref(), Some("/vod/abc/master.m3u8"));
        let (bad, _) = key_of(Method::GET, "/vod/abc/master.m3u8?max_height=tall").await;
        assert_eq!(bad.expect("400").status, StatusCode::BAD_REQUEST);
        let (bad, _) = key_of(Method::POST, "/vod/abc/master.m3u8").await;
        assert_eq!(bad.expect("405").status, StatusCode::METHOD_NOT_ALLOWED);
        let (bad, _) = key_of(Method::GET, "/vod/abc/nonsense.txt").await;
        assert_eq!(bad.expect("404").status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn response_filter_writes_tokens_into_made_playlists_only() {
        let p = pipeline().await;
        let t = token("/vod/abc/*", None);
        let req = request(Method::GET, &format!("/vod/abc/v0.m3u8?__token__={t}"), &[]);
        let mut ctx = p.new_ctx(&req);
        assert!(answer(p.route(&req, &mut ctx)).is_none());
        assert!(answer(p.authorize(&req, &mut ctx).await).is_none());
        let playlist = Response::new(
            StatusCode::OK,
            "application/vnd.apple.mpegurl",
            "#EXTM3U\n#EXTINF:2,\n1.m4s\n",
        );
        let r = p.response_filter(&req, &mut ctx, playlist);
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(text.contains(&format!("1.m4s?__token__={t}")), "{text}");
        assert_eq!(r.headers["access-control-allow-origin"], "*");
        let error = Response::error(StatusCode::BAD_REQUEST, "bad_filter", "no");
        let r = p.response_filter(&req, &mut ctx, error);
        assert!(!String::from_utf8_lossy(&r.body).contains(&t));
    }

    #[test]
    fn privatize_keeps_lifetimes_but_not_sharing() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=31536000, immutable, s-maxage=60"),
        );
        privatize(&mut h);
        assert_eq!(h["cache-control"], "private, max-age=31536000, immutable");
        let mut h = http::HeaderMap::new();
        privatize(&mut h);
        assert_eq!(h["cache-control"], "private");
        privatize(&mut h);
        assert_eq!(h["cache-control"], "private");
    }
}
