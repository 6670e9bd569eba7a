//! Tests of the Q8_0 kernel: batch invariance (bit for bit), agreement with the f32 reference
//! and with candle's own Q8_0 matmul, and the scalar path against the SIMD one.

use super::*;
use candle_core::quantized::QMatMul;
use candle_core::Module;

/// Deterministic values in [-scale, scale) with some outliers, like activations.
fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|i| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            let v = (2.0 * u - 1.0) * scale;
            if i % 97 == 5 { v * 8.0 } else { v }
        })
        .collect()
}

fn weights(n: usize, k: usize, seed: u64) -> (Q8Matrix, QTensor) {
    let w = Tensor::from_vec(values(n * k, seed, 0.1), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
    (Q8Matrix::from_qtensor(&q).unwrap(), q)
}

fn run(w: &Q8Matrix, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / w.k * w.n];
    w.matmul(x, &mut out);
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn each_row_is_bit_identical_whatever_the_batch() {
    // n = 37 and m up to 70 exercise every register tile, column tails and several thread items.
    let (k, n) = (96, 37);
    let (w, _) = weights(n, k, 1);
    for m in [1, 3, 16, 37, 70] {
        let x = values(m * k, 100 + m as u64, 1.0);
        let together = run(&w, &x);
        for r in 0..m {
            let alone = run(&w, &x[r * k..(r + 1) * k]);
            assert_eq!(bits(&together[r * n..(r + 1) * n]), bits(&alone), "row {r} of {m}");
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_next_to_different_neighbours() {
    let (k, n) = (64, 20);
    let (w, _) = weights(n, k, 2);
    let row = values(k, 7, 1.0);
    let alone = run(&w, &row);
    for (m, pos) in [(5, 0), (5, 4), (9, 6), (66, 65)] {
        let mut x = values(m * k, 1000 + pos as u64, 3.0);
        x[pos * k..(pos + 1) * k].copy_from_slice(&row);
        let got = run(&w, &x);
        assert_eq!(bits(&got[pos * n..(pos + 1) * n]), bits(&alone), "row at {pos} of {m}");
    }
}

#[test]
fn close_to_the_f32_product_with_dequantized_weights() {
    let (m, k, n) = (16, 576, 48);
    let (w, q) = weights(n, k, 3);
    let x = values(m * k, 5, 1.0);
    let got = run(&w, &x);
    let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
    let want: Vec<f32> =
        xt.matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
    let err = got.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
    assert!(err / norm < 1e-2, "relative error {}", err / norm);
}

#[test]
fn activation_quantization_matches_candle_q8_0() {
    let (m, k) = (3, 128);
    let x = values(m * k, 9, 2.0);
    let (mut qs, mut d) = (vec![0i8; m * k], vec![0f32; m * k / QK8_0]);
    quantize_rows(&x, &mut qs, &mut d);
    let q = QTensor::quantize(&Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
    let theirs = Q8Matrix::from_qtensor(&q).unwrap();
    assert_eq!(qs, theirs.qs);
    assert_eq!(bits(&d), bits(&theirs.d));
}

#[test]
fn the_scalar_path_gives_the_simd_bits() {
    let (m, k, n) = (7, 96, 11);
    let (w, _) = weights(n, k, 4);
    let x = values(m * k, 8, 1.0);
    let fast = run(&w, &x);
    let (mut qs, mut d) = (vec![0i8; m * k], vec![0f32; m * k / QK8_0]);
    quantize_rows(&x, &mut qs, &mut d);
    let mut slow = vec![0f32; m * n];
    let out = OutPtr { addr: slow.as_mut_ptr() as usize, stride: n };
    let acts = Operand { qs: &qs, d: &d, k };
    let ws = Operand { qs: &w.qs, d: &w.d, k };
    // SAFETY: the ranges cover `slow` exactly and one thread writes it.
    unsafe { scalar_block(&acts, &ws, 0..m, 0..n, out) };
    assert_eq!(bits(&fast), bits(&slow));
}

#[test]
fn same_bits_as_candles_q8_0_matmul_on_avx2() {
    // candle runs one AVX2 `vec_dot_q8_0_q8_0` per (row, column) for Q8_0 when k is not a
    // multiple of 256 (otherwise AVX-512 VNNI machines take its repacked path).
    if !has_avx2_fma() {
        return;
    }
    let (m, k, n) = (5, 96, 12);
    let (w, q) = weights(n, k, 6);
    let x = values(m * k, 10, 1.0);
    let got = run(&w, &x);
    let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
    let want: Vec<f32> = QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(bits(&got), bits(&want));
    let through_tensor: Vec<f32> = w.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(bits(&through_tensor), bits(&want));
}
