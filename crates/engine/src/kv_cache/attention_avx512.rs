//! AVX-512 kernels of `kv_cache::attention`: scores of a tile of up to four queries against a
//! run of keys, and the weighted sum of value rows, on 16 lanes (the softmax's exp stays on
//! `attention_avx2`'s 8-lane kernel). K and V rows are read in place as f32 or f16
//! (`KvElem`); a row length that is not a multiple of 16 ends in one masked vector.
//!
//! Batch invariance, as in `attention_avx2`: every (query, key) score is one 16-lane FMA
//! chain over `head_dim` in order, the fixed lane reduction of `hsum4`, then `* scale`,
//! whichever tile and slot it is computed in; every output lane is one FMA per key in key
//! order. Tiles only share loads of K and V rows between queries.
//!
//! Callers must check AVX-512 F/BW/VL, AVX2, FMA and F16C at run time before calling anything
//! here.

// Tile loops index several fixed-size arrays in step; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::dtype::KvElem;

/// The mask of the lanes of the 16-value vector at column `c` that lie inside `hd` columns.
#[inline]
fn lanes(c: usize, hd: usize) -> __mmask16 {
    match hd.saturating_sub(c) {
        n if n >= 16 => 0xffff,
        n => ((1u32 << n) - 1) as __mmask16,
    }
}

/// Lane sums of four vectors (the `i`-th in lane `i`), each in one fixed order whichever slot
/// it is passed in: 256-bit halves, then 128-bit quarters, then adjacent lanes, then pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn hsum4(a: __m512, b: __m512, c: __m512, d: __m512) -> [f32; 4] {
    // [a0+a2, a1+a3, b0+b2, b1+b3] in 128-bit quarters, and likewise for c, d.
    let ab = _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b));
    let cd = _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(c, d), _mm512_shuffle_f32x4::<0b11_10_11_10>(c, d));
    // One quarter per vector: [a, b, c, d].
    let q = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd), _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd));
    let x = _mm512_add_ps(q, _mm512_shuffle_ps::<0b10_11_00_01>(q, q));
    let y = _mm512_add_ps(x, _mm512_shuffle_ps::<0b01_00_11_10>(x, x));
    let r = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), y);
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(r));
    out
}

/// Raw dot products of `NQ` query rows with `NK` key rows of length `hd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dots<E: KvElem, const NQ: usize, const NK: usize>(
    q: &[*const f32; NQ],
    k: &[*const E; NK],
    hd: usize,
) -> [[f32; NK]; NQ] {
    const { assert!(NQ * NK <= 32) };
    let mut acc = [[_mm512_setzero_ps(); NK]; NQ];
    let mut c = 0;
    while c < hd {
        let m = lanes(c, hd);
        let mut kv = [_mm512_setzero_ps(); NK];
        for b in 0..NK {
            kv[b] = E::load16(k[b].add(c), m);
        }
        for a in 0..NQ {
            let qv = _mm512_maskz_loadu_ps(m, q[a].add(c));
            for b in 0..NK {
                acc[a][b] = _mm512_fmadd_ps(qv, kv[b], acc[a][b]);
            }
        }
        c += 16;
    }
    // Reduce in groups of four vectors; unused slots are zero and their sums dropped.
    let mut flat = [_mm512_setzero_ps(); 32];
    for a in 0..NQ {
        for b in 0..NK {
            flat[a * NK + b] = acc[a][b];
        }
    }
    let mut sums = [0f32; 32];
    for g in 0..(NQ * NK).div_ceil(4) {
        let s = hsum4(flat[4 * g], flat[4 * g + 1], flat[4 * g + 2], flat[4 * g + 3]);
        sums[4 * g..4 * g + 4].copy_from_slice(&s);
    }
    let mut out = [[0f32; NK]; NQ];
    for a in 0..NQ {
        for b in 0..NK {
            out[a][b] = sums[a * NK + b];
        }
    }
    out
}

/// `out[at[a] + i] = (q[qrow[a]..] · ks[offs[i]..]) * scale`, `NK` keys at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_nk<E: KvElem, const NQ: usize, const NK: usize>(
    q: &[f32],
    qrow: [usize; NQ],
    ks: &[E],
    offs: &[usize],
    hd: usize,
    scale: f32,
    out: &mut [f32],
    at: [usize; NQ],
) {
    let qp = qrow.map(|r| q.as_ptr().add(r));
    let kb = ks.as_ptr();
    let mut i = 0;
    while i + NK <= offs.len() {
        let mut kp = [kb; NK];
        for (b, p) in kp.iter_mut().enumerate() {
            *p = kb.add(offs[i + b]);
        }
        let r = dots::<E, NQ, NK>(&qp, &kp, hd);
        for a in 0..NQ {
            for b in 0..NK {
                *out.get_unchecked_mut(at[a] + i + b) = r[a][b] * scale;
            }
        }
        i += NK;
    }
    while i < offs.len() {
        let r = dots::<E, NQ, 1>(&qp, &[kb.add(offs[i])], hd);
        for a in 0..NQ {
            *out.get_unchecked_mut(at[a] + i) = r[a][0] * scale;
        }
        i += 1;
    }
}

/// Scores of `NQ` queries (rows `qrow` of `q`) against the key rows at `offs` of `ks`,
/// written to `out[at[a]..at[a] + offs.len()]`.
///
/// # Safety
/// See the module; the bounds are checked here.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn scores<E: KvElem, const NQ: usize>(
    q: &[f32],
    qrow: [usize; NQ],
    ks: &[E],
    offs: &[usize],
    hd: usize,
    scale: f32,
    out: &mut [f32],
    at: [usize; NQ],
) {
    assert!(qrow.iter().all(|&r| r + hd <= q.len()));
    assert!(at.iter().all(|&a| a + offs.len() <= out.len()));
    assert!(offs.iter().all(|&o| o + hd <= ks.len()));
    match NQ {
        1 => scores_nk::<E, NQ, 8>(q, qrow, ks, offs, hd, scale, out, at),
        _ => scores_nk::<E, NQ, 4>(q, qrow, ks, offs, hd, scale, out, at),
    }
}

/// Columns `col..col + 16 * W` (masked to `hd`) of `accumulate`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn accumulate_block<E: KvElem, const NQ: usize, const W: usize>(
    wp: &[*const f32; NQ],
    vb: *const E,
    offs: &[usize],
    ap: &[*mut f32; NQ],
    col: usize,
    hd: usize,
) {
    let m: [__mmask16; W] = std::array::from_fn(|u| lanes(col + 16 * u, hd));
    let mut r = [[_mm512_setzero_ps(); W]; NQ];
    for a in 0..NQ {
        for u in 0..W {
            r[a][u] = _mm512_maskz_loadu_ps(m[u], ap[a].add(col + 16 * u));
        }
    }
    for (i, &o) in offs.iter().enumerate() {
        let vp = vb.add(o + col);
        let mut vv = [_mm512_setzero_ps(); W];
        for u in 0..W {
            vv[u] = E::load16(vp.add(16 * u), m[u]);
        }
        for a in 0..NQ {
            let w = _mm512_set1_ps(*wp[a].add(i));
            for u in 0..W {
                r[a][u] = _mm512_fmadd_ps(w, vv[u], r[a][u]);
            }
        }
    }
    for a in 0..NQ {
        for u in 0..W {
            _mm512_mask_storeu_ps(ap[a].add(col + 16 * u), m[u], r[a][u]);
        }
    }
}

/// `acc[acc_at[a] + c] += w[at[a] + i] * vs[offs[i] + c]` for every key `i` in order (one FMA
/// per key and lane), for `NQ` queries sharing each value row.
///
/// # Safety
/// See the module; the bounds are checked here.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn accumulate<E: KvElem, const NQ: usize>(
    w: &[f32],
    at: [usize; NQ],
    vs: &[E],
    offs: &[usize],
    hd: usize,
    acc: &mut [f32],
    acc_at: [usize; NQ],
) {
    assert!(at.iter().all(|&a| a + offs.len() <= w.len()));
    assert!(offs.iter().all(|&o| o + hd <= vs.len()));
    assert!(acc_at.iter().all(|&a| a + hd <= acc.len()));
    for (x, &a) in acc_at.iter().enumerate() {
        assert!(acc_at[..x].iter().all(|&b| b.abs_diff(a) >= hd), "accumulators overlap");
    }
    let wp = at.map(|a| w.as_ptr().add(a));
    let ap = acc_at.map(|a| acc.as_mut_ptr().add(a));
    let vb = vs.as_ptr();
    let mut col = 0;
    while col < hd {
        match (hd - col).div_ceil(16) {
            1 => accumulate_block::<E, NQ, 1>(&wp, vb, offs, &ap, col, hd),
            2 => accumulate_block::<E, NQ, 2>(&wp, vb, offs, &ap, col, hd),
            3 => accumulate_block::<E, NQ, 3>(&wp, vb, offs, &ap, col, hd),
            _ => accumulate_block::<E, NQ, 4>(&wp, vb, offs, &ap, col, hd),
        }
        col += 64;
    }
}
