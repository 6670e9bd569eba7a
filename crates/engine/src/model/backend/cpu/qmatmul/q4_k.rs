//! Q4_K weights (ggml's `block_q4_K`: per 256 values an f16 `d` and `dmin`, eight 6-bit
//! scales and mins, and 4-bit values; `w = d·sc_j·q − dmin·m_j` in sub-block `j` of 32) on
//! wick's register-tiled kernel, at 4.75 bits per weight (the stored 4.5 plus the two f16
//! scales widened to f32 and the 6-bit scales unpacked to bytes).
//!
//! Activations are quantized as llama.cpp pairs them with K-quants (Q8_K: one f32 scale `d_x`
//! per 256 values, `ActBlocks::Q8K`), and the arithmetic follows llama.cpp's: within a
//! super-block everything is integer. Per (row, column) and super-block, eight int32 lanes take
//! `sc_j · Σ q·x` (lane `l` over values `4l..4l+4` of each sub-block `j`), exact, and the
//! products `m_j · Σx_j` of the sub-blocks' mins, exact; then the float steps, in super-block
//! order: an 8-lane f32 accumulator takes `fma(f32(lane), d·d_x, acc)` and another, lane `j`,
//! `fma(m_j · Σx_j, −dmin·d_x, macc)`; the result is `hsum(acc) + hsum(macc)`. Integer sums do not
//! depend on their order, so scalar and AVX2 (`vpmaddubsw`, then `vpmaddwd` by the scale)
//! give the same bits; rows are bit-identical whatever shares the call. The AVX-512 level runs
//! the AVX2 tile: the same on 64 values at a time measured slower on Zen 4, whose AVX-512 runs
//! as two 256-bit halves.

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

    /// Super-block `s` (of the column's `k / 256`) of column `c`: its `d` and `−dmin`.
    #[inline(always)]
    fn superblock(&self, c: usize, s: usize) -> (f32, f32) {
        let sb = c * self.k / QK_K + s;
        (self.d[sb], self.ndmin[sb])
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
            // The AVX2 tile at the AVX-512 level too (see the module header): pp512 60 vs 77
            // tok/s and tg128 20 vs 25 on a 1B Q4_K_M model with the 512-bit form.
            KernelLevel::Avx512 => unsafe { avx2::block(acts, self, rows, cols, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unsafe { scalar_block(acts, self, rows, cols, out) },
        }
    }
}

/// One output element, the SIMD kernels' integer sums and float steps emulated.
fn dot_scalar(a: &QuantizedActs, r: usize, w: &Q4KMatrix, c: usize) -> f32 {
    let (xq, xd) = a.row(r);
    let kb = a.k / QK;
    let xs = &a.s[r * kb..(r + 1) * kb];
    let col = &w.qs[c * a.k / 2..(c + 1) * a.k / 2];
    let mut acc = [0f32; 8];
    let mut macc = [0f32; 8];
    for s in 0..a.k / QK_K {
        let mut sumi = [0i32; 8];
        for b in s * SUBS..(s + 1) * SUBS {
            let run = &col[(b / 2) * QK..(b / 2 + 1) * QK];
            let q = |i: usize| if b % 2 == 0 { run[i] & 0x0F } else { run[i] >> 4 } as i32;
            let x = &xq[b * QK..(b + 1) * QK];
            let sc = w.sc[c * kb + b] as i32;
            for (j, lane) in sumi.iter_mut().enumerate() {
                *lane += sc * (4 * j..4 * j + 4).map(|i| q(i) * x[i] as i32).sum::<i32>();
            }
        }
        let (dw, nm) = w.superblock(c, s);
        let dx = xd[s * SUBS];
        for (lane, &v) in acc.iter_mut().zip(&sumi) {
            *lane = (v as f32).mul_add(dw * dx, *lane);
        }
        for (b, lane) in macc.iter_mut().enumerate() {
            let m = w.mn[c * kb + s * SUBS + b] as f32 * xs[s * SUBS + b];
            *lane = m.mul_add(nm * dx, *lane);
        }
    }
    hsum_lanes(&acc) + hsum_lanes(&macc)
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

/// The float steps of super-block `s` for a tile: `acc` takes `fma(f32(lane), d·d_x, acc)`
/// per lane from the integer sums `sumi`, and `macc` lane `j` `fma(m_j · Σx_j, −dmin·d_x,
/// macc)` (the product is an exact integer), as `dot_scalar`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)]
fn float_steps<const R: usize, const C: usize>(
    a: &QuantizedActs,
    w: &Q4KMatrix,
    (r, c, s): (usize, usize, usize),
    sumi: &[[std::arch::x86_64::__m256i; C]; R],
    acc: &mut [[std::arch::x86_64::__m256; C]; R],
    macc: &mut [[std::arch::x86_64::__m256; C]; R],
) {
    use std::arch::x86_64::*;
    let kb = a.k / QK;
    for j in 0..C {
        let (dw, nm) = w.superblock(c + j, s);
        let mn = &w.mn[(c + j) * kb + s * SUBS..][..SUBS];
        // SAFETY: `mn` holds 8 bytes.
        let mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(mn.as_ptr() as *const __m128i) }));
        for i in 0..R {
            let at = (r + i) * kb + s * SUBS;
            let dx = a.d[at];
            // SAFETY: the row's 8 block sums of super-block `s` lie inside `a.s`.
            let xs = unsafe { _mm256_loadu_ps(a.s[at..at + SUBS].as_ptr()) };
            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[i][j]), _mm256_set1_ps(dw * dx), acc[i][j]);
            macc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(mnf, xs), _mm256_set1_ps(nm * dx), macc[i][j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::hsum;
    use super::{OutPtr, Q4KMatrix, QuantizedActs, QK, SUBS};

    super::super::tile_walk!(Q4KMatrix, "avx2,fma", [2, 2, 2, 4]);

    /// `R` rows from `r` times `C` columns from `c`: per super-block, each 32-byte nibble run
    /// gives two sub-blocks (low nibbles, then high) whose pair sums `vpmaddwd` scales by the
    /// sub-block's 6-bit scale into eight exact int32 lanes; then the float steps.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q4KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / 2;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let wq = w.qs[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut macc = [[_mm256_setzero_ps(); C]; R];
        for s in 0..kb / SUBS {
            let mut sumi = [[_mm256_setzero_si256(); C]; R];
            for j in 0..C {
                let sc = &w.sc[(c + j) * kb + s * SUBS..][..SUBS];
                for pair in 0..SUBS / 2 {
                    let b = s * SUBS + 2 * pair;
                    let p = wq.wrapping_add(j * col_bytes + b * QK / 2);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes) as *const i8);
                    // SAFETY: blocks `b`, `b + 1` of column `c + j` lie inside `w` (sliced above).
                    let raw = unsafe { _mm256_loadu_si256(p as *const __m256i) };
                    let lo = _mm256_and_si256(raw, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                    let (s0, s1) = (_mm256_set1_epi16(sc[2 * pair] as i16), _mm256_set1_epi16(sc[2 * pair + 1] as i16));
                    for i in 0..R {
                        // SAFETY: blocks `b`, `b + 1` of row `r + i` lie inside `a` (sliced above).
                        let (a0, a1) = unsafe {
                            (
                                _mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i),
                                _mm256_loadu_si256(aq.add(i * k + (b + 1) * QK) as *const __m256i),
                            )
                        };
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), s0);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), s1);
                        sumi[i][j] = _mm256_add_epi32(sumi[i][j], _mm256_add_epi32(p0, p1));
                    }
                }
            }
            super::float_steps::<R, C>(a, w, (r, c, s), &sumi, &mut acc, &mut macc);
        }
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(acc[i][j]) + hsum(macc[i][j])) };
            }
        }
    }
}
