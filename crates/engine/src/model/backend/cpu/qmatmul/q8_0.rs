//! Q8_0 weights (one f16 scale and 32 int8 values per block) on wick's panel kernels
//! (`super::panel`): per (row, column), block after block, `fma(f32(Σ q·x), d_w·d_x, acc)`.
//! The values are kept as `q + 128` (unsigned, for `vpdpbusd`; the sums start from
//! `-128·Σ x`), the scales as stored.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{ColumnScales, Panel, PanelFormat, GROUP};
use super::{OutPtr, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Bytes of one stored ggml Q8_0 block: an f16 scale then 32 int8 values.
const BLOCK_BYTES: usize = 2 + QK;

/// Q8_0 weights `[n, k]` as panels, shared by clones: a tied embedding reads its rows from
/// the LM head's matrix.
#[derive(Clone)]
pub struct Q8Matrix(pub(super) Panel);

impl std::fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8Matrix[{}, {}]", self.0.n, self.0.k)
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
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad Q8_0 data: {} bytes for [{n}, {k}]", bytes.len())));
        }
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
        Ok(Self(Panel::build::<Q8>(n, k, values, scales)))
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.0.level = level;
        self
    }

    /// Appends weight row `r` (output column `r`), dequantized as candle does (`q · d`);
    /// `None` if there is no such row.
    pub fn append_row(&self, r: usize, out: &mut Vec<f32>) -> Option<()> {
        if r >= self.0.n {
            return None;
        }
        for b in 0..self.0.k / QK {
            let d = self.0.scales::<Q8>(r, b).d.to_f32();
            out.extend(self.0.values::<Q8>(r, b).iter().map(|&q| q as f32 * d));
        }
        Some(())
    }

    /// Whether `other` reads the same stored table (not a copy).
    pub fn shares_storage_with(&self, other: &Q8Matrix) -> bool {
        self.0.shares_storage_with(&other.0)
    }
}

impl TileKernel for Q8Matrix {
    fn dims(&self) -> (usize, usize) {
        (self.0.n, self.0.k)
    }

    fn col_chunk(&self) -> usize {
        2 * GROUP
    }

    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
        // SAFETY: the caller's contract.
        unsafe { self.0.block::<Q8>(acts, rows, cols, out) }
    }
}

/// The format as the panel kernels take it.
struct Q8;

impl PanelFormat for Q8 {
    const NIBBLES: bool = false;
    const HIGH_BITS: usize = 0;
    const OFFSET: i32 = 128;
    const SUPER: bool = false;
    const SUBS: usize = 1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = false;
    const XOFF: [[usize; 2]; 4] = [[0, 4], [8, 12], [16, 20], [24, 28]];
}
