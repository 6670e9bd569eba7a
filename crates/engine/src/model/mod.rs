//! The `CausalLm` trait every architecture implements, the hyperparameters they share, and
//! entry points that load just the network from a file. One file per architecture family
//! (`llama`); shared layers live in `layers`, weight handling in `weights`.

use std::path::Path;

use candle_core::Tensor;

use crate::batch::ForwardBatch;
use crate::kv_cache::{KvLayout, PagedKvCache};
use crate::Result;

pub mod layers;
pub mod llama;
pub mod llama_load;
pub mod qmatmul;
pub mod weights;

pub use weights::WeightOptions;

/// Architecture family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
}

/// Hyperparameters the engine needs to size the cache and validate requests.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Each layer's attention kind, grouped into KV-cache groups: what the cache is built from.
    pub kv_layout: KvLayout,
}

/// A decoder-only language model running a ragged batch over a paged KV cache.
pub trait CausalLm: Send {
    fn config(&self) -> &ModelConfig;

    /// Runs every token of `batch`, writing their K/V into `cache` at the slots given by each
    /// sequence's block table, and returns f32 logits of shape `[batch.logits_rows.len(), vocab]`.
    fn forward(&self, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor>;
}

/// Loads the network of a GGUF file (no tokenizer).
pub fn load_gguf_model(path: &Path, opts: &WeightOptions) -> Result<Box<dyn CausalLm>> {
    let mut file = std::fs::File::open(path)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    load_gguf_content(&content, &mut file, opts)
}

/// Builds the network from an already parsed GGUF file, by its `general.architecture`.
pub fn load_gguf_content<R: std::io::Read + std::io::Seek>(
    content: &candle_core::quantized::gguf_file::Content,
    reader: &mut R,
    opts: &WeightOptions,
) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(llama_load::llama_from_gguf(content, reader, opts)?))
}

/// Loads the network of a Hugging Face folder (config.json + *.safetensors; no tokenizer).
pub fn load_safetensors_model(dir: &Path, opts: &WeightOptions) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(llama_load::llama_from_hf_dir(dir, opts)?))
}
