//! Ragged paged attention on the host: for every query token of every sequence in a step,
//! `softmax(q·k * scale) · v` over that sequence's cached positions `<= p` (optionally only the
//! last `window` of them), read block by block through the block table of the layer's KV-cache
//! group. A sliding-window layer's window is also the layer's own (`KvLayout`): its group keeps
//! only the window's pages, so no query reads past it even when `AttnParams::window` is unset.
//! Grouped-query attention maps query head `h` to kv head `h / (heads / kv_heads)`; K/V are
//! never copied.
//!
//! This module owns the work split and the tiling; the arithmetic is in `attention_avx512`
//! (16 lanes), `attention_avx2` (AVX2+FMA) and `attention_scalar` (portable), chosen by the
//! process's `KernelLevel`. K/V rows stored as f32 or f16 are read in place. Work is split over
//! (sequence, kv head, query chunk) on wick's compute pool (`crate::thread_pool`), the threads the
//! matmuls use. Inside an item, the queries of one kv head (its group's heads, for
//! consecutive tokens) go through in tiles of up to four that share every K and V row load.
//!
//! Batch invariance: a query's result is the same bits whatever else is in the step, how the
//! work is split, and which tile it lands in: the kernels give each (query, key) score and
//! each output lane the same operations in every tile size, softmax is per query, and a
//! query's keys are always accumulated in position order (the keys a tile does not share
//! are handled per query before and after the shared run).
//!
//! Attention sinks (gpt-oss): an optional learned logit per query head joins each softmax's
//! denominator only (`p_j = exp(s_j - m) / (Σ exp(s - m) + exp(sink - m))`, no value); it is
//! applied in one place, where a query's normalizer is formed (`with_sink`).

use std::ops::Range;

use crate::batch::ForwardBatch;
use crate::kv_cache::dtype::KvElem;
use crate::kv_cache::{attention_scalar as scalar, PagedKvCache};

/// How scores are formed.
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    /// Multiplier of q·k (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding window: a query at position p sees keys at positions `> p - window`. A layer
    /// whose `AttentionKind` is `Sliding(w)` is always windowed to at most `w`.
    pub window: Option<usize>,
}

/// Query tokens per work item: enough to amortize the item, small enough to balance threads.
const QUERY_CHUNK: usize = 16;

/// Queries sharing each K/V row load.
const TILE: usize = 4;

/// Below this many query·key products a step's attention runs on the calling thread: waking
/// the pool costs more than it saves (single-sequence decode with a short context).
const PARALLEL_MIN_PRODUCTS: usize = 1 << 11;

/// Which kernels run the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Scores and weighted sums on 16 lanes; the softmax's exp on the AVX2 kernel.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernels {
    /// The kernels of the process's `KernelLevel`.
    fn detect() -> Self {
        Self::of_level(crate::kernel_level::KernelLevel::current())
    }

    /// The kernels of `level` (which the host must support).
    fn of_level(level: crate::kernel_level::KernelLevel) -> Self {
        use crate::kernel_level::KernelLevel;
        match level {
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => Kernels::Avx512,
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2 => Kernels::Avx2,
            _ => Kernels::Scalar,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn scores<E: KvElem, const N: usize>(
        self,
        q: &[f32],
        qrow: [usize; N],
        ks: &[E],
        offs: &[usize],
        hd: usize,
        scale: f32,
        out: &mut [f32],
        at: [usize; N],
    ) {
        match self {
            Kernels::Scalar => scalar::scores(q, qrow, ks, offs, hd, scale, out, at),
            // SAFETY: `Avx2` is only chosen when the host has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { super::attention_avx2::scores(q, qrow, ks, offs, hd, scale, out, at) },
            // SAFETY: `Avx512` is only chosen when the host has AVX-512 F/BW/VL (and AVX2, FMA, F16C).
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { super::attention_avx512::scores(q, qrow, ks, offs, hd, scale, out, at) },
        }
    }

    fn softmax_exp(self, s: &mut [f32]) -> f32 {
        match self {
            Kernels::Scalar => scalar::softmax_exp(s),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 | Kernels::Avx512 => unsafe { super::attention_avx2::softmax_exp(s) },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn accumulate<E: KvElem, const N: usize>(
        self,
        w: &[f32],
        at: [usize; N],
        vs: &[E],
        offs: &[usize],
        hd: usize,
        acc: &mut [f32],
        acc_at: [usize; N],
    ) {
        match self {
            Kernels::Scalar => scalar::accumulate(w, at, vs, offs, hd, acc, acc_at),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { super::attention_avx2::accumulate(w, at, vs, offs, hd, acc, acc_at) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { super::attention_avx512::accumulate(w, at, vs, offs, hd, acc, acc_at) },
        }
    }
}

/// One unit of parallel work: the heads of one kv head's group for a range of one
/// sequence's query tokens.
struct Item {
    seq: usize,
    kv_head: usize,
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

/// A layer's K and V rows, read in place by the kernels (f32, or f16 converted as loaded).
#[derive(Clone, Copy)]
enum Direct<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [u16], &'a [u16]),
}

/// What every item reads.
struct Step<'a> {
    /// The layer's K/V rows in place when the cache stores f32 or f16; otherwise (8-bit) each
    /// item gathers the rows it reads into its scratch as f32.
    direct: Option<Direct<'a>>,
    layer: usize,
    cache: &'a PagedKvCache,
    batch: &'a ForwardBatch,
    q: &'a [f32],
    num_heads: usize,
    group: usize,
    hd: usize,
    params: AttnParams,
    /// The layer's KV-cache group (which of a sequence's block tables to walk).
    kv_group: usize,
    kern: Kernels,
    /// One sink logit per query head, if the model has them.
    sinks: Option<&'a [f32]>,
}

/// Per-worker buffers, reused across items.
#[derive(Default)]
struct Scratch {
    /// Row offsets (in the layer's storage) of the item's key positions, from `base`.
    offs: Vec<usize>,
    /// Gathered K and V rows (f32) of those positions, and their offsets in `k` / `v`.
    k: Vec<f32>,
    v: Vec<f32>,
    rows: Vec<usize>,
    /// `TILE` score rows of `stride` each.
    scores: Vec<f32>,
    /// `TILE` accumulator rows of `head_dim` each.
    acc: Vec<f32>,
}

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
    paged_attention_with_sinks(cache, layer, batch, q, num_heads, params, None)
}

/// [`paged_attention`] with an optional sink logit per query head (`sinks.len() == num_heads`)
/// in every softmax.
pub fn paged_attention_with_sinks(
    cache: &PagedKvCache,
    layer: usize,
    batch: &ForwardBatch,
    q: &[f32],
    num_heads: usize,
    params: AttnParams,
    sinks: Option<&[f32]>,
) -> Vec<f32> {
    assert!(sinks.is_none_or(|s| s.len() == num_heads), "one sink per query head");
    let window = layer_window(cache, layer, params.window);
    let seen = |s: &crate::batch::SeqSlice| window.map_or(s.context_len, |w| s.context_len.min(w + s.num_tokens));
    let products: usize = batch.seqs.iter().map(|s| s.num_tokens * seen(s)).sum::<usize>() * num_heads;
    let parallel = products >= PARALLEL_MIN_PRODUCTS;
    attention_with_sinks(cache, layer, batch, q, num_heads, params, Kernels::detect(), parallel, sinks)
}

#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn attention_with(
    cache: &PagedKvCache,
    layer: usize,
    batch: &ForwardBatch,
    q: &[f32],
    num_heads: usize,
    params: AttnParams,
    kern: Kernels,
    parallel: bool,
) -> Vec<f32> {
    attention_with_sinks(cache, layer, batch, q, num_heads, params, kern, parallel, None)
}

#[allow(clippy::too_many_arguments)]
fn attention_with_sinks(
    cache: &PagedKvCache,
    layer: usize,
    batch: &ForwardBatch,
    q: &[f32],
    num_heads: usize,
    params: AttnParams,
    kern: Kernels,
    parallel: bool,
    sinks: Option<&[f32]>,
) -> Vec<f32> {
    let hd = cache.head_dim();
    let t = batch.num_tokens();
    let mut out = vec![0f32; t * num_heads * hd];
    let kv_heads = cache.num_kv_heads();
    let group = (num_heads / kv_heads).max(1);
    let mut items = Vec::new();
    for (seq, s) in batch.seqs.iter().enumerate() {
        for kv_head in 0..num_heads.div_ceil(group) {
            let mut start = 0;
            while start < s.num_tokens {
                let end = (start + QUERY_CHUNK).min(s.num_tokens);
                items.push(Item { seq, kv_head, start, end });
                start = end;
            }
        }
    }
    let direct = match (cache.layer_f32(layer), cache.layer_f16(layer)) {
        (Some((k, v)), _) => Some(Direct::F32(k, v)),
        (_, Some((k, v))) => Some(Direct::F16(k, v)),
        _ => None,
    };
    let params = AttnParams { window: layer_window(cache, layer, params.window), ..params };
    let kv_group = cache.layout().layer_group[layer];
    let step = Step { direct, layer, cache, batch, q, num_heads, group, hd, params, kv_group, kern, sinks };
    let dst = OutPtr(out.as_mut_ptr());
    let run = |range: Range<usize>| {
        let mut scratch = Scratch::default();
        for item in &items[range] {
            run_item(&step, item, &mut scratch, &dst);
        }
    };
    if parallel {
        crate::thread_pool::pool().for_each_chunk(items.len(), run);
    } else {
        run(0..items.len());
    }
    out
}

/// The window `layer` attends with: the tighter of the requested one and its KV-cache group's.
fn layer_window(cache: &PagedKvCache, layer: usize, requested: Option<usize>) -> Option<usize> {
    let requested = requested.filter(|&w| w > 0);
    match (requested, cache.layout().layer_kind(layer).window()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// First position a query at `pos` sees.
fn first_key(pos: usize, window: Option<usize>) -> usize {
    match window {
        Some(w) if w > 0 => (pos + 1).saturating_sub(w),
        _ => 0,
    }
}

/// All queries of one item, in tiles of up to `TILE`.
fn run_item(step: &Step, item: &Item, scratch: &mut Scratch, dst: &OutPtr) {
    let s = &step.batch.seqs[item.seq];
    let first = s.context_len - s.num_tokens;
    let heads = (item.kv_head * step.group)..((item.kv_head + 1) * step.group).min(step.num_heads);
    let base = first_key(first + item.start, step.params.window);
    let last = first + item.end - 1;
    // Row offsets of positions base..=last, walking the group's block table without divisions.
    let bs = step.cache.block_size;
    let table = &s.block_tables[step.kv_group];
    scratch.offs.clear();
    let (mut block, mut slot) = (base / bs, base % bs);
    for _ in base..=last {
        scratch.offs.push(step.cache.offset(table[block] as usize, item.kv_head, slot));
        slot += 1;
        if slot == bs {
            slot = 0;
            block += 1;
        }
    }
    let stride = (last + 1 - base).next_multiple_of(8);
    scratch.scores.resize(TILE * stride, 0.0);
    scratch.acc.resize(TILE * step.hd, 0.0);
    let Scratch { offs, k, v, rows, scores, acc } = scratch;
    let mut bufs = Bufs { scores, acc };
    let at = Queries { item, heads, first, base, stride };
    match step.direct {
        Some(Direct::F32(ks, vs)) => run_queries(step, &at, &Kv { ks, vs, offs }, &mut bufs, dst),
        Some(Direct::F16(ks, vs)) => run_queries(step, &at, &Kv { ks, vs, offs }, &mut bufs, dst),
        None => {
            step.cache.gather(step.layer, offs, k, v);
            rows.clear();
            rows.extend((0..offs.len()).map(|i| i * step.hd));
            run_queries(step, &at, &Kv { ks: k, vs: v, offs: rows }, &mut bufs, dst)
        }
    }
}

/// Where an item's queries are: its heads, its sequence's first position, the first key
/// position it reads (`base`) and the score rows' stride.
struct Queries<'a> {
    item: &'a Item,
    heads: Range<usize>,
    first: usize,
    base: usize,
    stride: usize,
}

/// An item's queries, in tiles of up to `TILE`, over its K/V rows.
fn run_queries<E: KvElem>(step: &Step, at: &Queries, kv: &Kv<E>, bufs: &mut Bufs, dst: &OutPtr) {
    let s = &step.batch.seqs[at.item.seq];
    let (base, stride) = (at.base, at.stride);
    // Queries as (token index in the batch, head, position), token-major.
    let queries = (at.item.start..at.item.end)
        .flat_map(|j| at.heads.clone().map(move |h| (s.token_start + j, h, at.first + j)))
        .collect::<Vec<_>>();
    for tile in queries.chunks(TILE) {
        match *tile {
            [a] => run_tile(step, [a], base, stride, kv, bufs, dst),
            [a, b] => run_tile(step, [a, b], base, stride, kv, bufs, dst),
            [a, b, c] => run_tile(step, [a, b, c], base, stride, kv, bufs, dst),
            [a, b, c, d] => run_tile(step, [a, b, c, d], base, stride, kv, bufs, dst),
            _ => {}
        }
    }
}

/// The K/V rows an item reads, and each key position's row offset (from `base`).
struct Kv<'a, E> {
    ks: &'a [E],
    vs: &'a [E],
    offs: &'a [usize],
}

/// A tile's score rows and output accumulators.
struct Bufs<'a> {
    scores: &'a mut Vec<f32>,
    acc: &'a mut Vec<f32>,
}

/// The softmax normalizer `Σ exp(s - m)` (with `m` the scores' max, as `softmax_exp` forms
/// it), plus a sink's `exp(sink - m)` where the head has one (`(sink, m)`). The weights keep
/// their `exp(s - m)`; only the denominator grows, exactly as if the sink had joined the
/// softmax (whose max would cancel out).
#[inline]
fn with_sink(sum: f32, sink: Option<(f32, f32)>) -> f32 {
    match sink {
        Some((sink, max)) => sum + (sink - max).exp(),
        None => sum,
    }
}

/// One tile of queries `(token, head, position)`: scores, softmax, weighted values, output.
// The per-query loops index several per-query arrays in step.
#[allow(clippy::needless_range_loop)]
fn run_tile<E: KvElem, const N: usize>(
    step: &Step,
    tile: [(usize, usize, usize); N],
    base: usize,
    stride: usize,
    kv: &Kv<E>,
    bufs: &mut Bufs,
    dst: &OutPtr,
) {
    let (hd, kern) = (step.hd, step.kern);
    let qrow = tile.map(|(t, h, _)| (t * step.num_heads + h) * hd);
    let lo = tile.map(|(_, _, p)| first_key(p, step.params.window));
    let end = tile.map(|(_, _, p)| p + 1);
    // Keys every query of the tile sees: [c0, c1).
    let c0 = lo.iter().copied().max().unwrap_or(0);
    let c1 = end.iter().copied().min().unwrap_or(0).max(c0);
    // Query `a`'s scores live at `scores[a * stride..]`, indexed by position - lo[a].
    let row = |a: usize, p: usize| a * stride + (p - lo[a]);
    let (scores, acc) = (&mut *bufs.scores, &mut *bufs.acc);
    let offs = kv.offs;
    let own = |a: usize| [lo[a]..c0.min(end[a]), c1.max(lo[a])..end[a]];
    let keys = |r: &Range<usize>| &offs[r.start - base..r.end - base];
    for a in 0..N {
        for r in own(a).iter().filter(|r| r.start < r.end) {
            kern.scores(step.q, [qrow[a]], kv.ks, keys(r), hd, step.params.scale, scores, [row(a, r.start)]);
        }
    }
    if c0 < c1 {
        let at: [usize; N] = std::array::from_fn(|a| row(a, c0));
        kern.scores(step.q, qrow, kv.ks, keys(&(c0..c1)), hd, step.params.scale, scores, at);
    }
    let mut inv = [0f32; N];
    for a in 0..N {
        let s = &mut scores[a * stride..a * stride + end[a] - lo[a]];
        let sink = step.sinks.map(|sinks| (sinks[tile[a].1], s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))));
        inv[a] = 1.0 / with_sink(kern.softmax_exp(s), sink);
    }
    acc[..N * hd].fill(0.0);
    let acc_at: [usize; N] = std::array::from_fn(|a| a * hd);
    // Per query: its own keys before the shared run, the shared run, then its own keys after.
    for a in 0..N {
        let r = &own(a)[0];
        if r.start < r.end {
            kern.accumulate(scores, [row(a, r.start)], kv.vs, keys(r), hd, acc, [acc_at[a]]);
        }
    }
    if c0 < c1 {
        let at: [usize; N] = std::array::from_fn(|a| row(a, c0));
        kern.accumulate(scores, at, kv.vs, keys(&(c0..c1)), hd, acc, acc_at);
    }
    for a in 0..N {
        let r = &own(a)[1];
        if r.start < r.end {
            kern.accumulate(scores, [row(a, r.start)], kv.vs, keys(r), hd, acc, [acc_at[a]]);
        }
        // SAFETY: see `OutPtr`; the row is inside `out` because token < T and head < heads.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(qrow[a]), hd) };
        for (o, x) in o.iter_mut().zip(&acc[a * hd..(a + 1) * hd]) {
            *o = x * inv[a];
        }
    }
}

#[cfg(test)]
mod tests;
