//! The `CausalLm` trait every architecture implements, and the hyperparameters they share.
//! One file per architecture family; shared layers live in `layers`.

use candle_core::Tensor;

use crate::batch::ForwardBatch;
use crate::kv_cache::PagedKvCache;
use crate::Result;

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
}

/// A decoder-only language model running a ragged batch over a paged KV cache.
pub trait CausalLm: Send {
    fn config(&self) -> &ModelConfig;

    /// Runs every token of `batch`, writing their K/V into `cache` at the slots given by each
    /// sequence's block table, and returns f32 logits of shape `[batch.logits_rows.len(), vocab]`.
    fn forward(&self, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor>;
}
