//! HTTP handlers, one file per endpoint family.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod health;
pub mod models;
pub mod responses;
pub mod tokenize;
pub mod ui;

use wick_engine::EngineError;

use crate::error::ApiError;

/// Tokenizer or template failures on the client's input are 400s; anything else is ours.
pub fn text_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Template(m) => {
            ApiError::invalid(Some("messages"), format!("The chat template could not render these messages: {m}"))
        }
        EngineError::Tokenizer(m) | EngineError::InvalidRequest(m) => ApiError::invalid(None, m),
        other => ApiError::internal(other.to_string()),
    }
}

/// A fresh completion id with the given prefix.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
