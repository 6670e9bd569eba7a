//! Q4_K weights (ggml's `block_q4_K`: per 256 values an f16 `d` and `dmin`, eight 6-bit
//! scales and mins, and 4-bit values; `w = d·sc_j·q − dmin·m_j` in sub-block `j` of 32) on
//! wick's register-tiled kernel, at 4.75 bits per weight (the stored 4.5 plus the two f16
//! scales widened to f32 and the 6-bit scales unpacked to bytes).
//!
//! Activations are quantized as llama.cpp pairs them with K-quants (Q8_K: one f32 scale per
//! 256 values, `ActBlocks::Q8K`). A sub-block has Q4_1's form (`w = d'·q + m'` with
//! `d' = d·sc_j` and `m' = −dmin·m_j`, both exact in f32), and takes Q4_1's arithmetic against
//! the activations' 32-value blocks:
//! per (row, column) an 8-lane accumulator takes, block after block,
//! `fma(d'·d_x, i32→f32(lane), acc)` with lane `j` the exact integer `Σ q·x` over values
//! `4j..4j+4`, and a scalar chain `fma(m', d_x·Σx, msum)` in block order; the result is
//! `hsum(acc) + msum`. Scalar, AVX2 and AVX-512 VNNI (both sub-blocks of a 32-byte nibble run
//! in one `vpdpbusd`, their halves added in block order) give the same bits; rows are
//! bit-identical whatever shares the call.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::{hsum_lanes, ActBlocks, OutPtr, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes of one stored block: `d`, `dmin`, 12 bytes of packed scales and mins, 128 of nibbles.
const BLOCK_BYTES: usize = 4 + 12 + QK_K / 2;
/// Sub-blocks (of 32 values) per super-block.
const SUBS: usize = QK_K / QK;

/// Q4_K weights `[n, k]`, per column: its nibbles as stored (per super-block 4 runs of 32
/// bytes, low nibbles sub-block `2i`, high ones `2i + 1`), the unpacked scales and mins (one
/// byte per sub-block), and per super-block `d` and `−dmin` as f32.
#[derive(Clone)]
pub struct Q4KMatrix {
    n: usize,
    k: usize,
    qs: Vec<u8>,
    sc: Vec<u8>,
    mn: Vec<u8>,
    d: Vec<f32>,
    ndmin: Vec<f32>,
    level: KernelLevel,
}

impl std::fmt::Debug for Q4KMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q4KMatrix[{}, {}]", self.n, self.k)
    }
}

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min from the 12 packed bytes.
pub(super) fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

impl Q4KMatrix {
    /// Takes a Q4_K `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != GgmlDType::Q4K {
            return Err(EngineError::Load(format!("Q4KMatrix needs Q4_K weights, got {:?}", q.dtype())));
        }
        let (n, k) = q.shape().dims2()?;
        Self::from_ggml_bytes(&q.data()?, n, k)
    }

    /// Reads `n · k / 256` stored ggml Q4_K blocks.
    pub fn from_ggml_bytes(bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(QK_K) || bytes.len() != n * k / QK_K * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad Q4_K data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let blocks = n * k / QK_K;
        let mut qs = Vec::with_capacity(blocks * QK_K / 2);
        let (mut sc, mut mn) = (Vec::with_capacity(blocks * SUBS), Vec::with_capacity(blocks * SUBS));
        let (mut d, mut ndmin) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for b in bytes.chunks_exact(BLOCK_BYTES) {
            d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
            ndmin.push(-f16::from_le_bytes([b[2], b[3]]).to_f32());
            for j in 0..SUBS {
                let (s, m) = scale_min(j, &b[4..16]);
                sc.push(s);
                mn.push(m);
            }
            qs.extend_from_slice(&b[16..]);
        }
        Ok(Self { n, k, qs, sc, mn, d, ndmin, level: KernelLevel::current() })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.level = level;
        self
    }

    /// Sub-block `b` (of the column's `k / 32`) of column `c`: its scale `d·sc` and offset
    /// `−dmin·m`, both exact.
    #[inline(always)]
    fn sub(&self, c: usize, b: usize) -> (f32, f32) {
        let (kb, sb) = (self.k / QK, c * self.k / QK_K + b / SUBS);
        (self.d[sb] * self.sc[c * kb + b] as f32, self.ndmin[sb] * self.mn[c * kb + b] as f32)
    }
}

impl TileKernel for Q4KMatrix {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn act_blocks(&self) -> ActBlocks {
        ActBlocks::Q8K
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
fn dot_scalar(a: &QuantizedActs, r: usize, w: &Q4KMatrix, c: usize) -> f32 {
    let (xq, xd) = a.row(r);
    let kb = a.k / QK;
    let sx = &a.sx[r * kb..(r + 1) * kb];
    let col = &w.qs[c * a.k / 2..(c + 1) * a.k / 2];
    let mut acc = [0f32; 8];
    let mut msum = 0f32;
    for b in 0..kb {
        let (dw, mw) = w.sub(c, b);
        let run = &col[(b / 2) * QK..(b / 2 + 1) * QK];
        let q = |i: usize| if b % 2 == 0 { run[i] & 0x0F } else { run[i] >> 4 } as i32;
        let x = &xq[b * QK..(b + 1) * QK];
        let scale = dw * xd[b];
        for (j, lane) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * j..4 * j + 4).map(|i| q(i) * x[i] as i32).sum();
            *lane = (s as f32).mul_add(scale, *lane);
        }
        msum = mw.mul_add(sx[b], msum);
    }
    hsum_lanes(&acc) + msum
}

/// # Safety
/// See `TileKernel::block`.
pub(super) unsafe fn scalar_block(
    a: &QuantizedActs,
    w: &Q4KMatrix,
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

/// `Σ_b m'·sx` for a tile: one fma chain per element in block order, as `dot_scalar`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn offsets<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q4KMatrix, r: usize, c: usize) -> [[f32; C]; R] {
    let kb = a.k / QK;
    let mut msum = [[0f32; C]; R];
    for b in 0..kb {
        let mw: [f32; C] = std::array::from_fn(|j| w.sub(c + j, b).1);
        for i in 0..R {
            let sx = a.sx[(r + i) * kb + b];
            for j in 0..C {
                msum[i][j] = mw[j].mul_add(sx, msum[i][j]);
            }
        }
    }
    msum
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::hsum;
    use super::{OutPtr, Q4KMatrix, QuantizedActs, QK};

    super::super::tile_walk!(Q4KMatrix, "avx2,fma", [2, 2, 4, 4]);

    /// `R` rows from `r` times `C` columns from `c`: each 32-byte nibble run gives two
    /// sub-blocks (low nibbles, then high), added to the accumulators in block order.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q4KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / 2;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.qs[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut b = 0;
        while b < kb {
            for j in 0..C {
                let p = wq.wrapping_add(j * col_bytes + b * QK / 2);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes) as *const i8);
                // SAFETY: blocks `b`, `b + 1` of column `c + j` lie inside `w` (sliced above).
                let raw = unsafe { _mm256_loadu_si256(p as *const __m256i) };
                let halves = [_mm256_and_si256(raw, low), _mm256_and_si256(_mm256_srli_epi16(raw, 4), low)];
                for (h, wv) in halves.into_iter().enumerate() {
                    let dw = w.sub(c + j, b + h).0;
                    for i in 0..R {
                        // SAFETY: block `b + h` of row `r + i` lies inside `a` (sliced above).
                        let (av, da) = unsafe {
                            (
                                _mm256_loadu_si256(aq.add(i * k + (b + h) * QK) as *const __m256i),
                                *ad.add(i * kb + b + h),
                            )
                        };
                        let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(wv, av)));
                        acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), lanes, acc[i][j]);
                    }
                }
            }
            b += 2;
        }
        let msum = super::offsets::<R, C>(a, w, r, c);
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(acc[i][j]) + msum[i][j]) };
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
    use super::{OutPtr, Q4KMatrix, QuantizedActs, QK};

    super::super::tile_walk!(Q4KMatrix, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", [4, 4, 4, 4]);

    /// `R` rows from `r` times `C` columns from `c`: a 32-byte nibble run becomes the two
    /// sub-blocks' 64 values, one `vpdpbusd` forms both blocks' lanes, and the halves are
    /// added to the accumulator in block order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q4KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / 2;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.qs[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let zero = _mm512_setzero_si512();
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut b = 0;
        while b < kb {
            for j in 0..C {
                let p = wq.wrapping_add(j * col_bytes + b * QK / 2);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes) as *const i8);
                // SAFETY: blocks `b`, `b + 1` of column `c + j` lie inside `w` (sliced above).
                let raw = unsafe { _mm256_loadu_si256(p as *const __m256i) };
                let lo = _mm256_and_si256(raw, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                let wv = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let (dw0, dw1) = (w.sub(c + j, b).0, w.sub(c + j, b + 1).0);
                for i in 0..R {
                    // SAFETY: blocks `b`, `b + 1` of row `r + i` lie inside `a` (sliced above).
                    let (av, da0, da1) = unsafe {
                        (
                            _mm512_loadu_si512(aq.add(i * k + b * QK) as *const _),
                            *ad.add(i * kb + b),
                            *ad.add(i * kb + b + 1),
                        )
                    };
                    let lanes = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wv, av));
                    let l0 = _mm512_castps512_ps256(lanes);
                    let l1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lanes), 1));
                    let x = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * da0), l0, acc[i][j]);
                    acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw1 * da1), l1, x);
                }
            }
            b += 2;
        }
        let msum = super::offsets::<R, C>(a, w, r, c);
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(acc[i][j]) + msum[i][j]) };
            }
        }
    }
}
