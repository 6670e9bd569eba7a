//! `Sequence`: one choice of one request as it moves through the engine.
//!
//! The part the [`crate::scheduler::Scheduler`] reads and writes (token ids, how many of them
//! are in the KV cache, the block tables) is plain data here; the generation side (sampler,
//! detokenizer, stop checker, event sender, timings) is the payload `G`, which the scheduler
//! never touches. The engine uses [`Generation`]; scheduler tests use `()`.

use tokio::sync::mpsc::UnboundedSender;

use crate::grammar::Constraint;
use crate::kv_cache::prefix::BlockHash;
use crate::request::Event;
use crate::sampling::Sampler;
use crate::text::{IncrementalDetokenizer, StopChecker};

/// Engine-wide unique id of a sequence.
pub type SeqId = u64;

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued for admission (new, or preempted and waiting to be recomputed).
    Waiting,
    /// Admitted: holds KV blocks and is scheduled every step.
    Running,
}

/// One sequence: its tokens, its place in the KV cache and its generation state `G`.
#[derive(Debug)]
pub struct Sequence<G> {
    pub id: SeqId,
    /// Prompt followed by the tokens generated so far.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens of `tokens` whose K/V are in the cache.
    pub num_computed_tokens: usize,
    /// Per KV-cache group, the blocks holding this sequence's context in order (empty while
    /// waiting); a sliding-window group's released entries are [`crate::kv_cache::NO_BLOCK`].
    pub block_tables: Vec<Vec<u32>>,
    pub status: SeqStatus,
    /// How many times this sequence was preempted (its KV dropped and recomputed).
    pub num_preemptions: usize,
    /// Start of this sequence's prefix-cache hash chain (model key and cache salt; zeros until
    /// the engine sets it, which tests share).
    pub hash_root: BlockHash,
    /// Chained hashes of the full blocks of `tokens` computed so far (see `kv_cache::prefix`).
    pub block_hashes: Vec<BlockHash>,
    /// Leading full blocks already offered to the prefix cache since the last admission.
    pub num_registered_blocks: usize,
    /// Prompt tokens found in the prefix cache at its first admission (`None` before it).
    pub cached_prompt_tokens: Option<usize>,
    pub gen: G,
}

impl<G> Sequence<G> {
    pub fn new(id: SeqId, prompt_ids: Vec<u32>, gen: G) -> Self {
        let prompt_len = prompt_ids.len();
        Self {
            id,
            tokens: prompt_ids,
            prompt_len,
            num_computed_tokens: 0,
            block_tables: Vec::new(),
            status: SeqStatus::Waiting,
            num_preemptions: 0,
            hash_root: [0; 32],
            block_hashes: Vec::new(),
            num_registered_blocks: 0,
            cached_prompt_tokens: None,
            gen,
        }
    }

    /// Sets the start of the prefix-cache hash chain (before the sequence is first admitted).
    pub fn with_hash_root(mut self, root: BlockHash) -> Self {
        self.hash_root = root;
        self.block_hashes.clear();
        self
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn prompt_ids(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    pub fn output_ids(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Pages this sequence holds, over all groups (released entries not counted).
    pub fn num_blocks_held(&self) -> usize {
        self.block_tables.iter().flatten().filter(|&&b| b != crate::kv_cache::NO_BLOCK).count()
    }

    /// Known tokens not yet in the KV cache (1 while decoding, more while (re)prefilling).
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed_tokens
    }
}

/// The generation side of an engine sequence: everything needed to turn logits into events.
pub struct Generation {
    /// Key of the request this choice belongs to (the engine's request table).
    pub request: u64,
    /// Index of this choice within the request (`0..n`).
    pub choice: usize,
    pub sampler: Sampler,
    pub detokenizer: IncrementalDetokenizer,
    pub stop: StopChecker,
    /// The grammar this choice must follow, if any.
    pub constraint: Option<Constraint>,
    /// Shared by the request's `n` choices; closed when the client went away.
    pub events: UnboundedSender<Event>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation").field("request", &self.request).field("choice", &self.choice).finish()
    }
}
