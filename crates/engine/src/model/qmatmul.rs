//! A batch-invariant Q8_0 matmul for CPU: `y[M, N] = x[M, K] · W[N, K]ᵀ` with Q8_0 weights and
//! activations quantized per row to Q8_0 (32 values and one scale per block, exactly as ggml's
//! and candle's `quantize_row_q8_0`).
//!
//! Batch invariance is by construction: every output `y[m, n]` is computed by the same
//! sequence of floating-point operations whatever `M` is, whichever rows share the call and
//! however the work is split across threads. Per (row, column) an 8-lane f32 accumulator takes,
//! block after block in order, `fma(d_w · d_x, i32→f32(Σ int8 products per lane), acc)` and is
//! reduced by one fixed horizontal sum. The int8 dot products are exact integers, so their
//! evaluation order does not matter; only the float steps are pinned. This is candle's AVX2
//! `vec_dot_q8_0_q8_0` step for step, so results are bit-identical to candle's Q8_0 `QMatMul` on
//! AVX2 machines; the scalar fallback emulates the same lanes and gives the same bits too.
//!
//! Speed comes from register blocking: a tile of up to 4 activation rows × 2–4 weight columns
//! loads each weight block once for several rows (candle runs one gemv per row), and columns
//! are spread over candle's own CPU thread pool (the one its matmuls use, so the two never
//! compete for cores).

use std::cell::RefCell;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
use half::f16;

use crate::{EngineError, Result};

/// Values per Q8_0 block.
pub const QK8_0: usize = 32;
/// Bytes of one stored ggml Q8_0 block: an f16 scale then 32 int8 values.
const BLOCK_BYTES: usize = 2 + QK8_0;
/// Activation rows per thread work item (their quantized blocks stay in L2 while the item's
/// weight columns stream past).
const ROW_CHUNK: usize = 64;
/// Weight columns per thread work item.
const COL_CHUNK: usize = 16;

/// Q8_0 weights `[n, k]`, held as int8 values (row-major) and per-block f32 scales (the f16
/// scales widened once at load).
#[derive(Clone)]
pub struct Q8Matrix {
    n: usize,
    k: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
}

impl std::fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8Matrix[{}, {}]", self.n, self.k)
    }
}

impl Q8Matrix {
    /// Takes a Q8_0 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != GgmlDType::Q8_0 {
            return Err(EngineError::Load(format!("Q8Matrix needs Q8_0 weights, got {:?}", q.dtype())));
        }
        let (n, k) = q.shape().dims2()?;
        Self::from_ggml_bytes(&q.data()?, n, k)
    }

    /// Reads `n · k / 32` ggml Q8_0 blocks (`{ d: f16, qs: [i8; 32] }`, packed).
    pub fn from_ggml_bytes(bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        if k % QK8_0 != 0 || bytes.len() != n * k / QK8_0 * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad Q8_0 data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let mut qs = Vec::with_capacity(n * k);
        let mut d = Vec::with_capacity(n * k / QK8_0);
        for block in bytes.chunks_exact(BLOCK_BYTES) {
            d.push(f16::from_le_bytes([block[0], block[1]]).to_f32());
            qs.extend(block[2..].iter().map(|&b| b as i8));
        }
        Ok(Self { n, k, qs, d })
    }

    /// `(n, k)`: outputs and inputs.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `x · Wᵀ` for `x` of shape `[..., k]`; the result is `[..., n]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if dims.last() != Some(&self.k) {
            return Err(EngineError::InvalidRequest(format!("input {:?} does not end in {}", x.dims(), self.k)));
        }
        let x = if x.dtype() == DType::F32 { x.contiguous()? } else { x.to_dtype(DType::F32)?.contiguous()? };
        let m = x.elem_count() / self.k;
        let mut out = vec![0f32; m * self.n];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                return Err(EngineError::Unsupported("the Q8_0 kernel runs on CPU tensors only".into()));
            };
            let (start, end) =
                layout.contiguous_offsets().ok_or_else(|| EngineError::Unsupported("non-contiguous input".into()))?;
            self.matmul(&cpu.as_slice::<f32>()?[start..end], &mut out);
        }
        dims.pop();
        dims.push(self.n);
        Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
    }

    /// `out[m, n] = x[m, k] · Wᵀ` on row-major slices (`x.len() = m · k`, `out.len() = m · n`).
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) {
        let m = x.len() / self.k;
        assert_eq!(x.len(), m * self.k, "input is not a whole number of rows");
        assert_eq!(out.len(), m * self.n, "output has the wrong size");
        thread_local! {
            static SCRATCH: RefCell<(Vec<i8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let (aq, ad) = &mut *scratch;
            aq.resize(m * self.k, 0);
            ad.resize(m * self.k / QK8_0, 0.0);
            quantize_rows(x, aq, ad);
            self.matmul_quantized(aq, ad, m, out);
        })
    }

    fn matmul_quantized(&self, aq: &[i8], ad: &[f32], m: usize, out: &mut [f32]) {
        let acts = Operand { qs: aq, d: ad, k: self.k };
        let weights = Operand { qs: &self.qs, d: &self.d, k: self.k };
        let row_chunks = m.div_ceil(ROW_CHUNK);
        let col_chunks = self.n.div_ceil(COL_CHUNK);
        let (n, out_addr) = (self.n, out.as_mut_ptr() as usize);
        let use_avx2 = has_avx2_fma();
        // Items are (row chunk, column chunk), row-chunk major; each output element belongs to
        // exactly one item, so workers never write the same element.
        candle_core::utils::barrier_pool().execute_chunked(row_chunks * col_chunks, |items| {
            for item in items {
                let (rc, cc) = (item / col_chunks, item % col_chunks);
                let rows = rc * ROW_CHUNK..m.min((rc + 1) * ROW_CHUNK);
                let cols = cc * COL_CHUNK..n.min((cc + 1) * COL_CHUNK);
                let out = OutPtr { addr: out_addr, stride: n };
                if use_avx2 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 and FMA were detected; `rows` and `cols` lie inside `acts`,
                    // `weights` and `out`, and this item alone writes its output elements.
                    unsafe {
                        avx2::block(&acts, &weights, rows, cols, out)
                    };
                } else {
                    // SAFETY: as above, this item alone writes its output elements.
                    unsafe { scalar_block(&acts, &weights, rows, cols, out) };
                }
            }
        });
    }
}

/// Row-major int8 values and per-block scales of a `[rows, k]` Q8_0 matrix.
struct Operand<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    k: usize,
}

impl Operand<'_> {
    fn row(&self, r: usize) -> (&[i8], &[f32]) {
        let kb = self.k / QK8_0;
        (&self.qs[r * self.k..(r + 1) * self.k], &self.d[r * kb..(r + 1) * kb])
    }
}

/// The output matrix, shared by the workers (each writes disjoint elements).
#[derive(Clone, Copy)]
struct OutPtr {
    addr: usize,
    stride: usize,
}

impl OutPtr {
    /// # Safety
    /// `(r, c)` must lie inside the output and no other thread may write it concurrently.
    unsafe fn write(self, r: usize, c: usize, v: f32) {
        unsafe { *(self.addr as *mut f32).add(r * self.stride + c) = v };
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Quantizes each 32-value block of `x` as ggml's `quantize_row_q8_0` does (candle's
/// `BlockQ8_0::from_float`): scale `amax / 127` rounded to f16, values `round(x / scale)`
/// computed with the unrounded scale. `d` receives the f16 scales widened to f32.
pub fn quantize_rows(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x.chunks_exact(QK8_0).zip(qs.chunks_exact_mut(QK8_0)).zip(d.iter_mut()) {
        let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        *db = f16::from_f32(scale).to_f32();
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * inv).round() as i8;
        }
    }
}

/// One output element, emulating the AVX2 kernel lane for lane: lane `j` of block `b` holds
/// the exact integer `Σ x·w` over values `4j..4j+4`, accumulated as `fma(d_w·d_x, lane, acc)`,
/// then the same horizontal sum as `hsum_float_8`.
fn dot_scalar(a: (&[i8], &[f32]), w: (&[i8], &[f32])) -> f32 {
    let mut acc = [0f32; 8];
    for (b, (&da, &dw)) in a.1.iter().zip(w.1).enumerate() {
        let scale = dw * da;
        let (xa, xw) = (&a.0[b * QK8_0..(b + 1) * QK8_0], &w.0[b * QK8_0..(b + 1) * QK8_0]);
        for (j, lane) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * j..4 * j + 4).map(|i| xa[i] as i32 * xw[i] as i32).sum();
            *lane = (s as f32).mul_add(scale, *lane);
        }
    }
    let h: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// # Safety
/// `rows` and `cols` lie inside the operands and `out`; no other thread writes those elements.
unsafe fn scalar_block(a: &Operand, w: &Operand, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, out: OutPtr) {
    for r in rows {
        for c in cols.clone() {
            unsafe { out.write(r, c, dot_scalar(a.row(r), w.row(c))) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Operand, OutPtr, QK8_0};

    /// Covers `rows × cols` with register tiles: 4×2 while 4 rows remain, then 3×2, 2×4 or
    /// 1×4 (decode), and single columns for what is left of `cols`.
    ///
    /// # Safety
    /// AVX2 and FMA are available; see `scalar_block`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(a: &Operand, w: &Operand, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
        let mut r = rows.start;
        while r < rows.end {
            let left = rows.end - r;
            let step = left.min(4);
            unsafe {
                match step {
                    4 => cols_with::<4, 2>(a, w, r, cols.clone(), out),
                    3 => cols_with::<3, 2>(a, w, r, cols.clone(), out),
                    2 => cols_with::<2, 4>(a, w, r, cols.clone(), out),
                    _ => cols_with::<1, 4>(a, w, r, cols.clone(), out),
                }
            }
            r += step;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn cols_with<const R: usize, const C: usize>(a: &Operand, w: &Operand, r: usize, cols: Range<usize>, out: OutPtr) {
        let mut c = cols.start;
        while c + C <= cols.end {
            unsafe { tile::<R, C>(a, w, r, c, out) };
            c += C;
        }
        while c < cols.end {
            unsafe { tile::<R, 1>(a, w, r, c, out) };
            c += 1;
        }
    }

    /// `R` rows from `r` times `C` columns from `c`, one 8-lane accumulator per pair.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(a: &Operand, w: &Operand, r: usize, c: usize, out: OutPtr) {
        let (k, kb) = (a.k, a.k / QK8_0);
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let wq = w.qs[c * k..(c + C) * k].as_ptr();
        let wd = w.d[c * kb..(c + C) * kb].as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..kb {
            for j in 0..C {
                // SAFETY: block `b` of column `c + j` lies inside `w` (sliced above).
                let wv = unsafe { _mm256_loadu_si256(wq.add(j * k + b * QK8_0) as *const __m256i) };
                // Weights stream from memory once per call at small M: ask for the
                // columns two tiles ahead (the address may lie past the end; prefetches of
                // any address are harmless).
                _mm_prefetch::<_MM_HINT_T0>(wq.wrapping_add(2 * C * k + j * k + b * QK8_0) as *const i8);
                let wabs = _mm256_sign_epi8(wv, wv);
                let dw = _mm256_set1_ps(unsafe { *wd.add(j * kb + b) });
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a` (sliced above).
                    let av = unsafe { _mm256_loadu_si256(aq.add(i * k + b * QK8_0) as *const __m256i) };
                    let da = unsafe { *ad.add(i * kb + b) };
                    let signed = _mm256_sign_epi8(av, wv);
                    let pairs = _mm256_maddubs_epi16(wabs, signed);
                    let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(da));
                    acc[i][j] = _mm256_fmadd_ps(scale, lanes, acc[i][j]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                // SAFETY: the caller owns these output elements.
                unsafe { out.write(r + i, c + j, hsum(v)) };
            }
        }
    }

    /// candle's / ggml's `hsum_float_8`.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(x: __m256) -> f32 {
        let res = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        let res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }
}

#[cfg(test)]
#[path = "qmatmul_tests.rs"]
mod tests;
