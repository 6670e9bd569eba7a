//! Q4_1 weights (per block of 32: an f16 scale `d`, an f16 offset `m` and 32 unsigned 4-bit
//! values, `w = d·q + m`) on wick's register-tiled kernel, kept as stored: half the bytes of
//! Q8_0, which is what single-sequence decode (memory-bound) pays for.
//!
//! Per (row, column): `Σ_b m_w·s_x + Σ_b d_w·d_x·Σ q·x` with `s_x = d_x·Σ x` (ggml's
//! `vec_dot_q4_1_q8_1`), on sixteen f32 lanes (`super::PairLanes`): lane `l` of the first eight
//! takes the even blocks and of the second eight the odd ones. First the offsets: lane
//! `b mod 16` takes `fma(m_w, s_x, lane)` for block `b`, in block order. Then, block after
//! block, `fma(i32→f32(Σ q·x over values 4l..4l+4), d_w·d_x, lane)` into lane `l` of the
//! block's eight (the integer sums are exact). The result adds the halves lane by lane and
//! takes one fixed horizontal sum. The same operations run whatever tile the element falls
//! in, so rows are bit-identical whatever else shares the call. Scalar, AVX2 (two 8-lane
//! accumulators) and AVX-512 VNNI (one 16-lane accumulator: one `vpdpbusd`, one multiply and
//! one fma per pair of blocks) give the same bits; the process's `KernelLevel` picks one.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::{OutPtr, PairLanes, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Bytes of one stored ggml Q4_1 block: f16 `d`, f16 `m`, then 16 bytes of nibbles (byte `i`
/// holds value `i` in its low nibble and value `i + 16` in its high nibble).
const BLOCK_BYTES: usize = 4 + QK / 2;

/// Q4_1 weights `[n, k]`: per column, its blocks' 16 nibble bytes (ggml's order), and the
/// f16 `d` and `m` widened to f32 in arrays of their own (so the kernel broadcasts them from
/// memory instead of converting them for every tile).
#[derive(Clone)]
pub struct Q41Matrix {
    n: usize,
    k: usize,
    nibbles: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
    level: KernelLevel,
}

impl std::fmt::Debug for Q41Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q41Matrix[{}, {}]", self.n, self.k)
    }
}

impl Q41Matrix {
    /// Takes a Q4_1 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != GgmlDType::Q4_1 {
            return Err(EngineError::Load(format!("Q41Matrix needs Q4_1 weights, got {:?}", q.dtype())));
        }
        let (n, k) = q.shape().dims2()?;
        let bytes = q.data()?;
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad Q4_1 data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let blocks = n * k / QK;
        let mut nibbles = Vec::with_capacity(blocks * QK / 2);
        let (mut d, mut m) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for block in bytes.chunks_exact(BLOCK_BYTES) {
            d.push(f16::from_le_bytes([block[0], block[1]]).to_f32());
            m.push(f16::from_le_bytes([block[2], block[3]]).to_f32());
            nibbles.extend_from_slice(&block[4..]);
        }
        Ok(Self { n, k, nibbles, d, m, level: KernelLevel::current() })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.level = level;
        self
    }

    /// Column `c`'s nibbles, scales and offsets.
    fn col(&self, c: usize) -> (&[u8], &[f32], &[f32]) {
        let kb = self.k / QK;
        let bytes = kb * QK / 2;
        (&self.nibbles[c * bytes..(c + 1) * bytes], &self.d[c * kb..(c + 1) * kb], &self.m[c * kb..(c + 1) * kb])
    }
}

impl TileKernel for Q41Matrix {
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
fn dot_scalar(acts: &QuantizedActs, r: usize, (nibbles, wd, wm): (&[u8], &[f32], &[f32])) -> f32 {
    let (xq, xd) = acts.row(r);
    let kb = acts.k / QK;
    let mut acc = PairLanes::offsets(wm, 1.0, &acts.s[r * kb..(r + 1) * kb]);
    for (b, nib) in nibbles.chunks_exact(QK / 2).enumerate() {
        let scale = wd[b] * xd[b];
        let q = |i: usize| if i < QK / 2 { nib[i] & 0x0F } else { nib[i - QK / 2] >> 4 } as i32;
        let x = &xq[b * QK..(b + 1) * QK];
        for l in 0..8 {
            let s: i32 = (4 * l..4 * l + 4).map(|i| q(i) * x[i] as i32).sum();
            acc.fma(b, l, s as f32, scale);
        }
    }
    acc.finish()
}

/// # Safety
/// See `TileKernel::block`.
pub(super) unsafe fn scalar_block(
    a: &QuantizedActs,
    w: &Q41Matrix,
    rows: Range<usize>,
    cols: Range<usize>,
    out: OutPtr,
) {
    for r in rows {
        for c in cols.clone() {
            unsafe { out.write(r, c, dot_scalar(a, r, w.col(c))) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::{hsum, offsets8x2};
    use super::{OutPtr, Q41Matrix, QuantizedActs, QK};

    super::super::tile_walk!(Q41Matrix, "avx2,fma", [1, 1, 2, 4]);

    /// `R` rows from `r` times `C` columns from `c`, two 8-lane accumulators (even and odd
    /// blocks) per pair, started from the offsets.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q41Matrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = kb * QK / 2;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.nibbles[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let wd = w.d[c * kb..(c + C) * kb].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        // Lanes 0..4 keep the low nibbles (values 0..16), lanes 4..8 take the high ones.
        let shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the row's and the column's `kb` values lie inside `a.s` and `w.m`.
                acc[i][j] = unsafe { offsets8x2(&w.m[(c + j) * kb..][..kb], 1.0, &a.s[(r + i) * kb..][..kb]) };
            }
        }
        for b in 0..kb {
            for j in 0..C {
                let nib = wq.wrapping_add(j * col_bytes + b * QK / 2);
                // Weights stream from memory once per call at small M: ask for the columns
                // two tiles ahead (the address may lie past the end; prefetches of any
                // address are harmless).
                _mm_prefetch::<_MM_HINT_T0>(nib.wrapping_add(2 * C * col_bytes) as *const i8);
                // SAFETY: block `b` of column `c + j` lies inside `w` (sliced above).
                let (both, dw) = unsafe {
                    (
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(nib as *const __m128i)),
                        _mm256_set1_ps(*wd.add(j * kb + b)),
                    )
                };
                let wv = _mm256_and_si256(_mm256_srlv_epi32(both, shift), low);
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a` (sliced above).
                    let av = unsafe { _mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i) };
                    let da = unsafe { *ad.add(i * kb + b) };
                    let pairs = _mm256_maddubs_epi16(wv, av);
                    let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(da));
                    acc[i][j][b % 2] = _mm256_fmadd_ps(lanes, scale, acc[i][j][b % 2]);
                }
            }
        }
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(_mm256_add_ps(acc[i][j][0], acc[i][j][1]))) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::{fma_even, hsum_pair, offsets16, pair_scales};
    use super::{OutPtr, Q41Matrix, QuantizedActs, QK};

    super::super::tile_walk!(Q41Matrix, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", [4, 4, 4, 4]);

    /// `R` rows from `r` times `C` columns from `c`, one 16-lane accumulator per pair, started
    /// from the offsets. Blocks go in pairs: their 32 nibble bytes become `[lo(b), hi(b),
    /// lo(b+1), hi(b+1)]` (values in order), one `vpdpbusd` forms both blocks' lanes, and one
    /// fma adds them times `[d_w·d_x of b ×8, of b+1 ×8]`; an odd last block takes a 256-bit
    /// step into the even half.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q41Matrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = kb * QK / 2;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.nibbles[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let wd = w.d[c * kb..(c + C) * kb].as_ptr();
        let zero = _mm512_setzero_si512();
        let low = _mm512_set1_epi8(0x0F);
        let spread = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the row's and the column's `kb` values lie inside `a.s` and `w.m`.
                acc[i][j] = unsafe { offsets16(&w.m[(c + j) * kb..][..kb], 1.0, &a.s[(r + i) * kb..][..kb]) };
            }
        }
        let mut b = 0;
        while b + 2 <= kb {
            let mut dx = [_mm512_setzero_ps(); R];
            for i in 0..R {
                // SAFETY: blocks `b`, `b + 1` of row `r + i` lie inside `a` (sliced above).
                dx[i] = unsafe { pair_scales(ad.add(i * kb + b)) };
            }
            for j in 0..C {
                let p = wq.wrapping_add(j * col_bytes + b * QK / 2);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes) as *const i8);
                // SAFETY: blocks `b`, `b + 1` of column `c + j` lie inside `w` (sliced above).
                let (raw, dw) = unsafe { (_mm256_loadu_si256(p as *const __m256i), pair_scales(wd.add(j * kb + b))) };
                let both = _mm512_permutexvar_epi64(spread, _mm512_castsi256_si512(raw));
                let wv = _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, both, _mm512_srli_epi16(both, 4)), low);
                for i in 0..R {
                    // SAFETY: blocks `b`, `b + 1` of row `r + i` lie inside `a` (sliced above).
                    let av = unsafe { _mm512_loadu_si512(aq.add(i * k + b * QK) as *const _) };
                    let lanes = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wv, av));
                    acc[i][j] = _mm512_fmadd_ps(lanes, _mm512_mul_ps(dw, dx[i]), acc[i][j]);
                }
            }
            b += 2;
        }
        if b < kb {
            let zero = _mm256_setzero_si256();
            let low = _mm256_set1_epi8(0x0F);
            let shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
            for j in 0..C {
                let p = wq.wrapping_add(j * col_bytes + b * QK / 2);
                // SAFETY: block `b` of column `c + j` lies inside `w`.
                let (both, dw) =
                    unsafe { (_mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i)), *wd.add(j * kb + b)) };
                let wv = _mm256_and_si256(_mm256_srlv_epi32(both, shift), low);
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a`.
                    let (av, da) =
                        unsafe { (_mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i), *ad.add(i * kb + b)) };
                    let lanes = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(zero, wv, av));
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
