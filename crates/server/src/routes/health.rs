//! `GET /health` (the process answers), `GET /ready` (every `preload` model loaded and its
//! engine thread running; 503 before), and `GET /metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::metrics::ModelStats;
use crate::registry::Loaded;
use crate::state::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "probes", security(()),
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the `preload` models are loaded and their engine threads run (503 before).
#[utoipa::path(get, path = "/ready", tag = "probes", security(()),
    responses((status = 200, description = "Ready", body = Object, example = json!({"status": "ready", "model": "SmolLM2-135M-Instruct"}))))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    if let Err(why) = state.models.ready() {
        let mut e = ApiError::not_ready();
        if why.contains("not running") {
            e.message = format!("The engine thread is not running ({why}).");
        }
        return Err(e);
    }
    let models = state.models.list();
    let first = models.first().map(|m| m.names[0].clone());
    let loaded: Vec<&String> = models.iter().filter(|m| m.loaded).map(|m| &m.names[0]).collect();
    Ok(Json(json!({"status": "ready", "model": first, "loaded": loaded})))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "wick",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let loaded = state.models.loaded();
    let models: Vec<ModelStats> = state
        .models
        .list()
        .into_iter()
        .map(|m| {
            let name = m.names[0].clone();
            let l = loaded.iter().find(|(n, _)| *n == name).map(|(_, l)| l);
            ModelStats {
                kind: m.kind.name(),
                chat: match l {
                    Some(Loaded::Chat(r)) => Some(r.backend.stats()),
                    _ => None,
                },
                embed: match l {
                    Some(Loaded::Embedding(e)) => Some(e.embedder.stats()),
                    _ => None,
                },
                name,
            }
        })
        .collect();
    let text = crate::metrics::render(&state.metrics, &models);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
