//! Q4_K and Q5_K weights (ggml's `block_q4_K` / `block_q5_K`: per 256 values an f16 `d` and
//! `dmin`, eight 6-bit scales and mins, and 4-bit values, plus for Q5_K a fifth bit per value;
//! `w = d·sc_j·q − dmin·m_j` in sub-block `j` of 32) on wick's register-tiled kernel, at 4.75
//! (5.75) bits per weight: the stored 4.5 (5.5) plus the two f16 scales widened to f32 and the
//! 6-bit scales unpacked to bytes. The two formats differ only in `q`'s range (0..16, 0..32),
//! so they share one kernel: Q5_K's fifth bits are set on top of the nibbles.
//!
//! Activations are quantized as llama.cpp pairs them with K-quants (Q8_K: one f32 scale `d_x`
//! per 256 values, `ActBlocks::Q8K`), and the arithmetic follows llama.cpp's: within a
//! super-block everything is integer. Per (row, column) and super-block, eight int32 lanes take
//! `sc_j · Σ q·x` (lane `l` over values `4l..4l+4` of each sub-block `j`), exact, and the
//! products `m_j · Σx_j` of the sub-blocks' mins, exact; then the float steps, in super-block
//! order: an 8-lane f32 accumulator takes `fma(f32(lane), d·d_x, acc)`, then, lane `j`,
//! `fma(m_j · Σx_j, −dmin·d_x, acc)`; the result is `hsum(acc)`. Integer sums do not
//! depend on their order, so scalar, AVX2 (`vpmaddubsw`, then `vpmaddwd` by the scale) and
//! AVX-512 (`vpdpbusd` on two sub-blocks at once, then `vpdpwssd` by their scales) give the
//! same bits; rows are bit-identical whatever shares the call.
//!
//! The nibbles are repacked at load so that one 64-byte load holds four sub-blocks whose low
//! nibbles are two consecutive sub-blocks and whose high nibbles are the next two: per
//! super-block half `h`, byte `i < 32` is `q[4h][i] | q[4h+2][i] << 4` and byte `32 + i` is
//! `q[4h+1][i] | q[4h+3][i] << 4`. The activations of each nibble half are then 64
//! consecutive bytes.

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

/// Q4_K or Q5_K weights `[n, k]`, per column: its nibbles repacked (see the module header),
/// Q5_K's fifth bits as stored (32 bytes per super-block, bit `j` of byte `l`: value `l` of
/// sub-block `j`; empty for Q4_K), the unpacked scales and mins (one byte per sub-block), and
/// per super-block `d` and `−dmin` as f32.
#[derive(Clone)]
pub struct Q4KMatrix {
    n: usize,
    k: usize,
    qs: Vec<u8>,
    qh: Vec<u8>,
    sc: Vec<u8>,
    mn: Vec<u8>,
    d: Vec<f32>,
    ndmin: Vec<f32>,
    level: KernelLevel,
}

/// Q5_K weights: the Q4_K kernel with fifth bits.
pub type Q5KMatrix = Q4KMatrix;

impl std::fmt::Debug for Q4KMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = if self.qh.is_empty() { "Q4_K" } else { "Q5_K" };
        write!(f, "Q4KMatrix[{t}, {}, {}]", self.n, self.k)
    }
}

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min from the 12 packed bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// ggml's 128 nibble bytes of a super-block (32-byte run `t`: sub-block `2t` low, `2t + 1`
/// high) in wick's order (see the module header).
fn repack(stored: &[u8]) -> [u8; QK_K / 2] {
    let nibble = |b: usize, i: usize| (stored[32 * (b / 2) + i] >> (4 * (b % 2))) & 0x0F;
    let mut out = [0u8; QK_K / 2];
    for (at, byte) in out.iter_mut().enumerate() {
        let (h, w, i) = (at / 64, at % 64 / 32, at % 32);
        *byte = nibble(4 * h + w, i) | nibble(4 * h + w + 2, i) << 4;
    }
    out
}

/// The sub-block whose values are the low nibbles of the 32-byte run `t` (0..4) of a repacked
/// super-block; the high nibbles are sub-block `low_sub(t) + 2`.
#[inline(always)]
fn low_sub(t: usize) -> usize {
    4 * (t / 2) + t % 2
}

impl Q4KMatrix {
    /// Takes a Q4_K or Q5_K `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let five = match q.dtype() {
            GgmlDType::Q4K => false,
            GgmlDType::Q5K => true,
            t => return Err(EngineError::Load(format!("Q4KMatrix needs Q4_K or Q5_K weights, got {t:?}"))),
        };
        let (n, k) = q.shape().dims2()?;
        Self::from_ggml_bytes(&q.data()?, n, k, five)
    }

    /// Reads `n · k / 256` stored ggml Q4_K blocks (Q5_K blocks where `five`).
    pub fn from_ggml_bytes(bytes: &[u8], n: usize, k: usize, five: bool) -> Result<Self> {
        let (qh_bytes, name) = if five { (QK_K / 8, "Q5_K") } else { (0, "Q4_K") };
        let block_bytes = BLOCK_BYTES + qh_bytes;
        if !k.is_multiple_of(QK_K) || bytes.len() != n * k / QK_K * block_bytes {
            return Err(EngineError::Load(format!("bad {name} data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let blocks = n * k / QK_K;
        let mut qs = Vec::with_capacity(blocks * QK_K / 2);
        let mut qh = Vec::with_capacity(blocks * qh_bytes);
        let (mut sc, mut mn) = (Vec::with_capacity(blocks * SUBS), Vec::with_capacity(blocks * SUBS));
        let (mut d, mut ndmin) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for b in bytes.chunks_exact(block_bytes) {
            d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
            ndmin.push(-f16::from_le_bytes([b[2], b[3]]).to_f32());
            for j in 0..SUBS {
                let (s, m) = scale_min(j, &b[4..16]);
                sc.push(s);
                mn.push(m);
            }
            qh.extend_from_slice(&b[16..16 + qh_bytes]);
            qs.extend_from_slice(&repack(&b[16 + qh_bytes..]));
        }
        Ok(Self { n, k, qs, qh, sc, mn, d, ndmin, level: KernelLevel::current() })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.level = level;
        self
    }

    /// Super-block `s` (of the column's `k / 256`) of column `c`: its 32 bytes of fifth bits
    /// (Q5_K only).
    #[inline(always)]
    fn fifth_bits(&self, c: usize, s: usize) -> &[u8] {
        let sb = c * self.k / QK_K + s;
        &self.qh[sb * QK..(sb + 1) * QK]
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
            KernelLevel::Avx512 => unsafe { avx512::block(acts, self, rows, cols, out) },
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
    for s in 0..a.k / QK_K {
        let mut sumi = [0i32; 8];
        for b in s * SUBS..(s + 1) * SUBS {
            let (h, u) = (b % SUBS / 4, b % 4);
            let run = &col[s * QK_K / 2 + 64 * h + 32 * (u % 2)..][..QK];
            let fifth = |i: usize| if w.qh.is_empty() { 0 } else { (w.fifth_bits(c, s)[i] >> (b % SUBS)) & 1 };
            let q = |i: usize| (if u < 2 { run[i] & 0x0F } else { run[i] >> 4 } | fifth(i) << 4) as i32;
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
        for (b, lane) in acc.iter_mut().enumerate() {
            let m = w.mn[c * kb + s * SUBS + b] as f32 * xs[s * SUBS + b];
            *lane = m.mul_add(nm * dx, *lane);
        }
    }
    hsum_lanes(&acc)
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
/// per lane from the integer sums `sumi`, then lane `j` `fma(m_j · Σx_j, −dmin·d_x, acc)`
/// (the product is an exact integer), as `dot_scalar`. The scale products are formed once per
/// row and column as broadcast vectors (the same f32 product in every lane). Always inlined
/// into the tiles (a call would cost more than the steps); it has no target features of its
/// own, so it is only called from functions that enable AVX2 and FMA.
///
/// # Safety
/// The caller enables AVX2 and FMA, and the ranges lie inside `a` and `w`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn float_steps<const R: usize, const C: usize>(
    a: &QuantizedActs,
    w: &Q4KMatrix,
    (r, c, s): (usize, usize, usize),
    sumi: &[[std::arch::x86_64::__m256i; C]; R],
    acc: &mut [[std::arch::x86_64::__m256; C]; R],
) {
    use std::arch::x86_64::*;
    let kb = a.k / QK;
    // SAFETY (every intrinsic below): the caller enables AVX2 and FMA; the loads read a row's
    // 8 block sums of super-block `s` inside `a.s` and a column's 8 mins inside `w.mn`.
    unsafe {
        let mut dx = [_mm256_setzero_ps(); R];
        let mut xs = [_mm256_setzero_ps(); R];
        for i in 0..R {
            let at = (r + i) * kb + s * SUBS;
            dx[i] = _mm256_set1_ps(a.d[at]);
            xs[i] = _mm256_loadu_ps(a.s[at..at + SUBS].as_ptr());
        }
        for j in 0..C {
            let (dw, nm) = w.superblock(c + j, s);
            let (dw, nm) = (_mm256_set1_ps(dw), _mm256_set1_ps(nm));
            let mn = &w.mn[(c + j) * kb + s * SUBS..][..SUBS];
            let mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(mn.as_ptr() as *const __m128i)));
            for i in 0..R {
                let x = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[i][j]), _mm256_mul_ps(dw, dx[i]), acc[i][j]);
                acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(mnf, xs[i]), _mm256_mul_ps(nm, dx[i]), x);
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
    use super::{low_sub, OutPtr, Q4KMatrix, QuantizedActs, QK, SUBS};

    super::super::tile_walk!(Q4KMatrix, "avx2,fma", [2, 2, 2, 4]);

    /// `R` rows from `r` times `C` columns from `c`: per super-block, each 32-byte nibble run
    /// gives two sub-blocks (low nibbles, then high: `low_sub(t)` and two after it) whose pair
    /// sums `vpmaddwd` scales by the sub-block's 6-bit scale into eight exact int32 lanes; then
    /// the float steps.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q4KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / 2;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let wq = w.qs[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for s in 0..kb / SUBS {
            let mut sumi = [[_mm256_setzero_si256(); C]; R];
            for j in 0..C {
                let sc = &w.sc[(c + j) * kb + s * SUBS..][..SUBS];
                for t in 0..SUBS / 2 {
                    let (b0, b1) = (s * SUBS + low_sub(t), s * SUBS + low_sub(t) + 2);
                    let p = wq.wrapping_add(j * col_bytes + s * QK * SUBS / 2 + QK * t);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes) as *const i8);
                    // SAFETY: run `t` of super-block `s` of column `c + j` lies inside `w`
                    // (sliced above).
                    let raw = unsafe { _mm256_loadu_si256(p as *const __m256i) };
                    let mut lo = _mm256_and_si256(raw, low);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                    if !w.qh.is_empty() {
                        // SAFETY: the super-block's 32 bytes of fifth bits lie inside `w.qh`.
                        let qh = unsafe { _mm256_loadu_si256(w.fifth_bits(c + j, s).as_ptr() as *const __m256i) };
                        let set = |b: usize| {
                            let bit = _mm256_set1_epi8(1 << b);
                            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), _mm256_set1_epi8(0x10))
                        };
                        lo = _mm256_or_si256(lo, set(low_sub(t)));
                        hi = _mm256_or_si256(hi, set(low_sub(t) + 2));
                    }
                    let (s0, s1) =
                        (_mm256_set1_epi16(sc[low_sub(t)] as i16), _mm256_set1_epi16(sc[low_sub(t) + 2] as i16));
                    for i in 0..R {
                        // SAFETY: blocks `b0`, `b1` of row `r + i` lie inside `a` (sliced above).
                        let (a0, a1) = unsafe {
                            (
                                _mm256_loadu_si256(aq.add(i * k + b0 * QK) as *const __m256i),
                                _mm256_loadu_si256(aq.add(i * k + b1 * QK) as *const __m256i),
                            )
                        };
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), s0);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), s1);
                        sumi[i][j] = _mm256_add_epi32(sumi[i][j], _mm256_add_epi32(p0, p1));
                    }
                }
            }
            // SAFETY: AVX2 and FMA are enabled here; the ranges lie inside `a` and `w`.
            unsafe { super::float_steps::<R, C>(a, w, (r, c, s), &sumi, &mut acc) };
        }
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(acc[i][j])) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::{dpwssd, fold_halves, hsum};
    use super::{OutPtr, Q4KMatrix, QuantizedActs, QK, SUBS};

    super::super::tile_walk!(Q4KMatrix, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", [1, 2, 2, 4]);

    /// The `vpshufb` control that spreads byte `a` of each 128-bit lane into the low byte of
    /// int32 lanes 0..8 and byte `b` into lanes 8..16, the other bytes zero: the int16 scales
    /// `vpdpwssd` multiplies the low halves of `vpdpbusd`'s lanes by.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn spread(a: i32, b: i32) -> __m512i {
        let (a, b) = (0x8080_8000u32 as i32 | a, 0x8080_8000u32 as i32 | b);
        _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)
    }

    /// `R` rows from `r` times `C` columns from `c`: per super-block half, one 64-byte load
    /// holds four sub-blocks; `vpdpbusd` sums the low nibbles (two sub-blocks) and the high
    /// ones (the next two) against 64 consecutive activation bytes into int32 lanes of four
    /// values (each under 2^14 in magnitude, Q5_K's 5-bit `q` included), and `vpdpwssd` adds
    /// them times their sub-block's scale into sixteen exact lanes. The two 8-lane halves,
    /// added, are the AVX2 tile's lanes; then the same float steps.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q4KMatrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = k / 2;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let wq = w.qs[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let low = _mm512_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        let spreads = [spread(0, 1), spread(2, 3), spread(4, 5), spread(6, 7)];
        // Q5_K: the fifth bit of sub-block `a` in the first 32 bytes, `a + 1` in the next 32.
        let pair_bits = |a: i32| {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi8(1 << a)), _mm256_set1_epi8(1 << (a + 1)))
        };
        let bits = [pair_bits(0), pair_bits(2), pair_bits(4), pair_bits(6)];
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for s in 0..kb / SUBS {
            let mut sumi = [[zero; C]; R];
            for j in 0..C {
                // SAFETY: the column's 8 scale bytes of super-block `s` lie inside `w.sc`.
                let sc = _mm512_set1_epi64(unsafe {
                    std::ptr::read_unaligned(w.sc[(c + j) * kb + s * SUBS..][..SUBS].as_ptr() as *const i64)
                });
                for h in 0..2 {
                    let p = wq.wrapping_add(j * col_bytes + s * QK * SUBS / 2 + 64 * h);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * col_bytes) as *const i8);
                    // SAFETY: half `h` of super-block `s` of column `c + j` lies inside `w`
                    // (sliced above).
                    let raw = unsafe { _mm512_loadu_si512(p as *const _) };
                    let mut lo = _mm512_and_si512(raw, low);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
                    if !w.qh.is_empty() {
                        // SAFETY: the super-block's 32 bytes of fifth bits lie inside `w.qh`.
                        let qh = _mm512_broadcast_i64x4(unsafe {
                            _mm256_loadu_si256(w.fifth_bits(c + j, s).as_ptr() as *const __m256i)
                        });
                        let fifth = _mm512_set1_epi8(0x10);
                        lo = _mm512_or_si512(lo, _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(qh, bits[2 * h]), fifth));
                        hi = _mm512_or_si512(
                            hi,
                            _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(qh, bits[2 * h + 1]), fifth),
                        );
                    }
                    let (slo, shi) =
                        (_mm512_shuffle_epi8(sc, spreads[2 * h]), _mm512_shuffle_epi8(sc, spreads[2 * h + 1]));
                    for i in 0..R {
                        let at = aq.wrapping_add(i * k + (s * SUBS + 4 * h) * QK);
                        // SAFETY: sub-blocks `4h..4h + 4` of super-block `s` of row `r + i` lie
                        // inside `a` (sliced above).
                        let (a0, a1) =
                            unsafe { (_mm512_loadu_si512(at as *const _), _mm512_loadu_si512(at.add(64) as *const _)) };
                        let p0 = _mm512_dpbusd_epi32(zero, lo, a0);
                        let p1 = _mm512_dpbusd_epi32(zero, hi, a1);
                        sumi[i][j] = dpwssd(dpwssd(sumi[i][j], p0, slo), p1, shi);
                    }
                }
            }
            let lanes = fold_halves(&sumi);
            // SAFETY: AVX2 and FMA are enabled here; the ranges lie inside `a` and `w`.
            unsafe { super::float_steps::<R, C>(a, w, (r, c, s), &lanes, &mut acc) };
        }
        for i in 0..R {
            for j in 0..C {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(acc[i][j])) };
            }
        }
    }
}
