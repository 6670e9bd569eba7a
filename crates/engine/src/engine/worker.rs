//! The engine thread's loop. Each step: take new requests (blocking only when idle), drop
//! sequences whose client went away (queued, prefilling or decoding: their blocks are freed this
//! step), plan with the scheduler, run the model on the packed batch, turn each logits row into
//! events (see `output`), and publish stats.
//!
//! A request with `n > 1` choices enters as one sequence (choice 0); the others wait in its
//! [`RequestState`] until choice 0 has computed the prompt, then are forked from it
//! ([`Scheduler::fork`]: shared pages, a copy of the partial last one) and sample their first
//! token from the same logits row. The prompt is prefilled once.
//!
//! A panic anywhere in a step (a broken scheduler or block-pool invariant, a detokenizer bug)
//! does not end the thread: the requests running in that step get `Event::Error` and are
//! dropped with their blocks, and the engine goes on with the rest. Should freeing those blocks
//! panic too, the block pool is rebuilt empty and every request still held fails.
//! For tests only, `WICK_TEST_PANIC_AT_STEP=k` injects one panic into the `k`-th step that
//! runs the model (1-based), after its blocks are allocated.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use super::{Shared, Submission};
use crate::grammar::Constraint;
use crate::kv_cache::prefix::root_hash;
use crate::kv_cache::{BlockPool, PagedKvCache};
use crate::model::CausalLm;
use crate::request::{Event, SamplingParams};
use crate::sampling::Sampler;
use crate::scheduler::{Scheduler, SchedulerConfig, StepPlan};
use crate::sequence::{Generation, SeqId, SeqStatus, Sequence};
use crate::text::{IncrementalDetokenizer, StopChecker, TextProcessor};
use crate::EngineConfig;

use tokio::sync::mpsc::UnboundedSender;

/// A grammar's mask for one step, or why the grammar cannot go on.
pub(super) type MaskResult = Result<crate::sampling::TokenMask, String>;

/// What the engine keeps per request (shared by its `n` choices).
pub(super) struct RequestState {
    /// The caller's request id (for logs).
    pub id: String,
    pub events: UnboundedSender<Event>,
    pub params: SamplingParams,
    pub prompt_len: usize,
    /// Choices not finished yet.
    pub remaining: usize,
    pub completion_tokens: usize,
    pub arrival: Instant,
    pub scheduled_at: Option<Instant>,
    pub first_token_at: Option<Instant>,
    /// Prompt tokens choice 0 found in the prefix cache.
    pub cached_tokens: usize,
    /// Choices `1..n`, forked from choice 0 once it has computed the prompt.
    pub pending_forks: Vec<Sequence<Generation>>,
}

/// Everything the engine thread owns.
pub(super) struct Worker {
    pub model: Box<dyn CausalLm>,
    pub cache: PagedKvCache,
    pub sched: Scheduler<Generation>,
    pub requests: HashMap<u64, RequestState>,
    pub text: Arc<TextProcessor>,
    pub max_model_len: usize,
    rx: Receiver<Submission>,
    shared: Arc<Shared>,
    /// Mixed into every prefix-cache hash chain, so blocks never match across models.
    model_key: String,
    next_request: u64,
    next_seq: u64,
    sched_cfg: SchedulerConfig,
    /// Steps that ran the model so far, and the one to panic in (`WICK_TEST_PANIC_AT_STEP`).
    model_steps: u64,
    panic_at_step: Option<u64>,
    /// The last step's logits, `[rows, vocab]`, one buffer reused by every step.
    logits: Vec<f32>,
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "panic".to_owned(),
    }
}

/// Marks the engine dead when the thread ends, even by panic.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        self.0.stats.running.store(0, Ordering::Relaxed);
        self.0.stats.waiting.store(0, Ordering::Relaxed);
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Box<dyn CausalLm>,
        cache: PagedKvCache,
        text: Arc<TextProcessor>,
        cfg: &EngineConfig,
        num_blocks: usize,
        max_model_len: usize,
        rx: Receiver<Submission>,
        shared: Arc<Shared>,
    ) -> Self {
        let sched_cfg = SchedulerConfig {
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_prefill_tokens_per_decode_step: cfg.max_prefill_tokens_per_decode_step,
        };
        let groups = cache.layout().groups.clone();
        let mc = model.config();
        let model_key = format!("{}/{}x{}/{}", mc.arch, mc.num_layers, mc.hidden_size, mc.vocab_size);
        let mut pool = BlockPool::new(num_blocks, cfg.block_size);
        if cfg.enable_prefix_caching {
            pool = pool.with_prefix_caching();
        }
        Self {
            model,
            cache,
            sched: Scheduler::new(sched_cfg, pool, groups),
            requests: HashMap::new(),
            text,
            max_model_len,
            rx,
            shared,
            model_key,
            next_request: 0,
            next_seq: 0,
            sched_cfg,
            model_steps: 0,
            panic_at_step: std::env::var("WICK_TEST_PANIC_AT_STEP").ok().and_then(|v| v.parse().ok()),
            logits: Vec::new(),
        }
    }

    /// Runs until the handle is dropped (and, if it was only disconnected, the work is done).
    pub fn run(mut self) {
        let _guard = AliveGuard(self.shared.clone());
        let mut disconnected = false;
        while !self.shared.shutdown.load(Ordering::Acquire) {
            if self.sched.is_empty() {
                if disconnected {
                    break;
                }
                match self.rx.recv() {
                    Ok(sub) => self.accept(sub),
                    Err(_) => break,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(sub) => self.accept(sub),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            self.reap_cancelled();
            if !self.sched.is_empty() {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.step())) {
                    self.recover(&panic_message(panic.as_ref()));
                }
            }
            self.publish_stats();
        }
    }

    /// Turns a submission into `n` waiting sequences.
    fn accept(&mut self, sub: Submission) {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        if sub.events.is_closed() {
            return;
        }
        let Submission { req, events } = sub;
        let key = self.next_request;
        self.next_request += 1;
        let seed = req.params.seed.unwrap_or_else(rand::random::<u64>);
        let root = root_hash(&self.model_key, req.cache_salt.as_deref());
        let mut pending_forks = Vec::new();
        for choice in 0..req.n {
            let gen = Generation {
                request: key,
                choice,
                sampler: Sampler::new(&req.params, seed.wrapping_add(choice as u64)),
                detokenizer: IncrementalDetokenizer::new(),
                stop: StopChecker::new(req.params.stop.clone()),
                constraint: req.params.grammar.clone().map(Constraint::new),
                events: events.clone(),
            };
            let seq = Sequence::new(self.next_seq, req.prompt_ids.clone(), gen).with_hash_root(root);
            self.next_seq += 1;
            if choice == 0 {
                self.sched.add(seq);
            } else {
                pending_forks.push(seq);
            }
        }
        self.requests.insert(
            key,
            RequestState {
                id: req.id,
                events,
                params: req.params,
                prompt_len: req.prompt_ids.len(),
                remaining: req.n,
                completion_tokens: 0,
                arrival: req.arrival,
                scheduled_at: None,
                first_token_at: None,
                cached_tokens: 0,
                pending_forks,
            },
        );
    }

    /// Drops every sequence whose client is gone and frees its blocks.
    fn reap_cancelled(&mut self) {
        for seq in self.sched.remove_where(|s| s.gen.events.is_closed()) {
            self.requests.remove(&seq.gen.request);
        }
    }

    /// Ends a request with an error: `Event::Error`, then all its sequences are dropped.
    pub(super) fn fail_request(&mut self, key: u64, message: &str) {
        if let Some(req) = self.requests.remove(&key) {
            let _ = req.events.send(Event::Error(message.to_string()));
        }
        self.sched.remove_where(|s| s.gen.request == key);
    }

    fn step(&mut self) {
        let started = Instant::now();
        let plan = self.sched.plan();
        for c in &plan.copies {
            self.cache.copy_page(c.src as usize, c.dst as usize);
        }
        self.shared.stats.preemptions_total.fetch_add(plan.preempted.len() as u64, Ordering::Relaxed);
        if plan.is_empty() {
            self.unblock_head();
            return;
        }
        let mut prompt_tokens = 0;
        for s in &plan.seqs {
            if let Some(seq) = self.sched.get(s.id) {
                let end = seq.num_computed_tokens + s.num_tokens;
                prompt_tokens += seq.prompt_len.min(end).saturating_sub(seq.num_computed_tokens);
                if let Some(req) = self.requests.get_mut(&seq.gen.request) {
                    req.scheduled_at.get_or_insert(started);
                }
            }
        }
        let batch = self.sched.build_batch(&plan);
        self.model_steps += 1;
        if self.panic_at_step == Some(self.model_steps) {
            panic!("injected fault (WICK_TEST_PANIC_AT_STEP={})", self.model_steps);
        }
        let mut logits = std::mem::take(&mut self.logits);
        let result = catch_unwind(AssertUnwindSafe(|| self.model.logits_into(&batch, &mut self.cache, &mut logits)));
        let vocab = self.model.config().vocab_size;
        match result {
            Ok(Ok(())) if logits.len() == batch.logits_rows.len() * vocab => {}
            Ok(Ok(())) => {
                let msg = format!(
                    "model returned {} logits, expected {} rows of {vocab}",
                    logits.len(),
                    batch.logits_rows.len()
                );
                return self.fail_step(&plan, &msg);
            }
            Ok(Err(e)) => return self.fail_step(&plan, &format!("forward failed: {e}")),
            Err(_) => return self.fail_step(&plan, "forward panicked"),
        };
        self.sched.commit(&plan);
        let stats = &self.shared.stats;
        stats.prompt_tokens_total.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        stats.generation_tokens_total.fetch_add(batch.logits_rows.len() as u64, Ordering::Relaxed);
        let ids: Vec<_> = plan.sampled().map(|s| s.id).collect();
        let mask_started = Instant::now();
        let mut masks = self.grammar_masks(&ids);
        if let Some(m) = &masks {
            let stats = &self.shared.stats;
            stats.grammar_mask_micros_total.fetch_add(mask_started.elapsed().as_micros() as u64, Ordering::Relaxed);
            stats.grammar_masks_total.fetch_add(m.iter().filter(|x| x.is_some()).count() as u64, Ordering::Relaxed);
        }
        for (i, (id, row)) in ids.iter().zip(logits.chunks_exact(vocab.max(1))).enumerate() {
            let mask = masks.as_mut().and_then(|m| m[i].take());
            for child in self.start_forks(*id) {
                let mask = self.own_mask(child);
                self.on_logits(child, row, mask);
            }
            self.on_logits(*id, row, mask);
        }
        self.logits = logits;
        let stats = &self.shared.stats;
        stats.steps_total.fetch_add(1, Ordering::Relaxed);
        let micros = started.elapsed().as_micros() as u64;
        stats.last_step_micros.store(micros, Ordering::Relaxed);
        stats.step_micros_total.fetch_add(micros, Ordering::Relaxed);
    }

    /// This step's grammar masks, one slot per sampled sequence (`None` for those without an
    /// active grammar); `None` at all when no sampled sequence has one, so a step without
    /// grammars costs one pointer check per sequence. Several masks are computed in parallel.
    fn grammar_masks(&mut self, ids: &[SeqId]) -> Option<Vec<Option<MaskResult>>> {
        let active = |c: &Option<Constraint>| c.as_ref().is_some_and(Constraint::is_active);
        if !ids.iter().any(|id| self.sched.get(*id).is_some_and(|s| active(&s.gen.constraint))) {
            return None;
        }
        let mut taken: Vec<(usize, Constraint)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if let Some(seq) = self.sched.get_mut(*id) {
                if active(&seq.gen.constraint) {
                    if let Some(c) = seq.gen.constraint.take() {
                        taken.push((i, c));
                    }
                }
            }
        }
        let computed: Vec<Option<MaskResult>> = if taken.len() == 1 {
            taken.iter_mut().map(|(_, c)| c.compute_mask()).collect()
        } else {
            use rayon::prelude::*;
            taken.par_iter_mut().map(|(_, c)| c.compute_mask()).collect()
        };
        let mut out: Vec<Option<MaskResult>> = vec![None; ids.len()];
        for ((i, c), m) in taken.into_iter().zip(computed) {
            if let Some(seq) = self.sched.get_mut(ids[i]) {
                seq.gen.constraint = Some(c);
            }
            out[i] = m;
        }
        Some(out)
    }

    /// Forks the waiting choices of `id`'s request from it once it has just computed its prompt;
    /// returns the ones now running, which sample from `id`'s logits row. A choice that cannot
    /// run yet (full batch, no free page) is queued instead and prefills from the prefix cache.
    fn start_forks(&mut self, id: SeqId) -> Vec<SeqId> {
        let Some(seq) = self.sched.get(id) else { return Vec::new() };
        if seq.len() != seq.prompt_len || seq.num_computed_tokens != seq.prompt_len {
            return Vec::new();
        }
        let Some(req) = self.requests.get_mut(&seq.gen.request) else { return Vec::new() };
        let mut started = Vec::new();
        for child in std::mem::take(&mut req.pending_forks) {
            let cid = child.id;
            match self.sched.fork(id, child) {
                Ok(copies) => {
                    for c in copies {
                        self.cache.copy_page(c.src as usize, c.dst as usize);
                    }
                    started.push(cid);
                }
                Err(child) => self.sched.add(*child),
            }
        }
        started
    }

    /// The grammar mask of one sequence, if it has an active grammar.
    fn own_mask(&mut self, id: SeqId) -> Option<MaskResult> {
        let c = self.sched.get_mut(id)?.gen.constraint.as_mut().filter(|c| c.is_active())?;
        c.compute_mask()
    }

    /// A failed forward: every request with a sequence in the step gets `Event::Error`.
    fn fail_step(&mut self, plan: &StepPlan, message: &str) {
        tracing::error!("{message}");
        let mut keys: Vec<u64> = plan.seqs.iter().filter_map(|s| self.sched.get(s.id)).map(|s| s.gen.request).collect();
        keys.dedup();
        for key in keys {
            self.fail_request(key, message);
        }
    }

    /// After a panicking step: fails the requests that were running (the step's), freeing their
    /// blocks; if that panics as well, starts over with an empty block pool and fails them all.
    fn recover(&mut self, message: &str) {
        tracing::error!("engine step panicked: {message}; failing the requests of that step");
        let message = format!("internal error in the engine step: {message}");
        let mut keys: Vec<u64> =
            self.sched.iter().filter(|s| s.status == SeqStatus::Running).map(|s| s.gen.request).collect();
        keys.sort_unstable();
        keys.dedup();
        let freed = catch_unwind(AssertUnwindSafe(|| {
            for key in &keys {
                self.fail_request(*key, &message);
            }
        }));
        if freed.is_err() {
            tracing::error!("freeing the failed step's blocks panicked too; resetting the KV block pool");
            let old = self.sched.pool();
            let mut pool = BlockPool::new(old.num_blocks(), old.block_size());
            if old.prefix_caching() {
                pool = pool.with_prefix_caching();
            }
            let groups = self.sched.groups().to_vec();
            self.sched = Scheduler::new(self.sched_cfg, pool, groups);
            for (_, req) in self.requests.drain() {
                let _ = req.events.send(Event::Error(message.clone()));
            }
        }
    }

    /// Nothing could be scheduled although work exists: only possible if the head of the
    /// waiting queue can never fit (submit prevents that). Fail it rather than spin.
    fn unblock_head(&mut self) {
        if self.sched.num_running() == 0 {
            let head = self.sched.iter().next().map(|s| s.gen.request);
            if let Some(key) = head {
                self.fail_request(key, "the request does not fit in the KV cache");
            }
        }
    }

    fn publish_stats(&self) {
        let stats = &self.shared.stats;
        stats.running.store(self.sched.num_running() as u64, Ordering::Relaxed);
        stats.waiting.store(self.sched.num_waiting() as u64, Ordering::Relaxed);
        stats.kv_blocks_used.store(self.sched.pool().num_used() as u64, Ordering::Relaxed);
        stats.kv_blocks_cached.store(self.sched.pool().num_cached_free() as u64, Ordering::Relaxed);
        let prefix = self.sched.prefix_stats();
        stats.prefix_cache_queries_total.store(prefix.queried_tokens, Ordering::Relaxed);
        stats.prefix_cache_hits_total.store(prefix.hit_tokens, Ordering::Relaxed);
    }
}
