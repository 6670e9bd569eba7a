//! Forward-pass throughput on a real GGUF model: single-sequence decode (T=1), batched decode
//! of 16 sequences (T=16) and a 512-token prefill, through the paged KV cache.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p wick-engine --example forward_bench -- MODEL.gguf [stored|default|q8|dense]`

use std::time::Instant;

use wick_engine::kv_cache::PagedKvCache;
use wick_engine::model::{load_gguf_model, CausalLm, WeightOptions};
use wick_engine::ForwardBatch;

const BS: usize = 16;

/// Block tables of sequence `seq` (one per KV-cache group), 64 blocks per (group, sequence).
fn table(groups: usize, seq: usize, len: usize) -> Vec<Vec<u32>> {
    (0..groups).map(|g| (0..len.div_ceil(BS)).map(|b| ((g * 17 + seq) * 64 + b) as u32).collect()).collect()
}

fn prompt(seq: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((seq * 7919 + i * 104729) % 40000 + 100) as u32).collect()
}

/// Decodes `steps` tokens for `nseq` sequences that each already hold a 32-token prompt.
fn decode(model: &dyn CausalLm, cache: &mut PagedKvCache, nseq: usize, steps: usize) -> f64 {
    let g = model.config().kv_layout.num_groups();
    for s in 0..nseq {
        let mut b = ForwardBatch::default();
        b.push_seq(&prompt(s, 32), 32, table(g, s, 32), true);
        model.forward(&b, cache).expect("prefill");
    }
    let t0 = Instant::now();
    for step in 0..steps {
        let ctx = 33 + step;
        let mut b = ForwardBatch::default();
        for s in 0..nseq {
            b.push_seq(&[(500 + step + s) as u32], ctx, table(g, s, ctx), true);
        }
        model.forward(&b, cache).expect("decode");
    }
    (nseq * steps) as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: forward_bench MODEL.gguf [stored|default|q8|dense]");
    let mode = args.get(2).map(String::as_str).unwrap_or("default");
    let opts = match mode {
        "stored" => WeightOptions::as_stored(),
        "q8" => WeightOptions { dense_min_tokens: None, ..WeightOptions::default() },
        "dense" => WeightOptions { dense_min_tokens: Some(1), ..WeightOptions::default() },
        _ => WeightOptions::default(),
    };
    let t0 = Instant::now();
    let model = load_gguf_model(path.as_ref(), &opts).expect("load");
    eprintln!("loaded in {:.2}s with {opts:?}", t0.elapsed().as_secs_f64());
    let cfg = model.config().clone();
    let groups = cfg.kv_layout.num_groups();
    let new_cache = || PagedKvCache::new(&cfg.kv_layout, 64 * 17 * groups, BS);

    let mut cache = new_cache();
    decode(model.as_ref(), &mut cache, 1, 4);
    let tg1 = decode(model.as_ref(), &mut new_cache(), 1, 64);
    println!("decode T=1:  {tg1:7.1} tok/s");
    for nseq in [4, 8, 16] {
        let tg = decode(model.as_ref(), &mut new_cache(), nseq, 16);
        println!("decode T={nseq}: {tg:7.1} tok/s (aggregate)");
    }

    let mut best = 0f64;
    for rep in 0..3 {
        let mut cache = new_cache();
        let mut b = ForwardBatch::default();
        b.push_seq(&prompt(rep, 512), 512, table(groups, 0, 512), true);
        let t0 = Instant::now();
        model.forward(&b, &mut cache).expect("prefill");
        best = best.max(512.0 / t0.elapsed().as_secs_f64());
    }
    println!("prefill T=512: {best:7.1} tok/s");
}
