//! `GET /health` (the process answers), `GET /ready` (model loaded and engine thread running;
//! 503 before), and `GET /metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "probes", security(()),
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the model is loaded and the engine thread runs (503 before).
#[utoipa::path(get, path = "/ready", tag = "probes", security(()),
    responses((status = 200, description = "Ready", body = Object, example = json!({"status": "ready", "model": "SmolLM2-135M-Instruct"}))))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let ready = state.ready()?;
    if !ready.backend.is_running() {
        let mut e = ApiError::not_ready();
        e.message = "The engine thread is not running.".into();
        return Err(e);
    }
    Ok(Json(json!({"status": "ready", "model": ready.model_ids.first()})))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "wick",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.ready().ok().map(|r| r.backend.stats());
    let text = crate::metrics::render(&state.metrics, stats);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
