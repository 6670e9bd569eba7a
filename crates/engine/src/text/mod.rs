//! Text handling: the tokenizer (from `tokenizer.json` or GGUF metadata), chat templates,
//! the incremental detokenizer and the stop-string checker. `TextProcessor` bundles what a
//! model needs; the server uses it to render and tokenize, the engine to detokenize.

mod byte_level;
pub mod detokenizer;
pub mod gguf_tokenizer;
mod hf_dir;
mod sentencepiece;
pub mod stop;
mod strftime;
pub mod template;

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

pub use detokenizer::IncrementalDetokenizer;
pub use stop::{StopChecker, StopOutcome};
pub use template::{ChatMessage, ChatTemplate, CHATML_TEMPLATE, GEMMA3_TEMPLATE};

use gguf_tokenizer::{meta_string, TokenizerParts};

use crate::{EngineError, Result};

/// Tokens that end a turn in common chat formats. Any of them present in the vocabulary as a
/// special (added) token ends generation, as in llama.cpp.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
    "<|END_OF_TURN_TOKEN|>",
    "<｜end▁of▁sentence｜>",
];

/// Tokenizer + chat template + special-token facts of one model. Immutable after load and
/// shared (`Arc`) between the HTTP handlers and the engine thread.
pub struct TextProcessor {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    token_bytes: Vec<Vec<u8>>,
    bos_id: Option<u32>,
    add_bos: bool,
    eog_ids: Vec<u32>,
}

impl std::fmt::Debug for TextProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextProcessor")
            .field("vocab_size", &self.token_bytes.len())
            .field("bos_id", &self.bos_id)
            .field("add_bos", &self.add_bos)
            .field("eog_ids", &self.eog_ids)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl TextProcessor {
    /// Builds from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    /// `template_override` replaces the model's chat template.
    pub fn from_gguf(content: &gguf_file::Content, template_override: Option<&str>) -> Result<Self> {
        let parts = gguf_tokenizer::from_gguf(content)?;
        let token_str = |id: Option<u32>| id.and_then(|i| parts.tokens.get(i as usize)).cloned().unwrap_or_default();
        let (bos, eos) = (token_str(parts.bos_id), token_str(parts.eos_id));
        let arch = meta_string(content, "general.architecture").unwrap_or_default();
        let builtin = matches!(arch.as_str(), "gemma" | "gemma2" | "gemma3").then_some(GEMMA3_TEMPLATE);
        let source = template_override
            .map(str::to_owned)
            .or_else(|| meta_string(content, "tokenizer.chat_template"))
            .or_else(|| builtin.map(str::to_owned));
        Self::assemble(parts, source.as_deref(), &bos, &eos)
    }

    /// Builds from a Hugging Face folder (`tokenizer.json`, `tokenizer_config.json`,
    /// `generation_config.json`).
    pub fn from_hf_dir(dir: &Path, template_override: Option<&str>) -> Result<Self> {
        let hf = hf_dir::load(dir)?;
        let source = template_override.map(str::to_owned).or(hf.chat_template);
        Self::assemble(hf.parts, source.as_deref(), &hf.bos_token, &hf.eos_token)
    }

    fn assemble(parts: TokenizerParts, template: Option<&str>, bos: &str, eos: &str) -> Result<Self> {
        let template = ChatTemplate::new(template.unwrap_or(CHATML_TEMPLATE), bos, eos)?;
        let added = parts.tokenizer.get_added_tokens_decoder();
        let mut eog_ids: Vec<u32> = parts.eos_id.into_iter().chain(parts.extra_eog.iter().copied()).collect();
        for name in END_OF_TURN_TOKENS {
            if let Some(id) = parts.tokenizer.token_to_id(name).filter(|id| added.contains_key(id)) {
                eog_ids.push(id);
            }
        }
        let mut seen = std::collections::HashSet::new();
        eog_ids.retain(|id| seen.insert(*id));
        Ok(Self {
            tokenizer: parts.tokenizer,
            template,
            token_bytes: parts.token_bytes,
            bos_id: parts.bos_id,
            add_bos: parts.add_bos,
            eog_ids,
        })
    }

    /// Token ids of `text`; with `add_special_tokens` a BOS is prepended when the model wants one.
    /// Special-token text in `text` (e.g. `<|im_start|>`) maps to its special id.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_special_tokens && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    /// Renders `messages` with the chat template.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.template.render(messages, add_generation_prompt)
    }

    /// Render + encode, as the server does for chat completions (no BOS added twice: a
    /// template that writes BOS itself gets none added).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode_chat_with(messages, &serde_json::Value::Null)
    }

    /// [`encode_chat`](Self::encode_chat) with extra template variables (see
    /// [`ChatTemplate::render_with`]).
    pub fn encode_chat_with(&self, messages: &[ChatMessage], extra: &serde_json::Value) -> Result<Vec<u32>> {
        let text = self.template.render_with(messages, true, extra)?;
        let mut ids = self.encode(&text, false)?;
        if let Some(bos) = self.bos_id.filter(|_| self.add_bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// EOS plus the end-of-turn tokens the template uses.
    pub fn eog_token_ids(&self) -> &[u32] {
        &self.eog_ids
    }

    /// The token's text as a logprobs entry shows it (lossy UTF-8 of its bytes), and its raw
    /// bytes. A byte-level token that is half of a UTF-8 character shows U+FFFD but keeps its
    /// exact bytes. An id outside the vocabulary gives empty text.
    pub fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        match self.token_bytes.get(id as usize) {
            Some(bytes) => (String::from_utf8_lossy(bytes).into_owned(), bytes.clone()),
            None => (String::new(), Vec::new()),
        }
    }

    /// Ids of the added tokens marked special (control tokens), sorted.
    pub fn special_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> =
            self.tokenizer.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    /// Number of token ids (the model's vocabulary, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The BOS id, and whether `encode(.., true)` prepends it.
    pub fn bos(&self) -> (Option<u32>, bool) {
        (self.bos_id, self.add_bos)
    }

    /// The chat template in use.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }
}

#[cfg(test)]
mod tests;
