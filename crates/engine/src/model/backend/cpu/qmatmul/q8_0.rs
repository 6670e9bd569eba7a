//! Q8_0 weights (one f16 scale and 32 int8 values per block) on wick's panel kernels
//! (`super::panel`): per (row, column), block after block, `fma(f32(Σ q·x), d_w·d_x, acc)`.
//! The values are kept as `q + 128` (unsigned, for `vpdpbusd`; the sums start from
//! `-128·Σ x`), the scales as stored.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::panel::{Panel, PanelFormat, Simd, GROUP};
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
        Ok(Self(Panel::build::<Q8>(n, k, |c, b| {
            let block = &bytes[(c * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
            let values = std::array::from_fn(|i| block[2 + i] ^ 0x80);
            (values, f16::from_le_bytes([block[0], block[1]]), f16::ZERO)
        })))
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
            let (q, d, _) = self.0.column_block::<Q8>(r, b);
            out.extend(q.iter().map(|&q| q as f32 * d));
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
    const HAS_MIN: bool = false;
    const OFFSET: i32 = 128;
}

#[cfg(target_arch = "x86_64")]
impl Simd for Q8 {
    const XOFF: [[usize; 2]; 4] = [[0, 4], [8, 12], [16, 20], [24, 28]];

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn unit512(p: *const u8, u: usize) -> [std::arch::x86_64::__m512i; 2] {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe { [_mm512_load_si512(p.add(128 * u) as *const _), _mm512_load_si512(p.add(128 * u + 64) as *const _)] }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unit256(p: *const u8, u: usize, h: usize) -> [std::arch::x86_64::__m256i; 4] {
        use std::arch::x86_64::*;
        let flip = _mm256_set1_epi8(-128);
        // SAFETY: the caller's contract.
        let (w0, w1) = unsafe {
            (
                _mm256_xor_si256(_mm256_load_si256(p.add(128 * u + 32 * h) as *const __m256i), flip),
                _mm256_xor_si256(_mm256_load_si256(p.add(128 * u + 64 + 32 * h) as *const __m256i), flip),
            )
        };
        [_mm256_sign_epi8(w0, w0), w0, _mm256_sign_epi8(w1, w1), w1]
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot256(
        w: [std::arch::x86_64::__m256i; 4],
        x0: std::arch::x86_64::__m256i,
        x1: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // |w| times x with w's sign (ggml's trick): pairs of at most 128 · 127, no saturation.
        let ones = _mm256_set1_epi16(1);
        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w[0], _mm256_sign_epi8(x0, w[1])), ones);
        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w[2], _mm256_sign_epi8(x1, w[3])), ones);
        _mm256_add_epi32(p0, p1)
    }
}
