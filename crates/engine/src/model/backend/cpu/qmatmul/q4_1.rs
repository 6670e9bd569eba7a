//! Q4_1 weights (per block of 32: an f16 scale `d`, an f16 offset `m` and 32 unsigned 4-bit
//! values, `w = d·q + m`) on wick's panel kernels (`super::panel`), kept at their stored size:
//! half the bytes of Q8_0, which is what single-sequence decode (memory-bound) pays for.
//!
//! Per (row, column), block after block: `fma(f32(Σ q·x), d_w·d_x, acc)`, then
//! `fma(m_w, s_x, acc)` with candle's f16-rounded `s_x = d_x·Σ x` (ggml's Q8_1 pairing).

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{Panel, PanelFormat, Simd, GROUP};
use super::{OutPtr, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Bytes of one stored ggml Q4_1 block: f16 `d`, f16 `m`, then 16 bytes of nibbles (byte `i`
/// holds value `i` in its low nibble and value `i + 16` in its high nibble).
const BLOCK_BYTES: usize = 4 + QK / 2;

/// Q4_1 weights `[n, k]` as panels.
#[derive(Clone)]
pub struct Q41Matrix(Panel);

impl std::fmt::Debug for Q41Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q41Matrix[{}, {}]", self.0.n, self.0.k)
    }
}

impl Q41Matrix {
    /// Takes a Q4_1 `QTensor` of shape `[n, k]`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != GgmlDType::Q4_1 {
            return Err(EngineError::Load(format!("Q41Matrix needs Q4_1 weights, got {:?}", q.dtype())));
        }
        let (n, k) = q.shape().dims2()?;
        let bytes = q.data()?;
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * BLOCK_BYTES {
            return Err(EngineError::Load(format!("bad Q4_1 data: {} bytes for [{n}, {k}]", bytes.len())));
        }
        let kb = k / QK;
        Ok(Self(Panel::build::<Q41>(n, k, |c, b| {
            let block = &bytes[(c * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
            let mut values = [0u8; QK];
            values[..QK / 2].copy_from_slice(&block[4..]);
            let half = |i: usize| f16::from_le_bytes([block[i], block[i + 1]]);
            (values, half(0), half(2))
        })))
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.0.level = level;
        self
    }
}

impl TileKernel for Q41Matrix {
    fn dims(&self) -> (usize, usize) {
        (self.0.n, self.0.k)
    }

    fn col_chunk(&self) -> usize {
        2 * GROUP
    }

    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
        // SAFETY: the caller's contract.
        unsafe { self.0.block::<Q41>(acts, rows, cols, out) }
    }
}

/// The format as the panel kernels take it.
struct Q41;

impl PanelFormat for Q41 {
    const NIBBLES: bool = true;
    const HAS_MIN: bool = true;
    const OFFSET: i32 = 0;
}

#[cfg(target_arch = "x86_64")]
impl Simd for Q41 {
    const XOFF: [[usize; 2]; 4] = [[0, 16], [4, 20], [8, 24], [12, 28]];

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn unit512(p: *const u8, u: usize) -> [std::arch::x86_64::__m512i; 2] {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        let raw = unsafe { _mm512_load_si512(p.add(64 * u) as *const _) };
        let low = _mm512_set1_epi8(0x0F);
        [_mm512_and_si512(raw, low), _mm512_and_si512(_mm512_srli_epi16(raw, 4), low)]
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unit256(p: *const u8, u: usize, h: usize) -> [std::arch::x86_64::__m256i; 4] {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        let raw = unsafe { _mm256_load_si256(p.add(64 * u + 32 * h) as *const __m256i) };
        let low = _mm256_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        [_mm256_and_si256(raw, low), _mm256_and_si256(_mm256_srli_epi16(raw, 4), low), zero, zero]
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot256(
        w: [std::arch::x86_64::__m256i; 4],
        x0: std::arch::x86_64::__m256i,
        x1: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // Products of at most 15 · 127, four to a 16-bit lane: no saturation.
        let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w[0], x0), _mm256_maddubs_epi16(w[1], x1));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }
}
