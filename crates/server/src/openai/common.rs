//! Wire types shared by chat and legacy completions: stop lists, stream options, usage.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// Accepted when false; padding obfuscation is not implemented.
    pub include_obfuscation: Option<bool>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt tokens: how many came from the prefix cache.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl From<wick_engine::Usage> for Usage {
    fn from(u: wick_engine::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens },
        }
    }
}

pub fn finish_reason_str(r: wick_engine::FinishReason) -> &'static str {
    match r {
        wick_engine::FinishReason::Stop => "stop",
        wick_engine::FinishReason::Length => "length",
    }
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `system_fingerprint` we report: the server build.
pub fn system_fingerprint() -> String {
    format!("wick-{}", env!("CARGO_PKG_VERSION"))
}
