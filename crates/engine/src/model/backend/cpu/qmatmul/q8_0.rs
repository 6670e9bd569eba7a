//! Q8_0 weights (one f16 scale and 32 int8 values per block) on wick's register-tiled kernel.
//! Per (row, column, block) this is candle's AVX2 `vec_dot_q8_0_q8_0` step for step, so
//! results are bit-identical to candle's Q8_0 `QMatMul` on AVX2 machines. Three
//! implementations give the same bits: scalar (the lanes emulated), AVX2, and AVX-512 VNNI
//! (two blocks per `vpdpbusd`, their 8-lane halves added to the accumulator one block after
//! the other, in order), chosen by the process's `KernelLevel`.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::{hsum_lanes, OutPtr, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Bytes of one stored ggml Q8_0 block: an f16 scale then 32 int8 values.
const BLOCK_BYTES: usize = 2 + QK;

/// Q8_0 weights `[n, k]`, held as int8 values (row-major) and per-block f32 scales (the f16
/// scales widened once at load).
#[derive(Clone)]
pub struct Q8Matrix {
    n: usize,
    k: usize,
    pub(super) qs: Vec<i8>,
    pub(super) d: Vec<f32>,
    level: KernelLevel,
}

impl std::fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8Matrix[{}, {}]", self.n, self.k)
    }
}

impl Q8Matrix {
    /// Takes a Q8_0 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != GgmlDType::Q8_0 {
            return Err(EngineError::Load(format!("Q8Matrix needs Q8_0 weights, got {:?}", q.dtype())));
        }
        let (n, k) = q.shape().dims2()?;
        Self::from_ggml_bytes(&q.data()?, n, k)
    }

    /// Reads `n · k / 32` ggml Q8_0 blocks (`{ d: f16, qs: [i8; 32] }`, packed).
    pub fn from_ggml_bytes(bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad Q8_0 data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let mut qs = Vec::with_capacity(n * k);
        let mut d = Vec::with_capacity(n * k / QK);
        for block in bytes.chunks_exact(BLOCK_BYTES) {
            d.push(f16::from_le_bytes([block[0], block[1]]).to_f32());
            qs.extend(block[2..].iter().map(|&b| b as i8));
        }
        Ok(Self { n, k, qs, d, level: KernelLevel::current() })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.level = level;
        self
    }

    fn col(&self, c: usize) -> (&[i8], &[f32]) {
        let kb = self.k / QK;
        (&self.qs[c * self.k..(c + 1) * self.k], &self.d[c * kb..(c + 1) * kb])
    }
}

impl TileKernel for Q8Matrix {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
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

/// One output element, emulating the AVX2 kernel lane for lane: lane `j` of block `b` holds
/// the exact integer `Σ x·w` over values `4j..4j+4`, accumulated as `fma(d_w·d_x, lane, acc)`,
/// then the same horizontal sum as `hsum_float_8`.
fn dot_scalar(a: (&[i8], &[f32]), w: (&[i8], &[f32])) -> f32 {
    let mut acc = [0f32; 8];
    for (b, (&da, &dw)) in a.1.iter().zip(w.1).enumerate() {
        let scale = dw * da;
        let (xa, xw) = (&a.0[b * QK..(b + 1) * QK], &w.0[b * QK..(b + 1) * QK]);
        for (j, lane) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * j..4 * j + 4).map(|i| xa[i] as i32 * xw[i] as i32).sum();
            *lane = (s as f32).mul_add(scale, *lane);
        }
    }
    hsum_lanes(&acc)
}

/// # Safety
/// See `TileKernel::block`.
pub(super) unsafe fn scalar_block(
    a: &QuantizedActs,
    w: &Q8Matrix,
    rows: Range<usize>,
    cols: Range<usize>,
    out: OutPtr,
) {
    for r in rows {
        for c in cols.clone() {
            unsafe { out.write(r, c, dot_scalar(a.row(r), w.col(c))) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::hsum;
    use super::{OutPtr, Q8Matrix, QuantizedActs, QK};

    super::super::tile_walk!(Q8Matrix, "avx2,fma", [2, 2, 4, 4]);

    /// `R` rows from `r` times `C` columns from `c`, one 8-lane accumulator per pair.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q8Matrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.qs[c * k..(c + C) * k].as_ptr();
        let wd = w.d[c * kb..(c + C) * kb].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..kb {
            for j in 0..C {
                // SAFETY: block `b` of column `c + j` lies inside `w` (sliced above).
                let wv = unsafe { _mm256_loadu_si256(wq.add(j * k + b * QK) as *const __m256i) };
                // Weights stream from memory once per call at small M: ask for the
                // columns two tiles ahead (the address may lie past the end; prefetches of
                // any address are harmless).
                _mm_prefetch::<_MM_HINT_T0>(wq.wrapping_add(2 * C * k + j * k + b * QK));
                let wabs = _mm256_sign_epi8(wv, wv);
                let dw = _mm256_set1_ps(unsafe { *wd.add(j * kb + b) });
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a` (sliced above).
                    let av = unsafe { _mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i) };
                    let da = unsafe { *ad.add(i * kb + b) };
                    let signed = _mm256_sign_epi8(av, wv);
                    let pairs = _mm256_maddubs_epi16(wabs, signed);
                    let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(da));
                    acc[i][j] = _mm256_fmadd_ps(scale, lanes, acc[i][j]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(v)) };
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
    use super::{OutPtr, Q8Matrix, QuantizedActs, QK};

    super::super::tile_walk!(Q8Matrix, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", [4, 4, 4, 4]);

    /// `R` rows from `r` times `C` columns from `c`. Blocks go in pairs: one `vpdpbusd` forms
    /// both blocks' 8 lane sums (|w| times x with w's sign, as AVX2's `sign`/`maddubs`/`madd`
    /// do), then the two halves are added to the 8-lane accumulator in block order; an odd
    /// last block takes a 256-bit step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q8Matrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.qs[c * k..(c + C) * k].as_ptr();
        let wd = w.d[c * kb..(c + C) * kb].as_ptr();
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut b = 0;
        while b + 2 <= kb {
            for j in 0..C {
                let p = wq.wrapping_add(j * k + b * QK);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * k));
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * k + 63));
                // SAFETY: blocks `b`, `b + 1` of column `c + j` lie inside `w` (sliced above).
                let (wv, dw0, dw1) =
                    unsafe { (_mm512_loadu_si512(p as *const _), *wd.add(j * kb + b), *wd.add(j * kb + b + 1)) };
                let wabs = _mm512_abs_epi8(wv);
                let neg = _mm512_movepi8_mask(wv);
                for i in 0..R {
                    // SAFETY: blocks `b`, `b + 1` of row `r + i` lie inside `a` (sliced above).
                    let (av, da0, da1) = unsafe {
                        (
                            _mm512_loadu_si512(aq.add(i * k + b * QK) as *const _),
                            *ad.add(i * kb + b),
                            *ad.add(i * kb + b + 1),
                        )
                    };
                    let signed = _mm512_mask_sub_epi8(av, neg, zero, av);
                    let lanes = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wabs, signed));
                    let lo = _mm512_castps512_ps256(lanes);
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lanes), 1));
                    let x = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * da0), lo, acc[i][j]);
                    acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw1 * da1), hi, x);
                }
            }
            b += 2;
        }
        if b < kb {
            let zero = _mm256_setzero_si256();
            for j in 0..C {
                // SAFETY: block `b` of column `c + j` lies inside `w`.
                let (wv, dw) =
                    unsafe { (_mm256_loadu_si256(wq.add(j * k + b * QK) as *const __m256i), *wd.add(j * kb + b)) };
                let wabs = _mm256_sign_epi8(wv, wv);
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a`.
                    let (av, da) =
                        unsafe { (_mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i), *ad.add(i * kb + b)) };
                    let lanes = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(zero, wabs, _mm256_sign_epi8(av, wv)));
                    acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), lanes, acc[i][j]);
                }
            }
        }
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(acc[i][j])) };
            }
        }
    }
}
