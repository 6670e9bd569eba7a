//! The 5-bit legacy formats, Q5_0 (`w = d·(q − 16)`) and Q5_1 (`w = d·q + m`), on wick's panel
//! kernels (`super::panel`) at their stored size: per block of 32 the nibbles, the fifth bits
//! as a bit plane, and the f16 scale (and Q5_1's offset).
//!
//! Per (row, column), block after block: `fma(f32(Σ (q − o)·x), d_w·d_x, acc)` with `o = 16`
//! for Q5_0 and 0 for Q5_1, whose offset then adds `fma(m_w, s_x, acc)` with candle's
//! f16-rounded `s_x` (ggml's Q8_1 pairing), as Q4_1 does.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{ColumnScales, Panel, PanelFormat, GROUP};
use super::{OutPtr, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Q5_0 or Q5_1 weights `[n, k]` as panels.
#[derive(Clone)]
pub struct Q5Matrix {
    panel: Panel,
    one: bool,
}

impl std::fmt::Debug for Q5Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = if self.one { "Q5_1" } else { "Q5_0" };
        write!(f, "Q5Matrix[{t}, {}, {}]", self.panel.n, self.panel.k)
    }
}

impl Q5Matrix {
    /// Takes a Q5_0 or Q5_1 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let one = match q.dtype() {
            GgmlDType::Q5_0 => false,
            GgmlDType::Q5_1 => true,
            t => return Err(EngineError::Load(format!("Q5Matrix needs Q5_0 or Q5_1 weights, got {t:?}"))),
        };
        let (n, k) = q.shape().dims2()?;
        let bytes = q.data()?;
        // Stored per block: f16 `d` (and Q5_1's f16 `m`), 32 fifth bits (bit `v`: value `v`),
        // 16 nibble bytes (byte `i`: value `i` low, value `i + 16` high).
        let head = if one { 4 } else { 2 };
        let block_bytes = head + 4 + QK / 2;
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * block_bytes {
            return Err(EngineError::Load(format!("bad {:?} data: {} bytes for [{n}, {k}]", q.dtype(), bytes.len())));
        }
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
        let panel =
            if one { Panel::build::<Q51>(n, k, values, scales) } else { Panel::build::<Q50>(n, k, values, scales) };
        Ok(Self { panel, one })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.panel.level = level;
        self
    }
}

impl TileKernel for Q5Matrix {
    fn dims(&self) -> (usize, usize) {
        (self.panel.n, self.panel.k)
    }

    fn col_chunk(&self) -> usize {
        2 * GROUP
    }

    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
        // SAFETY: the caller's contract.
        unsafe {
            if self.one {
                self.panel.block::<Q51>(acts, rows, cols, out)
            } else {
                self.panel.block::<Q50>(acts, rows, cols, out)
            }
        }
    }
}

/// Q5_0 as the panel kernels take it.
struct Q50;

impl PanelFormat for Q50 {
    const NIBBLES: bool = true;
    const HIGH_BITS: usize = 1;
    const OFFSET: i32 = 16;
    const SUPER: bool = false;
    const SUBS: usize = 1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = false;
    const XOFF: [[usize; 2]; 4] = [[0, 16], [4, 20], [8, 24], [12, 28]];
}

/// Q5_1: Q4_1 with a fifth bit plane.
struct Q51;

impl PanelFormat for Q51 {
    const NIBBLES: bool = true;
    const HIGH_BITS: usize = 1;
    const OFFSET: i32 = 0;
    const SUPER: bool = false;
    const SUBS: usize = 1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    const XOFF: [[usize; 2]; 4] = Q50::XOFF;
}
