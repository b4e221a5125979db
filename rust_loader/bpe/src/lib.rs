//! `lrt_bpe`: byte-level BPE for the LRT pipeline. Pure Rust, no Python.
//!
//! - [`Tokenizer::train`]: pretokenize documents in parallel (rayon), count unique chunks, then
//!   learn merges with incremental pair counts and a lazily invalidated max-heap ([`train`]).
//! - [`Tokenizer::encode_ordinary`] / [`Tokenizer::encode_batch`]: rank-based byte pair merge
//!   that gives exactly tiktoken's ids for the same ranks ([`encode`]).
//! - [`Tokenizer::save`] / [`Tokenizer::load`]: the project's plain-text format, and
//!   [`Tokenizer::from_ranks`] with [`io::load_tiktoken_ranks`] for tiktoken `.tiktoken` files.
//!
//! Token ids equal ranks: ids `0..n_ranks` are byte sequences (every single byte among them),
//! special tokens come after them. Special-token strings inside text are ordinary text.
//!
//! ```
//! use lrt_bpe::{Tokenizer, GPT4_SPLIT_PATTERN};
//! let docs = ["hello hello world", "hello there"];
//! let tok = Tokenizer::train(&docs, 256 + 5 + 1, GPT4_SPLIT_PATTERN, &["<|bos|>".to_string()]).unwrap();
//! let ids = tok.encode_ordinary("hello world").unwrap();
//! assert_eq!(tok.decode_bytes(&ids).unwrap(), b"hello world");
//! assert_eq!(tok.special_tokens()[0].1, 261);
//! ```

use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

pub mod encode;
pub mod io;
pub mod pretok;
pub mod train;

pub use pretok::{Pretokenizer, GPT4_SPLIT_PATTERN};
pub use train::{ChunkCounter, TrainStats};

/// Every error this crate returns.
#[derive(Debug, thiserror::Error)]
pub enum BpeError {
    /// Reading or writing `path` failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path` is not a valid tokenizer file; `line` is 1-based (0 = the whole file).
    #[error("tokenizer file {path}, line {line}: {msg}")]
    Format {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A bad argument (vocab size, token id, special token, pattern, ...).
    #[error("{0}")]
    InvalidValue(String),
}

impl BpeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        BpeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A byte-level BPE tokenizer: ranks (token bytes by id), split pattern, special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pattern: String,
    pretok: Pretokenizer,
    /// id -> bytes for the `n_ranks` ordinary tokens.
    tokens: Vec<Vec<u8>>,
    /// bytes -> id (tiktoken's "encoder").
    encoder: FxHashMap<Vec<u8>, u32>,
    /// (left id, right id) -> id of their concatenation, for every split of every token into two
    /// tokens. Merging on id pairs is equivalent to tiktoken's lookup of concatenated bytes.
    pair_rank: FxHashMap<u64, u32>,
    byte_id: [u32; 256],
    /// (string, id), sorted by id; ids >= n_ranks.
    specials: Vec<(String, u32)>,
    hash: String,
}

#[inline(always)]
pub(crate) fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

impl Tokenizer {
    /// Build from ranks: `tokens[i]` is the byte string of id `i`.
    ///
    /// Every single byte must be a token and no two ids may share bytes (tiktoken requires both).
    /// Special tokens take the given ids, which must not collide with ranks or each other.
    pub fn from_ranks(
        tokens: Vec<Vec<u8>>,
        pattern: &str,
        specials: Vec<(String, u32)>,
    ) -> Result<Self, BpeError> {
        let pretok = Pretokenizer::new(pattern)?;
        let n = tokens.len();
        if n > u32::MAX as usize / 2 {
            return Err(BpeError::InvalidValue(format!("{n} ranks are too many")));
        }
        let mut encoder = FxHashMap::with_capacity_and_hasher(n, Default::default());
        for (id, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(BpeError::InvalidValue(format!("token {id} is empty")));
            }
            if let Some(prev) = encoder.insert(t.clone(), id as u32) {
                return Err(BpeError::InvalidValue(format!(
                    "tokens {prev} and {id} have the same bytes {t:?}; ranks must be unique"
                )));
            }
        }
        let mut byte_id = [0u32; 256];
        for (b, slot) in byte_id.iter_mut().enumerate() {
            *slot = *encoder.get(&[b as u8][..]).ok_or_else(|| {
                BpeError::InvalidValue(format!(
                    "byte {b:#04x} has no token; a byte-level BPE needs all 256 single bytes"
                ))
            })?;
        }
        let mut pair_rank = FxHashMap::default();
        for (id, t) in tokens.iter().enumerate() {
            for k in 1..t.len() {
                if let (Some(&a), Some(&b)) = (encoder.get(&t[..k]), encoder.get(&t[k..])) {
                    pair_rank.insert(pair_key(a, b), id as u32);
                }
            }
        }
        let mut specials = specials;
        specials.sort_by_key(|s| s.1);
        for (i, (s, id)) in specials.iter().enumerate() {
            if s.is_empty() {
                return Err(BpeError::InvalidValue("a special token is empty".into()));
            }
            if (*id as usize) < n {
                return Err(BpeError::InvalidValue(format!(
                    "special token {s:?} has id {id}, which is an ordinary token (ids < {n})"
                )));
            }
            if i > 0 && specials[i - 1].1 == *id {
                return Err(BpeError::InvalidValue(format!(
                    "two special tokens share id {id}"
                )));
            }
            if specials[..i].iter().any(|(p, _)| p == s) {
                return Err(BpeError::InvalidValue(format!(
                    "special token {s:?} is repeated"
                )));
            }
        }
        let mut tok = Tokenizer {
            pattern: pattern.to_string(),
            pretok,
            tokens,
            encoder,
            pair_rank,
            byte_id,
            specials,
            hash: String::new(),
        };
        tok.hash = io::sha256_hex(io::serialize(&tok).as_bytes());
        Ok(tok)
    }

    /// Train on `texts` (see [`train`] for the algorithm and tie-breaking).
    ///
    /// `vocab_size` includes the special tokens: the result has
    /// `vocab_size - special_tokens.len()` ranks (fewer if the corpus runs out of pairs), then the
    /// specials with consecutive ids.
    pub fn train<S: AsRef<str> + Sync>(
        texts: &[S],
        vocab_size: usize,
        pattern: &str,
        special_tokens: &[String],
    ) -> Result<Self, BpeError> {
        let pretok = Pretokenizer::new(pattern)?;
        let n_ranks = train::ranks_target(vocab_size, special_tokens.len())?;
        let counts = train::count_chunks(&pretok, texts)?;
        let (tokens, _) = train::learn(counts.iter().map(|(k, v)| (k.as_bytes(), *v)), n_ranks);
        Self::with_consecutive_specials(tokens, pattern, special_tokens)
    }

    /// Train from chunk counts accumulated with [`ChunkCounter`] (streaming input).
    pub fn train_from_counter(
        counter: &ChunkCounter,
        vocab_size: usize,
        special_tokens: &[String],
    ) -> Result<Self, BpeError> {
        let n_ranks = train::ranks_target(vocab_size, special_tokens.len())?;
        let (tokens, _) = train::learn(counter.iter(), n_ranks);
        Self::with_consecutive_specials(tokens, counter.pattern(), special_tokens)
    }

    fn with_consecutive_specials(
        tokens: Vec<Vec<u8>>,
        pattern: &str,
        special_tokens: &[String],
    ) -> Result<Self, BpeError> {
        let n = tokens.len() as u32;
        let specials = special_tokens
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), n + i as u32))
            .collect();
        Self::from_ranks(tokens, pattern, specials)
    }

    /// Token ids of `text`, all of it treated as ordinary text (special-token strings included).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, BpeError> {
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        self.encode_into(text, &mut out)?;
        Ok(out)
    }

    /// Append the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), BpeError> {
        let mut scratch = encode::Scratch::default();
        self.pretok.for_each(text, |piece| {
            encode::encode_piece(self, piece.as_bytes(), out, &mut scratch)
        })
    }

    /// Encode many texts in parallel. `threads`: `None` = rayon's global pool (all cores),
    /// `Some(1)` = this thread only, `Some(k)` = a cached pool of `k` threads.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        threads: Option<usize>,
    ) -> Result<Vec<Vec<u32>>, BpeError> {
        use rayon::prelude::*;
        let run = || {
            texts
                .par_iter()
                .map(|t| self.encode_ordinary(t.as_ref()))
                .collect::<Result<Vec<_>, _>>()
        };
        match threads {
            Some(1) => texts
                .iter()
                .map(|t| self.encode_ordinary(t.as_ref()))
                .collect(),
            Some(k) => Ok(thread_pool(k)?.install(run)?),
            None => run(),
        }
    }

    /// The bytes of `ids`; a special token decodes to its string.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, BpeError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// The bytes of one token (a special token's string for special ids).
    pub fn token_bytes(&self, id: u32) -> Result<&[u8], BpeError> {
        if let Some(t) = self.tokens.get(id as usize) {
            return Ok(t);
        }
        match self.specials.binary_search_by_key(&id, |s| s.1) {
            Ok(k) => Ok(self.specials[k].0.as_bytes()),
            Err(_) => Err(BpeError::InvalidValue(format!(
                "token id {id} is out of range (vocab size {})",
                self.vocab_size()
            ))),
        }
    }

    /// The ordinary tokens' bytes by rank (= id).
    pub fn ranks(&self) -> &[Vec<u8>] {
        &self.tokens
    }

    /// Number of ordinary (non-special) tokens.
    pub fn n_ranks(&self) -> usize {
        self.tokens.len()
    }

    /// One more than the largest id, special tokens included.
    pub fn vocab_size(&self) -> usize {
        let top = self.specials.last().map_or(0, |s| s.1 as usize + 1);
        top.max(self.tokens.len())
    }

    /// (string, id) of each special token, sorted by id.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// The split pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Hex sha256 of the canonical serialization (the bytes [`Tokenizer::save`] writes).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// UTF-8 byte length of each id's token, 0 for special tokens and unused ids.
    pub fn token_byte_lengths(&self) -> Vec<i32> {
        let mut out = vec![0i32; self.vocab_size()];
        for (o, t) in out.iter_mut().zip(&self.tokens) {
            *o = t.len() as i32;
        }
        out
    }

    /// The chunks the split pattern cuts `text` into (debugging and reference tests).
    pub fn pretokenize<'a>(&self, text: &'a str) -> Result<Vec<&'a str>, BpeError> {
        self.pretok.split(text)
    }

    /// Write the project format atomically (temp file in the same folder, then rename).
    pub fn save(&self, path: &Path) -> Result<(), BpeError> {
        io::write_atomic(path, io::serialize(self).as_bytes())
    }

    /// Read a file written by [`Tokenizer::save`].
    pub fn load(path: &Path) -> Result<Self, BpeError> {
        io::load(path)
    }
}

fn thread_pool(k: usize) -> Result<std::sync::Arc<rayon::ThreadPool>, BpeError> {
    use std::sync::{Arc, Mutex, OnceLock};
    static POOLS: OnceLock<Mutex<FxHashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    if k == 0 {
        return Err(BpeError::InvalidValue(
            "num_threads must be >= 1 (or None for all cores)".into(),
        ));
    }
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = pools.get(&k) {
        return Ok(p.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(k)
        .build()
        .map_err(|e| BpeError::InvalidValue(format!("cannot start {k} threads: {e}")))?;
    let pool = Arc::new(pool);
    pools.insert(k, pool.clone());
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn corpus() -> Vec<String> {
        let base = "The quick brown fox jumps over the lazy dog. It's 2024; numbers 12345!\n\
                    def f(x):\n    return x ** 2  # square\n\tTabs and   spaces.\n\
                    Ünïcödé text, 中文字符, emoji 😀😀 and more more more text text.";
        (0..20)
            .map(|i| format!("{base} doc {i} {}", "ab".repeat(i)))
            .collect()
    }

    #[test]
    fn train_roundtrip_and_layout() {
        let specials = vec!["<|bos|>".to_string(), "<|end|>".to_string()];
        let tok = Tokenizer::train(&corpus(), 400, GPT4_SPLIT_PATTERN, &specials).unwrap();
        assert_eq!(tok.vocab_size(), 400);
        assert_eq!(tok.n_ranks(), 398);
        assert_eq!(tok.special_tokens()[1], ("<|end|>".to_string(), 399));
        for text in corpus() {
            let ids = tok.encode_ordinary(&text).unwrap();
            assert!(ids.len() < text.len());
            assert_eq!(tok.decode_bytes(&ids).unwrap(), text.as_bytes());
        }
        let ids = tok.encode_ordinary("<|bos|>").unwrap();
        assert!(!ids.contains(&398), "special strings are ordinary text");
        let lens = tok.token_byte_lengths();
        assert_eq!(lens.len(), 400);
        assert_eq!(lens[398], 0);
        assert_eq!(lens[b'a' as usize], 1);
    }

    #[test]
    fn vocab_too_small_is_rejected() {
        let err = Tokenizer::train(&corpus(), 256, GPT4_SPLIT_PATTERN, &["<|bos|>".into()]);
        assert!(matches!(err, Err(BpeError::InvalidValue(_))));
    }

    #[test]
    fn batch_equals_single() {
        let tok = Tokenizer::train(&corpus(), 300, GPT4_SPLIT_PATTERN, &[]).unwrap();
        let docs = corpus();
        let batch = tok.encode_batch(&docs, Some(2)).unwrap();
        let seq = tok.encode_batch(&docs, Some(1)).unwrap();
        assert_eq!(batch, seq);
        assert_eq!(batch[3], tok.encode_ordinary(&docs[3]).unwrap());
    }

    #[test]
    fn save_load_roundtrip_keeps_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.bpe");
        let tok =
            Tokenizer::train(&corpus(), 320, GPT4_SPLIT_PATTERN, &["<|bos|>".into()]).unwrap();
        tok.save(&path).unwrap();
        let back = Tokenizer::load(&path).unwrap();
        assert_eq!(back.hash(), tok.hash());
        assert_eq!(back.ranks(), tok.ranks());
        assert_eq!(back.special_tokens(), tok.special_tokens());
        let text = "some new text that was not in training 999";
        assert_eq!(
            back.encode_ordinary(text).unwrap(),
            tok.encode_ordinary(text).unwrap()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn roundtrip_any_text(s in any::<String>()) {
            static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
            let tok = TOK.get_or_init(|| Tokenizer::train(&corpus(), 350, GPT4_SPLIT_PATTERN, &[]).unwrap());
            let ids = tok.encode_ordinary(&s).unwrap();
            prop_assert_eq!(tok.decode_bytes(&ids).unwrap(), s.as_bytes());
        }
    }
}
