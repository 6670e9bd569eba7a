//! `POST /tokenize` and `POST /detokenize`, in vLLM's shapes.

use std::sync::Arc;

use axum::extract::State;
use axum::Json as JsonOut;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::backend::Backend;
use crate::error::ApiError;
use crate::extract::Json;
use crate::openai::chat::RequestMessage;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<RequestMessage>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    pub return_token_strs: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    pub token_strs: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

/// Token ids of a prompt, or of chat messages through the chat template (vLLM's shape).
#[utoipa::path(post, path = "/tokenize", tag = "wick", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse)))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    Json(req): Json<TokenizeRequest>,
) -> Result<JsonOut<TokenizeResponse>, ApiError> {
    let ready = state.ready()?;
    if let Some(m) = &req.model {
        ready.check_model(m)?;
    }
    let bytes = req.prompt.as_ref().map_or(0, String::len)
        + req.messages.as_ref().map_or(0, |ms| ms.iter().map(RequestMessage::text_len).sum());
    let b = ready.backend.clone();
    state.cpu.run(bytes, move || tokenize_with(b.as_ref(), &req)).await?.map(JsonOut)
}

fn tokenize_with(b: &dyn Backend, req: &TokenizeRequest) -> Result<TokenizeResponse, ApiError> {
    let tokens = match (&req.prompt, &req.messages) {
        (Some(p), None) => b.encode(p, req.add_special_tokens.unwrap_or(true)).map_err(super::text_error)?,
        (None, Some(msgs)) => {
            if req.add_generation_prompt.is_some() && req.add_generation_prompt != Some(true) {
                let text = b.render_chat(&crate::messages::messages(msgs)?, false).map_err(super::text_error)?;
                b.encode(&text, req.add_special_tokens.unwrap_or(false)).map_err(super::text_error)?
            } else {
                if req.add_special_tokens == Some(true) {
                    return Err(ApiError::unsupported(
                        "add_special_tokens",
                        "The chat template adds the special tokens itself.",
                    ));
                }
                b.encode_chat(&crate::messages::messages(msgs)?, &serde_json::Value::Null).map_err(super::text_error)?
            }
        }
        _ => return Err(ApiError::invalid(Some("prompt"), "Send exactly one of `prompt` and `messages`.")),
    };
    let token_strs =
        req.return_token_strs.unwrap_or(false).then(|| tokens.iter().map(|&t| b.token_text(t).0).collect());
    Ok(TokenizeResponse { count: tokens.len(), max_model_len: b.max_model_len(), tokens, token_strs })
}

/// The text of token ids (vLLM's shape).
#[utoipa::path(post, path = "/detokenize", tag = "wick", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse)))]
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    Json(req): Json<DetokenizeRequest>,
) -> Result<JsonOut<DetokenizeResponse>, ApiError> {
    let ready = state.ready()?;
    if let Some(m) = &req.model {
        ready.check_model(m)?;
    }
    let b = ready.backend.as_ref();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= b.vocab_size()) {
        return Err(ApiError::invalid_value("tokens", format!("Token id {bad} is out of the vocabulary.")));
    }
    let prompt = b.decode(&req.tokens, false).map_err(super::text_error)?;
    Ok(JsonOut(DetokenizeResponse { prompt }))
}
