//! Tests of `kv_cache::attention`: agreement with a plain softmax reference, and bit-identical
//! results for a query however its step is composed and split.

use std::collections::HashMap;

use super::*;
use crate::kv_cache::{AttentionKind, KvDtype, KvLayout, NO_BLOCK};

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

/// The kernels of every level this host supports.
fn all_kernels() -> Vec<Kernels> {
    crate::kernel_level::KernelLevel::available().into_iter().map(Kernels::of_level).collect()
}

#[test]
fn matches_reference_across_blocks_with_gqa_and_window() {
    for (heads, kvh, hd) in [(4, 2, 12), (6, 2, 64), (2, 1, 21)] {
        let bs = 3;
        let mut cache = PagedKvCache::new(&KvLayout::uniform(1, kvh, hd), 16, bs);
        let n = 8; // a prefill of 8 tokens over blocks 7, 2, 9
        let mut batch = ForwardBatch::default();
        batch.push_seq(&vec![0; n], n, vec![vec![7, 2, 9]], true);
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
    // Without AVX2 (or under WICK_KERNELS=scalar) the kernel's exp is the scalar one.
    let mut got: Vec<f32> = xs.iter().map(|&x| scalar::exp(x)).collect();
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

#[test]
fn every_level_gives_the_softmax_the_same_bits() {
    for n in [1, 7, 8, 15, 16, 17, 40, 1366] {
        let s: Vec<f32> = (0..n).map(|i| val(i * 13) * 9.0 - (i % 7) as f32).collect();
        let run = |k: Kernels| {
            let mut x = s.clone();
            let sum = k.softmax_exp(&mut x);
            (sum.to_bits(), x.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        let levels: Vec<Kernels> = all_kernels().into_iter().filter(|&k| k != Kernels::Scalar).collect();
        for k in &levels {
            assert_eq!(run(*k), run(levels[0]), "{k:?} n {n}");
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

/// How `run_steps` stores K/V: in `dtype`, or (`F32RoundedToF16`) as f32 holding the
/// f16-rounded values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Store {
    Dtype(KvDtype),
    F32RoundedToF16,
}

/// Runs a sequence of steps, each a list of `(seq, first position, tokens)`, on a fresh
/// cache storing K/V as `store`, and returns every query row's output by (seq, position).
fn run_steps(
    sh: &Shape,
    steps: &[Vec<(usize, usize, usize)>],
    params: AttnParams,
    kern: Kernels,
    parallel: bool,
    store: Store,
) -> HashMap<(usize, usize), Vec<f32>> {
    let (bs, nb) = (4, 16);
    let dtype = match store {
        Store::Dtype(d) => d,
        Store::F32RoundedToF16 => KvDtype::F32,
    };
    let round = |x: Vec<f32>| match store {
        Store::F32RoundedToF16 => x.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect(),
        Store::Dtype(_) => x,
    };
    let mut cache = PagedKvCache::new(&KvLayout::uniform(1, sh.kvh, sh.hd).with_dtype(dtype), 4 * nb, bs);
    let table = |seq: usize| (0..nb).map(|i| (seq * nb + (i * 7) % nb) as u32).collect::<Vec<_>>();
    let mut got = HashMap::new();
    for parts in steps {
        let mut batch = ForwardBatch::default();
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for &(seq, start, n) in parts {
            batch.push_seq(&vec![0; n], start + n, vec![table(seq)], false);
            for p in start..start + n {
                q.extend(row(0, seq, p, sh.heads * sh.hd));
                k.extend(round(row(1, seq, p, sh.kvh * sh.hd)));
                v.extend(round(row(2, seq, p, sh.kvh * sh.hd)));
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
            for (kern, dtype) in all_kernels().into_iter().flat_map(|k| KvDtype::ALL.map(|d| (k, d))) {
                let store = Store::Dtype(dtype);
                let want = run_steps(&sh, &scenarios[0], params, kern, false, store);
                for (i, steps) in scenarios.iter().enumerate() {
                    for parallel in [false, true] {
                        let got = run_steps(&sh, steps, params, kern, parallel, store);
                        for p in 0..23 {
                            let (x, y) = (&got[&(a, p)], &want[&(a, p)]);
                            assert!(
                                x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits()),
                                "hd {} {kern:?} {dtype} window {window:?} scenario {i} parallel {parallel}: position {p} differs",
                                sh.hd
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f16_rows_read_in_place_give_the_bits_of_their_f32_values() {
    // The f16 cache is read by the kernels directly, converting as they load; the result must
    // be exactly that of an f32 cache holding the same (rounded) values.
    let steps = vec![vec![(0, 0, 9), (1, 0, 5)], vec![(1, 5, 1), (0, 9, 1), (2, 0, 11)], vec![(0, 10, 13)]];
    for sh in [Shape { heads: 9, kvh: 3, hd: 64 }, Shape { heads: 4, kvh: 2, hd: 20 }] {
        for kern in all_kernels() {
            let params = AttnParams { scale: 0.37, window: None };
            let got = run_steps(&sh, &steps, params, kern, true, Store::Dtype(KvDtype::F16));
            let want = run_steps(&sh, &steps, params, kern, true, Store::F32RoundedToF16);
            for (key, x) in &got {
                let y = &want[key];
                assert!(x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits()), "{kern:?} hd {}: {key:?}", sh.hd);
            }
        }
    }
}

/// Per (layer, seq, position) output rows.
type LayerRows = HashMap<(usize, usize, usize), Vec<f32>>;

/// Two sequences over a 4-layer layout (layers 0 and 2 in a window-5 group, 1 and 3 in a full
/// group), sequence 0 in chunks of `chunks`, sequence 1 alongside (8 tokens, then decodes).
/// With `release`, each sliding table's entries before its first query's window are
/// `NO_BLOCK` and those pages are filled with NaN. `AttnParams::window` stays unset: the
/// sliding layers' window comes from the layout.
fn run_grouped(sh: &Shape, chunks: &[usize], release: bool, kern: Kernels, parallel: bool) -> LayerRows {
    use AttentionKind::{Full, Sliding};
    let bs = 4;
    let layout = KvLayout::new(&[Sliding(5), Full, Sliding(5), Full], sh.kvh, sh.hd);
    assert_eq!((layout.groups.clone(), layout.group_size), (vec![Sliding(5), Full], 2));
    let mut cache = PagedKvCache::new(&layout, 64, bs);
    let id = |g: usize, seq: usize, i: usize| ((g * 2 + seq) * 16 + i) as u32;
    let params = AttnParams { scale: 0.37, window: None };
    let mut got = HashMap::new();
    let mut done = [0usize; 2];
    for (step, &n0) in chunks.iter().enumerate() {
        let parts = [(0, n0), (1, if step == 0 { 8 } else { 1 })];
        let mut batch = ForwardBatch::default();
        for &(seq, n) in &parts {
            let (first, ctx) = (done[seq], done[seq] + n);
            let mut tables: Vec<Vec<u32>> = Vec::new();
            for (g, kind) in layout.groups.iter().enumerate() {
                let live = if release { kind.first_live_block(first, bs) } else { 0 };
                for i in 0..live {
                    cache.poison_block(id(g, seq, i) as usize);
                }
                tables.push((0..ctx.div_ceil(bs)).map(|i| if i < live { NO_BLOCK } else { id(g, seq, i) }).collect());
            }
            if release && first > 8 {
                assert!(tables[0].contains(&NO_BLOCK), "step {step}: the test must release blocks");
            }
            batch.push_seq(&vec![0; n], ctx, tables, false);
        }
        cache.validate(&batch).unwrap();
        for layer in 0..4 {
            let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
            for &(seq, n) in &parts {
                for p in done[seq]..done[seq] + n {
                    q.extend(row(3 * layer, seq, p, sh.heads * sh.hd));
                    k.extend(row(3 * layer + 1, seq, p, sh.kvh * sh.hd));
                    v.extend(row(3 * layer + 2, seq, p, sh.kvh * sh.hd));
                }
            }
            cache.write(layer, &batch, &k, &v);
            let out = attention_with(&cache, layer, &batch, &q, sh.heads, params, kern, parallel);
            let w = sh.heads * sh.hd;
            let mut t = 0;
            for &(seq, n) in &parts {
                for p in done[seq]..done[seq] + n {
                    got.insert((layer, seq, p), out[t * w..(t + 1) * w].to_vec());
                    t += 1;
                }
            }
        }
        for &(seq, n) in &parts {
            done[seq] += n;
        }
    }
    got
}

#[test]
fn grouped_layout_with_released_blocks_matches_the_reference_bit_for_bit() {
    let chunks = [9, 1, 6, 1, 1, 5, 1];
    let len: usize = chunks.iter().sum();
    for sh in [Shape { heads: 6, kvh: 2, hd: 12 }, Shape { heads: 4, kvh: 1, hd: 64 }] {
        for kern in all_kernels() {
            let kept = run_grouped(&sh, &chunks, false, kern, false);
            // Against the plain reference: window 5 on layers 0 and 2, everything on 1 and 3.
            for layer in 0..4 {
                let lo = |t: usize| if layer % 2 == 0 { (t + 1).saturating_sub(5) } else { 0 };
                for t in 0..len {
                    for h in 0..sh.heads {
                        let kh = h / (sh.heads / sh.kvh);
                        let kv = |kind: usize, p: usize| {
                            row(3 * layer + kind, 0, p, sh.kvh * sh.hd)[kh * sh.hd..(kh + 1) * sh.hd].to_vec()
                        };
                        let ks: Vec<Vec<f32>> = (lo(t)..=t).map(|p| kv(1, p)).collect();
                        let vs: Vec<Vec<f32>> = (lo(t)..=t).map(|p| kv(2, p)).collect();
                        let q = row(3 * layer, 0, t, sh.heads * sh.hd);
                        let want = reference(&q[h * sh.hd..(h + 1) * sh.hd], &ks, &vs, 0.37);
                        let got = &kept[&(layer, 0, t)][h * sh.hd..(h + 1) * sh.hd];
                        for (a, b) in got.iter().zip(&want) {
                            assert!(
                                (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                                "{kern:?} layer {layer} t {t} h {h}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
            // Releasing (and poisoning) the pages before the window changes no bit.
            for parallel in [false, true] {
                let released = run_grouped(&sh, &chunks, true, kern, parallel);
                assert_eq!(released.len(), kept.len());
                for (key, want) in &kept {
                    let got = &released[key];
                    assert!(
                        got.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{kern:?} hd {} parallel {parallel}: (layer, seq, position) {key:?} differs",
                        sh.hd
                    );
                }
            }
        }
    }
}

#[test]
fn a_sink_joins_the_softmax_denominator_only() {
    // One head, head size 2, two keys. Scores q·k·scale = [1, 2], sink 0.5: transformers'
    // GptOss eager attention (softmax over [scores, sink], the sink column dropped) gives
    // p = [e^1, e^2] / (e^1 + e^2 + e^0.5) = [0.231224, 0.628532] (0.140244 goes to the sink).
    let mut cache = PagedKvCache::new(&KvLayout::uniform(1, 1, 2), 4, 4);
    let mut batch = ForwardBatch::default();
    batch.push_seq(&[0, 0], 2, vec![vec![1]], true);
    cache.validate(&batch).unwrap();
    let k = [1.0, 0.0, 2.0, 0.0];
    let v = [10.0, 1.0, 20.0, -1.0];
    cache.write(0, &batch, &k, &v);
    let q = [0.0, 0.0, 1.0, 0.5];
    let params = AttnParams { scale: 1.0, window: None };
    for kern in all_kernels() {
        let out = attention_with_sinks(&cache, 0, &batch, &q, 1, params, kern, false, Some(&[0.5]));
        let (p0, p1) = (0.231_224_f32, 0.628_532_f32);
        let want = [p0 * 10.0 + p1 * 20.0, p0 * 1.0 - p1 * 1.0];
        for (a, b) in out[2..].iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{kern:?}: {a} vs {b}");
        }
        // The first token sees only itself: e^0 / (e^0 + e^0.5) of v0.
        let p = 1.0 / (1.0 + 0.5f32.exp());
        assert!((out[0] - 10.0 * p).abs() < 1e-4 && (out[1] - p).abs() < 1e-4, "{kern:?}: {:?}", &out[..2]);
        // A very negative sink is no sink.
        let none = attention_with(&cache, 0, &batch, &q, 1, params, kern, false);
        let tiny = attention_with_sinks(&cache, 0, &batch, &q, 1, params, kern, false, Some(&[-1e4]));
        assert_eq!(none, tiny);
    }
}

#[test]
fn sinks_match_the_reference_with_gqa_window_and_tiles_and_stay_batch_invariant() {
    let (heads, kvh, hd, n) = (4, 2, 16, 11);
    let sinks: Vec<f32> = (0..heads).map(|h| h as f32 * 0.7 - 1.0).collect();
    let mut cache = PagedKvCache::new(&KvLayout::uniform(1, kvh, hd), 16, 4);
    let mut batch = ForwardBatch::default();
    batch.push_seq(&vec![0; n], n, vec![vec![5, 2, 9]], true);
    cache.validate(&batch).unwrap();
    let k: Vec<f32> = (0..n * kvh * hd).map(val).collect();
    let v: Vec<f32> = (0..n * kvh * hd).map(|i| val(i + 13)).collect();
    let q: Vec<f32> = (0..n * heads * hd).map(|i| val(i + 5) * 3.0).collect();
    cache.write(0, &batch, &k, &v);
    for kern in all_kernels() {
        for window in [None, Some(4)] {
            let params = AttnParams { scale: 0.25, window };
            let out = attention_with_sinks(&cache, 0, &batch, &q, heads, params, kern, true, Some(&sinks));
            for t in 0..n {
                for h in 0..heads {
                    let kh = h / (heads / kvh);
                    let lo = window.map_or(0, |w| (t + 1).saturating_sub(w));
                    let row = |x: &[f32], p: usize| x[(p * kvh + kh) * hd..(p * kvh + kh + 1) * hd].to_vec();
                    let qr = &q[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                    let s: Vec<f64> = (lo..=t)
                        .map(|p| qr.iter().zip(&row(&k, p)).map(|(a, b)| (a * b) as f64).sum::<f64>() * 0.25)
                        .collect();
                    let m = s.iter().cloned().fold(sinks[h] as f64, f64::max);
                    let z = s.iter().map(|x| (x - m).exp()).sum::<f64>() + (sinks[h] as f64 - m).exp();
                    for d in 0..hd {
                        let want: f64 = (lo..=t).zip(&s).map(|(p, x)| (x - m).exp() / z * row(&v, p)[d] as f64).sum();
                        let got = out[(t * heads + h) * hd + d] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{kern:?} window {window:?} t {t} h {h} d {d}: {got} vs {want}"
                        );
                    }
                }
            }
            // The last token alone (decode) gives the same bits as inside the prefill.
            let mut one = ForwardBatch::default();
            one.push_seq(&[0], n, vec![vec![5, 2, 9]], false);
            let alone = attention_with_sinks(
                &cache,
                0,
                &one,
                &q[(n - 1) * heads * hd..],
                heads,
                params,
                kern,
                false,
                Some(&sinks),
            );
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&alone), bits(&out[(n - 1) * heads * hd..]), "{kern:?} window {window:?}");
        }
    }
}
