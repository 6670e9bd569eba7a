//! Ragged paged attention on the host: for every query token of every sequence in a step,
//! `softmax(q·k * scale) · v` over that sequence's cached positions `<= p` (optionally only the
//! last `window` of them), read block by block through its block table. Grouped-query
//! attention maps query head `h` to kv head `h / (heads / kv_heads)`; K/V are never copied.
//! Work is split over (sequence, head, query chunk) on candle's CPU thread pool, so it shares
//! the threads the matmuls use instead of competing with them.

use crate::batch::ForwardBatch;
use crate::kv_cache::PagedKvCache;

/// How scores are formed.
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    /// Multiplier of q·k (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding window: a query at position p sees keys at positions `> p - window`.
    pub window: Option<usize>,
}

/// Query tokens per work item: enough to amortize the item, small enough to balance threads.
const QUERY_CHUNK: usize = 16;

/// Below this many query·key products a step's attention runs on the calling thread: waking
/// the pool costs more than it saves (single-sequence decode with a short context).
const PARALLEL_MIN_PRODUCTS: usize = 1 << 15;

/// One unit of parallel work: a head of a range of one sequence's query tokens.
struct Item {
    seq: usize,
    head: usize,
    start: usize,
    end: usize,
}

/// Destination pointer shared by the workers; each item writes a disjoint set of rows.
struct OutPtr(*mut f32);
// SAFETY: the pointer is only dereferenced at (token, head) rows, and every (token, head) pair
// belongs to exactly one work item, so no two threads write the same element; the buffer
// outlives the parallel region, which returns before `paged_attention` does.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// Attention of `layer` for every token in `batch`. `q` is `[T, num_heads, head_dim]`
/// (RoPE applied); the step's K/V must already be written into `cache`. Returns
/// `[T, num_heads * head_dim]`.
pub fn paged_attention(
    cache: &PagedKvCache,
    layer: usize,
    batch: &ForwardBatch,
    q: &[f32],
    num_heads: usize,
    params: AttnParams,
) -> Vec<f32> {
    let hd = cache.head_dim();
    let t = batch.num_tokens();
    let mut out = vec![0f32; t * num_heads * hd];
    let mut items = Vec::new();
    for (seq, s) in batch.seqs.iter().enumerate() {
        for head in 0..num_heads {
            let mut start = 0;
            while start < s.num_tokens {
                let end = (start + QUERY_CHUNK).min(s.num_tokens);
                items.push(Item { seq, head, start, end });
                start = end;
            }
        }
    }
    let group = (num_heads / cache.num_kv_heads()).max(1);
    let dst = OutPtr(out.as_mut_ptr());
    let run = |range: std::ops::Range<usize>| {
        let dst = &dst;
        let mut scores = Vec::new();
        let mut acc = vec![0f32; hd];
        for item in &items[range] {
            let s = &batch.seqs[item.seq];
            let kv_head = item.head / group;
            let first = s.context_len - s.num_tokens;
            for j in item.start..item.end {
                let tok = s.token_start + j;
                let row = (tok * num_heads + item.head) * hd;
                let qv = &q[row..row + hd];
                attend_one(cache, layer, &s.block_table, kv_head, first + j, qv, params, &mut scores, &mut acc);
                // SAFETY: see `OutPtr`; `row + hd <= out.len()` because tok < T and head < num_heads.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(row), hd) };
                o.copy_from_slice(&acc);
            }
        }
    };
    let products: usize = batch.seqs.iter().map(|s| s.num_tokens * s.context_len).sum::<usize>() * num_heads;
    if products < PARALLEL_MIN_PRODUCTS {
        run(0..items.len());
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items.len(), run);
    }
    out
}

/// Attention of one query vector at position `pos` against the sequence's keys; the result
/// is left in `acc`.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    cache: &PagedKvCache,
    layer: usize,
    block_table: &[u32],
    kv_head: usize,
    pos: usize,
    q: &[f32],
    params: AttnParams,
    scores: &mut Vec<f32>,
    acc: &mut [f32],
) {
    let (ks, vs) = cache.layer(layer);
    let hd = q.len();
    let bs = cache.block_size;
    let lo = match params.window {
        Some(w) if w > 0 => (pos + 1).saturating_sub(w),
        _ => 0,
    };
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for p in lo..=pos {
        let off = cache.offset(block_table[p / bs] as usize, kv_head, p % bs);
        let sc = dot(q, &ks[off..off + hd]) * params.scale;
        max = max.max(sc);
        scores.push(sc);
    }
    let mut sum = 0f32;
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    acc.fill(0.0);
    for (i, p) in (lo..=pos).enumerate() {
        let off = cache.offset(block_table[p / bs] as usize, kv_head, p % bs);
        axpy(scores[i], &vs[off..off + hd], acc);
    }
    let inv = 1.0 / sum;
    for a in acc.iter_mut() {
        *a *= inv;
    }
}

/// Dot product with eight independent accumulators so the compiler can vectorize it.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `acc += w * v`.
#[inline]
fn axpy(w: f32, v: &[f32], acc: &mut [f32]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a += w * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain reference: softmax over all visible positions of a contiguous K/V.
    fn reference(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let s: Vec<f32> = k.iter().map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
        let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f32 = e.iter().sum();
        (0..q.len()).map(|d| e.iter().zip(v).map(|(w, v)| w * v[d]).sum::<f32>() / z).collect()
    }

    fn val(i: usize) -> f32 {
        ((i * 7919 % 101) as f32 / 50.0) - 1.0
    }

    #[test]
    fn matches_reference_across_blocks_with_gqa_and_window() {
        let (heads, kvh, hd, bs) = (4, 2, 12, 3);
        let mut cache = PagedKvCache::new(1, kvh, hd, 16, bs);
        let n = 8; // a prefill of 8 tokens over blocks 7, 2, 9
        let mut batch = ForwardBatch::default();
        batch.push_seq(&vec![0; n], n, vec![7, 2, 9], true);
        cache.validate(&batch).unwrap();
        let k: Vec<f32> = (0..n * kvh * hd).map(val).collect();
        let v: Vec<f32> = (0..n * kvh * hd).map(|i| val(i + 13)).collect();
        let q: Vec<f32> = (0..n * heads * hd).map(|i| val(i + 5)).collect();
        cache.write(0, &batch, &k, &v);
        for window in [None, Some(3)] {
            let params = AttnParams { scale: 0.3, window };
            let out = paged_attention(&cache, 0, &batch, &q, heads, params);
            for t in 0..n {
                for h in 0..heads {
                    let kh = h / (heads / kvh);
                    let lo = window.map_or(0, |w| (t + 1).saturating_sub(w));
                    let ks: Vec<Vec<f32>> =
                        (lo..=t).map(|p| k[(p * kvh + kh) * hd..(p * kvh + kh + 1) * hd].to_vec()).collect();
                    let vs: Vec<Vec<f32>> =
                        (lo..=t).map(|p| v[(p * kvh + kh) * hd..(p * kvh + kh + 1) * hd].to_vec()).collect();
                    let want = reference(&q[(t * heads + h) * hd..(t * heads + h + 1) * hd], &ks, &vs, 0.3);
                    let got = &out[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                    for (a, b) in got.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "t {t} h {h} window {window:?}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
