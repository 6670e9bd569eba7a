//! Engine configuration: cache size, scheduling budgets, queue bounds, and the sizes derived
//! from them for a given model (KV block count, context cap).

use crate::kv_cache::KvDtype;
use crate::model::ModelConfig;

/// Knobs of the engine; the server fills these from its configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Memory budget for the KV cache in bytes; the block count is derived from it.
    pub kv_cache_bytes: usize,
    /// Overrides `kv_cache_bytes` when set (tests use it to force preemption).
    pub num_blocks: Option<usize>,
    /// Most sequences in the running batch.
    pub max_num_seqs: usize,
    /// Per-step token budget shared by prefill chunks and decodes.
    pub max_num_batched_tokens: usize,
    /// Most requests waiting for admission; beyond this `submit` answers Overloaded.
    pub max_waiting: usize,
    /// Context length cap (defaults to the model's).
    pub max_model_len: Option<usize>,
    /// Automatic prefix caching: reuse the K/V of full blocks whose tokens (and everything
    /// before them) a new sequence shares with an earlier one.
    pub enable_prefix_caching: bool,
    /// How the KV cache stores K/V: f16 by default (attention computes in f32).
    pub kv_cache_dtype: KvDtype,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 512 << 20,
            num_blocks: None,
            max_num_seqs: 64,
            max_num_batched_tokens: 512,
            max_waiting: 256,
            max_model_len: None,
            enable_prefix_caching: true,
            kv_cache_dtype: KvDtype::F16,
        }
    }
}

impl EngineConfig {
    /// KV pages the cache gets: `num_blocks` when set, else as many as `kv_cache_bytes` holds
    /// (a page is `group_size` layers × `block_size` tokens of the model's `kv_layout`).
    pub fn num_kv_blocks(&self, model: &ModelConfig) -> usize {
        let layout = model.kv_layout.clone().with_dtype(self.kv_cache_dtype);
        self.num_blocks.unwrap_or_else(|| self.kv_cache_bytes / layout.bytes_per_block(self.block_size).max(1))
    }

    /// Longest prompt + completion: `max_model_len` capped by the model's own context.
    pub fn effective_max_model_len(&self, model: &ModelConfig) -> usize {
        let model_max = model.max_position_embeddings;
        self.max_model_len.map_or(model_max, |m| m.min(model_max))
    }
}
