//! BPE training: count chunks, then learn merges.
//!
//! 1. [`count_chunks`]: pretokenize every document in parallel (rayon); each worker counts its
//!    chunks in a hash map keyed by borrowed `&str` (no allocation per chunk), then the maps are
//!    merged. [`ChunkCounter`] does the same for a stream of batches, owning only unique chunks.
//! 2. [`learn`]: each unique chunk becomes a "word" of byte ids with a weight (its count). Pair
//!    counts and, per pair, the list of words containing it are built once (in parallel). Each
//!    step pops the most frequent pair from a max-heap, merges it in exactly the words that hold
//!    it, and applies the resulting count deltas. Heap entries are invalidated lazily: a popped
//!    entry whose count differs from the live count is pushed back with the live count, and
//!    every pair whose count grows gets a fresh entry, so the first valid pop is the true max.
//!
//! **Tie-breaking** (deterministic): the highest count wins; among equal counts the pair with the
//! smaller `(left id, right id)` wins. Within a word, occurrences merge left to right.
//!
//! **Duplicate bytes**: two different pairs can spell the same bytes (`a|bc` and `ab|c`). When
//! the chosen pair's bytes already are a token, its occurrences are rewritten to that token and
//! no new id is spent, so ranks stay unique (tiktoken requires it).
//!
//! Rejected: rebuilding pair counts each step (O(corpus) per merge, minbpe's simple version);
//! a hash set of word ids per pair (rustbpe): an append-only `Vec` with sort+dedup on use is
//! cheaper, since stale entries are harmless (merging a word without the pair is a no-op).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::{pair_key, BpeError, Pretokenizer};

/// Counts of unique chunks over a stream of document batches.
#[derive(Debug)]
pub struct ChunkCounter {
    pattern: String,
    pretok: Pretokenizer,
    counts: FxHashMap<String, u64>,
}

impl ChunkCounter {
    /// A counter that splits with `pattern`.
    pub fn new(pattern: &str) -> Result<Self, BpeError> {
        Ok(ChunkCounter {
            pattern: pattern.to_string(),
            pretok: Pretokenizer::new(pattern)?,
            counts: FxHashMap::default(),
        })
    }

    /// Count the chunks of one batch (in parallel); only new unique chunks are copied.
    pub fn add<S: AsRef<str> + Sync>(&mut self, texts: &[S]) -> Result<(), BpeError> {
        for (k, v) in count_chunks(&self.pretok, texts)? {
            match self.counts.get_mut(k) {
                Some(c) => *c += v,
                None => {
                    self.counts.insert(k.to_string(), v);
                }
            }
        }
        Ok(())
    }

    /// (chunk bytes, count) of every unique chunk.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.counts.iter().map(|(k, v)| (k.as_bytes(), *v))
    }

    /// The split pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Number of unique chunks so far.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True before any chunk was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// What [`learn`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrainStats {
    /// Unique chunks with at least two bytes.
    pub words: usize,
    /// Merge steps taken.
    pub merges: usize,
    /// Steps whose bytes were already a token (no new id).
    pub duplicate_merges: usize,
}

/// Number of ranks to learn for a `vocab_size` that includes `n_specials` special tokens.
pub fn ranks_target(vocab_size: usize, n_specials: usize) -> Result<usize, BpeError> {
    if vocab_size < 256 + n_specials {
        return Err(BpeError::InvalidValue(format!(
            "vocab_size {vocab_size} is too small: it counts the 256 byte tokens and the \
             {n_specials} special tokens, so it must be at least {}",
            256 + n_specials
        )));
    }
    if vocab_size > u32::MAX as usize / 2 {
        return Err(BpeError::InvalidValue(format!(
            "vocab_size {vocab_size} is too large"
        )));
    }
    Ok(vocab_size - n_specials)
}

/// Count unique chunks over `texts`, in parallel; keys borrow from `texts`.
pub fn count_chunks<'a, S: AsRef<str> + Sync>(
    pretok: &Pretokenizer,
    texts: &'a [S],
) -> Result<FxHashMap<&'a str, u64>, BpeError> {
    // A few large leaves: every leaf map is merged once, and merging is the costly part.
    let min_len = (texts.len() / (4 * rayon::current_num_threads())).max(1);
    texts
        .par_iter()
        .with_min_len(min_len)
        .try_fold(FxHashMap::default, |mut m, t| {
            pretok.for_each(t.as_ref(), |p| *m.entry(p).or_insert(0) += 1)?;
            Ok(m)
        })
        .try_reduce(FxHashMap::default, |a, b| {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (k, v) in small {
                *big.entry(k).or_insert(0) += v;
            }
            Ok(big)
        })
}

type PairCounts = FxHashMap<u64, i64>;
type PairWhere = FxHashMap<u64, Vec<u32>>;

/// Learn ranks from weighted chunks until there are `n_ranks` tokens or no pair is left.
/// Returns the token bytes by rank (the 256 single bytes first, in byte order).
pub fn learn<'a>(
    chunks: impl Iterator<Item = (&'a [u8], u64)>,
    n_ranks: usize,
) -> (Vec<Vec<u8>>, TrainStats) {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut by_bytes: FxHashMap<Vec<u8>, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut words: Vec<Vec<u32>> = Vec::new();
    let mut counts: Vec<i64> = Vec::new();
    for (b, c) in chunks {
        if b.len() >= 2 {
            words.push(b.iter().map(|&x| x as u32).collect());
            counts.push(c as i64);
        }
    }
    let mut stats = TrainStats {
        words: words.len(),
        ..Default::default()
    };
    let (mut pair_counts, mut pair_where) = initial_pairs(&words, &counts);
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> =
        pair_counts.iter().map(|(&p, &c)| (c, Reverse(p))).collect();
    let mut delta: PairCounts = FxHashMap::default();

    while tokens.len() < n_ranks {
        let Some((c, Reverse(p))) = heap.pop() else {
            break;
        };
        let live = pair_counts.get(&p).copied().unwrap_or(0);
        if live <= 0 {
            continue;
        }
        if live != c {
            heap.push((live, Reverse(p)));
            continue;
        }
        let (a, b) = ((p >> 32) as u32, p as u32);
        let mut bytes = tokens[a as usize].clone();
        bytes.extend_from_slice(&tokens[b as usize]);
        let new_id = match by_bytes.get(&bytes) {
            Some(&id) => {
                stats.duplicate_merges += 1;
                id
            }
            None => {
                let id = tokens.len() as u32;
                by_bytes.insert(bytes.clone(), id);
                tokens.push(bytes);
                id
            }
        };
        stats.merges += 1;

        let mut list = pair_where.remove(&p).unwrap_or_default();
        list.sort_unstable();
        list.dedup();
        delta.clear();
        for &wi in &list {
            merge_word(
                &mut words[wi as usize],
                (a, b, new_id),
                counts[wi as usize],
                wi,
                &mut delta,
                &mut pair_where,
            );
        }
        for (&q, &d) in &delta {
            if d == 0 {
                continue;
            }
            let e = pair_counts.entry(q).or_insert(0);
            *e += d;
            if *e == 0 {
                pair_counts.remove(&q);
            } else if d > 0 {
                heap.push((*e, Reverse(q)));
            }
        }
        debug_assert!(!pair_counts.contains_key(&p));
    }
    (tokens, stats)
}

/// Pair counts and, per pair, the words that contain it, built in parallel.
fn initial_pairs(words: &[Vec<u32>], counts: &[i64]) -> (PairCounts, PairWhere) {
    let min_len = (words.len() / (4 * rayon::current_num_threads())).max(1);
    words
        .par_iter()
        .enumerate()
        .with_min_len(min_len)
        .fold(
            || (PairCounts::default(), PairWhere::default()),
            |(mut pc, mut pw), (i, w)| {
                for win in w.windows(2) {
                    let k = pair_key(win[0], win[1]);
                    *pc.entry(k).or_insert(0) += counts[i];
                    let v = pw.entry(k).or_default();
                    if v.last() != Some(&(i as u32)) {
                        v.push(i as u32);
                    }
                }
                (pc, pw)
            },
        )
        .reduce(
            || (PairCounts::default(), PairWhere::default()),
            |(mut pc, mut pw), (pc2, pw2)| {
                for (k, v) in pc2 {
                    *pc.entry(k).or_insert(0) += v;
                }
                for (k, v) in pw2 {
                    pw.entry(k).or_default().extend(v);
                }
                (pc, pw)
            },
        )
}

/// Merge every occurrence of `(a, b)` in `word` (left to right) into `new`, recording the pair
/// count changes (times the word's `count`) in `delta` and new pairs' words in `pair_where`.
#[inline]
fn merge_word(
    word: &mut Vec<u32>,
    (a, b, new): (u32, u32, u32),
    count: i64,
    wi: u32,
    delta: &mut PairCounts,
    pair_where: &mut PairWhere,
) {
    let n = word.len();
    let mut note = |q: u64| {
        let v = pair_where.entry(q).or_default();
        if v.last() != Some(&wi) {
            v.push(wi);
        }
    };
    let (mut r, mut w) = (0, 0);
    while r < n {
        if r + 1 < n && word[r] == a && word[r + 1] == b {
            if w > 0 {
                // The left neighbour is already in output form (it may be `new` itself).
                let x = word[w - 1];
                *delta.entry(pair_key(x, a)).or_insert(0) -= count;
                *delta.entry(pair_key(x, new)).or_insert(0) += count;
                note(pair_key(x, new));
            }
            *delta.entry(pair_key(a, b)).or_insert(0) -= count;
            if r + 2 < n {
                let y = word[r + 2];
                *delta.entry(pair_key(b, y)).or_insert(0) -= count;
                *delta.entry(pair_key(new, y)).or_insert(0) += count;
                note(pair_key(new, y));
            }
            word[w] = new;
            r += 2;
        } else {
            word[w] = word[r];
            r += 1;
        }
        w += 1;
    }
    word.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slow reference: recount every pair from scratch at each step.
    fn naive(chunks: &[(&str, u64)], n_ranks: usize) -> Vec<Vec<u8>> {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut words: Vec<(Vec<u32>, u64)> = chunks
            .iter()
            .map(|(s, c)| (s.bytes().map(u32::from).collect(), *c))
            .collect();
        while tokens.len() < n_ranks {
            let mut pc: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
            for (w, c) in &words {
                for p in w.windows(2) {
                    *pc.entry((p[0], p[1])).or_default() += c;
                }
            }
            let Some((&(a, b), _)) = pc.iter().max_by_key(|(p, c)| (**c, Reverse(**p))) else {
                break;
            };
            let mut bytes = tokens[a as usize].clone();
            bytes.extend_from_slice(&tokens[b as usize]);
            let id = match tokens.iter().position(|t| *t == bytes) {
                Some(i) => i as u32,
                None => {
                    tokens.push(bytes);
                    tokens.len() as u32 - 1
                }
            };
            for (w, _) in &mut words {
                let mut out = Vec::new();
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        out.push(id);
                        i += 2;
                    } else {
                        out.push(w[i]);
                        i += 1;
                    }
                }
                *w = out;
            }
        }
        tokens
    }

    #[test]
    fn learn_equals_naive() {
        let chunks = [
            ("aaaa", 3),
            ("abab", 2),
            (" the", 5),
            (" then", 2),
            ("abcabc", 1),
            ("bcd", 4),
            ("aaa", 2),
            ("xyzxyz", 1),
        ];
        for n in [256, 260, 270, 280] {
            let (got, _) = learn(chunks.iter().map(|(s, c)| (s.as_bytes(), *c)), n);
            assert_eq!(got, naive(&chunks, n), "n_ranks {n}");
        }
    }

    #[test]
    fn duplicate_bytes_reuse_the_existing_token() {
        // "bc" merges first, then "ab" (from "ab" words), then "a|bc" spells "abc";
        // with "ab|c" words present as well the second spelling must not get a new id.
        let chunks = [("bc", 10), ("ab", 9), ("abc", 3), ("abx", 8), ("xbc", 1)];
        let (got, stats) = learn(chunks.iter().map(|(s, c)| (s.as_bytes(), *c)), 300);
        let mut seen = std::collections::HashSet::new();
        assert!(got.iter().all(|t| seen.insert(t.clone())));
        assert_eq!(got, naive(&chunks, 300));
        assert!(stats.merges >= got.len() - 256);
    }
}
