//! Text handling: the tokenizer (from `tokenizer.json` or GGUF metadata), chat templates,
//! the incremental detokenizer and the stop-string checker. `TextProcessor` bundles what a
//! model needs; the server uses it to render and tokenize, the engine to detokenize.

mod bpe;
mod builtin;
mod byte_level;
pub mod detokenizer;
pub mod gguf_tokenizer;
mod hf_dir;
mod sentencepiece;
pub mod stop;
mod strftime;
pub mod template;
mod tokenizer;
mod vocab;

use std::path::Path;

use candle_core::quantized::gguf_file;

pub use builtin::{BuiltinTemplate, TemplateSource};
pub use detokenizer::IncrementalDetokenizer;
pub use stop::{StopChecker, StopOutcome};
pub use template::{ChatMessage, ChatTemplate, CHATML_TEMPLATE, GEMMA3_TEMPLATE};

use gguf_tokenizer::{meta_string, TokenizerParts};
use tokenizer::TextTokenizer;
use vocab::Pieces;

use crate::{EngineError, Result};

/// Tokens that end generation when the vocabulary holds them as special (added) tokens: the
/// end-of-generation list llama.cpp keeps by token text (`llama_vocab::impl::load`), plus
/// Cohere's end of turn. Llama 3 `<|eot_id|>` / `<|eom_id|>` / `<|end_of_text|>`, ChatML and
/// Qwen `<|im_end|>` / `<|endoftext|>`, Phi-3 `<|end|>`, Gemma `<end_of_turn>`, gpt-oss
/// `<|return|>` / `<|call|>`; Mistral's `</s>` is its EOS.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "</s>",
    "<EOT>",
    "<|END_OF_TURN_TOKEN|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];

/// Tokenizer + chat template + special-token facts of one model. Immutable after load and
/// shared (`Arc`) between the HTTP handlers and the engine thread.
pub struct TextProcessor {
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    template_source: TemplateSource,
    token_bytes: Pieces,
    bos_id: Option<u32>,
    add_bos: bool,
    eog_ids: Vec<u32>,
    append_ids: Vec<u32>,
}

impl std::fmt::Debug for TextProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextProcessor")
            .field("vocab_size", &self.token_bytes.len())
            .field("bos_id", &self.bos_id)
            .field("add_bos", &self.add_bos)
            .field("eog_ids", &self.eog_ids)
            .field("template", &self.template_source)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// The template to use: the override, else the model's own, else the built-in for `arch`.
fn choose_template(
    template_override: Option<&str>,
    model: Option<String>,
    arch: &str,
    tokenizer: &TextTokenizer,
) -> (String, TemplateSource) {
    if let Some(t) = template_override {
        return (t.to_owned(), TemplateSource::Override);
    }
    // gpt-oss understands only harmony: a file whose template does not write harmony's
    // channels (the tiny fixture carries SmolLM2's ChatML) gets the built-in renderer.
    let harmony_arch = matches!(arch, "gpt-oss" | "gpt_oss");
    if let Some(t) = model.filter(|t| !harmony_arch || t.contains("<|channel|>")) {
        return (t, TemplateSource::Model);
    }
    let builtin = BuiltinTemplate::for_model(arch, |t| tokenizer.token_to_id(t).is_some());
    tracing::info!("the model carries no chat template; using the built-in {builtin} template (architecture {arch:?})");
    (builtin.source().to_owned(), TemplateSource::Builtin(builtin))
}

impl TextProcessor {
    /// Builds from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    /// `template_override` replaces the model's chat template; a file with none gets the
    /// built-in template of its `general.architecture` ([`BuiltinTemplate::for_model`]).
    pub fn from_gguf(content: &gguf_file::Content, template_override: Option<&str>) -> Result<Self> {
        let parts = gguf_tokenizer::from_gguf(content)?;
        let token_str = |id: Option<u32>| id.and_then(|i| parts.tokens.get(i as usize)).cloned().unwrap_or_default();
        let (bos, eos) = (token_str(parts.bos_id), token_str(parts.eos_id));
        let arch = meta_string(content, "general.architecture").unwrap_or_default();
        let (source, origin) = choose_template(
            template_override,
            meta_string(content, "tokenizer.chat_template"),
            &arch,
            &parts.tokenizer,
        );
        Self::assemble(parts, &source, origin, &bos, &eos)
    }

    /// Builds from a Hugging Face folder (`tokenizer.json`, `tokenizer_config.json`,
    /// `chat_template.jinja`, `generation_config.json`; `config.json`'s `model_type` picks the
    /// built-in template when the folder has none).
    pub fn from_hf_dir(dir: &Path, template_override: Option<&str>) -> Result<Self> {
        let hf = hf_dir::load(dir)?;
        let model_type = hf.model_type.unwrap_or_default();
        let (source, origin) = choose_template(template_override, hf.chat_template, &model_type, &hf.parts.tokenizer);
        Self::assemble(hf.parts, &source, origin, &hf.bos_token, &hf.eos_token)
    }

    fn assemble(parts: TokenizerParts, template: &str, origin: TemplateSource, bos: &str, eos: &str) -> Result<Self> {
        let template = ChatTemplate::new(template, bos, eos)?;
        let eog_ids = end_of_generation_ids(&parts);
        Ok(Self {
            tokenizer: parts.tokenizer,
            template,
            template_source: origin,
            token_bytes: parts.token_bytes,
            bos_id: parts.bos_id,
            add_bos: parts.add_bos,
            eog_ids,
            append_ids: parts.append_ids,
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

    /// [`render_chat`](Self::render_chat) with extra template variables (a JSON object, e.g.
    /// `{"enable_thinking": false}`); see [`ChatTemplate::render_with`].
    pub fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        self.template.render_with(messages, add_generation_prompt, extra)
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
        match self.token_bytes.get(id) {
            Some(bytes) => (String::from_utf8_lossy(bytes).into_owned(), bytes.to_vec()),
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

    /// Ids the model's tokenizer appends to every encoded text (GGUF
    /// `tokenizer.ggml.add_eos_token`, a Hugging Face post-processor's trailing special tokens).
    /// [`encode`](Self::encode) never appends them (a generation prompt must not end in EOS);
    /// embedding models do.
    pub fn appended_ids(&self) -> &[u32] {
        &self.append_ids
    }

    /// The chat template in use.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Where the chat template came from (override, the model, or a built-in).
    pub fn template_source(&self) -> TemplateSource {
        self.template_source
    }
}

/// EOS, the ids the model files declare (GGUF `eot`/`eom`, `generation_config.json`'s EOS list),
/// and the [`END_OF_TURN_TOKENS`] the vocabulary holds as special tokens; ids outside the
/// vocabulary are dropped. As in llama.cpp, a vocabulary with gpt-oss's `<|return|>` and
/// `<|call|>` keeps `<|end|>` out (it ends a message there, not the generation).
fn end_of_generation_ids(parts: &TokenizerParts) -> Vec<u32> {
    let added = parts.tokenizer.get_added_tokens_decoder();
    let special = |name: &str| parts.tokenizer.token_to_id(name).filter(|id| added.contains_key(id));
    let mut ids: Vec<u32> = parts.eos_id.into_iter().chain(parts.extra_eog.iter().copied()).collect();
    ids.extend(END_OF_TURN_TOKENS.iter().filter_map(|name| special(name)));
    if special("<|return|>").is_some() && special("<|call|>").is_some() {
        if let Some(end) = special("<|end|>") {
            ids.retain(|&id| id != end);
        }
    }
    let vocab = parts.token_bytes.len();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|&id| (id as usize) < vocab && seen.insert(id));
    ids
}

#[cfg(test)]
mod tests;
