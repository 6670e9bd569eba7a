//! Embedding models, behind one [`EmbedModel`] trait: encoders ([`EncoderModel`]: a
//! sentence-transformers / BERT-family folder run by wick's own BERT forward over a ragged
//! batch) and decoders ([`DecoderModel`]: Qwen3-Embedding style, a GGUF file or a
//! folder run by wick's own model layer over a ragged batch, last-token or mean pooling). An
//! [`Embedder`] thread per model batches the inputs of concurrent requests under a token budget.
//!
//! Encoders need no KV cache and no scheduler; decoders a small paged cache per batch. This
//! module adds what a server needs around the forward: pooling and normalization as the model's
//! files say, instruction prompts, a tokenizer without truncation, length limits, batching,
//! cancellation.

mod bert;
mod decoder;
mod encoder;
mod pooling;
mod worker;

pub use decoder::DecoderModel;
pub use encoder::{EmbedInfo, EncoderModel};
pub use pooling::{Pooling, SentenceTransformersConfig};
pub use worker::{EmbedReceiver, EmbedStats, Embedder, EmbedderConfig};

use std::collections::BTreeMap;
use std::path::Path;

use crate::kv_cache::KvDtype;
use crate::{EngineError, Result};

/// What the embedding thread needs of a model.
pub trait EmbedModel: Send + Sync {
    fn info(&self) -> &EmbedInfo;

    /// Token ids of `text` with the special tokens the model's tokenizer adds, not truncated.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>>;

    /// One pooled (and, as the model says, normalized) vector per sequence, in order, from one
    /// forward. Every sequence must hold 1 to `info().max_len` in-vocabulary tokens.
    fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>>;
}

impl EmbedModel for Box<dyn EmbedModel> {
    fn info(&self) -> &EmbedInfo {
        (**self).info()
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        (**self).tokenize(text)
    }

    fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        (**self).embed(seqs)
    }
}

/// How to load an embedding model, beyond what its files say.
#[derive(Debug, Clone, Default)]
pub struct EmbedOptions {
    /// Overrides the files' pooling (a decoder GGUF without `pooling_type` gets last-token
    /// pooling otherwise).
    pub pooling: Option<Pooling>,
    /// Named prompts added to (or replacing, by name) the folder's own.
    pub prompts: BTreeMap<String, String>,
    /// Overrides the folder's `default_prompt_name`.
    pub default_prompt_name: Option<String>,
    /// How a decoder's KV cache stores K/V.
    pub kv_dtype: KvDtype,
}

impl EmbedOptions {
    /// Applies the options' prompts and pooling to a loaded model's `info`.
    fn apply(&self, info: &mut EmbedInfo) -> Result<()> {
        if let Some(p) = self.pooling {
            info.pooling = p;
        }
        info.prompts.extend(self.prompts.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(d) = &self.default_prompt_name {
            info.default_prompt_name = Some(d.clone());
        }
        if let Some(d) = info.default_prompt_name.as_deref().filter(|d| !info.prompts.contains_key(*d)) {
            return Err(EngineError::Load(format!("the default prompt name {d:?} is not one of the model's prompts")));
        }
        Ok(())
    }
}

/// Whether `path` is a model folder an [`EncoderModel`] loads: a sentence-transformers folder
/// (`modules.json`) around an encoder, or a Hugging Face folder whose `config.json` names a
/// BERT-family model. A sentence-transformers folder around a decoder is not (see
/// [`is_embedding_model`]).
pub fn is_encoder_folder(path: &Path) -> bool {
    if !path.is_dir() || wraps_decoder(path) {
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

/// Whether the folder's `config.json` names a decoder architecture wick's model layer runs.
fn wraps_decoder(dir: &Path) -> bool {
    crate::model::source::read_hf_config(dir).is_ok_and(|cfg| crate::model::arch::by_hf(&cfg).is_ok())
}

/// Whether `path` holds an embedding model by its own files: an encoder folder, a
/// sentence-transformers folder (`modules.json`) around a decoder, or a GGUF file with a
/// `<arch>.pooling_type` other than none.
pub fn is_embedding_model(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("modules.json").is_file() || is_encoder_folder(path);
    }
    let Ok(mut file) = std::fs::File::open(path) else { return false };
    crate::model::GgufFile::read(&mut file)
        .is_ok_and(|g| decoder::gguf_pooling_type(&g).is_some_and(|v| !matches!(Pooling::from_gguf(v), Ok(None))))
}

/// Loads the embedding model at `path`: an encoder folder, or else a decoder (GGUF file or
/// folder), with `opts` applied.
pub fn load(path: &Path, opts: &EmbedOptions) -> Result<Box<dyn EmbedModel>> {
    if is_encoder_folder(path) {
        let mut m = EncoderModel::load(path)?;
        opts.apply(m.info_mut())?;
        return Ok(Box::new(m));
    }
    let mut m = DecoderModel::load(path, opts).map_err(|e| e.in_file(path))?;
    opts.apply(m.info_mut())?;
    Ok(Box::new(m))
}

/// Bytes of the KV cache the embedding model at `path` may hold at most, from its files alone
/// (before it is loaded): none for an encoder, a decoder's bound otherwise. The memory budget
/// counts it with the weights.
pub fn kv_bytes_bound(path: &Path, dtype: KvDtype) -> Result<u64> {
    if is_encoder_folder(path) {
        return Ok(0);
    }
    decoder::kv_bytes_bound(path, dtype)
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::{self, Value};

    fn gguf_with(path: &Path, meta: &[(&str, Value)]) {
        let mut f = std::fs::File::create(path).expect("create");
        let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut f, &refs, &[]).expect("write gguf");
    }

    #[test]
    fn a_gguf_is_an_embedding_model_by_its_pooling_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let arch = ("general.architecture", Value::String("qwen3".into()));
        // 4 (rank) is no chat model either: it is told an embedding model, whose load then refuses it.
        let cases = [(None, false), (Some(0u32), false), (Some(1), true), (Some(3), true), (Some(4), true)];
        for (i, (pooling, embedding)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("m{i}.gguf"));
            let mut meta = vec![arch.clone()];
            meta.extend(pooling.map(|p| ("qwen3.pooling_type", Value::U32(p))));
            gguf_with(&path, &meta);
            assert_eq!(is_embedding_model(&path), embedding, "pooling_type {pooling:?}");
        }
        // The key is read under the file's own architecture.
        let other = dir.path().join("other.gguf");
        gguf_with(&other, &[arch, ("llama.pooling_type", Value::U32(3))]);
        assert!(!is_embedding_model(&other));
        assert!(!is_embedding_model(&dir.path().join("absent.gguf")));
    }

    #[test]
    fn a_sentence_transformers_folder_is_told_encoder_or_decoder_by_its_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("modules.json"), "[]").expect("write");
        std::fs::write(d.join("config.json"), r#"{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}"#)
            .expect("write");
        assert!(is_embedding_model(d) && !is_encoder_folder(d), "Qwen3-Embedding: a decoder embedding model");
        std::fs::write(d.join("config.json"), r#"{"architectures": ["BertModel"], "model_type": "bert"}"#)
            .expect("write");
        assert!(is_embedding_model(d) && is_encoder_folder(d), "MiniLM: an encoder");
        std::fs::remove_file(d.join("modules.json")).expect("rm");
        assert!(is_embedding_model(d), "a bare BERT folder is an encoder too");
        std::fs::write(d.join("config.json"), r#"{"architectures": ["LlamaForCausalLM"]}"#).expect("write");
        assert!(!is_embedding_model(d), "a plain decoder folder is a chat model");
    }

    #[test]
    fn options_add_prompts_and_check_the_default() {
        let mut info = EmbedInfo {
            dim: 4,
            max_len: 8,
            vocab_size: 10,
            pooling: Pooling::Mean,
            normalize: true,
            prompts: [("query".to_owned(), "q: ".to_owned())].into(),
            default_prompt_name: None,
        };
        let opts = EmbedOptions {
            pooling: Some(Pooling::LastToken),
            prompts: [("doc".to_owned(), "d: ".to_owned())].into(),
            default_prompt_name: Some("query".into()),
            ..EmbedOptions::default()
        };
        opts.apply(&mut info).expect("applies");
        assert_eq!(info.pooling, Pooling::LastToken);
        assert_eq!(info.prompt(None), Ok("q: "), "the default prompt");
        assert_eq!(info.prompt(Some("doc")), Ok("d: "));
        let e = info.prompt(Some("nope")).expect_err("unknown");
        assert!(e.contains("doc, query"), "{e}");
        let bad = EmbedOptions { default_prompt_name: Some("missing".into()), ..EmbedOptions::default() };
        assert!(bad.apply(&mut info).is_err(), "a default prompt that does not exist is a load error");
    }
}
