//! `/v1/responses` wire types: the request as it arrives (strict: unknown fields are rejected,
//! known-but-unsupported ones are kept as raw values so validation can name them), the
//! `response` object with its output items and usage, and the streamed events.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A Responses API request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateResponse {
    pub model: String,
    /// A string (one user message) or a list of input items.
    pub input: Option<Value>,
    pub instructions: Option<Value>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// `{"format": {...}, "verbosity": ...}`.
    pub text: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    /// `{"effort": ..., "summary": ...}`.
    pub reasoning: Option<Value>,
    pub metadata: Option<Value>,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<Value>,
    pub user: Option<String>,
    pub safety_identifier: Option<Value>,
    pub prompt_cache_key: Option<Value>,
    pub truncation: Option<Value>,
    pub service_tier: Option<Value>,
    // Known fields that are rejected unless they carry a no-op value.
    pub background: Option<Value>,
    pub include: Option<Value>,
    pub max_tool_calls: Option<Value>,
    pub prompt: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub conversation: Option<Value>,
    pub context_management: Option<Value>,
    pub prompt_cache_retention: Option<Value>,
    pub moderation: Option<Value>,
}

/// The `response` object (also what the store keeps and `GET /v1/responses/{id}` returns).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    pub completed_at: Option<u64>,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub reasoning: ReasoningConfig,
    pub store: bool,
    pub temperature: f64,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Vec<Value>,
    pub top_p: f64,
    pub truncation: String,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub background: bool,
    pub service_tier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct IncompleteDetails {
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ReasoningConfig {
    pub effort: Option<String>,
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: usize,
    pub cache_write_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: usize,
}

/// One output item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message {
        id: String,
        status: String,
        role: String,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        status: String,
        call_id: String,
        name: String,
        /// JSON text.
        arguments: String,
    },
    Reasoning {
        id: String,
        status: String,
        summary: Vec<SummaryText>,
    },
}

impl OutputItem {
    pub fn id(&self) -> &str {
        match self {
            OutputItem::Message { id, .. } | OutputItem::FunctionCall { id, .. } | OutputItem::Reasoning { id, .. } => {
                id
            }
        }
    }
}

/// An `output_text` content part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    pub annotations: Vec<Value>,
    pub logprobs: Vec<Value>,
}

impl OutputText {
    pub fn new(text: impl Into<String>) -> Self {
        Self { kind: "output_text".into(), text: text.into(), annotations: Vec::new(), logprobs: Vec::new() }
    }
}

/// A `summary_text` part of a reasoning item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SummaryText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

impl SummaryText {
    pub fn new(text: impl Into<String>) -> Self {
        Self { kind: "summary_text".into(), text: text.into() }
    }
}

/// `GET /v1/responses/{id}/input_items`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ItemList {
    pub object: &'static str,
    pub data: Vec<Value>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// `DELETE /v1/responses/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}
