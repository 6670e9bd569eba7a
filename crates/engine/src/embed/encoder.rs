//! An encoder embedding model: a BERT-family folder (`config.json`, `tokenizer.json`,
//! `*.safetensors`, and sentence-transformers' files) run by wick's ragged BERT forward
//! (`bert`), then pooled and normalized as sentence-transformers would.

use std::collections::BTreeMap;
use std::path::Path;

use tokenizers::Tokenizer;

use super::bert::{Bert, BertConfig};
use super::pooling::{Pooling, SentenceTransformersConfig};
use super::EmbedModel;
use crate::{EngineError, Result};

/// What clients and the server need to know of an embedding model.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedInfo {
    /// Width of the embeddings.
    pub dim: usize,
    /// Longest input in tokens (special tokens included).
    pub max_len: usize,
    pub vocab_size: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Named instruction prompts a request may put before its texts (`prompt_name`).
    pub prompts: BTreeMap<String, String>,
    /// The prompt used when a request names none (a key of `prompts`).
    pub default_prompt_name: Option<String>,
}

impl EmbedInfo {
    /// The text put before each input for `prompt_name` (or, when none is named, the model's
    /// default prompt; "" when it has none). Err: an unknown name, with the known ones.
    pub fn prompt(&self, prompt_name: Option<&str>) -> std::result::Result<&str, String> {
        match prompt_name.or(self.default_prompt_name.as_deref()) {
            None => Ok(""),
            Some(name) => self.prompts.get(name).map(String::as_str).ok_or_else(|| {
                let known: Vec<&str> = self.prompts.keys().map(String::as_str).collect();
                if known.is_empty() {
                    format!("this model has no prompts, so `prompt_name` {name:?} is unknown")
                } else {
                    format!("unknown `prompt_name` {name:?}; this model's prompts are: {}", known.join(", "))
                }
            }),
        }
    }
}

pub struct EncoderModel {
    bert: Bert,
    tokenizer: Tokenizer,
    info: EmbedInfo,
}

fn load_err(dir: &Path, msg: impl std::fmt::Display) -> EngineError {
    EngineError::Load(format!("{}: {msg}", dir.display()))
}

impl EncoderModel {
    /// Loads the folder `dir` on the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| load_err(dir, e))?;
        let config: BertConfig =
            serde_json::from_str(&config_text).map_err(|e| load_err(dir, format!("config.json: {e}")))?;
        let st = SentenceTransformersConfig::read(dir)?;
        let bert = Bert::load(dir, &config).map_err(|e| e.in_file(dir))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", dir.join("tokenizer.json").display())))?;
        // Over-long inputs are refused by the caller, never silently cut.
        tokenizer.with_truncation(None).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let max_len = st.max_seq_length.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
        let info = EmbedInfo {
            dim: config.hidden_size,
            max_len,
            vocab_size: config.vocab_size,
            pooling: st.pooling,
            normalize: st.normalize,
            prompts: st.prompts,
            default_prompt_name: st.default_prompt_name,
        };
        Ok(Self { bert, tokenizer, info })
    }

    pub(crate) fn info_mut(&mut self) -> &mut EmbedInfo {
        &mut self.info
    }
}

impl EmbedModel for EncoderModel {
    fn info(&self) -> &EmbedInfo {
        &self.info
    }

    /// Token ids of `text` with the model's special tokens (`[CLS] ... [SEP]`), not truncated.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeds `seqs` in one ragged forward: one pooled (and, as the model says, normalized)
    /// vector per sequence, in order. Every sequence must be non-empty and within `max_len`.
    fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if seqs.iter().any(|s| s.is_empty() || s.len() > self.info.max_len) {
            return Err(EngineError::InvalidRequest(format!(
                "every sequence must hold 1 to {} tokens",
                self.info.max_len
            )));
        }
        let dim = self.info.dim;
        self.bert.forward(seqs, |hidden| {
            let mut at = 0;
            seqs.iter()
                .map(|s| {
                    let mut v = vec![0.0f32; dim];
                    self.info.pooling.pool(&hidden[at * dim..(at + s.len()) * dim], s.len(), dim, &mut v);
                    at += s.len();
                    if self.info.normalize {
                        super::normalize(&mut v);
                    }
                    v
                })
                .collect()
        })
    }
}
