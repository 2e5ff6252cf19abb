//! The viewer API's OpenAPI document, generated from the handlers'
//! annotations, served at `/api/v1/openapi.json`.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use crate::http::error::ErrorBody;
use crate::http::{accounts, ads, billing, catalog, channels, interactive, keys, playback};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cascade viewer API",
        description = "Accounts, profiles, the catalog, subscriptions, playback and watch history. \
            Errors are JSON: {\"error\": code, \"message\": text}, sometimes with details."
    ),
    paths(
        accounts::signup, accounts::verify, accounts::login, accounts::refresh, accounts::logout, accounts::me,
        accounts::list_profiles, accounts::create_profile, accounts::delete_profile,
        catalog::list, catalog::get_title, catalog::browse, catalog::artwork,
        catalog::create, catalog::update, catalog::delete, catalog::put_artwork,
        billing::plans, billing::webhook,
        playback::playback, playback::heartbeat, playback::stop, playback::history,
        channels::create, channels::list, channels::get, channels::rotate_key, channels::stop,
        channels::live_list, channels::live_playback, channels::ad_break,
        interactive::live_comments, interactive::vod_comments, interactive::post_live_comment,
        interactive::post_vod_comment, interactive::delete_comment, interactive::report,
        interactive::reports, interactive::mute, interactive::unmute, interactive::add_moderator,
        interactive::remove_moderator, interactive::live_totals, interactive::vod_totals,
        interactive::live_polls, interactive::vote, interactive::create_poll, interactive::close_poll,
        interactive::create_flash, interactive::end_flash, interactive::flashes,
        ads::vast, ads::add, ads::list, ads::remove, ads::list_creatives, ads::report, ads::set_breaks, ads::client_tracking,
        keys::set_protection, keys::export_keys, keys::import_keys, keys::watermark_holders,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "session", description = "Sign-up and its emailed link, login, refresh, logout"),
        (name = "profiles", description = "Viewer profiles of an account"),
        (name = "catalog", description = "Browse, search and read titles"),
        (name = "playback", description = "Start streams, heartbeats, watch history"),
        (name = "ads", description = "The built-in ad decision service, titles' ad breaks, creatives and the ad report"),
        (name = "billing", description = "Plans and the payment webhook"),
        (name = "admin", description = "Catalog editing (the admin credential)"),
        (name = "live", description = "Live channels and their stream keys (the admin credential)"),
        (name = "together", description = "Comments, reactions, polls and news flashes; pushed live by the edges' events listener"),
    )
)]
struct ViewerApi;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "bearer",
                "An access token from login, sign-up's verify or refresh",
            ),
            ("stream", "The heartbeat_token of a stream"),
            ("admin", "The origin's admin_token"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// The document as JSON.
pub fn openapi_json() -> String {
    ViewerApi::openapi().to_pretty_json().unwrap_or_default()
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn serve() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        openapi_json(),
    )
        .into_response()
}
