//! Tests of the quantized kernels: batch invariance (bit for bit), agreement with the f32
//! reference and with candle's own quantized matmuls, and the scalar paths against the SIMD
//! ones, for Q8_0 and Q4_1 weights.

use super::*;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::Module;

/// Deterministic values in [-scale, scale) with some outliers, like activations.
fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|i| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            let v = (2.0 * u - 1.0) * scale;
            if i % 97 == 5 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

fn qtensor(n: usize, k: usize, seed: u64, dtype: GgmlDType) -> QTensor {
    let w = Tensor::from_vec(values(n * k, seed, 0.1), (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&w, dtype).unwrap()
}

/// Both kernels behind one type, so every test runs on each.
enum Kernel {
    Q8(Q8Matrix),
    Q41(Q41Matrix),
}

const FORMATS: [GgmlDType; 2] = [GgmlDType::Q8_0, GgmlDType::Q4_1];

fn kernel(q: &QTensor) -> Kernel {
    match q.dtype() {
        GgmlDType::Q8_0 => Kernel::Q8(Q8Matrix::from_qtensor(q).unwrap()),
        _ => Kernel::Q41(Q41Matrix::from_qtensor(q).unwrap()),
    }
}

fn run(w: &Kernel, x: &[f32]) -> Vec<f32> {
    match w {
        Kernel::Q8(w) => run_with(w, x),
        Kernel::Q41(w) => run_with(w, x),
    }
}

fn run_with(w: &impl TileKernel, x: &[f32]) -> Vec<f32> {
    let (n, k) = w.dims();
    let mut out = vec![0f32; x.len() / k * n];
    matmul(w, x, &mut out);
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn each_row_is_bit_identical_whatever_the_batch() {
    // n = 37 and m up to 70 exercise every register tile, column tails, several thread items
    // and the parallel activation quantization.
    let (k, n) = (96, 37);
    for dtype in FORMATS {
        let w = kernel(&qtensor(n, k, 1, dtype));
        for m in [1, 3, 16, 37, 70] {
            let x = values(m * k, 100 + m as u64, 1.0);
            let together = run(&w, &x);
            for r in 0..m {
                let alone = run(&w, &x[r * k..(r + 1) * k]);
                assert_eq!(bits(&together[r * n..(r + 1) * n]), bits(&alone), "{dtype:?}: row {r} of {m}");
            }
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_next_to_different_neighbours() {
    let (k, n) = (64, 20);
    for dtype in FORMATS {
        let w = kernel(&qtensor(n, k, 2, dtype));
        let row = values(k, 7, 1.0);
        let alone = run(&w, &row);
        for (m, pos) in [(5, 0), (5, 4), (9, 6), (66, 65)] {
            let mut x = values(m * k, 1000 + pos as u64, 3.0);
            x[pos * k..(pos + 1) * k].copy_from_slice(&row);
            let got = run(&w, &x);
            assert_eq!(bits(&got[pos * n..(pos + 1) * n]), bits(&alone), "{dtype:?}: row at {pos} of {m}");
        }
    }
}

#[test]
fn close_to_the_f32_product_with_dequantized_weights() {
    let (m, k, n) = (16, 576, 48);
    for dtype in FORMATS {
        let q = qtensor(n, k, 3, dtype);
        let w = kernel(&q);
        let x = values(m * k, 5, 1.0);
        let got = run(&w, &x);
        let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let want: Vec<f32> = xt
            .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = got.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
        assert!(err / norm < 1e-2, "{dtype:?}: relative error {}", err / norm);
    }
}

#[test]
fn activation_quantization_matches_candle_q8_0() {
    let (m, k) = (40, 128);
    let mut x = values(m * k, 9, 2.0);
    // A block whose scale is exactly 1: ties round away from zero, as f32::round does.
    let ties = [127.0, 0.5, 1.5, -2.5, 2.5, -0.5, 0.499_999_97, -126.5, 3.0, -0.0];
    x[..ties.len()].copy_from_slice(&ties);
    x[32..64].fill(0.0);
    let mut acts = QuantizedActs::default();
    acts.quantize(&x, k); // 40 rows: the parallel path
    let q = QTensor::quantize(&Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
    let theirs = Q8Matrix::from_qtensor(&q).unwrap();
    assert_eq!(acts.qs, theirs.qs);
    assert_eq!(bits(&acts.d), bits(&theirs.d));
    let (mut qs, mut d, mut s) = (vec![0i8; m * k], vec![0f32; m * k / QK], vec![0f32; m * k / QK]);
    quantize_rows(&x, &mut qs, &mut d, &mut s);
    assert_eq!(bits(&acts.s), bits(&s), "parallel and serial quantization differ");
    assert_eq!(&acts.qs[..10], &[127, 1, 2, -3, 3, -1, 0, -127, 3, 0]);
    // The scalar definition gives the same bits as the SIMD one.
    let (mut qs2, mut d2, mut s2) = (vec![0i8; m * k], vec![0f32; m * k / QK], vec![0f32; m * k / QK]);
    for r in 0..m {
        let (xr, kb) = (&x[r * k..(r + 1) * k], k / QK);
        for (b, xb) in xr.chunks_exact(QK).enumerate() {
            let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let d16 = half::f16::from_f32(scale);
            d2[r * kb + b] = d16.to_f32();
            let mut sum = 0;
            for (i, &v) in xb.iter().enumerate() {
                qs2[r * k + b * QK + i] = (v * inv).round() as i8;
                sum += (v * inv).round() as i32;
            }
            s2[r * kb + b] = (half::f16::from_f32(sum as f32) * d16).to_f32();
        }
    }
    assert_eq!(acts.qs, qs2);
    assert_eq!(bits(&acts.d), bits(&d2));
    assert_eq!(bits(&acts.s), bits(&s2));
}

/// The scalar path of `w` over the whole output, for comparison with the SIMD one.
fn scalar(w: &Kernel, x: &[f32], n: usize, k: usize) -> Vec<f32> {
    let m = x.len() / k;
    let mut acts = QuantizedActs::default();
    acts.quantize(x, k);
    let mut slow = vec![0f32; m * n];
    let out = OutPtr::new(&mut slow, n);
    // SAFETY: the ranges cover `slow` exactly and one thread writes it.
    unsafe {
        match w {
            Kernel::Q8(w) => q8_0::scalar_block(&acts, w, 0..m, 0..n, out),
            Kernel::Q41(w) => q4_1::scalar_block(&acts, w, 0..m, 0..n, out),
        }
    }
    slow
}

#[test]
fn the_scalar_path_gives_the_simd_bits() {
    // k = 2304 is 72 blocks: more than one chunk of the Q4_1 offset pass.
    for (m, k, n) in [(7, 96, 11), (5, 2304, 6)] {
        for dtype in FORMATS {
            let w = kernel(&qtensor(n, k, 4, dtype));
            let x = values(m * k, 8, 1.0);
            assert_eq!(bits(&run(&w, &x)), bits(&scalar(&w, &x, n, k)), "{dtype:?} k {k}");
        }
    }
}

#[test]
fn same_bits_as_candles_q8_0_matmul_on_avx2() {
    // candle runs one AVX2 `vec_dot_q8_0_q8_0` per (row, column) for Q8_0 when k is not a
    // multiple of 256 (otherwise AVX-512 VNNI machines take its repacked path).
    if !has_avx2_fma() {
        return;
    }
    let (m, k, n) = (5, 96, 12);
    let q = qtensor(n, k, 6, GgmlDType::Q8_0);
    let w = Q8Matrix::from_qtensor(&q).unwrap();
    let x = values(m * k, 10, 1.0);
    let got = run_with(&w, &x);
    let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
    let want: Vec<f32> =
        QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(bits(&got), bits(&want));
    let through_tensor: Vec<f32> = w.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(bits(&through_tensor), bits(&want));
}

#[test]
fn q4_1_agrees_with_candles_q4_1_matmul() {
    // Same quantized operands as candle's `vec_dot_q4_1_q8_1` (Q8_1 activations with the f16
    // `s`); only the order of the float additions differs.
    let (m, k, n) = (6, 576, 40);
    let q = qtensor(n, k, 12, GgmlDType::Q4_1);
    let w = Q41Matrix::from_qtensor(&q).unwrap();
    let x = values(m * k, 13, 1.0);
    let got = run_with(&w, &x);
    let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
    let want: Vec<f32> =
        QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "element {i}: {a} vs candle's {b}");
    }
}

/// Random MXFP4 blocks `[n, k]` with exponents around 2^0 (as real experts have).
fn mxfp4(n: usize, k: usize, seed: u64) -> Mxfp4Matrix {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut blocks = Vec::with_capacity(n * k / QK * mxfp4::BLOCK_BYTES);
    for _ in 0..n * k / QK {
        blocks.push(120 + (next() % 8) as u8);
        blocks.extend((0..16).map(|_| next() as u8));
    }
    Mxfp4Matrix::from_blocks(blocks, n, k).unwrap()
}

#[test]
fn mxfp4_decodes_e8m0_scales_and_e2m1_values_as_the_ocp_spec_says() {
    use mxfp4::{dequantize, e8m0_half};
    // E8M0: 2^(e - 127); the doubled table halves it.
    assert_eq!(e8m0_half(127), 0.5);
    assert_eq!(e8m0_half(128), 1.0);
    assert_eq!(e8m0_half(130), 4.0);
    assert_eq!(e8m0_half(1), 2f32.powi(-127));
    assert_eq!(e8m0_half(0), 2f32.powi(-128));
    // E2M1 codes 0..8: 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign. Scale 2^(128 - 127) = 2.
    let mut block = vec![128u8];
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = dequantize(&block);
    let e2m1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    for j in 0..16 {
        let want = |code: usize| if code < 8 { e2m1[code] } else { -e2m1[code - 8] } * 2.0;
        assert_eq!(v[j], want(j), "low nibble {j}");
        assert_eq!(v[16 + j], want(15 - j), "high nibble of byte {j}");
    }
}

#[test]
fn mxfp4_every_isa_gives_the_scalar_bits() {
    // k = 96 (3 blocks: an odd tail for the paired AVX-512 steps), 64 and 2880 (gpt-oss).
    let isas = mxfp4::Isa::available();
    eprintln!("MXFP4 implementations on this host: {isas:?}");
    for (m, k, n) in [(7, 96, 11), (5, 64, 9), (3, 2880, 5), (9, 96, 37)] {
        let w = mxfp4(n, k, 3 + k as u64);
        let x = values(m * k, 21, 1.0);
        let want = run_with(&w.clone().with_isa(mxfp4::Isa::Scalar), &x);
        for &isa in &isas {
            assert_eq!(bits(&run_with(&w.clone().with_isa(isa), &x)), bits(&want), "{isa:?} [{m}, {k}] x [{n}]");
        }
    }
}

#[test]
fn mxfp4_rows_are_bit_identical_alone_and_in_any_batch() {
    let (k, n) = (96, 37);
    for isa in mxfp4::Isa::available() {
        let w = mxfp4(n, k, 5).with_isa(isa);
        for m in [1, 2, 3, 5, 16, 70] {
            let x = values(m * k, 300 + m as u64, 1.0);
            let together = run_with(&w, &x);
            for r in 0..m {
                let alone = run_with(&w, &x[r * k..(r + 1) * k]);
                assert_eq!(bits(&together[r * n..(r + 1) * n]), bits(&alone), "{isa:?}: row {r} of {m}");
            }
        }
        // A gathered subset of pre-quantized rows gives the rows' own results.
        let x = values(6 * k, 77, 1.0);
        let all = run_with(&w, &x);
        let mut acts = QuantizedActs::default();
        acts.quantize(&x, k);
        let mut sub = QuantizedActs::default();
        acts.gather(&[4, 1], &mut sub);
        let mut out = vec![0f32; 2 * n];
        matmul_quantized(&w, &sub, &mut out);
        assert_eq!(bits(&out[..n]), bits(&all[4 * n..5 * n]));
        assert_eq!(bits(&out[n..]), bits(&all[n..2 * n]));
    }
}

#[test]
fn mxfp4_is_the_dequantized_product_of_the_quantized_activations() {
    // Against f64 math on the dequantized weights: with the activations' own Q8_0 rounding
    // applied the only difference is f32 accumulation (tight); with the raw f32 activations,
    // that rounding's ~0.4% (loose).
    let (m, k, n) = (4, 2880, 16);
    let w = mxfp4(n, k, 9);
    let wf = w.dequantize();
    let x = values(m * k, 31, 1.0);
    let got = run_with(&w, &x);
    let mut acts = QuantizedActs::default();
    acts.quantize(&x, k);
    for r in 0..m {
        let (xq, xd) = acts.row(r);
        for c in 0..n {
            let wr = &wf[c * k..(c + 1) * k];
            let exact: f64 = (0..k).map(|i| wr[i] as f64 * xq[i] as f64 * xd[i / QK] as f64).sum();
            let raw: f64 = (0..k).map(|i| wr[i] as f64 * x[r * k + i] as f64).sum();
            let scale: f64 = (0..k).map(|i| (wr[i] as f64 * x[r * k + i] as f64).abs()).sum();
            let g = got[r * n + c] as f64;
            assert!((g - exact).abs() <= 1e-5 * scale, "[{r}, {c}]: {g} vs {exact} (scale {scale})");
            assert!((g - raw).abs() <= 1e-2 * scale, "[{r}, {c}]: {g} vs f32 activations {raw}");
        }
    }
}
