//! wick's batch-invariant quantized matmuls for CPU: `y[M, N] = x[M, K] · W[N, K]ᵀ` with
//! quantized weights and activations quantized per row to 8 bits (32 values and one scale per
//! block, exactly as ggml's and candle's `quantize_row_q8_0` / `q8_1`).
//!
//! This module owns what every weight format shares: the driver that spreads (row chunk,
//! column chunk) items over wick's compute pool (`crate::thread_pool`, which parks instead of
//! spinning on a shared CPU) and the `TileKernel` trait each format implements. The integer
//! formats (`q8_0`, `q4_1`, `q5` with Q5_0 and Q5_1, `q4_k` with Q5_K, `q6_k`) share the
//! column-interleaved `panel` layout and kernels; `mxfp4` and the floats (`float`, F16 and BF16
//! weights with unquantized f32 activations) keep per-column tiles (`tile_walk`). The
//! activations they take are `acts`'s `QuantizedActs`.
//!
//! Batch invariance is by construction: every output `y[m, n]` is computed by the same
//! sequence of floating-point operations whatever `M` is, whichever rows share the call and
//! however the work is split across threads. Integer dot products are exact, so only each
//! format's float steps are pinned (see `panel`); speed comes from register blocking, a tile
//! of several activation rows loading each weight vector once.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{DType, Device, Storage, Tensor};

use crate::{EngineError, Result};

mod acts;
mod float;
pub mod mxfp4;
mod panel;
mod q4_1;
mod q4_k;
mod q5;
mod q6_k;
mod q8_0;

#[cfg(test)]
use acts::nearest_int;
pub use acts::{quantize_rows, quantize_rows_q8k, ActBlocks, QuantizedActs, Sums};
pub use float::{FloatMatrix, FloatType};
pub use mxfp4::Mxfp4Matrix;
pub use q4_1::Q41Matrix;
pub use q4_k::{Q4KMatrix, Q5KMatrix};
pub use q5::{Q50Matrix, Q51Matrix};
pub use q6_k::Q6KMatrix;
pub use q8_0::Q8Matrix;

/// Values per quantization block (Q8_0, Q8_1, Q4_1 alike).
pub const QK: usize = 32;
/// Activation rows per thread work item (their quantized blocks stay in L2 while the item's
/// weight columns stream past).
const ROW_CHUNK: usize = 64;
/// Weight columns per thread work item (unless the format says otherwise).
const COL_CHUNK: usize = 16;

/// The output matrix, shared by the workers (each writes disjoint elements).
#[derive(Clone, Copy)]
pub struct OutPtr {
    addr: usize,
    stride: usize,
}

impl OutPtr {
    pub fn new(out: &mut [f32], stride: usize) -> Self {
        Self { addr: out.as_mut_ptr() as usize, stride }
    }

    /// The same output with column 0 moved to column `c`: where one of several matrices
    /// sharing an output writes its columns.
    pub fn at_column(self, c: usize) -> Self {
        Self { addr: self.addr + c * std::mem::size_of::<f32>(), ..self }
    }

    /// # Safety
    /// `(r, c)` must lie inside the output and no other thread may write it concurrently.
    #[inline]
    pub unsafe fn write(self, r: usize, c: usize, v: f32) {
        unsafe { *(self.addr as *mut f32).add(r * self.stride + c) = v };
    }
}

/// A quantized weight format with a register-tiled kernel.
pub trait TileKernel: Sync {
    /// `(n, k)`: outputs and inputs.
    fn dims(&self) -> (usize, usize);

    /// Computes `out[rows, cols]` from the quantized activations.
    ///
    /// # Safety
    /// `rows` lie inside `acts`, `cols` inside the weight, both inside `out`, and no other
    /// thread writes those output elements concurrently.
    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr);

    /// Weight columns per thread work item.
    fn col_chunk(&self) -> usize {
        COL_CHUNK
    }

    /// How this format wants its activations quantized.
    fn act_blocks(&self) -> ActBlocks {
        ActBlocks::Q8_0
    }

    /// `out[m, n] = x[m, k] · Wᵀ` on row-major slices.
    fn matmul(&self, x: &[f32], out: &mut [f32]) {
        matmul(self, x, out)
    }

    /// `x · Wᵀ` for a tensor `x` of shape `[..., k]`; the result is `[..., n]` f32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        forward(self, x)
    }
}

/// `out[m, n] = x[m, k] · Wᵀ` on row-major slices (`x.len() = m · k`, `out.len() = m · n`).
pub fn matmul<W: TileKernel + ?Sized>(w: &W, x: &[f32], out: &mut [f32]) {
    matmul_parts(&[w], x, out)
}

/// `out[m, n] = acts · Wᵀ` for activations already quantized (`acts.k` must be the weight's
/// input size): the same results as [`matmul`] on the rows they came from.
pub fn matmul_quantized<W: TileKernel + ?Sized>(w: &W, acts: &QuantizedActs, out: &mut [f32]) {
    matmul_parts_quantized(&[w], acts, out);
}

/// `out[m, n₀ + n₁ + …] = x · [W₀; W₁; …]ᵀ`: the matrices' outputs side by side, as one
/// matmul with their rows stacked, in one parallel region on activations quantized once
/// (a Q4_K_M file's Q4_K q and k beside a Q6_K v). Every part must take its activations in
/// the same blocks (`TileKernel::act_blocks`) and have the same input size; each output is
/// the same bits as the part's own [`matmul`].
pub fn matmul_parts<W: TileKernel + ?Sized>(parts: &[&W], x: &[f32], out: &mut [f32]) {
    let Some(first) = parts.first() else { return };
    let k = first.dims().1;
    assert!(parts.iter().all(|p| p.dims().1 == k && p.act_blocks() == first.act_blocks()), "parts differ in input");
    assert!(x.len().is_multiple_of(k), "input is not a whole number of rows");
    thread_local! {
        static ACTS: RefCell<QuantizedActs> = RefCell::new(QuantizedActs::default());
    }
    ACTS.with(|cell| {
        let mut acts = cell.borrow_mut();
        acts.quantize_as(x, k, first.act_blocks());
        matmul_parts_quantized(parts, &acts, out);
    })
}

/// [`matmul_parts`] on activations already quantized.
fn matmul_parts_quantized<W: TileKernel + ?Sized>(parts: &[&W], acts: &QuantizedActs, out: &mut [f32]) {
    let m = acts.rows();
    let width: usize = parts.iter().map(|p| p.dims().0).sum();
    assert!(parts.iter().all(|p| p.dims().1 == acts.k), "activations quantized for another input size");
    assert_eq!(out.len(), m * width, "output has the wrong size");
    let row_chunks = m.div_ceil(ROW_CHUNK);
    // Per part: its first item, its column chunk and count, and its first output column.
    let mut layout = Vec::with_capacity(parts.len());
    let (mut items, mut col) = (0, 0);
    for p in parts {
        let (n, chunk) = (p.dims().0, p.col_chunk());
        let col_chunks = n.div_ceil(chunk);
        layout.push((items, chunk, col_chunks, col));
        items += row_chunks * col_chunks;
        col += n;
    }
    let out = OutPtr::new(out, width);
    // Items are (part, row chunk, column chunk), part-major then row-chunk major; each output
    // element belongs to exactly one item, so workers never write the same element.
    crate::thread_pool::pool().for_each_chunk(items, |range| {
        for item in range {
            let p = layout.iter().rposition(|l| l.0 <= item).unwrap_or(0);
            let (first, chunk, col_chunks, col) = layout[p];
            let (rc, cc) = ((item - first) / col_chunks, (item - first) % col_chunks);
            let n = parts[p].dims().0;
            let rows = rc * ROW_CHUNK..m.min((rc + 1) * ROW_CHUNK);
            let cols = cc * chunk..n.min((cc + 1) * chunk);
            // SAFETY: `rows` and `cols` lie inside the operands, the part's columns inside
            // `out` from `col`, and this item alone writes its output elements.
            unsafe { parts[p].block(acts, rows, cols, out.at_column(col)) };
        }
    });
}

/// `x · Wᵀ` for a tensor `x` of shape `[..., k]`; the result is `[..., n]` f32.
pub fn forward<W: TileKernel + ?Sized>(w: &W, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims();
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        return Err(EngineError::InvalidRequest(format!("input {:?} does not end in {k}", x.dims())));
    }
    let x = if x.dtype() == DType::F32 { x.contiguous()? } else { x.to_dtype(DType::F32)?.contiguous()? };
    let m = x.elem_count() / k;
    let mut out = vec![0f32; m * n];
    {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(EngineError::Unsupported("the quantized kernels run on CPU tensors only".into()));
        };
        let (start, end) =
            layout.contiguous_offsets().ok_or_else(|| EngineError::Unsupported("non-contiguous input".into()))?;
        matmul(w, &cpu.as_slice::<f32>()?[start..end], &mut out);
    }
    dims.pop();
    dims.push(n);
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
}

/// candle's / ggml's `hsum_float_8`, emulated on 8 lanes (the scalar paths use it).
fn hsum_lanes(acc: &[f32; 8]) -> f32 {
    let h: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// The walk over a work item that every format's SIMD kernels share: `block` covers
/// `rows × cols` with register tiles of `R` rows (4 while 4 rows remain, then 3, 2, 1) by the
/// given column counts, and single columns for what is left of `cols`, calling the format's
/// `tile::<R, C>`. The tile an element lands in never changes its arithmetic.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_walk {
    ($matrix:ty, $feat:literal, [$c4:literal, $c3:literal, $c2:literal, $c1:literal]) => {
        /// # Safety
        /// The features are available; see `TileKernel::block`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn block(
            a: &QuantizedActs,
            w: &$matrix,
            rows: Range<usize>,
            cols: Range<usize>,
            out: OutPtr,
        ) {
            let mut r = rows.start;
            while r < rows.end {
                let step = (rows.end - r).min(4);
                unsafe {
                    match step {
                        4 => cols_with::<4, $c4>(a, w, r, cols.clone(), out),
                        3 => cols_with::<3, $c3>(a, w, r, cols.clone(), out),
                        2 => cols_with::<2, $c2>(a, w, r, cols.clone(), out),
                        _ => cols_with::<1, $c1>(a, w, r, cols.clone(), out),
                    }
                }
                r += step;
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn cols_with<const R: usize, const C: usize>(
            a: &QuantizedActs,
            w: &$matrix,
            r: usize,
            cols: Range<usize>,
            out: OutPtr,
        ) {
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
    };
}
#[cfg(target_arch = "x86_64")]
use tile_walk;

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// `vpdpwssd`: `acc` plus the int16 pair products of `a` and `b` per int32 lane. Written
    /// out because LLVM otherwise splits it into `vpmaddwd` and `vpaddd`: two uops on the two
    /// vector ports that bound the K-quant tiles instead of one.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) fn dpwssd(mut acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the instruction reads and writes registers only; AVX-512 VNNI is enabled.
        unsafe {
            std::arch::asm!("vpdpwssd {acc}, {a}, {b}", acc = inout(zmm_reg) acc, a = in(zmm_reg) a, b = in(zmm_reg) b,
                options(pure, nomem, nostack));
        }
        acc
    }

    /// candle's / ggml's `hsum_float_8`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn hsum(x: __m256) -> f32 {
        let res = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        let res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }
}

#[cfg(test)]
mod tests;
