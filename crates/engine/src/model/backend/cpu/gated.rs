//! The gated activations over rows laid out `[gate (n) | up (n)]`: SwiGLU, gpt-oss's clamped
//! SwiGLU and GeGLU (tanh form). Each value is elementwise arithmetic with `exp` by range
//! reduction and a polynomial (relative error about 2e-7), in loops the compiler vectorizes
//! (16 lanes at the avx512 kernel level, 8 at avx2), so every level and build gives the same
//! bits and a row's result never depends on the step. A step with enough values is spread
//! over the compute pool by rows; a smaller one runs on the calling thread.

use crate::kernel_level::KernelLevel;
use crate::thread_pool::pool;

/// Values per parallel item; a step with fewer than two items' worth runs on the calling
/// thread (waking the pool costs more than it saves).
const CHUNK: usize = 16 * 1024;

/// `e^x` by range reduction and a degree-6 polynomial (relative error under 4e-7), with `x`
/// clamped to `[-87, 88]` (normal results only).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-0.693_145_75, x);
    let r = n.mul_add(-1.428_606_8e-6, r);
    let p: f32 = 1.0 / 720.0;
    let p = p.mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    // 2^n: `n + 127` (in 2..=254) read from the low mantissa bits of `n + 127 + 2^23`, which
    // vectorizes (a saturating `as i32` cast does not) and gives the same bits.
    p * f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23)
}

/// `silu(gate) * up`.
pub fn swiglu_rows(gate_up: &[f32], n: usize, out: &mut Vec<f32>) {
    gated_rows(gate_up, n, out, |g, u| g / (1.0 + exp(-g)) * u);
}

/// gpt-oss's clamped SwiGLU: `g = min(gate, limit)`, `u = clamp(up, -limit, limit)`,
/// `g · sigmoid(alpha · g) · (u + 1)` (transformers' `GptOssExperts`, llama.cpp's `swiglu_oai`).
pub fn clamped_swiglu_rows(gate_up: &[f32], n: usize, alpha: f32, limit: f32, out: &mut Vec<f32>) {
    gated_rows(gate_up, n, out, move |g, u| {
        let (g, u) = (g.min(limit), u.clamp(-limit, limit));
        g / (1.0 + exp(-alpha * g)) * (u + 1.0)
    });
}

/// `gelu_tanh(gate) * up`, with `0.5 · (1 + tanh(v)) = 1 / (1 + e^(-2v))`.
pub fn geglu_rows(gate_up: &[f32], n: usize, out: &mut Vec<f32>) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    gated_rows(gate_up, n, out, |g, u| {
        let v = C * (g + 0.044715 * g * g * g);
        g / (1.0 + exp(-2.0 * v)) * u
    });
}

/// `out[r][i] = f(gate[r][i], up[r][i])` for every row.
fn gated_rows<F: Fn(f32, f32) -> f32 + Sync + Copy>(gate_up: &[f32], n: usize, out: &mut Vec<f32>, f: F) {
    let rows = gate_up.len() / (2 * n).max(1);
    out.clear();
    out.resize(rows * n, 0.0);
    let level = KernelLevel::current();
    let run = |first: usize, dst: &mut [f32]| {
        for (r, o) in dst.chunks_exact_mut(n).enumerate() {
            let (g, u) = gate_up[(first + r) * 2 * n..][..2 * n].split_at(n);
            apply(level, o, g, u, f);
        }
    };
    if rows * n < 2 * CHUNK {
        run(0, out);
        return;
    }
    let per_item = (CHUNK / n).max(1);
    pool().for_each_chunk_mut(out, per_item * n, |i, dst| run(i * per_item, dst));
}

/// One row: `o[i] = f(g[i], u[i])`, compiled for the kernel level's vector width.
#[inline(always)]
fn apply<F: Fn(f32, f32) -> f32 + Copy>(level: KernelLevel, o: &mut [f32], g: &[f32], u: &[f32], f: F) {
    #[inline(always)]
    fn each<F: Fn(f32, f32) -> f32>(o: &mut [f32], g: &[f32], u: &[f32], f: F) {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = f(g, u);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512<F: Fn(f32, f32) -> f32>(o: &mut [f32], g: &[f32], u: &[f32], f: F) {
            each(o, g, u, f)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<F: Fn(f32, f32) -> f32>(o: &mut [f32], g: &[f32], u: &[f32], f: F) {
            each(o, g, u, f)
        }
        match level {
            // SAFETY: the level is only chosen when the host has these features.
            KernelLevel::Avx512 => return unsafe { avx512(o, g, u, f) },
            // SAFETY: as above.
            KernelLevel::Avx2 => return unsafe { avx2(o, g, u, f) },
            KernelLevel::Scalar => {}
        }
    }
    let _ = level;
    each(o, g, u, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn swiglu_is_silu_gate_times_up() {
        let mut out = Vec::new();
        swiglu_rows(&[0.0, 2.0, 3.0, -1.0], 2, &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] + 2.0 / (1.0 + (-2f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn clamped_swiglu_matches_hand_computed_gpt_oss_values() {
        // transformers' GptOssExperts: gate.clamp(max=7), up.clamp(-7, 7),
        // gate * sigmoid(1.702 * gate) * (up + 1). Values computed by hand (f64):
        //   gate 1, up 0:     1 * sigmoid(1.702) * 1        = 0.845796
        //   gate 10, up 8:    7 * sigmoid(11.914) * 8       = 55.999625 (both clamped)
        //   gate -2, up -9:  -2 * sigmoid(-3.404) * (-6)    = 0.386048 (up clamped to -7)
        //   gate 0, up 5:     0
        //   gate 3, up -1:    3 * sigmoid(5.106) * 0        = 0
        //   gate -20, up 2: -20 * sigmoid(-34.04) * 3       = -9.88e-14 (no lower clamp on gate)
        let gate = [1.0, 10.0, -2.0, 0.0, 3.0, -20.0];
        let up = [0.0, 8.0, -9.0, 5.0, -1.0, 2.0];
        let want = [0.845_796, 55.999_625, 0.386_048, 0.0, 0.0, -9.88e-14];
        let mut gu = gate.to_vec();
        gu.extend(up);
        let mut out = Vec::new();
        clamped_swiglu_rows(&gu, 6, 1.702, 7.0, &mut out);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 2e-6 * (1.0 + b.abs()), "value {i}: {a} vs {b}");
        }
        assert!(out[5] < 0.0 && out[5] > -1e-12);
    }

    #[test]
    fn geglu_matches_candle_gelu_tanh() {
        let g: Vec<f32> = (0..16).map(|i| i as f32 * 0.7 - 5.0).collect();
        let mut gu = g.clone();
        gu.extend(std::iter::repeat_n(2.0f32, 16));
        let mut out = Vec::new();
        geglu_rows(&gu, 16, &mut out);
        let want: Vec<f32> = Tensor::new(&g[..], &Device::Cpu).unwrap().gelu().unwrap().to_vec1().unwrap();
        for (a, b) in out.iter().zip(&want) {
            assert!((a - 2.0 * b).abs() < 1e-5, "{a} vs {}", 2.0 * b);
        }
    }

    #[test]
    fn exp_is_accurate_and_rows_are_the_same_in_any_step() {
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!(((got - want) / want).abs() < 4e-7, "exp({x}) = {got}, want {want}");
        }
        // 64 rows of 1536 take the pool; each row must equal that row computed alone.
        let n = 1536;
        let gu: Vec<f32> = (0..64 * 2 * n).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0).collect();
        let mut all = Vec::new();
        swiglu_rows(&gu, n, &mut all);
        for r in [0, 17, 63] {
            let mut one = Vec::new();
            swiglu_rows(&gu[r * 2 * n..(r + 1) * 2 * n], n, &mut one);
            assert!(one.iter().zip(&all[r * n..]).all(|(a, b)| a.to_bits() == b.to_bits()), "row {r}");
            for (i, &y) in one.iter().enumerate() {
                let (g, u) = (gu[r * 2 * n + i] as f64, gu[r * 2 * n + n + i] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                assert!((y as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "row {r} value {i}: {y} vs {want}");
            }
        }
    }
}
