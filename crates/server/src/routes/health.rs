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

pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let ready = state.ready()?;
    if !ready.backend.is_running() {
        let mut e = ApiError::not_ready();
        e.message = "The engine thread is not running.".into();
        return Err(e);
    }
    Ok(Json(json!({"status": "ready", "model": ready.model_ids.first()})))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.ready().ok().map(|r| r.backend.stats());
    let text = crate::metrics::render(&state.metrics, stats);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
