//! Loading the text side of a Hugging Face model folder: `tokenizer.json`,
//! `tokenizer_config.json` (chat template, BOS/EOS strings, `add_bos_token`),
//! `chat_template.jinja`, `generation_config.json` (the list of EOS ids) and `config.json`'s
//! `model_type` (which picks the built-in template when the folder has none).

use std::path::Path;

use serde_json::Value as Json;
use tokenizers::decoders::DecoderWrapper;

use super::byte_level;
use super::gguf_tokenizer::TokenizerParts;
use super::tokenizer::TextTokenizer;
use super::vocab::Pieces;
use crate::{EngineError, Result};

/// The tokenizer plus what the folder says about templates and special tokens.
pub(crate) struct HfText {
    pub parts: TokenizerParts,
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
    /// `config.json`'s `model_type` (`llama`, `qwen3`, `gemma3_text`, ...).
    pub model_type: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))
}

/// A special token in `tokenizer_config.json` is a string or an AddedToken object.
fn token_string(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` is a string or a list of `{name, template}`; the list's "default" is used.
fn chat_template(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

fn ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_u64).filter_map(|n| u32::try_from(n).ok()).collect(),
        _ => Vec::new(),
    }
}

fn is_byte_level(decoder: Option<&DecoderWrapper>) -> bool {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(seq)) => {
            seq.get_decoders().iter().any(|d| matches!(d, DecoderWrapper::ByteLevel(_)))
        }
        _ => false,
    }
}

/// The ids the tokenizer's post-processor appends after a text (sentence-transformers'
/// Qwen3-Embedding appends `<|endoftext|>`): encoded with special tokens, minus what the text
/// alone encodes to and what comes before it.
fn post_processor_suffix(tokenizer: &TextTokenizer) -> Vec<u32> {
    let (Ok(with), Ok(without)) = (tokenizer.encode("a", true), tokenizer.encode("a", false)) else {
        return Vec::new();
    };
    let (with, without) = (with.get_ids(), without.get_ids());
    if without.is_empty() {
        return Vec::new();
    }
    with.windows(without.len())
        .position(|w| w == without)
        .map(|p| with[p + without.len()..].to_vec())
        .unwrap_or_default()
}

pub(crate) fn load(dir: &Path) -> Result<HfText> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.exists() {
        return Err(EngineError::Tokenizer(format!("{} has no tokenizer.json", dir.display())));
    }
    let tokenizer = TextTokenizer::from_file(&tokenizer_path)
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
    let model_type = read_json(&dir.join("config.json"))?
        .and_then(|c| c.get("model_type").and_then(Json::as_str).map(str::to_owned));
    let template_file = dir.join("chat_template.jinja");
    let chat_template =
        if template_file.exists() { Some(std::fs::read_to_string(&template_file)?) } else { chat_template(&config) };

    let id_of = |s: &Option<String>| s.as_deref().and_then(|s| tokenizer.token_to_id(s));
    let mut bos_token = token_string(config.get("bos_token"));
    let mut eos_token = token_string(config.get("eos_token"));
    let gen_eos = ids(generation.get("eos_token_id"));
    let bos_id = id_of(&bos_token).or_else(|| ids(generation.get("bos_token_id")).first().copied());
    let eos_id = id_of(&eos_token).or_else(|| gen_eos.first().copied());
    bos_token = bos_token.or_else(|| bos_id.and_then(|i| tokenizer.id_to_token(i)));
    eos_token = eos_token.or_else(|| eos_id.and_then(|i| tokenizer.id_to_token(i)));

    // BOS is added when tokenizer_config says so, else when the post-processor adds it.
    let post_adds_bos = || -> bool {
        let with = tokenizer.encode("a", true).ok();
        with.and_then(|e| e.get_ids().first().copied()).is_some_and(|first| Some(first) == bos_id)
    };
    let add_bos = bos_id.is_some() && config.get("add_bos_token").and_then(Json::as_bool).unwrap_or_else(post_adds_bos);

    let added = tokenizer.get_added_tokens_decoder();
    let byte_level_vocab = is_byte_level(tokenizer.get_decoder());
    let vocab_size = tokenizer.get_vocab_size(true);
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut token_bytes = Pieces::with_capacity(vocab_size);
    for id in 0..vocab_size as u32 {
        let token = tokenizer.id_to_token(id).unwrap_or_default();
        let bytes = if added.contains_key(&id) {
            token.as_bytes().to_vec()
        } else if byte_level_vocab {
            byte_level::token_to_bytes(&token).unwrap_or_else(|| token.as_bytes().to_vec())
        } else if let Some(b) =
            token.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            vec![b]
        } else {
            token.replace('\u{2581}', " ").into_bytes()
        };
        tokens.push(token);
        token_bytes.push(&bytes);
    }
    token_bytes.shrink_to_fit();
    let append_ids = post_processor_suffix(&tokenizer);
    let parts =
        TokenizerParts { tokenizer, token_bytes, tokens, bos_id, eos_id, add_bos, extra_eog: gen_eos, append_ids };
    Ok(HfText {
        parts,
        chat_template,
        bos_token: bos_token.unwrap_or_default(),
        eos_token: eos_token.unwrap_or_default(),
        model_type,
    })
}
