//! `KvLayout`: how a model's layers share the KV cache, after vLLM's hybrid KV-cache manager
//! (`kv_cache_groups`).
//!
//! Each layer has an [`AttentionKind`]: full attention keeps every position, a sliding window of
//! `w` only the last `w`. Layers of one kind are split, in order, into *groups* of `group_size`
//! layers, where `group_size` is the gcd of the per-kind layer counts (Gemma 3 270M: 15 sliding
//! and 3 full layers -> 6 groups of 3; a llama: one group of all its layers). All groups then
//! have the same shape, so one shared [`super::BlockPool`] serves them all: a block is a *page*
//! holding `group_size` layers × `block_size` tokens of K and V, and it belongs to one group at a
//! time. Each sequence keeps one block table per group; a sliding group drops (and returns to
//! the pool) the pages that left its window, so it holds O(window) pages however long the
//! sequence grows.
//!
//! Layer `l` lives in group `layer_group[l]` at slot `layer_slot[l]` of that group's pages.

use super::dtype::KvDtype;

/// Sentinel block id of a sliding-window group's table entry whose page was released (all of
/// its positions are before the window). Logical block `i` always covers positions
/// `[i * block_size, (i + 1) * block_size)` in every group.
pub const NO_BLOCK: u32 = u32::MAX;

/// Which past positions a layer attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionKind {
    /// Every position `<= p`.
    Full,
    /// Sliding window of `w` tokens: a query at `p` sees keys at positions `> p - w`
    /// (`Sliding(0)` is no window).
    Sliding(usize),
}

impl AttentionKind {
    /// The window in tokens, if any.
    pub fn window(self) -> Option<usize> {
        match self {
            AttentionKind::Sliding(w) if w > 0 => Some(w),
            _ => None,
        }
    }

    /// First position a query at `pos` sees.
    pub fn first_visible(self, pos: usize) -> usize {
        match self.window() {
            None => 0,
            Some(w) => (pos + 1).saturating_sub(w),
        }
    }

    /// First logical block a query at `pos` reads; every earlier block may be released.
    pub fn first_live_block(self, pos: usize, block_size: usize) -> usize {
        self.first_visible(pos) / block_size
    }

    /// Most pages one group of this kind holds at once while a sequence of `len` tokens is
    /// computed in chunks of at most `chunk` tokens: all of them for full attention; for a
    /// window `w`, those touching the `w - 1 + chunk` positions a chunk reads (at most one more
    /// than that span needs, for alignment), never more than the whole sequence needs.
    pub fn peak_blocks(self, len: usize, chunk: usize, block_size: usize) -> usize {
        let all = len.div_ceil(block_size);
        match self.window() {
            None => all,
            Some(w) => all.min((w - 1 + chunk.clamp(1, len.max(1))).div_ceil(block_size) + 1),
        }
    }

    /// Pages one group of this kind holds after the first `len` tokens of a sequence are
    /// computed (the next query at position `len` reads from `first_live_block(len)` on).
    pub fn blocks_held(self, len: usize, block_size: usize) -> usize {
        let all = len.div_ceil(block_size);
        all - self.first_live_block(len, block_size).min(all)
    }
}

impl std::fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttentionKind::Full => write!(f, "full"),
            AttentionKind::Sliding(w) => write!(f, "sliding({w})"),
        }
    }
}

/// How the layers of a model map onto KV-cache groups and page slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Kind of each group.
    pub groups: Vec<AttentionKind>,
    /// Group of each layer.
    pub layer_group: Vec<usize>,
    /// Slot of each layer within its group's pages (`0..group_size`).
    pub layer_slot: Vec<usize>,
    /// Layers per group (every group has the same size).
    pub group_size: usize,
    /// How K/V values are stored (the constructors give f32; the engine sets its own).
    pub dtype: KvDtype,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl KvLayout {
    /// Groups `layers` (one kind per layer) as vLLM does: per kind (in order of first
    /// appearance), its layers in order, `group_size` at a time, with `group_size` the gcd of
    /// the per-kind counts. `Sliding(0)` means no window and counts as `Full`.
    pub fn new(layers: &[AttentionKind], num_kv_heads: usize, head_dim: usize) -> Self {
        let layers: Vec<AttentionKind> =
            layers.iter().map(|&k| if k == AttentionKind::Sliding(0) { AttentionKind::Full } else { k }).collect();
        let mut kinds: Vec<(AttentionKind, Vec<usize>)> = Vec::new();
        for (l, &k) in layers.iter().enumerate() {
            match kinds.iter_mut().find(|(kk, _)| *kk == k) {
                Some((_, ls)) => ls.push(l),
                None => kinds.push((k, vec![l])),
            }
        }
        let group_size = kinds.iter().fold(0, |g, (_, ls)| gcd(g, ls.len()));
        let mut groups = Vec::new();
        let mut layer_group = vec![0; layers.len()];
        let mut layer_slot = vec![0; layers.len()];
        for (kind, ls) in &kinds {
            for chunk in ls.chunks(group_size) {
                for (slot, &l) in chunk.iter().enumerate() {
                    layer_group[l] = groups.len();
                    layer_slot[l] = slot;
                }
                groups.push(*kind);
            }
        }
        Self { num_kv_heads, head_dim, groups, layer_group, layer_slot, group_size, dtype: KvDtype::F32 }
    }

    /// The same layout with K/V stored as `dtype`.
    pub fn with_dtype(mut self, dtype: KvDtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// Every layer full attention: one group of all layers.
    pub fn uniform(num_layers: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        Self::new(&vec![AttentionKind::Full; num_layers], num_kv_heads, head_dim)
    }

    pub fn num_layers(&self) -> usize {
        self.layer_group.len()
    }

    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    /// Kind of layer `layer`.
    pub fn layer_kind(&self, layer: usize) -> AttentionKind {
        self.groups[self.layer_group[layer]]
    }

    /// Bytes of one page: `group_size` layers × `block_size` tokens of K and V rows (one row per
    /// kv head, in `dtype`).
    pub fn bytes_per_block(&self, block_size: usize) -> usize {
        2 * self.group_size * self.num_kv_heads * block_size * self.dtype.bytes_per_row(self.head_dim)
    }

    /// How many pages fit in `budget_bytes` (at least one).
    pub fn num_blocks_for_budget(&self, budget_bytes: usize, block_size: usize) -> usize {
        (budget_bytes / self.bytes_per_block(block_size).max(1)).max(1)
    }

    /// Pages, summed over groups, that a sequence of `len` tokens computed in chunks of at
    /// most `chunk` tokens may hold at once (the scheduler's admission bound).
    pub fn peak_blocks(&self, len: usize, chunk: usize, block_size: usize) -> usize {
        self.groups.iter().map(|k| k.peak_blocks(len, chunk, block_size)).sum()
    }

    /// Pages, summed over groups, a sequence holds once its first `len` tokens are computed.
    pub fn blocks_held(&self, len: usize, block_size: usize) -> usize {
        self.groups.iter().map(|k| k.blocks_held(len, block_size)).sum()
    }

    /// KV bytes per token of a sequence whose first `len` tokens are computed: the pages it
    /// holds, over `len`.
    pub fn kv_bytes_per_token(&self, len: usize, block_size: usize) -> f64 {
        (self.blocks_held(len, block_size) * self.bytes_per_block(block_size)) as f64 / len.max(1) as f64
    }

    /// One line describing the groups, e.g. `6 groups of 3 layers: 5 x sliding(512), 1 x full`.
    pub fn describe(&self) -> String {
        let mut counts: Vec<(AttentionKind, usize)> = Vec::new();
        for &k in &self.groups {
            match counts.iter_mut().find(|(kk, _)| *kk == k) {
                Some((_, n)) => *n += 1,
                None => counts.push((k, 1)),
            }
        }
        let kinds: Vec<String> = counts.iter().map(|(k, n)| format!("{n} x {k}")).collect();
        let s = if self.num_groups() == 1 { "" } else { "s" };
        format!("{} group{s} of {} layers: {}", self.num_groups(), self.group_size, kinds.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::AttentionKind::{Full, Sliding};
    use super::*;

    fn gemma3_270m_kinds() -> Vec<AttentionKind> {
        (0..18).map(|il| if il % 6 < 5 { Sliding(512) } else { Full }).collect()
    }

    /// Every group has `group_size` layers of one kind, every (group, slot) pair is used once.
    fn check_consistent(layout: &KvLayout, kinds: &[AttentionKind]) {
        assert_eq!(layout.num_layers(), kinds.len());
        let mut seen = std::collections::HashSet::new();
        for (l, &k) in kinds.iter().enumerate() {
            assert_eq!(layout.layer_kind(l), k, "layer {l}");
            assert!(layout.layer_slot[l] < layout.group_size);
            assert!(seen.insert((layout.layer_group[l], layout.layer_slot[l])), "layer {l} shares a slot");
        }
        assert_eq!(seen.len(), layout.num_groups() * layout.group_size, "every group is full");
    }

    #[test]
    fn gemma3_270m_gives_six_groups_of_three() {
        let kinds = gemma3_270m_kinds();
        let layout = KvLayout::new(&kinds, 1, 256);
        assert_eq!(layout.group_size, 3);
        assert_eq!(layout.groups, vec![Sliding(512), Sliding(512), Sliding(512), Sliding(512), Sliding(512), Full]);
        check_consistent(&layout, &kinds);
        // The sliding layers in order: 0,1,2 | 3,4,6 | 7,8,9 | ...; the full ones 5, 11, 17.
        assert_eq!(&layout.layer_group[..7], &[0, 0, 0, 1, 1, 5, 1]);
        assert_eq!(&layout.layer_slot[..7], &[0, 1, 2, 0, 1, 0, 2]);
        assert_eq!((layout.layer_group[11], layout.layer_slot[11]), (5, 1));
        assert_eq!((layout.layer_group[17], layout.layer_slot[17]), (5, 2));
        assert_eq!(layout.bytes_per_block(16), 2 * 3 * 256 * 16 * 4);
        assert_eq!(layout.describe(), "6 groups of 3 layers: 5 x sliding(512), 1 x full");
    }

    #[test]
    fn llama_is_one_group_of_all_layers() {
        let layout = KvLayout::uniform(30, 3, 64);
        assert_eq!(layout.groups, vec![Full]);
        assert_eq!(layout.group_size, 30);
        assert_eq!(layout.layer_slot, (0..30).collect::<Vec<_>>());
        check_consistent(&layout, &[Full; 30]);
        // The page of a uniform layout is the old all-layers block.
        assert_eq!(layout.bytes_per_block(16), 2 * 30 * 3 * 64 * 16 * 4);
        assert_eq!(layout.num_blocks_for_budget(layout.bytes_per_block(16) * 10 + 5, 16), 10);
        // Mistral-style: a window on every layer is one group too.
        let mistral = KvLayout::new(&[Sliding(4096); 32], 8, 128);
        assert_eq!((mistral.groups.clone(), mistral.group_size), (vec![Sliding(4096)], 32));
    }

    #[test]
    fn gpt_oss_alternating_gives_two_groups() {
        let kinds: Vec<AttentionKind> = (0..24).map(|l| if l % 2 == 0 { Sliding(128) } else { Full }).collect();
        let layout = KvLayout::new(&kinds, 8, 64);
        assert_eq!(layout.groups, vec![Sliding(128), Full]);
        assert_eq!(layout.group_size, 12);
        check_consistent(&layout, &kinds);
        assert_eq!((layout.layer_group[5], layout.layer_slot[5]), (1, 2));
    }

    #[test]
    fn coprime_counts_give_groups_of_one_layer() {
        // 5 sliding + 2 full: gcd 1, so 7 groups of one layer each; three kinds work as well.
        let kinds = [Sliding(8), Sliding(8), Full, Sliding(8), Sliding(8), Full, Sliding(8)];
        let layout = KvLayout::new(&kinds, 2, 16);
        assert_eq!(layout.group_size, 1);
        assert_eq!(layout.num_groups(), 7);
        assert_eq!(layout.groups.iter().filter(|&&k| k == Full).count(), 2);
        check_consistent(&layout, &kinds);
        let three = [Sliding(4), Full, Sliding(8), Sliding(4), Full, Sliding(8)];
        let layout = KvLayout::new(&three, 1, 8);
        assert_eq!((layout.group_size, layout.groups.clone()), (2, vec![Sliding(4), Full, Sliding(8)]));
        check_consistent(&layout, &three);
        // A zero window is no window.
        assert_eq!(KvLayout::new(&[Sliding(0), Full], 1, 8), KvLayout::uniform(2, 1, 8));
    }

    #[test]
    fn sliding_groups_hold_only_their_window() {
        let (w, bs) = (10, 4);
        let k = Sliding(w);
        assert_eq!(k.first_visible(5), 0);
        assert_eq!(k.first_visible(12), 3);
        // After 21 tokens the next query (position 21) sees 12..=21: blocks 3.. of 0..=5.
        assert_eq!(k.first_live_block(21, bs), 3);
        assert_eq!(k.blocks_held(21, bs), 3);
        assert_eq!(Full.blocks_held(21, bs), 6);
        assert_eq!(k.blocks_held(3, bs), 1);
        // A chunk of 8 reads w - 1 + 8 = 17 positions: at most 5 + 1 blocks, capped by the length.
        assert_eq!(k.peak_blocks(1000, 8, bs), 6);
        assert_eq!(k.peak_blocks(9, 8, bs), 3);
        assert_eq!(Full.peak_blocks(1000, 8, bs), 250);
    }
}
