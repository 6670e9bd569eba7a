//! Q5_K weights (ggml's `block_q5_K`, the bulk of llama.cpp's Q5_K_M preset: per 256 values an
//! f16 `d` and `dmin`, eight 6-bit scales and mins packed as Q4_K's, 32 bytes of fifth bits and
//! 128 of low nibbles; `w = d·sc_j·q − dmin·m_j` with `q` in 0..32 in sub-block `j` of 32) on
//! wick's register-tiled kernel, at 5.75 bits per weight (the stored 5.5 plus the two f16 scales
//! widened to f32 and the 6-bit scales unpacked to bytes).
//!
//! Activations are quantized as llama.cpp pairs them with K-quants (Q8_K, `ActBlocks::Q8K`).
//! The arithmetic is Q4_K's with 5-bit `q`: per (row, column) an 8-lane accumulator takes, block
//! of 32 after block, `fma(d·sc_j·d_x, i32→f32(lane), acc)` with lane `l` the exact integer
//! `Σ q·x` over values `4l..4l+4`, and a scalar chain `fma(−dmin·m_j, d_x·Σx, msum)` in block
//! order; the result is `hsum(acc) + msum`. Scalar, AVX2 and AVX-512 VNNI (both sub-blocks of a
//! 32-byte nibble run in one `vpdpbusd`, their halves added in block order) give the same bits;
//! rows are bit-identical whatever shares the call.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::q4_k::{scale_min, QK_K};
use super::{hsum_lanes, ActBlocks, OutPtr, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Bytes of fifth bits per super-block (bit `j` of byte `l`: value `l` of sub-block `j`).
const QH_BYTES: usize = QK_K / 8;
/// Bytes kept per super-block: the fifth bits, then the nibbles as stored.
const BODY: usize = QH_BYTES + QK_K / 2;
/// Bytes of one stored block: `d`, `dmin`, 12 bytes of packed scales and mins, then `BODY`.
const BLOCK_BYTES: usize = 4 + 12 + BODY;
/// Sub-blocks (of 32 values) per super-block.
const SUBS: usize = QK_K / QK;

/// Q5_K weights `[n, k]`, per column: per super-block its fifth bits and nibbles as stored
/// (160 bytes; nibble run `i` of 32 bytes holds sub-block `2i` low, `2i + 1` high), the unpacked
/// scales and mins (one byte per sub-block), and per super-block `d` and `−dmin` as f32.
#[derive(Clone)]
pub struct Q5KMatrix {
    n: usize,
    k: usize,
    body: Vec<u8>,
    sc: Vec<u8>,
    mn: Vec<u8>,
    d: Vec<f32>,
    ndmin: Vec<f32>,
    level: KernelLevel,
}

impl std::fmt::Debug for Q5KMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q5KMatrix[{}, {}]", self.n, self.k)
    }
}

impl Q5KMatrix {
    /// Takes a Q5_K `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != GgmlDType::Q5K {
            return Err(EngineError::Load(format!("Q5KMatrix needs Q5_K weights, got {:?}", q.dtype())));
        }
        let (n, k) = q.shape().dims2()?;
        Self::from_ggml_bytes(&q.data()?, n, k)
    }

    /// Reads `n · k / 256` stored ggml Q5_K blocks.
    pub fn from_ggml_bytes(bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(QK_K) || bytes.len() != n * k / QK_K * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad Q5_K data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let blocks = n * k / QK_K;
        let mut body = Vec::with_capacity(blocks * BODY);
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
            body.extend_from_slice(&b[16..]);
        }
        Ok(Self { n, k, body, sc, mn, d, ndmin, level: KernelLevel::current() })
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

    /// Super-block `sb` of column `c`: its fifth bits and nibbles.
    #[inline(always)]
    fn superblock(&self, c: usize, sb: usize) -> &[u8] {
        let i = c * self.k / QK_K + sb;
        &self.body[i * BODY..(i + 1) * BODY]
    }
}

impl TileKernel for Q5KMatrix {
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

/// Value `l` (0..32) of sub-block `j` (0..8) of a super-block's body: the low or high nibble
/// of byte `l` of nibble run `j / 2`, and bit `j` of fifth-bit byte `l`.
fn value(body: &[u8], j: usize, l: usize) -> i32 {
    let run = &body[QH_BYTES + (j / 2) * QK..];
    let lo = if j.is_multiple_of(2) { run[l] & 0x0F } else { run[l] >> 4 };
    (lo | (((body[l] >> j) & 1) << 4)) as i32
}

/// One output element, the SIMD kernels' lanes emulated.
fn dot_scalar(a: &QuantizedActs, r: usize, w: &Q5KMatrix, c: usize) -> f32 {
    let (xq, xd) = a.row(r);
    let kb = a.k / QK;
    let sx = &a.sx[r * kb..(r + 1) * kb];
    let mut acc = [0f32; 8];
    let mut msum = 0f32;
    for b in 0..kb {
        let (dw, mw) = w.sub(c, b);
        let body = w.superblock(c, b / SUBS);
        let x = &xq[b * QK..(b + 1) * QK];
        let scale = dw * xd[b];
        for (l, lane) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * l..4 * l + 4).map(|i| value(body, b % SUBS, i) * x[i] as i32).sum();
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
    w: &Q5KMatrix,
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
fn offsets<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q5KMatrix, r: usize, c: usize) -> [[f32; C]; R] {
    let kb = a.k / QK;
    let mut msum = [[0f32; C]; R];
    for b in 0..kb {
        // Written out: `array::from_fn` is not inlined into the kernels.
        let mut mw = [0f32; C];
        for j in 0..C {
            mw[j] = w.sub(c + j, b).1;
        }
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
    use super::{OutPtr, Q5KMatrix, QuantizedActs, BODY, QH_BYTES, QK, QK_K, SUBS};

    super::super::tile_walk!(Q5KMatrix, "avx2,fma", [2, 2, 4, 4]);

    /// Sub-blocks `j` and `j + 1` (`j` even) of the super-block at `p`: their 32 values each,
    /// in order (the nibbles of run `j / 2` with fifth bits `j` and `j + 1` set on top).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pair(p: *const u8, j: usize) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi8(0x0F);
        let fifth = _mm256_set1_epi8(0x10);
        // SAFETY: the caller passes a whole super-block body.
        let (raw, qh) = unsafe {
            (
                _mm256_loadu_si256(p.add(QH_BYTES + (j / 2) * QK) as *const __m256i),
                _mm256_loadu_si256(p as *const __m256i),
            )
        };
        // Bit `j` of each byte moved to bit 0; 16-bit shifts, so only bits 0 and 1 of a byte
        // (bits `j`, `j + 1` of the stored byte) are used after the masks below.
        let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32));
        let lo = _mm256_or_si256(_mm256_and_si256(raw, low), _mm256_and_si256(_mm256_slli_epi16(h, 4), fifth));
        let hi = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(raw, 4), low),
            _mm256_and_si256(_mm256_slli_epi16(h, 3), fifth),
        );
        (lo, hi)
    }

    /// `R` rows from `r` times `C` columns from `c`: each pair of sub-blocks sharing a nibble
    /// run is added to the accumulators in block order.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q5KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / QK_K * BODY;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut b = 0;
        while b < kb {
            let (sb, jb) = (b / SUBS, b % SUBS);
            for j in 0..C {
                let p = w.superblock(c + j, sb).as_ptr();
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes + 16 * jb) as *const i8);
                // SAFETY: `p` is a whole super-block body.
                let halves = unsafe { pair(p, jb) };
                for (h, wv) in [halves.0, halves.1].into_iter().enumerate() {
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
    use super::{OutPtr, Q5KMatrix, QuantizedActs, BODY, QK, QK_K, SUBS};

    super::super::tile_walk!(Q5KMatrix, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", [4, 4, 4, 4]);

    /// `R` rows from `r` times `C` columns from `c`: a nibble run and its fifth bits become the
    /// two sub-blocks' 64 values, one `vpdpbusd` forms both blocks' lanes, and the halves are
    /// added to the accumulator in block order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q5KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / QK_K * BODY;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut b = 0;
        while b < kb {
            let (sb, jb) = (b / SUBS, b % SUBS);
            for j in 0..C {
                let p = w.superblock(c + j, sb).as_ptr();
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes + 16 * jb) as *const i8);
                // SAFETY: `p` is a whole super-block body.
                let (lo, hi) = unsafe { super::avx2::pair(p, jb) };
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
