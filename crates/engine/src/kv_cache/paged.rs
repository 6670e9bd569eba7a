//! `PagedKvCache`: per-layer K/V storage in fixed-size blocks. Each layer keeps K and V as
//! plain host `f32` vectors laid out `[block][kv_head][slot][head_dim]`, so a step writes each
//! new token's K/V in place (no concatenation, no per-head copies) and attention
//! (`kv_cache::attention`) reads a sequence's context block by block through its block table.

use crate::batch::ForwardBatch;
use crate::{EngineError, Result};

/// K/V storage for every layer, in `num_blocks` blocks of `block_size` token slots.
pub struct PagedKvCache {
    pub num_blocks: usize,
    pub block_size: usize,
    num_layers: usize,
    num_kv_heads: usize,
    head_dim: usize,
    /// Per layer, `[block][kv_head][slot][head_dim]`.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl PagedKvCache {
    pub fn new(layout: &crate::kv_cache::KvLayout, num_blocks: usize, block_size: usize) -> Self {
        let (num_layers, num_kv_heads, head_dim) = (layout.num_layers(), layout.num_kv_heads, layout.head_dim);
        let per_layer = num_blocks * num_kv_heads * block_size * head_dim;
        Self {
            num_blocks,
            block_size,
            num_layers,
            num_kv_heads,
            head_dim,
            k: (0..num_layers).map(|_| vec![0f32; per_layer]).collect(),
            v: (0..num_layers).map(|_| vec![0f32; per_layer]).collect(),
        }
    }

    /// Bytes one block takes across all layers (K and V, f32).
    pub fn bytes_per_block(num_layers: usize, num_kv_heads: usize, head_dim: usize, block_size: usize) -> usize {
        2 * num_layers * num_kv_heads * head_dim * block_size * std::mem::size_of::<f32>()
    }

    /// How many blocks fit in `budget_bytes` (at least one).
    pub fn num_blocks_for_budget(
        budget_bytes: usize,
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
    ) -> usize {
        let per = Self::bytes_per_block(num_layers, num_kv_heads, head_dim, block_size).max(1);
        (budget_bytes / per).max(1)
    }

    pub fn num_layers(&self) -> usize {
        self.num_layers
    }
    pub fn num_kv_heads(&self) -> usize {
        self.num_kv_heads
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Checks that every sequence of `batch` fits its block table and the cache, so the
    /// writes and reads of a step cannot go out of bounds.
    pub fn validate(&self, batch: &ForwardBatch) -> Result<()> {
        let t = batch.num_tokens();
        if batch.positions.len() != t {
            return Err(EngineError::InvalidRequest(format!(
                "batch has {t} tokens but {} positions",
                batch.positions.len()
            )));
        }
        for (i, s) in batch.seqs.iter().enumerate() {
            if s.token_start + s.num_tokens > t || s.num_tokens > s.context_len {
                return Err(EngineError::InvalidRequest(format!("sequence {i} slice is out of the batch")));
            }
            if s.context_len > s.block_table.len() * self.block_size {
                return Err(EngineError::InvalidRequest(format!(
                    "sequence {i}: context of {} tokens but {} blocks of {}",
                    s.context_len,
                    s.block_table.len(),
                    self.block_size
                )));
            }
            if let Some(&b) = s.block_table.iter().find(|&&b| b as usize >= self.num_blocks) {
                return Err(EngineError::InvalidRequest(format!(
                    "sequence {i}: block {b} is beyond the cache's {} blocks",
                    self.num_blocks
                )));
            }
            let first = s.context_len - s.num_tokens;
            for (j, &p) in batch.positions[s.token_start..s.token_start + s.num_tokens].iter().enumerate() {
                if p as usize != first + j {
                    return Err(EngineError::InvalidRequest(format!(
                        "sequence {i}: token {j} has position {p}, expected {}",
                        first + j
                    )));
                }
            }
        }
        Ok(())
    }

    /// Offset of `(block, kv_head, slot)` inside one layer's storage.
    #[inline]
    pub(crate) fn offset(&self, block: usize, kv_head: usize, slot: usize) -> usize {
        ((block * self.num_kv_heads + kv_head) * self.block_size + slot) * self.head_dim
    }

    /// Writes this step's keys and values (`[T, kv_heads, head_dim]`, host f32) of `layer`
    /// into each token's slot. Call `validate` on the batch first.
    pub fn write(&mut self, layer: usize, batch: &ForwardBatch, k: &[f32], v: &[f32]) {
        let (kvh, hd, bs) = (self.num_kv_heads, self.head_dim, self.block_size);
        let row = kvh * hd;
        for s in &batch.seqs {
            let first = s.context_len - s.num_tokens;
            for j in 0..s.num_tokens {
                let pos = first + j;
                let block = s.block_table[pos / bs] as usize;
                let slot = pos % bs;
                let t = s.token_start + j;
                for h in 0..kvh {
                    let dst = self.offset(block, h, slot);
                    let src = t * row + h * hd;
                    self.k[layer][dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    self.v[layer][dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
        }
    }

    /// This layer's key and value storage.
    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_in_the_block_table_slots() {
        let mut cache = PagedKvCache::new(&crate::kv_cache::KvLayout::uniform(1, 2, 4), 8, 2);
        let mut batch = ForwardBatch::default();
        // Three tokens continuing a context of 2, blocks 5 and 3 and 6.
        batch.push_seq(&[1, 2, 3], 5, vec![5, 3, 6], true);
        cache.validate(&batch).unwrap();
        let k: Vec<f32> = (0..3 * 2 * 4).map(|x| x as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        cache.write(0, &batch, &k, &v);
        let (ks, vs) = cache.layer(0);
        // position 2 -> block 3 slot 0; position 4 -> block 6 slot 0, kv head 1
        let o = cache.offset(3, 0, 0);
        assert_eq!(&ks[o..o + 4], &[0., 1., 2., 3.]);
        let o = cache.offset(6, 1, 0);
        assert_eq!(&ks[o..o + 4], &[20., 21., 22., 23.]);
        assert_eq!(&vs[o..o + 4], &[-20., -21., -22., -23.]);
    }

    #[test]
    fn validate_rejects_short_block_tables_and_unknown_blocks() {
        let cache = PagedKvCache::new(&crate::kv_cache::KvLayout::uniform(1, 1, 4), 4, 2);
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[1, 2, 3], 3, vec![0], true);
        assert!(cache.validate(&batch).is_err());
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[1], 1, vec![9], true);
        assert!(cache.validate(&batch).is_err());
    }

    #[test]
    fn budget_gives_whole_blocks() {
        let per = PagedKvCache::bytes_per_block(30, 3, 64, 16);
        assert_eq!(per, 2 * 30 * 3 * 64 * 16 * 4);
        assert_eq!(PagedKvCache::num_blocks_for_budget(per * 10 + 5, 30, 3, 64, 16), 10);
    }
}
