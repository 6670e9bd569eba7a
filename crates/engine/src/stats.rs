//! Engine statistics, published by the engine thread through atomics (no lock on the hot path)
//! and read by the server for `/metrics` and `/ready`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; the engine thread writes, anyone reads.
#[derive(Debug, Default)]
pub struct StatsCell {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generation_tokens_total: AtomicU64,
    pub preemptions_total: AtomicU64,
    pub steps_total: AtomicU64,
    pub last_step_micros: AtomicU64,
    /// Wall time of all steps, and of the grammar-mask part of them.
    pub step_micros_total: AtomicU64,
    pub grammar_mask_micros_total: AtomicU64,
    /// Masks computed (one per constrained sequence per step).
    pub grammar_masks_total: AtomicU64,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_cache_queries_total: AtomicU64,
    pub prefix_cache_hits_total: AtomicU64,
    /// Free pages still holding a cached prefix (reusable until evicted).
    pub kv_blocks_cached: AtomicU64,
}

/// A snapshot of [`StatsCell`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub running: u64,
    pub waiting: u64,
    pub kv_blocks_used: u64,
    pub kv_blocks_total: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub preemptions_total: u64,
    pub steps_total: u64,
    pub last_step_micros: u64,
    pub step_micros_total: u64,
    pub grammar_mask_micros_total: u64,
    pub grammar_masks_total: u64,
    pub prefix_cache_queries_total: u64,
    pub prefix_cache_hits_total: u64,
    pub kv_blocks_cached: u64,
}

impl StatsCell {
    pub fn snapshot(&self) -> EngineStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EngineStats {
            running: g(&self.running),
            waiting: g(&self.waiting),
            kv_blocks_used: g(&self.kv_blocks_used),
            kv_blocks_total: g(&self.kv_blocks_total),
            prompt_tokens_total: g(&self.prompt_tokens_total),
            generation_tokens_total: g(&self.generation_tokens_total),
            preemptions_total: g(&self.preemptions_total),
            steps_total: g(&self.steps_total),
            last_step_micros: g(&self.last_step_micros),
            step_micros_total: g(&self.step_micros_total),
            grammar_mask_micros_total: g(&self.grammar_mask_micros_total),
            grammar_masks_total: g(&self.grammar_masks_total),
            prefix_cache_queries_total: g(&self.prefix_cache_queries_total),
            prefix_cache_hits_total: g(&self.prefix_cache_hits_total),
            kv_blocks_cached: g(&self.kv_blocks_cached),
        }
    }
}
