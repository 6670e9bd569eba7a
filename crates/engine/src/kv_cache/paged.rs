//! `PagedKvCache`: per-layer K/V storage in fixed-size blocks, and ragged paged attention.

/// Per-layer K/V storage.
pub struct PagedKvCache {
    pub num_blocks: usize,
    pub block_size: usize,
}
