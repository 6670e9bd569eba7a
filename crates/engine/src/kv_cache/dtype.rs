//! How K/V rows are stored: `KvDtype` (f32, f16, or 8-bit with one f32 scale per row) and
//! `RowStore`, one slot array of rows of `head_dim` values in that format (V), or of
//! dimension-major tiles whose columns are those rows (K; `write_column`). A row is written
//! from f32 once, when its token is computed, and read back as f32 by attention, which always
//! computes in f32. Conversions are deterministic (f16 rounds to nearest even; q8 scales by the
//! row's own absolute maximum), so a row reads back the same bits whichever step wrote it, and
//! batched == alone and prefix-cache hit == miss stay exact in every format.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Element format of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// 4 bytes per value: exact.
    F32,
    /// 2 bytes per value (llama.cpp's and vLLM's default).
    #[default]
    F16,
    /// 1 byte per value plus a 4-byte scale per row (symmetric, per token and kv head).
    Q8,
}

impl KvDtype {
    /// Every format.
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Q8];

    /// Parses `f32`, `f16` or `q8` (also `fp16`, `float`, `int8`, `q8_0`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Some(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Some(Self::F16),
            "q8" | "q8_0" | "int8" | "i8" => Some(Self::Q8),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8 => "q8",
        }
    }

    /// Bytes one row of `head_dim` values takes.
    pub fn bytes_per_row(self, head_dim: usize) -> usize {
        match self {
            Self::F32 => 4 * head_dim,
            Self::F16 => 2 * head_dim,
            Self::Q8 => head_dim + 4,
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An element attention reads in place: f32, or f16 kept as its bits (`u16`). Both convert to
/// f32 exactly, so a score is the same bits whichever storage it was read from.
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// Eight consecutive elements from `p`, as f32.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `p..p + 8` must be readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// The elements of `p..p + 16` that `mask` selects, as f32 (the others 0).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL and F16C must be available; the selected elements must be readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self, mask: std::arch::x86_64::__mmask16) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn load16(p: *const Self, mask: std::arch::x86_64::__mmask16) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_maskz_loadu_ps(mask, p)
    }
}

impl KvElem for u16 {
    #[inline]
    fn to_f32(self) -> f32 {
        f16::from_bits(self).to_f32()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn load16(p: *const Self, mask: std::arch::x86_64::__mmask16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast()))
    }
}

/// A row's 8-bit scale (its absolute maximum over 127) and the scale's inverse (0 for a zero row).
fn q8_scale(row: &[f32]) -> (f32, f32) {
    let scale = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
    (scale, if scale > 0.0 { 1.0 / scale } else { 0.0 })
}

/// One value in 8 bits, given its row's inverse scale.
fn q8(x: f32, inv: f32) -> i8 {
    (x * inv).round().clamp(-127.0, 127.0) as i8
}

/// One slot array of K or V rows (`head_dim` values each, addressed by element offset).
///
/// Every variant is allocated zeroed (`vec![0; n]` of a primitive is `calloc`), so the OS maps
/// pages only when a row is first written: the process's resident size follows the tokens
/// actually cached, not the `--kv-cache-mb` budget. f16 rows are therefore kept as their bits
/// (`u16`), which `vec!` can allocate zeroed, and viewed as `f16` where they are converted.
pub(crate) enum RowStore {
    F32(Vec<f32>),
    F16(Vec<u16>),
    Q8 { q: Vec<i8>, scales: Vec<f32> },
}

impl RowStore {
    /// Zeroed storage for `elems` values in rows of `hd`.
    pub fn new(dtype: KvDtype, elems: usize, hd: usize) -> Self {
        match dtype {
            KvDtype::F32 => Self::F32(vec![0.0; elems]),
            KvDtype::F16 => Self::F16(vec![0u16; elems]),
            KvDtype::Q8 => Self::Q8 { q: vec![0; elems], scales: vec![0.0; elems / hd.max(1)] },
        }
    }

    /// The rows as f32 in place, when stored as f32 (attention then reads them directly).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Self::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The rows as f16 bits in place, when stored as f16 (attention converts as it reads).
    pub fn as_f16_bits(&self) -> Option<&[u16]> {
        match self {
            Self::F16(v) => Some(v),
            _ => None,
        }
    }

    /// Stores `src` (one row) at element offset `off`.
    pub fn write_row(&mut self, off: usize, src: &[f32]) {
        let hd = src.len();
        match self {
            Self::F32(v) => v[off..off + hd].copy_from_slice(src),
            Self::F16(v) => v[off..off + hd].reinterpret_cast_mut::<f16>().convert_from_f32_slice(src),
            Self::Q8 { q, scales } => {
                let (scale, inv) = q8_scale(src);
                for (d, &x) in q[off..off + hd].iter_mut().zip(src) {
                    *d = q8(x, inv);
                }
                scales[off / hd] = scale;
            }
        }
    }

    /// Stores `src` as column `slot` of the dimension-major tile at element offset `tile`
    /// (value `d` at `tile + d * stride + slot`; a K tile). An 8-bit column's scale is that of
    /// row `tile / hd + slot`, the row it would be stored as.
    pub fn write_column(&mut self, tile: usize, slot: usize, stride: usize, src: &[f32]) {
        let at = |d: usize| tile + d * stride + slot;
        match self {
            Self::F32(v) => src.iter().enumerate().for_each(|(d, &x)| v[at(d)] = x),
            Self::F16(v) => src.iter().enumerate().for_each(|(d, &x)| v[at(d)] = f16::from_f32(x).to_bits()),
            Self::Q8 { q, scales } => {
                let (scale, inv) = q8_scale(src);
                for (d, &x) in src.iter().enumerate() {
                    q[at(d)] = q8(x, inv);
                }
                scales[tile / src.len() + slot] = scale;
            }
        }
    }

    /// Fills `dst` with the dimension-major tiles of `stride` columns at element offsets
    /// `tiles`, as f32, `hd * stride` values each; with `stride` 1, the rows at those offsets.
    pub fn gather(&self, tiles: &[usize], hd: usize, stride: usize, dst: &mut Vec<f32>) {
        let n = hd * stride;
        dst.clear();
        dst.resize(tiles.len() * n, 0.0);
        for (out, &tile) in dst.chunks_exact_mut(n).zip(tiles) {
            match self {
                Self::F32(v) => out.copy_from_slice(&v[tile..tile + n]),
                Self::F16(v) => v[tile..tile + n].reinterpret_cast::<f16>().convert_to_f32_slice(out),
                Self::Q8 { q, scales } => {
                    let s = &scales[tile / hd..tile / hd + stride];
                    for (o, (x, s)) in out.iter_mut().zip(q[tile..tile + n].iter().zip(s.iter().cycle())) {
                        *o = *x as f32 * s;
                    }
                }
            }
        }
    }

    /// Copies elements `src..src + len` to `dst..` (whole rows: `src`, `dst`, `len` are
    /// multiples of `hd`).
    pub fn copy_within(&mut self, src: usize, len: usize, dst: usize, hd: usize) {
        match self {
            Self::F32(v) => v.copy_within(src..src + len, dst),
            Self::F16(v) => v.copy_within(src..src + len, dst),
            Self::Q8 { q, scales } => {
                q.copy_within(src..src + len, dst);
                scales.copy_within(src / hd..(src + len) / hd, dst / hd);
            }
        }
    }

    /// Overwrites elements `range` with NaN (tests: a read of a released page shows).
    #[cfg(test)]
    pub fn poison(&mut self, range: std::ops::Range<usize>, hd: usize) {
        match self {
            Self::F32(v) => v[range].fill(f32::NAN),
            Self::F16(v) => v[range].fill(f16::NAN.to_bits()),
            Self::Q8 { scales, .. } => scales[range.start / hd..range.end / hd].fill(f32::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(dtype: KvDtype, row: &[f32]) -> Vec<f32> {
        let hd = row.len();
        let mut s = RowStore::new(dtype, 3 * hd, hd);
        s.write_row(hd, row);
        let mut out = Vec::new();
        s.gather(&[hd], hd, 1, &mut out);
        out
    }

    #[test]
    fn each_format_reads_back_what_it_stored_within_its_precision() {
        let row: Vec<f32> = (0..64).map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.173).collect();
        assert_eq!(roundtrip(KvDtype::F32, &row), row);
        for (dtype, tol) in [(KvDtype::F16, 1e-3), (KvDtype::Q8, 1.0 / 127.0)] {
            let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (a, b) in roundtrip(dtype, &row).iter().zip(&row) {
                assert!((a - b).abs() <= tol * amax.max(b.abs()), "{dtype}: {a} vs {b}");
            }
        }
        assert_eq!(roundtrip(KvDtype::Q8, &[0.0; 8]), vec![0.0; 8], "a zero row has a zero scale");
    }

    #[test]
    fn conversions_are_deterministic_and_copies_move_rows_with_their_scales() {
        let row: Vec<f32> = (0..16).map(|i| (i as f32).sin() * 3.0).collect();
        for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8] {
            assert_eq!(roundtrip(dtype, &row), roundtrip(dtype, &row));
            let mut s = RowStore::new(dtype, 64, 16);
            s.write_row(16, &row);
            s.copy_within(16, 16, 48, 16);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            s.gather(&[16], 16, 1, &mut a);
            s.gather(&[48], 16, 1, &mut b);
            assert_eq!(a, b, "{dtype}");
        }
    }

    #[test]
    fn a_column_of_a_tile_reads_back_as_its_row_does() {
        let (hd, bs) = (8, 4);
        let rows: Vec<Vec<f32>> =
            (0..bs).map(|j| (0..hd).map(|i| ((i * 3 + j * 5) as f32).cos() * 2.0).collect()).collect();
        for dtype in KvDtype::ALL {
            // The second tile of a store, columns written out of order.
            let mut s = RowStore::new(dtype, 2 * hd * bs, hd);
            for j in [2, 0, 3, 1] {
                s.write_column(hd * bs, j, bs, &rows[j]);
            }
            let mut tile = Vec::new();
            s.gather(&[hd * bs], hd, bs, &mut tile);
            for (j, row) in rows.iter().enumerate() {
                let column: Vec<f32> = (0..hd).map(|d| tile[d * bs + j]).collect();
                assert_eq!(column, roundtrip(dtype, row), "{dtype} column {j}");
            }
        }
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(KvDtype::F32.bytes_per_row(64), 256);
        assert_eq!(KvDtype::F16.bytes_per_row(64), 128);
        assert_eq!(KvDtype::Q8.bytes_per_row(64), 68);
        for d in [KvDtype::F32, KvDtype::F16, KvDtype::Q8] {
            assert_eq!(KvDtype::parse(d.name()), Some(d));
        }
        assert_eq!(KvDtype::parse("bf16"), None);
    }
}
