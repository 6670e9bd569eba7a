//! Q4_K and Q5_K weights (ggml's `block_q4_K` / `block_q5_K`: per 256 values an f16 `d` and
//! `dmin`, eight 6-bit scales and mins, and 4-bit values, plus for Q5_K a fifth bit per value;
//! `w = d·sc_j·q − dmin·m_j` in sub-block `j` of 32) on wick's panel kernels
//! (`super::panel`), at their stored size: the nibbles, Q5_K's fifth bits as a bit plane, the
//! 6-bit scales and mins a byte each and `d`, `dmin` as f16.
//!
//! Activations are quantized as llama.cpp pairs them with K-quants (Q8_K: one f32 scale `d_x`
//! per 256 values, `ActBlocks::Q8K`). Per (row, column) and super-block: the exact integer
//! sums `Σ q·x` of its sub-blocks, scaled in order into `S` (`fma(f32(Σ q·x), f32(sc_j), S)`),
//! then `fma(S, d·d_x, acc)` and `fma(−f32(Σ m_j·Σx_j), dmin·d_x, acc)`.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{ColumnScales, PanelFormat, PanelMatrix, SUPER_BLOCKS};
use crate::Result;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes of one stored block: `d`, `dmin`, 12 bytes of packed scales and mins, 128 of nibbles.
const BLOCK_BYTES: usize = 4 + 12 + QK_K / 2;

/// Q4_K weights `[n, k]` as panels.
pub type Q4KMatrix = PanelMatrix<Q4K>;
/// Q5_K weights `[n, k]` as panels: Q4_K's with a fifth bit plane.
pub type Q5KMatrix = PanelMatrix<Q5K>;

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min from the 12 packed bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

impl Q4KMatrix {
    /// Takes a Q4_K `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        from_qtensor(q, GgmlDType::Q4K)
    }
}

impl Q5KMatrix {
    /// Takes a Q5_K `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        from_qtensor(q, GgmlDType::Q5K)
    }
}

/// Reads a Q4_K or Q5_K `QTensor` (`dtype`) of shape `[n, k]`.
fn from_qtensor<F: PanelFormat>(q: &QTensor, dtype: GgmlDType) -> Result<PanelMatrix<F>> {
    let five = dtype == GgmlDType::Q5K;
    let qh_bytes = if five { QK_K / 8 } else { 0 };
    let block_bytes = BLOCK_BYTES + qh_bytes;
    let (n, k, bytes) = PanelMatrix::<F>::stored(q, dtype, QK_K, block_bytes)?;
    let sbs = k / QK_K;
    let block = |c: usize, s: usize| &bytes[(c * sbs + s) * block_bytes..][..block_bytes];
    // Sub-block `j` of a super-block: the low (even `j`) or high nibbles of the 32-byte run
    // `j / 2`, and bit `j` of each of the 32 fifth-bit bytes.
    let values = |c, b: usize| {
        let (blk, j) = (block(c, b / SUPER_BLOCKS), b % SUPER_BLOCKS);
        let (qh, qs) = (&blk[16..16 + qh_bytes], &blk[16 + qh_bytes..]);
        std::array::from_fn(|i| {
            let fifth = if five { (qh[i] >> j & 1) << 4 } else { 0 };
            (qs[32 * (j / 2) + i] >> (4 * (j % 2)) & 0x0F) | fifth
        })
    };
    let scales = |c, s| {
        let blk = block(c, s);
        let mut out = ColumnScales {
            d: f16::from_le_bytes([blk[0], blk[1]]),
            m: f16::from_le_bytes([blk[2], blk[3]]),
            ..Default::default()
        };
        for j in 0..SUPER_BLOCKS {
            (out.sc[j], out.mins[j]) = scale_min(j, &blk[4..16]);
        }
        out
    };
    Ok(PanelMatrix::build(n, k, values, scales))
}

/// The Q4_K format as the panel kernels take it.
pub struct Q4K;

impl PanelFormat for Q4K {
    const NAME: &'static str = "Q4_K";
    const NIBBLES: bool = true;
    const SUPER: bool = true;
    const HAS_MIN: bool = true;
}

/// The Q5_K format: Q4_K with a fifth bit plane.
pub struct Q5K;

impl PanelFormat for Q5K {
    const NAME: &'static str = "Q5_K";
    const NIBBLES: bool = true;
    const HIGH_BITS: usize = 1;
    const SUPER: bool = true;
    const HAS_MIN: bool = true;
}
