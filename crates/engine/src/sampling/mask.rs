//! Token masks: which ids a grammar allows at this step, as a bitset (32 ids per word, bit
//! `id % 32` of word `id / 32`, the layout of llguidance's `SimpleVob`). The sampler reads the
//! row through the mask, so a disallowed id is never chosen whatever its logit or bias; ids past
//! the mask's end (a logits row wider than the tokenizer's vocabulary) are disallowed.

/// The ids allowed at one step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenMask {
    words: Vec<u32>,
}

impl TokenMask {
    /// A mask from bitset words.
    pub fn from_words(words: Vec<u32>) -> Self {
        Self { words }
    }

    /// A mask allowing exactly `ids` (tests, and masks built by hand).
    pub fn from_ids(ids: &[u32]) -> Self {
        let len = ids.iter().map(|&i| i as usize / 32 + 1).max().unwrap_or(0);
        let mut words = vec![0u32; len];
        for &id in ids {
            words[id as usize / 32] |= 1 << (id % 32);
        }
        Self { words }
    }

    #[inline]
    pub fn allows(&self, id: u32) -> bool {
        self.words.get(id as usize / 32).is_some_and(|w| w & (1 << (id % 32)) != 0)
    }

    /// Also allows `id`.
    pub fn allow(&mut self, id: u32) {
        let i = id as usize / 32;
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        self.words[i] |= 1 << (id % 32);
    }

    /// Whether no id is allowed.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// How many ids are allowed.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The allowed ids in order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (0..32u32).filter(move |b| w & (1 << b) != 0).map(move |b| i as u32 * 32 + b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_out_of_range_is_disallowed() {
        let m = TokenMask::from_ids(&[0, 31, 32, 100]);
        assert!(m.allows(0) && m.allows(31) && m.allows(32) && m.allows(100));
        assert!(!m.allows(1) && !m.allows(99) && !m.allows(10_000));
        assert_eq!(m.ids().collect::<Vec<_>>(), vec![0, 31, 32, 100]);
        assert_eq!(m.count(), 4);
        let mut e = TokenMask::default();
        assert!(e.is_empty());
        e.allow(70);
        assert_eq!(e.ids().collect::<Vec<_>>(), vec![70]);
    }
}
