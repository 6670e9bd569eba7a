//! AVX-512 kernels of `kv_cache::attention`: scores of a tile of up to twelve queries against
//! chunks of sixteen keys, the softmax's exp (bit for bit `attention_avx2`'s), and the weighted
//! sum of value rows, on 16 lanes. K tiles and V rows are read in place as f32 or f16
//! (`KvElem`); a chunk of fewer keys, or a row length that is not a multiple of 16, is one
//! masked vector.
//!
//! Batch invariance, as in `attention_avx2`: every (query, key) score is one FMA per
//! dimension in order in the key's lane, then `* scale`, whichever tile, chunk and lane it is
//! computed in; every output lane is one FMA per key in key order. Tiles only share loads of
//! K and V between queries.
//!
//! Callers must check AVX-512 F/BW/VL, AVX2, FMA and F16C at run time before calling anything
//! here.

// Tile loops index several fixed-size arrays in step; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::attention::{Chunk, Dest};
use super::dtype::KvElem;

/// The mask of the lanes of the 16-value vector at column `c` that lie inside `hd` columns.
#[inline]
fn lanes(c: usize, hd: usize) -> __mmask16 {
    match hd.saturating_sub(c) {
        n if n >= 16 => 0xffff,
        n => ((1u32 << n) - 1) as __mmask16,
    }
}

/// Raw scores of `NQ` queries against the keys of `NC` chunks: lane `i` of `[a][c]` is
/// `Σ_d q_a[d] · k[d]` of chunk `c`'s key `i`, one FMA per dimension in order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn chunk_dots<E: KvElem, const NQ: usize, const NC: usize>(
    qp: &[*const f32; NQ],
    kb: *const E,
    stride: usize,
    cs: &[Chunk],
    hd: usize,
) -> [[__m512; NC]; NQ] {
    let mut m = [0 as __mmask16; NC];
    let mut kp = [kb; NC];
    for c in 0..NC {
        m[c] = ((1u32 << cs[c].lanes) - 1) as __mmask16;
        kp[c] = kb.add(cs[c].k);
    }
    let mut acc = [[_mm512_setzero_ps(); NC]; NQ];
    for d in 0..hd {
        let mut kv = [_mm512_setzero_ps(); NC];
        for c in 0..NC {
            kv[c] = E::load16(kp[c].add(d * stride), m[c]);
        }
        for a in 0..NQ {
            let qv = _mm512_set1_ps(*qp[a].add(d));
            for c in 0..NC {
                acc[a][c] = _mm512_fmadd_ps(qv, kv[c], acc[a][c]);
            }
        }
    }
    acc
}

/// `NC` chunks of `scores`.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn scores_nc<E: KvElem, const NQ: usize, const NC: usize>(
    qp: &[*const f32; NQ],
    kb: *const E,
    stride: usize,
    cs: &[Chunk],
    hd: usize,
    scale: __m512,
    out: *mut f32,
    dst: &Dest<NQ>,
) {
    let r = chunk_dots::<E, NQ, NC>(qp, kb, stride, cs, hd);
    for a in 0..NQ {
        for c in 0..NC {
            if let Some((from, to, at)) = dst.keep(a, &cs[c]) {
                let keep = (((1u32 << to) - 1) & !((1u32 << from) - 1)) as __mmask16;
                // Lane 0's slot; only the kept lanes (inside the query's row) are written.
                let p = out.wrapping_add(at).wrapping_sub(from);
                _mm512_mask_storeu_ps(p, keep, _mm512_mul_ps(r[a][c], scale));
            }
        }
    }
}

/// Scores of `NQ` queries (rows `qrow` of `q`) against the keys of `chunks` in the K tiles of
/// `kt` (`stride` apart per dimension): `out[at[a] + p - lo[a]] = (q_a · k_p) * scale` for
/// every key position `p` of a chunk with `lo[a] <= p < end[a]` (`dst`).
///
/// # Safety
/// See the module; the bounds are checked here.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
    assert!(chunks.iter().all(|c| c.lanes <= 16 && c.lanes > 0 && c.k + (hd - 1) * stride + c.lanes <= kt.len()));
    dst.check(out.len());
    let qp = qrow.map(|r| q.as_ptr().add(r));
    let (kb, op, sv) = (kt.as_ptr(), out.as_mut_ptr(), _mm512_set1_ps(scale));
    // Enough chunks at once to hide the FMA latency within 32 registers.
    let nc = if NQ <= 4 { 4 } else { 2 };
    let mut groups = chunks.chunks_exact(nc);
    for g in &mut groups {
        if NQ <= 4 {
            scores_nc::<E, NQ, 4>(&qp, kb, stride, g, hd, sv, op, &dst);
        } else {
            scores_nc::<E, NQ, 2>(&qp, kb, stride, g, hd, sv, op, &dst);
        }
    }
    for c in groups.remainder().chunks(1) {
        scores_nc::<E, NQ, 1>(&qp, kb, stride, c, hd, sv, op, &dst);
    }
}

/// `exp(x)` on 16 lanes, each lane the exact operations of `attention_avx2::exp8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn exp16(x: __m512) -> __m512 {
    let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.3));
    let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.376_26)), _mm512_set1_ps(-88.376_26));
    let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
        _mm512_set1_ps(0.5),
    ));
    let x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(super::attention_scalar::EXP_C1), x);
    let x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(super::attention_scalar::EXP_C2), x);
    let p = super::attention_scalar::EXP_P;
    let mut y = _mm512_set1_ps(p[0]);
    for &c in &p[1..] {
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x), _mm512_set1_ps(1.0));
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)));
    _mm512_maskz_mul_ps(!tiny, y, _mm512_castsi512_ps(e))
}

/// `attention_avx2::softmax_exp` with the exp on 16 lanes: the same bits (the max is exact,
/// every exp the same lane operations, and the sum takes the same 8-lane chunks in order).
///
/// # Safety
/// See the module.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn softmax_exp(s: &mut [f32]) -> f32 {
    let max = super::attention_avx2::max(s);
    let m = _mm512_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    let mut chunks = s.chunks_exact_mut(16);
    for c in &mut chunks {
        let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), m));
        _mm512_storeu_ps(c.as_mut_ptr(), e);
        sum = _mm256_add_ps(sum, _mm512_castps512_ps256(e));
        sum = _mm256_add_ps(sum, _mm512_extractf32x8_ps::<1>(e));
    }
    super::attention_avx2::exp_sum(chunks.into_remainder(), _mm256_set1_ps(max), sum)
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
    // Groups of up to six queries, each over 64 columns at once (24 accumulators): a value
    // row's four vectors serve six queries, and a weight's broadcast all 64 columns.
    let mut q = 0;
    while q < NQ {
        let k = (NQ - q).min(6);
        let (w, a) = (&wp[q..q + k], &ap[q..q + k]);
        match k {
            1 => columns::<E, 1>(w, vb, offs, a, hd),
            2 => columns::<E, 2>(w, vb, offs, a, hd),
            3 => columns::<E, 3>(w, vb, offs, a, hd),
            4 => columns::<E, 4>(w, vb, offs, a, hd),
            5 => columns::<E, 5>(w, vb, offs, a, hd),
            _ => columns::<E, 6>(w, vb, offs, a, hd),
        }
        q += k;
    }
}

/// `accumulate` for `K` (at most six) queries: every column, 64 at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn columns<E: KvElem, const K: usize>(
    wp: &[*const f32],
    vb: *const E,
    offs: &[usize],
    ap: &[*mut f32],
    hd: usize,
) {
    let wp: [*const f32; K] = std::array::from_fn(|i| wp[i]);
    let ap: [*mut f32; K] = std::array::from_fn(|i| ap[i]);
    let mut col = 0;
    while col < hd {
        match (hd - col).div_ceil(16).min(4) {
            1 => accumulate_block::<E, K, 1>(&wp, vb, offs, &ap, col, hd),
            2 => accumulate_block::<E, K, 2>(&wp, vb, offs, &ap, col, hd),
            3 => accumulate_block::<E, K, 3>(&wp, vb, offs, &ap, col, hd),
            _ => accumulate_block::<E, K, 4>(&wp, vb, offs, &ap, col, hd),
        }
        col += 64;
    }
}
