//! `GET /v1/models` and `GET /v1/models/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::{AppState, Ready};

#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub max_model_len: usize,
    /// What a request that leaves a sampling field out gets.
    #[schema(value_type = Object)]
    pub sampling_defaults: wick_engine::sampling::SamplingDefaults,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

fn model(ready: &Ready, id: &str) -> Model {
    Model {
        id: id.to_owned(),
        object: "model",
        created: ready.created,
        owned_by: "wick",
        max_model_len: ready.backend.max_model_len(),
        sampling_defaults: ready.sampling,
    }
}

/// The served model (listed under its first id).
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI", responses((status = 200, body = ModelList)))]
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let ready = state.ready()?;
    Ok(Json(ModelList { object: "list", data: ready.model_ids.iter().map(|id| model(ready, id)).collect() }))
}

/// One model, by any of its ids.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "OpenAI", params(("id" = String, Path, description = "A model id")),
    responses((status = 200, body = Model)))]
pub async fn get(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Model>, ApiError> {
    let ready = state.ready()?;
    ready.check_model(&id)?;
    Ok(Json(model(ready, &id)))
}
