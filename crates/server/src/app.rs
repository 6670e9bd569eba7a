//! The axum application: routes, and the layers around them (request id and tracing span,
//! CORS, body limit, panic catcher, and the rewrite of any non-JSON error into the envelope).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::auth;
use crate::error::ApiError;
use crate::openapi;
use crate::routes::{chat, completions, embeddings, health, models, responses, tokenize, ui};
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the router. `cors_origins` empty: no CORS; `["*"]`: any origin.
pub fn router(state: Arc<AppState>, cors_origins: &[String]) -> Router {
    let limit = state.max_body_bytes;
    let api: Router<Arc<AppState>> = Router::new()
        .route("/v1/chat/completions", post(chat::handler))
        .route("/v1/completions", post(completions::handler))
        .route("/v1/embeddings", post(embeddings::handler))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::get).delete(responses::delete))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::get))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::spec));
    let mut app = Router::new()
        .route("/", get(ui::page))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .merge(api)
        .fallback(not_found)
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |req, next| announced_length(req, next, limit)))
        // Before routing: without a key, an unknown route is a 401 too.
        .layer(middleware::from_fn_with_state(state, auth::require_key))
        .layer(middleware::from_fn(move |req, next| envelope_errors(req, next, limit)))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            ApiError::internal("The server hit an internal error while handling this request.").into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                // 5xx answers (a 503 while loading, a caught panic) are worth a warning, not an error.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));
    if let Some(cors) = cors_layer(cors_origins) {
        app = app.layer(cors);
    }
    app
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([REQUEST_ID]),
    )
}

/// A body announced (`Content-Length`) over the limit is a 413 before any of it is read.
async fn announced_length(req: Request, next: Next, limit: usize) -> Response {
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        let mut resp = ApiError::payload_too_large(limit).into_response();
        // The unread body makes the connection unusable for another request.
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found_route(req.uri().path())
}

/// Any error response that is not already JSON (axum's 405, a 413 from the body limit, ...)
/// becomes an OpenAI envelope, keeping its status and headers such as `Allow`.
async fn envelope_errors(req: Request, next: Next, limit: usize) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let err = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(limit),
        s => ApiError::from_status(s, s.canonical_reason().unwrap_or("error")),
    };
    let (mut parts, _) = resp.into_parts();
    let mut fresh = err.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    fresh.headers_mut().extend(parts.headers);
    fresh
}
