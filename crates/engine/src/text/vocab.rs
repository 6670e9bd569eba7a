//! A vocabulary's strings in two allocations: `Pieces` lays every token's bytes end to end
//! (ids index an offset table), and `Vocab` adds an open-addressing index from text to id.
//!
//! A 262k-token vocabulary (Gemma) held as one `String` per token in two hash maps plus a
//! `Vec<u8>` per token for the raw bytes cost ~80 MB of small heap blocks; these tables hold
//! the same facts in ~7 MB. Duplicate strings resolve to the last id, as a Hugging Face
//! vocabulary map built from `(token, id)` pairs does.

/// Byte strings indexed by id, stored end to end.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    /// `ends[i]` is where piece `i` ends in `bytes` (it starts where `i - 1` ends).
    ends: Vec<u32>,
}

impl Pieces {
    pub fn with_capacity(pieces: usize) -> Self {
        Self { bytes: Vec::new(), ends: Vec::with_capacity(pieces) }
    }

    /// Appends the next id's bytes.
    pub fn push(&mut self, piece: &[u8]) {
        self.bytes.extend_from_slice(piece);
        let end = u32::try_from(self.bytes.len()).expect("a vocabulary's text fits in 4 GiB");
        self.ends.push(end);
    }

    /// Releases the slack of the growth strategy once every piece is in.
    pub fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    pub fn get(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.bytes[start..end])
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

impl<T: AsRef<[u8]>> FromIterator<T> for Pieces {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut pieces = Pieces::with_capacity(iter.size_hint().0);
        for p in iter {
            pieces.push(p.as_ref());
        }
        pieces.shrink_to_fit();
        pieces
    }
}

/// Token strings with a text-to-id index.
#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    pieces: Pieces,
    /// Open addressing with linear probing, at most half full. A slot holds `id + 1` in its
    /// low `id_bits` and the top bits of the text's hash above them (so most non-matching
    /// slots are passed without reading their text); 0 is empty.
    slots: Box<[u32]>,
    id_bits: u32,
    /// Number of distinct strings.
    distinct: usize,
}

/// A fast multiplicative hash over 8-byte words; only table placement depends on it.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^ (h >> 32)
}

/// Linear probing in a power-of-two table for a key hashing to `h`: the first slot, from the
/// one `h` picks, that is `empty` or that `holds_key` accepts.
pub(crate) fn probe(slots: &[u32], empty: u32, h: u64, holds_key: impl Fn(u32) -> bool) -> usize {
    let mask = slots.len() - 1;
    let bits = slots.len().trailing_zeros();
    let mut at = (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize;
    while slots[at] != empty && !holds_key(slots[at]) {
        at = (at + 1) & mask;
    }
    at
}

/// Table size (a power of two, at least twice `n`) and its log2.
pub(crate) fn table_bits(n: usize) -> u32 {
    (2 * n).next_power_of_two().max(16).trailing_zeros()
}

impl Vocab {
    pub fn new<T: AsRef<str>>(tokens: impl IntoIterator<Item = T>) -> Self {
        let mut pieces = Pieces::default();
        for t in tokens {
            pieces.push(t.as_ref().as_bytes());
        }
        pieces.shrink_to_fit();
        // `id + 1 <= len` fits in `id_bits`.
        let id_bits = 32 - (pieces.len() as u32).leading_zeros();
        let slots = vec![0; 1 << table_bits(pieces.len())].into_boxed_slice();
        let mut vocab = Self { slots, pieces, id_bits, distinct: 0 };
        for id in 0..vocab.pieces.len() as u32 {
            let text = vocab.pieces.get(id).unwrap_or_default();
            let h = hash(text);
            let entry = vocab.tag(h) | (id + 1);
            // A string listed again takes over its slot: the last id wins.
            let at = probe(&vocab.slots, 0, h, |slot| vocab.matches(slot, entry, text));
            if vocab.slots[at] == 0 {
                vocab.distinct += 1;
            }
            vocab.slots[at] = entry;
        }
        vocab
    }

    /// The bits of a slot that hold `id + 1`.
    fn id_mask(&self) -> u32 {
        if self.id_bits >= 32 {
            u32::MAX
        } else {
            (1 << self.id_bits) - 1
        }
    }

    /// The hash bits a slot keeps above its id.
    fn tag(&self, h: u64) -> u32 {
        if self.id_bits >= 32 {
            return 0;
        }
        ((h >> 32) as u32) << self.id_bits
    }

    /// Whether `slot` holds `text`, whose entry (tag and id) would be `entry`.
    fn matches(&self, slot: u32, entry: u32, text: &[u8]) -> bool {
        let ids = self.id_mask();
        (slot & !ids) == (entry & !ids) && self.pieces.get((slot & ids) - 1) == Some(text)
    }

    /// The id of `text` (the last one, for a string listed twice).
    pub fn id(&self, text: &str) -> Option<u32> {
        self.id_of_bytes(text.as_bytes())
    }

    /// [`id`](Self::id) for text given as bytes.
    pub fn id_of_bytes(&self, bytes: &[u8]) -> Option<u32> {
        let h = hash(bytes);
        let tag = self.tag(h);
        let slot = self.slots[probe(&self.slots, 0, h, |slot| self.matches(slot, tag, bytes))];
        (slot != 0).then(|| (slot & self.id_mask()) - 1)
    }

    /// The bytes of `id`'s text.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id)
    }

    /// The text of `id`.
    pub fn token(&self, id: u32) -> Option<&str> {
        // Every piece came from a `&str`, so this never fails for an id in range.
        self.pieces.get(id).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Number of distinct strings (a Hugging Face vocabulary map's size).
    pub fn distinct(&self) -> usize {
        self.distinct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_found_and_a_duplicate_resolves_to_its_last_id() {
        let tokens: Vec<String> = (0..5000).map(|i| format!("t{i}")).chain(["t7".to_owned()]).collect();
        let vocab = Vocab::new(&tokens);
        assert_eq!(vocab.len(), 5001);
        assert_eq!(vocab.distinct(), 5000);
        for (i, t) in tokens.iter().enumerate().take(5000) {
            let want = if t == "t7" { 5000 } else { i as u32 };
            assert_eq!(vocab.id(t), Some(want), "{t}");
            assert_eq!(vocab.token(i as u32), Some(t.as_str()));
        }
        assert_eq!(vocab.id("t5000"), None);
        assert_eq!(vocab.id(""), None);
        assert_eq!(vocab.token(5001), None);
    }

    #[test]
    fn pieces_keep_empty_and_binary_entries() {
        let pieces: Pieces = [b"a".as_slice(), b"", &[0xff, 0x00]].into_iter().collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.get(0), Some(b"a".as_slice()));
        assert_eq!(pieces.get(1), Some(b"".as_slice()));
        assert_eq!(pieces.get(2), Some([0xff, 0x00].as_slice()));
        assert_eq!(pieces.get(3), None);
    }
}
