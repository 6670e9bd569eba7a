//! Portable kernels of `kv_cache::attention`, for hosts without AVX2+FMA: the same three
//! steps as `attention_avx2` in the same order (each score summed over the dimensions in
//! order, 8 softmax partial sums reduced `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`, the same exp
//! polynomial), but with separate multiplies and adds, so results agree closely with the AVX2
//! path, not bit for bit.
//! Each query is computed alone, which makes this path batch-invariant by construction.

use super::attention::{Chunk, Dest};
use super::dtype::KvElem;

/// `ln 2` split in two for the exp range reduction (Cephes).
pub(super) const EXP_C1: f32 = 0.693_359_4;
pub(super) const EXP_C2: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial, highest degree first.
pub(super) const EXP_P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// The lane reduction order of `attention_avx2::softmax_exp`'s partial sums.
#[inline]
fn hsum(l: &[f32; 8]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// See `attention_avx2::scores`: every score is `Σ_d q[d]·k[d]` summed in dimension order.
#[allow(clippy::too_many_arguments)]
pub(super) fn scores<E: KvElem, const NQ: usize>(
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
    dst.check(out.len());
    for c in chunks {
        for a in 0..NQ {
            let Some((from, to, at)) = dst.keep(a, c) else { continue };
            let qv = &q[qrow[a]..qrow[a] + hd];
            for i in from..to {
                let mut s = 0f32;
                for (d, &x) in qv.iter().enumerate() {
                    s += x * kt[c.k + d * stride + i].to_f32();
                }
                out[at + i - from] = s * scale;
            }
        }
    }
}

/// `exp(x)` for `x <= 0` with the polynomial of `attention_avx2::exp8`.
#[inline]
pub(super) fn exp(x: f32) -> f32 {
    if x < -87.3 {
        return 0.0;
    }
    let x = x.min(88.376_26);
    let fx = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let x = x - fx * EXP_C1 - fx * EXP_C2;
    let y = EXP_P[1..].iter().fold(EXP_P[0], |y, &c| y * x + c);
    let y = y * (x * x) + x + 1.0;
    y * f32::from_bits((((fx as i32) + 127) as u32) << 23)
}

/// See `attention_avx2::softmax_exp`.
pub(super) fn softmax_exp(s: &mut [f32]) -> f32 {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut acc = [0f32; 8];
    for c in s.chunks_mut(8) {
        for (l, x) in c.iter_mut().enumerate() {
            *x = exp(*x - max);
            acc[l] += *x;
        }
    }
    hsum(&acc)
}

/// See `attention_avx2::accumulate`.
pub(super) fn accumulate<E: KvElem, const NQ: usize>(
    w: &[f32],
    at: [usize; NQ],
    vs: &[E],
    offs: &[usize],
    hd: usize,
    acc: &mut [f32],
    acc_at: [usize; NQ],
) {
    for (&w0, &a0) in at.iter().zip(&acc_at) {
        let a = &mut acc[a0..a0 + hd];
        for (&wi, &off) in w[w0..w0 + offs.len()].iter().zip(offs) {
            for (x, v) in a.iter_mut().zip(&vs[off..off + hd]) {
                *x += wi * v.to_f32();
            }
        }
    }
}
