//! Q8_0 weights (one f16 scale and 32 int8 values per block) on wick's panel kernels
//! (`super::panel`): per (row, column), block after block, `fma(f32(Σ q·x), d_w·d_x, acc)`.
//! The values are kept as `q + 128` (unsigned, for `vpdpbusd`; the sums start from
//! `-128·Σ x`), the scales as stored.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{ColumnScales, PanelFormat, PanelMatrix};
use super::QK;
use crate::Result;

/// Bytes of one stored ggml Q8_0 block: an f16 scale then 32 int8 values.
const BLOCK_BYTES: usize = 2 + QK;

/// Q8_0 weights `[n, k]` as panels, shared by clones: a tied embedding reads its rows from
/// the LM head's matrix.
pub type Q8Matrix = PanelMatrix<Q80>;

impl Q8Matrix {
    /// Takes a Q8_0 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let (n, k, bytes) = Self::stored(q, GgmlDType::Q8_0, QK, BLOCK_BYTES)?;
        let kb = k / QK;
        let block = |c: usize, b: usize| &bytes[(c * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
        let values = |c, b| {
            let s = block(c, b);
            std::array::from_fn(|i| s[2 + i] ^ 0x80)
        };
        let scales = |c, b| {
            let s = block(c, b);
            ColumnScales { d: f16::from_le_bytes([s[0], s[1]]), ..Default::default() }
        };
        Ok(Self::build(n, k, values, scales))
    }

    /// Appends weight row `r` (output column `r`), dequantized as candle does (`q · d`);
    /// `None` if there is no such row.
    pub fn append_row(&self, r: usize, out: &mut Vec<f32>) -> Option<()> {
        if r >= self.panel.n {
            return None;
        }
        for b in 0..self.panel.k / QK {
            let d = self.panel.scales::<Q80>(r, b).d.to_f32();
            out.extend(self.panel.values::<Q80>(r, b).iter().map(|&q| q as f32 * d));
        }
        Some(())
    }
}

/// The Q8_0 format as the panel kernels take it.
pub struct Q80;

impl PanelFormat for Q80 {
    const NAME: &'static str = "Q8_0";
    const NIBBLES: bool = false;
    const OFFSET: i32 = 128;
    const XOFF: [[usize; 2]; 4] = [[0, 4], [8, 12], [16, 20], [24, 28]];
}
