//! Turning stored tensors into runnable layers: fusing projections that share an input
//! (q/k/v, gate/up), choosing the kernel per quantization type (Q8_0, Q4_1, Q5_0, Q5_1, Q4_K,
//! Q5_K and Q6_K run on wick's batch-invariant kernels as stored, F16 and BF16 at 16 bits on
//! wick's float kernel; Q8_1 is re-quantized to Q8_0), and
//! optionally keeping an f32 copy of quantized weights for large steps (`WeightOptions`; off
//! by default since it breaks batch invariance).

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use super::layers::{Linear, QuantWeight};
use super::qmatmul::{
    mxfp4, FloatMatrix, FloatType, Mxfp4Matrix, Q41Matrix, Q4KMatrix, Q50Matrix, Q51Matrix, Q5KMatrix, Q6KMatrix,
    Q8Matrix,
};
use crate::model::backend::RawWeight;
use crate::{EngineError, Result};

/// How weights are held in memory.
#[derive(Debug, Clone)]
pub struct WeightOptions {
    /// Run Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K on wick's kernels, F16 and BF16 linear weights
    /// on wick's 16-bit float kernel, and re-quantize quantized weights whose type has no SIMD
    /// matmul on this CPU (Q8_1) to Q8_0 at load time. When off, those types run on candle's
    /// `QMatMul` as stored and float weights as f32 (an oracle setting). Q8_0 always runs on
    /// wick's kernel, which gives candle's bits.
    pub fast_kernels: bool,
    /// Keep an f32 copy of quantized linear weights and use it for steps with at least this
    /// many tokens. `None` (the default) never does: switching kernels by step size makes a
    /// sequence's output depend on what else is in the batch, and the Q8_0 kernel already
    /// amortizes weight reads over the rows of a step.
    pub dense_min_tokens: Option<usize>,
    /// The f32 copies are skipped when they would take more than this many bytes.
    pub dense_max_bytes: usize,
    /// Dequantize every weight to f32 at load (an oracle setting: exact weights, f32
    /// activations, no quantized kernels).
    pub dequantize: bool,
    /// Quantize float linear weights (HF F32/F16/BF16, GGUF F16/F32) to this type at load
    /// (Q8_0 or Q4_1, wick's batch-invariant kernels): half or a quarter of BF16's memory,
    /// and every row's result independent of the step it runs in.
    pub quantize_floats: Option<GgmlDType>,
}

impl Default for WeightOptions {
    fn default() -> Self {
        Self {
            fast_kernels: true,
            dense_min_tokens: None,
            dense_max_bytes: 2 << 30,
            dequantize: false,
            quantize_floats: None,
        }
    }
}

impl WeightOptions {
    /// Quantized weights used as stored: no re-quantization, no f32 copies.
    pub fn as_stored() -> Self {
        Self {
            fast_kernels: false,
            dense_min_tokens: None,
            dense_max_bytes: 0,
            dequantize: false,
            quantize_floats: None,
        }
    }

    /// Every weight dequantized to f32.
    pub fn dequantized() -> Self {
        Self { dequantize: true, ..Self::as_stored() }
    }
}

impl RawWeight {
    pub(crate) fn to_f32(&self) -> Result<Tensor> {
        Ok(match self {
            RawWeight::Quant(q) => q.dequantize(&Device::Cpu)?,
            RawWeight::Dense(t) => t.to_dtype(DType::F32)?,
            RawWeight::Mxfp4 { shape, blocks } => {
                Tensor::from_vec(mxfp4::dequantize(blocks), shape.clone(), &Device::Cpu)?
            }
        })
    }
}

/// Types whose quantized matmul is a scalar loop on x86 and that wick has no kernel for.
fn is_slow(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q8_1)
}

fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The 16-bit float type of a stored weight, if it is F16 or BF16.
fn half_type(w: &RawWeight) -> Option<FloatType> {
    match w {
        RawWeight::Quant(q) => FloatType::of_ggml(q.dtype()),
        RawWeight::Dense(t) => FloatType::of_dtype(t.dtype()),
        RawWeight::Mxfp4 { .. } => None,
    }
}

/// `parts` (each `[out_i, in]`, all F16 or all BF16) stacked into one matrix for wick's
/// 16-bit float kernel; `None` when they are not all of one 16-bit float type.
pub(crate) fn half_matrix(parts: &[RawWeight]) -> Result<Option<FloatMatrix>> {
    let Some(ty) = parts.first().and_then(half_type) else { return Ok(None) };
    if parts.iter().any(|p| half_type(p) != Some(ty)) {
        return Ok(None);
    }
    let (mut n, mut k, mut all) = (0, None, Vec::new());
    for p in parts {
        let [pn, pk] = p.dims()[..] else {
            return Err(EngineError::Load(format!("{ty:?} linear weight of shape {:?}", p.dims())));
        };
        if k.is_some_and(|k| k != pk) {
            return Err(EngineError::Load(format!("cannot fuse weights with inputs {k:?} and {pk}")));
        }
        k = Some(pk);
        n += pn;
        let bits = match p {
            RawWeight::Quant(q) => FloatMatrix::bits_of_qtensor(q)?,
            RawWeight::Dense(t) => FloatMatrix::bits_of_tensor(t)?,
            RawWeight::Mxfp4 { .. } => None,
        };
        let Some((_, bits)) = bits else { return Ok(None) };
        all.extend_from_slice(&bits);
    }
    Ok(Some(FloatMatrix::new(ty, all, n, k.unwrap_or(0))?))
}

/// Builds linear layers under one set of options.
pub struct LinearBuilder {
    fast_kernels: bool,
    dequantize: bool,
    quantize_floats: Option<GgmlDType>,
    /// Set when f32 copies are kept (and fit the budget).
    dense_min_tokens: Option<usize>,
}

impl LinearBuilder {
    /// `dense_bytes` is what f32 copies of every linear weight of the model would take.
    pub fn new(opts: &WeightOptions, dense_bytes: usize) -> Self {
        let dense_min_tokens = opts.dense_min_tokens.filter(|_| dense_bytes <= opts.dense_max_bytes);
        if opts.dense_min_tokens.is_some() && dense_min_tokens.is_none() {
            tracing::info!(dense_bytes, "f32 weight copies skipped: over the memory budget");
        }
        Self {
            fast_kernels: opts.fast_kernels,
            dequantize: opts.dequantize,
            quantize_floats: opts.quantize_floats.filter(|_| !opts.dequantize),
            dense_min_tokens,
        }
    }

    /// The type a stored weight runs as: types without a kernel here are re-quantized to
    /// Q8_0 (when fast kernels are on), F16 and BF16 stay themselves (on wick's float kernel),
    /// other floats and dequantized weights run as f32 (`None`).
    pub fn runs_as(&self, w: &RawWeight) -> Option<GgmlDType> {
        match w {
            RawWeight::Quant(q) if !is_float(q.dtype()) && !self.dequantize => {
                Some(if self.fast_kernels && is_slow(q.dtype()) { GgmlDType::Q8_0 } else { q.dtype() })
            }
            _ if self.quantize_floats.is_some() => self.quantize_floats,
            _ if self.half_kernel() => half_type(w).map(|t| match t {
                FloatType::F16 => GgmlDType::F16,
                FloatType::Bf16 => GgmlDType::BF16,
                FloatType::F32 => GgmlDType::F32,
            }),
            _ => None,
        }
    }

    /// Whether F16 and BF16 linear weights run on wick's 16-bit float kernel (else as f32).
    fn half_kernel(&self) -> bool {
        self.fast_kernels && !self.dequantize && self.quantize_floats.is_none()
    }

    /// Whether a lone weight stored as `dtype` runs on a panel matrix of that very format
    /// (`Q8Matrix`, `Q6KMatrix`), whose rows a tied embedding can read.
    pub fn keeps_stored(&self, dtype: GgmlDType) -> bool {
        match dtype {
            GgmlDType::Q8_0 => !self.dequantize,
            GgmlDType::Q6K => !self.dequantize && self.fast_kernels,
            _ => false,
        }
    }

    /// One linear layer whose output is the concatenation of `parts`' outputs (each `[out_i, in]`).
    /// `shared_dense` is an f32 copy of the (single) weight already in memory, reused as is.
    pub fn build(&self, parts: Vec<RawWeight>, shared_dense: Option<Tensor>) -> Result<Linear> {
        if parts.is_empty() {
            return Err(EngineError::Load("linear layer without weights".into()));
        }
        if !self.dequantize && parts.iter().all(|p| matches!(p, RawWeight::Mxfp4 { .. })) {
            return self.mxfp4(parts);
        }
        let quant: Option<Vec<&QTensor>> = parts
            .iter()
            .map(|p| match p {
                RawWeight::Quant(q) if !is_float(q.dtype()) && !self.dequantize => Some(q),
                _ => None,
            })
            .collect();
        let dense_f32 = |parts: &[RawWeight]| -> Result<Tensor> {
            let d = parts.iter().map(RawWeight::to_f32).collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&d, 0)?.contiguous()?)
        };
        let Some(quant) = quant else {
            if self.half_kernel() {
                if let Some(h) = half_matrix(&parts)? {
                    return Ok(Linear::Quant { q: QuantWeight::Half(h), dense: None, dense_min_tokens: usize::MAX });
                }
            }
            let f = dense_f32(&parts)?;
            let k = f.dim(1)?;
            return match self.quantize_floats.filter(|dt| k % dt.block_size() == 0) {
                Some(dt) => self.quantized(QTensor::quantize(&f, dt)?, None),
                None => Ok(Linear::Dense(f)),
            };
        };
        let dtype = quant[0].dtype();
        let same = quant.iter().all(|q| q.dtype() == dtype);
        let requant = !same || (self.fast_kernels && is_slow(dtype));
        let (qt, dense) = if requant {
            let f = dense_f32(&parts)?;
            if f.dim(1)? % GgmlDType::Q8_0.block_size() != 0 {
                return Ok(Linear::Dense(f));
            }
            (QTensor::quantize(&f, GgmlDType::Q8_0)?, Some(f))
        } else {
            (concat_rows(&quant)?, None)
        };
        let dense = match self.dense_min_tokens {
            None => None,
            Some(_) => match (shared_dense, dense) {
                (Some(d), _) if parts.len() == 1 => Some(d),
                (_, Some(d)) => Some(d),
                _ => Some(dense_f32(&parts)?),
            },
        };
        self.quantized(qt, dense)
    }

    /// MXFP4 parts (`[out_i, in]`) stacked into one matrix on wick's MXFP4 kernel, as stored.
    fn mxfp4(&self, parts: Vec<RawWeight>) -> Result<Linear> {
        let k = parts[0].dims().get(1).copied().unwrap_or(0);
        let (mut n, mut all) = (0, Vec::new());
        for p in parts {
            let RawWeight::Mxfp4 { shape, blocks } = p else { unreachable!("checked by the caller") };
            let [pn, pk] = shape[..] else {
                return Err(EngineError::Load(format!("MXFP4 linear weight of shape {shape:?}")));
            };
            if pk != k {
                return Err(EngineError::Load(format!("cannot fuse weights with inputs {k} and {pk}")));
            }
            n += pn;
            if all.is_empty() {
                all = blocks;
            } else {
                all.extend_from_slice(&blocks);
            }
        }
        let q = QuantWeight::Mxfp4(Mxfp4Matrix::from_blocks(all, n, k)?);
        Ok(Linear::Quant { q, dense: None, dense_min_tokens: usize::MAX })
    }

    /// The layer running `qt` on the best kernel for its type.
    fn quantized(&self, qt: QTensor, dense: Option<Tensor>) -> Result<Linear> {
        let q = match qt.dtype() {
            GgmlDType::Q8_0 => QuantWeight::Q8(Q8Matrix::from_qtensor(&qt)?),
            GgmlDType::Q4_1 if self.fast_kernels => QuantWeight::Q41(Q41Matrix::from_qtensor(&qt)?),
            GgmlDType::Q5_0 if self.fast_kernels => QuantWeight::Q50(Q50Matrix::from_qtensor(&qt)?),
            GgmlDType::Q5_1 if self.fast_kernels => QuantWeight::Q51(Q51Matrix::from_qtensor(&qt)?),
            GgmlDType::Q4K if self.fast_kernels => QuantWeight::Q4K(Q4KMatrix::from_qtensor(&qt)?),
            GgmlDType::Q5K if self.fast_kernels => QuantWeight::Q5K(Q5KMatrix::from_qtensor(&qt)?),
            GgmlDType::Q6K if self.fast_kernels => QuantWeight::Q6K(Q6KMatrix::from_qtensor(&qt)?),
            _ => QuantWeight::Candle(QMatMul::from_qtensor(qt)?),
        };
        Ok(Linear::Quant { q, dense, dense_min_tokens: self.dense_min_tokens.unwrap_or(usize::MAX) })
    }
}

/// Stacks same-typed quantized matrices along the output dimension by joining their bytes
/// (each row is a whole number of blocks, so rows stay intact and results are unchanged).
fn concat_rows(parts: &[&QTensor]) -> Result<QTensor> {
    let dtype = parts[0].dtype();
    let k = parts[0].shape().dims2()?.1;
    let mut rows = 0;
    let mut bytes = Vec::new();
    for p in parts {
        let (n, pk) = p.shape().dims2()?;
        if pk != k {
            return Err(EngineError::Load(format!("cannot fuse weights with inputs {k} and {pk}")));
        }
        rows += n;
        bytes.extend_from_slice(&p.data()?);
    }
    Ok(qtensor_from_ggml(dtype, &bytes, vec![rows, k], &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, k: usize, seed: u64) -> Tensor {
        let v: Vec<f32> = (0..n * k).map(|i| (((i as u64 + seed) * 2654435761 % 1000) as f32 / 500.0) - 1.0).collect();
        Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_quantized_rows_give_the_same_outputs_as_separate_matmuls() {
        let (a, b) = (rand(32, 64, 1), rand(64, 64, 7));
        let qa = QTensor::quantize(&a, GgmlDType::Q8_0).unwrap();
        let qb = QTensor::quantize(&b, GgmlDType::Q8_0).unwrap();
        let x = rand(3, 64, 11);
        // Each part alone on wick's Q8_0 kernel (what an unfused layer runs).
        let alone =
            |w: &QTensor| super::super::qmatmul::TileKernel::forward(&Q8Matrix::from_qtensor(w).unwrap(), &x).unwrap();
        let (ya, yb) = (alone(&qa), alone(&qb));
        let want = Tensor::cat(&[ya, yb], 1).unwrap();
        let lin = LinearBuilder::new(&WeightOptions::as_stored(), 0)
            .build(vec![RawWeight::Quant(qa), RawWeight::Quant(qb)], None)
            .unwrap();
        let got = lin.forward(&x).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn slow_types_are_requantized_and_large_steps_use_the_f32_copy() {
        let w = rand(32, 64, 3);
        let q81 = QTensor::quantize(&w, GgmlDType::Q8_1).unwrap();
        let opts = WeightOptions {
            fast_kernels: true,
            dense_min_tokens: Some(4),
            dense_max_bytes: 1 << 20,
            dequantize: false,
            quantize_floats: None,
        };
        let lin = LinearBuilder::new(&opts, 64 * 32 * 4).build(vec![RawWeight::Quant(q81)], None).unwrap();
        let Linear::Quant { q: QuantWeight::Q8(_), dense: Some(d), dense_min_tokens: 4 } = &lin else {
            panic!("expected a Q8_0 weight with an f32 copy, got {lin:?}");
        };
        // Four rows take the f32 path: exactly x · dense^T.
        let x = rand(4, 64, 5);
        let want = x.matmul(&d.t().unwrap()).unwrap();
        let got = lin.forward(&x).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn hf_half_tensors_fuse_onto_the_float_kernel_and_oracle_settings_upcast() {
        // Safetensors F16 / BF16 parts (q, k, v) become one 16-bit matrix; its product is the
        // f32 product of the widened weights up to f32 rounding. A mixed F16/F32 pair and the
        // oracle setting run as f32.
        let (a, b) = (rand(24, 40, 1), rand(8, 40, 2));
        let x = rand(5, 40, 3);
        for dt in [DType::F16, DType::BF16] {
            let parts = || vec![RawWeight::Dense(a.to_dtype(dt).unwrap()), RawWeight::Dense(b.to_dtype(dt).unwrap())];
            let lin = LinearBuilder::new(&WeightOptions::default(), 0).build(parts(), None).unwrap();
            let Linear::Quant { q: QuantWeight::Half(_), dense: None, .. } = &lin else { panic!("{dt:?}: {lin:?}") };
            let wide = Tensor::cat(&[a.to_dtype(dt).unwrap(), b.to_dtype(dt).unwrap()], 0).unwrap();
            let want = x.matmul(&wide.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
            let got = lin.forward(&x).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{dt:?}: off by {diff}");
            let oracle = LinearBuilder::new(&WeightOptions::as_stored(), 0).build(parts(), None).unwrap();
            assert!(matches!(oracle, Linear::Dense(_)), "{dt:?}: {oracle:?}");
            let mixed = vec![RawWeight::Dense(a.to_dtype(dt).unwrap()), RawWeight::Dense(b.clone())];
            let mixed = LinearBuilder::new(&WeightOptions::default(), 0).build(mixed, None).unwrap();
            assert!(matches!(mixed, Linear::Dense(_)), "{dt:?}: {mixed:?}");
        }
    }

    #[test]
    fn default_layers_give_each_row_the_same_bits_alone_or_in_a_large_step() {
        // Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, F16 and BF16 run on wick's kernels as stored, Q8_1
        // is re-quantized; no f32 copy takes over large steps by default.
        let types = [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_1,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::F16,
            GgmlDType::BF16,
        ];
        for dtype in types {
            let k = 64usize.next_multiple_of(dtype.block_size());
            let w = rand(48, k, 13);
            let q = QTensor::quantize(&w, dtype).unwrap();
            let lin = LinearBuilder::new(&WeightOptions::default(), k * 48 * 4)
                .build(vec![RawWeight::Quant(q)], None)
                .unwrap();
            let Linear::Quant { q, dense: None, .. } = &lin else { panic!("got {lin:?}") };
            match (dtype, q) {
                (GgmlDType::Q4_1, QuantWeight::Q41(_))
                | (GgmlDType::Q5_0, QuantWeight::Q50(_))
                | (GgmlDType::Q5_1, QuantWeight::Q51(_))
                | (GgmlDType::Q8_1, QuantWeight::Q8(_))
                | (GgmlDType::Q4K, QuantWeight::Q4K(_))
                | (GgmlDType::Q5K, QuantWeight::Q5K(_))
                | (GgmlDType::Q6K, QuantWeight::Q6K(_))
                | (GgmlDType::F16 | GgmlDType::BF16, QuantWeight::Half(_)) => {}
                _ => panic!("{dtype:?} runs on {q:?}"),
            }
            let x = rand(40, k, 17);
            let together: Vec<Vec<f32>> = lin.forward(&x).unwrap().to_vec2().unwrap();
            for (r, row) in together.iter().enumerate() {
                let alone: Vec<Vec<f32>> = lin.forward(&x.narrow(0, r, 1).unwrap()).unwrap().to_vec2().unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(row), bits(&alone[0]), "{dtype:?} row {r}");
            }
        }
    }
}
