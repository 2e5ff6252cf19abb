//! The web page and the player libraries it uses, all served by us.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::http::error::Plain;
use crate::storage::Error;

const INDEX: &str = include_str!("../../web/index.html");
const HLS_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hls.min.js"));
const DASH_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dash.all.min.js"));

/// `GET /`, with a Content-Security-Policy that lets only our own scripts
/// run (the page's inline script by its hash), never inside a frame.
pub(crate) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=60"),
            (header::CONTENT_SECURITY_POLICY, page_policy()),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        INDEX,
    )
        .into_response()
}

/// The page's Content-Security-Policy, made once: scripts from us and the
/// one inline script by its SHA-256; media and segments from any edge the
/// playback API names (players fetch them, and MSE plays them as `blob:`);
/// hls.js runs its demuxer in a `blob:` worker; real-time events come from
/// the edges' events listener (WebSocket or SSE).
fn page_policy() -> &'static str {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let hashes: Vec<String> = inline_scripts(INDEX)
            .map(|s| {
                use base64::Engine;
                let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
                format!(
                    "'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
                )
            })
            .collect();
        format!(
            "default-src 'self'; script-src 'self' {}; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: blob:; media-src 'self' blob: https: http:; \
             connect-src 'self' https: http: wss: ws:; worker-src 'self' blob:; object-src 'none'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            hashes.join(" ")
        )
    })
}

/// The text of each inline `<script>` (one with no `src`) of a page.
fn inline_scripts(page: &str) -> impl Iterator<Item = &str> {
    page.split("<script>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</script>").map(|(body, _)| body))
}

/// `GET /static/{file}`.
pub(crate) async fn asset_file(Path(file): Path<String>) -> Response {
    let body = match file.as_str() {
        "hls.min.js" => HLS_JS,
        "dash.all.min.js" => DASH_JS,
        _ => return Plain(Error::not_found("file")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}
