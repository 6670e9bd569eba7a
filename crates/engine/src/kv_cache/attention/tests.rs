//! Tests of `kv_cache::attention`: agreement with a plain softmax reference, and bit-identical
//! results for a query however its step is composed and split.

use std::collections::HashMap;

use super::*;

/// Plain reference: softmax over all visible positions of a contiguous K/V.
fn reference(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>], scale: f32) -> Vec<f32> {
    let s: Vec<f32> = k.iter().map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
    let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
    let z: f32 = e.iter().sum();
    (0..q.len()).map(|d| e.iter().zip(v).map(|(w, v)| w * v[d]).sum::<f32>() / z).collect()
}

fn val(i: usize) -> f32 {
    ((i * 7919 % 101) as f32 / 50.0) - 1.0
}

fn all_kernels() -> Vec<Kernels> {
    let mut k = vec![Kernels::Scalar];
    if Kernels::detect() != Kernels::Scalar {
        k.push(Kernels::detect());
    }
    k
}

#[test]
fn matches_reference_across_blocks_with_gqa_and_window() {
    for (heads, kvh, hd) in [(4, 2, 12), (6, 2, 64), (2, 1, 21)] {
        let bs = 3;
        let mut cache = PagedKvCache::new(&crate::kv_cache::KvLayout::uniform(1, kvh, hd), 16, bs);
        let n = 8; // a prefill of 8 tokens over blocks 7, 2, 9
        let mut batch = ForwardBatch::default();
        batch.push_seq(&vec![0; n], n, vec![7, 2, 9], true);
        cache.validate(&batch).unwrap();
        let k: Vec<f32> = (0..n * kvh * hd).map(val).collect();
        let v: Vec<f32> = (0..n * kvh * hd).map(|i| val(i + 13)).collect();
        let q: Vec<f32> = (0..n * heads * hd).map(|i| val(i + 5)).collect();
        cache.write(0, &batch, &k, &v);
        for kern in all_kernels() {
            for window in [None, Some(3)] {
                let params = AttnParams { scale: 0.3, window };
                let out = attention_with(&cache, 0, &batch, &q, heads, params, kern, false);
                for t in 0..n {
                    for h in 0..heads {
                        let kh = h / (heads / kvh);
                        let lo = window.map_or(0, |w| (t + 1).saturating_sub(w));
                        let row = |x: &[f32], p: usize| x[(p * kvh + kh) * hd..(p * kvh + kh + 1) * hd].to_vec();
                        let ks: Vec<Vec<f32>> = (lo..=t).map(|p| row(&k, p)).collect();
                        let vs: Vec<Vec<f32>> = (lo..=t).map(|p| row(&v, p)).collect();
                        let want = reference(&q[(t * heads + h) * hd..(t * heads + h + 1) * hd], &ks, &vs, 0.3);
                        let got = &out[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                        for (a, b) in got.iter().zip(&want) {
                            assert!((a - b).abs() < 1e-5, "{kern:?} hd {hd} t {t} h {h} window {window:?}: {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn exp_polynomial_is_accurate() {
    let mut xs: Vec<f32> = (0..=87_000).map(|i| -(i as f32) / 1000.0).collect();
    xs.extend([-1e-7, -0.5, -3.25]);
    let mut got = xs.clone();
    #[cfg(target_arch = "x86_64")]
    if Kernels::detect() != Kernels::Scalar {
        // exp(x - max) with max = 0: the AVX2 kernel's exp of every x.
        let mut s = xs.clone();
        s.push(0.0);
        // SAFETY: detect() found AVX2 and FMA.
        unsafe { super::super::attention_avx2::softmax_exp(&mut s) };
        got = s[..xs.len()].to_vec();
    }
    for (i, &x) in xs.iter().enumerate() {
        let want = (x as f64).exp();
        for e in [got[i] as f64, scalar::exp(x) as f64] {
            assert!(((e - want) / want).abs() < 4e-7, "exp({x}) = {e}, want {want}");
        }
    }
}

/// Deterministic q, k or v row of sequence `seq` at position `pos`.
fn row(kind: usize, seq: usize, pos: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| val(kind * 100_003 + seq * 10_007 + pos * 131 + i) * (1.0 + (i % 5) as f32 * 0.7)).collect()
}

struct Shape {
    heads: usize,
    kvh: usize,
    hd: usize,
}

/// Runs a sequence of steps, each a list of `(seq, first position, tokens)`, on a fresh
/// cache, and returns every query row's output by (seq, position).
fn run_steps(
    sh: &Shape,
    steps: &[Vec<(usize, usize, usize)>],
    params: AttnParams,
    kern: Kernels,
    parallel: bool,
) -> HashMap<(usize, usize), Vec<f32>> {
    let (bs, nb) = (4, 16);
    let mut cache = PagedKvCache::new(&crate::kv_cache::KvLayout::uniform(1, sh.kvh, sh.hd), 4 * nb, bs);
    let table = |seq: usize| (0..nb).map(|i| (seq * nb + (i * 7) % nb) as u32).collect::<Vec<_>>();
    let mut got = HashMap::new();
    for parts in steps {
        let mut batch = ForwardBatch::default();
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for &(seq, start, n) in parts {
            batch.push_seq(&vec![0; n], start + n, table(seq), false);
            for p in start..start + n {
                q.extend(row(0, seq, p, sh.heads * sh.hd));
                k.extend(row(1, seq, p, sh.kvh * sh.hd));
                v.extend(row(2, seq, p, sh.kvh * sh.hd));
            }
        }
        cache.validate(&batch).unwrap();
        cache.write(0, &batch, &k, &v);
        let out = attention_with(&cache, 0, &batch, &q, sh.heads, params, kern, parallel);
        let w = sh.heads * sh.hd;
        let mut t = 0;
        for &(seq, start, n) in parts {
            for p in start..start + n {
                got.insert((seq, p), out[t * w..(t + 1) * w].to_vec());
                t += 1;
            }
        }
    }
    got
}

#[test]
fn a_query_gives_the_same_bits_however_its_step_is_composed() {
    let a = 0; // the sequence under test: 23 tokens
    let chunks = |sizes: &[usize]| {
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                start += n;
                vec![(a, start - n, n)]
            })
            .collect::<Vec<_>>()
    };
    let scenarios: Vec<Vec<Vec<(usize, usize, usize)>>> = vec![
        chunks(&[23]),
        chunks(&[5, 1, 7, 3, 7]),
        chunks(&[2, 3, 1, 17]),
        chunks(&[1; 23]),
        // Alongside other sequences (1 and 2), in different orders within a step.
        vec![
            vec![(a, 0, 9), (1, 0, 5)],
            vec![(1, 5, 1), (a, 9, 1), (2, 0, 11)],
            vec![(2, 11, 1), (a, 10, 13), (1, 6, 1)],
        ],
        vec![vec![(1, 0, 3), (2, 0, 1), (a, 0, 22)], vec![(2, 1, 1), (a, 22, 1)]],
    ];
    for sh in
        [Shape { heads: 6, kvh: 2, hd: 12 }, Shape { heads: 9, kvh: 3, hd: 64 }, Shape { heads: 4, kvh: 4, hd: 40 }]
    {
        for window in [None, Some(2), Some(5)] {
            let params = AttnParams { scale: 0.37, window };
            for kern in all_kernels() {
                let want = run_steps(&sh, &scenarios[0], params, kern, false);
                for (i, steps) in scenarios.iter().enumerate() {
                    for parallel in [false, true] {
                        let got = run_steps(&sh, steps, params, kern, parallel);
                        for p in 0..23 {
                            let (x, y) = (&got[&(a, p)], &want[&(a, p)]);
                            assert!(
                                x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits()),
                                "hd {} {kern:?} window {window:?} scenario {i} parallel {parallel}: position {p} differs",
                                sh.hd
                            );
                        }
                    }
                }
            }
        }
    }
}
