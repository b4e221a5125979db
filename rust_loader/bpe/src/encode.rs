//! Rank-based byte pair merge of one chunk, with tiktoken's exact semantics.
//!
//! tiktoken (`_byte_pair_merge`): if the whole chunk is a token, emit it; otherwise start from
//! single bytes and repeatedly merge the adjacent pair whose concatenated bytes have the lowest
//! rank, the leftmost one on ties, until no adjacent pair is a token. We run the same procedure
//! on token ids: `pair_rank[(a, b)]` is the rank of `bytes(a) ++ bytes(b)` for every way of
//! splitting a token into two tokens, so the lookup hashes one u64 instead of a byte slice.
//!
//! Short chunks use a flat vector and a linear scan for the minimum (cache-friendly, like
//! tiktoken); chunks longer than [`LONG_PIECE`] bytes use a linked list plus a min-heap so that
//! long runs of spaces or symbols cost O(n log n) instead of O(n^2).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::{pair_key, Tokenizer};

/// Chunks longer than this use the heap-based merge.
pub const LONG_PIECE: usize = 128;

/// Reusable buffers for [`encode_piece`].
#[derive(Default)]
pub struct Scratch {
    ids: Vec<u32>,
    ranks: Vec<u32>,
}

#[inline(always)]
fn rank(tok: &Tokenizer, a: u32, b: u32) -> u32 {
    tok.pair_rank
        .get(&pair_key(a, b))
        .copied()
        .unwrap_or(u32::MAX)
}

/// Append the ids of one chunk to `out`.
#[inline]
pub fn encode_piece(tok: &Tokenizer, piece: &[u8], out: &mut Vec<u32>, s: &mut Scratch) {
    if piece.len() == 1 {
        out.push(tok.byte_id[piece[0] as usize]);
        return;
    }
    if let Some(&id) = tok.encoder.get(piece) {
        out.push(id);
        return;
    }
    if piece.len() > LONG_PIECE {
        merge_long(tok, piece, out);
        return;
    }
    s.ids.clear();
    s.ids.extend(piece.iter().map(|&b| tok.byte_id[b as usize]));
    s.ranks.clear();
    s.ranks
        .extend(s.ids.windows(2).map(|w| rank(tok, w[0], w[1])));
    loop {
        let mut best = u32::MAX;
        let mut at = 0;
        for (i, &r) in s.ranks.iter().enumerate() {
            if r < best {
                best = r;
                at = i;
            }
        }
        if best == u32::MAX {
            break;
        }
        s.ids[at] = best;
        s.ids.remove(at + 1);
        s.ranks.remove(at);
        if at > 0 {
            s.ranks[at - 1] = rank(tok, s.ids[at - 1], s.ids[at]);
        }
        if at < s.ranks.len() {
            s.ranks[at] = rank(tok, s.ids[at], s.ids[at + 1]);
        }
    }
    out.extend_from_slice(&s.ids);
}

/// Same result as the flat loop, for long chunks. Nodes never move, so a node's index orders
/// it by position and `(rank, index)` in a min-heap picks the leftmost lowest rank. A node's
/// pair rank only ever changes to the rank of a longer byte string, so an entry whose rank
/// equals the node's current rank is never stale.
fn merge_long(tok: &Tokenizer, piece: &[u8], out: &mut Vec<u32>) {
    const NONE: usize = usize::MAX;
    let n = piece.len();
    let mut ids: Vec<u32> = piece.iter().map(|&b| tok.byte_id[b as usize]).collect();
    let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
    let mut cur: Vec<u32> = vec![u32::MAX; n];
    let mut heap = BinaryHeap::with_capacity(n);
    for i in 0..n - 1 {
        cur[i] = rank(tok, ids[i], ids[i + 1]);
        if cur[i] != u32::MAX {
            heap.push(Reverse((cur[i], i)));
        }
    }
    while let Some(Reverse((r, i))) = heap.pop() {
        if cur[i] != r || ids[i] == u32::MAX {
            continue;
        }
        let j = next[i];
        ids[i] = r;
        ids[j] = u32::MAX; // dead
        next[i] = next[j];
        if next[j] != NONE {
            prev[next[j]] = i;
        }
        cur[j] = u32::MAX;
        cur[i] = if next[i] == NONE {
            u32::MAX
        } else {
            rank(tok, ids[i], ids[next[i]])
        };
        if cur[i] != u32::MAX {
            heap.push(Reverse((cur[i], i)));
        }
        let p = prev[i];
        if p != NONE {
            cur[p] = rank(tok, ids[p], ids[i]);
            if cur[p] != u32::MAX {
                heap.push(Reverse((cur[p], p)));
            }
        }
    }
    out.extend(ids.into_iter().filter(|&id| id != u32::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GPT4_SPLIT_PATTERN;
    use proptest::prelude::*;

    fn small_tokenizer() -> Tokenizer {
        let docs: Vec<String> = (0..50)
            .map(|i| {
                format!(
                    "{}aaab abab  {} ---==--- ...,,, {i}",
                    " ".repeat(i % 7),
                    "ba".repeat(i % 5)
                )
            })
            .collect();
        Tokenizer::train(&docs, 320, GPT4_SPLIT_PATTERN, &[]).unwrap()
    }

    fn flat(tok: &Tokenizer, piece: &[u8]) -> Vec<u32> {
        // Force the flat loop by skipping the whole-piece and long-piece shortcuts.
        let mut s = Scratch::default();
        s.ids.extend(piece.iter().map(|&b| tok.byte_id[b as usize]));
        let mut out = Vec::new();
        let mut ids = s.ids.clone();
        loop {
            let best = ids
                .windows(2)
                .enumerate()
                .map(|(i, w)| (rank(tok, w[0], w[1]), i))
                .min();
            match best {
                Some((r, i)) if r != u32::MAX => {
                    ids[i] = r;
                    ids.remove(i + 1);
                }
                _ => break,
            }
        }
        out.extend(ids);
        out
    }

    proptest! {
        #[test]
        fn long_merge_equals_flat(v in prop::collection::vec(prop::sample::select(b" ab-=.,\n".to_vec()), 2..400)) {
            let tok = small_tokenizer();
            let mut out = Vec::new();
            merge_long(&tok, &v, &mut out);
            prop_assert_eq!(out, flat(&tok, &v));
        }
    }
}
