//! `PagedKvCache`: K/V storage in fixed-size pages, shared by every KV-cache group of a
//! [`KvLayout`]. A page (block) holds `group_size` layers × `block_size` tokens; the storage is
//! `group_size` slot arrays in the layout's [`KvDtype`] (f16 by default in the engine; see
//! `kv_cache::dtype`) for V laid out `[block][kv_head][slot][head_dim]`, and as many for K laid
//! out `[block][kv_head][head_dim][slot]`: one K tile per page and kv head, dimension-major, so
//! attention scores a vector of keys at once. Layer `l` reads and writes slot array `layer_slot[l]` at
//! the block ids of its group's table (`SeqSlice::block_tables[layer_group[l]]`), so a step
//! writes each new token's K/V in place (no concatenation, no per-head copies) and attention
//! (`kv_cache::attention`) reads a sequence's context block by block.

use crate::batch::ForwardBatch;
use crate::kv_cache::dtype::RowStore;
use crate::kv_cache::layout::{KvLayout, NO_BLOCK};
use crate::{EngineError, Result};

/// K/V storage for every layer, in `num_blocks` pages of `block_size` token slots.
pub struct PagedKvCache {
    pub num_blocks: usize,
    pub block_size: usize,
    layout: KvLayout,
    /// Per page slot (`0..group_size`): K `[block][kv_head][head_dim][slot]`, V
    /// `[block][kv_head][slot][head_dim]`.
    k: Vec<RowStore>,
    v: Vec<RowStore>,
}

impl PagedKvCache {
    /// Storage for `num_blocks` pages of `block_size` tokens of `layout`.
    pub fn new(layout: &KvLayout, num_blocks: usize, block_size: usize) -> Self {
        let per_slot = num_blocks * layout.num_kv_heads * block_size * layout.head_dim;
        let store = || RowStore::new(layout.dtype, per_slot, layout.head_dim);
        Self {
            num_blocks,
            block_size,
            layout: layout.clone(),
            k: (0..layout.group_size).map(|_| store()).collect(),
            v: (0..layout.group_size).map(|_| store()).collect(),
        }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }
    pub fn num_layers(&self) -> usize {
        self.layout.num_layers()
    }
    pub fn num_kv_heads(&self) -> usize {
        self.layout.num_kv_heads
    }
    pub fn head_dim(&self) -> usize {
        self.layout.head_dim
    }

    /// Checks every sequence of `batch` against its block tables and the cache, so the writes
    /// and reads of a step cannot go out of bounds: one table per group; in each, the blocks
    /// this step writes or any of its queries reads are real pages of the cache, and
    /// [`NO_BLOCK`] appears only before the window of the step's first query.
    pub fn validate(&self, batch: &ForwardBatch) -> Result<()> {
        let t = batch.num_tokens();
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if batch.positions.len() != t {
            return bad(format!("batch has {t} tokens but {} positions", batch.positions.len()));
        }
        let bs = self.block_size;
        for (i, s) in batch.seqs.iter().enumerate() {
            if s.token_start + s.num_tokens > t || s.num_tokens > s.context_len {
                return bad(format!("sequence {i} slice is out of the batch"));
            }
            if s.block_tables.len() != self.layout.num_groups() {
                return bad(format!(
                    "sequence {i}: {} block tables for {} KV-cache groups",
                    s.block_tables.len(),
                    self.layout.num_groups()
                ));
            }
            let first = s.context_len - s.num_tokens;
            for (g, (table, kind)) in s.block_tables.iter().zip(&self.layout.groups).enumerate() {
                if s.context_len > table.len() * bs {
                    return bad(format!(
                        "sequence {i} group {g}: context of {} tokens but {} blocks of {bs}",
                        s.context_len,
                        table.len()
                    ));
                }
                // Blocks before `live` are never read this step and may be released.
                let live = kind.first_live_block(first, bs);
                for (j, &b) in table.iter().enumerate() {
                    if b == NO_BLOCK && j >= live {
                        return bad(format!(
                            "sequence {i} group {g}: block {j} was released but position {first} still reads it"
                        ));
                    }
                    if b != NO_BLOCK && b as usize >= self.num_blocks {
                        return bad(format!(
                            "sequence {i} group {g}: block {b} is beyond the cache's {} blocks",
                            self.num_blocks
                        ));
                    }
                }
            }
            for (j, &p) in batch.positions[s.token_start..s.token_start + s.num_tokens].iter().enumerate() {
                if p as usize != first + j {
                    return bad(format!("sequence {i}: token {j} has position {p}, expected {}", first + j));
                }
            }
        }
        Ok(())
    }

    /// Offset of `(block, kv_head, slot)` inside one slot array: the V row's, and with `slot`
    /// 0 the K tile's.
    #[inline]
    pub(crate) fn offset(&self, block: usize, kv_head: usize, slot: usize) -> usize {
        ((block * self.layout.num_kv_heads + kv_head) * self.block_size + slot) * self.layout.head_dim
    }

    /// Writes this step's keys and values (`[T, kv_heads, head_dim]`, host f32) of `layer`
    /// into each token's slot of its group's pages. Call `validate` on the batch first.
    pub fn write(&mut self, layer: usize, batch: &ForwardBatch, k: &[f32], v: &[f32]) {
        let (kvh, hd, bs) = (self.layout.num_kv_heads, self.layout.head_dim, self.block_size);
        let (group, page_slot) = (self.layout.layer_group[layer], self.layout.layer_slot[layer]);
        let row = kvh * hd;
        for s in &batch.seqs {
            let table = &s.block_tables[group];
            let first = s.context_len - s.num_tokens;
            for j in 0..s.num_tokens {
                let pos = first + j;
                let block = table[pos / bs] as usize;
                let slot = pos % bs;
                let t = s.token_start + j;
                for h in 0..kvh {
                    let (src, tile) = (t * row + h * hd, self.offset(block, h, 0));
                    self.k[page_slot].write_column(tile, slot, bs, &k[src..src + hd]);
                    self.v[page_slot].write_row(tile + slot * hd, &v[src..src + hd]);
                }
            }
        }
    }

    /// Copies every slot of page `src` into page `dst` (a forked sequence's own copy of a
    /// partly filled page it shared).
    pub fn copy_page(&mut self, src: usize, dst: usize) {
        let (a, b) = (self.offset(src, 0, 0), self.offset(dst, 0, 0));
        let (len, hd) = (self.offset(1, 0, 0), self.layout.head_dim);
        for arr in self.k.iter_mut().chain(self.v.iter_mut()) {
            arr.copy_within(a, len, b, hd);
        }
    }

    /// The K tiles and V rows of `layer` as f32 in place, when the cache stores f32.
    pub(crate) fn layer_f32(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        let slot = self.layout.layer_slot[layer];
        Some((self.k[slot].as_f32()?, self.v[slot].as_f32()?))
    }

    /// The K tiles and V rows of `layer` as f16 bits in place, when the cache stores f16.
    pub(crate) fn layer_f16(&self, layer: usize) -> Option<(&[u16], &[u16])> {
        let slot = self.layout.layer_slot[layer];
        Some((self.k[slot].as_f16_bits()?, self.v[slot].as_f16_bits()?))
    }

    /// The K tiles of `layer` at element offsets `tiles` into `k` (`head_dim * block_size`
    /// values each) and its V rows at `offs` into `v` (`head_dim` each), in order, as f32.
    pub(crate) fn gather(&self, layer: usize, tiles: &[usize], offs: &[usize], k: &mut Vec<f32>, v: &mut Vec<f32>) {
        let (slot, hd) = (self.layout.layer_slot[layer], self.layout.head_dim);
        self.k[slot].gather(tiles, hd, self.block_size, k);
        self.v[slot].gather(offs, hd, 1, v);
    }

    /// Overwrites every slot of `block` with NaN (tests: a read of a released page shows).
    #[cfg(test)]
    pub(crate) fn poison_block(&mut self, block: usize) {
        let r = self.offset(block, 0, 0)..self.offset(block + 1, 0, 0);
        let hd = self.layout.head_dim;
        for a in self.k.iter_mut().chain(self.v.iter_mut()) {
            a.poison(r.clone(), hd);
        }
    }

    /// Bytes of K/V storage the cache holds (`num_blocks` pages).
    pub fn storage_bytes(&self) -> usize {
        self.num_blocks * self.layout.bytes_per_block(self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::layout::AttentionKind::{Full, Sliding};

    #[test]
    fn writes_land_in_the_block_table_slots() {
        let mut cache = PagedKvCache::new(&KvLayout::uniform(1, 2, 4), 8, 2);
        let mut batch = ForwardBatch::default();
        // Three tokens continuing a context of 2, blocks 5 and 3 and 6.
        batch.push_seq(&[1, 2, 3], 5, vec![vec![5, 3, 6]], true);
        cache.validate(&batch).unwrap();
        let k: Vec<f32> = (0..3 * 2 * 4).map(|x| x as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        cache.write(0, &batch, &k, &v);
        let (ks, vs) = cache.layer_f32(0).unwrap();
        // position 2 -> block 3 slot 0; position 4 -> block 6 slot 0, kv head 1; position 3 ->
        // block 6 slot 1. K is a column of its tile (two slots per dimension), V a row.
        assert_eq!(key(ks, cache.offset(3, 0, 0), 0, 4, 2), [0., 1., 2., 3.]);
        assert_eq!(key(ks, cache.offset(6, 1, 0), 0, 4, 2), [20., 21., 22., 23.]);
        let o = cache.offset(6, 1, 0);
        assert_eq!(&vs[o..o + 4], &[-20., -21., -22., -23.]);
        assert_eq!(key(ks, cache.offset(3, 1, 0), 1, 4, 2), [12., 13., 14., 15.]);
        let o = cache.offset(3, 1, 1);
        assert_eq!(&vs[o..o + 4], &[-12., -13., -14., -15.]);
    }

    /// The key in column `slot` of the `hd × bs` tile at `tile`.
    fn key(ks: &[f32], tile: usize, slot: usize, hd: usize, bs: usize) -> Vec<f32> {
        (0..hd).map(|d| ks[tile + d * bs + slot]).collect()
    }

    #[test]
    fn layers_of_a_group_share_pages_in_their_own_slots() {
        // 4 layers: 0 and 2 sliding (group 0), 1 and 3 full (group 1); group size 2.
        let layout = KvLayout::new(&[Sliding(3), Full, Sliding(3), Full], 1, 2);
        assert_eq!(layout.groups, vec![Sliding(3), Full]);
        let mut cache = PagedKvCache::new(&layout, 4, 2);
        assert_eq!(cache.storage_bytes(), 4 * 2 * 2 * 2 * 2 * 4);
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[7], 1, vec![vec![1], vec![2]], true);
        cache.validate(&batch).unwrap();
        for l in 0..4 {
            let x = [l as f32, 10.0 + l as f32];
            cache.write(l, &batch, &x, &x);
        }
        // Layer 2 is slot 1 of group 0's block 1; layer 3 is slot 1 of group 1's block 2.
        assert_eq!(key(cache.layer_f32(2).unwrap().0, cache.offset(1, 0, 0), 0, 2, 2), [2.0, 12.0]);
        assert_eq!(key(cache.layer_f32(3).unwrap().0, cache.offset(2, 0, 0), 0, 2, 2), [3.0, 13.0]);
        assert_eq!(key(cache.layer_f32(0).unwrap().0, cache.offset(1, 0, 0), 0, 2, 2), [0.0, 10.0]);
        assert_eq!(&cache.layer_f32(1).unwrap().1[cache.offset(2, 0, 0)..][..2], &[1.0, 11.0]);
    }

    #[test]
    fn validate_rejects_short_block_tables_and_unknown_blocks() {
        let cache = PagedKvCache::new(&KvLayout::uniform(1, 1, 4), 4, 2);
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[1, 2, 3], 3, vec![vec![0]], true);
        assert!(cache.validate(&batch).is_err());
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[1], 1, vec![vec![9]], true);
        assert!(cache.validate(&batch).is_err());
        // One table per group.
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[1], 1, vec![vec![0], vec![1]], true);
        assert!(cache.validate(&batch).is_err());
        // A full-attention group never releases blocks.
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[1], 5, vec![vec![NO_BLOCK, 1, 2]], true);
        assert!(cache.validate(&batch).is_err());
    }

    #[test]
    fn validate_allows_released_blocks_only_before_the_window() {
        // Window 3, blocks of 2: a decode at position 6 reads 4..=6, blocks 2 and 3.
        let cache = PagedKvCache::new(&KvLayout::new(&[Sliding(3)], 1, 4), 8, 2);
        let ok = |tables: Vec<u32>, tokens: &[u32], ctx: usize| {
            let mut batch = ForwardBatch::default();
            batch.push_seq(tokens, ctx, vec![tables], true);
            cache.validate(&batch).is_ok()
        };
        assert!(ok(vec![NO_BLOCK, NO_BLOCK, 4, 5], &[1], 7));
        assert!(ok(vec![0, NO_BLOCK, 4, 5], &[1], 7), "an unreleased early block is fine");
        assert!(!ok(vec![NO_BLOCK, NO_BLOCK, NO_BLOCK, 5], &[1], 7), "position 4 is still in the window");
        // A chunk of 3 at positions 4..=6: its first query reads from position 2 (block 1).
        assert!(ok(vec![NO_BLOCK, 3, 4, 5], &[1, 2, 3], 7));
        assert!(!ok(vec![NO_BLOCK, NO_BLOCK, 4, 5], &[1, 2, 3], 7));
        // A sentinel after the window is never allowed.
        assert!(!ok(vec![NO_BLOCK, NO_BLOCK, 4, 5, NO_BLOCK], &[1], 7));
    }
}
