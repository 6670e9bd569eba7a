//! Q8_0 weights (one f16 scale and 32 int8 values per block) on wick's register-tiled kernel.
//! Per (row, column) sixteen f32 lanes (`super::PairLanes`): block `b`'s lane `l` is the exact
//! integer `Σ x·w` over values `4l..4l+4`, and lane `l` of the even blocks' eight (or the odd
//! blocks') takes `fma(lane, d_w·d_x, acc)`; the halves are added lane by lane and one fixed
//! horizontal sum ends it. Three implementations give the same bits: scalar (the lanes
//! emulated), AVX2 (two 8-lane accumulators) and AVX-512 VNNI (one `vpdpbusd`, one multiply
//! and one 16-lane fma per pair of blocks), chosen by the process's `KernelLevel`.

use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::{OutPtr, PairLanes, QuantizedActs, TileKernel, QK};
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
    /// Shared by clones: a tied embedding reads its rows from the LM head's matrix. (`Arc` of
    /// a `Vec`, not of a slice: wrapping the built vector then costs no copy of the table.)
    pub(crate) qs: Arc<Vec<i8>>,
    pub(crate) d: Arc<Vec<f32>>,
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
        Ok(Self { n, k, qs: Arc::new(qs), d: Arc::new(d), level: KernelLevel::current() })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.level = level;
        self
    }

    /// Appends weight row `r` (output column `r`), dequantized as candle does (`q · d`);
    /// `None` if there is no such row.
    pub fn append_row(&self, r: usize, out: &mut Vec<f32>) -> Option<()> {
        if r >= self.n {
            return None;
        }
        let (qs, d) = self.col(r);
        out.extend(qs.chunks_exact(QK).zip(d).flat_map(|(b, &d)| b.iter().map(move |&q| q as f32 * d)));
        Some(())
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

/// One output element, the SIMD kernels' lanes emulated.
fn dot_scalar(a: (&[i8], &[f32]), w: (&[i8], &[f32])) -> f32 {
    let mut acc = PairLanes::zero();
    for (b, (&da, &dw)) in a.1.iter().zip(w.1).enumerate() {
        let scale = dw * da;
        let (xa, xw) = (&a.0[b * QK..(b + 1) * QK], &w.0[b * QK..(b + 1) * QK]);
        for l in 0..8 {
            let s: i32 = (4 * l..4 * l + 4).map(|i| xa[i] as i32 * xw[i] as i32).sum();
            acc.fma(b, l, s as f32, scale);
        }
    }
    acc.finish()
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

    super::super::tile_walk!(Q8Matrix, "avx2,fma", [1, 1, 2, 4]);

    /// `R` rows from `r` times `C` columns from `c`, two 8-lane accumulators (even and odd
    /// blocks) per pair.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q8Matrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.qs[c * k..(c + C) * k].as_ptr();
        let wd = w.d[c * kb..(c + C) * kb].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
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
                    acc[i][j][b % 2] = _mm256_fmadd_ps(lanes, scale, acc[i][j][b % 2]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, &[even, odd]) in row.iter().enumerate() {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(_mm256_add_ps(even, odd))) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::{fma_even, hsum_pair, pair_scales};
    use super::{OutPtr, Q8Matrix, QuantizedActs, QK};

    super::super::tile_walk!(Q8Matrix, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", [4, 4, 4, 4]);

    /// `R` rows from `r` times `C` columns from `c`, one 16-lane accumulator per pair. Blocks
    /// go in pairs: one `vpdpbusd` forms both blocks' lanes (|w| times x with w's sign, as
    /// AVX2's `sign`/`maddubs`/`madd` do), and one fma adds them times `[d_w·d_x of b ×8, of
    /// b+1 ×8]`; an odd last block takes a 256-bit step into the even half.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q8Matrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.qs[c * k..(c + C) * k].as_ptr();
        let wd = w.d[c * kb..(c + C) * kb].as_ptr();
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut b = 0;
        while b + 2 <= kb {
            let mut dx = [_mm512_setzero_ps(); R];
            for i in 0..R {
                // SAFETY: blocks `b`, `b + 1` of row `r + i` lie inside `a` (sliced above).
                dx[i] = unsafe { pair_scales(ad.add(i * kb + b)) };
            }
            for j in 0..C {
                let p = wq.wrapping_add(j * k + b * QK);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * k));
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * k + 63));
                // SAFETY: blocks `b`, `b + 1` of column `c + j` lie inside `w` (sliced above).
                let (wv, dw) = unsafe { (_mm512_loadu_si512(p as *const _), pair_scales(wd.add(j * kb + b))) };
                let wabs = _mm512_abs_epi8(wv);
                let neg = _mm512_movepi8_mask(wv);
                for i in 0..R {
                    // SAFETY: blocks `b`, `b + 1` of row `r + i` lie inside `a` (sliced above).
                    let av = unsafe { _mm512_loadu_si512(aq.add(i * k + b * QK) as *const _) };
                    let signed = _mm512_mask_sub_epi8(av, neg, zero, av);
                    let lanes = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wabs, signed));
                    acc[i][j] = _mm512_fmadd_ps(lanes, _mm512_mul_ps(dw, dx[i]), acc[i][j]);
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
                    acc[i][j] = fma_even(acc[i][j], lanes, dw * da);
                }
            }
        }
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum_pair(acc[i][j])) };
            }
        }
    }
}
