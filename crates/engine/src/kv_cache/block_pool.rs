//! `BlockPool`: fixed-size KV blocks, refcounted, with a free list.

/// Refcounted pool of KV block ids.
pub struct BlockPool {}
