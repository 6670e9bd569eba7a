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
//! process's `KernelLevel`. K and V stored as f32 or f16 are read in place. Work is split over
//! (sequence, kv head, run of queries) on wick's compute pool (`crate::thread_pool`), the
//! threads the matmuls use. Inside an item, the queries of one kv head (its group's heads, for
//! consecutive tokens) go through in tiles that share every K and V load (twelve queries on
//! AVX-512, eight elsewhere).
//!
//! Keys are stored dimension-major per page and kv head (`PagedKvCache`: a K tile is
//! `[head_dim][block_size]`), so scores come out a vector of keys at a time: lane `i` of a
//! [`Chunk`] accumulates `q[d] * k_i[d]` over `d` with one FMA per dimension, the query value
//! broadcast, and no horizontal sums. Values stay token-major (`[block_size][head_dim]`), so
//! the weighted sum is one FMA per key and output lane.
//!
//! Batch invariance: a query's result is the same bits whatever else is in the step, how the
//! work is split, and which tile or lane it lands in: every (query, key) score is the same
//! FMA chain over the dimensions in order, then `* scale`; softmax is per query; and a
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

/// Work items per thread a parallel step aims for; a step with fewer (a short prompt after a
/// long cached prefix) makes each tile of queries an item of its own.
const ITEMS_PER_THREAD: usize = 4;

/// Most queries sharing each K/V load (`Kernels::tile`).
const TILE: usize = 12;

/// Below this many query·key products a step's attention runs on the calling thread: waking
/// the pool costs more than it saves (single-sequence decode with a short context).
const PARALLEL_MIN_PRODUCTS: usize = 1 << 11;

/// Which kernels run the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Scores, the softmax's exp and weighted sums on 16 lanes.
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

    /// Queries sharing each K/V load: twelve on 32 registers (four tokens of a three-head GQA
    /// group), eight on 16.
    fn tile(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => TILE,
            _ => 8,
        }
    }

    /// Keys per chunk: the kernels' vector width.
    fn lanes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => 16,
            _ => 8,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn scores<E: KvElem, const N: usize>(
        self,
        q: &[f32],
        qrow: [usize; N],
        kt: &[E],
        stride: usize,
        chunks: &[Chunk],
        hd: usize,
        scale: f32,
        out: &mut [f32],
        dst: Dest<N>,
    ) {
        match self {
            Kernels::Scalar => scalar::scores(q, qrow, kt, stride, chunks, hd, scale, out, dst),
            // SAFETY: `Avx2` is only chosen when the host has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { super::attention_avx2::scores(q, qrow, kt, stride, chunks, hd, scale, out, dst) },
            // SAFETY: `Avx512` is only chosen when the host has AVX-512 F/BW/VL (and AVX2, FMA, F16C).
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe {
                super::attention_avx512::scores(q, qrow, kt, stride, chunks, hd, scale, out, dst)
            },
        }
    }

    fn softmax_exp(self, s: &mut [f32]) -> f32 {
        match self {
            Kernels::Scalar => scalar::softmax_exp(s),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { super::attention_avx2::softmax_exp(s) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { super::attention_avx512::softmax_exp(s) },
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

/// One unit of parallel work: queries `q0..q1` of one kv head's group in one sequence, counted
/// token-major over (the step's tokens of the sequence, the group's heads).
struct Item {
    seq: usize,
    kv_head: usize,
    q0: usize,
    q1: usize,
}

/// Up to `Kernels::lanes()` keys at consecutive slots of one K tile: key `i` (`< lanes`) is
/// at position `pos + i`, its value at dimension `d` at element `k + d * stride` + `i` of the
/// K storage (`stride` is the block size).
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk {
    pub k: usize,
    pub lanes: usize,
    pub pos: usize,
}

/// Where a tile's scores go: query `a` keeps keys at positions `lo[a]..end[a]`, the score of
/// position `p` at `at[a] + p - lo[a]` of the score buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dest<const N: usize> {
    pub at: [usize; N],
    pub lo: [usize; N],
    pub end: [usize; N],
}

impl<const N: usize> Dest<N> {
    /// The lanes `from..to` of `c` that query `a` keeps, and where lane `from`'s score goes
    /// (lane `i`'s at that plus `i - from`); `None` when it keeps none.
    #[inline]
    pub fn keep(&self, a: usize, c: &Chunk) -> Option<(usize, usize, usize)> {
        let from = self.lo[a].saturating_sub(c.pos).min(c.lanes);
        let to = self.end[a].saturating_sub(c.pos).min(c.lanes);
        // `pos + from >= lo` whenever a lane is kept.
        (from < to).then(|| (from, to, self.at[a] + c.pos + from - self.lo[a]))
    }

    /// Bounds every kernel checks before writing: each query's scores fit in `len`.
    pub fn check(&self, len: usize) {
        for a in 0..N {
            assert!(
                self.lo[a] <= self.end[a] && self.at[a] + (self.end[a] - self.lo[a]) <= len,
                "scores out of bounds"
            );
        }
    }
}

/// Destination pointer shared by the workers; each item writes a disjoint set of rows.
struct OutPtr(*mut f32);
// SAFETY: the pointer is only dereferenced at (token, head) rows, and every (token, head) pair
// belongs to exactly one work item, so no two threads write the same element; the buffer
// outlives the parallel region, which returns before `paged_attention` does.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// A layer's K tiles and V rows, read in place by the kernels (f32, or f16 converted as loaded).
#[derive(Clone, Copy)]
enum Direct<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [u16], &'a [u16]),
}

/// What every item reads.
struct Step<'a> {
    /// The layer's K/V in place when the cache stores f32 or f16; otherwise (8-bit) each
    /// item gathers the tiles and rows it reads into its scratch as f32.
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
    /// V row offsets (in the layer's storage) of the item's key positions, from `base`.
    offs: Vec<usize>,
    /// The item's keys as chunks of its K tiles (in the layer's storage, or in `k`).
    chunks: Vec<Chunk>,
    /// Element offsets of the item's K tiles, one per page (8-bit: to gather).
    tiles: Vec<usize>,
    /// Gathered K tiles and V rows (f32), and the V rows' offsets in `v`.
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
    let chunk = item_queries(batch, num_heads.div_ceil(group), group, parallel, kern.tile());
    let mut items = Vec::new();
    for (seq, s) in batch.seqs.iter().enumerate() {
        for kv_head in 0..num_heads.div_ceil(group) {
            let n = s.num_tokens * group_heads(kv_head, group, num_heads).len();
            items.extend((0..n).step_by(chunk).map(|q0| Item { seq, kv_head, q0, q1: n.min(q0 + chunk) }));
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

/// Queries per work item for `batch`: `QUERY_CHUNK` tokens' worth, or one tile when that
/// leaves the pool's threads too few items (see `ITEMS_PER_THREAD`). Which item or tile a query
/// lands in never changes its result.
fn item_queries(batch: &ForwardBatch, kv_heads: usize, group: usize, parallel: bool, tile: usize) -> usize {
    let items: usize = batch.seqs.iter().map(|s| s.num_tokens.div_ceil(QUERY_CHUNK)).sum::<usize>() * kv_heads;
    if parallel && items < ITEMS_PER_THREAD * crate::thread_pool::pool().threads() {
        tile
    } else {
        QUERY_CHUNK * group
    }
}

/// The query heads of `kv_head`'s group.
fn group_heads(kv_head: usize, group: usize, num_heads: usize) -> Range<usize> {
    (kv_head * group)..((kv_head + 1) * group).min(num_heads)
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

/// All queries of one item, in tiles of up to `Kernels::tile`.
fn run_item(step: &Step, item: &Item, scratch: &mut Scratch, dst: &OutPtr) {
    let s = &step.batch.seqs[item.seq];
    let first = s.context_len - s.num_tokens;
    let heads = group_heads(item.kv_head, step.group, step.num_heads);
    // The item's tokens, `start..end` of the sequence's tokens in this step.
    let (start, end) = (item.q0 / heads.len(), (item.q1 - 1) / heads.len() + 1);
    let base = first_key(first + start, step.params.window);
    let last = first + end - 1;
    let (bs, hd, w) = (step.cache.block_size, step.hd, step.kern.lanes());
    let table = &s.block_tables[step.kv_group];
    // V row offsets of positions base..=last, walking the group's block table without divisions.
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
    // K tiles of the pages holding base..=last, as chunks of `w` slots from each tile's start
    // (so full chunks are whole aligned loads), keeping those that hold any of the positions.
    scratch.tiles.clear();
    scratch.chunks.clear();
    for (i, b) in (base / bs..=last / bs).enumerate() {
        let tile = step.cache.offset(table[b] as usize, item.kv_head, 0);
        scratch.tiles.push(tile);
        let k = if step.direct.is_some() { tile } else { i * hd * bs };
        for c in (0..bs).step_by(w) {
            let (pos, lanes) = (b * bs + c, w.min(bs - c));
            if pos <= last && pos + lanes > base {
                scratch.chunks.push(Chunk { k: k + c, lanes, pos });
            }
        }
    }
    let stride = (last + 1 - base).next_multiple_of(16);
    scratch.scores.resize(TILE * stride, 0.0);
    scratch.acc.resize(TILE * hd, 0.0);
    let Scratch { offs, chunks, tiles, k, v, rows, scores, acc } = scratch;
    let mut bufs = Bufs { scores, acc };
    let at = Queries { item, heads, first, base, stride };
    match step.direct {
        Some(Direct::F32(ks, vs)) => run_queries(step, &at, &Kv { ks, vs, offs, chunks }, &mut bufs, dst),
        Some(Direct::F16(ks, vs)) => run_queries(step, &at, &Kv { ks, vs, offs, chunks }, &mut bufs, dst),
        None => {
            step.cache.gather(step.layer, tiles, offs, k, v);
            rows.clear();
            rows.extend((0..offs.len()).map(|i| i * hd));
            run_queries(step, &at, &Kv { ks: k, vs: v, offs: rows, chunks }, &mut bufs, dst)
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

/// An item's queries, in tiles of up to `Kernels::tile`, over its K tiles and V rows.
fn run_queries<E: KvElem>(step: &Step, at: &Queries, kv: &Kv<E>, bufs: &mut Bufs, dst: &OutPtr) {
    let s = &step.batch.seqs[at.item.seq];
    let (base, stride) = (at.base, at.stride);
    // Queries as (token index in the batch, head, position), token-major.
    let glen = at.heads.len();
    let queries = (at.item.q0..at.item.q1)
        .map(|i| (i / glen, at.heads.start + i % glen))
        .map(|(j, h)| (s.token_start + j, h, at.first + j))
        .collect::<Vec<_>>();
    for tile in queries.chunks(step.kern.tile()) {
        match *tile {
            [a] => run_tile(step, [a], base, stride, kv, bufs, dst),
            [a, b] => run_tile(step, [a, b], base, stride, kv, bufs, dst),
            [a, b, c] => run_tile(step, [a, b, c], base, stride, kv, bufs, dst),
            [a, b, c, d] => run_tile(step, [a, b, c, d], base, stride, kv, bufs, dst),
            [a, b, c, d, e] => run_tile(step, [a, b, c, d, e], base, stride, kv, bufs, dst),
            [a, b, c, d, e, f] => run_tile(step, [a, b, c, d, e, f], base, stride, kv, bufs, dst),
            [a, b, c, d, e, f, g] => run_tile(step, [a, b, c, d, e, f, g], base, stride, kv, bufs, dst),
            [a, b, c, d, e, f, g, h] => run_tile(step, [a, b, c, d, e, f, g, h], base, stride, kv, bufs, dst),
            [a, b, c, d, e, f, g, h, i] => run_tile(step, [a, b, c, d, e, f, g, h, i], base, stride, kv, bufs, dst),
            [a, b, c, d, e, f, g, h, i, j] => {
                run_tile(step, [a, b, c, d, e, f, g, h, i, j], base, stride, kv, bufs, dst)
            }
            [a, b, c, d, e, f, g, h, i, j, k] => {
                run_tile(step, [a, b, c, d, e, f, g, h, i, j, k], base, stride, kv, bufs, dst)
            }
            [a, b, c, d, e, f, g, h, i, j, k, l] => {
                run_tile(step, [a, b, c, d, e, f, g, h, i, j, k, l], base, stride, kv, bufs, dst)
            }
            _ => {}
        }
    }
}

/// The K tiles and V rows an item reads: its keys as chunks of `ks`, and each key position's
/// V row offset in `vs` (from `base`).
struct Kv<'a, E> {
    ks: &'a [E],
    vs: &'a [E],
    offs: &'a [usize],
    chunks: &'a [Chunk],
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
    // The chunks holding any key of the tile's queries.
    let (from, to) = (lo.iter().copied().min().unwrap_or(0), end.iter().copied().max().unwrap_or(0));
    let chunks = &kv.chunks[kv.chunks.partition_point(|c| c.pos + c.lanes <= from)..];
    let chunks = &chunks[..chunks.partition_point(|c| c.pos < to)];
    let at: [usize; N] = std::array::from_fn(|a| row(a, lo[a]));
    let bs = step.cache.block_size;
    kern.scores(step.q, qrow, kv.ks, bs, chunks, hd, step.params.scale, scores, Dest { at, lo, end });
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
