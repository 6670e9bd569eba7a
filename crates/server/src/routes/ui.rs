//! `GET /`: the built-in chat page, one self-contained HTML file compiled into the binary (no
//! CDN, nothing fetched but this server's own API). `--no-ui` turns it off, and `/` is then a
//! 404 envelope like any unknown route.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

pub const PAGE: &str = include_str!("../ui/index.html");

/// What the page may load and talk to: only itself and its own origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The chat page (a 404 with `--no-ui`); open without a key, it asks for one when the API
/// answers 401.
#[utoipa::path(get, path = "/", tag = "wick", security(()),
    responses((status = 200, description = "The chat page", content_type = "text/html", body = String)))]
pub async fn page(State(state): State<Arc<AppState>>) -> Response {
    if !state.ui {
        return ApiError::not_found_route("/").into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}
