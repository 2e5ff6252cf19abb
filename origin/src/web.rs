//! The web page and the player libraries it uses, all served by us.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../web/index.html");
const HLS_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hls.min.js"));
const DASH_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dash.all.min.js"));

/// `GET /`.
pub(crate) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        INDEX,
    )
        .into_response()
}

/// `GET /static/{file}`.
pub(crate) async fn asset_file(Path(file): Path<String>) -> Response {
    let body = match file.as_str() {
        "hls.min.js" => HLS_JS,
        "dash.all.min.js" => DASH_JS,
        _ => return crate::api::error(StatusCode::NOT_FOUND, "not_found", "no such file"),
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
