//! `/v1/chat/completions` request, response and chunk types.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::common::{StopSpec, StreamOptions, Usage};

/// A chat-completions request. Fields OpenAI defines but wick does not implement are parsed
/// as raw values so validation can reject them by name; anything else is an unknown field.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<StopSpec>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    // Common extensions (vLLM's names).
    /// Only requests with the same salt share prefix-cache blocks (tenant isolation).
    pub cache_salt: Option<String>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<u32>>,
    /// wick's extension: a grammar in llguidance's Lark-like syntax the output must match.
    pub grammar: Option<String>,
    /// `text`, `json_object` or `json_schema` (see `structured`).
    pub response_format: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    /// Passed to templates that read it (gpt-oss style `reasoning_effort`).
    pub reasoning_effort: Option<Value>,
    /// Extra chat-template variables (vLLM/SGLang), e.g. `{"enable_thinking": false}`.
    pub chat_template_kwargs: Option<Value>,
    // Known OpenAI fields that are rejected unless they carry a no-op value.
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub audio: Option<Value>,
    pub modalities: Option<Value>,
    pub prediction: Option<Value>,
    pub store: Option<Value>,
    pub metadata: Option<Value>,
    pub service_tier: Option<Value>,
    pub web_search_options: Option<Value>,
    pub verbosity: Option<Value>,
    pub prompt_cache_key: Option<Value>,
    pub safety_identifier: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
    pub refusal: Option<String>,
    pub function_call: Option<Value>,
    pub audio: Option<Value>,
}

impl RequestMessage {
    /// Bytes of text in the content (what the chat template and tokenizer will read).
    pub fn text_len(&self) -> usize {
        match &self.content {
            None => 0,
            Some(MessageContent::Text(s)) => s.len(),
            Some(MessageContent::Parts(parts)) => parts.iter().filter_map(|p| p.text.as_ref()).map(String::len).sum(),
        }
    }
}

/// Message content: a string or an array of typed parts.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub rest: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

impl From<&wick_engine::TokenLogprob> for TokenLogprob {
    fn from(l: &wick_engine::TokenLogprob) -> Self {
        Self {
            token: l.token.clone(),
            logprob: l.logprob,
            bytes: l.bytes.clone(),
            top_logprobs: l
                .top
                .iter()
                .map(|t| TopLogprob { token: t.token.clone(), logprob: t.logprob, bytes: t.bytes.clone() })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprob>,
    pub refusal: Option<String>,
}

/// A tool call in a response message.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    pub arguments: String,
}

/// A tool call in a stream chunk: the first delta of a call carries `id`, `type` and the
/// name, later ones `arguments` fragments.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseMessage {
    pub role: &'static str,
    /// `null` when the message is only tool calls.
    pub content: Option<String>,
    pub refusal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The model's thinking (llama-server's and SGLang's name) ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// ... and the same under vLLM's, Ollama's and OpenRouter's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Choice {
    pub index: usize,
    pub message: ResponseMessage,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub system_fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Default, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    /// Present (as `null` or a value) only with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}
