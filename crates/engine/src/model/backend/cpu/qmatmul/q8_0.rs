//! Q8_0 weights (one f16 scale and 32 int8 values per block) on wick's register-tiled kernel.
//! Per (row, column, block) this is candle's AVX2 `vec_dot_q8_0_q8_0` step for step, so
//! results are bit-identical to candle's Q8_0 `QMatMul` on AVX2 machines; the scalar fallback
//! emulates the same lanes and gives the same bits too.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::{has_avx2_fma, hsum_lanes, OutPtr, QuantizedActs, TileKernel, QK};
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
        Ok(Self { n, k, qs, d })
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
        if has_avx2_fma() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA were detected; the caller's contract covers the ranges.
            unsafe {
                avx2::block(acts, self, rows, cols, out)
            };
        } else {
            // SAFETY: the caller's contract.
            unsafe { scalar_block(acts, self, rows, cols, out) };
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

    super::super::tile_walk!(Q8Matrix);

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
