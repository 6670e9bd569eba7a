//! What a caller submits (`GenerateRequest`, `SamplingParams`) and what it gets back (`Event`s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::grammar::CompiledGrammar;

/// How to pick tokens and when to stop. Validation of ranges is the caller's job.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means disabled.
    pub top_k: usize,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1.0 means disabled.
    pub repetition_penalty: f32,
    pub logit_bias: HashMap<u32, f32>,
    /// `Some(k)`: report the chosen token's logprob and the top `k` alternatives.
    pub logprobs: Option<usize>,
    /// Stop strings; the matched text is not emitted.
    pub stop: Vec<String>,
    /// Extra token ids that end generation (besides the model's end-of-generation set).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past end-of-generation tokens (benchmarks). A grammar that completes still
    /// ends the choice.
    pub ignore_eos: bool,
    /// Constrains the output (structured output, tool calls); compiled by
    /// [`crate::grammar::GrammarCompiler`]. Each choice gets its own matcher.
    pub grammar: Option<Arc<CompiledGrammar>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: HashMap::new(),
            logprobs: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            grammar: None,
        }
    }
}

/// A generation request: a tokenized prompt and `n` independent choices.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub id: String,
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    pub n: usize,
    pub arrival: Instant,
    /// Isolates this request's prefix-cache entries: only requests with the same salt share
    /// cached blocks (vLLM's `cache_salt`).
    pub cache_salt: Option<String>,
}

impl GenerateRequest {
    pub fn new(id: impl Into<String>, prompt_ids: Vec<u32>, params: SamplingParams) -> Self {
        Self { id: id.into(), prompt_ids, params, n: 1, arrival: Instant::now(), cache_salt: None }
    }
}

/// One alternative in a logprobs list.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token_id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Logprob data of one sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token, stop token or stop string.
    Stop,
    /// `max_tokens` or the context limit reached.
    Length,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The prompt's tokens, counted once however many choices share it.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

/// What the engine sends back for a request, in order per choice.
#[derive(Debug, Clone)]
pub enum Event {
    /// A sampled token. `text` is the newly releasable text (may be empty while text is held
    /// back for a possible stop string or an incomplete UTF-8 character).
    Token { choice: usize, token_id: u32, text: String, logprob: Option<TokenLogprob> },
    /// A choice ended. `text` is any held-back text released at the end (may be empty).
    Finished { choice: usize, reason: FinishReason, text: String },
    /// Every choice ended. Always the last event of a successful request.
    Done { usage: Usage, queue_time: Duration, first_token_time: Option<Duration> },
    /// The request failed inside the engine; no further events follow.
    Error(String),
}
