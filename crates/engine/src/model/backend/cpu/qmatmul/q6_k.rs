//! Q6_K weights (ggml's `block_q6_K`: per 256 values 4 low bits and 2 high bits each, sixteen
//! int8 scales, one per 16 values, and an f16 `d`; `w = d·sc_g·(q − 32)`) on wick's panel
//! kernels (`super::panel`), at their stored size: nibbles, the high bits in 2-bit fields,
//! the scales and `d` as stored.
//!
//! Activations are quantized as llama.cpp pairs them with K-quants (Q8_K, `ActBlocks::Q8K`).
//! Per (row, column) and super-block: each 16-value sub-block's exact `Σ (q − 32)·x`
//! (`vpdpbusd` of the stored `q` onto `−32·Σx`), scaled in order into `S` (`fma(f32(Σ),
//! f32(sc_g), S)`), then `fma(S, d·d_x, acc)`.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{ColumnScales, PanelFormat, PanelMatrix, SUPER_BLOCKS};
use super::QK;
use crate::Result;

/// Values per super-block.
const QK_K: usize = 256;
/// Bytes of one stored block: 128 of low bits, 64 of high bits, 16 scales, f16 `d`.
const BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// Q6_K weights `[n, k]` as panels.
pub type Q6KMatrix = PanelMatrix<Q6K>;

/// Value `i` (0..256) of a stored block, unsigned (ggml's `dequantize_row_q6_K` before its
/// `− 32`): in each half of 128, block `t` of 32 takes the low (`t < 2`) or high nibbles of
/// low-bit bytes `32·(t % 2)..`, and bits `2t..2t + 2` of the half's 32 high-bit bytes.
fn value(body: &[u8], i: usize) -> u8 {
    let (half, t, l) = (i / 128, i % 128 / 32, i % 32);
    let ql = body[64 * half + 32 * (t % 2) + l];
    let lo = if t < 2 { ql & 0x0F } else { ql >> 4 };
    let hi = (body[128 + 32 * half + l] >> (2 * t)) & 3;
    lo | (hi << 4)
}

impl Q6KMatrix {
    /// Takes a Q6_K `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let (n, k, bytes) = Self::stored(q, GgmlDType::Q6K, QK_K, BLOCK_BYTES)?;
        let sbs = k / QK_K;
        let block = |c: usize, s: usize| &bytes[(c * sbs + s) * BLOCK_BYTES..][..BLOCK_BYTES];
        let values = |c, b: usize| {
            let (blk, j) = (block(c, b / SUPER_BLOCKS), b % SUPER_BLOCKS);
            std::array::from_fn(|i| value(blk, j * QK + i))
        };
        let scales = |c, s| {
            let blk = block(c, s);
            let mut out = ColumnScales { d: f16::from_le_bytes([blk[208], blk[209]]), ..Default::default() };
            out.sc.copy_from_slice(&blk[192..208]);
            out
        };
        Ok(Self::build(n, k, values, scales))
    }

    /// Appends weight row `r` (output column `r`), dequantized as candle does
    /// (`d · sc · (q − 32)`); `None` if there is no such row. A tied embedding reads its rows
    /// here, so the table is held once.
    pub fn append_row(&self, r: usize, out: &mut Vec<f32>) -> Option<()> {
        if r >= self.panel.n {
            return None;
        }
        for s in 0..self.panel.k / QK_K {
            let scales = self.panel.scales::<Q6K>(r, s);
            let d = scales.d.to_f32();
            for b in 0..SUPER_BLOCKS {
                let values = self.panel.values::<Q6K>(r, s * SUPER_BLOCKS + b);
                for (i, &q) in values.iter().enumerate() {
                    let sc = scales.sc[(b * QK + i) / 16] as i8;
                    out.push(d * f32::from(sc) * q as f32);
                }
            }
        }
        Some(())
    }
}

/// The Q6_K format as the panel kernels take it: a block's two 16-value sub-blocks are units
/// 0–1 and 2–3, each unit two consecutive quads.
pub struct Q6K;

impl PanelFormat for Q6K {
    const NAME: &'static str = "Q6_K";
    const NIBBLES: bool = true;
    const HIGH_BITS: usize = 2;
    const OFFSET: i32 = 32;
    const SUPER: bool = true;
    const SUBS: usize = 2;
    const SIGNED: bool = true;
    const XOFF: [[usize; 2]; 4] = [[0, 4], [8, 12], [16, 20], [24, 28]];
}
