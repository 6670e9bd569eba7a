//! The panels' AVX-512 VNNI kernels: tiles of up to eight activation rows by one or two
//! column groups, one `vpdpbusd` per (row, group, quad pair half). They read the activations'
//! row-interleaved copy (`QuantizedActs::tiled`): a tile's rows of a block at fixed offsets
//! from one pointer, so the loop keeps no row pointers or indices in registers (with the
//! row-major layout they spilled to the stack, and every broadcast took an indexed address
//! that splits into two uops): 5–50% more `vpdpbusd` per cycle, by format.

use std::arch::x86_64::*;
use std::ops::Range;

use super::super::acts::TILE_ROWS;
use super::super::simd::dpwssd;
use super::{
    int16_pair, prefetch_block, split_sum, write_lanes, OutPtr, Panel, PanelFormat, QuantizedActs, GROUP, QK,
    SUPER_BLOCKS, VEC,
};

/// Rows in a tile: each unpacked weight vector serves this many rows. The activations are
/// read from `QuantizedActs::tiled`, whose row tiles are these.
const ROWS: usize = TILE_ROWS;

/// # Safety
/// AVX-512 VNNI is available; see `TileKernel::block`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn block<F: PanelFormat>(
    w: &Panel,
    a: &QuantizedActs,
    rows: Range<usize>,
    cols: Range<usize>,
    out: OutPtr,
) {
    let groups = cols.start / GROUP..cols.end.div_ceil(GROUP);
    assert!(rows.start.is_multiple_of(ROWS), "row tiles start at multiples of {ROWS}");
    let slots = rows.end.div_ceil(ROWS) * ROWS * (a.k / QK);
    let t = &a.tiled;
    assert!(t.qs.len() >= slots * QK && t.d.len().min(t.s.len()).min(t.isum.len()).min(t.isum16.len()) >= slots);
    let mut r = rows.start;
    while r < rows.end {
        let step = (rows.end - r).min(ROWS);
        // SAFETY: the tiles stay inside `rows` and the groups of `cols`.
        unsafe {
            match step {
                8 => groups_with::<F, 8, 1>(w, a, r, groups.clone(), out),
                7 => groups_with::<F, 7, 1>(w, a, r, groups.clone(), out),
                6 => groups_with::<F, 6, 1>(w, a, r, groups.clone(), out),
                5 => groups_with::<F, 5, 1>(w, a, r, groups.clone(), out),
                4 => groups_with::<F, 4, 2>(w, a, r, groups.clone(), out),
                3 => groups_with::<F, 3, 2>(w, a, r, groups.clone(), out),
                2 => groups_with::<F, 2, 2>(w, a, r, groups.clone(), out),
                _ => groups_with::<F, 1, 2>(w, a, r, groups.clone(), out),
            }
        }
        r += step;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn groups_with<F: PanelFormat, const R: usize, const C: usize>(
    w: &Panel,
    a: &QuantizedActs,
    r: usize,
    groups: Range<usize>,
    out: OutPtr,
) {
    let mut g = groups.start;
    while g + C <= groups.end {
        unsafe { tile::<F, R, C>(w, a, r, g, out) };
        g += C;
    }
    while g < groups.end {
        unsafe { tile::<F, R, 1>(w, a, r, g, out) };
        g += 1;
    }
}

/// Unit `u`'s two vectors of stored (unsigned) values: the low and high nibbles with their
/// bit planes added under masks, or Q8_0's two byte vectors.
///
/// # Safety
/// `q` and `h` are a (group, block)'s quads and bit planes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unit<F: PanelFormat>(q: *const u8, h: *const u8, u: usize) -> [__m512i; 2] {
    // SAFETY (loads): the caller's contract; the quads are 64-byte aligned.
    unsafe {
        if !F::NIBBLES {
            return [
                _mm512_load_si512(q.add(2 * u * VEC) as *const _),
                _mm512_load_si512(q.add((2 * u + 1) * VEC) as *const _),
            ];
        }
        let raw = _mm512_load_si512(q.add(u * VEC) as *const _);
        let low = _mm512_set1_epi8(0x0F);
        let mut v = [_mm512_and_si512(raw, low), _mm512_and_si512(_mm512_srli_epi16(raw, 4), low)];
        if F::HIGH_BITS == 2 {
            // `super::high_pair`: the unit's two fields moved to bits 4–5 and or-ed in under
            // the mask 0x30 (`a | (b & c)`); the 16-bit shifts spill only outside the mask.
            let hv = _mm512_load_si512(h.add((u / 2) * VEC) as *const _);
            let (lo, hi) = if u.is_multiple_of(2) {
                (_mm512_slli_epi16(hv, 4), hv)
            } else {
                (_mm512_slli_epi16(hv, 2), _mm512_srli_epi16(hv, 2))
            };
            let top = _mm512_set1_epi8(0x30);
            return [
                _mm512_ternarylogic_epi32::<0xF8>(v[0], lo, top),
                _mm512_ternarylogic_epi32::<0xF8>(v[1], hi, top),
            ];
        }
        if F::HIGH_BITS == 1 {
            for (half, v) in v.iter_mut().enumerate() {
                let k = (h.add((u * 2 + half) * 8) as *const u64).read_unaligned();
                *v = _mm512_mask_add_epi8(*v, k, *v, _mm512_set1_epi8(16));
            }
        }
        v
    }
}

/// `R` rows from `r` times the `C` groups from `g`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
unsafe fn tile<F: PanelFormat, const R: usize, const C: usize>(
    w: &Panel,
    a: &QuantizedActs,
    r: usize,
    g: usize,
    out: OutPtr,
) {
    let kb = a.k / QK;
    let records = kb / F::PER_RECORD;
    let (wq, wh, ws) = w.group::<F>(g, C);
    // Row `r + i`'s slot of block `b` is `(tile + b) · ROWS + i` (`QuantizedActs::tiled`,
    // whose size `block` checked): every row of a block at a fixed offset from one pointer.
    let tile0 = r / ROWS * kb;
    let tiled = &a.tiled;
    let (tq, td, ts) = (tiled.qs.as_ptr(), tiled.d.as_ptr(), tiled.s.as_ptr());
    let (tsum, tsum16) = (tiled.isum.as_ptr(), tiled.isum16.as_ptr());
    let units = 4 / F::SUBS;
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for rec in 0..records {
        let mut big = [[_mm512_setzero_ps(); C]; R];
        for bb in 0..F::PER_RECORD {
            let b = rec * F::PER_RECORD + bb;
            for j in 0..C {
                prefetch_block::<F>(wq, wh, j * kb + b, R);
            }
            for sub in 0..F::SUBS {
                let mut sum = [[zero; C]; R];
                let slot = (tile0 + b) * ROWS;
                if F::OFFSET != 0 {
                    // `vpdpbusd` multiplies the stored values: start from `-OFFSET · Σ x`.
                    for i in 0..R {
                        // SAFETY: the slot lies inside the tiled buffers (`block`).
                        let (all, first) = unsafe { (*tsum.add(slot + i), *tsum16.add(slot + i)) };
                        sum[i] = [_mm512_set1_epi32(-F::OFFSET * split_sum::<F>(all, first, sub)); C];
                    }
                }
                for u in sub * units..(sub + 1) * units {
                    let mut wv = [[zero; 2]; C];
                    for j in 0..C {
                        let at = j * kb + b;
                        // SAFETY: block `b` of group `g + j` lies inside the panel.
                        wv[j] = unsafe { unit::<F>(wq.add(at * F::QUAD_BYTES), wh.add(at * F::BIT_BYTES), u) };
                    }
                    for i in 0..R {
                        let x = tq.wrapping_add((slot + i) * QK);
                        // SAFETY: the unit's activation quads lie inside block `b` of row `r + i`.
                        let (x0, x1) = unsafe {
                            (
                                _mm512_set1_epi32((x.add(F::XOFF[u][0]) as *const i32).read_unaligned()),
                                _mm512_set1_epi32((x.add(F::XOFF[u][1]) as *const i32).read_unaligned()),
                            )
                        };
                        for j in 0..C {
                            sum[i][j] = _mm512_dpbusd_epi32(sum[i][j], wv[j][0], x0);
                            sum[i][j] = _mm512_dpbusd_epi32(sum[i][j], wv[j][1], x1);
                        }
                    }
                }
                for j in 0..C {
                    let s = ws.wrapping_add((j * records + rec) * F::SCALE_BYTES);
                    if F::SUPER {
                        // SAFETY: the sub-block's sixteen scales lie inside the record.
                        let raw = unsafe { _mm_loadu_si128(s.add((bb * F::SUBS + sub) * GROUP) as *const __m128i) };
                        let sc = _mm512_cvtepi32_ps(if F::SIGNED {
                            _mm512_cvtepi8_epi32(raw)
                        } else {
                            _mm512_cvtepu8_epi32(raw)
                        });
                        for i in 0..R {
                            big[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][j]), sc, big[i][j]);
                        }
                        continue;
                    }
                    // SAFETY: the block's scales (and offsets) lie inside the record.
                    let dw = unsafe { _mm512_cvtph_ps(_mm256_load_si256(s as *const __m256i)) };
                    let mw = if F::HAS_MIN {
                        unsafe { _mm512_cvtph_ps(_mm256_load_si256(s.add(2 * GROUP) as *const __m256i)) }
                    } else {
                        dw
                    };
                    for i in 0..R {
                        // SAFETY: as above.
                        let (dx, sx) = unsafe { (*td.add(slot + i), *ts.add(slot + i)) };
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(dx));
                        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][j]), scale, acc[i][j]);
                        if F::HAS_MIN {
                            acc[i][j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), acc[i][j]);
                        }
                    }
                }
            }
        }
        if !F::SUPER {
            continue;
        }
        for j in 0..C {
            let s = ws.wrapping_add((j * records + rec) * F::SCALE_BYTES);
            let f = s.wrapping_add(F::SC_BYTES + F::MIN_BYTES);
            // SAFETY: the record's `d`, `dmin` and mins lie inside it.
            let dw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(f as *const __m256i)) };
            let dm = if F::HAS_MIN {
                unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(f.add(2 * GROUP) as *const __m256i)) }
            } else {
                dw
            };
            let mut mins = [zero; 4];
            if F::HAS_MIN {
                for (t, m) in mins.iter_mut().enumerate() {
                    let p = s.wrapping_add(F::SC_BYTES + 2 * GROUP * t);
                    *m = _mm512_cvtepu8_epi16(unsafe { _mm256_loadu_si256(p as *const __m256i) });
                }
            }
            let slot = (tile0 + rec * SUPER_BLOCKS) * ROWS;
            for i in 0..R {
                // SAFETY: the record's slots lie inside the tiled buffers (`block`).
                let dx = _mm512_set1_ps(unsafe { *td.add(slot + i) });
                acc[i][j] = _mm512_fmadd_ps(big[i][j], _mm512_mul_ps(dw, dx), acc[i][j]);
                if F::HAS_MIN {
                    let mut m = zero;
                    for (t, &mins) in mins.iter().enumerate() {
                        // SAFETY: as above. Sub-blocks 2t and 2t + 1 (`super::sum_pair`).
                        let (lo, hi) =
                            unsafe { (*tsum.add(slot + 2 * t * ROWS + i), *tsum.add(slot + (2 * t + 1) * ROWS + i)) };
                        m = dpwssd(m, mins, _mm512_set1_epi32(int16_pair(lo, hi)));
                    }
                    acc[i][j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(m), _mm512_mul_ps(dm, dx), acc[i][j]);
                }
            }
        }
    }
    for i in 0..R {
        for j in 0..C {
            let mut lanes = [0f32; GROUP];
            // SAFETY: sixteen floats fit `lanes`.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
            // SAFETY: the caller owns these output elements.
            unsafe { write_lanes(out, w.n, r + i, (g + j) * GROUP, &lanes) };
        }
    }
}
