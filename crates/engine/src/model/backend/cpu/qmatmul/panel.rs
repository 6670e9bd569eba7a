//! Column-interleaved weight panels and their kernels, for the formats whose 32-value blocks
//! carry one scale (Q8_0) or a scale and an offset (Q4_1).
//!
//! Sixteen weight columns form a group. Per (group, block) each column's 32 values are eight
//! 4-value quads, and one 64-byte vector holds one quad (or, for nibbles, two) of all sixteen
//! columns, column `c` in bytes `4c..4c+4`; the sixteen f16 scales (then, with offsets, the
//! sixteen f16 offsets) follow in a buffer of their own. One `vpdpbusd` with four activation
//! values broadcast then forms a quad's products for sixteen columns at once: the columns
//! live in lanes, so no tile ever sums horizontally, and the scales stay f16 as stored.
//!
//! The arithmetic per (row, column), at every level and in every tile: `acc = 0`, then for
//! each block in order `i = Σ q·x` over its 32 values (an exact integer), `acc = fma(f32(i),
//! d_w·d_x, acc)`, and with offsets `acc = fma(m_w, s_x, acc)`. Integer sums are exact however
//! they are grouped, so only those float steps are pinned, and a row gives the same bits
//! whatever else shares the call: scalar, AVX2 and AVX-512 VNNI alike.

use std::ops::Range;
use std::sync::Arc;

use half::f16;

use super::{OutPtr, QuantizedActs, QK};
use crate::kernel_level::KernelLevel;

/// Weight columns per group (the lanes of one 512-bit vector).
pub(super) const GROUP: usize = 16;
/// Bytes of one quad vector: four bytes for each of the group's columns.
const VEC: usize = 64;

/// One cache line, so a panel's vectors are aligned loads.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; VEC]);

/// A zero-filled, 64-byte-aligned byte buffer.
pub(super) struct Lines(Vec<Line>);

impl Lines {
    fn zeroed(bytes: usize) -> Self {
        Self(vec![Line([0; VEC]); bytes.div_ceil(VEC)])
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes with no padding.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u8, self.0.len() * VEC) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u8, self.0.len() * VEC) }
    }
}

/// What a format adds to the shared panel kernels.
pub(super) trait PanelFormat {
    /// Whether a block's values are nibbles (two quads per vector: values `4u..4u+4` in the
    /// low nibbles and `16+4u..` in the high ones, ggml's byte order) or a byte each.
    const NIBBLES: bool;
    /// Whether sixteen f16 offsets follow the sixteen f16 scales of each (group, block).
    const HAS_MIN: bool;
    /// What the stored unsigned value exceeds the multiplied one by (Q8_0 keeps `q + 128`).
    const OFFSET: i32;
    /// Bytes of one (group, block)'s quads.
    const QUAD_BYTES: usize = if Self::NIBBLES { QK / 2 * GROUP } else { QK * GROUP };
}
/// A weight matrix `[n, k]` as panels: the quads and the f16 scales (and offsets), shared by
/// clones (a tied embedding reads its rows from the LM head's matrix).
#[derive(Clone)]
pub(super) struct Panel {
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) quads: Arc<Lines>,
    pub(super) scales: Arc<Lines>,
    pub(super) level: KernelLevel,
}

impl Panel {
    /// Builds the panels of format `F` from `block(c, b)`: column `c`'s block `b` as its
    /// stored value bytes (16 nibble bytes or 32 bytes, ggml's order, in the form the format
    /// keeps), its f16 scale and, with offsets, its f16 offset.
    pub(super) fn build<F: PanelFormat>(
        n: usize,
        k: usize,
        mut block: impl FnMut(usize, usize) -> ([u8; QK], f16, f16),
    ) -> Self {
        let (kb, groups) = (k / QK, n.div_ceil(GROUP));
        let scale_bytes = Self::scale_bytes::<F>();
        let mut quads = Lines::zeroed(groups * kb * F::QUAD_BYTES);
        let mut scales = Lines::zeroed(groups * kb * scale_bytes);
        let (qb, sb) = (quads.bytes_mut(), scales.bytes_mut());
        let vecs = F::QUAD_BYTES / VEC;
        for c in 0..n {
            let (g, lane) = (c / GROUP, c % GROUP);
            for b in 0..kb {
                let (values, d, m) = block(c, b);
                let at = (g * kb + b) * F::QUAD_BYTES + 4 * lane;
                for v in 0..vecs {
                    qb[at + v * VEC..at + v * VEC + 4].copy_from_slice(&values[4 * v..4 * v + 4]);
                }
                let at = (g * kb + b) * scale_bytes + 2 * lane;
                sb[at..at + 2].copy_from_slice(&d.to_le_bytes());
                if F::HAS_MIN {
                    sb[at + 2 * GROUP..at + 2 * GROUP + 2].copy_from_slice(&m.to_le_bytes());
                }
            }
        }
        Self { n, k, quads: Arc::new(quads), scales: Arc::new(scales), level: KernelLevel::current() }
    }

    /// Whether `other` reads the same stored panels (not a copy).
    pub(super) fn shares_storage_with(&self, other: &Panel) -> bool {
        Arc::ptr_eq(&self.quads, &other.quads) && Arc::ptr_eq(&self.scales, &other.scales)
    }

    fn scale_bytes<F: PanelFormat>() -> usize {
        if F::HAS_MIN {
            4 * GROUP
        } else {
            2 * GROUP
        }
    }

    /// Column `c`'s block `b`: its 32 values as multiplied, its scale and its offset (0
    /// without offsets).
    pub(super) fn column_block<F: PanelFormat>(&self, c: usize, b: usize) -> ([i32; QK], f32, f32) {
        let (g, lane, kb) = (c / GROUP, c % GROUP, self.k / QK);
        let at = (g * kb + b) * F::QUAD_BYTES;
        let quads = &self.quads.bytes()[at..at + F::QUAD_BYTES];
        let values = std::array::from_fn(|i| {
            let byte = |v: usize| quads[v * VEC + 4 * lane + i % 4] as i32;
            let q = match (F::NIBBLES, i < QK / 2) {
                (true, true) => byte(i / 4) & 0x0F,
                (true, false) => byte((i - QK / 2) / 4) >> 4,
                (false, _) => byte(i / 4),
            };
            q - F::OFFSET
        });
        let sb = Self::scale_bytes::<F>();
        let s = &self.scales.bytes()[(g * kb + b) * sb..];
        let half = |o: usize| f16::from_le_bytes([s[o], s[o + 1]]).to_f32();
        let m = if F::HAS_MIN { half(32 + 2 * lane) } else { 0.0 };
        (values, half(2 * lane), m)
    }

    /// `out[rows, cols]` on the process's kernels (`cols` starts at a group boundary).
    ///
    /// # Safety
    /// See `TileKernel::block`.
    pub(super) unsafe fn block<F: PanelFormat + Simd>(
        &self,
        acts: &QuantizedActs,
        rows: Range<usize>,
        cols: Range<usize>,
        out: OutPtr,
    ) {
        debug_assert!(cols.start.is_multiple_of(GROUP));
        match self.level {
            // SAFETY: the caller's contract covers the ranges.
            KernelLevel::Scalar => unsafe { scalar_block::<F>(self, acts, rows, cols, out) },
            // SAFETY: a level is only set where the CPU supports it.
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2 => unsafe { avx2::block::<F>(self, acts, rows, cols, out) },
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => unsafe { avx512::block::<F>(self, acts, rows, cols, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unsafe { scalar_block::<F>(self, acts, rows, cols, out) },
        }
    }
}

/// The SIMD halves of a format (x86-64); a unit is two quads of a (group, block).
#[cfg(target_arch = "x86_64")]
pub(super) trait Simd {
    /// The byte offsets in a block's activations of each unit's two quads.
    const XOFF: [[usize; 2]; 4];
    /// Unit `u`'s two quad vectors, unsigned (AVX-512).
    ///
    /// # Safety
    /// `p` is a (group, block)'s aligned quads; AVX-512 BW is available.
    unsafe fn unit512(p: *const u8, u: usize) -> [std::arch::x86_64::__m512i; 2];
    /// Unit `u`'s quads for the eight columns of half `h`, prepared for `dot256`.
    ///
    /// # Safety
    /// As `unit512`; AVX2 is available.
    unsafe fn unit256(p: *const u8, u: usize, h: usize) -> [std::arch::x86_64::__m256i; 4];
    /// The exact int32 products of a prepared unit with the two broadcast activation quads.
    ///
    /// # Safety
    /// AVX2 is available.
    unsafe fn dot256(
        w: [std::arch::x86_64::__m256i; 4],
        x0: std::arch::x86_64::__m256i,
        x1: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i;
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) trait Simd {}

/// One output element.
fn dot_scalar<F: PanelFormat>(w: &Panel, a: &QuantizedActs, r: usize, c: usize) -> f32 {
    let (xq, xd) = a.row(r);
    let kb = w.k / QK;
    let mut acc = 0f32;
    for b in 0..kb {
        let (q, dw, mw) = w.column_block::<F>(c, b);
        let x = &xq[b * QK..(b + 1) * QK];
        let i: i32 = q.iter().zip(x).map(|(&q, &x)| q * x as i32).sum();
        acc = (i as f32).mul_add(dw * xd[b], acc);
        if F::HAS_MIN {
            acc = mw.mul_add(a.s[r * kb + b], acc);
        }
    }
    acc
}

/// # Safety
/// See `TileKernel::block`.
unsafe fn scalar_block<F: PanelFormat>(
    w: &Panel,
    a: &QuantizedActs,
    rows: Range<usize>,
    cols: Range<usize>,
    out: OutPtr,
) {
    for r in rows {
        for c in cols.clone() {
            unsafe { out.write(r, c, dot_scalar::<F>(w, a, r, c)) };
        }
    }
}

/// Sixteen lanes of row `r` from column `c`, as many as lie inside the matrix.
///
/// # Safety
/// The caller owns those output elements.
#[inline]
unsafe fn write_lanes(out: OutPtr, n: usize, r: usize, c: usize, lanes: &[f32; GROUP]) {
    for (l, &v) in lanes.iter().enumerate().take(n.saturating_sub(c)) {
        unsafe { out.write(r, c + l, v) };
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{write_lanes, OutPtr, Panel, PanelFormat, QuantizedActs, Simd, GROUP, QK};

    /// Rows in a tile: each weight vector serves this many `vpdpbusd`s.
    const ROWS: usize = 8;

    /// # Safety
    /// AVX-512 VNNI is available; see `TileKernel::block`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn block<F: PanelFormat + Simd>(
        w: &Panel,
        a: &QuantizedActs,
        rows: Range<usize>,
        cols: Range<usize>,
        out: OutPtr,
    ) {
        let groups = cols.start / GROUP..cols.end.div_ceil(GROUP);
        let mut r = rows.start;
        while r < rows.end {
            let step = (rows.end - r).min(ROWS);
            // SAFETY: the tiles stay inside `rows` and the groups of `cols`.
            unsafe {
                match step {
                    8 => groups_with::<F, 8, 1>(w, a, r, groups.clone(), out),
                    7 => groups_with::<F, 7, 1>(w, a, r, groups.clone(), out),
                    6 => groups_with::<F, 6, 1>(w, a, r, groups.clone(), out),
                    5 => groups_with::<F, 5, 1>(w, a, r, groups.clone(), out),
                    4 => groups_with::<F, 4, 2>(w, a, r, groups.clone(), out),
                    3 => groups_with::<F, 3, 2>(w, a, r, groups.clone(), out),
                    2 => groups_with::<F, 2, 2>(w, a, r, groups.clone(), out),
                    _ => groups_with::<F, 1, 2>(w, a, r, groups.clone(), out),
                }
            }
            r += step;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn groups_with<F: PanelFormat + Simd, const R: usize, const C: usize>(
        w: &Panel,
        a: &QuantizedActs,
        r: usize,
        groups: Range<usize>,
        out: OutPtr,
    ) {
        let mut g = groups.start;
        while g + C <= groups.end {
            unsafe { tile::<F, R, C>(w, a, r, g, out) };
            g += C;
        }
        while g < groups.end {
            unsafe { tile::<F, R, 1>(w, a, r, g, out) };
            g += 1;
        }
    }

    /// `R` rows from `r` times the `C` groups from `g`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<F: PanelFormat + Simd, const R: usize, const C: usize>(
        w: &Panel,
        a: &QuantizedActs,
        r: usize,
        g: usize,
        out: OutPtr,
    ) {
        let (k, kb) = (a.k, a.k / QK);
        let scale_bytes = Panel::scale_bytes::<F>();
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let (ad, asum) = (a.d[r * kb..(r + R) * kb].as_ptr(), a.isum[r * kb..(r + R) * kb].as_ptr());
        let am = if F::HAS_MIN { a.s[r * kb..(r + R) * kb].as_ptr() } else { ad };
        let wq = w.quads.bytes()[g * kb * F::QUAD_BYTES..(g + C) * kb * F::QUAD_BYTES].as_ptr();
        let ws = w.scales.bytes()[g * kb * scale_bytes..(g + C) * kb * scale_bytes].as_ptr();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for b in 0..kb {
            let mut sum = [[_mm512_setzero_si512(); C]; R];
            if F::OFFSET != 0 {
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a` (sliced above).
                    // `vpdpbusd` multiplies the stored unsigned values: start from `-OFFSET · Σ x`.
                    let init = _mm512_set1_epi32(-F::OFFSET * unsafe { *asum.add(i * kb + b) });
                    sum[i] = [init; C];
                }
            }
            for u in 0..4 {
                let mut wv = [[_mm512_setzero_si512(); 2]; C];
                for j in 0..C {
                    // SAFETY: block `b` of group `g + j` lies inside the panel (sliced above).
                    wv[j] = unsafe { F::unit512(wq.add((j * kb + b) * F::QUAD_BYTES), u) };
                }
                for i in 0..R {
                    let x = aq.wrapping_add(i * k + b * QK);
                    // SAFETY: the unit's activation quads lie inside block `b` of row `r + i`.
                    let (x0, x1) = unsafe {
                        (
                            _mm512_set1_epi32((x.add(F::XOFF[u][0]) as *const i32).read_unaligned()),
                            _mm512_set1_epi32((x.add(F::XOFF[u][1]) as *const i32).read_unaligned()),
                        )
                    };
                    for j in 0..C {
                        sum[i][j] = _mm512_dpbusd_epi32(sum[i][j], wv[j][0], x0);
                        sum[i][j] = _mm512_dpbusd_epi32(sum[i][j], wv[j][1], x1);
                    }
                }
            }
            for j in 0..C {
                let s = ws.wrapping_add((j * kb + b) * scale_bytes);
                // SAFETY: the (group, block)'s scales (and offsets) lie inside the panel.
                let dw = unsafe { _mm512_cvtph_ps(_mm256_load_si256(s as *const __m256i)) };
                let mw = if F::HAS_MIN {
                    unsafe { _mm512_cvtph_ps(_mm256_load_si256(s.add(32) as *const __m256i)) }
                } else {
                    dw
                };
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a`.
                    let (dx, sx) = unsafe { (*ad.add(i * kb + b), *am.add(i * kb + b)) };
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(dx));
                    acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i][j]), scale, acc[i][j]);
                    if F::HAS_MIN {
                        acc[i][j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), acc[i][j]);
                    }
                }
            }
        }
        for i in 0..R {
            for j in 0..C {
                let mut lanes = [0f32; GROUP];
                // SAFETY: sixteen floats fit `lanes`.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
                // SAFETY: the caller owns these output elements.
                unsafe { write_lanes(out, w.n, r + i, (g + j) * GROUP, &lanes) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays by the same (i, j)
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{write_lanes, OutPtr, Panel, PanelFormat, QuantizedActs, Simd, GROUP, QK};

    /// Rows in a tile (sixteen registers hold their eight-column sums and accumulators).
    const ROWS: usize = 4;

    /// # Safety
    /// AVX2, FMA and F16C are available; see `TileKernel::block`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block<F: PanelFormat + Simd>(
        w: &Panel,
        a: &QuantizedActs,
        rows: Range<usize>,
        cols: Range<usize>,
        out: OutPtr,
    ) {
        let mut r = rows.start;
        while r < rows.end {
            let step = (rows.end - r).min(ROWS);
            for g in cols.start / GROUP..cols.end.div_ceil(GROUP) {
                // SAFETY: the tiles stay inside `rows` and the groups of `cols`.
                unsafe {
                    match step {
                        4 => tile::<F, 4>(w, a, r, g, out),
                        3 => tile::<F, 3>(w, a, r, g, out),
                        2 => tile::<F, 2>(w, a, r, g, out),
                        _ => tile::<F, 1>(w, a, r, g, out),
                    }
                }
            }
            r += step;
        }
    }

    /// `R` rows from `r` times group `g`, one eight-column half after the other.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<F: PanelFormat + Simd, const R: usize>(
        w: &Panel,
        a: &QuantizedActs,
        r: usize,
        g: usize,
        out: OutPtr,
    ) {
        let (k, kb) = (a.k, a.k / QK);
        let scale_bytes = Panel::scale_bytes::<F>();
        let aq = a.qs[r * k..(r + R) * k].as_ptr();
        let ad = a.d[r * kb..(r + R) * kb].as_ptr();
        let am = if F::HAS_MIN { a.s[r * kb..(r + R) * kb].as_ptr() } else { ad };
        let wq = w.quads.bytes()[g * kb * F::QUAD_BYTES..(g + 1) * kb * F::QUAD_BYTES].as_ptr();
        let ws = w.scales.bytes()[g * kb * scale_bytes..(g + 1) * kb * scale_bytes].as_ptr();
        let mut lanes = [[0f32; GROUP]; R];
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..kb {
                let mut sum = [_mm256_setzero_si256(); R];
                for u in 0..4 {
                    // SAFETY: block `b` of group `g` lies inside the panel (sliced above).
                    let wv = unsafe { F::unit256(wq.add(b * F::QUAD_BYTES), u, h) };
                    for i in 0..R {
                        let x = aq.wrapping_add(i * k + b * QK);
                        // SAFETY: the unit's activation quads lie inside block `b` of row `r + i`.
                        let (x0, x1) = unsafe {
                            (
                                _mm256_set1_epi32((x.add(F::XOFF[u][0]) as *const i32).read_unaligned()),
                                _mm256_set1_epi32((x.add(F::XOFF[u][1]) as *const i32).read_unaligned()),
                            )
                        };
                        sum[i] = _mm256_add_epi32(sum[i], unsafe { F::dot256(wv, x0, x1) });
                    }
                }
                let s = ws.wrapping_add(b * scale_bytes + 16 * h);
                // SAFETY: the half's scales (and offsets) lie inside the panel.
                let dw = unsafe { _mm256_cvtph_ps(_mm_load_si128(s as *const __m128i)) };
                let mw = if F::HAS_MIN {
                    unsafe { _mm256_cvtph_ps(_mm_load_si128(s.add(32) as *const __m128i)) }
                } else {
                    dw
                };
                for i in 0..R {
                    // SAFETY: block `b` of row `r + i` lies inside `a`.
                    let (dx, sx) = unsafe { (*ad.add(i * kb + b), *am.add(i * kb + b)) };
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(dx));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[i]), scale, acc[i]);
                    if F::HAS_MIN {
                        acc[i] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx), acc[i]);
                    }
                }
            }
            for i in 0..R {
                // SAFETY: eight floats fit the half.
                unsafe { _mm256_storeu_ps(lanes[i].as_mut_ptr().add(8 * h), acc[i]) };
            }
        }
        for i in 0..R {
            // SAFETY: the caller owns these output elements.
            unsafe { write_lanes(out, w.n, r + i, g * GROUP, &lanes[i]) };
        }
    }
}
