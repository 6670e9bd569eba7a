//! AVX2+FMA kernels of `kv_cache::attention`: scores of a tile of up to four queries against
//! a run of keys, the exp/sum step of a softmax, and the weighted sum of value rows.
//!
//! Batch invariance lives here: whatever the tile size, every (query, key) score is the same
//! chain of operations (one 8-lane FMA accumulator over `head_dim` in order, the fixed lane
//! reduction of `hsum4`, the scalar FMA tail, then `* scale`), and every output lane is one
//! FMA per key in key order. Tiles only share loads of K and V rows between queries.
//!
//! K and V rows are read in place as f32 or f16 (`KvElem`, converted exactly as loaded).
//!
//! Callers must check `avx2`, `fma` and `f16c` at run time before calling anything here.

// Tile loops index several fixed-size arrays in step; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::dtype::KvElem;

/// Lane sums of four vectors (lane `i` of the result for the `i`-th), each in the one order
/// `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`, whichever slot a vector is passed in.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> [f32; 4] {
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    let u = _mm256_hadd_ps(ab, cd);
    let s = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps::<1>(u));
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), s);
    out
}

/// Raw dot products of `NQ` query rows with `NK` key rows of length `hd`, as 8-lane sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots<E: KvElem, const NQ: usize, const NK: usize>(
    q: &[*const f32; NQ],
    k: &[*const E; NK],
    hd: usize,
) -> [[f32; NK]; NQ] {
    const { assert!(NQ * NK <= 32) };
    let n8 = hd / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); NK]; NQ];
    let mut c = 0;
    while c < n8 {
        let mut kv = [_mm256_setzero_ps(); NK];
        for b in 0..NK {
            kv[b] = E::load8(k[b].add(c));
        }
        for a in 0..NQ {
            let qv = _mm256_loadu_ps(q[a].add(c));
            for b in 0..NK {
                acc[a][b] = _mm256_fmadd_ps(qv, kv[b], acc[a][b]);
            }
        }
        c += 8;
    }
    // Reduce in groups of four vectors; unused slots are zero and their sums dropped.
    let mut flat = [_mm256_setzero_ps(); 32];
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
    if n8 < hd {
        for a in 0..NQ {
            for b in 0..NK {
                let mut s = out[a][b];
                for i in n8..hd {
                    s = (*q[a].add(i)).mul_add((*k[b].add(i)).to_f32(), s);
                }
                out[a][b] = s;
            }
        }
    }
    out
}

/// `out[at[a] + i] = (q[qrow[a]..] · ks[offs[i]..]) * scale`, `NK` keys at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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
/// AVX2 and FMA must be available; the bounds are checked here.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
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
        2 => scores_nk::<E, NQ, 4>(q, qrow, ks, offs, hd, scale, out, at),
        _ => scores_nk::<E, NQ, 2>(q, qrow, ks, offs, hd, scale, out, at),
    }
}

/// `exp(x)` lane-wise for `x <= 0` (Cephes' polynomial, about 1 ulp); below about -87.3
/// (where `exp` leaves the normal range) the result is 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp8(x: __m256) -> __m256 {
    let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.3));
    let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.376_26)), _mm256_set1_ps(-88.376_26));
    let fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(super::attention_scalar::EXP_C1), x);
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(super::attention_scalar::EXP_C2), x);
    let p = super::attention_scalar::EXP_P;
    let mut y = _mm256_set1_ps(p[0]);
    for &c in &p[1..] {
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0));
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)));
    _mm256_andnot_ps(tiny, _mm256_mul_ps(y, _mm256_castsi256_ps(e)))
}

/// Replaces the scores `s` by `exp(s - max(s))` and returns their sum (8 lanes over the
/// scores in order, then `hsum4`).
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn softmax_exp(s: &mut [f32]) -> f32 {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let m = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
        _mm256_storeu_ps(c.as_mut_ptr(), e);
        sum = _mm256_add_ps(sum, e);
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut pad = [f32::NEG_INFINITY; 8];
        pad[..tail.len()].copy_from_slice(tail);
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(pad.as_ptr()), m));
        _mm256_storeu_ps(pad.as_mut_ptr(), e);
        tail.copy_from_slice(&pad[..tail.len()]);
        sum = _mm256_add_ps(sum, e);
    }
    let z = _mm256_setzero_ps();
    hsum4(sum, z, z, z)[0]
}

/// One column block (`W` vectors from column `col`) of `accumulate`.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_block<E: KvElem, const NQ: usize, const W: usize>(
    wp: &[*const f32; NQ],
    vb: *const E,
    offs: &[usize],
    ap: &[*mut f32; NQ],
    col: usize,
) {
    let mut r = [[_mm256_setzero_ps(); W]; NQ];
    for a in 0..NQ {
        for u in 0..W {
            r[a][u] = _mm256_loadu_ps(ap[a].add(col + 8 * u));
        }
    }
    for (i, &o) in offs.iter().enumerate() {
        let vp = vb.add(o + col);
        let mut vv = [_mm256_setzero_ps(); W];
        for u in 0..W {
            vv[u] = E::load8(vp.add(8 * u));
        }
        for a in 0..NQ {
            let w = _mm256_broadcast_ss(&*wp[a].add(i));
            for u in 0..W {
                r[a][u] = _mm256_fmadd_ps(w, vv[u], r[a][u]);
            }
        }
    }
    for a in 0..NQ {
        for u in 0..W {
            _mm256_storeu_ps(ap[a].add(col + 8 * u), r[a][u]);
        }
    }
}

/// `acc[acc_at[a] + c] += w[at[a] + i] * vs[offs[i] + c]` for every key `i` in order (one FMA
/// per key and lane), for `NQ` queries sharing each value row.
///
/// # Safety
/// AVX2 and FMA must be available; the bounds are checked here.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
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
    let n8 = hd / 8 * 8;
    let step = 8 * (8 / NQ).max(1);
    let mut col = 0;
    while col + step <= n8 {
        match NQ {
            1 => accumulate_block::<E, NQ, 8>(&wp, vb, offs, &ap, col),
            2 => accumulate_block::<E, NQ, 4>(&wp, vb, offs, &ap, col),
            _ => accumulate_block::<E, NQ, 2>(&wp, vb, offs, &ap, col),
        }
        col += step;
    }
    while col < n8 {
        accumulate_block::<E, NQ, 1>(&wp, vb, offs, &ap, col);
        col += 8;
    }
    for c in n8..hd {
        for a in 0..NQ {
            let mut s = *ap[a].add(c);
            for (i, &o) in offs.iter().enumerate() {
                s = (*wp[a].add(i)).mul_add((*vb.add(o + c)).to_f32(), s);
            }
            *ap[a].add(c) = s;
        }
    }
}
