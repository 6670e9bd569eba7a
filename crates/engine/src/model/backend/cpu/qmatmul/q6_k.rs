//! Q6_K weights (ggml's `block_q6_K`: per 256 values 4 low bits and 2 high bits each, sixteen
//! int8 scales, one per 16 values, and an f16 `d`; `w = d·sc_g·(q − 32)`) on wick's
//! register-tiled kernel, kept as stored (6.56 bits per weight; `d` widened to f32).
//!
//! Activations are quantized as llama.cpp pairs them with K-quants (Q8_K, one f32 scale per
//! 256 values, `ActBlocks::Q8K`). Per (row, column) an 8-lane accumulator takes, block of 32 after block, in order,
//! `fma(s, i32→f32(lane), acc)` where lane `j` is the exact integer `Σ (q − 32)·x` over values
//! `4j..4j+4`, and `s` is `d·sc_g·d_x` for the lane's group of 16 (lanes 0..4 the first group,
//! 4..8 the second); one fixed horizontal sum ends it. Scalar and AVX2 give the same bits;
//! rows are bit-identical whatever shares the call. The AVX-512 level runs the AVX2 tile: a
//! 512-bit `vpdpbusd` form measured slower on Zen 4 (whose AVX-512 runs as two 256-bit halves).

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::{hsum_lanes, ActBlocks, OutPtr, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Values per super-block.
const QK_K: usize = 256;
/// Bytes of one stored block: 128 of low bits, 64 of high bits, 16 scales, f16 `d`.
const BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
/// Stored bytes of a block without `d`.
const BODY: usize = BLOCK_BYTES - 2;

/// Q6_K weights `[n, k]`: per column, per super-block its stored low bits, high bits and
/// scales (208 bytes), and `d` as f32 in an array of its own.
#[derive(Clone)]
pub struct Q6KMatrix {
    n: usize,
    k: usize,
    body: Vec<u8>,
    d: Vec<f32>,
    level: KernelLevel,
}

impl std::fmt::Debug for Q6KMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q6KMatrix[{}, {}]", self.n, self.k)
    }
}

impl Q6KMatrix {
    /// Takes a Q6_K `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != GgmlDType::Q6K {
            return Err(EngineError::Load(format!("Q6KMatrix needs Q6_K weights, got {:?}", q.dtype())));
        }
        let (n, k) = q.shape().dims2()?;
        Self::from_ggml_bytes(&q.data()?, n, k)
    }

    /// Reads `n · k / 256` stored ggml Q6_K blocks.
    pub fn from_ggml_bytes(bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(QK_K) || bytes.len() != n * k / QK_K * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad Q6_K data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let blocks = n * k / QK_K;
        let mut body = Vec::with_capacity(blocks * BODY);
        let mut d = Vec::with_capacity(blocks);
        for b in bytes.chunks_exact(BLOCK_BYTES) {
            body.extend_from_slice(&b[..BODY]);
            d.push(f16::from_le_bytes([b[BODY], b[BODY + 1]]).to_f32());
        }
        Ok(Self { n, k, body, d, level: KernelLevel::current() })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.level = level;
        self
    }

    /// Super-block `sb` of column `c`: its stored bytes and `d`.
    #[inline(always)]
    fn superblock(&self, c: usize, sb: usize) -> (&[u8], f32) {
        let i = c * self.k / QK_K + sb;
        (&self.body[i * BODY..(i + 1) * BODY], self.d[i])
    }
}

/// Value `i` (0..256) of a super-block's body, minus 32 (ggml's `dequantize_row_q6_K`): in
/// each half of 128, block `t` of 32 takes the low (`t < 2`) or high nibbles of low-bit bytes
/// `32·(t % 2)..`, and bits `2t..2t + 2` of the half's 32 high-bit bytes.
fn value(body: &[u8], i: usize) -> i32 {
    let (half, t, l) = (i / 128, i % 128 / 32, i % 32);
    let ql = body[64 * half + 32 * (t % 2) + l];
    let lo = if t < 2 { ql & 0x0F } else { ql >> 4 };
    let hi = (body[128 + 32 * half + l] >> (2 * t)) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// The scale of the 16-value group `g` (0..16) of a super-block.
fn group_scale(body: &[u8], g: usize) -> i8 {
    body[192 + g] as i8
}

impl TileKernel for Q6KMatrix {
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
            // The AVX2 tile at the AVX-512 level too (see the module header).
            KernelLevel::Avx512 => unsafe { avx2::block(acts, self, rows, cols, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unsafe { scalar_block(acts, self, rows, cols, out) },
        }
    }
}

/// One output element, the SIMD kernels' lanes emulated.
fn dot_scalar(a: &QuantizedActs, r: usize, w: &Q6KMatrix, c: usize) -> f32 {
    let (xq, xd) = a.row(r);
    let mut acc = [0f32; 8];
    for b in 0..a.k / QK {
        let (body, d) = w.superblock(c, b / 8);
        let j = b % 8;
        let s0 = d * group_scale(body, 2 * j) as f32 * xd[b];
        let s1 = d * group_scale(body, 2 * j + 1) as f32 * xd[b];
        let x = &xq[b * QK..(b + 1) * QK];
        for (l, lane) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * l..4 * l + 4).map(|i| value(body, j * QK + i) * x[i] as i32).sum();
            *lane = (s as f32).mul_add(if l < 4 { s0 } else { s1 }, *lane);
        }
    }
    hsum_lanes(&acc)
}

/// # Safety
/// See `TileKernel::block`.
pub(super) unsafe fn scalar_block(
    a: &QuantizedActs,
    w: &Q6KMatrix,
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

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::hsum;
    use super::{OutPtr, Q6KMatrix, QuantizedActs, BODY, QK, QK_K};

    super::super::tile_walk!(Q6KMatrix, "avx2,fma", [2, 2, 4, 4]);

    /// Block `t` (0..4) of the 128-value half at `ql` (64 bytes) / `qh` (32 bytes): 32 signed
    /// values `q − 32` in order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn values(ql: *const u8, qh: *const u8, t: usize) -> __m256i {
        let low = _mm256_set1_epi8(0x0F);
        // SAFETY: the caller passes a half's bytes.
        let (l, h) = unsafe {
            (_mm256_loadu_si256(ql.add(32 * (t % 2)) as *const __m256i), _mm256_loadu_si256(qh as *const __m256i))
        };
        let l = if t < 2 { _mm256_and_si256(l, low) } else { _mm256_and_si256(_mm256_srli_epi16(l, 4), low) };
        let h = _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * t as i32)), _mm256_set1_epi8(3));
        _mm256_sub_epi8(_mm256_or_si256(l, _mm256_slli_epi16(h, 4)), _mm256_set1_epi8(32))
    }

    /// `R` rows from `r` times `C` columns from `c`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q6KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / QK_K * BODY;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..kb {
            let (sb, jb) = (b / 8, b % 8);
            for j in 0..C {
                let (body, d) = w.superblock(c + j, sb);
                let p = body.as_ptr();
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes + 64 * (jb % 4)) as *const i8);
                let half = jb / 4;
                // SAFETY: `body` is a whole super-block.
                let wv = unsafe { values(p.add(64 * half), p.add(128 + 32 * half), jb % 4) };
                let wabs = _mm256_sign_epi8(wv, wv);
                let (g0, g1) =
                    (d * super::group_scale(body, 2 * jb) as f32, d * super::group_scale(body, 2 * jb + 1) as f32);
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a` (sliced above).
                    let (av, da) =
                        unsafe { (_mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i), *ad.add(i * kb + b)) };
                    let pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, wv));
                    let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
                    let scale = _mm256_set_m128(_mm_set1_ps(g1 * da), _mm_set1_ps(g0 * da));
                    acc[i][j] = _mm256_fmadd_ps(scale, lanes, acc[i][j]);
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
