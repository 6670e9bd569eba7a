//! Activations as the quantized kernels take them (`QuantizedActs`): each row quantized to
//! 8-bit blocks as ggml's and candle's `quantize_row_q8_0` / `q8_1` / `q8_K` do (`ActBlocks`
//! says which), or kept as f32 rows for float weights; rows are split over the compute pool.

use half::f16;

use super::QK;
use crate::kernel_level::KernelLevel;

/// Rows per work item when quantizing activations in parallel (below this, one thread).
const QUANT_ROWS: usize = 4;

/// Rows per tile of [`Tiled`]: the AVX-512 panel kernels' register tile.
pub const TILE_ROWS: usize = 8;

/// Activations `[m, k]` as a weight format takes them. Quantized to 8 bits per value: int8
/// values, the f16-rounded block scale widened to f32, `s = d · Σ values` rounded as candle's
/// `BlockQ8_1` does (Q4_1's and Q5_1's offsets; for Q8_K the integer sum), and the integer
/// sums. Or, for float weights (`ActBlocks::F32`), the f32 rows themselves in `f`, the other
/// buffers empty.
#[derive(Default)]
pub struct QuantizedActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    /// `Σ values` per block, the integer itself.
    pub isum: Vec<i32>,
    /// `Σ values` over the first 16 of each block (Q6_K's sub-blocks).
    pub isum16: Vec<i32>,
    pub f: Vec<f32>,
    /// The same values and scalars, rows interleaved per block (AVX-512 only; see [`Tiled`]).
    pub tiled: Tiled,
    pub k: usize,
    m: usize,
}

/// Quantized activations with the rows of each tile of [`TILE_ROWS`] interleaved per block,
/// as the AVX-512 panel kernels read them: block `b` of row `r` (tile `t = r / TILE_ROWS`,
/// `i = r % TILE_ROWS`) is `qs[((t · kb + b) · TILE_ROWS + i) · 32..][..32]` and its scalars
/// `d`, `s`, `isum`, `isum16` are at `(t · kb + b) · TILE_ROWS + i`. A tile's eight rows of a
/// block then lie at fixed offsets from one pointer, so a kernel addresses every row without
/// a register or an index of its own. The slots of rows past the matrix in the last tile are
/// never read. The values are copies of the row-major ones: the same bits, so the same results.
#[derive(Default)]
pub struct Tiled {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub isum: Vec<i32>,
    pub isum16: Vec<i32>,
}

impl Tiled {
    /// Sizes the buffers for `m` rows of `k` values. The slots of rows past `m` keep whatever
    /// they held: no kernel reads them (a tile computes only the rows it is given).
    fn reset(&mut self, m: usize, k: usize) {
        let slots = m.div_ceil(TILE_ROWS) * TILE_ROWS * (k / QK);
        fn size<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
            v.truncate(len);
            v.resize(len, T::default());
        }
        size(&mut self.qs, slots * QK);
        size(&mut self.d, slots);
        size(&mut self.s, slots);
        size(&mut self.isum, slots);
        size(&mut self.isum16, slots);
    }

    fn clear(&mut self) {
        self.qs.clear();
        self.d.clear();
        self.s.clear();
        self.isum.clear();
        self.isum16.clear();
    }
}

/// Copies `rows` (whose row-major values start at row `rows.start`) into the tiled buffers.
///
/// # Safety
/// `t` points to buffers sized by `Tiled::reset` for at least `rows.end` rows of `k`, and no
/// other thread writes these rows' slots concurrently.
#[allow(clippy::too_many_arguments)]
unsafe fn copy_rows(
    t: &TiledPtrs,
    k: usize,
    rows: std::ops::Range<usize>,
    qs: &[i8],
    d: &[f32],
    s: &[f32],
    sums: (&[i32], &[i32]),
) {
    let kb = k / QK;
    for (j, r) in rows.enumerate() {
        let (tile, i) = (r / TILE_ROWS, r % TILE_ROWS);
        for b in 0..kb {
            let slot = (tile * kb + b) * TILE_ROWS + i;
            let from = j * kb + b;
            // SAFETY: the caller's contract; `slot` lies inside the sized buffers.
            unsafe {
                std::ptr::copy_nonoverlapping(qs.as_ptr().add(from * QK), t.qs.0.add(slot * QK), QK);
                *t.d.0.add(slot) = d[from];
                *t.s.0.add(slot) = s[from];
                *t.isum.0.add(slot) = sums.0[from];
                *t.isum16.0.add(slot) = sums.1[from];
            }
        }
    }
}

/// The tiled buffers' pointers, handed to the quantizing workers.
struct TiledPtrs {
    qs: SendPtr<i8>,
    d: SendPtr<f32>,
    s: SendPtr<f32>,
    isum: SendPtr<i32>,
    isum16: SendPtr<i32>,
}

impl TiledPtrs {
    fn of(t: &mut Tiled) -> Self {
        Self {
            qs: SendPtr(t.qs.as_mut_ptr()),
            d: SendPtr(t.d.as_mut_ptr()),
            s: SendPtr(t.s.as_mut_ptr()),
            isum: SendPtr(t.isum.as_mut_ptr()),
            isum16: SendPtr(t.isum16.as_mut_ptr()),
        }
    }
}

/// Whether kernels may read [`Tiled`] activations: the AVX-512 panels, which a matrix can
/// run wherever the CPU has them (tests pin a matrix to a level other than the process's).
fn wants_tiled() -> bool {
    KernelLevel::Avx512.supported()
}

impl QuantizedActs {
    /// Row `r`'s values and scales.
    #[inline]
    pub fn row(&self, r: usize) -> (&[i8], &[f32]) {
        let kb = self.k / QK;
        (&self.qs[r * self.k..(r + 1) * self.k], &self.d[r * kb..(r + 1) * kb])
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// `into` becomes the rows `rows` of `self`, in that order (a row's values and scales are
    /// copied as they are, so a kernel gives it the same result).
    pub fn gather(&self, rows: &[usize], into: &mut QuantizedActs) {
        fn copy<T: Copy>(from: &[T], m: usize, rows: &[usize], into: &mut Vec<T>) {
            into.clear();
            let per = from.len() / m.max(1);
            for &r in rows {
                into.extend_from_slice(&from[r * per..(r + 1) * per]);
            }
        }
        into.k = self.k;
        into.m = rows.len();
        copy(&self.qs, self.m, rows, &mut into.qs);
        copy(&self.d, self.m, rows, &mut into.d);
        copy(&self.s, self.m, rows, &mut into.s);
        copy(&self.isum, self.m, rows, &mut into.isum);
        copy(&self.isum16, self.m, rows, &mut into.isum16);
        copy(&self.f, self.m, rows, &mut into.f);
        into.retile();
    }

    /// Rebuilds `tiled` from the row-major buffers on this thread, or empties it where no
    /// kernel reads it (float activations, or a CPU without AVX-512).
    fn retile(&mut self) {
        if self.qs.is_empty() || !wants_tiled() {
            self.tiled.clear();
            return;
        }
        self.tiled.reset(self.m, self.k);
        let t = TiledPtrs::of(&mut self.tiled);
        // SAFETY: sized just above for every row; one thread.
        unsafe { copy_rows(&t, self.k, 0..self.m, &self.qs, &self.d, &self.s, (&self.isum, &self.isum16)) };
    }

    /// Quantizes `x` (`m` rows of `k`) into 32-value blocks, reusing the buffers; rows are
    /// split over the pool.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        self.quantize_as(x, k, ActBlocks::Q8_0)
    }

    /// Quantizes `x` (`m` rows of `k`) as `blocks` says, reusing the buffers.
    pub fn quantize_as(&mut self, x: &[f32], k: usize, blocks: ActBlocks) {
        let m = x.len() / k;
        self.k = k;
        self.m = m;
        if blocks == ActBlocks::F32 {
            self.f.clear();
            self.f.extend_from_slice(x);
            for v in [&mut self.d, &mut self.s] {
                v.clear();
            }
            self.qs.clear();
            self.isum.clear();
            self.isum16.clear();
            self.tiled.clear();
            return;
        }
        self.f.clear();
        self.qs.resize(m * k, 0);
        self.d.resize(m * k / QK, 0.0);
        self.s.resize(m * k / QK, 0.0);
        self.isum.resize(m * k / QK, 0);
        self.isum16.resize(m * k / QK, 0);
        let quantize_rows = if blocks == ActBlocks::Q8K { quantize_rows_q8k } else { quantize_rows };
        let tiled = wants_tiled();
        // Tiled copies are written a whole tile per item: threads writing rows of one tile
        // would share the cache lines of its interleaved scalars.
        let per_item = if tiled { TILE_ROWS } else { QUANT_ROWS };
        if m < 2 * per_item {
            let sums = (&mut self.isum[..], &mut self.isum16[..]);
            quantize_rows(x, &mut self.qs, &mut self.d, &mut self.s, sums);
            self.retile();
            return;
        }
        if tiled {
            self.tiled.reset(m, k);
        } else {
            self.tiled.clear();
        }
        let t = TiledPtrs::of(&mut self.tiled);
        let kb = k / QK;
        let (qs, d, s) = (SendPtr(self.qs.as_mut_ptr()), SendPtr(self.d.as_mut_ptr()), SendPtr(self.s.as_mut_ptr()));
        let (isum, isum16) = (SendPtr(self.isum.as_mut_ptr()), SendPtr(self.isum16.as_mut_ptr()));
        crate::thread_pool::pool().for_each_chunk(m.div_ceil(per_item), |items| {
            let (qs, d, s, isum, isum16, t) = (&qs, &d, &s, &isum, &isum16, &t);
            for item in items {
                let rows = item * per_item..m.min((item + 1) * per_item);
                // SAFETY: each item owns rows `rows` of the buffers, sized above for
                // `m` rows; the buffers outlive the parallel region.
                let (qs, d, s, isum, isum16) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qs.0.add(rows.start * k), rows.len() * k),
                        std::slice::from_raw_parts_mut(d.0.add(rows.start * kb), rows.len() * kb),
                        std::slice::from_raw_parts_mut(s.0.add(rows.start * kb), rows.len() * kb),
                        std::slice::from_raw_parts_mut(isum.0.add(rows.start * kb), rows.len() * kb),
                        std::slice::from_raw_parts_mut(isum16.0.add(rows.start * kb), rows.len() * kb),
                    )
                };
                quantize_rows(&x[rows.start * k..rows.end * k], qs, d, s, (&mut *isum, &mut *isum16));
                if tiled {
                    // SAFETY: `reset` sized the buffers for `m` rows, and this item alone
                    // writes its rows' slots.
                    unsafe { copy_rows(t, k, rows, qs, d, s, (isum, isum16)) };
                }
            }
        });
    }
}

/// Where `quantize_rows` puts the integer sums of each block: of all its values, and of its
/// first 16.
pub type Sums<'a> = (&'a mut [i32], &'a mut [i32]);

/// How activations are quantized for a weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActBlocks {
    /// ggml's Q8_0 / Q8_1: an f16 scale per 32 values (Q8_0, Q4_1, MXFP4 weights).
    Q8_0,
    /// ggml's Q8_K: one f32 scale per 256 values (the K-quants, as llama.cpp pairs them),
    /// stored as eight equal 32-value block scales so the kernels read it like Q8_0.
    Q8K,
    /// Not quantized: the f32 values as they are (F16 and BF16 weights).
    F32,
}

/// A raw pointer handed to pool workers that write disjoint ranges through it.
struct SendPtr<T>(*mut T);
// SAFETY: only used for disjoint writes inside one parallel region (see the call sites).
unsafe impl<T> Sync for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}

/// Quantizes each 32-value block of `x` as ggml's `quantize_row_q8_0` does (candle's
/// `BlockQ8_0::from_float`): scale `amax / 127` rounded to f16, values `round(x / scale)`
/// computed with the unrounded scale. `d` receives the f16 scales widened to f32; `s` receives
/// `f16(Σ values) · d` in f16 arithmetic, as candle's `BlockQ8_1::from_float` stores it, and
/// `sums` the integer `Σ values` of each block and of its first 16.
pub fn quantize_rows(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], sums: Sums) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 was detected.
        unsafe { simd::quantize_rows(x, qs, d, s, sums) };
        return;
    }
    let (isum, isum16) = sums;
    let blocks = x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(d.iter_mut().zip(s.iter_mut()));
    for (((xb, qb), (db, sb)), (ib, ib16)) in blocks.zip(isum.iter_mut().zip(isum16)) {
        let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let d16 = f16::from_f32(scale);
        *db = d16.to_f32();
        let mut sum = 0i32;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * inv).round() as i8;
            sum += *q as i32;
        }
        *sb = (f16::from_f32(sum as f32) * d16).to_f32();
        *ib = sum;
        *ib16 = qb[..QK / 2].iter().map(|&q| q as i32).sum();
    }
}

/// ggml's `nearest_int`: round half to even through the float's mantissa.
#[inline(always)]
pub(super) fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Quantizes each 256-value super-block of `x` as ggml's `quantize_row_q8_K` does: the value
/// of largest magnitude `max` gives `iscale = -127 / max`, values `min(127, nearest(iscale·x))`
/// and scale `1 / iscale`. Each of the super-block's eight 32-value blocks gets that scale in
/// `d`, and `s` the integer `Σ values` of the block (exact in f32: at most 32 · 127), as do
/// `sums` (with the sum of each block's first 16).
pub fn quantize_rows_q8k(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], sums: Sums) {
    let (isum, isum16) = sums;
    const QK_K: usize = 256;
    let sub = QK_K / QK;
    let blocks = x.chunks_exact(QK_K).zip(qs.chunks_exact_mut(QK_K));
    for (i, (xb, qb)) in blocks.enumerate() {
        // The first value of the largest magnitude (NaNs skipped), found in two passes the
        // compiler vectorizes.
        let lanes = xb.chunks_exact(8).fold([0f32; 8], |mut m, c| {
            for (m, &v) in m.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
            m
        });
        let amax = lanes.into_iter().fold(0f32, f32::max);
        let max = xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
        let range = i * sub..(i + 1) * sub;
        if amax == 0.0 {
            qb.fill(0);
            d[range.clone()].fill(0.0);
            s[range.clone()].fill(0.0);
            isum[range.clone()].fill(0);
            isum16[range].fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        let scale = 1.0 / iscale;
        for (j, b) in range.enumerate() {
            let sum: i32 = qb[j * QK..(j + 1) * QK].iter().map(|&q| q as i32).sum();
            d[b] = scale;
            s[b] = sum as f32;
            isum[b] = sum;
            isum16[b] = qb[j * QK..j * QK + QK / 2].iter().map(|&q| q as i32).sum();
        }
    }
}

/// Whether this process's kernel level has AVX2 (the activation quantization's SIMD path).
fn has_avx2_fma() -> bool {
    KernelLevel::current() >= KernelLevel::Avx2
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use half::f16;

    use super::QK;

    /// `super::quantize_rows` with AVX2, giving the same bits: the same scale, the same
    /// `x · inv` products, and `f32::round` (half away from zero) rebuilt from truncation.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn quantize_rows(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], (isum, isum16): super::Sums) {
        let sign = _mm256_set1_ps(-0.0);
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        let blocks = x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(d.iter_mut().zip(s.iter_mut()));
        for (((xb, qb), (db, sb)), (ib, ib16)) in blocks.zip(isum.iter_mut().zip(isum16)) {
            // SAFETY: `xb` holds 32 floats.
            let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * i)) });
            let abs = v.map(|v| _mm256_andnot_ps(sign, v));
            let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let scale = amax / 127.0;
            let inv = _mm256_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
            let d16 = f16::from_f32(scale);
            *db = d16.to_f32();
            let q = v.map(|v| {
                let y = _mm256_mul_ps(v, inv);
                let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                // |y - t| is exact; a fraction of at least one half rounds away from zero.
                let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(y, t));
                let up =
                    _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), _mm256_or_ps(_mm256_and_ps(y, sign), one));
                _mm256_cvtps_epi32(_mm256_add_ps(t, up))
            });
            let first = _mm256_add_epi32(q[0], q[1]);
            let (first, sum) = (hsum_i32(first), hsum_i32(_mm256_add_epi32(first, _mm256_add_epi32(q[2], q[3]))));
            let p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: `qb` holds 32 bytes.
            unsafe { _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, p) };
            *sb = (f16::from_f32(sum as f32) * d16).to_f32();
            *ib = sum;
            *ib16 = first;
        }
    }

    /// The sum of eight int32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum_i32(v: __m256i) -> i32 {
        let sum = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let sum = _mm_add_epi32(sum, _mm_unpackhi_epi64(sum, sum));
        _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32(sum, 1)))
    }
}
