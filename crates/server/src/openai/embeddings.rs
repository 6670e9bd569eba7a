//! `/v1/embeddings` request and response types, in OpenAI's shape.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    /// `float` (the default) or `base64`: the little-endian f32 bytes of each vector.
    #[schema(value_type = Option<String>)]
    pub encoding_format: Option<String>,
    /// Width of the vectors returned: for Matryoshka models any width up to the model's
    /// (truncated, then re-normalized); otherwise only the model's own.
    pub dimensions: Option<i64>,
    /// A tag for the end user (accepted, not used).
    pub user: Option<String>,
    /// Extension (TEI / sentence-transformers): the name of one of the model's instruction
    /// prompts, put before each text input (e.g. `query` for Qwen3-Embedding). Default: the
    /// model's `default_prompt_name`, if it has one. Not allowed with token-id inputs.
    pub prompt_name: Option<String>,
}

/// `input`: a string, a list of strings, a list of token ids, or a list of such lists. Token
/// ids are the model's own and are embedded as given (no special tokens are added).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One vector: numbers, or a base64 string of little-endian f32s.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Embedding {
    pub object: &'static str,
    pub embedding: EmbeddingVector,
    pub index: usize,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}
