//! `ForwardBatch`: every token scheduled in one engine step, packed, with per-token positions
//! and per-sequence slices into the packed arrays.

/// One sequence's share of a step.
#[derive(Debug, Clone)]
pub struct SeqSlice {
    /// Index of this sequence's first token in `ForwardBatch::input_ids`.
    pub token_start: usize,
    /// How many of its tokens run this step (a prefill chunk, or 1 for decode).
    pub num_tokens: usize,
    /// Tokens in this sequence's KV cache after this step (cached + these).
    pub context_len: usize,
    /// Per KV-cache group (see [`crate::kv_cache::KvLayout`]), the block ids covering
    /// `context_len` tokens in order; logical block `i` holds positions `[i*bs, (i+1)*bs)`.
    /// A sliding-window group's entries before the window may be
    /// [`crate::kv_cache::NO_BLOCK`] (released).
    pub block_tables: Vec<Vec<u32>>,
}

/// All tokens of one step. `positions[i]` is the absolute position of `input_ids[i]`
/// within its sequence; `logits_rows` are indices into `input_ids` whose logits are needed
/// (the model computes the LM head only for those rows, in that order).
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    pub input_ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub seqs: Vec<SeqSlice>,
    pub logits_rows: Vec<usize>,
}

impl ForwardBatch {
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Appends a sequence's chunk: `tokens` continue a context of `context_len - tokens.len()`.
    /// When `want_logits`, the last token's row is added to `logits_rows`.
    pub fn push_seq(&mut self, tokens: &[u32], context_len: usize, block_tables: Vec<Vec<u32>>, want_logits: bool) {
        let token_start = self.input_ids.len();
        let first_pos = context_len - tokens.len();
        self.input_ids.extend_from_slice(tokens);
        self.positions.extend((0..tokens.len()).map(|i| (first_pos + i) as u32));
        self.seqs.push(SeqSlice { token_start, num_tokens: tokens.len(), context_len, block_tables });
        if want_logits && !tokens.is_empty() {
            self.logits_rows.push(token_start + tokens.len() - 1);
        }
    }
}
