//! The paged KV cache: a refcounted block pool (`BlockPool`) and the per-layer storage the
//! model writes into and attends over (`PagedKvCache`).

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
mod attention_scalar;
pub mod block_pool;
pub mod layout;
pub mod paged;

pub use attention::{paged_attention, AttnParams};
pub use block_pool::BlockPool;
pub use layout::{AttentionKind, KvLayout};
pub use paged::PagedKvCache;
