//! Shared helpers for wick's integration tests.
pub mod tiny_hf;
pub mod tiny_model;

/// One block table per KV-cache group for a sequence: group `g` uses `table`'s ids shifted by
/// `g * stride`, so groups never share a block (a cache of `num_groups * stride` blocks).
pub fn group_tables(num_groups: usize, table: &[u32], stride: usize) -> Vec<Vec<u32>> {
    (0..num_groups).map(|g| table.iter().map(|b| b + (g * stride) as u32).collect()).collect()
}
