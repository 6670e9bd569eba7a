//! `BlockPool`: the bookkeeping of fixed-size KV blocks and the automatic prefix cache over
//! them. It hands out block ids, counts how many sequences reference each block (a block is
//! shared by sequences with the same prefix, and by the `n` choices of one prompt), and keeps
//! the free ones.
//!
//! Prefix cache: a full block whose K/V are computed can be *registered* under its [`CacheKey`]
//! (group + chained hash, see [`super::prefix`]) with its tokens; so can the partly filled last
//! block of a sequence that ends (its *tail*, registered with the tokens it holds), which a later
//! sequence continuing the same tokens copies rather than recomputes. When its last reference goes,
//! a registered block is not wiped: it stays *cached*, still findable by [`BlockPool::lookup`],
//! until the pool needs the page for something else. Free pages are handed out plain ones that were
//! used before first (oldest freed first; their memory is already resident), then never-used ones
//! (the KV storage is mapped lazily, so these grow the process), then cached ones least recently
//! used first (eviction, which unregisters the block). A hit on a cached free block takes it back
//! ([`BlockPool::take`]); on a block in use, adds a reference. With caching off, nothing is
//! registered and the pool is a plain refcounted free list.
//!
//! The pool knows nothing of K/V tensors: `PagedKvCache` owns the storage, addressed by the
//! ids handed out here.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::prefix::CacheKey;

/// Refcounted pool of KV block ids `0..num_blocks`, with the prefix cache's index.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    refcounts: Vec<u32>,
    /// Free blocks holding nothing cached that were used before, oldest freed first.
    free_plain: VecDeque<u32>,
    /// Blocks `fresh..refcounts.len()` were never handed out.
    fresh: u32,
    /// Free blocks holding a cached prefix, by release stamp (least recently used first).
    free_cached: BTreeMap<u64, u32>,
    /// Release stamp of each block in `free_cached`.
    stamps: Vec<u64>,
    clock: u64,
    caching: bool,
    /// Registered blocks by key, and each block's key and tokens.
    index: HashMap<CacheKey, u32>,
    keys: Vec<Option<CacheKey>>,
    tokens: Vec<u32>,
    /// How many of each registered block's `block_size` token slots it holds (a tail: fewer).
    lens: Vec<u32>,
    evictions: u64,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks of `block_size` tokens each, all free, prefix cache off.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        Self {
            block_size,
            refcounts: vec![0; num_blocks],
            free_plain: VecDeque::new(),
            fresh: 0,
            free_cached: BTreeMap::new(),
            stamps: vec![0; num_blocks],
            clock: 0,
            caching: false,
            index: HashMap::new(),
            keys: vec![None; num_blocks],
            tokens: Vec::new(),
            lens: vec![0; num_blocks],
            evictions: 0,
        }
    }

    /// The same pool with the prefix cache on: full blocks can be registered and reused.
    pub fn with_prefix_caching(mut self) -> Self {
        self.caching = true;
        self.tokens = vec![0; self.refcounts.len() * self.block_size];
        self
    }

    pub fn prefix_caching(&self) -> bool {
        self.caching
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.refcounts.len()
    }

    /// Blocks no sequence references (plain free ones and cached ones alike).
    pub fn num_free(&self) -> usize {
        self.free_plain.len() + (self.refcounts.len() - self.fresh as usize) + self.free_cached.len()
    }

    /// Blocks some sequence references.
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Free blocks that hold a cached prefix (reusable until evicted).
    pub fn num_cached_free(&self) -> usize {
        self.free_cached.len()
    }

    /// Registered blocks, in use or free.
    pub fn num_registered(&self) -> usize {
        self.index.len()
    }

    /// Cached blocks evicted to make room since the pool was created.
    pub fn num_evictions(&self) -> u64 {
        self.evictions
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// How many sequences hold `block` (0 when free).
    pub fn refcount(&self, block: u32) -> u32 {
        self.refcounts.get(block as usize).copied().unwrap_or(0)
    }

    /// Takes one free block (refcount 1), or `None` when the pool is exhausted. Plain free
    /// blocks go first, used ones before never-used ones; then the least recently used cached
    /// block is evicted.
    pub fn allocate(&mut self) -> Option<u32> {
        let id = match self.free_plain.pop_front() {
            Some(id) => id,
            None if (self.fresh as usize) < self.refcounts.len() => {
                self.fresh += 1;
                self.fresh - 1
            }
            None => {
                let (_, id) = self.free_cached.pop_first()?;
                self.unregister(id);
                self.evictions += 1;
                id
            }
        };
        self.refcounts[id as usize] = 1;
        Some(id)
    }

    /// Takes `n` blocks at once, or none at all when fewer than `n` are free.
    pub fn allocate_n(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.num_free() {
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

    /// Drops one reference; at the last one the block becomes free: cached if registered,
    /// plain otherwise.
    pub fn free(&mut self, block: u32) {
        let rc = &mut self.refcounts[block as usize];
        assert!(*rc > 0, "double free of block {block}");
        *rc -= 1;
        if *rc == 0 {
            if self.keys[block as usize].is_some() {
                self.clock += 1;
                self.stamps[block as usize] = self.clock;
                self.free_cached.insert(self.clock, block);
            } else {
                self.free_plain.push_back(block);
            }
        }
    }

    /// Drops one reference to each block of a block table.
    pub fn free_all(&mut self, blocks: &[u32]) {
        for &b in blocks {
            self.free(b);
        }
    }

    /// Registers a computed `block` under `key` with its `tokens` (a full block's
    /// `block_size`, or a tail's first few), so later sequences can reuse it. Does nothing
    /// (returns false) with caching off, when the block is already registered, or when another
    /// block holds `key` (two sequences computed the same prefix at once: the first one's block
    /// is the cached one).
    pub fn register(&mut self, block: u32, key: CacheKey, tokens: &[u32]) -> bool {
        let b = block as usize;
        if !self.caching || self.keys[b].is_some() || self.index.contains_key(&key) {
            return false;
        }
        assert!(self.refcounts[b] > 0, "register of free block {block}");
        assert!((1..=self.block_size).contains(&tokens.len()), "a block holds 1..=block_size tokens");
        self.tokens[b * self.block_size..][..tokens.len()].copy_from_slice(tokens);
        self.lens[b] = tokens.len() as u32;
        self.keys[b] = Some(key);
        self.index.insert(key, block);
        true
    }

    /// The cached block registered under `key`, if its tokens are `tokens` (a hash match is
    /// verified against the stored tokens).
    pub fn lookup(&self, key: &CacheKey, tokens: &[u32]) -> Option<u32> {
        let &b = self.index.get(key)?;
        let (at, len) = (b as usize * self.block_size, self.lens[b as usize] as usize);
        (len == tokens.len() && self.tokens[at..at + len] == *tokens).then_some(b)
    }

    /// Takes a reference to a block found by [`BlockPool::lookup`]: a cached free block leaves
    /// the free set, a block in use is shared.
    pub fn take(&mut self, block: u32) {
        let b = block as usize;
        if self.refcounts[b] == 0 {
            let removed = self.free_cached.remove(&self.stamps[b]);
            assert_eq!(removed, Some(block), "take of block {block} that is neither cached nor in use");
        }
        self.refcounts[b] += 1;
    }

    fn unregister(&mut self, block: u32) {
        if let Some(key) = self.keys[block as usize].take() {
            self.index.remove(&key);
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
    fn used_blocks_go_before_never_used_ones_and_those_before_eviction() {
        let mut pool = BlockPool::new(4, 1).with_prefix_caching();
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        pool.register(a, key(0, 1), &[1]);
        pool.free(a);
        pool.free(b);
        assert_eq!(pool.num_free(), 4);
        // `b`'s page is resident already: it goes before the two never touched.
        assert_eq!(pool.allocate(), Some(b));
        let fresh = [pool.allocate().unwrap(), pool.allocate().unwrap()];
        assert!(!fresh.contains(&a) && !fresh.contains(&b));
        assert_eq!(pool.lookup(&key(0, 1), &[1]), Some(a), "nothing was evicted for them");
        assert_eq!((pool.allocate(), pool.num_evictions()), (Some(a), 1));
        assert_eq!(pool.allocate(), None);
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

    fn key(group: u32, n: u8) -> CacheKey {
        CacheKey { group, hash: [n; 32] }
    }

    #[test]
    fn a_tail_is_found_only_with_exactly_its_tokens() {
        let mut pool = BlockPool::new(4, 4).with_prefix_caching();
        let a = pool.allocate().unwrap();
        assert!(pool.register(a, key(0, 1), &[7, 8]));
        pool.free(a);
        assert_eq!(pool.lookup(&key(0, 1), &[7, 8]), Some(a));
        assert_eq!(pool.lookup(&key(0, 1), &[7]), None, "a shorter run is not this tail");
        assert_eq!(pool.lookup(&key(0, 1), &[7, 8, 0]), None, "nor is a longer one");
        assert_eq!(pool.lookup(&key(0, 1), &[7, 9]), None);
        // Reused as a plain page, then registered as a full block: its length is the block's.
        let fill: Vec<u32> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        let b = pool.allocate().unwrap();
        assert_eq!(b, a, "the cached tail is evicted last");
        assert_eq!(pool.lookup(&key(0, 1), &[7, 8]), None, "eviction unregisters it");
        assert!(pool.register(b, key(0, 2), &[1, 2, 3, 4]));
        assert_eq!(pool.lookup(&key(0, 2), &[1, 2, 3, 4]), Some(b));
        assert_eq!(pool.lookup(&key(0, 2), &[1, 2]), None);
        pool.free_all(&fill);
    }

    #[test]
    fn a_registered_block_outlives_its_sequence_and_is_found_again() {
        let mut pool = BlockPool::new(4, 2).with_prefix_caching();
        let a = pool.allocate().unwrap();
        assert!(pool.register(a, key(0, 1), &[7, 8]));
        assert_eq!(pool.lookup(&key(0, 1), &[7, 8]), Some(a));
        pool.free(a);
        assert_eq!((pool.num_free(), pool.num_cached_free()), (4, 1), "free, but still cached");
        assert_eq!(pool.lookup(&key(0, 1), &[7, 8]), Some(a));
        pool.take(a);
        assert_eq!((pool.refcount(a), pool.num_free()), (1, 3));
        pool.take(a);
        assert_eq!(pool.refcount(a), 2, "a hit on a block in use shares it");
    }

    #[test]
    fn a_hit_verifies_tokens_and_group() {
        let mut pool = BlockPool::new(2, 2).with_prefix_caching();
        let a = pool.allocate().unwrap();
        pool.register(a, key(0, 1), &[7, 8]);
        assert_eq!(pool.lookup(&key(0, 1), &[7, 9]), None, "a hash match with other tokens is a miss");
        assert_eq!(pool.lookup(&key(1, 1), &[7, 8]), None, "another group's layers are another block");
        assert_eq!(pool.lookup(&key(0, 2), &[7, 8]), None, "another prefix (or salt) is another chain");
    }

    #[test]
    fn plain_blocks_are_used_before_cached_ones_then_lru_eviction() {
        let mut pool = BlockPool::new(4, 1).with_prefix_caching();
        let b: Vec<u32> = pool.allocate_n(4).unwrap();
        for (i, &x) in b.iter().enumerate().take(3) {
            pool.register(x, key(0, i as u8), &[i as u32]);
        }
        // Freed in the order 1, 0, 2 (cached) and 3 (plain).
        for &i in &[1, 0, 2, 3] {
            pool.free(b[i]);
        }
        assert_eq!(pool.allocate(), Some(b[3]), "the plain block goes first");
        assert_eq!(pool.num_evictions(), 0);
        assert_eq!(pool.allocate(), Some(b[1]), "then the least recently used cached block");
        assert_eq!(pool.lookup(&key(0, 1), &[1]), None, "an evicted block is no longer found");
        assert_eq!(pool.num_evictions(), 1);
        // Touching block 0 (a hit, then released again) makes block 2 the oldest.
        pool.take(b[0]);
        pool.free(b[0]);
        assert_eq!(pool.allocate(), Some(b[2]));
        assert_eq!(pool.lookup(&key(0, 0), &[0]), Some(b[0]));
    }

    #[test]
    fn eviction_under_pressure_never_takes_a_block_in_use() {
        let mut pool = BlockPool::new(3, 1).with_prefix_caching();
        let b = pool.allocate_n(3).unwrap();
        for (i, &x) in b.iter().enumerate() {
            pool.register(x, key(0, i as u8), &[i as u32]);
        }
        pool.free(b[0]);
        // Only b[0] is free: one allocation evicts it, the next finds nothing.
        assert_eq!(pool.allocate(), Some(b[0]));
        assert_eq!(pool.allocate(), None);
        assert_eq!(pool.lookup(&key(0, 1), &[1]), Some(b[1]), "blocks in use stay registered");
        assert!(pool.allocate_n(1).is_none());
    }

    #[test]
    fn the_first_block_registered_under_a_key_wins() {
        let mut pool = BlockPool::new(2, 1).with_prefix_caching();
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        assert!(pool.register(a, key(0, 1), &[5]));
        assert!(!pool.register(b, key(0, 1), &[5]), "a duplicate stays a plain block");
        pool.free(b);
        assert_eq!(pool.num_cached_free(), 0);
        assert_eq!(pool.lookup(&key(0, 1), &[5]), Some(a));
    }

    #[test]
    fn without_caching_nothing_is_registered() {
        let mut pool = BlockPool::new(1, 1);
        let a = pool.allocate().unwrap();
        assert!(!pool.register(a, key(0, 1), &[5]));
        pool.free(a);
        assert_eq!(pool.lookup(&key(0, 1), &[5]), None);
    }
}
