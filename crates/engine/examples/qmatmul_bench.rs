//! Per-row cost of `y = x · Wᵀ` on SmolLM2-sized shapes: wick's batch-invariant Q8_0 and Q4_1
//! kernels against candle's Q8_0 `QMatMul` and the f32 gemm (`Tensor::matmul` with a transposed f32
//! weight), for M = 1, 4, 16, 64, 512 rows. Best of several timings, in µs per row.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p wick-engine --example qmatmul_bench [M...]`

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use wick_engine::model::qmatmul::{Q41Matrix, Q8Matrix, TileKernel};

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

fn main() {
    let ms: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ms = if ms.is_empty() { vec![1, 4, 16, 64, 512] } else { ms };
    let shapes = [("qkv", 576, 960), ("gate_up", 576, 3072), ("down", 1536, 576), ("lm_head", 576, 49152)];
    println!(
        "{:8} {:>4} {:>11} {:>11} {:>11} {:>11} {:>8} {:>8}",
        "shape", "M", "wick µs/r", "wq41 µs/r", "cq8 µs/r", "f32 µs/r", "cq8/wick", "f32/wick"
    );
    for (name, k, n) in shapes {
        let w = Tensor::from_vec(values(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let ours = Q8Matrix::from_qtensor(&q).unwrap();
        let theirs = QMatMul::from_qtensor(q).unwrap();
        let q41 = Q41Matrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()).unwrap();
        for &m in &ms {
            let x = Tensor::from_vec(values(m * k, 2 + m as u64), (m, k), &Device::Cpu).unwrap();
            let budget = 0.4;
            let t_ours = best(|| drop(ours.forward(&x).unwrap()), budget);
            let t_q41 = best(|| drop(q41.forward(&x).unwrap()), budget);
            let t_cq8 = best(|| drop(theirs.forward(&x).unwrap()), budget);
            let t_f32 = best(|| drop(x.matmul(&w.t().unwrap()).unwrap()), budget);
            let per = |t: f64| t * 1e6 / m as f64;
            println!(
                "{name:8} {m:>4} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>8.2} {:>8.2}",
                per(t_ours),
                per(t_q41),
                per(t_cq8),
                per(t_f32),
                t_cq8 / t_ours,
                t_f32 / t_ours
            );
        }
    }
}
