//! The `Scheduler`'s half of automatic prefix caching (see the parent module's "Automatic
//! prefix caching" and "Tails"): finding the longest cached prefix of a sequence being admitted
//! and the cached tail that continues it, and registering what sequences computed, full blocks
//! and tails, in the [`BlockPool`] of every KV-cache group.

use super::Scheduler;
use crate::kv_cache::prefix::{chain_hash, BlockHash, CacheKey};
use crate::kv_cache::{BlockPool, NO_BLOCK};
use crate::sequence::Sequence;

/// A cached tail continuing a sequence after its full-block hit: how many tokens it holds and
/// its page in each group.
pub(super) struct Tail {
    pub(super) len: usize,
    pub(super) pages: Vec<u32>,
}

impl<G> Scheduler<G> {
    /// Whether a running sequence that is still prefilling shares more than `hit_blocks`
    /// leading blocks with `seq` (same chained hashes: same salt, model and tokens), so that
    /// waiting a step or two turns those blocks into a cache hit. Its own blocks are registered
    /// at each commit, so the wait ends as soon as its chunk has passed the shared run.
    pub(super) fn prefilling_shares_more(&self, seq: &Sequence<G>, hit_blocks: usize) -> bool {
        if !self.pool.prefix_caching() {
            return false;
        }
        let bs = self.pool.block_size();
        let computable = (seq.len() - 1) / bs;
        self.running.iter().any(|r| {
            let prefilling = r.num_uncomputed() > 1;
            let common = r.block_hashes.iter().zip(&seq.block_hashes).take_while(|(a, b)| a == b).count();
            prefilling && common.min(computable) > hit_blocks.max(r.num_registered_blocks)
        })
    }

    /// The longest cached prefix of `seq` (in tokens, a whole number of blocks, leaving at
    /// least one token to compute) that every group can serve, the tables holding it (not yet
    /// referenced: the caller takes the blocks), and the cached tail that continues it, if any.
    pub(super) fn find_prefix(&self, seq: &Sequence<G>) -> (usize, Vec<Vec<u32>>, Option<Tail>) {
        let bs = self.pool.block_size();
        let empty = || vec![Vec::new(); self.groups.len()];
        if !self.pool.prefix_caching() || seq.is_empty() {
            return (0, empty(), None);
        }
        let tokens_of = |j: usize| &seq.tokens[j * bs..(j + 1) * bs];
        let found = |g: usize, j: usize| {
            let key = CacheKey { group: g as u32, hash: seq.block_hashes[j] };
            self.pool.lookup(&key, tokens_of(j))
        };
        // Full groups need blocks 0..m; find the longest run they all have.
        let mut m = ((seq.len() - 1) / bs).min(seq.block_hashes.len());
        for (g, kind) in self.groups.iter().enumerate() {
            if kind.window().is_none() {
                m = (0..m).find(|&j| found(g, j).is_none()).unwrap_or(m);
            }
        }
        // Sliding groups need only the blocks a query at the hit's end can see.
        let serves = |m: usize| {
            self.groups.iter().enumerate().all(|(g, kind)| {
                kind.window().is_none() || (kind.first_live_block(m * bs, bs)..m).all(|j| found(g, j).is_some())
            })
        };
        while m > 0 && !serves(m) {
            m -= 1;
        }
        if m == 0 {
            return (0, empty(), self.find_tail(seq, 0));
        }
        let tables = self
            .groups
            .iter()
            .enumerate()
            .map(|(g, kind)| {
                let live = kind.first_live_block(m * bs, bs);
                (0..m).map(|j| if j < live { NO_BLOCK } else { found(g, j).unwrap_or(NO_BLOCK) }).collect()
            })
            .collect();
        (m * bs, tables, self.find_tail(seq, m))
    }

    /// The longest registered tail continuing `seq` after its first `m` full blocks in every
    /// group: up to a block's tokens less one, leaving at least the last token to compute.
    fn find_tail(&self, seq: &Sequence<G>, m: usize) -> Option<Tail> {
        let bs = self.pool.block_size();
        let start = m * bs;
        let parent = parent_hash(seq, m)?;
        let most = (bs - 1).min(seq.len().checked_sub(1)?.checked_sub(start)?);
        (1..=most).rev().find_map(|len| {
            let tokens = &seq.tokens[start..start + len];
            let hash = chain_hash(&parent, tokens);
            let pages = (0..self.groups.len())
                .map(|g| self.pool.lookup(&CacheKey { group: g as u32, hash }, tokens))
                .collect::<Option<Vec<u32>>>()?;
            Some(Tail { len, pages })
        })
    }
}

/// Registers the tail of what `seq` computed, the partly filled last block, in every group (see
/// the module's "Tails"); nothing when it computed whole blocks or caching is off.
pub(super) fn register_tail<G>(pool: &mut BlockPool, seq: &Sequence<G>) {
    let bs = pool.block_size();
    let (m, len) = (seq.num_computed_tokens / bs, seq.num_computed_tokens % bs);
    if !pool.prefix_caching() || len == 0 {
        return;
    }
    let Some(parent) = parent_hash(seq, m) else { return };
    let tokens = &seq.tokens[m * bs..m * bs + len];
    register_in_groups(pool, seq, m, chain_hash(&parent, tokens), tokens);
}

/// The chained hash a block after `seq`'s first `m` full blocks continues: the root's for the
/// first block, else block `m - 1`'s (`None` if that is not hashed yet).
fn parent_hash<G>(seq: &Sequence<G>, m: usize) -> Option<BlockHash> {
    match m {
        0 => Some(seq.hash_root),
        _ => seq.block_hashes.get(m - 1).copied(),
    }
}

/// Registers block `j` of every group's table that holds it under `hash` with its `tokens`.
pub(super) fn register_in_groups<G>(
    pool: &mut BlockPool,
    seq: &Sequence<G>,
    j: usize,
    hash: BlockHash,
    tokens: &[u32],
) {
    for (g, table) in seq.block_tables.iter().enumerate() {
        if let Some(&b) = table.get(j).filter(|&&b| b != NO_BLOCK) {
            pool.register(b, CacheKey { group: g as u32, hash }, tokens);
        }
    }
}
