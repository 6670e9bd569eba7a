//! Embedding models: a sentence-transformers folder (BERT family encoder, its pooling and
//! normalization) loaded by [`EncoderModel`], run by an [`Embedder`] thread that batches the
//! inputs of concurrent requests into padded forwards under a token budget.
//!
//! Encoders need no KV cache and no scheduler: candle-transformers' `BertModel` is the forward,
//! and this module adds what a server needs around it (sentence-transformers' pooling config,
//! a tokenizer without truncation, length limits, batching, cancellation).

mod encoder;
mod pooling;
mod worker;

pub use encoder::{EmbedInfo, EncoderModel};
pub use pooling::{Pooling, SentenceTransformersConfig};
pub use worker::{EmbedReceiver, EmbedStats, Embedder, EmbedderConfig};

use std::path::Path;

/// Whether `path` is a model folder an [`EncoderModel`] loads: a sentence-transformers folder
/// (`modules.json`) or a Hugging Face folder whose `config.json` names a BERT-family model.
pub fn is_encoder_folder(path: &Path) -> bool {
    if !path.is_dir() {
        return false;
    }
    if path.join("modules.json").is_file() {
        return true;
    }
    let Ok(text) = std::fs::read_to_string(path.join("config.json")) else { return false };
    let Ok(cfg) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    let bert_type = cfg["model_type"].as_str().is_some_and(|t| t == "bert");
    let bert_arch = cfg["architectures"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s == "BertModel" || s == "BertForMaskedLM")));
    bert_type || bert_arch
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}
