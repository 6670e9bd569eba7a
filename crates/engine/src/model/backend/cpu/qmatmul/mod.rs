//! wick's batch-invariant quantized matmuls for CPU: `y[M, N] = x[M, K] · W[N, K]ᵀ` with
//! quantized weights and activations quantized per row to 8 bits (32 values and one scale per
//! block, exactly as ggml's and candle's `quantize_row_q8_0` / `q8_1`).
//!
//! This module owns what every weight format shares: the driver that spreads (row chunk,
//! column chunk) items over wick's compute pool (`crate::thread_pool`, which parks instead of
//! spinning on a shared CPU), the `TileKernel` trait each format implements (`q8_0`, `q4_1`,
//! `q5`, `q4_k` with Q5_K, `q6_k`, `mxfp4`), the tile walk and the accumulator lanes and SIMD
//! steps the formats share. The activations they take are `acts`'s `QuantizedActs`.
//!
//! F16 and BF16 weights (`float`) take the same driver with unquantized f32 activations.
//!
//! Batch invariance is by construction: every output `y[m, n]` is computed by the same
//! sequence of floating-point operations whatever `M` is, whichever rows share the call and
//! however the work is split across threads. Per (row, column) an 8-lane f32 accumulator takes,
//! block after block in order, `fma(d_w · d_x, i32→f32(Σ int8 products per lane), acc)` and is
//! reduced by one fixed horizontal sum; the int8 dot products are exact integers, so only the
//! float steps are pinned. Speed comes from register blocking: a tile of up to 4 activation
//! rows × 2–4 weight columns loads each weight block once for several rows.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{DType, Device, Storage, Tensor};

use crate::{EngineError, Result};

mod acts;
mod float;
pub mod mxfp4;
mod panel;
mod q4_1;
mod q4_k;
mod q5;
mod q6_k;
mod q8_0;

#[cfg(test)]
use acts::nearest_int;
pub use acts::{quantize_rows, quantize_rows_q8k, ActBlocks, QuantizedActs, Sums};
pub use float::{FloatMatrix, FloatType};
pub use mxfp4::Mxfp4Matrix;
pub use q4_1::Q41Matrix;
pub use q4_k::{Q4KMatrix, Q5KMatrix};
pub use q5::Q5Matrix;
pub use q6_k::Q6KMatrix;
pub use q8_0::Q8Matrix;

/// Values per quantization block (Q8_0, Q8_1, Q4_1 alike).
pub const QK: usize = 32;
/// Activation rows per thread work item (their quantized blocks stay in L2 while the item's
/// weight columns stream past).
const ROW_CHUNK: usize = 64;
/// Weight columns per thread work item (unless the format says otherwise).
const COL_CHUNK: usize = 16;

/// The output matrix, shared by the workers (each writes disjoint elements).
#[derive(Clone, Copy)]
pub struct OutPtr {
    addr: usize,
    stride: usize,
}

impl OutPtr {
    pub fn new(out: &mut [f32], stride: usize) -> Self {
        Self { addr: out.as_mut_ptr() as usize, stride }
    }

    /// # Safety
    /// `(r, c)` must lie inside the output and no other thread may write it concurrently.
    #[inline]
    pub unsafe fn write(self, r: usize, c: usize, v: f32) {
        unsafe { *(self.addr as *mut f32).add(r * self.stride + c) = v };
    }
}

/// A quantized weight format with a register-tiled kernel.
pub trait TileKernel: Sync {
    /// `(n, k)`: outputs and inputs.
    fn dims(&self) -> (usize, usize);

    /// Computes `out[rows, cols]` from the quantized activations.
    ///
    /// # Safety
    /// `rows` lie inside `acts`, `cols` inside the weight, both inside `out`, and no other
    /// thread writes those output elements concurrently.
    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr);

    /// Weight columns per thread work item.
    fn col_chunk(&self) -> usize {
        COL_CHUNK
    }

    /// How this format wants its activations quantized.
    fn act_blocks(&self) -> ActBlocks {
        ActBlocks::Q8_0
    }

    /// `out[m, n] = x[m, k] · Wᵀ` on row-major slices.
    fn matmul(&self, x: &[f32], out: &mut [f32]) {
        matmul(self, x, out)
    }

    /// `x · Wᵀ` for a tensor `x` of shape `[..., k]`; the result is `[..., n]` f32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        forward(self, x)
    }
}

/// `out[m, n] = x[m, k] · Wᵀ` on row-major slices (`x.len() = m · k`, `out.len() = m · n`).
pub fn matmul<W: TileKernel + ?Sized>(w: &W, x: &[f32], out: &mut [f32]) {
    let (n, k) = w.dims();
    let m = x.len() / k;
    assert_eq!(x.len(), m * k, "input is not a whole number of rows");
    assert_eq!(out.len(), m * n, "output has the wrong size");
    thread_local! {
        static ACTS: RefCell<QuantizedActs> = RefCell::new(QuantizedActs::default());
    }
    ACTS.with(|cell| {
        let mut acts = cell.borrow_mut();
        acts.quantize_as(x, k, w.act_blocks());
        matmul_quantized(w, &acts, out);
    })
}

/// `out[m, n] = acts · Wᵀ` for activations already quantized (`acts.k` must be the weight's
/// input size): the same results as [`matmul`] on the rows they came from.
pub fn matmul_quantized<W: TileKernel + ?Sized>(w: &W, acts: &QuantizedActs, out: &mut [f32]) {
    let (n, k) = w.dims();
    assert_eq!(acts.k, k, "activations quantized for another input size");
    let m = acts.rows();
    assert_eq!(out.len(), m * n, "output has the wrong size");
    let row_chunks = m.div_ceil(ROW_CHUNK);
    let col_chunk = w.col_chunk();
    let col_chunks = n.div_ceil(col_chunk);
    let out = OutPtr::new(out, n);
    // Items are (row chunk, column chunk), row-chunk major; each output element belongs to
    // exactly one item, so workers never write the same element.
    crate::thread_pool::pool().for_each_chunk(row_chunks * col_chunks, |items| {
        for item in items {
            let (rc, cc) = (item / col_chunks, item % col_chunks);
            let rows = rc * ROW_CHUNK..m.min((rc + 1) * ROW_CHUNK);
            let cols = cc * col_chunk..n.min((cc + 1) * col_chunk);
            // SAFETY: `rows` and `cols` lie inside the operands and `out`, and this item
            // alone writes its output elements.
            unsafe { w.block(acts, rows, cols, out) };
        }
    });
}

/// `x · Wᵀ` for a tensor `x` of shape `[..., k]`; the result is `[..., n]` f32.
pub fn forward<W: TileKernel + ?Sized>(w: &W, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims();
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        return Err(EngineError::InvalidRequest(format!("input {:?} does not end in {k}", x.dims())));
    }
    let x = if x.dtype() == DType::F32 { x.contiguous()? } else { x.to_dtype(DType::F32)?.contiguous()? };
    let m = x.elem_count() / k;
    let mut out = vec![0f32; m * n];
    {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(EngineError::Unsupported("the quantized kernels run on CPU tensors only".into()));
        };
        let (start, end) =
            layout.contiguous_offsets().ok_or_else(|| EngineError::Unsupported("non-contiguous input".into()))?;
        matmul(w, &cpu.as_slice::<f32>()?[start..end], &mut out);
    }
    dims.pop();
    dims.push(n);
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
}

/// candle's / ggml's `hsum_float_8`, emulated on 8 lanes (the scalar paths use it).
fn hsum_lanes(acc: &[f32; 8]) -> f32 {
    let h: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// Sixteen f32 lanes as the paired-block formats keep them (Q8_0, Q4_1): lanes `0..8` take
/// the even 32-value blocks and `8..16` the odd ones, so AVX-512 forms a pair of blocks with one
/// 16-lane fma and AVX2 with two 8-lane ones. `finish` adds the halves lane by lane and takes
/// `hsum_float_8`. The scalar paths use it; the SIMD ones keep the same lanes in registers.
pub(super) struct PairLanes([f32; 16]);

impl PairLanes {
    pub(super) fn zero() -> Self {
        Self([0.0; 16])
    }

    /// Lanes started from the per-block offsets `m[b]·mul` (`mul` is 1 or a power of two, so
    /// the product is exact): lane `b mod 16` takes `fma(m[b]·mul, s[b], lane)` for each block
    /// `b`, in block order (`simd::offsets8x2` and `simd::offsets16` do the same).
    pub(super) fn offsets(m: &[f32], mul: f32, s: &[f32]) -> Self {
        let mut lanes = Self::zero();
        for (b, (&m, &s)) in m.iter().zip(s).enumerate() {
            lanes.0[b % 16] = (m * mul).mul_add(s, lanes.0[b % 16]);
        }
        lanes
    }

    /// Lane `l` (0..8) of block `b` takes `fma(v, scale, lane)`.
    #[inline]
    pub(super) fn fma(&mut self, b: usize, l: usize, v: f32, scale: f32) {
        let i = 8 * (b % 2) + l;
        self.0[i] = v.mul_add(scale, self.0[i]);
    }

    pub(super) fn finish(&self) -> f32 {
        let halves: [f32; 8] = std::array::from_fn(|l| self.0[l] + self.0[l + 8]);
        hsum_lanes(&halves)
    }
}

/// The walk over a work item that every format's SIMD kernels share: `block` covers
/// `rows × cols` with register tiles of `R` rows (4 while 4 rows remain, then 3, 2, 1) by the
/// given column counts, and single columns for what is left of `cols`, calling the format's
/// `tile::<R, C>`. The tile an element lands in never changes its arithmetic.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_walk {
    ($matrix:ty, $feat:literal, [$c4:literal, $c3:literal, $c2:literal, $c1:literal]) => {
        /// # Safety
        /// The features are available; see `TileKernel::block`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn block(
            a: &QuantizedActs,
            w: &$matrix,
            rows: Range<usize>,
            cols: Range<usize>,
            out: OutPtr,
        ) {
            let mut r = rows.start;
            while r < rows.end {
                let step = (rows.end - r).min(4);
                unsafe {
                    match step {
                        4 => cols_with::<4, $c4>(a, w, r, cols.clone(), out),
                        3 => cols_with::<3, $c3>(a, w, r, cols.clone(), out),
                        2 => cols_with::<2, $c2>(a, w, r, cols.clone(), out),
                        _ => cols_with::<1, $c1>(a, w, r, cols.clone(), out),
                    }
                }
                r += step;
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn cols_with<const R: usize, const C: usize>(
            a: &QuantizedActs,
            w: &$matrix,
            r: usize,
            cols: Range<usize>,
            out: OutPtr,
        ) {
            let mut c = cols.start;
            while c + C <= cols.end {
                unsafe { tile::<R, C>(a, w, r, c, out) };
                c += C;
            }
            while c < cols.end {
                unsafe { tile::<R, 1>(a, w, r, c, out) };
                c += 1;
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
use tile_walk;

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// `n` (0..=8) values of `v` from `at` as eight lanes, zeros after them.
    ///
    /// # Safety
    /// `at + n <= v.len()` where `n > 0`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn load8(v: &[f32], at: usize, n: usize) -> __m256 {
        if n == 0 {
            return _mm256_setzero_ps();
        }
        debug_assert!(at + n <= v.len());
        let p = v.as_ptr().wrapping_add(at);
        if n == 8 {
            // SAFETY: eight values from `at` lie inside `v`.
            return unsafe { _mm256_loadu_ps(p) };
        }
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        // SAFETY: the mask reads only the `n` lanes that lie inside `v`.
        unsafe { _mm256_maskload_ps(p, mask) }
    }

    /// `PairLanes::offsets` as two 8-lane halves (AVX2).
    ///
    /// # Safety
    /// `sx` holds at least `m.len()` values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn offsets8x2(m: &[f32], mul: f32, sx: &[f32]) -> [__m256; 2] {
        let mut lanes = [_mm256_setzero_ps(); 2];
        let mul = _mm256_set1_ps(mul);
        let mut b = 0;
        while b < m.len() {
            for (h, lane) in lanes.iter_mut().enumerate() {
                let at = b + 8 * h;
                let n = m.len().saturating_sub(at).min(8);
                // SAFETY: `load8` reads `n` values from `at`, inside both slices.
                let (mv, sv) = unsafe { (load8(m, at, n), load8(sx, at, n)) };
                *lane = _mm256_fmadd_ps(_mm256_mul_ps(mv, mul), sv, *lane);
            }
            b += 16;
        }
        lanes
    }

    /// `PairLanes::offsets` in one 16-lane register (AVX-512).
    ///
    /// # Safety
    /// `sx` holds at least `m.len()` values.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn offsets16(m: &[f32], mul: f32, sx: &[f32]) -> __m512 {
        let mut lanes = _mm512_setzero_ps();
        let mul = _mm512_set1_ps(mul);
        let mut b = 0;
        while b < m.len() {
            let n = (m.len() - b).min(16);
            let mask = (u32::MAX >> (32 - n)) as __mmask16;
            // SAFETY: the masked loads read `n` values from `b`, inside both slices.
            let (mv, sv) = unsafe {
                (_mm512_maskz_loadu_ps(mask, m.as_ptr().add(b)), _mm512_maskz_loadu_ps(mask, sx.as_ptr().add(b)))
            };
            lanes = _mm512_fmadd_ps(_mm512_mul_ps(mv, mul), sv, lanes);
            b += 16;
        }
        lanes
    }

    /// `vpdpwssd`: `acc` plus the int16 pair products of `a` and `b` per int32 lane. Written
    /// out because LLVM otherwise splits it into `vpmaddwd` and `vpaddd`: two uops on the two
    /// vector ports that bound the K-quant tiles instead of one.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) fn dpwssd(mut acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the instruction reads and writes registers only; AVX-512 VNNI is enabled.
        unsafe {
            std::arch::asm!("vpdpwssd {acc}, {a}, {b}", acc = inout(zmm_reg) acc, a = in(zmm_reg) a, b = in(zmm_reg) b,
                options(pure, nomem, nostack));
        }
        acc
    }

    /// `[p[0] ×8, p[1] ×8]`: two consecutive blocks' scales for a 16-lane pair.
    ///
    /// # Safety
    /// Two values from `p` are readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn pair_scales(p: *const f32) -> __m512 {
        // SAFETY: the caller's contract.
        let two = unsafe { _mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i)) };
        _mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_castps128_ps512(two),
        )
    }

    /// `acc` with its even-block half (lanes 0..8) taking `fma(lanes, scale, half)`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn fma_even(acc: __m512, lanes: __m256, scale: f32) -> __m512 {
        let lo = _mm256_fmadd_ps(lanes, _mm256_set1_ps(scale), _mm512_castps512_ps256(acc));
        _mm512_castpd_ps(_mm512_insertf64x4::<0>(_mm512_castps_pd(acc), _mm256_castps_pd(lo)))
    }

    /// The halves of sixteen paired lanes added lane by lane, then `hsum` (`PairLanes::finish`).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn hsum_pair(acc: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
        hsum(_mm256_add_ps(_mm512_castps512_ps256(acc), hi))
    }

    /// candle's / ggml's `hsum_float_8`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn hsum(x: __m256) -> f32 {
        let res = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        let res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }
}

#[cfg(test)]
mod tests;
