//! F16 and BF16 weights (float GGUF files, Hugging Face folders) on wick's register-tiled
//! kernel, kept at 16 bits per weight, with f32 activations and an f32 accumulate.
//!
//! Both types widen to f32 exactly (F16 by `vcvtph2ps` / F16C, BF16 by a 16-bit shift), so the
//! only rounding is in the accumulation, whose order is fixed: per (row, column) 16 f32 lanes,
//! lane `l` taking `fma(x_i, w_i, lane)` for `i = l, l + 16, l + 32, …` in order (a last partial
//! chunk touches only its lanes); then lanes `l` and `l + 8` are added and the 8 sums reduced by
//! ggml's `hsum_float_8`. Scalar, AVX2 (two 8-lane registers per element) and AVX-512 (one
//! 16-lane register) run that very sequence, so they give the same bits, and a row's result
//! never depends on the other rows of the step.
//!
//! AVX-512 BF16's `vdpbf16ps` is not used: it needs the activations rounded to bf16 and rounds
//! differently from an fma chain, so it could not give the other levels' bits.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use super::{hsum_lanes, ActBlocks, OutPtr, QuantizedActs, TileKernel};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Accumulator lanes per output element.
const LANES: usize = 16;

/// Which 16-bit float a [`HalfMatrix`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfType {
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    Bf16,
}

impl HalfType {
    /// The type of a GGUF tensor, if it is a 16-bit float.
    pub fn of_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::F16 => Some(HalfType::F16),
            GgmlDType::BF16 => Some(HalfType::Bf16),
            _ => None,
        }
    }

    /// The type of a candle tensor, if it is a 16-bit float.
    pub fn of_dtype(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F16 => Some(HalfType::F16),
            DType::BF16 => Some(HalfType::Bf16),
            _ => None,
        }
    }

    /// The exact f32 value of `bits`.
    #[inline(always)]
    fn widen(self, bits: u16) -> f32 {
        match self {
            HalfType::F16 => half::f16::from_bits(bits).to_f32(),
            HalfType::Bf16 => f32::from_bits((bits as u32) << 16),
        }
    }
}

/// F16 or BF16 weights `[n, k]`, row-major, as their bits.
#[derive(Clone)]
pub struct HalfMatrix {
    n: usize,
    k: usize,
    w: Vec<u16>,
    ty: HalfType,
    level: KernelLevel,
}

impl std::fmt::Debug for HalfMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HalfMatrix[{:?}, {}, {}]", self.ty, self.n, self.k)
    }
}

impl HalfMatrix {
    /// `n · k` values of type `ty`, row-major.
    pub fn new(ty: HalfType, w: Vec<u16>, n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k || k == 0 {
            return Err(EngineError::Load(format!("{} {ty:?} values for [{n}, {k}]", w.len())));
        }
        Ok(Self { n, k, w, ty, level: KernelLevel::current() })
    }

    /// The bits of an F16 or BF16 GGUF tensor `[n, k]`, if it is one.
    pub fn bits_of_qtensor(q: &QTensor) -> Result<Option<(HalfType, Vec<u16>)>> {
        let Some(ty) = HalfType::of_ggml(q.dtype()) else { return Ok(None) };
        let bytes = q.data()?;
        Ok(Some((ty, bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect())))
    }

    /// The bits of an F16 or BF16 tensor, if it is one.
    pub fn bits_of_tensor(t: &Tensor) -> Result<Option<(HalfType, Vec<u16>)>> {
        let Some(ty) = HalfType::of_dtype(t.dtype()) else { return Ok(None) };
        let flat = t.flatten_all()?;
        let bits: Vec<u16> = match ty {
            HalfType::F16 => flat.to_vec1::<half::f16>()?.into_iter().map(|v| v.to_bits()).collect(),
            HalfType::Bf16 => flat.to_vec1::<half::bf16>()?.into_iter().map(|v| v.to_bits()).collect(),
        };
        Ok(Some((ty, bits)))
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.level = level;
        self
    }
}

impl TileKernel for HalfMatrix {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn act_blocks(&self) -> ActBlocks {
        ActBlocks::F32
    }

    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
        match self.level {
            // SAFETY: the caller's contract covers the ranges.
            KernelLevel::Scalar => unsafe { scalar_block(acts, self, rows, cols, out) },
            // SAFETY: a level is only set where the CPU supports it (`with_level`, `current`).
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2 => unsafe { avx2::block(acts, self, rows, cols, out) },
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => unsafe { avx512::block(acts, self, rows, cols, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unsafe { scalar_block(acts, self, rows, cols, out) },
        }
    }
}

/// The fixed reduction of the 16 lanes: `l + (l + 8)`, then `hsum_float_8`.
fn reduce(acc: &[f32; LANES]) -> f32 {
    hsum_lanes(&std::array::from_fn(|l| acc[l] + acc[l + 8]))
}

/// One output element, the SIMD kernels' lanes emulated.
fn dot_scalar(a: &QuantizedActs, r: usize, w: &HalfMatrix, c: usize) -> f32 {
    let k = a.k;
    let x = &a.f[r * k..(r + 1) * k];
    let wr = &w.w[c * k..(c + 1) * k];
    let mut acc = [0f32; LANES];
    for (xs, ws) in x.chunks(LANES).zip(wr.chunks(LANES)) {
        for ((lane, &xv), &wv) in acc.iter_mut().zip(xs).zip(ws) {
            *lane = xv.mul_add(w.ty.widen(wv), *lane);
        }
    }
    reduce(&acc)
}

/// # Safety
/// See `TileKernel::block`.
pub(super) unsafe fn scalar_block(
    a: &QuantizedActs,
    w: &HalfMatrix,
    rows: Range<usize>,
    cols: Range<usize>,
    out: OutPtr,
) {
    for r in rows {
        for c in cols.clone() {
            unsafe { out.write(r, c, dot_scalar(a, r, w, c)) };
        }
    }
}

/// The last partial chunk of `rem` values at offset `at`, for a tile whose accumulators are
/// spilled to arrays: the same fmas as `dot_scalar`'s, lane by lane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn tail<const R: usize, const C: usize>(
    a: &QuantizedActs,
    w: &HalfMatrix,
    r: usize,
    c: usize,
    at: usize,
    acc: &mut [[[f32; LANES]; C]; R],
) {
    let k = a.k;
    for i in 0..R {
        for j in 0..C {
            for l in 0..k - at {
                let (xv, wv) = (a.f[(r + i) * k + at + l], w.w[(c + j) * k + at + l]);
                acc[i][j][l] = xv.mul_add(w.ty.widen(wv), acc[i][j][l]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::hsum;
    use super::{HalfMatrix, HalfType, OutPtr, QuantizedActs, LANES};

    super::super::tile_walk!(HalfMatrix, "avx2,fma,f16c", [1, 2, 2, 4]);

    /// Eight weights at `p` widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen8<const BF: bool>(p: *const u16) -> __m256 {
        // SAFETY: the caller passes 8 readable values.
        unsafe {
            let v = _mm_loadu_si128(p as *const __m128i);
            if BF {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
            } else {
                _mm256_cvtph_ps(v)
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &HalfMatrix, r: usize, c: usize, out: OutPtr) {
        match w.ty {
            // SAFETY: the caller's contract.
            HalfType::F16 => unsafe { tile_of::<R, C, false>(a, w, r, c, out) },
            HalfType::Bf16 => unsafe { tile_of::<R, C, true>(a, w, r, c, out) },
        }
    }

    /// `R` rows from `r` times `C` columns from `c`: per element two 8-lane accumulators
    /// (lanes 0..8 and 8..16), one fma each per chunk of 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_of<const R: usize, const C: usize, const BF: bool>(
        a: &QuantizedActs,
        w: &HalfMatrix,
        r: usize,
        c: usize,
        out: OutPtr,
    ) {
        let k = a.k;
        let xp = a.f[r * k..(r + R) * k].as_ptr();
        let wp = w.w[c * k..(c + C) * k].as_ptr();
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let whole = k / LANES * LANES;
        let mut t = 0;
        while t < whole {
            for h in 0..2 {
                let mut wv = [_mm256_setzero_ps(); C];
                for j in 0..C {
                    let p = wp.wrapping_add(j * k + t + 8 * h);
                    if h == 0 && t % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * k) as *const i8);
                    }
                    // SAFETY: values `t..t + 16` of column `c + j` lie inside `w` (sliced above).
                    wv[j] = unsafe { widen8::<BF>(p) };
                }
                for i in 0..R {
                    // SAFETY: values `t..t + 16` of row `r + i` lie inside `a` (sliced above).
                    let xv = unsafe { _mm256_loadu_ps(xp.add(i * k + t + 8 * h)) };
                    for j in 0..C {
                        acc[i][j][h] = _mm256_fmadd_ps(xv, wv[j], acc[i][j][h]);
                    }
                }
            }
            t += LANES;
        }
        if whole < k {
            let mut lanes = [[[0f32; LANES]; C]; R];
            for i in 0..R {
                for j in 0..C {
                    // SAFETY: 16 floats fit each array.
                    unsafe {
                        _mm256_storeu_ps(lanes[i][j].as_mut_ptr(), acc[i][j][0]);
                        _mm256_storeu_ps(lanes[i][j].as_mut_ptr().add(8), acc[i][j][1]);
                    }
                }
            }
            super::tail::<R, C>(a, w, r, c, whole, &mut lanes);
            for i in 0..R {
                for j in 0..C {
                    // SAFETY: 16 floats fit each array.
                    unsafe {
                        acc[i][j] =
                            [_mm256_loadu_ps(lanes[i][j].as_ptr()), _mm256_loadu_ps(lanes[i][j].as_ptr().add(8))];
                    }
                }
            }
        }
        for i in 0..R {
            for j in 0..C {
                let v = hsum(_mm256_add_ps(acc[i][j][0], acc[i][j][1]));
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, v) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::hsum;
    use super::{HalfMatrix, HalfType, OutPtr, QuantizedActs, LANES};

    super::super::tile_walk!(HalfMatrix, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", [4, 4, 8, 8]);

    /// Sixteen weights at `p` (the first `mask` of them; the rest read as zero) widened to f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn widen16<const BF: bool>(p: *const u16, mask: __mmask16) -> __m512 {
        // SAFETY: the caller passes the values `mask` selects readable.
        unsafe {
            let v = _mm256_maskz_loadu_epi16(mask, p as *const i16);
            if BF {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16))
            } else {
                _mm512_cvtph_ps(v)
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &HalfMatrix, r: usize, c: usize, out: OutPtr) {
        match w.ty {
            // SAFETY: the caller's contract.
            HalfType::F16 => unsafe { tile_of::<R, C, false>(a, w, r, c, out) },
            HalfType::Bf16 => unsafe { tile_of::<R, C, true>(a, w, r, c, out) },
        }
    }

    /// `R` rows from `r` times `C` columns from `c`: one 16-lane accumulator per element, one
    /// fma per chunk of 16; the last partial chunk is masked (its other lanes keep their value).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn tile_of<const R: usize, const C: usize, const BF: bool>(
        a: &QuantizedActs,
        w: &HalfMatrix,
        r: usize,
        c: usize,
        out: OutPtr,
    ) {
        let k = a.k;
        let xp = a.f[r * k..(r + R) * k].as_ptr();
        let wp = w.w[c * k..(c + C) * k].as_ptr();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut t = 0;
        while t < k {
            let mask: __mmask16 = if k - t >= LANES { !0 } else { (1u16 << (k - t)) - 1 };
            let mut wv = [_mm512_setzero_ps(); C];
            for j in 0..C {
                let p = wp.wrapping_add(j * k + t);
                if t % 32 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * k) as *const i8);
                }
                // SAFETY: the masked values `t..` of column `c + j` lie inside `w` (sliced above).
                wv[j] = unsafe { widen16::<BF>(p, mask) };
            }
            for i in 0..R {
                // SAFETY: the masked values `t..` of row `r + i` lie inside `a` (sliced above).
                let xv = unsafe { _mm512_maskz_loadu_ps(mask, xp.add(i * k + t)) };
                for j in 0..C {
                    acc[i][j] = _mm512_mask3_fmadd_ps(xv, wv[j], acc[i][j], mask);
                }
            }
            t += LANES;
        }
        for i in 0..R {
            for j in 0..C {
                let v = acc[i][j];
                let lo = _mm512_castps512_ps256(v);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(_mm256_add_ps(lo, hi))) };
            }
        }
    }
}
