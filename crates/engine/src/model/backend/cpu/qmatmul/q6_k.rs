//! Q6_K weights (ggml's `block_q6_K`: per 256 values 4 low bits and 2 high bits each, sixteen
//! int8 scales, one per 16 values, and an f16 `d`; `w = d·sc_g·(q − 32)`) on wick's
//! register-tiled kernel, kept as stored (6.56 bits per weight; `d` widened to f32).
//!
//! Activations are quantized as llama.cpp pairs them with K-quants (Q8_K, one f32 scale `d_x`
//! per 256 values, `ActBlocks::Q8K`), and, as llama.cpp does, everything within a super-block
//! is integer: per (row, column) and super-block eight int32 lanes take, exactly, the sum over
//! its eight blocks of 32 of `sc_g · Σ (q − 32)·x`, lane `l` over values `4l..4l+4` of each
//! block (lanes 0..4 the block's first group of 16, 4..8 its second). Then the float step, in
//! super-block order: an 8-lane accumulator takes `fma(f32(lane), d·d_x, acc)`; one fixed
//! horizontal sum ends it. Integer sums do not depend on their order, so scalar, AVX2
//! (`vpmaddubsw` on `|q − 32|` and the sign-moved activations, `vpmaddwd` by the scales) and
//! AVX-512 (`vpdpbusd` of `q` against the activations onto `−32·Σx`, `vpdpwssd` by the scales,
//! two blocks at once) give the same bits; rows are bit-identical whatever shares the call.

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
            KernelLevel::Avx512 => unsafe { avx512::block(acts, self, rows, cols, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unsafe { scalar_block(acts, self, rows, cols, out) },
        }
    }
}

/// One output element, the SIMD kernels' integer lanes and float steps emulated.
fn dot_scalar(a: &QuantizedActs, r: usize, w: &Q6KMatrix, c: usize) -> f32 {
    let (xq, xd) = a.row(r);
    let mut acc = [0f32; 8];
    for sb in 0..a.k / QK_K {
        let (body, d) = w.superblock(c, sb);
        let mut sumi = [0i32; 8];
        for j in 0..QK_K / QK {
            let x = &xq[(sb * 8 + j) * QK..][..QK];
            for (l, lane) in sumi.iter_mut().enumerate() {
                let sc = group_scale(body, 2 * j + l / 4) as i32;
                let s: i32 = (4 * l..4 * l + 4).map(|i| value(body, j * QK + i) * x[i] as i32).sum();
                *lane += sc * s;
            }
        }
        let dx = xd[sb * 8];
        for (lane, &v) in acc.iter_mut().zip(&sumi) {
            *lane = (v as f32).mul_add(d * dx, *lane);
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

/// The float step of super-block `sb` for a tile: `acc` takes `fma(f32(lane), d·d_x, acc)`
/// per lane from the integer sums `sumi`, as `dot_scalar`; `d·d_x` is formed once per (row,
/// column) as a broadcast vector. Always inlined into the tiles; it has no target features of
/// its own, so it is only called from functions that enable AVX2 and FMA.
///
/// # Safety
/// The caller enables AVX2 and FMA, and the ranges lie inside `a` and `w`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn float_steps<const R: usize, const C: usize>(
    a: &QuantizedActs,
    w: &Q6KMatrix,
    (r, c, sb): (usize, usize, usize),
    sumi: &[[std::arch::x86_64::__m256i; C]; R],
    acc: &mut [[std::arch::x86_64::__m256; C]; R],
) {
    use std::arch::x86_64::*;
    let kb = a.k / QK;
    // SAFETY (every intrinsic below): the caller enables AVX2 and FMA.
    unsafe {
        let mut dx = [_mm256_setzero_ps(); R];
        for i in 0..R {
            dx[i] = _mm256_set1_ps(a.d[(r + i) * kb + sb * 8]);
        }
        for j in 0..C {
            let d = _mm256_set1_ps(w.superblock(c + j, sb).1);
            for i in 0..R {
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[i][j]), _mm256_mul_ps(d, dx[i]), acc[i][j]);
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
    use super::{OutPtr, Q6KMatrix, QuantizedActs, BODY, QK, QK_K};

    super::super::tile_walk!(Q6KMatrix, "avx2,fma", [1, 2, 2, 4]);

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

    /// `R` rows from `r` times `C` columns from `c`: per block of 32, `vpmaddubsw` of `|q − 32|`
    /// and the activations with `q − 32`'s sign gives pair sums that `vpmaddwd` scales by the
    /// two groups' scales into eight exact int32 lanes; per super-block, the float step.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q6KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / QK_K * BODY;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for sb in 0..kb / 8 {
            let mut sumi = [[_mm256_setzero_si256(); C]; R];
            for j in 0..C {
                let (body, _) = w.superblock(c + j, sb);
                let p = body.as_ptr();
                // SAFETY: the super-block's 16 scale bytes lie inside `body`.
                let scales = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(p.add(192) as *const __m128i) });
                for jb in 0..8 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes + 32 * jb) as *const i8);
                    let half = jb / 4;
                    // SAFETY: `body` is a whole super-block.
                    let wv = unsafe { values(p.add(64 * half), p.add(128 + 32 * half), jb % 4) };
                    let wabs = _mm256_sign_epi8(wv, wv);
                    let sc = group_pair(scales, jb);
                    for i in 0..R {
                        // SAFETY: block `sb·8 + jb` of row `r + i` lies inside `a` (sliced above).
                        let av = unsafe { _mm256_loadu_si256(aq.add(i * k + (sb * 8 + jb) * QK) as *const __m256i) };
                        let pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, wv));
                        sumi[i][j] = _mm256_add_epi32(sumi[i][j], _mm256_madd_epi16(pairs, sc));
                    }
                }
            }
            // SAFETY: AVX2 and FMA are enabled here; the ranges lie inside `a` and `w`.
            unsafe { super::float_steps::<R, C>(a, w, (r, c, sb), &sumi, &mut acc) };
        }
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(acc[i][j])) };
            }
        }
    }

    /// The int16 scales of block `jb`'s two groups of 16, eight lanes each, from the
    /// super-block's 16 scales widened to int16.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn group_pair(scales: __m256i, jb: usize) -> __m256i {
        // Both 128-bit lanes get the half of `scales` that holds groups `2jb`, `2jb + 1`; the
        // shuffle then spreads the pair's two int16 values over lanes 0..8 and 8..16.
        let half = if jb < 4 {
            _mm256_permute2x128_si256(scales, scales, 0x00)
        } else {
            _mm256_permute2x128_si256(scales, scales, 0x11)
        };
        let g = 4 * (jb % 4) as u8;
        // Each int16 lane takes bytes `g, g + 1` (the first group's scale) or `g + 2, g + 3`.
        let (lo, hi) =
            (_mm_set1_epi16(i16::from_le_bytes([g, g + 1])), _mm_set1_epi16(i16::from_le_bytes([g + 2, g + 3])));
        _mm256_shuffle_epi8(half, _mm256_set_m128i(hi, lo))
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::{dpwssd, fold_halves, hsum};
    use super::{OutPtr, Q6KMatrix, QuantizedActs, BODY, QK, QK_K};

    super::super::tile_walk!(Q6KMatrix, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", [1, 2, 2, 4]);

    /// `R` rows from `r` times `C` columns from `c`. Per half super-block (128 values: 64 bytes
    /// of low bits, 32 of high bits) two 512-bit vectors hold blocks 0–1 and 2–3 as unsigned
    /// `q`; `vpdpbusd` adds `q·x` onto the row's `−32·Σx` per lane (so the lane is
    /// `Σ (q − 32)·x`, under 2^14 in magnitude), and `vpdpwssd` adds it times its group's scale
    /// into sixteen exact int32 lanes. The two 8-lane halves, added, are the AVX2 tile's lanes;
    /// then the same float step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q6KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / QK_K * BODY;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let low = _mm512_set1_epi8(0x0F);
        let three = _mm512_set1_epi8(3);
        let thirty_two = _mm512_set1_epi8(32);
        let zero = _mm512_setzero_si512();
        // Per 128-bit lane: blocks 0..2 of a half take the low nibbles and high-bit pairs 0, 1;
        // blocks 2..4 the high nibbles and pairs 2, 3.
        let (shift01, shift23) = (_mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0), _mm512_set_epi64(6, 6, 6, 6, 4, 4, 4, 4));
        // 128-bit lane `L` spreads the int16 scale of group `g + L` over its four int32 lanes
        // (low halves; the high halves zero).
        let spread = |g: u64| {
            let q = |x: u64| ((0x8080_0100 + x * 0x0202) * 0x1_0000_0001) as i64;
            _mm512_set_epi64(q(g + 3), q(g + 3), q(g + 2), q(g + 2), q(g + 1), q(g + 1), q(g), q(g))
        };
        let (spread01, spread23) = (spread(0), spread(4));
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for sb in 0..kb / 8 {
            let mut sumi = [[zero; C]; R];
            for h in 0..2 {
                // Each row's `−32·Σx` per lane for the half's two vectors (weights do not enter).
                let mut neg = [[zero; 2]; R];
                for i in 0..R {
                    for v in 0..2 {
                        // SAFETY: blocks `sb·8 + 4h + 2v ..+2` of row `r + i` lie inside `a`.
                        let x =
                            unsafe { _mm512_loadu_si512(aq.add(i * k + (sb * 8 + 4 * h + 2 * v) * QK) as *const _) };
                        neg[i][v] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, thirty_two, x));
                    }
                }
                for j in 0..C {
                    let (body, _) = w.superblock(c + j, sb);
                    let p = body.as_ptr();
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes + 96 * h) as *const i8);
                    // SAFETY: `body` is a whole super-block: 128 bytes of low bits, 64 of high
                    // bits, 16 scales.
                    let (ql, qh, scales) = unsafe {
                        (
                            _mm512_loadu_si512(p.add(64 * h) as *const _),
                            _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i)),
                            {
                                let all = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
                                let half = if h == 0 {
                                    _mm256_castsi256_si128(all)
                                } else {
                                    _mm256_extracti128_si256::<1>(all)
                                };
                                _mm512_broadcast_i32x4(half)
                            },
                        )
                    };
                    let q01 = _mm512_or_si512(
                        _mm512_and_si512(ql, low),
                        _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(qh, shift01), three), 4),
                    );
                    let q23 = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(ql, 4), low),
                        _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(qh, shift23), three), 4),
                    );
                    let (s01, s23) = (_mm512_shuffle_epi8(scales, spread01), _mm512_shuffle_epi8(scales, spread23));
                    for i in 0..R {
                        let at = aq.wrapping_add(i * k + (sb * 8 + 4 * h) * QK);
                        // SAFETY: blocks `sb·8 + 4h ..+4` of row `r + i` lie inside `a`.
                        let (x01, x23) =
                            unsafe { (_mm512_loadu_si512(at as *const _), _mm512_loadu_si512(at.add(64) as *const _)) };
                        let p01 = _mm512_dpbusd_epi32(neg[i][0], q01, x01);
                        let p23 = _mm512_dpbusd_epi32(neg[i][1], q23, x23);
                        sumi[i][j] = dpwssd(dpwssd(sumi[i][j], p01, s01), p23, s23);
                    }
                }
            }
            let lanes = fold_halves(&sumi);
            // SAFETY: AVX2 and FMA are enabled here; the ranges lie inside `a` and `w`.
            unsafe { super::float_steps::<R, C>(a, w, (r, c, sb), &lanes, &mut acc) };
        }
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(acc[i][j])) };
            }
        }
    }
}
