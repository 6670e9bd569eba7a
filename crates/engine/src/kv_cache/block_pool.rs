//! `BlockPool`: the bookkeeping of fixed-size KV blocks. It hands out block ids, counts how
//! many sequences reference each block (so a block can be shared, e.g. by `n` choices of one
//! prompt, via [`BlockPool::fork`]) and keeps the free ones on a FIFO free list (freed blocks go
//! to the back, allocation takes from the front: the least recently freed block is reused
//! first, which is the eviction order a prefix cache keyed on freed blocks would want).
//!
//! The pool knows nothing of K/V tensors: `PagedKvCache` owns the storage, addressed by the
//! ids handed out here.

use std::collections::VecDeque;

/// Refcounted pool of KV block ids `0..num_blocks`.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    refcounts: Vec<u32>,
    free: VecDeque<u32>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks of `block_size` tokens each, all free.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        Self { block_size, refcounts: vec![0; num_blocks], free: (0..num_blocks as u32).collect() }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.refcounts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// How many sequences hold `block` (0 when free).
    pub fn refcount(&self, block: u32) -> u32 {
        self.refcounts.get(block as usize).copied().unwrap_or(0)
    }

    /// Takes one free block (refcount 1), or `None` when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<u32> {
        let id = self.free.pop_front()?;
        self.refcounts[id as usize] = 1;
        Some(id)
    }

    /// Takes `n` blocks at once, or none at all when fewer than `n` are free.
    pub fn allocate_n(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        (0..n).map(|_| self.allocate()).collect()
    }

    /// Adds a reference to an allocated block (another sequence shares it).
    pub fn fork(&mut self, block: u32) {
        let rc = &mut self.refcounts[block as usize];
        assert!(*rc > 0, "fork of free block {block}");
        *rc += 1;
    }

    /// Drops one reference; the block returns to the free list when none remain.
    pub fn free(&mut self, block: u32) {
        let rc = &mut self.refcounts[block as usize];
        assert!(*rc > 0, "double free of block {block}");
        *rc -= 1;
        if *rc == 0 {
            self.free.push_back(block);
        }
    }

    /// Drops one reference to each block of a block table.
    pub fn free_all(&mut self, blocks: &[u32]) {
        for &b in blocks {
            self.free(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_until_exhausted_then_free_makes_room() {
        let mut pool = BlockPool::new(3, 16);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let c = pool.allocate().unwrap();
        assert_eq!(pool.num_free(), 0);
        assert_eq!(pool.num_used(), 3);
        assert!(pool.allocate().is_none());
        let mut ids = vec![a, b, c];
        ids.sort();
        assert_eq!(ids, vec![0, 1, 2], "every block is handed out exactly once");
        pool.free(b);
        assert_eq!(pool.num_free(), 1);
        assert_eq!(pool.allocate(), Some(b));
    }

    #[test]
    fn allocate_n_is_all_or_nothing() {
        let mut pool = BlockPool::new(4, 8);
        assert!(pool.allocate_n(5).is_none());
        assert_eq!(pool.num_free(), 4, "a failed allocate_n takes nothing");
        let got = pool.allocate_n(3).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(pool.num_free(), 1);
    }

    #[test]
    fn forked_block_is_freed_only_after_last_reference() {
        let mut pool = BlockPool::new(2, 4);
        let a = pool.allocate().unwrap();
        pool.fork(a);
        assert_eq!(pool.refcount(a), 2);
        pool.free(a);
        assert_eq!(pool.num_free(), 1, "still referenced by the fork");
        assert_eq!(pool.refcount(a), 1);
        pool.free(a);
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.refcount(a), 0);
    }

    #[test]
    fn freed_blocks_are_reused_least_recently_freed_first() {
        let mut pool = BlockPool::new(3, 4);
        let blocks = pool.allocate_n(3).unwrap();
        pool.free(blocks[2]);
        pool.free(blocks[0]);
        assert_eq!(pool.allocate(), Some(blocks[2]));
        assert_eq!(pool.allocate(), Some(blocks[0]));
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut pool = BlockPool::new(1, 4);
        let a = pool.allocate().unwrap();
        pool.free(a);
        pool.free(a);
    }

    #[test]
    fn blocks_for_rounds_up() {
        let pool = BlockPool::new(1, 16);
        assert_eq!(pool.blocks_for(0), 0);
        assert_eq!(pool.blocks_for(1), 1);
        assert_eq!(pool.blocks_for(16), 1);
        assert_eq!(pool.blocks_for(17), 2);
    }
}
