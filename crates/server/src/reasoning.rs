//! Thinking in tags (Qwen3 `<think>…</think>`, DeepSeek-R1 distills): the text between the tags
//! is the message's reasoning (`reasoning_content`, and `reasoning` as vLLM and OpenRouter name
//! it), never content. Tags split across tokens are held back until they are whole. A template
//! whose generation prompt already opens `<think>` (R1 distills) starts the parser inside.

pub const OPEN: &str = "<think>";
pub const CLOSE: &str = "</think>";

/// What the reasoning parser makes of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    Reasoning(String),
    Content(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before anything but whitespace: a `<think>` here opens the reasoning.
    Start,
    Inside,
    /// Just after `</think>`: the newlines a template puts there are not content.
    Closed,
    /// After the reasoning (or with none): content.
    After,
}

#[derive(Debug)]
pub struct ReasoningParser {
    state: State,
    buf: String,
}

/// The length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

impl ReasoningParser {
    /// `inside`: the prompt already opened the reasoning.
    pub fn new(inside: bool) -> Self {
        Self { state: if inside { State::Inside } else { State::Start }, buf: String::new() }
    }

    pub fn push(&mut self, text: &str) -> Vec<Split> {
        self.buf.push_str(text);
        self.run(false)
    }

    pub fn finish(&mut self) -> Vec<Split> {
        self.run(true)
    }

    fn run(&mut self, at_end: bool) -> Vec<Split> {
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.buf = rest.to_owned();
                        self.state = State::Inside;
                    } else if !at_end && OPEN.starts_with(t) {
                        return out;
                    } else {
                        self.state = State::After;
                    }
                }
                State::Inside => match self.buf.find(CLOSE) {
                    Some(end) => {
                        let text: String = self.buf.drain(..end + CLOSE.len()).collect();
                        if end > 0 {
                            out.push(Split::Reasoning(text[..end].to_owned()));
                        }
                        self.state = State::Closed;
                    }
                    None => {
                        let keep = if at_end { 0 } else { partial(&self.buf, CLOSE) };
                        let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                        if !text.is_empty() {
                            out.push(Split::Reasoning(text));
                        }
                        return out;
                    }
                },
                State::Closed => {
                    let trimmed = self.buf.trim_start_matches('\n').len();
                    self.buf.drain(..self.buf.len() - trimmed);
                    if self.buf.is_empty() && !at_end {
                        return out;
                    }
                    self.state = State::After;
                }
                State::After => {
                    if !self.buf.is_empty() {
                        out.push(Split::Content(std::mem::take(&mut self.buf)));
                    }
                    return out;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the parser over `text` in pseudo-random pieces, merging neighbours of one kind.
    fn run(text: &str, inside: bool, seed: u64) -> Vec<Split> {
        let mut p = ReasoningParser::new(inside);
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let n = 1 + (s % 6) as usize;
            out.extend(p.push(&chars[i..(i + n).min(chars.len())].iter().collect::<String>()));
            i += n;
        }
        out.extend(p.finish());
        let mut merged: Vec<Split> = Vec::new();
        for x in out {
            match (merged.last_mut(), x) {
                (Some(Split::Reasoning(a)), Split::Reasoning(b)) | (Some(Split::Content(a)), Split::Content(b)) => {
                    a.push_str(&b)
                }
                (_, x) => merged.push(x),
            }
        }
        merged
    }

    #[test]
    fn thinking_splits_from_content_under_every_split() {
        let r = |s: &str| Split::Reasoning(s.into());
        let c = |s: &str| Split::Content(s.into());
        for (text, inside, want) in [
            (
                "<think>\nLet me see: 2+2 <is> 4.\n</think>\n\nIt is 4.",
                false,
                vec![r("\nLet me see: 2+2 <is> 4.\n"), c("It is 4.")],
            ),
            ("\n<think>a</thi</think>b", false, vec![r("a</thi"), c("b")]),
            ("No thinking, just <think> talk.", false, vec![c("No thinking, just <think> talk.")]),
            ("Pondering...</think>Done", true, vec![r("Pondering..."), c("Done")]),
            ("<think>never closed", false, vec![r("never closed")]),
            ("<thi", false, vec![c("<thi")]),
        ] {
            for seed in 0..60 {
                assert_eq!(run(text, inside, seed), want, "{text:?} seed {seed}");
            }
        }
    }
}
