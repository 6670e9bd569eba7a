//! The panels' AVX2 kernels: tiles of up to four activation rows by one group, taken as two
//! halves of eight columns (`vpmaddubsw` then `vpmaddwd`; Q8_0's signed values through
//! ggml's sign trick, so no pair of products saturates).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{
    prefetch_block, sub_sum, sum_pair, write_lanes, OutPtr, Panel, PanelFormat, QuantizedActs, GROUP, QK, SUPER_BLOCKS,
    VEC,
};

/// Rows in a tile (sixteen registers hold their sums and accumulators).
const ROWS: usize = 4;

/// # Safety
/// AVX2, FMA and F16C are available; see `TileKernel::block`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block<F: PanelFormat>(
    w: &Panel,
    a: &QuantizedActs,
    rows: Range<usize>,
    cols: Range<usize>,
    out: OutPtr,
) {
    let mut r = rows.start;
    while r < rows.end {
        let step = (rows.end - r).min(ROWS);
        for g in cols.start / GROUP..cols.end.div_ceil(GROUP) {
            // SAFETY: the tiles stay inside `rows` and the groups of `cols`.
            unsafe {
                match step {
                    4 => tile::<F, 4>(w, a, r, g, out),
                    3 => tile::<F, 3>(w, a, r, g, out),
                    2 => tile::<F, 2>(w, a, r, g, out),
                    _ => tile::<F, 1>(w, a, r, g, out),
                }
            }
        }
        r += step;
    }
}

/// Bits `32h..32h+32` of the 64-bit plane mask at `p` as bytes: 16 where the bit is set.
///
/// # Safety
/// Eight bytes at `p` are readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn plane(p: *const u8, h: usize) -> __m256i {
    // SAFETY: the caller's contract.
    let m = unsafe { (p.add(4 * h) as *const i32).read_unaligned() };
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(m),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16))
}

/// Unit `u`'s values for the eight columns of half `h`, as `dot` takes them: the stored
/// nibble values with their planes (and two unused slots), or Q8_0's `|q|` and `q` twice.
///
/// # Safety
/// `q` and `bits` are a (group, block)'s quads and bit planes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn unit<F: PanelFormat>(q: *const u8, bits: *const u8, u: usize, h: usize) -> [__m256i; 4] {
    // SAFETY (loads): the caller's contract; the quads are 64-byte aligned.
    unsafe {
        if !F::NIBBLES {
            let flip = _mm256_set1_epi8(-128);
            let w0 = _mm256_xor_si256(_mm256_load_si256(q.add(2 * u * VEC + 32 * h) as *const __m256i), flip);
            let w1 = _mm256_xor_si256(_mm256_load_si256(q.add((2 * u + 1) * VEC + 32 * h) as *const __m256i), flip);
            return [_mm256_sign_epi8(w0, w0), w0, _mm256_sign_epi8(w1, w1), w1];
        }
        let raw = _mm256_load_si256(q.add(u * VEC + 32 * h) as *const __m256i);
        let low = _mm256_set1_epi8(0x0F);
        let mut v = [_mm256_and_si256(raw, low), _mm256_and_si256(_mm256_srli_epi16(raw, 4), low)];
        if F::HIGH_BITS == 2 {
            // `super::high_pair`: the unit's two fields moved to bits 4–5 and or-ed in.
            let hv = _mm256_load_si256(bits.add((u / 2) * VEC + 32 * h) as *const __m256i);
            let (lo, hi) = if u.is_multiple_of(2) {
                (_mm256_slli_epi16(hv, 4), hv)
            } else {
                (_mm256_slli_epi16(hv, 2), _mm256_srli_epi16(hv, 2))
            };
            let top = _mm256_set1_epi8(0x30);
            v[0] = _mm256_or_si256(v[0], _mm256_and_si256(lo, top));
            v[1] = _mm256_or_si256(v[1], _mm256_and_si256(hi, top));
            return [v[0], v[1], v[0], v[1]];
        }
        if F::HIGH_BITS == 1 {
            for (half, v) in v.iter_mut().enumerate() {
                *v = _mm256_add_epi8(*v, plane(bits.add((u * 2 + half) * 8), h));
            }
        }
        [v[0], v[1], v[0], v[1]]
    }
}

/// The exact int32 products of a unit's values with its two broadcast activation quads.
#[inline]
#[target_feature(enable = "avx2")]
fn dot<F: PanelFormat>(w: [__m256i; 4], x0: __m256i, x1: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    if !F::NIBBLES {
        // |q| times x with q's sign: pairs of at most 128 · 127.
        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w[0], _mm256_sign_epi8(x0, w[1])), ones);
        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w[2], _mm256_sign_epi8(x1, w[3])), ones);
        return _mm256_add_epi32(p0, p1);
    }
    // Values below 64: four products of at most 63 · 127 per 16-bit lane.
    let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w[0], x0), _mm256_maddubs_epi16(w[1], x1));
    _mm256_madd_epi16(pairs, ones)
}

/// `R` rows from `r` times group `g`, one eight-column half after the other.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same i
unsafe fn tile<F: PanelFormat, const R: usize>(w: &Panel, a: &QuantizedActs, r: usize, g: usize, out: OutPtr) {
    let (k, kb) = (a.k, a.k / QK);
    let records = kb / F::PER_RECORD;
    let (wq, wh, ws) = w.group::<F>(g, 1);
    let aq = a.qs[r * k..(r + R) * k].as_ptr();
    let units = 4 / F::SUBS;
    let zero = _mm256_setzero_si256();
    // Q8_0 multiplies its signed values directly; the nibble formats their stored ones.
    let offset = if F::NIBBLES { F::OFFSET } else { 0 };
    let mut lanes = [[0f32; GROUP]; R];
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for rec in 0..records {
            let s = ws.wrapping_add(rec * F::SCALE_BYTES);
            let mut big = [_mm256_setzero_ps(); R];
            for bb in 0..F::PER_RECORD {
                let b = rec * F::PER_RECORD + bb;
                if h == 0 {
                    // The second half reads the group again from the cache.
                    prefetch_block::<F>(wq, wh, b, R);
                }
                for sub in 0..F::SUBS {
                    let mut sum = [zero; R];
                    if offset != 0 {
                        for i in 0..R {
                            sum[i] = _mm256_set1_epi32(-offset * sub_sum::<F>(a, (r + i) * kb + b, sub));
                        }
                    }
                    for u in sub * units..(sub + 1) * units {
                        // SAFETY: block `b` of group `g` lies inside the panel.
                        let wv = unsafe { unit::<F>(wq.add(b * F::QUAD_BYTES), wh.add(b * F::BIT_BYTES), u, h) };
                        for i in 0..R {
                            let x = aq.wrapping_add(i * k + b * QK);
                            // SAFETY: the unit's activation quads lie inside block `b` of row `r + i`.
                            let (x0, x1) = unsafe {
                                (
                                    _mm256_set1_epi32((x.add(F::XOFF[u][0]) as *const i32).read_unaligned()),
                                    _mm256_set1_epi32((x.add(F::XOFF[u][1]) as *const i32).read_unaligned()),
                                )
                            };
                            sum[i] = _mm256_add_epi32(sum[i], dot::<F>(wv, x0, x1));
                        }
                    }
                    if F::SUPER {
                        // SAFETY: the sub-block's scales for this half lie inside the record.
                        let raw =
                            unsafe { _mm_loadl_epi64(s.add((bb * F::SUBS + sub) * GROUP + 8 * h) as *const __m128i) };
                        let sc = _mm256_cvtepi32_ps(if F::SIGNED {
                            _mm256_cvtepi8_epi32(raw)
                        } else {
                            _mm256_cvtepu8_epi32(raw)
                        });
                        for i in 0..R {
                            big[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[i]), sc, big[i]);
                        }
                        continue;
                    }
                    // SAFETY: the half's scales (and offsets) lie inside the record.
                    let dw = unsafe { _mm256_cvtph_ps(_mm_load_si128(s.add(16 * h) as *const __m128i)) };
                    let mw = if F::HAS_MIN {
                        unsafe { _mm256_cvtph_ps(_mm_load_si128(s.add(2 * GROUP + 16 * h) as *const __m128i)) }
                    } else {
                        dw
                    };
                    for i in 0..R {
                        let at = (r + i) * kb + b;
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d[at]));
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[i]), scale, acc[i]);
                        if F::HAS_MIN {
                            acc[i] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a.s[at]), acc[i]);
                        }
                    }
                }
            }
            if !F::SUPER {
                continue;
            }
            let f = s.wrapping_add(F::SC_BYTES + F::MIN_BYTES + 16 * h);
            // SAFETY: the record's `d`, `dmin` and mins lie inside it.
            let dw = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(f as *const __m128i)) };
            let dm = if F::HAS_MIN {
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(f.add(2 * GROUP) as *const __m128i)) }
            } else {
                dw
            };
            for i in 0..R {
                let at = (r + i) * kb + rec * SUPER_BLOCKS;
                let dx = _mm256_set1_ps(a.d[at]);
                acc[i] = _mm256_fmadd_ps(big[i], _mm256_mul_ps(dw, dx), acc[i]);
                if F::HAS_MIN {
                    let mut m = zero;
                    for t in 0..4 {
                        let p = s.wrapping_add(F::SC_BYTES + 2 * GROUP * t + 16 * h);
                        let mins = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(p as *const __m128i) });
                        m = _mm256_add_epi32(m, _mm256_madd_epi16(mins, _mm256_set1_epi32(sum_pair(a, at, t))));
                    }
                    acc[i] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_mul_ps(dm, dx), acc[i]);
                }
            }
        }
        for i in 0..R {
            // SAFETY: eight floats fit the half.
            unsafe { _mm256_storeu_ps(lanes[i].as_mut_ptr().add(8 * h), acc[i]) };
        }
    }
    for i in 0..R {
        // SAFETY: the caller owns these output elements.
        unsafe { write_lanes(out, w.n, r + i, g * GROUP, &lanes[i]) };
    }
}
