//! Tests of the quantized kernels, on every kernel level this CPU runs (scalar, AVX2,
//! AVX-512 VNNI): batch invariance (bit for bit), agreement with the f32 reference and with
//! candle's own quantized matmuls, and every SIMD level against the scalar one, for Q8_0,
//! Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, F16, BF16, F32 and MXFP4 weights.

use super::*;
use crate::kernel_level::KernelLevel;
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

/// The kernels behind one type, so every test runs on each.
enum Kernel {
    Q8(Q8Matrix),
    Q41(Q41Matrix),
    Q50(Q50Matrix),
    Q51(Q51Matrix),
    Q4K(Q4KMatrix),
    Q5K(Q5KMatrix),
    Q6K(Q6KMatrix),
    Float(FloatMatrix),
}

const FORMATS: [GgmlDType; 10] = [
    GgmlDType::Q8_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::F32,
];

fn kernel(q: &QTensor, level: KernelLevel) -> Kernel {
    match q.dtype() {
        GgmlDType::Q8_0 => Kernel::Q8(Q8Matrix::from_qtensor(q).unwrap().with_level(level)),
        GgmlDType::Q4_1 => Kernel::Q41(Q41Matrix::from_qtensor(q).unwrap().with_level(level)),
        GgmlDType::Q5_0 => Kernel::Q50(Q50Matrix::from_qtensor(q).unwrap().with_level(level)),
        GgmlDType::Q5_1 => Kernel::Q51(Q51Matrix::from_qtensor(q).unwrap().with_level(level)),
        GgmlDType::Q4K => Kernel::Q4K(Q4KMatrix::from_qtensor(q).unwrap().with_level(level)),
        GgmlDType::Q5K => Kernel::Q5K(Q5KMatrix::from_qtensor(q).unwrap().with_level(level)),
        GgmlDType::Q6K => Kernel::Q6K(Q6KMatrix::from_qtensor(q).unwrap().with_level(level)),
        GgmlDType::F16 | GgmlDType::BF16 => {
            let (n, k) = q.shape().dims2().unwrap();
            let (ty, bits) = FloatMatrix::bits_of_qtensor(q).unwrap().unwrap();
            Kernel::Float(FloatMatrix::new(ty, bits, n, k).unwrap().with_level(level))
        }
        GgmlDType::F32 => {
            let (n, k) = q.shape().dims2().unwrap();
            let w = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            Kernel::Float(FloatMatrix::from_f32(w, n, k).unwrap().with_level(level))
        }
        d => panic!("no kernel for {d:?}"),
    }
}

/// `k` rounded up to a whole number of the format's blocks (256 values for the K-quants; any
/// `k` for the floats).
fn k_for(dtype: GgmlDType, k: usize) -> usize {
    k.next_multiple_of(dtype.block_size())
}

fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::F32)
}

/// Every (format, level) pair this CPU runs.
fn cases() -> Vec<(GgmlDType, KernelLevel)> {
    FORMATS.into_iter().flat_map(|f| KernelLevel::available().into_iter().map(move |l| (f, l))).collect()
}

#[test]
fn the_avx512_kernels_run_wherever_the_cpu_has_them() {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = flags.lines().find(|l| l.starts_with("flags")).unwrap_or("").split_whitespace().collect();
    let has = ["avx512f", "avx512bw", "avx512vl", "avx512_vnni"].iter().all(|f| flags.contains(f));
    if has {
        assert!(KernelLevel::Avx512.supported(), "the CPU reports AVX-512 VNNI but it is not detected");
        assert!(KernelLevel::available().contains(&KernelLevel::Avx512));
    } else {
        eprintln!("SKIP: this CPU has no AVX-512 VNNI (flags {flags:?}); the AVX-512 kernels are not tested here");
    }
}

impl Kernel {
    fn tile(&self) -> &dyn TileKernel {
        match self {
            Kernel::Q8(w) => w,
            Kernel::Q41(w) => w,
            Kernel::Q50(w) => w,
            Kernel::Q51(w) => w,
            Kernel::Q4K(w) => w,
            Kernel::Q5K(w) => w,
            Kernel::Q6K(w) => w,
            Kernel::Float(w) => w,
        }
    }
}

fn run(w: &Kernel, x: &[f32]) -> Vec<f32> {
    run_with(w.tile(), x)
}

fn run_with<W: TileKernel + ?Sized>(w: &W, x: &[f32]) -> Vec<f32> {
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
    let n = 37;
    for (dtype, level) in cases() {
        // The floats take k = 100: six chunks of 16 and a partial one.
        let k = if is_float(dtype) { 100 } else { k_for(dtype, 96) };
        let w = kernel(&qtensor(n, k, 1, dtype), level);
        for m in [1, 3, 16, 37, 70] {
            let x = values(m * k, 100 + m as u64, 1.0);
            let together = run(&w, &x);
            for r in 0..m {
                let alone = run(&w, &x[r * k..(r + 1) * k]);
                assert_eq!(bits(&together[r * n..(r + 1) * n]), bits(&alone), "{dtype:?} {level}: row {r} of {m}");
            }
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_next_to_different_neighbours() {
    let n = 20;
    for (dtype, level) in cases() {
        let k = k_for(dtype, 64);
        let w = kernel(&qtensor(n, k, 2, dtype), level);
        let row = values(k, 7, 1.0);
        let alone = run(&w, &row);
        for (m, pos) in [(5, 0), (5, 4), (9, 6), (66, 65)] {
            let mut x = values(m * k, 1000 + pos as u64, 3.0);
            x[pos * k..(pos + 1) * k].copy_from_slice(&row);
            let got = run(&w, &x);
            assert_eq!(bits(&got[pos * n..(pos + 1) * n]), bits(&alone), "{dtype:?} {level}: row at {pos} of {m}");
        }
    }
}

#[test]
fn close_to_the_f32_product_with_dequantized_weights() {
    let (m, n) = (16, 48);
    for (dtype, level) in cases() {
        let k = k_for(dtype, 576);
        let q = qtensor(n, k, 3, dtype);
        let w = kernel(&q, level);
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
        // The K-quants take Q8_K activations (one scale per 256 values, as llama.cpp): the
        // outliers of `values` cost their neighbours more precision than 32-value blocks do.
        let bound = if dtype.block_size() == 256 { 3e-2 } else { 1e-2 };
        assert!(err / norm < bound, "{dtype:?} {level}: relative error {}", err / norm);
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
    for (b, block) in q.data().unwrap().chunks_exact(2 + QK).enumerate() {
        let theirs: Vec<i8> = block[2..].iter().map(|&v| v as i8).collect();
        assert_eq!(acts.qs[b * QK..(b + 1) * QK], theirs[..], "block {b}");
        assert_eq!(acts.d[b], half::f16::from_le_bytes([block[0], block[1]]).to_f32(), "block {b}");
    }
    let (mut qs, mut d, mut s) = (vec![0i8; m * k], vec![0f32; m * k / QK], vec![0f32; m * k / QK]);
    let (mut isum, mut isum16) = (vec![0i32; m * k / QK], vec![0i32; m * k / QK]);
    quantize_rows(&x, &mut qs, &mut d, &mut s, (&mut isum, &mut isum16));
    assert_eq!(acts.isum16, isum16, "parallel and serial quantization differ");
    assert_eq!(bits(&acts.s), bits(&s), "parallel and serial quantization differ");
    assert_eq!(acts.isum, isum, "parallel and serial quantization differ");
    // `isum` is the block's sum, `isum16` that of its first 16.
    for b in 0..acts.isum.len() {
        let sum: i32 = acts.qs[b * QK..(b + 1) * QK].iter().map(|&q| q as i32).sum();
        assert_eq!(acts.isum[b], sum, "block {b}");
        let first: i32 = acts.qs[b * QK..b * QK + QK / 2].iter().map(|&q| q as i32).sum();
        assert_eq!(acts.isum16[b], first, "block {b}");
    }
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

#[test]
fn every_level_gives_the_scalar_bits() {
    // k = 96 is 3 blocks; 2304 is 72 blocks (9 K-quant super-blocks); m = 9, 7, 5, 4 and 3
    // take the panels' tiles of 8 and 1, 7, 5, 4 (two groups) and 3 rows; n = 11, 19 and 37 end
    // in a partial group of 16 columns; k = 100 and 1000 end the floats in a partial chunk of 16.
    for (m, k, n) in [(7, 96, 11), (5, 2304, 6), (9, 64, 37), (4, 100, 19), (3, 1000, 9)] {
        for (dtype, level) in cases() {
            let k = k_for(dtype, k);
            let q = qtensor(n, k, 4, dtype);
            let x = values(m * k, 8, 1.0);
            let want = run(&kernel(&q, KernelLevel::Scalar), &x);
            assert_eq!(bits(&run(&kernel(&q, level), &x)), bits(&want), "{dtype:?} {level} k {k}");
        }
    }
}

#[test]
fn the_exact_product_of_the_quantized_operands_within_f32_rounding() {
    // Against f64 math on candle's dequantized weights and the quantized activations: only
    // the f32 accumulation differs (Q4_1's and Q5_1's offsets also take candle's f16-rounded
    // block sums).
    let (m, n) = (3, 8);
    for (dtype, level) in cases() {
        let k = k_for(dtype, 1536);
        let q = qtensor(n, k, 14, dtype);
        let wf: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let x = values(m * k, 15, 1.0);
        let w = kernel(&q, level);
        let got = run(&w, &x);
        let blocks = match &w {
            Kernel::Q4K(w) => w.act_blocks(),
            Kernel::Q5K(w) => w.act_blocks(),
            Kernel::Q6K(w) => w.act_blocks(),
            Kernel::Float(w) => w.act_blocks(),
            _ => ActBlocks::Q8_0,
        };
        let mut acts = QuantizedActs::default();
        acts.quantize_as(&x, k, blocks);
        let tol = if matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1) { 2e-3 } else { 1e-5 };
        for r in 0..m {
            // The floats' activations are the f32 values themselves.
            let xv: Vec<f64> = if is_float(dtype) {
                acts.f[r * k..(r + 1) * k].iter().map(|&v| v as f64).collect()
            } else {
                let (xq, xd) = acts.row(r);
                (0..k).map(|i| xq[i] as f64 * xd[i / QK] as f64).collect()
            };
            for c in 0..n {
                let wr = &wf[c * k..(c + 1) * k];
                let exact: f64 = (0..k).map(|i| wr[i] as f64 * xv[i]).sum();
                let scale: f64 = (0..k).map(|i| (wr[i] as f64 * xv[i]).abs()).sum();
                let g = got[r * n + c] as f64;
                assert!(
                    (g - exact).abs() <= tol * scale,
                    "{dtype:?} {level} [{r}, {c}]: {g} vs {exact} (scale {scale})"
                );
            }
        }
    }
}

#[test]
fn q8_0_q4_1_and_q5_k_agree_with_candles_matmuls() {
    // Same quantized operands as candle's `vec_dot_q8_0_q8_0`, `vec_dot_q4_1_q8_1` (Q8_1
    // activations with the f16 `s`) and `vec_dot_q5k_q8k` (Q8_K activations); only the order
    // of the float additions differs.
    for (dtype, k) in [(GgmlDType::Q8_0, 576), (GgmlDType::Q4_1, 576), (GgmlDType::Q5K, 768)] {
        let (m, n) = (6, 40);
        let q = qtensor(n, k, 12, dtype);
        let w = kernel(&q, KernelLevel::current());
        let x = values(m * k, 13, 1.0);
        let got = run(&w, &x);
        let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let want: Vec<f32> =
            QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{dtype:?} element {i}: {a} vs candle's {b}");
        }
    }
}

#[test]
fn half_weights_widen_exactly_and_keep_their_bits() {
    // Every F16 and BF16 bit pattern that is a number widens to the value `half` gives it
    // (subnormals included), on every level: a one-hot activation picks one weight out.
    for ty in [FloatType::F16, FloatType::Bf16] {
        let k = 16;
        let bits: Vec<u16> = (0..=u16::MAX)
            .filter(|&b| match ty {
                FloatType::F16 => !half::f16::from_bits(b).is_nan(),
                FloatType::Bf16 => !half::bf16::from_bits(b).is_nan(),
                FloatType::F32 => unreachable!(),
            })
            .step_by(7)
            .collect();
        let n = bits.len() / k;
        let bits = bits[..n * k].to_vec();
        let want: Vec<f32> = bits
            .iter()
            .map(|&b| match ty {
                FloatType::F16 => half::f16::from_bits(b).to_f32(),
                FloatType::Bf16 => half::bf16::from_bits(b).to_f32(),
                FloatType::F32 => unreachable!(),
            })
            .collect();
        for level in KernelLevel::available() {
            let w = FloatMatrix::new(ty, bits.clone(), n, k).unwrap().with_level(level);
            for pick in [0, 5, 15] {
                let mut x = vec![0f32; k];
                x[pick] = 1.0;
                let got = run_with(&w, &x);
                for (c, (g, col)) in got.iter().zip(want.chunks_exact(k)).enumerate() {
                    // 0 · ±inf is NaN in the other lanes' fmas; finite weights must come out exact.
                    if col.iter().all(|w| w.is_finite()) {
                        assert_eq!(g.to_bits(), (col[pick] + 0.0).to_bits(), "{ty:?} {level} column {c} lane {pick}");
                    }
                }
            }
        }
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
    let isas = KernelLevel::available();
    eprintln!("MXFP4 implementations on this host: {isas:?}");
    for (m, k, n) in [(7, 96, 11), (5, 64, 9), (3, 2880, 5), (9, 96, 37)] {
        let w = mxfp4(n, k, 3 + k as u64);
        let x = values(m * k, 21, 1.0);
        let want = run_with(&w.clone().with_level(KernelLevel::Scalar), &x);
        for &isa in &isas {
            assert_eq!(bits(&run_with(&w.clone().with_level(isa), &x)), bits(&want), "{isa:?} [{m}, {k}] x [{n}]");
        }
    }
}

#[test]
fn mxfp4_rows_are_bit_identical_alone_and_in_any_batch() {
    let (k, n) = (96, 37);
    for isa in KernelLevel::available() {
        let w = mxfp4(n, k, 5).with_level(isa);
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
fn gathered_rows_give_their_own_results_on_every_panel_format() {
    // The AVX-512 tiles read `QuantizedActs::tiled`, which `gather` must rebuild.
    let (n, k) = (40, 512);
    for (dtype, level) in cases().into_iter().filter(|(d, _)| !is_float(*d)) {
        let w = kernel(&qtensor(n, k, 9, dtype), level);
        let x = values(11 * k, 78, 1.0);
        let all = run(&w, &x);
        let mut acts = QuantizedActs::default();
        acts.quantize_as(&x, k, w.tile().act_blocks());
        let rows = [10, 4, 1, 9, 0, 3, 2, 8, 7];
        let mut sub = QuantizedActs::default();
        acts.gather(&rows, &mut sub);
        let mut out = vec![0f32; rows.len() * n];
        matmul_quantized(w.tile(), &sub, &mut out);
        for (j, &r) in rows.iter().enumerate() {
            assert_eq!(bits(&out[j * n..(j + 1) * n]), bits(&all[r * n..(r + 1) * n]), "{dtype:?} {level:?}: row {r}");
        }
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

#[test]
fn q8_k_activation_quantization_matches_candle() {
    // candle's `BlockQ8K::from_float` rounds half away from zero where ggml rounds half to even;
    // random values never sit on a tie, so the two agree here bit for bit.
    let (m, k) = (40, 512);
    let mut x = values(m * k, 19, 2.0);
    x[256..512].fill(0.0); // an all-zero super-block
    let mut acts = QuantizedActs::default();
    acts.quantize_as(&x, k, ActBlocks::Q8K); // 40 rows: the parallel path
    let q = QTensor::quantize(&Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap(), GgmlDType::Q8K).unwrap();
    let bytes = q.data().unwrap();
    const BLOCK: usize = 4 + 256 + 32;
    for (sb, blk) in bytes.chunks_exact(BLOCK).enumerate() {
        let d = f32::from_le_bytes(blk[..4].try_into().unwrap());
        let qs: Vec<i8> = blk[4..260].iter().map(|&b| b as i8).collect();
        assert_eq!(&acts.qs[sb * 256..(sb + 1) * 256], &qs[..], "super-block {sb}");
        for j in 0..8 {
            let b = sb * 8 + j;
            assert_eq!(acts.d[b].to_bits(), d.to_bits(), "super-block {sb}");
            let sum: i32 = qs[j * QK..(j + 1) * QK].iter().map(|&q| q as i32).sum();
            assert_eq!(acts.s[b], sum as f32, "the integer block sum");
            assert_eq!(acts.isum[b], sum);
            assert_eq!(acts.isum16[b], qs[j * QK..j * QK + QK / 2].iter().map(|&q| q as i32).sum::<i32>());
        }
    }
    // Serial and parallel quantization agree.
    let mut one = QuantizedActs::default();
    one.quantize_as(&x[..2 * k], k, ActBlocks::Q8K);
    assert_eq!(&one.qs[..], &acts.qs[..2 * k]);
    assert_eq!(nearest_int(2.5), 2);
    assert_eq!(nearest_int(-3.5), -4);
}

#[test]
fn matrices_sharing_an_output_give_each_its_own_bits_in_its_columns() {
    // A Q4_K_M file's attention: q and k in Q4_K beside v in Q6_K (n of 37 and 21: column
    // tails), and Q5_K beside Q4_K, on every level; m up to 70 crosses a row chunk.
    let k = 512;
    for level in KernelLevel::available() {
        for dtypes in
            [[GgmlDType::Q4K, GgmlDType::Q4K, GgmlDType::Q6K], [GgmlDType::Q5K, GgmlDType::Q4K, GgmlDType::Q6K]]
        {
            let parts: Vec<Kernel> = dtypes
                .iter()
                .zip([37, 21, 16])
                .enumerate()
                .map(|(i, (&d, n))| kernel(&qtensor(n, k, 7 + i as u64, d), level))
                .collect();
            let tiles: Vec<&dyn TileKernel> = parts.iter().map(Kernel::tile).collect();
            let width: usize = tiles.iter().map(|t| t.dims().0).sum();
            for m in [1, 9, 70] {
                let x = values(m * k, 300 + m as u64, 1.0);
                let mut fused = vec![f32::NAN; m * width];
                matmul_parts(&tiles, &x, &mut fused);
                let mut col = 0;
                for (p, t) in tiles.iter().enumerate() {
                    let n = t.dims().0;
                    let alone = run_with(*t, &x);
                    for r in 0..m {
                        assert_eq!(
                            bits(&fused[r * width + col..r * width + col + n]),
                            bits(&alone[r * n..(r + 1) * n]),
                            "{dtypes:?} {level}: part {p}, row {r} of {m}"
                        );
                    }
                    col += n;
                }
            }
        }
    }
}
