//! Throughput of wick's batch-invariant quantized matmuls `y = x · Wᵀ` per weight format and
//! kernel level, on the shapes of a Llama-3.2-1B layer (attention 2048→2048, MLP 2048→8192 and
//! 8192→2048), for M = 1, 16 and 512 activation rows: best of several timings, in GMAC/s (one
//! multiply-add per weight per row).
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p wick-engine --example qmatmul_bench [FORMAT...] [M...]`
//! with formats among q8_0, q4_1, q4_k, q5_k, q6_k (all by default).
//!
//! `WICK_BENCH_COLD=1`: weights streamed from memory, as a decode step reads them, instead of
//! from cache: enough copies of each matrix to exceed 128 MiB, timed as one pass over all of
//! them (best of several), with the stored bytes read per second.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use wick_engine::kernel_level::KernelLevel;
use wick_engine::model::qmatmul::{Q41Matrix, Q4KMatrix, Q5KMatrix, Q6KMatrix, Q8Matrix, TileKernel};

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
    while reps < 3 || (start.elapsed().as_secs_f64() < budget && reps < 200) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    best
}

fn kernel(format: &str, q: &QTensor, level: KernelLevel) -> Box<dyn TileKernel> {
    match format {
        "q8_0" => Box::new(Q8Matrix::from_qtensor(q).unwrap().with_level(level)),
        "q4_1" => Box::new(Q41Matrix::from_qtensor(q).unwrap().with_level(level)),
        "q4_k" => Box::new(Q4KMatrix::from_qtensor(q).unwrap().with_level(level)),
        "q5_k" => Box::new(Q5KMatrix::from_qtensor(q).unwrap().with_level(level)),
        "q6_k" => Box::new(Q6KMatrix::from_qtensor(q).unwrap().with_level(level)),
        other => panic!("unknown format {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ms: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let ms = if ms.is_empty() { vec![1, 16, 512] } else { ms };
    let mut formats: Vec<&str> = args.iter().filter(|a| a.parse::<usize>().is_err()).map(|a| a.as_str()).collect();
    if formats.is_empty() {
        formats = vec!["q8_0", "q4_1", "q4_k", "q5_k", "q6_k"];
    }
    let levels: Vec<KernelLevel> = KernelLevel::available().into_iter().filter(|l| *l != KernelLevel::Scalar).collect();
    // `WICK_BENCH_SHAPES=smollm2`: SmolLM2-135M's layer (576 wide, MLP 1536) instead.
    // `WICK_BENCH_SHAPES=1b-decode`: every matrix shape of a 1B decode step (k and v 512 wide,
    // gate and up fused, the tied head's 49152 columns).
    let shapes: &[(&str, usize, usize)] = match std::env::var("WICK_BENCH_SHAPES").as_deref() {
        Ok("smollm2") => &[("qkv", 576, 960), ("up", 576, 3072), ("down", 1536, 576)],
        Ok("1b-decode") => &[
            ("q", 2048, 2048),
            ("kv", 2048, 512),
            ("gateup", 2048, 16384),
            ("down", 8192, 2048),
            ("head", 2048, 49152),
        ],
        _ => &[("attn", 2048, 2048), ("up", 2048, 8192), ("down", 8192, 2048)],
    };
    let cold = std::env::var("WICK_BENCH_COLD").is_ok_and(|v| v == "1");
    print!("{:6} {:6} {:>4}", "format", "shape", "M");
    for l in &levels {
        print!(" {:>12}", format!("{l} GMAC/s"));
    }
    println!();
    for format in formats {
        let dtype = match format {
            "q8_0" => GgmlDType::Q8_0,
            "q4_1" => GgmlDType::Q4_1,
            "q4_k" => GgmlDType::Q4K,
            "q5_k" => GgmlDType::Q5K,
            "q6_k" => GgmlDType::Q6K,
            other => panic!("unknown format {other}"),
        };
        for &(name, k, n) in shapes {
            let w = Tensor::from_vec(values(n * k, 1), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let bytes = n * k / dtype.block_size() * dtype.type_size();
            let copies = if cold { (128 << 20) / bytes + 1 } else { 1 };
            let kernels: Vec<Vec<_>> =
                levels.iter().map(|&l| (0..copies).map(|_| kernel(format, &q, l)).collect()).collect();
            for &m in &ms {
                let x = values(m * k, 2 + m as u64);
                let mut out = vec![0f32; m * n];
                print!("{format:6} {name:6} {m:>4}");
                for copies in &kernels {
                    let t =
                        best(|| copies.iter().for_each(|kern| kern.matmul(&x, &mut out)), 0.5) / copies.len() as f64;
                    print!(" {:>12.1}", (m * n * k) as f64 / t / 1e9);
                    if cold {
                        print!(" ({:.1} GB/s)", bytes as f64 / t / 1e9);
                    }
                }
                println!();
            }
        }
    }
}
