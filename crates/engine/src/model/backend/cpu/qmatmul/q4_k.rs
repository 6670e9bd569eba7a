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

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{ColumnScales, Panel, PanelFormat, GROUP, SUPER_BLOCKS};
use super::{ActBlocks, OutPtr, QuantizedActs, TileKernel};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes of one stored block: `d`, `dmin`, 12 bytes of packed scales and mins, 128 of nibbles.
const BLOCK_BYTES: usize = 4 + 12 + QK_K / 2;

/// Q4_K or Q5_K weights `[n, k]` as panels.
#[derive(Clone)]
pub struct Q4KMatrix {
    panel: Panel,
    five: bool,
}

/// Q5_K weights: the Q4_K panels with a fifth bit plane.
pub type Q5KMatrix = Q4KMatrix;

impl std::fmt::Debug for Q4KMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = if self.five { "Q5_K" } else { "Q4_K" };
        write!(f, "Q4KMatrix[{t}, {}, {}]", self.panel.n, self.panel.k)
    }
}

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min from the 12 packed bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

impl Q4KMatrix {
    /// Takes a Q4_K or Q5_K `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let five = match q.dtype() {
            GgmlDType::Q4K => false,
            GgmlDType::Q5K => true,
            t => return Err(EngineError::Load(format!("Q4KMatrix needs Q4_K or Q5_K weights, got {t:?}"))),
        };
        let (n, k) = q.shape().dims2()?;
        Self::from_ggml_bytes(&q.data()?, n, k, five)
    }

    /// Reads `n · k / 256` stored ggml Q4_K blocks (Q5_K blocks where `five`).
    pub fn from_ggml_bytes(bytes: &[u8], n: usize, k: usize, five: bool) -> Result<Self> {
        let (qh_bytes, name) = if five { (QK_K / 8, "Q5_K") } else { (0, "Q4_K") };
        let block_bytes = BLOCK_BYTES + qh_bytes;
        if !k.is_multiple_of(QK_K) || bytes.len() != n * k / QK_K * block_bytes {
            return Err(EngineError::Load(format!("bad {name} data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let sbs = k / QK_K;
        let block = |c: usize, s: usize| &bytes[(c * sbs + s) * block_bytes..][..block_bytes];
        // Sub-block `j` of a super-block: the low (even `j`) or high nibbles of the 32-byte
        // run `j / 2`, and bit `j` of each of the 32 fifth-bit bytes.
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
        let panel =
            if five { Panel::build::<Q5K>(n, k, values, scales) } else { Panel::build::<Q4K>(n, k, values, scales) };
        Ok(Self { panel, five })
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.panel.level = level;
        self
    }
}

impl TileKernel for Q4KMatrix {
    fn dims(&self) -> (usize, usize) {
        (self.panel.n, self.panel.k)
    }

    fn col_chunk(&self) -> usize {
        2 * GROUP
    }

    fn act_blocks(&self) -> ActBlocks {
        ActBlocks::Q8K
    }

    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
        // SAFETY: the caller's contract.
        unsafe {
            if self.five {
                self.panel.block::<Q5K>(acts, rows, cols, out)
            } else {
                self.panel.block::<Q4K>(acts, rows, cols, out)
            }
        }
    }
}

/// Q4_K as the panel kernels take it.
struct Q4K;

impl PanelFormat for Q4K {
    const NIBBLES: bool = true;
    const HIGH_BITS: usize = 0;
    const OFFSET: i32 = 0;
    const SUPER: bool = true;
    const SUBS: usize = 1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    const XOFF: [[usize; 2]; 4] = [[0, 16], [4, 20], [8, 24], [12, 28]];
}

/// Q5_K: Q4_K with a fifth bit plane.
struct Q5K;

impl PanelFormat for Q5K {
    const NIBBLES: bool = true;
    const HIGH_BITS: usize = 1;
    const OFFSET: i32 = 0;
    const SUPER: bool = true;
    const SUBS: usize = 1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    const XOFF: [[usize; 2]; 4] = Q4K::XOFF;
}
