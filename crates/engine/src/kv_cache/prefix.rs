//! Prefix-cache identity: what names the K/V content of a full block, so that a later sequence
//! with the same leading tokens can reuse the block instead of recomputing it.
//!
//! A full block's [`BlockHash`] is SHA-256 over its parent block's hash and its own token ids
//! (little-endian u32), so it names the block's whole prefix, not only its tokens. The chain
//! starts at a root hash ([`root_hash`]) over the model's key and an optional per-request
//! `cache_salt` (vLLM's field): requests with different salts never share blocks, which isolates
//! tenants that must not learn, by timing, what others have sent. A block is cached per KV-cache
//! group ([`CacheKey`]): groups hold different layers, so the same tokens have different K/V in
//! each. SHA-256 makes collisions practically impossible; a hit still compares the tokens.

use sha2::{Digest, Sha256};

/// SHA-256 naming a block's content and everything before it.
pub type BlockHash = [u8; 32];

/// Where a cached block lives: its KV-cache group and its chained hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub group: u32,
    pub hash: BlockHash,
}

/// The hash the chain of a sequence's blocks starts from: the model's key and the salt.
pub fn root_hash(model_key: &str, salt: Option<&str>) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"wick-prefix-cache-v1\0");
    h.update((model_key.len() as u64).to_le_bytes());
    h.update(model_key.as_bytes());
    match salt {
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        None => h.update([0u8]),
    }
    h.finalize().into()
}

/// The hash of a full block of `tokens` after the block named `parent`.
pub fn chain_hash(parent: &BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(parent);
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// Extends `hashes` (the chain so far of `tokens`' full blocks, from `root`) to every full block
/// of `tokens`.
pub fn extend_chain(hashes: &mut Vec<BlockHash>, root: &BlockHash, tokens: &[u32], block_size: usize) {
    let full = tokens.len() / block_size;
    while hashes.len() < full {
        let j = hashes.len();
        let parent = hashes.last().unwrap_or(root);
        let next = chain_hash(parent, &tokens[j * block_size..(j + 1) * block_size]);
        hashes.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_hash_names_its_whole_prefix() {
        let root = root_hash("m", None);
        let mut a = Vec::new();
        extend_chain(&mut a, &root, &[1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
        assert_eq!(a.len(), 2, "only full blocks are hashed");
        let mut b = Vec::new();
        extend_chain(&mut b, &root, &[9, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], b[1], "same tokens after a different prefix is a different block");
        let mut c = Vec::new();
        extend_chain(&mut c, &root, &[1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13], 4);
        assert_eq!(&c[..2], &a[..], "the chain is deterministic and extends");
    }

    #[test]
    fn salt_and_model_separate_the_chains() {
        let tokens = [1, 2, 3, 4];
        let h = |model: &str, salt: Option<&str>| chain_hash(&root_hash(model, salt), &tokens);
        assert_ne!(h("m", None), h("m", Some("tenant-a")));
        assert_ne!(h("m", Some("tenant-a")), h("m", Some("tenant-b")));
        assert_ne!(h("m", None), h("other", None));
        assert_ne!(h("m", Some("")), h("m", None), "an empty salt is still a salt");
        assert_eq!(h("m", Some("tenant-a")), h("m", Some("tenant-a")));
    }
}
