//! The 5-bit legacy formats, Q5_0 (`w = d·(q − 16)`) and Q5_1 (`w = d·q + m`), on wick's panel
//! kernels (`super::panel`) at their stored size: per block of 32 the nibbles, the fifth bits
//! as a bit plane, and the f16 scale (and Q5_1's offset).
//!
//! Per (row, column), block after block: `fma(f32(Σ (q − o)·x), d_w·d_x, acc)` with `o = 16`
//! for Q5_0 and 0 for Q5_1, whose offset then adds `fma(m_w, s_x, acc)` with candle's
//! f16-rounded `s_x` (ggml's Q8_1 pairing), as Q4_1 does.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{ColumnScales, PanelFormat, PanelMatrix};
use super::QK;
use crate::Result;

/// Q5_0 weights `[n, k]` as panels.
pub type Q50Matrix = PanelMatrix<Q50>;
/// Q5_1 weights `[n, k]` as panels.
pub type Q51Matrix = PanelMatrix<Q51>;

impl Q50Matrix {
    /// Takes a Q5_0 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        from_qtensor(q, GgmlDType::Q5_0)
    }
}

impl Q51Matrix {
    /// Takes a Q5_1 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        from_qtensor(q, GgmlDType::Q5_1)
    }
}

/// Reads a Q5_0 or Q5_1 `QTensor` (`dtype`) of shape `[n, k]`.
fn from_qtensor<F: PanelFormat>(q: &QTensor, dtype: GgmlDType) -> Result<PanelMatrix<F>> {
    let one = dtype == GgmlDType::Q5_1;
    // Stored per block: f16 `d` (and Q5_1's f16 `m`), 32 fifth bits (bit `v`: value `v`), 16
    // nibble bytes (byte `i`: value `i` low, value `i + 16` high).
    let head = if one { 4 } else { 2 };
    let block_bytes = head + 4 + QK / 2;
    let (n, k, bytes) = PanelMatrix::<F>::stored(q, dtype, QK, block_bytes)?;
    let kb = k / QK;
    let block = |c: usize, b: usize| &bytes[(c * kb + b) * block_bytes..][..block_bytes];
    let values = |c, b| {
        let s = block(c, b);
        let high = u32::from_le_bytes([s[head], s[head + 1], s[head + 2], s[head + 3]]);
        let nib = &s[head + 4..];
        std::array::from_fn(|v| {
            let lo = if v < QK / 2 { nib[v] & 0x0F } else { nib[v - QK / 2] >> 4 };
            lo | ((high >> v & 1) as u8) << 4
        })
    };
    let scales = |c, b| {
        let s = block(c, b);
        let half = |i: usize| f16::from_le_bytes([s[i], s[i + 1]]);
        ColumnScales { d: half(0), m: if one { half(2) } else { f16::ZERO }, ..Default::default() }
    };
    Ok(PanelMatrix::build(n, k, values, scales))
}

/// The Q5_0 format as the panel kernels take it.
pub struct Q50;

impl PanelFormat for Q50 {
    const NAME: &'static str = "Q5_0";
    const NIBBLES: bool = true;
    const HIGH_BITS: usize = 1;
    const OFFSET: i32 = 16;
}

/// The Q5_1 format: Q4_1 with a fifth bit plane.
pub struct Q51;

impl PanelFormat for Q51 {
    const NAME: &'static str = "Q5_1";
    const NIBBLES: bool = true;
    const HIGH_BITS: usize = 1;
    const HAS_MIN: bool = true;
}
