"""A slow, obviously-correct pure-Python BPE trainer: the reference for the Rust trainer.

Written from scratch for the tests; it shares no code with `lrt_bpe`. Each step recounts every
adjacent pair over the pretokenized chunks (weighted by chunk count) and merges the most
frequent one. The rules are the ones docs/TOKENIZER.md specifies for the Rust trainer:

- ties between equal counts go to the smaller ``(left id, right id)``;
- occurrences merge left to right inside a chunk;
- when a pair spells bytes that already are a token, it merges into that token (no new id);
- training stops at ``vocab_size - n_specials`` tokens or when no pair is left.

Pretokenization uses the PyPI ``regex`` module with the same pattern (``regex`` supports the
possessive quantifiers of the GPT-4 pattern).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import regex


def pretokenize(text: str, pattern: str) -> list[str]:
    """The chunks ``pattern`` cuts ``text`` into (non-overlapping matches, left to right)."""
    return regex.findall(pattern, text)


def train_reference(
    texts: Iterable[str], vocab_size: int, pattern: str, n_specials: int = 0
) -> list[bytes]:
    """Token bytes by rank: the 256 single bytes, then one entry per new token, in order."""
    chunk_counts = Counter(c for t in texts for c in pretokenize(t, pattern))
    words = [(list(chunk.encode("utf-8")), n) for chunk, n in chunk_counts.items()]
    tokens = [bytes([b]) for b in range(256)]
    index = {t: i for i, t in enumerate(tokens)}
    while len(tokens) < vocab_size - n_specials:
        pairs: Counter[tuple[int, int]] = Counter()
        for ids, n in words:
            for a, b in zip(ids, ids[1:], strict=False):
                pairs[(a, b)] += n
        if not pairs:
            break
        a, b = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))
        merged = tokens[a] + tokens[b]
        new_id = index.get(merged)
        if new_id is None:
            new_id = len(tokens)
            tokens.append(merged)
            index[merged] = new_id
        for ids, _ in words:
            i = 0
            while i < len(ids) - 1:
                if ids[i] == a and ids[i + 1] == b:
                    ids[i : i + 2] = [new_id]
                i += 1
    return tokens
