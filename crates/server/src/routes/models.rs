//! `GET /v1/models` and `GET /v1/models/{id}`: every configured model under each of its ids,
//! with its kind (chat or embedding), whether it is loaded, and its context length (known once
//! it has been loaded).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::registry::{Loaded, ModelView};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// `chat` or `embedding`.
    pub kind: &'static str,
    /// Whether the model is in memory now (else it loads at its first request).
    pub loaded: bool,
    /// Longest input in tokens (chat: prompt + completion); null until first loaded.
    pub max_model_len: Option<usize>,
    /// What a request that leaves a sampling field out gets (loaded chat models).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub sampling_defaults: Option<wick_engine::sampling::SamplingDefaults>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

fn models(state: &AppState) -> Vec<Model> {
    let loaded = state.models.loaded();
    let mut out = Vec::new();
    for ModelView { names, kind, loaded: is_loaded, context_length } in state.models.list() {
        let chat = loaded.iter().find_map(|(n, l)| match l {
            Loaded::Chat(r) if *n == names[0] => Some(r.clone()),
            _ => None,
        });
        for id in &names {
            out.push(Model {
                id: id.clone(),
                object: "model",
                created: chat.as_ref().map_or(state.models.created(), |r| r.created),
                owned_by: "wick",
                kind: kind.name(),
                loaded: is_loaded,
                max_model_len: context_length,
                sampling_defaults: chat.as_ref().map(|r| r.sampling),
            });
        }
    }
    out
}

/// Every model, under each of its ids.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI", responses((status = 200, body = ModelList)))]
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let data = models(&state);
    if data.is_empty() {
        return Err(ApiError::not_ready());
    }
    Ok(Json(ModelList { object: "list", data }))
}

/// One model, by any of its ids.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "OpenAI", params(("id" = String, Path, description = "A model id")),
    responses((status = 200, body = Model)))]
pub async fn get(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Model>, ApiError> {
    let mut all = models(&state);
    if all.is_empty() {
        return Err(ApiError::not_ready());
    }
    let at = all.iter().position(|m| m.id == id).ok_or_else(|| ApiError::model_not_found(&id))?;
    Ok(Json(all.swap_remove(at)))
}
