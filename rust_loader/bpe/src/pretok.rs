//! Pretokenization: split text into the chunks BPE works inside.
//!
//! The GPT-4 split pattern with `\p{N}{1,2}` (nanochat's, [`GPT4_SPLIT_PATTERN`]) runs through a
//! hand-written scanner that reproduces fancy-regex's leftmost-first, backtracking semantics of
//! that one pattern exactly (property-tested against fancy-regex below). Any other pattern goes
//! through fancy-regex, as tiktoken does.
//!
//! Why a scanner: tiktoken spends most of its encode time inside fancy-regex. The scanner makes
//! one pass over the bytes with a precomputed character-class table and no backtracking. The
//! Unicode tables (`\p{L}`, `\p{N}`, `\s`, and the case folds of `(?i:s)` etc.) are taken from
//! `regex-syntax`, the same crate fancy-regex compiles through, so both agree on every code point.

use std::sync::OnceLock;

use crate::BpeError;

/// nanochat's GPT-4-style split pattern (numbers in groups of at most two digits).
pub const GPT4_SPLIT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// Splits text into chunks; either the fast GPT-4 scanner or a compiled fancy-regex.
#[derive(Debug, Clone)]
pub enum Pretokenizer {
    /// The hand-written scanner for [`GPT4_SPLIT_PATTERN`].
    Gpt4,
    /// Any other pattern. Like tiktoken, text the pattern does not match is dropped.
    Regex(Box<fancy_regex::Regex>),
}

impl Pretokenizer {
    /// Compile `pattern`; the GPT-4 pattern gets the scanner.
    pub fn new(pattern: &str) -> Result<Self, BpeError> {
        if pattern == GPT4_SPLIT_PATTERN {
            classes(); // build the tables now, not inside the first parallel encode
            return Ok(Pretokenizer::Gpt4);
        }
        fancy_regex::Regex::new(pattern)
            .map(|r| Pretokenizer::Regex(Box::new(r)))
            .map_err(|e| {
                BpeError::InvalidValue(format!(
                    "split pattern {pattern:?} does not compile: {e}; pass a pattern fancy-regex accepts"
                ))
            })
    }

    /// A regex-backed pretokenizer even for the GPT-4 pattern (for tests and benchmarks).
    pub fn regex(pattern: &str) -> Result<Self, BpeError> {
        fancy_regex::Regex::new(pattern)
            .map(|r| Pretokenizer::Regex(Box::new(r)))
            .map_err(|e| BpeError::InvalidValue(format!("pattern {pattern:?}: {e}")))
    }

    /// Call `f` with each chunk of `text`, in order.
    #[inline]
    pub fn for_each<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) -> Result<(), BpeError> {
        match self {
            Pretokenizer::Gpt4 => {
                let t = classes();
                let b = text.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    let j = gpt4_piece_end(t, b, i);
                    // SAFETY: `gpt4_piece_end` only stops on char boundaries of a valid &str.
                    f(unsafe { text.get_unchecked(i..j) });
                    i = j;
                }
                Ok(())
            }
            Pretokenizer::Regex(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| {
                        BpeError::InvalidValue(format!(
                            "split pattern failed on the input ({e}); simplify the pattern"
                        ))
                    })?;
                    if !m.as_str().is_empty() {
                        f(m.as_str());
                    }
                }
                Ok(())
            }
        }
    }

    /// All chunks of `text` (convenience for tests and debugging).
    pub fn split<'a>(&self, text: &'a str) -> Result<Vec<&'a str>, BpeError> {
        let mut out = Vec::new();
        self.for_each(text, |p| out.push(p))?;
        Ok(out)
    }
}

// --- character classes ---------------------------------------------------------------------

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;
/// Bits for the case-insensitive contraction letters s d m t l v e r.
const FOLDS: &str = "sdmtlver";

struct Classes {
    /// Class bits of each code point, stored as deduplicated 256-entry blocks.
    index: Vec<u16>,
    blocks: Vec<u8>,
    /// Code points that `(?i:x)` matches, for each x in FOLDS.
    folds: [Vec<u32>; 8],
}

impl Classes {
    #[inline(always)]
    fn get(&self, c: u32) -> u8 {
        let block = self.index[(c >> 8) as usize] as usize;
        self.blocks[(block << 8) | (c as usize & 0xff)]
    }

    #[inline]
    fn folds_to(&self, c: u32, letter: char) -> bool {
        let k = FOLDS.find(letter).expect("letter in FOLDS");
        self.folds[k].contains(&c)
    }
}

fn ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(pattern).expect("static class pattern");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        HirKind::Literal(lit) => std::str::from_utf8(&lit.0)
            .expect("utf8 literal")
            .chars()
            .map(|c| (c as u32, c as u32))
            .collect(),
        other => panic!("unexpected HIR for {pattern}: {other:?}"),
    }
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut flat = vec![0u8; 0x11_0000];
        for (pat, bit) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (a, b) in ranges(pat) {
                for c in a..=b {
                    flat[c as usize] |= bit;
                }
            }
        }
        let mut seen: std::collections::HashMap<&[u8], u16> = std::collections::HashMap::new();
        let mut index = Vec::with_capacity(0x1100);
        let mut blocks = Vec::new();
        for block in flat.chunks(256) {
            let next = seen.len() as u16;
            let id = *seen.entry(block).or_insert_with(|| {
                blocks.extend_from_slice(block);
                next
            });
            index.push(id);
        }
        let folds = std::array::from_fn(|k| {
            let letter = &FOLDS[k..k + 1];
            ranges(&format!("(?i){letter}"))
                .into_iter()
                .flat_map(|(a, b)| a..=b)
                .collect()
        });
        Classes {
            index,
            blocks,
            folds,
        }
    })
}

/// Decode the char starting at byte `i` of valid UTF-8: (code point, byte length).
#[inline(always)]
fn decode(b: &[u8], i: usize) -> (u32, usize) {
    let b0 = b[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (b[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        let c = ((b0 & 0x0F) << 12) | ((b[i + 1] as u32 & 0x3F) << 6) | (b[i + 2] as u32 & 0x3F);
        (c, 3)
    } else {
        let c = ((b0 & 0x07) << 18)
            | ((b[i + 1] as u32 & 0x3F) << 12)
            | ((b[i + 2] as u32 & 0x3F) << 6)
            | (b[i + 3] as u32 & 0x3F);
        (c, 4)
    }
}

#[inline(always)]
fn class_at(t: &Classes, b: &[u8], i: usize) -> (u8, u32, usize) {
    let (c, len) = decode(b, i);
    (t.get(c), c, len)
}

#[inline]
fn letters_end(t: &Classes, b: &[u8], mut j: usize) -> usize {
    while j < b.len() {
        let (k, _, len) = class_at(t, b, j);
        if k & LETTER == 0 {
            break;
        }
        j += len;
    }
    j
}

/// End (exclusive byte offset) of the GPT-4-pattern match that starts at byte `i < b.len()`.
///
/// Each branch mirrors one alternative of the pattern, tried in order. Every code point is
/// exactly one of letter, number, white space or "other", so some alternative always matches
/// and the chunks tile the text.
#[inline]
fn gpt4_piece_end(t: &Classes, b: &[u8], i: usize) -> usize {
    let n = b.len();
    let (k, c, len) = class_at(t, b, i);
    let next = i + len;

    // '(?i:[sdmt]|ll|ve|re)
    if c == '\'' as u32 && next < n {
        let (c1, l1) = decode(b, next);
        if ['s', 'd', 'm', 't'].iter().any(|&x| t.folds_to(c1, x)) {
            return next + l1;
        }
        let j = next + l1;
        if j < n {
            let (c2, l2) = decode(b, j);
            let pair = |x: char, y: char| t.folds_to(c1, x) && t.folds_to(c2, y);
            if pair('l', 'l') || pair('v', 'e') || pair('r', 'e') {
                return j + l2;
            }
        }
    }
    // [^\r\n\p{L}\p{N}]?+\p{L}+
    if k & LETTER != 0 {
        return letters_end(t, b, next);
    }
    if k & NUMBER == 0 && c != '\r' as u32 && c != '\n' as u32 && next < n {
        let (k1, _, l1) = class_at(t, b, next);
        if k1 & LETTER != 0 {
            return letters_end(t, b, next + l1);
        }
    }
    // \p{N}{1,2}
    if k & NUMBER != 0 {
        if next < n && class_at(t, b, next).0 & NUMBER != 0 {
            return next + class_at(t, b, next).2;
        }
        return next;
    }
    //  ?[^\s\p{L}\p{N}]++[\r\n]*
    let mut punct_end = None;
    if k == 0 {
        punct_end = Some(next);
    } else if c == ' ' as u32 && next < n {
        let (k1, _, l1) = class_at(t, b, next);
        if k1 == 0 {
            punct_end = Some(next + l1);
        }
    }
    if let Some(mut j) = punct_end {
        while j < n {
            let (k1, _, l1) = class_at(t, b, j);
            if k1 != 0 {
                break;
            }
            j += l1;
        }
        while j < n && (b[j] == b'\r' || b[j] == b'\n') {
            j += 1;
        }
        return j;
    }
    // White space: \s*[\r\n] | \s+(?!\S) | \s+
    debug_assert!(k & SPACE != 0);
    let mut j = i;
    let mut last_newline = None;
    let mut last_start = i;
    let mut count = 0usize;
    while j < n {
        let (k1, c1, l1) = class_at(t, b, j);
        if k1 & SPACE == 0 {
            break;
        }
        if c1 == '\r' as u32 || c1 == '\n' as u32 {
            last_newline = Some(j);
        }
        last_start = j;
        count += 1;
        j += l1;
    }
    if let Some(p) = last_newline {
        return p + 1; // \s*[\r\n]: backtracks to the last newline of the run
    }
    if j == n || count == 1 {
        return j; // \s+(?!\S) at the end of text, or the plain \s+ fallback
    }
    last_start // \s+(?!\S): leave the last space for the next word
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(text: &str) -> Vec<&str> {
        Pretokenizer::regex(GPT4_SPLIT_PATTERN)
            .unwrap()
            .split(text)
            .unwrap()
    }

    fn fast(text: &str) -> Vec<&str> {
        Pretokenizer::new(GPT4_SPLIT_PATTERN)
            .unwrap()
            .split(text)
            .unwrap()
    }

    #[test]
    fn known_splits() {
        let text = "Hello world's  123456 ok!!\n\n  x\t\r\n 'LL ſ'ſ (abc) 'x";
        assert_eq!(fast(text), reference(text));
        assert_eq!(fast("a  b"), vec!["a", " ", " b"]);
        assert_eq!(fast("12345"), vec!["12", "34", "5"]);
    }

    /// Characters around every branch boundary of the pattern.
    const TRICKY: &[char] = &[
        'a',
        'Z',
        's',
        'S',
        'l',
        'L',
        'v',
        'e',
        'r',
        'R',
        'd',
        'm',
        't',
        'ſ',
        'K',
        '\'',
        '’',
        ' ',
        '\t',
        '\n',
        '\r',
        '\u{0b}',
        '\u{0c}',
        '\u{85}',
        '\u{a0}',
        '\u{2028}',
        '\u{3000}',
        '0',
        '7',
        '½',
        '٣',
        '⅛',
        '!',
        '.',
        '(',
        '_',
        '-',
        '€',
        '😀',
        'é',
        'ß',
        '中',
        '\u{301}',
        '\u{200d}',
        '\u{0}',
        '\u{10ffff}',
    ];

    fn tricky_string() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TRICKY), 0..40)
            .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn scanner_matches_fancy_regex_tricky(s in tricky_string()) {
            prop_assert_eq!(fast(&s), reference(&s));
        }

        #[test]
        fn scanner_matches_fancy_regex_any(s in any::<String>()) {
            prop_assert_eq!(fast(&s), reference(&s));
        }
    }

    /// Slow in debug builds (fancy-regex over ~13 MB): `cargo test --release -- --ignored`.
    #[test]
    #[ignore]
    fn scanner_matches_on_every_code_point() {
        // Each code point alone, after a space, after an apostrophe, and before a letter.
        let chars: Vec<char> = (0u32..0x11_0000).filter_map(char::from_u32).collect();
        for block in chars.chunks(512) {
            let mut text = String::new();
            for &c in block {
                text.push_str(&format!("{c} {c}x'{c}{c}a\n{c} "));
            }
            assert_eq!(
                fast(&text),
                reference(&text),
                "block at U+{:04X}",
                block[0] as u32
            );
        }
    }
}
