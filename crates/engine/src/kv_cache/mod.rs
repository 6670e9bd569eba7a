//! The paged KV cache: the layout of a model's layers over KV-cache groups (`KvLayout`), a
//! refcounted pool of pages shared by every group with the automatic prefix cache over it
//! (`BlockPool`, `prefix`), and the storage the model writes into and attends over
//! (`PagedKvCache`).

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
mod attention_scalar;
pub mod block_pool;
pub mod dtype;
pub mod layout;
pub mod paged;
pub mod prefix;

pub use attention::{paged_attention, AttnParams};
pub use block_pool::BlockPool;
pub use dtype::KvDtype;
pub use layout::{AttentionKind, KvLayout, NO_BLOCK};
pub use paged::PagedKvCache;
pub use prefix::{BlockHash, CacheKey};
