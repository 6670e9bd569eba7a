//! The continuous-batching `Scheduler`: which sequences run in the next step, and how many of
//! their tokens.
//!
//! Each step has a token budget (`max_num_batched_tokens`) shared by everyone:
//! 1. running sequences that decode (1 token each) go first, oldest admission first;
//! 2. running sequences still prefilling get the next chunk of their prompt;
//! 3. waiting sequences are admitted in arrival order (FCFS: the head of the queue is never
//!    overtaken) while the budget, `max_num_seqs` and free KV blocks allow; the budget left over
//!    caps the first chunk, so a long prompt is prefilled over several steps while decodes keep
//!    flowing (chunked prefill).
//!
//! In a step that decodes, prompt tokens (2 and 3 together) are further capped by
//! `max_prefill_tokens_per_decode_step`, so a burst of new prompts lengthens each decode step
//! by a bounded amount (inter-token latency) while a server with nothing decoding prefills in
//! the larger chunks of the whole budget (time to first token).
//!
//! When a running sequence needs a KV block and none is free, the most recently admitted running
//! sequence is preempted by recompute: its blocks are freed and it goes back to the front of the
//! waiting queue with every token it has (prompt and output), so its next prefill recomputes the
//! whole context and generation resumes where it stopped.
//!
//! KV blocks are pages of one shared [`BlockPool`], and every sequence has one block table per
//! KV-cache group (see [`crate::kv_cache::KvLayout`]). For a chunk of `n` tokens from computed
//! position `c`, a full-attention group holds blocks covering `[0, c + n)`, a sliding-window
//! group of window `w` only those covering `[max(0, c + 1 - w), c + n)`: earlier entries are
//! [`NO_BLOCK`], and after each step ([`Scheduler::commit`]) a sliding group returns to the pool
//! the blocks its next query can no longer see. Admission and preemption count pages over all
//! groups.
//!
//! Automatic prefix caching (when the pool has it on, see [`BlockPool`]): at admission a
//! sequence looks up its leading full blocks by their chained hashes (`kv_cache::prefix`) and
//! starts with them in its tables and `num_computed_tokens` past them, so only the rest is
//! prefilled; at least its last token is always computed, for the logits that pick the next
//! one. A full-attention group needs every block of the prefix; a sliding-window group only
//! the blocks its first new query can see (the window before the hit), so the prefix of a hit
//! is the longest one every group can serve. After each step ([`Scheduler::commit`]) the blocks
//! that became full are registered, before a sliding group releases the ones that left its
//! window, so a released page stays reusable until evicted. A preempted sequence's blocks stay
//! cached as well, so its recompute usually starts from a hit.
//!
//! Tails: when a sequence ends (or is preempted), the partly filled last block of what it
//! computed is registered too, under the hash of its parent and the tokens it holds. A later
//! sequence that continues those tokens (the next turn of a chat, which resends the answer)
//! finds the tail after its full-block hit and starts with a *copy* of that page
//! ([`StepPlan::copies`], made by the caller before the step's forward) rather than recomputing
//! up to a block of tokens; the cached tail stays as it was for others.
//!
//! [`Scheduler::fork`] starts a sibling of a sequence that has just computed its prompt (the
//! other choices of `n > 1`): it shares every full block and gets a copy of the partial last
//! one, so a prompt is prefilled once for all choices.
//!
//! The scheduler is pure bookkeeping: it owns the sequences and the [`BlockPool`], but no model,
//! cache tensors or channels. The engine calls [`Scheduler::plan`], builds the
//! [`ForwardBatch`] with [`Scheduler::build_batch`], runs the model, then calls
//! [`Scheduler::commit`] and [`Scheduler::append_token`].

use std::collections::VecDeque;

use crate::batch::ForwardBatch;
use crate::kv_cache::prefix::extend_chain;
use crate::kv_cache::{AttentionKind, BlockPool, NO_BLOCK};
use crate::sequence::{SeqId, SeqStatus, Sequence};
use prefix::{register_in_groups, register_tail};

mod prefix;
#[cfg(test)]
mod prefix_tests;
#[cfg(test)]
mod tests;

/// Scheduling limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Most sequences in the running batch.
    pub max_num_seqs: usize,
    /// Most tokens per step (prefill chunks + decodes).
    pub max_num_batched_tokens: usize,
    /// Most prompt tokens in a step that also decodes.
    pub max_prefill_tokens_per_decode_step: usize,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    /// Tokens of this sequence that run this step, starting at its `num_computed_tokens`.
    pub num_tokens: usize,
    /// The chunk ends at the sequence's last known token, so its logits pick the next token.
    pub wants_logits: bool,
}

/// What runs in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// In batch order: decodes first, then prefill chunks.
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted while planning this step (now waiting, their blocks freed).
    pub preempted: Vec<SeqId>,
    /// Page copies the KV storage must make before this step's forward (and before any other
    /// call to the scheduler): cached tails that admitted sequences continue in pages of their
    /// own.
    pub copies: Vec<PageCopy>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_tokens).sum()
    }

    /// The sequences whose logits the step returns, in logits-row order.
    pub fn sampled(&self) -> impl Iterator<Item = &ScheduledSeq> {
        self.seqs.iter().filter(|s| s.wants_logits)
    }
}

/// Waiting and running queues over a [`BlockPool`]. `G` is the sequences' generation payload.
pub struct Scheduler<G> {
    cfg: SchedulerConfig,
    pool: BlockPool,
    /// Kind of each KV-cache group (a sequence has one block table per group).
    groups: Vec<AttentionKind>,
    waiting: VecDeque<Sequence<G>>,
    /// In admission order, oldest first.
    running: Vec<Sequence<G>>,
    num_preemptions: u64,
    prefix: PrefixStats,
    /// Cached tails being copied by this plan: referenced while it is made, so that no later
    /// admission in the same plan evicts them, and released when it is returned.
    pinned: Vec<u32>,
}

/// Prefix-cache counters, in prompt tokens (vLLM's `prefix_cache_queries` / `_hits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Tokens of admitted sequences that were looked up.
    pub queried_tokens: u64,
    /// Of those, tokens found in the cache (not recomputed).
    pub hit_tokens: u64,
}

/// A page copy the KV storage must make before the next step (`src` page into `dst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCopy {
    pub src: u32,
    pub dst: u32,
}

impl<G> Scheduler<G> {
    /// A scheduler over `pool`, whose pages serve the KV-cache groups `groups`
    /// (`KvLayout::groups`; `vec![AttentionKind::Full]` for a model without sliding windows).
    pub fn new(cfg: SchedulerConfig, pool: BlockPool, groups: Vec<AttentionKind>) -> Self {
        assert!(cfg.max_num_seqs > 0 && cfg.max_num_batched_tokens > 0, "scheduler limits must be positive");
        assert!(!groups.is_empty(), "the KV cache needs at least one group");
        Self {
            cfg,
            pool,
            groups,
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
            prefix: PrefixStats::default(),
            pinned: Vec::new(),
        }
    }

    /// Prefix-cache counters since the scheduler was created.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.prefix
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Kind of each KV-cache group.
    pub fn groups(&self) -> &[AttentionKind] {
        &self.groups
    }

    /// Pages a sequence of `len` tokens may hold at once over all groups while it is computed
    /// (in chunks of at most the step budget): what admission requires free.
    pub fn peak_blocks(&self, len: usize) -> usize {
        let (chunk, bs) = (self.cfg.max_num_batched_tokens, self.pool.block_size());
        self.groups.iter().map(|k| k.peak_blocks(len, chunk, bs)).sum()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Preemptions since the scheduler was created.
    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    /// Queues a new sequence at the back of the waiting queue.
    pub fn add(&mut self, mut seq: Sequence<G>) {
        seq.status = SeqStatus::Waiting;
        self.waiting.push_back(seq);
    }

    pub fn get(&self, id: SeqId) -> Option<&Sequence<G>> {
        self.running.iter().chain(self.waiting.iter()).find(|s| s.id == id)
    }

    pub fn get_mut(&mut self, id: SeqId) -> Option<&mut Sequence<G>> {
        self.running.iter_mut().chain(self.waiting.iter_mut()).find(|s| s.id == id)
    }

    /// Every sequence, running then waiting.
    pub fn iter(&self) -> impl Iterator<Item = &Sequence<G>> {
        self.running.iter().chain(self.waiting.iter())
    }

    /// Removes a sequence (finished or cancelled) wherever it is and frees its blocks.
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence<G>> {
        let mut seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(i)?
        };
        register_tail(&mut self.pool, &seq);
        free_tables(&mut self.pool, &mut seq.block_tables);
        seq.num_computed_tokens = 0;
        Some(seq)
    }

    /// Removes (and frees the blocks of) every sequence for which `pred` holds.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&Sequence<G>) -> bool) -> Vec<Sequence<G>> {
        let ids: Vec<SeqId> = self.iter().filter(|s| pred(s)).map(|s| s.id).collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Appends a sampled token to a sequence.
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.get_mut(id) {
            seq.tokens.push(token);
        }
    }

    /// Decides the next step and allocates the KV blocks its tokens need.
    pub fn plan(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        for decodes in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let seq = &self.running[i];
                let remaining = seq.num_uncomputed();
                if remaining == 0 || (remaining == 1) != decodes {
                    i += 1;
                    continue;
                }
                let n = remaining.min(budget);
                if self.reserve_running(i, n, &mut plan, &mut budget) {
                    let seq = &self.running[i];
                    let wants_logits = seq.num_computed_tokens + n == seq.len();
                    plan.seqs.push(ScheduledSeq { id: seq.id, num_tokens: n, wants_logits });
                    budget -= n;
                    i += 1;
                }
                // else: sequence `i` preempted itself and left `running`.
            }
            if decodes && !plan.seqs.is_empty() {
                budget = budget.min(self.cfg.max_prefill_tokens_per_decode_step);
            }
        }
        if plan.preempted.is_empty() {
            self.admit(&mut plan, &mut budget);
        }
        for page in self.pinned.drain(..) {
            self.pool.free(page);
        }
        plan
    }

    /// Makes room for `n` more tokens of `running[i]`, preempting the most recently admitted
    /// sequences while blocks are short. Returns false if `running[i]` itself was preempted.
    fn reserve_running(&mut self, i: usize, n: usize, plan: &mut StepPlan, budget: &mut usize) -> bool {
        loop {
            let seq = &mut self.running[i];
            if extend_tables(&mut self.pool, &self.groups, &mut seq.block_tables, seq.num_computed_tokens, n) {
                return true;
            }
            let victim = self.running.len() - 1;
            self.preempt_last(plan, budget);
            if victim == i {
                return false;
            }
        }
    }

    /// Preempts the most recently admitted running sequence by recompute.
    fn preempt_last(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        let Some(mut seq) = self.running.pop() else { return };
        if let Some(k) = plan.seqs.iter().position(|s| s.id == seq.id) {
            *budget += plan.seqs.remove(k).num_tokens;
        }
        register_tail(&mut self.pool, &seq);
        free_tables(&mut self.pool, &mut seq.block_tables);
        seq.num_computed_tokens = 0;
        seq.num_preemptions += 1;
        seq.status = SeqStatus::Waiting;
        plan.preempted.push(seq.id);
        self.num_preemptions += 1;
        self.waiting.push_front(seq);
    }

    /// Admits waiting sequences in FCFS order. A sequence is admitted only when the pages for
    /// its whole known context are free, counted over every group (a sliding-window group
    /// needs only its window's, see [`Scheduler::peak_blocks`]; cached pages it shares with
    /// running sequences need nothing), so a fresh admission never forces a preemption; only
    /// the pages of its first chunk are allocated, after those of its prefix-cache hit.
    fn admit(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            let bs = self.pool.block_size();
            if self.pool.prefix_caching() {
                extend_chain(&mut seq.block_hashes, &seq.hash_root, &seq.tokens, bs);
            }
            let (hit, mut tables, tail) = self.find_prefix(&seq);
            if self.prefilling_shares_more(&seq, hit / bs) {
                // A running sequence is computing blocks this one shares beyond its hit: wait
                // for them to be registered rather than compute them a second time.
                self.waiting.push_front(seq);
                break;
            }
            let shared = tables.iter().flatten().filter(|&&b| b != NO_BLOCK && self.pool.refcount(b) > 0).count();
            // A tail's pages are pinned while this plan is made (their copies are new pages,
            // which the peak counts).
            let pins = tail.as_ref().map_or(0, |t| t.pages.iter().filter(|&&p| self.pool.refcount(p) == 0).count());
            if self.peak_blocks(seq.len()) + pins > self.pool.num_free() + shared {
                self.waiting.push_front(seq);
                break;
            }
            for &b in tables.iter().flatten().filter(|&&b| b != NO_BLOCK) {
                self.pool.take(b);
            }
            let (mut computed, mut copies, mut short) = (hit, Vec::new(), false);
            if let Some(tail) = tail {
                for &src in &tail.pages {
                    self.pool.take(src);
                    self.pinned.push(src);
                }
                // Counted by the peak check; all or nothing.
                match self.pool.allocate_n(tail.pages.len()) {
                    Some(dsts) => {
                        for ((table, &src), dst) in tables.iter_mut().zip(&tail.pages).zip(dsts) {
                            table.push(dst);
                            copies.push(PageCopy { src, dst });
                        }
                        computed += tail.len;
                    }
                    None => short = true,
                }
            }
            let n = (seq.len() - computed).min(*budget);
            if short || !extend_tables(&mut self.pool, &self.groups, &mut tables, computed, n) {
                free_tables(&mut self.pool, &mut tables);
                self.waiting.push_front(seq);
                break;
            }
            plan.copies.extend(copies);
            if self.pool.prefix_caching() {
                self.prefix.queried_tokens += seq.len() as u64;
                self.prefix.hit_tokens += computed as u64;
            }
            seq.cached_prompt_tokens.get_or_insert(computed.min(seq.prompt_len));
            seq.block_tables = tables;
            seq.num_computed_tokens = computed;
            seq.num_registered_blocks = hit / bs;
            seq.status = SeqStatus::Running;
            plan.seqs.push(ScheduledSeq { id: seq.id, num_tokens: n, wants_logits: computed + n == seq.len() });
            *budget -= n;
            self.running.push(seq);
        }
    }

    /// Starts `child` as a running sibling of `parent`, which has computed exactly its known
    /// tokens (a prompt just prefilled): the child gets the same tokens and computed position,
    /// shares every full block and gets a fresh copy of the partial last one. Returns the page
    /// copies the storage must make, or gives the child back when it cannot run now (the batch
    /// is full or no page is free for the copy): queue it instead, and it will find the full
    /// blocks in the prefix cache.
    pub fn fork(&mut self, parent: SeqId, mut child: Sequence<G>) -> Result<Vec<PageCopy>, Box<Sequence<G>>> {
        let Some(p) = self.running.iter().find(|q| q.id == parent) else { return Err(Box::new(child)) };
        let bs = self.pool.block_size();
        let computed = p.num_computed_tokens;
        let partial = computed % bs != 0;
        let copies_needed =
            if partial { p.block_tables.iter().filter(|t| t.last() != Some(&NO_BLOCK)).count() } else { 0 };
        if computed != p.len() || self.running.len() >= self.cfg.max_num_seqs || copies_needed > self.pool.num_free() {
            return Err(Box::new(child));
        }
        let mut tables = p.block_tables.clone();
        child.tokens = p.tokens.clone();
        child.prompt_len = p.prompt_len;
        child.hash_root = p.hash_root;
        child.block_hashes = p.block_hashes.clone();
        child.num_registered_blocks = p.num_registered_blocks;
        child.cached_prompt_tokens = p.cached_prompt_tokens;
        let mut copies = Vec::new();
        for table in &mut tables {
            let last = table.len().saturating_sub(1);
            for (j, b) in table.iter_mut().enumerate() {
                if *b == NO_BLOCK {
                    continue;
                }
                if partial && j == last {
                    let dst = self.pool.allocate().expect("counted free pages");
                    copies.push(PageCopy { src: *b, dst });
                    *b = dst;
                } else {
                    self.pool.fork(*b);
                }
            }
        }
        child.block_tables = tables;
        child.num_computed_tokens = computed;
        child.status = SeqStatus::Running;
        self.running.push(child);
        Ok(copies)
    }

    /// Packs the planned tokens into a [`ForwardBatch`] (rows needing logits marked).
    pub fn build_batch(&self, plan: &StepPlan) -> ForwardBatch {
        let mut batch = ForwardBatch::default();
        for s in &plan.seqs {
            let Some(seq) = self.running.iter().find(|q| q.id == s.id) else { continue };
            let start = seq.num_computed_tokens;
            let end = start + s.num_tokens;
            let nb = self.pool.blocks_for(end);
            let tables = seq.block_tables.iter().map(|t| t[..nb].to_vec()).collect();
            batch.push_seq(&seq.tokens[start..end], end, tables, s.wants_logits);
        }
        batch
    }

    /// Records that the planned tokens are now in the KV cache, registers the blocks that
    /// became full with the prefix cache, and releases the blocks of sliding-window groups that
    /// the next query (at the new computed position) cannot see.
    pub fn commit(&mut self, plan: &StepPlan) {
        let bs = self.pool.block_size();
        for s in &plan.seqs {
            if let Some(seq) = self.running.iter_mut().find(|q| q.id == s.id) {
                seq.num_computed_tokens += s.num_tokens;
                if self.pool.prefix_caching() {
                    extend_chain(&mut seq.block_hashes, &seq.hash_root, &seq.tokens, bs);
                    let full = (seq.num_computed_tokens / bs).min(seq.block_hashes.len());
                    for j in seq.num_registered_blocks..full {
                        register_in_groups(
                            &mut self.pool,
                            seq,
                            j,
                            seq.block_hashes[j],
                            &seq.tokens[j * bs..(j + 1) * bs],
                        );
                    }
                    seq.num_registered_blocks = seq.num_registered_blocks.max(full);
                }
                for (kind, table) in self.groups.iter().zip(&mut seq.block_tables) {
                    let live = kind.first_live_block(seq.num_computed_tokens, bs).min(table.len());
                    // Released entries are a prefix: walk back from the window to the last one.
                    for b in table[..live].iter_mut().rev() {
                        if *b == NO_BLOCK {
                            break;
                        }
                        self.pool.free(*b);
                        *b = NO_BLOCK;
                    }
                }
            }
        }
    }
}

/// Extends each group's table (one per entry of `groups`) so a chunk of `n` tokens from
/// computed position `c` can run: full groups to blocks covering `[0, c + n)`, sliding ones
/// covering `[max(0, c + 1 - w), c + n)` with [`NO_BLOCK`] before. All or nothing: returns
/// false, changing nothing, when the pool has too few free blocks.
fn extend_tables(pool: &mut BlockPool, groups: &[AttentionKind], tables: &mut [Vec<u32>], c: usize, n: usize) -> bool {
    let bs = pool.block_size();
    let hi = pool.blocks_for(c + n);
    let need: usize =
        groups.iter().zip(tables.iter()).map(|(k, t)| hi.saturating_sub(k.first_live_block(c, bs).max(t.len()))).sum();
    if need > pool.num_free() {
        return false;
    }
    for (kind, table) in groups.iter().zip(tables.iter_mut()) {
        let live = kind.first_live_block(c, bs);
        while table.len() < hi {
            let b = if table.len() < live { NO_BLOCK } else { pool.allocate().expect("counted free blocks") };
            table.push(b);
        }
    }
    true
}

/// Returns every block of every group's table to the pool and empties the tables. Each table
/// is freed from its end, so a prefix's later blocks become least recently used and are
/// evicted before its first ones (which more prompts share).
fn free_tables(pool: &mut BlockPool, tables: &mut Vec<Vec<u32>>) {
    for table in tables.iter() {
        for &b in table.iter().rev() {
            if b != NO_BLOCK {
                pool.free(b);
            }
        }
    }
    tables.clear();
}
