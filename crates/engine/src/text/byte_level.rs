//! GPT-2's byte-level alphabet: every byte is spelled as one printable character, so a byte-level
//! BPE token is a string of those characters. This module maps such a token back to raw bytes.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Byte -> the character GPT-2 spells it with (`bytes_to_unicode` in the reference code).
pub(crate) fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u32| {
            (u32::from(b'!')..=u32::from(b'~')).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
        };
        let mut table = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..256u32 {
            let c = if printable(b) {
                b
            } else {
                let c = next;
                next += 1;
                c
            };
            table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
        }
        table
    })
}

fn char_to_byte() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| byte_to_char().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect())
}

/// The raw bytes a byte-level token stands for, or `None` when the token uses a character
/// outside the alphabet (an added token written as plain text, like `<|im_start|>` is not:
/// ASCII punctuation and letters are their own spelling).
pub(crate) fn token_to_bytes(token: &str) -> Option<Vec<u8>> {
    let map = char_to_byte();
    token.chars().map(|c| map.get(&c).copied()).collect()
}

/// True when every character of `token` belongs to the byte-level alphabet.
pub(crate) fn is_spelled(token: &str) -> bool {
    let map = char_to_byte();
    token.chars().all(|c| map.contains_key(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_and_newline_round_trip_through_their_gpt2_spelling() {
        assert_eq!(byte_to_char()[b' ' as usize], 'Ġ');
        assert_eq!(byte_to_char()[b'\n' as usize], 'Ċ');
        assert_eq!(token_to_bytes("Ġhello").as_deref(), Some(&b" hello"[..]));
        // "é" in UTF-8 is C3 A9, spelled "Ã©".
        assert_eq!(token_to_bytes("Ã©").as_deref(), Some("é".as_bytes()));
        assert_eq!(token_to_bytes("日"), None);
    }
}
