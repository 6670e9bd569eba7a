//! MXFP4 weights (OCP microscaling FP4, gpt-oss's experts) on wick's register-tiled kernel,
//! kept at 4.25 bits as stored. A block of 32 values is one E8M0 exponent byte `e` and 16
//! bytes of FP4 E2M1 codes (byte `j`: value `j` in the low nibble, value `j + 16` in the high
//! one — ggml's `block_mxfp4`); value = `KVALUES[code] · 2^(e - 128)`, where `KVALUES` is
//! ggml's doubled E2M1 table (integers, so the dot products with int8 activations are exact).
//!
//! Per (row, column): an 8-lane f32 accumulator takes, block after block in order,
//! `fma(d_w · d_x, i32→f32(lane), acc)` where lane `j` is the exact integer `Σ KVALUES[q]·x`
//! over values `4j..4j+4`, then one fixed horizontal sum — the scheme of the Q8_0 kernel, so
//! rows are bit-identical whatever shares the call. Three implementations give the same bits:
//! scalar, AVX2 (one block per 256-bit step) and AVX-512 (two blocks per 512-bit integer
//! step, their lanes added to the accumulator one block after the other, in order), chosen at
//! run time.

use std::ops::Range;

use super::{hsum_lanes, OutPtr, QuantizedActs, TileKernel, QK};
use crate::{EngineError, Result};

/// Bytes of one block: the exponent, then 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = 1 + QK / 2;

/// ggml's `kvalues_mxfp4`: E2M1 codes times two (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6 doubled).
pub const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `2^(e - 128)`: half the E8M0 scale, which the doubled table makes whole again (ggml's
/// `ggml_e8m0_to_fp32_half`, including its subnormal results for `e < 2`).
#[inline]
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { ((e as u32) - 1) << 23 };
    f32::from_bits(bits)
}

/// Which implementation runs the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The fastest this host runs (AVX-512 F+BW, else AVX2+FMA, else scalar), checked once.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static ISA: OnceLock<Isa> = OnceLock::new();
            *ISA.get_or_init(|| {
                let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
                if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                    Isa::Avx512
                } else if avx2 {
                    Isa::Avx2
                } else {
                    Isa::Scalar
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Isa::Scalar
        }
    }

    /// Every implementation this host can run (for tests).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                    v.push(Isa::Avx512);
                }
            }
        }
        v
    }
}

/// MXFP4 weights `[n, k]`: per output column, its `k / 32` blocks in the stored layout.
#[derive(Clone)]
pub struct Mxfp4Matrix {
    n: usize,
    k: usize,
    blocks: Vec<u8>,
    isa: Isa,
}

impl std::fmt::Debug for Mxfp4Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mxfp4Matrix[{}, {}]", self.n, self.k)
    }
}

impl Mxfp4Matrix {
    /// Takes `n · k / 32` stored blocks (row-major `[n, k]`), without copying them.
    pub fn from_blocks(blocks: Vec<u8>, n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(QK) || blocks.len() != n * k / QK * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad MXFP4 data: {} bytes for [{n}, {k}]", blocks.len())));
        }
        Ok(Self { n, k, blocks, isa: Isa::detect() })
    }

    /// The same weights run by `isa` (tests compare the implementations).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }

    /// The stored blocks.
    pub fn blocks(&self) -> &[u8] {
        &self.blocks
    }

    /// Every weight as f32, row-major `[n, k]` (tests and the oracle setting).
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize(&self.blocks)
    }

    fn col(&self, c: usize) -> &[u8] {
        let bytes = self.k / QK * BLOCK_BYTES;
        &self.blocks[c * bytes..(c + 1) * bytes]
    }
}

/// Stored MXFP4 blocks to f32 values.
pub fn dequantize(blocks: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(blocks.len() / BLOCK_BYTES * QK);
    for b in blocks.chunks_exact(BLOCK_BYTES) {
        let d = e8m0_half(b[0]);
        out.extend(b[1..].iter().map(|&q| KVALUES[(q & 0x0F) as usize] as f32 * d));
        out.extend(b[1..].iter().map(|&q| KVALUES[(q >> 4) as usize] as f32 * d));
    }
    out
}

impl TileKernel for Mxfp4Matrix {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
        match self.isa {
            // SAFETY: the caller's contract covers the ranges.
            Isa::Scalar => unsafe { scalar_block(acts, self, rows, cols, out) },
            // SAFETY: `Avx2` is only chosen (detect, available) where AVX2 and FMA exist.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::block(acts, self, rows, cols, out) },
            // SAFETY: `Avx512` is only chosen where AVX-512 F/BW, AVX2 and FMA exist.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::block(acts, self, rows, cols, out) },
        }
    }
}

/// One output element: the lanes of the SIMD kernels, emulated.
fn dot_scalar(acts: &QuantizedActs, r: usize, col: &[u8]) -> f32 {
    let (xq, xd) = acts.row(r);
    let mut acc = [0f32; 8];
    for (b, blk) in col.chunks_exact(BLOCK_BYTES).enumerate() {
        let scale = e8m0_half(blk[0]) * xd[b];
        let nib = &blk[1..];
        let q = |i: usize| KVALUES[if i < QK / 2 { nib[i] & 0x0F } else { nib[i - QK / 2] >> 4 } as usize] as i32;
        let x = &xq[b * QK..(b + 1) * QK];
        for (j, lane) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * j..4 * j + 4).map(|i| q(i) * x[i] as i32).sum();
            *lane = (s as f32).mul_add(scale, *lane);
        }
    }
    hsum_lanes(&acc)
}

/// # Safety
/// See `TileKernel::block`.
unsafe fn scalar_block(a: &QuantizedActs, w: &Mxfp4Matrix, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
    for r in rows {
        for c in cols.clone() {
            unsafe { out.write(r, c, dot_scalar(a, r, w.col(c))) };
        }
    }
}

/// The tile walk of both SIMD kernels (see `super::tile_walk`): 4×2 tiles while 4 rows
/// remain, then 3×2, 2×4 or 1×4 (decode), single columns for the rest.
#[cfg(target_arch = "x86_64")]
macro_rules! mx_walk {
    ($feat:literal) => {
        /// # Safety
        /// The features are available; see `TileKernel::block`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn block(
            a: &QuantizedActs,
            w: &Mxfp4Matrix,
            rows: Range<usize>,
            cols: Range<usize>,
            out: OutPtr,
        ) {
            let mut r = rows.start;
            while r < rows.end {
                let step = (rows.end - r).min(4);
                unsafe {
                    match step {
                        4 => cols_with::<4, 2>(a, w, r, cols.clone(), out),
                        3 => cols_with::<3, 2>(a, w, r, cols.clone(), out),
                        2 => cols_with::<2, 4>(a, w, r, cols.clone(), out),
                        _ => cols_with::<1, 4>(a, w, r, cols.clone(), out),
                    }
                }
                r += step;
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn cols_with<const R: usize, const C: usize>(
            a: &QuantizedActs,
            w: &Mxfp4Matrix,
            r: usize,
            cols: Range<usize>,
            out: OutPtr,
        ) {
            let mut c = cols.start;
            while c + C <= cols.end {
                unsafe { tile::<R, C>(a, w, r, c, out) };
                c += C;
            }
            while c < cols.end {
                unsafe { tile::<R, 1>(a, w, r, c, out) };
                c += 1;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::hsum;
    use super::{e8m0_half, Mxfp4Matrix, OutPtr, QuantizedActs, BLOCK_BYTES, KVALUES, QK};

    mx_walk!("avx2,fma");

    /// The 32 int8 weights of the block at `p` (its nibbles), in value order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weights(p: *const u8, table: __m256i, low: __m128i) -> __m256i {
        // SAFETY: the caller passes a block's 16 nibble bytes.
        let raw = unsafe { _mm_loadu_si128(p as *const __m128i) };
        let lo = _mm_and_si128(raw, low);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
        _mm256_shuffle_epi8(table, _mm256_set_m128i(hi, lo))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn table() -> __m256i {
        // SAFETY: KVALUES holds 16 bytes.
        let t = unsafe { _mm_loadu_si128(KVALUES.as_ptr() as *const __m128i) };
        _mm256_set_m128i(t, t)
    }

    /// `R` rows from `r` times `C` columns from `c`, one 8-lane accumulator per pair.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(
        a: &QuantizedActs,
        w: &Mxfp4Matrix,
        r: usize,
        c: usize,
        out: OutPtr,
    ) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = kb * BLOCK_BYTES;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.blocks[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let low = _mm_set1_epi8(0x0F);
        let table = unsafe { table() };
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..kb {
            for j in 0..C {
                let blk = wq.wrapping_add(j * col_bytes + b * BLOCK_BYTES);
                // Weights stream from memory once per call at small M: ask for the columns
                // two tiles ahead (prefetches of any address are harmless).
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(2 * C * col_bytes) as *const i8);
                // SAFETY: block `b` of column `c + j` lies inside `w` (sliced above).
                let (wv, dw) = unsafe { (weights(blk.add(1), table, low), e8m0_half(*blk)) };
                let wabs = _mm256_sign_epi8(wv, wv);
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a` (sliced above).
                    let av = unsafe { _mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i) };
                    let da = unsafe { *ad.add(i * kb + b) };
                    let pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, wv));
                    let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
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

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::simd::hsum;
    use super::{e8m0_half, Mxfp4Matrix, OutPtr, QuantizedActs, BLOCK_BYTES, KVALUES, QK};

    mx_walk!("avx512f,avx512bw,avx2,fma");

    /// `R` rows from `r` times `C` columns from `c`. Blocks go in pairs: their integer dot
    /// products are formed in one 512-bit step, then the two 8-lane halves are added to the
    /// accumulator in block order (as the AVX2 kernel does one at a time); an odd last block
    /// takes the AVX2 step.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(
        a: &QuantizedActs,
        w: &Mxfp4Matrix,
        r: usize,
        c: usize,
        out: OutPtr,
    ) {
        let (k, kb) = (a.k, a.k / QK);
        let col_bytes = kb * BLOCK_BYTES;
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.blocks[c * col_bytes..(c + C) * col_bytes].as_ptr();
        let ones = _mm512_set1_epi16(1);
        let low = _mm512_set1_epi8(0x0F);
        // SAFETY: KVALUES holds 16 bytes.
        let table = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(KVALUES.as_ptr() as *const __m128i) });
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let pairs_end = kb & !1;
        let mut b = 0;
        while b < pairs_end {
            for j in 0..C {
                let blk = wq.wrapping_add(j * col_bytes + b * BLOCK_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(2 * C * col_bytes) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(2 * C * col_bytes + 64) as *const i8);
                // SAFETY: blocks `b` and `b + 1` of column `c + j` lie inside `w`.
                let (r0, r1, d0, d1) = unsafe {
                    (
                        _mm_loadu_si128(blk.add(1) as *const __m128i),
                        _mm_loadu_si128(blk.add(1 + BLOCK_BYTES) as *const __m128i),
                        e8m0_half(*blk),
                        e8m0_half(*blk.add(BLOCK_BYTES)),
                    )
                };
                // [r0, r0, r1, r1]: the odd 128-bit lanes take the high nibbles.
                let both =
                    _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(r0, r0)), _mm256_set_m128i(r1, r1), 1);
                let nib = _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, both, _mm512_srli_epi16(both, 4)), low);
                let wv = _mm512_shuffle_epi8(table, nib);
                let wabs = _mm512_abs_epi8(wv);
                let neg = _mm512_movepi8_mask(wv);
                for i in 0..R {
                    // SAFETY: blocks `b`, `b + 1` of row `r + i` lie inside `a`.
                    let av = unsafe { _mm512_loadu_si512(aq.add(i * k + b * QK) as *const _) };
                    let (da0, da1) = unsafe { (*ad.add(i * kb + b), *ad.add(i * kb + b + 1)) };
                    let signed = _mm512_mask_sub_epi8(av, neg, zero, av);
                    let lanes = _mm512_cvtepi32_ps(_mm512_madd_epi16(ones, _mm512_maddubs_epi16(wabs, signed)));
                    let lo = _mm512_castps512_ps256(lanes);
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lanes), 1));
                    let x = _mm256_fmadd_ps(_mm256_set1_ps(d0 * da0), lo, acc[i][j]);
                    acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * da1), hi, x);
                }
            }
            b += 2;
        }
        if b < kb {
            let ones = _mm256_set1_epi16(1);
            let low = _mm_set1_epi8(0x0F);
            let table = unsafe { super::avx2::table() };
            for j in 0..C {
                let blk = wq.wrapping_add(j * col_bytes + b * BLOCK_BYTES);
                // SAFETY: block `b` of column `c + j` lies inside `w`.
                let (wv, dw) = unsafe { (super::avx2::weights(blk.add(1), table, low), e8m0_half(*blk)) };
                let wabs = _mm256_sign_epi8(wv, wv);
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a`.
                    let av = unsafe { _mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i) };
                    let da = unsafe { *ad.add(i * kb + b) };
                    let pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, wv));
                    let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
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
