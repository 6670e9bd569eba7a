//! Q4_1 weights (per block of 32: an f16 scale `d`, an f16 offset `m` and 32 unsigned 4-bit
//! values, `w = d·q + m`) on wick's panel kernels (`super::panel`), kept at their stored size:
//! half the bytes of Q8_0, which is what single-sequence decode (memory-bound) pays for.
//!
//! Per (row, column), block after block: `fma(f32(Σ q·x), d_w·d_x, acc)`, then
//! `fma(m_w, s_x, acc)` with candle's f16-rounded `s_x = d_x·Σ x` (ggml's Q8_1 pairing).

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{ColumnScales, PanelFormat, PanelMatrix};
use super::QK;
use crate::Result;

/// Bytes of one stored ggml Q4_1 block: f16 `d`, f16 `m`, then 16 bytes of nibbles (byte `i`
/// holds value `i` in its low nibble and value `i + 16` in its high nibble).
const BLOCK_BYTES: usize = 4 + QK / 2;

/// Q4_1 weights `[n, k]` as panels.
pub type Q41Matrix = PanelMatrix<Q41>;

impl Q41Matrix {
    /// Takes a Q4_1 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let (n, k, bytes) = Self::stored(q, GgmlDType::Q4_1, QK, BLOCK_BYTES)?;
        let kb = k / QK;
        let block = |c: usize, b: usize| &bytes[(c * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
        let values = |c, b| {
            let nibbles = &block(c, b)[4..];
            std::array::from_fn(|i| if i < QK / 2 { nibbles[i] & 0x0F } else { nibbles[i - QK / 2] >> 4 })
        };
        let scales = |c, b| {
            let s = block(c, b);
            let half = |i: usize| f16::from_le_bytes([s[i], s[i + 1]]);
            ColumnScales { d: half(0), m: half(2), ..Default::default() }
        };
        Ok(Self::build(n, k, values, scales))
    }
}

/// The Q4_1 format as the panel kernels take it.
pub struct Q41;

impl PanelFormat for Q41 {
    const NAME: &'static str = "Q4_1";
    const NIBBLES: bool = true;
    const HAS_MIN: bool = true;
}
