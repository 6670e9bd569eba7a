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
//! The scheduler is pure bookkeeping: it owns the sequences and the [`BlockPool`], but no model,
//! cache tensors or channels. The engine calls [`Scheduler::plan`], builds the
//! [`ForwardBatch`] with [`Scheduler::build_batch`], runs the model, then calls
//! [`Scheduler::commit`] and [`Scheduler::append_token`].

use std::collections::VecDeque;

use crate::batch::ForwardBatch;
use crate::kv_cache::{AttentionKind, BlockPool, NO_BLOCK};
use crate::sequence::{SeqId, SeqStatus, Sequence};

#[cfg(test)]
mod tests;

/// Scheduling limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Most sequences in the running batch.
    pub max_num_seqs: usize,
    /// Most tokens per step (prefill chunks + decodes).
    pub max_num_batched_tokens: usize,
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
}

impl<G> Scheduler<G> {
    /// A scheduler over `pool`, whose pages serve the KV-cache groups `groups`
    /// (`KvLayout::groups`; `vec![AttentionKind::Full]` for a model without sliding windows).
    pub fn new(cfg: SchedulerConfig, pool: BlockPool, groups: Vec<AttentionKind>) -> Self {
        assert!(cfg.max_num_seqs > 0 && cfg.max_num_batched_tokens > 0, "scheduler limits must be positive");
        assert!(!groups.is_empty(), "the KV cache needs at least one group");
        Self { cfg, pool, groups, waiting: VecDeque::new(), running: Vec::new(), num_preemptions: 0 }
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
        }
        if plan.preempted.is_empty() {
            self.admit(&mut plan, &mut budget);
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
    /// needs only its window's, see [`Scheduler::peak_blocks`]), so a fresh admission never
    /// forces a preemption; only the pages of its first chunk are allocated.
    fn admit(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(seq) = self.waiting.front() else { break };
            if self.peak_blocks(seq.len()) > self.pool.num_free() {
                break;
            }
            let n = seq.len().min(*budget);
            let mut tables = vec![Vec::new(); self.groups.len()];
            if !extend_tables(&mut self.pool, &self.groups, &mut tables, 0, n) {
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else { break };
            seq.block_tables = tables;
            seq.num_computed_tokens = 0;
            seq.status = SeqStatus::Running;
            plan.seqs.push(ScheduledSeq { id: seq.id, num_tokens: n, wants_logits: n == seq.len() });
            *budget -= n;
            self.running.push(seq);
        }
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

    /// Records that the planned tokens are now in the KV cache, and releases the blocks of
    /// sliding-window groups that the next query (at the new computed position) cannot see.
    pub fn commit(&mut self, plan: &StepPlan) {
        let bs = self.pool.block_size();
        for s in &plan.seqs {
            if let Some(seq) = self.running.iter_mut().find(|q| q.id == s.id) {
                seq.num_computed_tokens += s.num_tokens;
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

/// Returns every block of every group's table to the pool and empties the tables.
fn free_tables(pool: &mut BlockPool, tables: &mut Vec<Vec<u32>>) {
    for &b in tables.iter().flatten() {
        if b != NO_BLOCK {
            pool.free(b);
        }
    }
    tables.clear();
}
