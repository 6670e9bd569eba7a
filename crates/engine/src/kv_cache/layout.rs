//! `KvLayout`: which KV-cache group each layer belongs to (stub until the KV-groups work
//! lands: one storage per layer, windows masked, not released).

/// How a layer attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    Full,
    /// A query at position p sees keys at positions > p - w.
    Sliding(usize),
}

/// The cache's shape: heads, head size and each layer's attention kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub layers: Vec<AttentionKind>,
}

impl KvLayout {
    pub fn new(layers: &[AttentionKind], num_kv_heads: usize, head_dim: usize) -> Self {
        Self { num_kv_heads, head_dim, layers: layers.to_vec() }
    }

    pub fn uniform(num_layers: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        Self::new(&vec![AttentionKind::Full; num_layers], num_kv_heads, head_dim)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
