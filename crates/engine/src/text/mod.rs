//! Text handling: the tokenizer (from `tokenizer.json` or GGUF metadata), chat templates,
//! the incremental detokenizer and the stop-string checker. `TextProcessor` bundles what a
//! model needs; the server uses it to render and tokenize, the engine to detokenize.

pub mod detokenizer;
pub mod gguf_tokenizer;
pub mod stop;
pub mod template;

use std::path::Path;

use candle_core::quantized::gguf_file;

pub use detokenizer::IncrementalDetokenizer;
pub use stop::{StopChecker, StopOutcome};
pub use template::{ChatMessage, ChatTemplate};

use crate::Result;

/// Tokenizer + chat template + special-token facts of one model. Immutable after load and
/// shared (`Arc`) between the HTTP handlers and the engine thread.
pub struct TextProcessor {
    // filled by the text implementation
}

impl TextProcessor {
    /// Builds from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    /// `template_override` replaces the model's chat template.
    pub fn from_gguf(_content: &gguf_file::Content, _template_override: Option<&str>) -> Result<Self> {
        todo!("text")
    }
    /// Builds from a Hugging Face folder (`tokenizer.json`, `tokenizer_config.json`,
    /// `generation_config.json`).
    pub fn from_hf_dir(_dir: &Path, _template_override: Option<&str>) -> Result<Self> {
        todo!("text")
    }
    /// Token ids of `text`; with `add_special_tokens` a BOS is prepended when the model wants one.
    /// Special-token text in `text` (e.g. `<|im_start|>`) maps to its special id.
    pub fn encode(&self, _text: &str, _add_special_tokens: bool) -> Result<Vec<u32>> {
        todo!("text")
    }
    pub fn decode(&self, _ids: &[u32], _skip_special_tokens: bool) -> Result<String> {
        todo!("text")
    }
    /// Renders `messages` with the chat template.
    pub fn render_chat(&self, _messages: &[ChatMessage], _add_generation_prompt: bool) -> Result<String> {
        todo!("text")
    }
    /// Render + encode, as the server does for chat completions (no BOS added twice).
    pub fn encode_chat(&self, _messages: &[ChatMessage]) -> Result<Vec<u32>> {
        todo!("text")
    }
    /// EOS plus the end-of-turn tokens the template uses.
    pub fn eog_token_ids(&self) -> &[u32] {
        todo!("text")
    }
    /// The token's text as a logprobs entry shows it, and its raw bytes.
    pub fn token_text(&self, _id: u32) -> (String, Vec<u8>) {
        todo!("text")
    }
    pub fn vocab_size(&self) -> usize {
        todo!("text")
    }
}
