//! AVX2+FMA kernels of `kv_cache::attention`: scores of a tile of up to eight queries against
//! chunks of eight keys, the exp/sum step of a softmax, and the weighted sum of value rows.
//!
//! Batch invariance lives here: whatever the tile size, every (query, key) score is the same
//! chain of operations (one FMA per dimension in order in the key's lane, then `* scale`),
//! and every output lane is one FMA per key in key order. Tiles only share loads of K and V
//! between queries.
//!
//! K tiles and V rows are read in place as f32 or f16 (`KvElem`, converted exactly as loaded).
//!
//! Callers must check `avx2`, `fma` and `f16c` at run time before calling anything here.

// Tile loops index several fixed-size arrays in step; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::attention::{Chunk, Dest};
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

/// Eight keys of a chunk at dimension `d` (`p` at the chunk's first key), as f32; a chunk of
/// fewer keys reads only those (the other lanes 0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_keys<E: KvElem>(p: *const E, lanes: usize) -> __m256 {
    if lanes == 8 {
        return E::load8(p);
    }
    let mut buf = [0f32; 8];
    for (i, b) in buf.iter_mut().enumerate().take(lanes) {
        *b = (*p.add(i)).to_f32();
    }
    _mm256_loadu_ps(buf.as_ptr())
}

/// Raw scores of `NQ` queries against the keys of `NC` chunks: lane `i` of `[a][c]` is
/// `Σ_d q_a[d] · k[d]` of chunk `c`'s key `i`, one FMA per dimension in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk_dots<E: KvElem, const NQ: usize, const NC: usize>(
    qp: &[*const f32; NQ],
    kb: *const E,
    stride: usize,
    cs: &[Chunk],
    hd: usize,
) -> [[__m256; NC]; NQ] {
    let mut kp = [kb; NC];
    for c in 0..NC {
        kp[c] = kb.add(cs[c].k);
    }
    let mut acc = [[_mm256_setzero_ps(); NC]; NQ];
    for d in 0..hd {
        let mut kv = [_mm256_setzero_ps(); NC];
        for c in 0..NC {
            kv[c] = load_keys(kp[c].add(d * stride), cs[c].lanes);
        }
        for a in 0..NQ {
            let qv = _mm256_broadcast_ss(&*qp[a].add(d));
            for c in 0..NC {
                acc[a][c] = _mm256_fmadd_ps(qv, kv[c], acc[a][c]);
            }
        }
    }
    acc
}

/// `NC` chunks of `scores`.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_nc<E: KvElem, const NQ: usize, const NC: usize>(
    qp: &[*const f32; NQ],
    kb: *const E,
    stride: usize,
    cs: &[Chunk],
    hd: usize,
    scale: __m256,
    out: *mut f32,
    dst: &Dest<NQ>,
) {
    let r = chunk_dots::<E, NQ, NC>(qp, kb, stride, cs, hd);
    let mut lane = [0f32; 8];
    for a in 0..NQ {
        for c in 0..NC {
            if let Some((from, to, at)) = dst.keep(a, &cs[c]) {
                _mm256_storeu_ps(lane.as_mut_ptr(), _mm256_mul_ps(r[a][c], scale));
                std::ptr::copy_nonoverlapping(lane.as_ptr().add(from), out.add(at), to - from);
            }
        }
    }
}

/// Scores of `NQ` queries (rows `qrow` of `q`) against the keys of `chunks` in the K tiles of
/// `kt` (`stride` apart per dimension): `out[at[a] + p - lo[a]] = (q_a · k_p) * scale` for
/// every key position `p` of a chunk with `lo[a] <= p < end[a]` (`dst`).
///
/// # Safety
/// AVX2 and FMA must be available; the bounds are checked here.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scores<E: KvElem, const NQ: usize>(
    q: &[f32],
    qrow: [usize; NQ],
    kt: &[E],
    stride: usize,
    chunks: &[Chunk],
    hd: usize,
    scale: f32,
    out: &mut [f32],
    dst: Dest<NQ>,
) {
    assert!(qrow.iter().all(|&r| r + hd <= q.len()));
    assert!(chunks.iter().all(|c| c.lanes <= 8 && c.lanes > 0 && c.k + (hd - 1) * stride + c.lanes <= kt.len()));
    dst.check(out.len());
    let qp = qrow.map(|r| q.as_ptr().add(r));
    let (kb, op, sv) = (kt.as_ptr(), out.as_mut_ptr(), _mm256_set1_ps(scale));
    // Enough chunks at once to hide the FMA latency within 16 registers.
    let nc = match NQ {
        1 | 2 => 4,
        3 | 4 => 2,
        _ => 1,
    };
    let mut groups = chunks.chunks_exact(nc);
    for g in &mut groups {
        match nc {
            4 => scores_nc::<E, NQ, 4>(&qp, kb, stride, g, hd, sv, op, &dst),
            2 => scores_nc::<E, NQ, 2>(&qp, kb, stride, g, hd, sv, op, &dst),
            _ => scores_nc::<E, NQ, 1>(&qp, kb, stride, g, hd, sv, op, &dst),
        }
    }
    for c in groups.remainder().chunks(1) {
        scores_nc::<E, NQ, 1>(&qp, kb, stride, c, hd, sv, op, &dst);
    }
}

/// `exp(x)` lane-wise for `x <= 0` (Cephes' polynomial, about 1 ulp); below about -87.3
/// (where `exp` leaves the normal range) the result is 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn exp8(x: __m256) -> __m256 {
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
    let m = _mm256_set1_ps(max(s));
    exp_sum(s, m, _mm256_setzero_ps())
}

/// The largest score (max is exact, so any order gives it).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn max(s: &[f32]) -> f32 {
    // Four independent chains, so the loop is not bound by the max's latency.
    let mut chunks = s.chunks_exact(32);
    let mut m = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
    for c in &mut chunks {
        for (j, m) in m.iter_mut().enumerate() {
            *m = _mm256_max_ps(*m, _mm256_loadu_ps(c.as_ptr().add(8 * j)));
        }
    }
    let m = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    lanes.iter().chain(chunks.remainder()).fold(f32::NEG_INFINITY, |a, &x| a.max(x))
}

/// `softmax_exp`'s exp and sum from `sum` on: chunks of eight in order, then the padded tail.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn exp_sum(s: &mut [f32], m: __m256, mut sum: __m256) -> f32 {
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
    // Column vectors per pass: `NQ * W` accumulators within 16 registers.
    let w = match NQ {
        1 => 8,
        2 => 4,
        3 | 4 => 2,
        _ => 1,
    };
    let mut col = 0;
    while col + 8 * w <= n8 {
        match w {
            8 => accumulate_block::<E, NQ, 8>(&wp, vb, offs, &ap, col),
            4 => accumulate_block::<E, NQ, 4>(&wp, vb, offs, &ap, col),
            2 => accumulate_block::<E, NQ, 2>(&wp, vb, offs, &ap, col),
            _ => accumulate_block::<E, NQ, 1>(&wp, vb, offs, &ap, col),
        }
        col += 8 * w;
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
