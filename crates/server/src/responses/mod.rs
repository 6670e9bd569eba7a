//! The Responses API's own pieces: the request mapped onto the chat path (`request`), input
//! items to chat messages (`input`), the model's text as output items and stream events
//! (`output`), and the store of responses (`store`). The handlers are in `routes::responses`.

pub mod input;
pub mod output;
pub mod request;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};

use crate::error::ApiError;
use crate::openai::responses::{InputTokensDetails, OutputTokensDetails, ResponseUsage};
use crate::state::AppState;
use store::{ResponseStore, Retention, StoreError};

/// The owner of the responses a request makes and may read: the digest of its API key, or ""
/// when the server has no keys (the auth layer has already checked the key).
pub fn owner(state: &AppState, headers: &HeaderMap) -> String {
    if state.api_key_digests.is_empty() {
        return String::new();
    }
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    store::owner_of_key(key)
}

/// `usage` of a response. `reasoning_tokens`: the tokens of the reasoning text.
pub fn usage(u: wick_engine::Usage, reasoning_tokens: usize) -> ResponseUsage {
    ResponseUsage {
        input_tokens: u.prompt_tokens,
        // The prompt tokens the prefix cache served (`previous_response_id` chains hit it).
        input_tokens_details: InputTokensDetails {
            cached_tokens: u.cached_tokens.min(u.prompt_tokens),
            cache_write_tokens: 0,
        },
        output_tokens: u.completion_tokens,
        output_tokens_details: OutputTokensDetails { reasoning_tokens: reasoning_tokens.min(u.completion_tokens) },
        total_tokens: u.prompt_tokens + u.completion_tokens,
    }
}

/// The 404 for a response id this caller cannot see (`param`: where the id came from).
pub fn not_found(id: &str, param: &str) -> ApiError {
    let mut e = ApiError::from_status(StatusCode::NOT_FOUND, format!("Response with id '{id}' not found."));
    e.param = Some(param.to_owned());
    e.code = Some("not_found");
    e
}

/// Runs a store call off the async workers; a store failure is a 500.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<dyn ResponseStore>,
    f: impl FnOnce(&dyn ResponseStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("the response store failed: {e}")))?
        .map_err(|e| {
            tracing::error!(error = %e, "response store");
            ApiError::internal(format!("the response store failed: {e}"))
        })
}

/// Applies `retention` now and then every `every`, for as long as the process runs.
pub async fn retention_task(store: Arc<dyn ResponseStore>, retention: Retention, every: Duration) {
    if retention == Retention::default() {
        return;
    }
    loop {
        let now = crate::openai::common::unix_now();
        match blocking(&store, move |s| s.purge(now, retention)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(dropped = n, "response store retention"),
            Err(e) => tracing::warn!(error = %e.message, "response store retention failed"),
        }
        tokio::time::sleep(every).await;
    }
}
