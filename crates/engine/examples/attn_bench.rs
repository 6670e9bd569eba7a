//! Cost of one layer's ragged paged attention (`kv_cache::paged_attention`) on SmolLM2-135M
//! shapes (9 query heads, 3 kv heads, head_dim 64, f16 cache as the engine's default, blocks of
//! 16): one 512-token prefill, a decode step of 16 sequences with contexts around 100, one
//! with a single sequence, and a later conversation turn (24 new tokens after 1342 cached). Best of several
//! timings of all 30 layers in turn (each its own K/V memory), in ms per layer.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p wick-engine --example attn_bench [name filter...]`

use std::time::Instant;

use wick_engine::batch::ForwardBatch;
use wick_engine::kv_cache::{paged_attention, AttnParams, KvDtype, KvLayout, PagedKvCache};

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const BLOCK: usize = 16;
/// SmolLM2's layer count: every layer's K/V is its own memory, as in a real forward.
const LAYERS: usize = 30;

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9e3779b97f4a7c15);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Best time of one call in seconds, over repetitions filling about `budget` seconds.
fn best(mut f: impl FnMut(), budget: f64) -> f64 {
    f();
    let mut best = f64::MAX;
    let start = Instant::now();
    let mut reps = 0;
    while reps < 5 || (start.elapsed().as_secs_f64() < budget && reps < 2000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    best
}

/// Builds a batch of sequences `(new tokens, context_len)` over consecutive blocks, with the
/// whole context's K/V written, and a matching query.
fn setup(seqs: &[(usize, usize)]) -> (PagedKvCache, ForwardBatch, Vec<f32>) {
    let blocks: usize = seqs.iter().map(|&(_, c)| c.div_ceil(BLOCK)).sum();
    let mut cache =
        PagedKvCache::new(&KvLayout::uniform(LAYERS, KV_HEADS, HEAD_DIM).with_dtype(KvDtype::F16), blocks, BLOCK);
    // Fill the full contexts as one prefill per sequence.
    let mut next = 0u32;
    let mut full = ForwardBatch::default();
    let mut batch = ForwardBatch::default();
    for &(n, ctx) in seqs {
        let nb = ctx.div_ceil(BLOCK) as u32;
        let table: Vec<u32> = (next..next + nb).collect();
        next += nb;
        full.push_seq(&vec![0; ctx], ctx, vec![table.clone()], false);
        batch.push_seq(&vec![0; n], ctx, vec![table], true);
    }
    let t = full.num_tokens();
    let k = values(t * KV_HEADS * HEAD_DIM, 1);
    let v = values(t * KV_HEADS * HEAD_DIM, 2);
    cache.validate(&full).expect("valid batch");
    for layer in 0..LAYERS {
        cache.write(layer, &full, &k, &v);
    }
    cache.validate(&batch).expect("valid batch");
    let q = values(batch.num_tokens() * HEADS * HEAD_DIM, 3);
    (cache, batch, q)
}

fn main() {
    let params = AttnParams { scale: 1.0 / (HEAD_DIM as f32).sqrt(), window: None };
    let cases: Vec<(&str, Vec<(usize, usize)>)> = vec![
        ("prefill 512", vec![(512, 512)]),
        ("decode 16 seqs, ctx 90..120", (0..16).map(|i| (1, 90 + 2 * i)).collect()),
        ("decode 1 seq, ctx 100", vec![(1, 100)]),
        ("conversation turn: 24 new, ctx 1366", vec![(24, 1366)]),
        ("conversation turn: 8 new, ctx 1960", vec![(8, 1960)]),
    ];
    let only: Vec<String> = std::env::args().skip(1).collect();
    for (name, seqs) in cases {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let (cache, batch, q) = setup(&seqs);
        let mut sink = 0f32;
        let s = best(
            || {
                for layer in 0..LAYERS {
                    sink += paged_attention(&cache, layer, &batch, &q, HEADS, params)[0];
                }
            },
            2.0,
        );
        println!("{name:>36}: {:9.3} ms per layer  (checksum {sink:e})", s * 1e3 / LAYERS as f64);
    }
}
