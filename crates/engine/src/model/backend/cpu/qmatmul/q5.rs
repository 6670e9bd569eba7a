//! The 5-bit legacy formats, Q5_0 (`w = d·(q − 16)`) and Q5_1 (`w = d·q + m`), on wick's
//! register-tiled kernel, kept as stored: per block of 32, 16 bytes of low nibbles (byte `i`:
//! value `i` low, value `i + 16` high), a 32-bit word of fifth bits (bit `i`: value `i`), and
//! the f16 scale (and Q5_1's offset) widened to f32.
//!
//! Both take Q4_1's arithmetic with unsigned 5-bit `q` (sixteen paired lanes, `PairLanes`):
//! the lanes start from the offsets, lane `b mod 16` taking `fma(m, t_x, lane)` in block order,
//! with `m = −16·d` (exact) and `t_x = d_x·Σx` exact for Q5_0, and Q5_1's `m` with candle's
//! f16-rounded `s` (ggml's Q8_1 pairing) for Q5_1; then block after block `fma(i32→f32(Σ q·x
//! over values 4l..4l+4), d·d_x, lane)` into lane `l` of the block's eight (even or odd);
//! the halves are added and one fixed horizontal sum ends it. Scalar, AVX2 and AVX-512 VNNI
//! give the same bits; rows are bit-identical whatever shares the call.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::{OutPtr, PairLanes, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Q5_0 or Q5_1 weights `[n, k]`.
#[derive(Clone)]
pub struct Q5Matrix {
    n: usize,
    k: usize,
    nibbles: Vec<u8>,
    high: Vec<u32>,
    d: Vec<f32>,
    /// Q5_1's offsets; `None` for Q5_0 (whose offset is `−16·d`).
    m: Option<Vec<f32>>,
    level: KernelLevel,
}

impl std::fmt::Debug for Q5Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = if self.m.is_some() { "Q5_1" } else { "Q5_0" };
        write!(f, "Q5Matrix[{t}, {}, {}]", self.n, self.k)
    }
}

impl Q5Matrix {
    /// Takes a Q5_0 or Q5_1 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let one = match q.dtype() {
            GgmlDType::Q5_0 => false,
            GgmlDType::Q5_1 => true,
            t => return Err(EngineError::Load(format!("Q5Matrix needs Q5_0 or Q5_1 weights, got {t:?}"))),
        };
        let (n, k) = q.shape().dims2()?;
        let bytes = q.data()?;
        let head = if one { 4 } else { 2 };
        let block = head + 4 + QK / 2;
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * block {
            return Err(EngineError::Load(format!("bad {:?} data: {} bytes for [{n}, {k}]", q.dtype(), bytes.len())));
        }
        let blocks = n * k / QK;
        let mut nibbles = Vec::with_capacity(blocks * QK / 2);
        let (mut high, mut d, mut m) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks), Vec::new());
        for b in bytes.chunks_exact(block) {
            d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
            if one {
                m.push(f16::from_le_bytes([b[2], b[3]]).to_f32());
            }
            high.push(u32::from_le_bytes([b[head], b[head + 1], b[head + 2], b[head + 3]]));
            nibbles.extend_from_slice(&b[head + 4..]);
        }
        Ok(Self { n, k, nibbles, high, d, m: one.then_some(m), level: KernelLevel::current() })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.level = level;
        self
    }

    /// Column `c`'s offsets as `(values, factor)`: `m` itself for Q5_1, `d` times −16 for Q5_0.
    #[inline(always)]
    fn offsets(&self, c: usize) -> (&[f32], f32) {
        let kb = self.k / QK;
        match &self.m {
            Some(m) => (&m[c * kb..(c + 1) * kb], 1.0),
            None => (&self.d[c * kb..(c + 1) * kb], -16.0),
        }
    }

    /// The activation sums the offsets multiply: exact for Q5_0, candle's Q8_1 `s` for Q5_1.
    #[inline(always)]
    fn sums<'a>(&self, a: &'a QuantizedActs) -> &'a [f32] {
        if self.m.is_some() {
            &a.s
        } else {
            &a.sx
        }
    }
}

impl TileKernel for Q5Matrix {
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
fn dot_scalar(a: &QuantizedActs, r: usize, w: &Q5Matrix, c: usize) -> f32 {
    let (xq, xd) = a.row(r);
    let kb = a.k / QK;
    let (m, mul) = w.offsets(c);
    let mut acc = PairLanes::offsets(m, mul, &w.sums(a)[r * kb..(r + 1) * kb]);
    for b in 0..kb {
        let i = c * kb + b;
        let nib = &w.nibbles[i * QK / 2..(i + 1) * QK / 2];
        let high = w.high[i];
        let q = |v: usize| {
            let lo = if v < QK / 2 { nib[v] & 0x0F } else { nib[v - QK / 2] >> 4 };
            (lo | (((high >> v) & 1) << 4) as u8) as i32
        };
        let x = &xq[b * QK..(b + 1) * QK];
        let scale = w.d[i] * xd[b];
        for l in 0..8 {
            let s: i32 = (4 * l..4 * l + 4).map(|v| q(v) * x[v] as i32).sum();
            acc.fma(b, l, s as f32, scale);
        }
    }
    acc.finish()
}

/// # Safety
/// See `TileKernel::block`.
pub(super) unsafe fn scalar_block(
    a: &QuantizedActs,
    w: &Q5Matrix,
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

    use super::super::simd::{hsum, offsets8x2};
    use super::{OutPtr, Q5Matrix, QuantizedActs, QK};

    super::super::tile_walk!(Q5Matrix, "avx2,fma", [1, 1, 2, 4]);

    /// Stored block `i`'s 32 values `q` (0..32) in order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn values(w: &Q5Matrix, i: usize) -> __m256i {
        // SAFETY: block `i` lies inside `w` (the caller's contract).
        let nib = unsafe { _mm_loadu_si128(w.nibbles.as_ptr().add(i * QK / 2) as *const __m128i) };
        let both = _mm256_broadcastsi128_si256(nib);
        let lo = _mm256_and_si256(
            _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
            _mm256_set1_epi8(0x0F),
        );
        // ggml's `bytes_from_bits_32`: byte `v` all ones where bit `v` is set.
        let bits = _mm256_shuffle_epi8(
            _mm256_set1_epi32(w.high[i] as i32),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        let set =
            _mm256_cmpeq_epi8(_mm256_or_si256(bits, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi64x(-1));
        _mm256_or_si256(lo, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }

    /// `R` rows from `r` times `C` columns from `c`, two 8-lane accumulators (even and odd
    /// blocks) per pair, started from the offsets.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q5Matrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        for i in 0..R {
            for j in 0..C {
                let (m, mul) = w.offsets(c + j);
                // SAFETY: the row's `kb` sums lie inside `w.sums(a)`.
                acc[i][j] = unsafe { offsets8x2(m, mul, &w.sums(a)[(r + i) * kb..][..kb]) };
            }
        }
        for b in 0..kb {
            for j in 0..C {
                let blk = (c + j) * kb + b;
                _mm_prefetch::<_MM_HINT_T0>(w.nibbles.as_ptr().wrapping_add((blk + 2 * C * kb) * QK / 2) as *const i8);
                // SAFETY: block `b` of column `c + j` lies inside `w`.
                let wv = unsafe { values(w, blk) };
                let dw = w.d[blk];
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a` (sliced above).
                    let (av, da) =
                        unsafe { (_mm256_loadu_si256(aq.add(i * k + b * QK) as *const __m256i), *ad.add(i * kb + b)) };
                    let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(wv, av)));
                    acc[i][j][b % 2] = _mm256_fmadd_ps(lanes, _mm256_set1_ps(dw * da), acc[i][j][b % 2]);
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
    use super::{OutPtr, Q5Matrix, QuantizedActs, QK};

    super::super::tile_walk!(Q5Matrix, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma", [4, 4, 4, 4]);

    /// `R` rows from `r` times `C` columns from `c`, one 16-lane accumulator per pair started
    /// from the offsets: blocks in pairs, one `vpdpbusd` for both (the fifth bits set through a
    /// byte mask), one multiply and one fma; an odd last block takes a 256-bit step into the
    /// even half.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &QuantizedActs, w: &Q5Matrix, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK);
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let zero = _mm512_setzero_si512();
        let low = _mm512_set1_epi8(0x0F);
        let fifth = _mm512_set1_epi8(0x10);
        let spread = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for i in 0..R {
            for j in 0..C {
                let (m, mul) = w.offsets(c + j);
                // SAFETY: the row's `kb` sums lie inside `w.sums(a)`.
                acc[i][j] = unsafe { offsets16(m, mul, &w.sums(a)[(r + i) * kb..][..kb]) };
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
                let blk = (c + j) * kb + b;
                let p = w.nibbles.as_ptr().wrapping_add(blk * QK / 2);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * C * kb * QK / 2) as *const i8);
                // SAFETY: blocks `b`, `b + 1` of column `c + j` lie inside `w`.
                let raw = unsafe { _mm256_loadu_si256(p as *const __m256i) };
                let both = _mm512_permutexvar_epi64(spread, _mm512_castsi256_si512(raw));
                let lo = _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, both, _mm512_srli_epi16(both, 4)), low);
                let mask = w.high[blk] as u64 | (w.high[blk + 1] as u64) << 32;
                let wv = _mm512_or_si512(lo, _mm512_maskz_mov_epi8(mask, fifth));
                // SAFETY: blocks `b`, `b + 1` of column `c + j` lie inside `w.d`.
                let dw = unsafe { pair_scales(w.d.as_ptr().add(blk)) };
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
            for j in 0..C {
                let blk = (c + j) * kb + b;
                // SAFETY: block `b` of column `c + j` lies inside `w`.
                let wv = unsafe { super::avx2::values(w, blk) };
                let dw = w.d[blk];
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
