//! The paged KV cache: a refcounted block pool (`BlockPool`) and the per-layer storage the
//! model writes into and attends over (`PagedKvCache`).

pub mod attention;
pub mod block_pool;
pub mod paged;

pub use block_pool::BlockPool;
pub use attention::{paged_attention, AttnParams};
pub use paged::PagedKvCache;
