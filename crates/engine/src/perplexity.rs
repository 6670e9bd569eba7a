//! Perplexity scoring compatible with llama.cpp's `llama-perplexity` (its default mode), so the
//! numbers can be compared on the same model file and text.
//!
//! Like llama-perplexity, the token stream is cut into non-overlapping windows of `ctx` tokens
//! (the incomplete tail is dropped); each window is evaluated from an empty cache, optionally
//! with its first token replaced by BOS; only the second half is scored: for `j` in
//! `ctx/2 .. ctx-1`, logits row `j` is scored against token `j+1` (`ctx - 1 - ctx/2` tokens per
//! window). The running perplexity after each window is `exp(total NLL / tokens scored)`, and the
//! final estimate comes with llama.cpp's standard error.
//!
//! Windows run like any sequences: several per [`ForwardBatch`], each with its own blocks from
//! a [`BlockPool`], prefilled in chunks of at most `max_batch_tokens` tokens per step, with every
//! scored row in `logits_rows`.

use crate::batch::ForwardBatch;
use crate::engine::new_kv_cache;
use crate::kv_cache::{BlockPool, KvDtype};
use crate::model::CausalLm;
use crate::{EngineError, Result};

/// How to cut and batch the text.
#[derive(Debug, Clone)]
pub struct PerplexityOptions {
    /// Tokens per window (llama.cpp `-c`).
    pub ctx: usize,
    /// Windows evaluated together in one batch (llama.cpp: `n_batch / n_ctx`).
    pub windows_per_batch: usize,
    /// Most tokens per forward call; windows are prefilled in chunks when larger.
    pub max_batch_tokens: usize,
    /// KV block size.
    pub block_size: usize,
    /// Replace each window's first token with this id (llama.cpp does when the model adds BOS).
    pub bos: Option<u32>,
    /// How the KV cache stores K/V (the server's default is f16).
    pub kv_dtype: KvDtype,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        Self {
            ctx: 512,
            windows_per_batch: 4,
            max_batch_tokens: 2048,
            block_size: 16,
            bos: None,
            kv_dtype: KvDtype::default(),
        }
    }
}

/// Score of one window, with the running totals after it.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowScore {
    pub index: usize,
    /// Sum of negative log-likelihoods (natural log) over the window's scored tokens.
    pub nll: f64,
    pub count: usize,
    /// Perplexity over all windows so far (what llama-perplexity prints as `[i]value`).
    pub running_ppl: f64,
}

/// The result over all windows.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    pub windows: Vec<WindowScore>,
    /// `exp(mean NLL)` over every scored token.
    pub ppl: f64,
    /// llama.cpp's "+/-" value: `ppl * sqrt(var(NLL) / (count - 1))`.
    pub ppl_stderr: f64,
    pub mean_nll: f64,
    pub tokens_scored: usize,
}

/// Scores `tokens` with `model` as llama-perplexity does. `on_window` is called after each
/// window (in order) so a CLI can print running values as they come.
pub fn perplexity(
    model: &dyn CausalLm,
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut on_window: impl FnMut(&WindowScore),
) -> Result<PerplexityReport> {
    let ctx = opts.ctx;
    if ctx < 4 {
        return Err(EngineError::InvalidRequest(format!("perplexity context must be at least 4 tokens, got {ctx}")));
    }
    if ctx > model.config().max_position_embeddings {
        return Err(EngineError::InvalidRequest(format!(
            "perplexity context {ctx} exceeds the model's {}",
            model.config().max_position_embeddings
        )));
    }
    let num_windows = tokens.len() / ctx;
    if num_windows == 0 {
        return Err(EngineError::InvalidRequest(format!("need at least {ctx} tokens, got {}", tokens.len())));
    }
    let per_batch = opts.windows_per_batch.clamp(1, num_windows);
    let chunk = opts.max_batch_tokens.max(per_batch) / per_batch;
    // Every group of every window keeps the whole window (no sliding-window release: a window
    // is short, and this keeps the scoring loop trivial).
    let num_groups = model.config().kv_layout.num_groups();
    let mut pool = BlockPool::new(per_batch * num_groups * ctx.div_ceil(opts.block_size), opts.block_size);
    let mut cache = new_kv_cache(model.config(), opts.kv_dtype, pool.num_blocks(), opts.block_size)?;
    let first = ctx / 2;
    let vocab = model.config().vocab_size;

    let mut windows = Vec::with_capacity(num_windows);
    let (mut nll_total, mut nll2_total, mut count_total) = (0f64, 0f64, 0usize);
    for group_start in (0..num_windows).step_by(per_batch) {
        let group: Vec<Vec<u32>> = (group_start..num_windows.min(group_start + per_batch))
            .map(|w| {
                let mut win = tokens[w * ctx..(w + 1) * ctx].to_vec();
                if let Some(bos) = opts.bos {
                    win[0] = bos;
                }
                win
            })
            .collect();
        let tables: Vec<Vec<Vec<u32>>> = group
            .iter()
            .map(|_| (0..num_groups).map(|_| pool.allocate_n(ctx.div_ceil(opts.block_size))).collect())
            .collect::<Option<_>>()
            .ok_or_else(|| EngineError::InvalidRequest("perplexity block pool exhausted".into()))?;
        let mut sums = vec![(0f64, 0f64, 0usize); group.len()];
        for start in (0..ctx).step_by(chunk) {
            let end = (start + chunk).min(ctx);
            let mut batch = ForwardBatch::default();
            let mut owners = Vec::new();
            for (w, win) in group.iter().enumerate() {
                let token_start = batch.num_tokens();
                let nb = end.div_ceil(opts.block_size);
                batch.push_seq(&win[start..end], end, tables[w].iter().map(|t| t[..nb].to_vec()).collect(), false);
                for j in start.max(first)..end.min(ctx - 1) {
                    batch.logits_rows.push(token_start + j - start);
                    owners.push((w, win[j + 1]));
                }
            }
            let logits = model.forward(&batch, &mut cache)?;
            if logits.dims() != [owners.len(), vocab] {
                return Err(EngineError::InvalidRequest(format!("model returned logits {:?}", logits.dims())));
            }
            for ((w, target), row) in owners.into_iter().zip(logits.to_vec2::<f32>()?) {
                let nll = -log_softmax_at(&row, target as usize);
                sums[w].0 += nll;
                sums[w].1 += nll * nll;
                sums[w].2 += 1;
            }
        }
        for table in tables.iter().flatten() {
            pool.free_all(table);
        }
        for (w, (nll, nll2, count)) in sums.into_iter().enumerate() {
            nll_total += nll;
            nll2_total += nll2;
            count_total += count;
            let score =
                WindowScore { index: group_start + w, nll, count, running_ppl: (nll_total / count_total as f64).exp() };
            on_window(&score);
            windows.push(score);
        }
    }
    let mean_nll = nll_total / count_total as f64;
    let ppl = mean_nll.exp();
    let var = nll2_total / count_total as f64 - mean_nll * mean_nll;
    let ppl_stderr = if var > 0.0 && count_total > 1 { ppl * (var / (count_total - 1) as f64).sqrt() } else { 0.0 };
    Ok(PerplexityReport { windows, ppl, ppl_stderr, mean_nll, tokens_scored: count_total })
}

/// `log_softmax(row)[target]`, accumulated in f64 as llama.cpp does.
fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{next_token, FakeLm, VOCAB};

    fn opts(ctx: usize, windows_per_batch: usize, max_batch_tokens: usize) -> PerplexityOptions {
        PerplexityOptions { ctx, windows_per_batch, max_batch_tokens, block_size: 4, bos: None, kv_dtype: KvDtype::F32 }
    }

    /// The fake model puts logit 8 on `next_token(context)`, 7 on one other token, 0 elsewhere.
    fn expected_nll(context: &[u32], target: u32) -> f64 {
        let (hi, lo) = (8f64, 7f64);
        let log_z = (hi.exp() + lo.exp() + (VOCAB - 2) as f64).ln();
        let next = next_token(context);
        let other = 2 + (next as usize + 7) % (VOCAB - 2);
        let logit = if target == next {
            hi
        } else if target as usize == other {
            lo
        } else {
            0.0
        };
        log_z - logit
    }

    fn text(len: usize) -> Vec<u32> {
        let mut t = vec![5u32];
        while t.len() < len {
            // Mostly the model's own prediction, sometimes not, so scores vary per token.
            let n = if t.len() % 3 == 0 { (t.len() as u32 * 7) % VOCAB as u32 } else { next_token(&t) };
            t.push(n);
        }
        t
    }

    #[test]
    fn scores_the_second_half_of_each_window_like_llama_perplexity() {
        let model = FakeLm::new(4, 256);
        let tokens = text(16 * 3 + 5); // 3 windows of 16, tail of 5 dropped
        let report = perplexity(&model, &tokens, &opts(16, 1, 1024), |_| {}).unwrap();
        assert_eq!(report.windows.len(), 3);
        let mut total = 0.0;
        for (w, score) in report.windows.iter().enumerate() {
            let win = &tokens[w * 16..(w + 1) * 16];
            let want: f64 = (8..15).map(|j| expected_nll(&win[..=j], win[j + 1])).sum();
            assert_eq!(score.count, 7, "rows ctx/2 .. ctx-2 are scored");
            assert!((score.nll - want).abs() < 1e-3, "window {w}: {} vs {want}", score.nll);
            total += want;
            assert!((score.running_ppl - (total / (7.0 * (w + 1) as f64)).exp()).abs() < 1e-3);
        }
        assert_eq!(report.tokens_scored, 21);
        assert!((report.ppl - (total / 21.0).exp()).abs() < 1e-3);
        assert!(report.ppl_stderr > 0.0);
    }

    #[test]
    fn batching_and_chunking_windows_does_not_change_the_scores() {
        let model = FakeLm::new(4, 256);
        let tokens = text(12 * 5);
        let alone = perplexity(&model, &tokens, &opts(12, 1, 1024), |_| {}).unwrap();
        let batched = perplexity(&model, &tokens, &opts(12, 3, 1024), |_| {}).unwrap();
        let chunked = perplexity(&model, &tokens, &opts(12, 2, 10), |_| {}).unwrap();
        for other in [&batched, &chunked] {
            assert_eq!(other.windows.len(), 5);
            for (a, b) in alone.windows.iter().zip(&other.windows) {
                assert_eq!(a.index, b.index);
                assert!((a.nll - b.nll).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn bos_replaces_the_first_token_of_every_window() {
        let model = FakeLm::new(4, 256);
        let tokens = text(8 * 2);
        let with_bos = perplexity(&model, &tokens, &PerplexityOptions { bos: Some(1), ..opts(8, 2, 64) }, |_| {});
        let report = with_bos.unwrap();
        let mut win = tokens[8..16].to_vec();
        win[0] = 1;
        let want: f64 = (4..7).map(|j| expected_nll(&win[..=j], win[j + 1])).sum();
        assert!((report.windows[1].nll - want).abs() < 1e-3);
    }

    #[test]
    fn too_few_tokens_is_an_error() {
        let model = FakeLm::new(4, 256);
        assert!(perplexity(&model, &text(10), &opts(16, 1, 64), |_| {}).is_err());
    }
}
