//! Column-interleaved weight panels and their kernels: the layout and arithmetic that Q8_0,
//! Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K share (`PanelMatrix<F>`, one instance per format).
//!
//! Sixteen weight columns form a group. Per (group, 32-value block) each column's values are
//! eight 4-value quads, and one 64-byte vector holds two quads of all sixteen columns (column
//! `c` in bytes `4c..4c+4`: one quad in the low nibbles and one in the high ones, or for Q8_0
//! a byte per value and a vector per quad). Fifth bits lie in bit planes beside the nibbles,
//! one mask bit per byte of a vector (AVX-512 adds them under a mask register); Q6_K's two high
//! bits in 2-bit fields, four per byte (`high_pair`); the
//! scales follow in a buffer of their own as stored (f16, 6-bit or int8). One `vpdpbusd` with
//! four activation values broadcast forms a quad's products for sixteen columns at once: the
//! columns live in lanes, so no tile ever sums horizontally, and each weight vector is
//! unpacked once for up to eight activation rows.
//!
//! The arithmetic per (row, column), the same at every level and in every tile:
//! - a sub-block's integer sum `i = Σ (q − o)·x` (exact, however it is grouped), `o` the
//!   format's offset;
//! - legacy formats, block after block: `acc = fma(f32(i), d_w·d_x, acc)`, then with offsets
//!   `acc = fma(m_w, s_x, acc)`;
//! - K-quants, super-block after super-block: `S = fma(f32(i_j), f32(sc_j), S)` over its
//!   sub-blocks in order (each product exact: at most 2^24), `acc = fma(S, d·d_x, acc)`, then
//!   with mins `M = Σ m_j·Σx_j` (exact, `vpdpwssd`) and `acc = fma(−f32(M), dmin·d_x, acc)`.
//!   (A float `S` rather than an exact integer `vpmulld` sum: one fewer uop on the port that
//!   runs `vpdpbusd`, 5–8% faster.)
//!
//! Only those float steps are pinned, so a row gives the same bits whatever else shares the
//! call: scalar, AVX2 and AVX-512 VNNI alike.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::{ActBlocks, OutPtr, QuantizedActs, TileKernel, QK};
use crate::kernel_level::KernelLevel;
use crate::{EngineError, Result};

/// Weight columns per group (the lanes of one 512-bit vector).
pub(super) const GROUP: usize = 16;
/// Bytes of one quad vector: four bytes for each of the group's columns.
const VEC: usize = 64;
/// Blocks of 32 per K-quant super-block.
pub(super) const SUPER_BLOCKS: usize = 8;

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

/// What a format is to the panel kernels. A format states what sets it apart; the rest
/// defaults to Q4_1's kind: nibbles paired as ggml stores them, one f16 scale per block.
pub trait PanelFormat {
    /// The format's name (`Q4_K`).
    const NAME: &'static str;
    /// Whether values are nibbles (plus `HIGH_BITS` high bits) or a byte each.
    const NIBBLES: bool;
    /// Bits above the nibbles: 0, 1 (Q5_0, Q5_1, Q5_K: a mask plane) or 2 (Q6_K: 2-bit fields).
    const HIGH_BITS: usize = 0;
    /// What a stored (unsigned) value exceeds the multiplied one by.
    const OFFSET: i32 = 0;
    /// K-quant super-blocks (integer sub-block scales, one f16 `d` per 256 values), or one
    /// f16 scale per block of 32.
    const SUPER: bool = false;
    /// Sub-blocks per block of 32 (Q6_K's scales cover 16 values).
    const SUBS: usize = 1;
    /// Whether the sub-block scales are signed (Q6_K).
    const SIGNED: bool = false;
    /// An offset per block (Q4_1's `m`) or a 6-bit min per sub-block (Q4_K, Q5_K).
    const HAS_MIN: bool = false;
    /// The activation quads each vector's two halves (low, high nibbles; Q8_0: the vector
    /// pair) multiply, as byte offsets in the block: unit `u`'s are `XOFF[u]`. By default
    /// ggml's nibble bytes: values `4u..4u+4` low, `16+4u..` high.
    const XOFF: [[usize; 2]; 4] = [[0, 16], [4, 20], [8, 24], [12, 28]];

    /// Bytes of a (group, block)'s quads.
    const QUAD_BYTES: usize = if Self::NIBBLES { QK / 2 * GROUP } else { QK * GROUP };
    /// Bytes of a (group, block)'s high bits.
    const BIT_BYTES: usize = Self::HIGH_BITS * QK * GROUP / 8;
    /// Bytes of the sub-block scales of a (group, super-block).
    const SC_BYTES: usize = if Self::SUPER { SUPER_BLOCKS * Self::SUBS * GROUP } else { 0 };
    /// Bytes of the mins of a (group, super-block), in pairs: `[t][lane][m_2t, m_2t+1]`.
    const MIN_BYTES: usize = if Self::SUPER && Self::HAS_MIN { SUPER_BLOCKS * GROUP } else { 0 };
    /// Bytes of a scale record: per (group, block) or (group, super-block), the sub-block
    /// scales, the mins, sixteen f16 `d` and (with offsets or mins) sixteen f16 `m`/`dmin`.
    const SCALE_BYTES: usize = Self::SC_BYTES + Self::MIN_BYTES + if Self::HAS_MIN { 4 * GROUP } else { 2 * GROUP };
    /// Blocks of 32 per scale record.
    const PER_RECORD: usize = if Self::SUPER { SUPER_BLOCKS } else { 1 };
}

/// A weight matrix `[n, k]` of format `F` on the panel kernels (`Q8Matrix`, `Q41Matrix`, …).
pub struct PanelMatrix<F> {
    pub(super) panel: Panel,
    format: PhantomData<F>,
}

impl<F> Clone for PanelMatrix<F> {
    fn clone(&self) -> Self {
        Self { panel: self.panel.clone(), format: PhantomData }
    }
}

impl<F: PanelFormat> std::fmt::Debug for PanelMatrix<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}, {}]", F::NAME, self.panel.n, self.panel.k)
    }
}

impl<F: PanelFormat> PanelMatrix<F> {
    /// Whether `other` reads the same stored panels (not a copy).
    pub fn shares_storage_with(&self, other: &Self) -> bool {
        self.panel.shares_storage_with(&other.panel)
    }

    /// `q`'s shape `[n, k]` and stored bytes, checked to be `dtype` and to hold `n · k / values`
    /// blocks of `block_bytes`.
    pub(super) fn stored(
        q: &QTensor,
        dtype: GgmlDType,
        values: usize,
        block_bytes: usize,
    ) -> Result<(usize, usize, Cow<'_, [u8]>)> {
        if q.dtype() != dtype {
            return Err(EngineError::Load(format!("{} weights expected, got {:?}", F::NAME, q.dtype())));
        }
        let (n, k) = q.shape().dims2()?;
        let bytes = q.data()?;
        if !k.is_multiple_of(values) || bytes.len() != n * k / values * block_bytes {
            return Err(EngineError::Load(format!("bad {} data: {} bytes for [{n}, {k}]", F::NAME, bytes.len())));
        }
        Ok((n, k, bytes))
    }

    /// The panels of `values(c, b)` and `scales(c, r)` (see `Panel::build`).
    pub(super) fn build(
        n: usize,
        k: usize,
        values: impl Fn(usize, usize) -> [u8; QK] + Sync,
        scales: impl Fn(usize, usize) -> ColumnScales,
    ) -> Self {
        Self { panel: Panel::build::<F>(n, k, values, scales), format: PhantomData }
    }

    /// The same weights run by the kernels of `level` (tests compare the levels).
    pub fn with_level(mut self, level: KernelLevel) -> Self {
        assert!(level.supported(), "this CPU cannot run the {level} kernels");
        self.panel.level = level;
        self
    }
}

impl<F: PanelFormat + Sync + Send> TileKernel for PanelMatrix<F> {
    fn dims(&self) -> (usize, usize) {
        (self.panel.n, self.panel.k)
    }

    fn col_chunk(&self) -> usize {
        2 * GROUP
    }

    fn act_blocks(&self) -> ActBlocks {
        if F::SUPER {
            ActBlocks::Q8K
        } else {
            ActBlocks::Q8_0
        }
    }

    unsafe fn block(&self, acts: &QuantizedActs, rows: Range<usize>, cols: Range<usize>, out: OutPtr) {
        // SAFETY: the caller's contract.
        unsafe { self.panel.block::<F>(acts, rows, cols, out) }
    }
}

/// One column's scales for a scale record (a block, or a K-quant super-block).
#[derive(Default, Clone, Copy)]
pub(super) struct ColumnScales {
    pub d: f16,
    /// Q4_1's offset, or a K-quant's `dmin`.
    pub m: f16,
    /// Sub-block scales (K-quants; as bytes, int8 where `SIGNED`).
    pub sc: [u8; 16],
    /// Sub-block mins (Q4_K, Q5_K).
    pub mins: [u8; 8],
}

/// A weight matrix `[n, k]` as panels, shared by clones (a tied embedding reads its rows from
/// the LM head's matrix).
#[derive(Clone)]
pub(super) struct Panel {
    pub(super) n: usize,
    pub(super) k: usize,
    quads: Arc<Lines>,
    bits: Arc<Lines>,
    scales: Arc<Lines>,
    pub(super) level: KernelLevel,
}

impl Panel {
    /// Builds the panels of format `F` from `values(c, b)`, column `c`'s block `b` as stored
    /// values (multiplied value plus `OFFSET`), and `scales(c, r)`, column `c`'s scale record
    /// `r` (block, or super-block). Groups are spread over the compute pool.
    pub(super) fn build<F: PanelFormat>(
        n: usize,
        k: usize,
        values: impl Fn(usize, usize) -> [u8; QK] + Sync,
        scales: impl Fn(usize, usize) -> ColumnScales,
    ) -> Self {
        let (kb, groups) = (k / QK, n.div_ceil(GROUP));
        let records = kb / F::PER_RECORD;
        let pool = crate::thread_pool::pool();
        // A group's sixteen columns of block `b` (padding columns stay zero).
        let block = |g: usize, b: usize| -> [[u8; QK]; GROUP] {
            std::array::from_fn(|lane| if g * GROUP + lane < n { values(g * GROUP + lane, b) } else { [0; QK] })
        };
        let mut quads = Lines::zeroed(groups * kb * F::QUAD_BYTES);
        pool.for_each_chunk_mut(quads.bytes_mut(), kb * F::QUAD_BYTES, |g, out| {
            for (b, out) in out.chunks_exact_mut(F::QUAD_BYTES).enumerate() {
                for (lane, v) in block(g, b).iter().enumerate() {
                    for (u, &[x0, x1]) in F::XOFF.iter().enumerate() {
                        for i in 0..4 {
                            if F::NIBBLES {
                                out[u * VEC + 4 * lane + i] = (v[x0 + i] & 0x0F) | (v[x1 + i] & 0x0F) << 4;
                            } else {
                                out[2 * u * VEC + 4 * lane + i] = v[x0 + i];
                                out[(2 * u + 1) * VEC + 4 * lane + i] = v[x1 + i];
                            }
                        }
                    }
                }
            }
        });
        // One bit plane (fifth bits): per unit and half a 64-bit mask whose bit `4·lane + i` is
        // bit 4 of the half's value `i`. Two (Q6_K): see `high_pair`.
        let mut bits = Lines::zeroed(groups * kb * F::BIT_BYTES);
        if F::HIGH_BITS == 2 {
            pool.for_each_chunk_mut(bits.bytes_mut(), kb * F::BIT_BYTES, |g, out| {
                for (b, out) in out.chunks_exact_mut(F::BIT_BYTES).enumerate() {
                    for (lane, v) in block(g, b).iter().enumerate() {
                        for (u, xoff) in F::XOFF.iter().enumerate() {
                            for (half, &x) in xoff.iter().enumerate() {
                                for i in 0..4 {
                                    let (at, shift) = high_pair(u, half, lane, i);
                                    out[at] |= (v[x + i] >> 4 & 3) << shift;
                                }
                            }
                        }
                    }
                }
            });
        } else if F::BIT_BYTES > 0 {
            pool.for_each_chunk_mut(bits.bytes_mut(), kb * F::BIT_BYTES, |g, out| {
                for (b, out) in out.chunks_exact_mut(F::BIT_BYTES).enumerate() {
                    let v = block(g, b);
                    for (mask, out) in out.chunks_exact_mut(8).enumerate() {
                        let x = F::XOFF[mask / 2][mask % 2];
                        let m =
                            (0..4 * GROUP).fold(0u64, |m, bit| m | ((v[bit / 4][x + bit % 4] >> 4 & 1) as u64) << bit);
                        out.copy_from_slice(&m.to_le_bytes());
                    }
                }
            });
        }
        let mut scale_buf = Lines::zeroed(groups * records * F::SCALE_BYTES);
        let sb = scale_buf.bytes_mut();
        for c in 0..n {
            let (g, lane) = (c / GROUP, c % GROUP);
            for r in 0..records {
                let s = scales(c, r);
                let at = (g * records + r) * F::SCALE_BYTES;
                for (j, &sc) in s.sc.iter().enumerate().take(F::SC_BYTES / GROUP) {
                    sb[at + j * GROUP + lane] = sc;
                }
                for (j, &m) in s.mins.iter().enumerate().take(F::MIN_BYTES / GROUP) {
                    sb[at + F::SC_BYTES + (j / 2) * 2 * GROUP + 2 * lane + j % 2] = m;
                }
                let at = at + F::SC_BYTES + F::MIN_BYTES + 2 * lane;
                sb[at..at + 2].copy_from_slice(&s.d.to_le_bytes());
                if F::HAS_MIN {
                    sb[at + 2 * GROUP..at + 2 * GROUP + 2].copy_from_slice(&s.m.to_le_bytes());
                }
            }
        }
        let (quads, bits, scales) = (Arc::new(quads), Arc::new(bits), Arc::new(scale_buf));
        Self { n, k, quads, bits, scales, level: KernelLevel::current() }
    }

    /// Whether `other` reads the same stored panels (not a copy).
    pub(super) fn shares_storage_with(&self, other: &Panel) -> bool {
        Arc::ptr_eq(&self.quads, &other.quads) && Arc::ptr_eq(&self.scales, &other.scales)
    }

    /// Column `c`'s block `b` as the values multiplied (stored minus `OFFSET`).
    pub(super) fn values<F: PanelFormat>(&self, c: usize, b: usize) -> [i32; QK] {
        let (g, lane, kb) = (c / GROUP, c % GROUP, self.k / QK);
        let q = &self.quads.bytes()[(g * kb + b) * F::QUAD_BYTES..][..F::QUAD_BYTES];
        let h = &self.bits.bytes()[(g * kb + b) * F::BIT_BYTES..][..F::BIT_BYTES];
        let mut out = [0; QK];
        for (u, xoff) in F::XOFF.iter().enumerate() {
            for (half, &x) in xoff.iter().enumerate() {
                for i in 0..4 {
                    let value = if F::NIBBLES {
                        let bit = 4 * lane + i;
                        let high = match F::HIGH_BITS {
                            2 => {
                                let (at, shift) = high_pair(u, half, lane, i);
                                (h[at] >> shift & 3) << 4
                            }
                            1 => (h[(u * 2 + half) * 8 + bit / 8] >> (bit % 8) & 1) << 4,
                            _ => 0,
                        };
                        (q[u * VEC + 4 * lane + i] >> (4 * half) & 0x0F) | high
                    } else {
                        q[(2 * u + half) * VEC + 4 * lane + i]
                    };
                    out[x + i] = value as i32 - F::OFFSET;
                }
            }
        }
        out
    }

    /// Column `c`'s scale record `r`.
    pub(super) fn scales<F: PanelFormat>(&self, c: usize, r: usize) -> ColumnScales {
        let (g, lane, records) = (c / GROUP, c % GROUP, self.k / QK / F::PER_RECORD);
        let s = &self.scales.bytes()[(g * records + r) * F::SCALE_BYTES..][..F::SCALE_BYTES];
        let mut out = ColumnScales::default();
        for j in 0..F::SC_BYTES / GROUP {
            out.sc[j] = s[j * GROUP + lane];
        }
        for j in 0..F::MIN_BYTES / GROUP {
            out.mins[j] = s[F::SC_BYTES + (j / 2) * 2 * GROUP + 2 * lane + j % 2];
        }
        let at = F::SC_BYTES + F::MIN_BYTES + 2 * lane;
        out.d = f16::from_le_bytes([s[at], s[at + 1]]);
        if F::HAS_MIN {
            out.m = f16::from_le_bytes([s[at + 2 * GROUP], s[at + 2 * GROUP + 1]]);
        }
        out
    }

    /// `out[rows, cols]` on the process's kernels (`cols` starts at a group boundary).
    ///
    /// # Safety
    /// See `TileKernel::block`.
    pub(super) unsafe fn block<F: PanelFormat>(
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

    /// Pointers to group `g`'s quads, bit planes and scale records.
    #[inline(always)]
    fn group<F: PanelFormat>(&self, g: usize, groups: usize) -> (*const u8, *const u8, *const u8) {
        let kb = self.k / QK;
        let records = kb / F::PER_RECORD;
        (
            self.quads.bytes()[g * kb * F::QUAD_BYTES..(g + groups) * kb * F::QUAD_BYTES].as_ptr(),
            self.bits.bytes()[g * kb * F::BIT_BYTES..(g + groups) * kb * F::BIT_BYTES].as_ptr(),
            self.scales.bytes()[g * records * F::SCALE_BYTES..(g + groups) * records * F::SCALE_BYTES].as_ptr(),
        )
    }
}

/// Where Q6_K's two high bits of value `i` of column `lane` in unit `u`'s `half` lie: a byte
/// of the unit pair's 64-byte vector (`4·lane + i`, as the quads) and the shift of the 2-bit
/// field in it. A byte holds `hi(u even, low) | hi(u odd, low) << 2 | hi(u even, high) << 4 |
/// hi(u odd, high) << 6`, so one shift and one `vpternlogd` under the mask `0x30` put a field
/// above its nibble.
#[inline(always)]
fn high_pair(u: usize, half: usize, lane: usize, i: usize) -> (usize, usize) {
    ((u / 2) * VEC + 4 * lane + i, 2 * (u % 2) + 4 * half)
}

/// Blocks ahead of the one in use whose weights a tile asks the memory system for: a model's
/// panels stream from DRAM (they are larger than the caches), and a tile takes long enough per
/// block that the hardware prefetcher alone leaves it waiting (1B Q4_K_M, 16 sequences: +20%).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BLOCKS: usize = 8;

/// Blocks ahead that a one-row tile (a decode step) asks for, into L2: 8 KiB of Q4_K. It
/// reads a block in far less than a DRAM latency, so it must ask further ahead than a tile of
/// eight rows; asked into L1 (as the eight-row tiles do) that far ahead, the requests evict
/// each other from L1's 32 KiB. Zen 4 EPYC, back to back, 1B tg64: Q4_K_M 33–36 tok/s with
/// 64 blocks into L1 → 36–39 with 24–32 into L2, Q8_0 23 → 26–27, SmolLM2 194 → 227.
#[cfg(target_arch = "x86_64")]
const ONE_ROW_PREFETCH_BLOCKS: usize = 32;

/// Prefetches the quads and bit planes of a block ahead of block `at` of a tile's group
/// (blocks counted from the group's first, `wq` and `wh` its data): `PREFETCH_BLOCKS ·
/// TILE_ROWS / rows` ahead into L1, or for one row `ONE_ROW_PREFETCH_BLOCKS` ahead into L2. A
/// tile of fewer rows spends less time per block, so it asks further ahead. Only a hint: an
/// address past the panel is never read.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_block<F: PanelFormat>(wq: *const u8, wh: *const u8, at: usize, rows: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
    /// One line, into L1 (`T0`) or L2 (`T1`).
    #[inline(always)]
    fn line<const HINT: i32>(p: *const u8) {
        // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
        unsafe { _mm_prefetch::<HINT>(p as *const i8) };
    }
    let one_row = rows <= 1;
    let at = at + if one_row { ONE_ROW_PREFETCH_BLOCKS } else { PREFETCH_BLOCKS * super::acts::TILE_ROWS / rows };
    let fetch = |p: *const u8| if one_row { line::<_MM_HINT_T1>(p) } else { line::<_MM_HINT_T0>(p) };
    let q = wq.wrapping_add(at * F::QUAD_BYTES);
    for l in (0..F::QUAD_BYTES).step_by(64) {
        fetch(q.wrapping_add(l));
    }
    let h = wh.wrapping_add(at * F::BIT_BYTES);
    for l in (0..F::BIT_BYTES).step_by(64) {
        fetch(h.wrapping_add(l));
    }
}

/// The sum of `x` over sub-block `j` (of `F::SUBS`) of block `b` of row `r`: what an offset
/// or a min multiplies.
#[inline(always)]
fn sub_sum<F: PanelFormat>(a: &QuantizedActs, at: usize, j: usize) -> i32 {
    split_sum::<F>(a.isum[at], a.isum16[at], j)
}

/// Sub-block `j`'s sum from a block's sum `all` and the sum of its first 16 values `first`.
#[inline(always)]
fn split_sum<F: PanelFormat>(all: i32, first: i32, j: usize) -> i32 {
    match (F::SUBS, j) {
        (1, _) => all,
        (_, 0) => first,
        _ => all - first,
    }
}

/// The two sums of x over sub-blocks `2t` and `2t + 1` of a super-block, as the int16 pair of
/// one 32-bit lane (each fits: at most 32 · 127).
#[inline(always)]
fn sum_pair(a: &QuantizedActs, at: usize, t: usize) -> i32 {
    int16_pair(a.isum[at + 2 * t], a.isum[at + 2 * t + 1])
}

/// `lo` and `hi` (each within int16) as the int16 pair of one 32-bit lane.
#[inline(always)]
fn int16_pair(lo: i32, hi: i32) -> i32 {
    (lo as u16 as u32 | (hi as u32) << 16) as i32
}

/// One output element.
fn dot_scalar<F: PanelFormat>(w: &Panel, a: &QuantizedActs, r: usize, c: usize) -> f32 {
    let (xq, xd) = a.row(r);
    let kb = w.k / QK;
    let at = r * kb;
    let mut acc = 0f32;
    for rec in 0..kb / F::PER_RECORD {
        let s = w.scales::<F>(c, rec);
        let (d, m) = (s.d.to_f32(), s.m.to_f32());
        let mut big = 0f32;
        for b in rec * F::PER_RECORD..(rec + 1) * F::PER_RECORD {
            let q = w.values::<F>(c, b);
            let x = &xq[b * QK..(b + 1) * QK];
            let len = QK / F::SUBS;
            for j in 0..F::SUBS {
                let i: i32 = (j * len..(j + 1) * len).map(|v| q[v] * x[v] as i32).sum();
                if F::SUPER {
                    let sc = s.sc[(b % SUPER_BLOCKS) * F::SUBS + j];
                    let sc = if F::SIGNED { sc as i8 as f32 } else { sc as f32 };
                    big = (i as f32).mul_add(sc, big);
                } else {
                    acc = (i as f32).mul_add(d * xd[b], acc);
                    if F::HAS_MIN {
                        acc = m.mul_add(a.s[at + b], acc);
                    }
                }
            }
        }
        if F::SUPER {
            let dx = xd[rec * SUPER_BLOCKS];
            acc = big.mul_add(d * dx, acc);
            if F::HAS_MIN {
                let first = at + rec * SUPER_BLOCKS;
                let mins: i32 = (0..SUPER_BLOCKS).map(|j| s.mins[j] as i32 * a.isum[first + j]).sum();
                acc = (-(mins as f32)).mul_add(m * dx, acc);
            }
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
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2;
