//! Float weights (F32, F16 and BF16: float GGUF files, Hugging Face folders, BERT encoders) on
//! wick's register-tiled kernel, kept at their stored width, with f32 activations and an f32
//! accumulate.
//!
//! The 16-bit types widen to f32 exactly (F16 by `vcvtph2ps` / F16C, BF16 by a 16-bit shift), so the
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

/// Which float a [`FloatMatrix`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    Bf16,
    /// IEEE binary32.
    F32,
}

/// `FloatType` as a const generic of the tiles.
const TY_F16: u8 = 0;
const TY_BF16: u8 = 1;
const TY_F32: u8 = 2;

impl FloatType {
    /// The type of a GGUF tensor, if it is a 16-bit float.
    pub fn of_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::F16 => Some(FloatType::F16),
            GgmlDType::BF16 => Some(FloatType::Bf16),
            _ => None,
        }
    }

    /// The type of a candle tensor, if it is a 16-bit float.
    pub fn of_dtype(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F16 => Some(FloatType::F16),
            DType::BF16 => Some(FloatType::Bf16),
            _ => None,
        }
    }
}

/// Float weights `[n, k]`, row-major: the bits of 16-bit floats in `w`, or f32 values in `w32`
/// (the other one empty).
#[derive(Clone)]
pub struct FloatMatrix {
    n: usize,
    k: usize,
    w: Vec<u16>,
    w32: Vec<f32>,
    ty: FloatType,
    level: KernelLevel,
}

impl std::fmt::Debug for FloatMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FloatMatrix[{:?}, {}, {}]", self.ty, self.n, self.k)
    }
}

impl FloatMatrix {
    /// `n · k` values of the 16-bit type `ty`, row-major.
    pub fn new(ty: FloatType, w: Vec<u16>, n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k || k == 0 || ty == FloatType::F32 {
            return Err(EngineError::Load(format!("{} {ty:?} values for [{n}, {k}]", w.len())));
        }
        Ok(Self { n, k, w, w32: Vec::new(), ty, level: KernelLevel::current() })
    }

    /// `n · k` f32 values, row-major.
    pub fn from_f32(w: Vec<f32>, n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k || k == 0 {
            return Err(EngineError::Load(format!("{} F32 values for [{n}, {k}]", w.len())));
        }
        Ok(Self { n, k, w: Vec::new(), w32: w, ty: FloatType::F32, level: KernelLevel::current() })
    }

    /// Weight `i` (row-major) as f32, exactly.
    #[inline(always)]
    fn value(&self, i: usize) -> f32 {
        match self.ty {
            FloatType::F16 => half::f16::from_bits(self.w[i]).to_f32(),
            FloatType::Bf16 => f32::from_bits((self.w[i] as u32) << 16),
            FloatType::F32 => self.w32[i],
        }
    }

    /// Bytes per weight.
    fn width(&self) -> usize {
        if self.ty == FloatType::F32 {
            4
        } else {
            2
        }
    }

    /// The first weight of column (output) `c`, as bytes: columns `c..c + cols` follow it.
    fn column_ptr(&self, c: usize, cols: usize) -> *const u8 {
        let (at, len) = (c * self.k, cols * self.k);
        if self.ty == FloatType::F32 {
            self.w32[at..at + len].as_ptr() as *const u8
        } else {
            self.w[at..at + len].as_ptr() as *const u8
        }
    }

    /// The bits of an F16 or BF16 GGUF tensor `[n, k]`, if it is one.
    pub fn bits_of_qtensor(q: &QTensor) -> Result<Option<(FloatType, Vec<u16>)>> {
        let Some(ty) = FloatType::of_ggml(q.dtype()) else { return Ok(None) };
        let bytes = q.data()?;
        Ok(Some((ty, bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect())))
    }

    /// The bits of an F16 or BF16 tensor, if it is one.
    pub fn bits_of_tensor(t: &Tensor) -> Result<Option<(FloatType, Vec<u16>)>> {
        let Some(ty) = FloatType::of_dtype(t.dtype()) else { return Ok(None) };
        let flat = t.flatten_all()?;
        let bits: Vec<u16> = match ty {
            FloatType::F16 => flat.to_vec1::<half::f16>()?.into_iter().map(|v| v.to_bits()).collect(),
            FloatType::Bf16 => flat.to_vec1::<half::bf16>()?.into_iter().map(|v| v.to_bits()).collect(),
            FloatType::F32 => return Ok(None),
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

impl TileKernel for FloatMatrix {
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
fn dot_scalar(a: &QuantizedActs, r: usize, w: &FloatMatrix, c: usize) -> f32 {
    let k = a.k;
    let x = &a.f[r * k..(r + 1) * k];
    let mut acc = [0f32; LANES];
    for (t, xs) in x.chunks(LANES).enumerate() {
        for (l, (lane, &xv)) in acc.iter_mut().zip(xs).enumerate() {
            *lane = xv.mul_add(w.value(c * k + t * LANES + l), *lane);
        }
    }
    reduce(&acc)
}

/// # Safety
/// See `TileKernel::block`.
pub(super) unsafe fn scalar_block(
    a: &QuantizedActs,
    w: &FloatMatrix,
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
    w: &FloatMatrix,
    r: usize,
    c: usize,
    at: usize,
    acc: &mut [[[f32; LANES]; C]; R],
) {
    let k = a.k;
    for i in 0..R {
        for j in 0..C {
            for l in 0..k - at {
                let (xv, wv) = (a.f[(r + i) * k + at + l], w.value((c + j) * k + at + l));
                acc[i][j][l] = xv.mul_add(wv, acc[i][j][l]);
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
    use super::{FloatMatrix, FloatType, OutPtr, QuantizedActs, LANES, TY_BF16, TY_F16, TY_F32};

    super::super::tile_walk!(FloatMatrix, "avx2,fma,f16c", [1, 2, 2, 4]);

    /// Eight weights of type `TY` at `p` widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen8<const TY: u8>(p: *const u8) -> __m256 {
        // SAFETY: the caller passes 8 readable values.
        unsafe {
            if TY == TY_F32 {
                return _mm256_loadu_ps(p as *const f32);
            }
            let v = _mm_loadu_si128(p as *const __m128i);
            if TY == TY_BF16 {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
            } else {
                _mm256_cvtph_ps(v)
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(
        a: &QuantizedActs,
        w: &FloatMatrix,
        r: usize,
        c: usize,
        out: OutPtr,
    ) {
        match w.ty {
            // SAFETY: the caller's contract.
            FloatType::F16 => unsafe { tile_of::<R, C, TY_F16>(a, w, r, c, out) },
            FloatType::Bf16 => unsafe { tile_of::<R, C, TY_BF16>(a, w, r, c, out) },
            FloatType::F32 => unsafe { tile_of::<R, C, TY_F32>(a, w, r, c, out) },
        }
    }

    /// `R` rows from `r` times `C` columns from `c`: per element two 8-lane accumulators
    /// (lanes 0..8 and 8..16), one fma each per chunk of 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_of<const R: usize, const C: usize, const TY: u8>(
        a: &QuantizedActs,
        w: &FloatMatrix,
        r: usize,
        c: usize,
        out: OutPtr,
    ) {
        let k = a.k;
        let xp = a.f[r * k..(r + R) * k].as_ptr();
        let (wp, width) = (w.column_ptr(c, C), w.width());
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let whole = k / LANES * LANES;
        let mut t = 0;
        while t < whole {
            for h in 0..2 {
                let mut wv = [_mm256_setzero_ps(); C];
                for j in 0..C {
                    let p = wp.wrapping_add((j * k + t + 8 * h) * width);
                    if h == 0 && t % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * k * width) as *const i8);
                    }
                    // SAFETY: values `t..t + 16` of column `c + j` lie inside `w` (sliced above).
                    wv[j] = unsafe { widen8::<TY>(p) };
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
    use super::{FloatMatrix, FloatType, OutPtr, QuantizedActs, LANES, TY_BF16, TY_F16, TY_F32};

    super::super::tile_walk!(FloatMatrix, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", [4, 4, 8, 8]);

    /// Sixteen weights of type `TY` at `p` (the first `mask` of them; the rest read as zero)
    /// widened to f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn widen16<const TY: u8>(p: *const u8, mask: __mmask16) -> __m512 {
        // SAFETY: the caller passes the values `mask` selects readable.
        unsafe {
            if TY == TY_F32 {
                return _mm512_maskz_loadu_ps(mask, p as *const f32);
            }
            let v = _mm256_maskz_loadu_epi16(mask, p as *const i16);
            if TY == TY_BF16 {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16))
            } else {
                _mm512_cvtph_ps(v)
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(
        a: &QuantizedActs,
        w: &FloatMatrix,
        r: usize,
        c: usize,
        out: OutPtr,
    ) {
        match w.ty {
            // SAFETY: the caller's contract.
            FloatType::F16 => unsafe { tile_of::<R, C, TY_F16>(a, w, r, c, out) },
            FloatType::Bf16 => unsafe { tile_of::<R, C, TY_BF16>(a, w, r, c, out) },
            FloatType::F32 => unsafe { tile_of::<R, C, TY_F32>(a, w, r, c, out) },
        }
    }

    /// `R` rows from `r` times `C` columns from `c`: one 16-lane accumulator per element, one
    /// fma per chunk of 16; the last partial chunk is masked (its other lanes keep their value).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn tile_of<const R: usize, const C: usize, const TY: u8>(
        a: &QuantizedActs,
        w: &FloatMatrix,
        r: usize,
        c: usize,
        out: OutPtr,
    ) {
        let k = a.k;
        let xp = a.f[r * k..(r + R) * k].as_ptr();
        let (wp, width) = (w.column_ptr(c, C), w.width());
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut t = 0;
        while t < k {
            let mask: __mmask16 = if k - t >= LANES { !0 } else { (1u16 << (k - t)) - 1 };
            let mut wv = [_mm512_setzero_ps(); C];
            for j in 0..C {
                let p = wp.wrapping_add((j * k + t) * width);
                if t % 32 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * k * width) as *const i8);
                }
                // SAFETY: the masked values `t..` of column `c + j` lie inside `w` (sliced above).
                wv[j] = unsafe { widen16::<TY>(p, mask) };
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
