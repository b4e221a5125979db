"""Byte-level BPE tokenizer: the typed facade over the Rust core (`pipeline._rust.Tokenizer`).

Training, encoding and decoding run in Rust (crate `lrt_bpe`) with the GIL released. Token ids
equal tiktoken ranks: ids ``0..n_ranks`` are byte strings (all 256 single bytes among them),
special tokens follow. ``to_tiktoken()`` gives a ``tiktoken.Encoding`` with identical ids.

Special-token policy: ``encode`` treats its input as ordinary text. A document that contains the
string ``"<|bos|>"`` is encoded as the bytes of that string, never as the special id, so data can
never inject control tokens. Special ids enter only through ``prepend_bos`` or by the caller.

Example:
    >>> tok = Tokenizer.train(["hello world", "hello there"], vocab_size=300)
    >>> ids = tok.encode("hello world", prepend_bos=True)
    >>> ids[0] == tok.bos_id and tok.decode(ids[1:]) == "hello world"
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import _rust

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "GPT4_SPLIT_PATTERN",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "Tokenizer",
    "TokenizerFormatError",
    "find_tokenizer",
]

TOKENIZER_FILE = "tokenizer.bpe"
"""Name of the tokenizer the tokenize stage saves beside its shards."""

GPT4_SPLIT_PATTERN: str = _rust.GPT4_SPLIT_PATTERN
"""GPT-4 split pattern with numbers in groups of at most two digits (nanochat's)."""

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)

TokenizerFormatError = _rust.TokenizerFormatError

_BOS_CANDIDATES = ("<|bos|>", "<|endoftext|>")


class Tokenizer:
    """A byte-level BPE tokenizer. Build it with `train`, `load` or `from_tiktoken_ranks`."""

    def __init__(self, inner: _rust.Tokenizer) -> None:
        """Wrap a `pipeline._rust.Tokenizer` (use the class methods instead)."""
        self._inner = inner

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
    ) -> Tokenizer:
        """Train a tokenizer on documents.

        ``vocab_size`` counts everything: 256 byte tokens, the learned merges and the special
        tokens (which get the last ids, in order). If the corpus runs out of pairs first, the
        vocabulary is smaller; check ``vocab_size`` on the result.

        Memory: ``texts`` is consumed lazily in batches of about 64 MB; the trainer holds one
        batch plus the unique pretokenized chunks, not the corpus twice. Passing a list works
        too (then the list itself is the only full copy).

        Ties between equally frequent pairs go to the smaller (left id, right id). When a pair
        spells bytes that already are a token, it merges into that token (no new id).

        Args:
            texts: Documents.
            vocab_size: Total vocabulary size, special tokens included.
            pattern: Split pattern (the GPT-4 one runs on a fast exact scanner; others through
                fancy-regex).
            special_tokens: Special token strings, appended after the merges.

        Returns:
            The trained tokenizer.

        Raises:
            ValueError: ``vocab_size < 256 + len(special_tokens)``, a bad pattern or special.

        Example:
            >>> Tokenizer.train(["aaaa bbbb"] * 3, vocab_size=260, special_tokens=()).vocab_size
            260
        """
        specials = list(special_tokens)
        if len(set(specials)) != len(specials):
            raise ValueError(f"special_tokens has repeats: {specials}")
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of documents, not one str")
        return cls(_rust.Tokenizer.train(texts, int(vocab_size), pattern, specials))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer written by `save`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            TokenizerFormatError: the file is corrupt (the message names file and line).

        Example:
            >>> tok = Tokenizer.load("data/tokenizer.bpe")  # doctest: +SKIP
        """
        return cls(_rust.Tokenizer.load(Path(path)))

    @classmethod
    def from_tiktoken_ranks(
        cls,
        path: str | Path | dict[bytes, int],
        *,
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: dict[str, int] | None = None,
    ) -> Tokenizer:
        """Build from tiktoken ranks: a ``.tiktoken`` file or a ``{bytes: rank}`` dict.

        Ranks must be exactly ``0..M`` and include all 256 single bytes.

        Args:
            path: A ``.tiktoken`` file (``<base64 token> <rank>`` per line) or mergeable ranks.
            pattern: The split pattern the ranks were made for.
            special_tokens: ``{string: id}`` with ids ``>= M``; ``None`` for none.

        Example:
            >>> enc = tok.to_tiktoken()  # doctest: +SKIP
            >>> Tokenizer.from_tiktoken_ranks(enc._mergeable_ranks)  # doctest: +SKIP
        """
        specials = list((special_tokens or {}).items())
        if isinstance(path, dict):
            return cls(_rust.Tokenizer.from_ranks(list(path.items()), pattern, specials))
        return cls(_rust.Tokenizer.from_tiktoken_file(Path(path), pattern, specials))

    # --- persistence --------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the project's plain-text format atomically (temp file, then rename).

        Example:
            >>> tok.save("data/tokenizer.bpe")  # doctest: +SKIP
        """
        self._inner.save(Path(path))

    def to_tiktoken(self, name: str = "lrt") -> tiktoken.Encoding:
        """A ``tiktoken.Encoding`` that gives the same ids (imports tiktoken lazily).

        Example:
            >>> tok.to_tiktoken().encode_ordinary("hi") == tok.encode("hi")  # doctest: +SKIP
            True
        """
        import tiktoken

        return tiktoken.Encoding(
            name,
            pat_str=self.pattern,
            mergeable_ranks=dict(self._inner.ranks()),
            special_tokens=self.special_tokens,
        )

    # --- encode / decode ----------------------------------------------------------------------

    def encode(self, text: str, *, prepend_bos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings in it are ordinary text.

        Example:
            >>> tok.decode(tok.encode("<|bos|>")) == "<|bos|>"  # doctest: +SKIP
            True
        """
        ids = self._inner.encode_ordinary(text)
        if prepend_bos:
            ids.insert(0, self.bos_id)
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        prepend_bos: bool = False,
        num_threads: int | None = None,
    ) -> list[list[int]]:
        """Token ids of each text, encoded in parallel on Rust threads.

        Args:
            texts: Documents.
            prepend_bos: Start every list with ``bos_id``.
            num_threads: ``None`` for all cores, else the number of threads (``>= 1``).

        Example:
            >>> tok.encode_batch(["a b", "c"], num_threads=2)  # doctest: +SKIP
        """
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of documents, not one str")
        out = self._inner.encode_batch(list(texts), num_threads)
        if prepend_bos:
            bos = self.bos_id
            for ids in out:
                ids.insert(0, bos)
        return out

    def encode_batch_flat(
        self, texts: Sequence[str], *, num_threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids as one uint32 array plus int64 offsets, without Python lists.

        Text ``i`` is ``ids[offsets[i]:offsets[i + 1]]``; the arrays own the Rust buffers (no
        copy). Use this for bulk encoding; no BOS is added.

        Example:
            >>> ids, offsets = tok.encode_batch_flat(["a b", "c"])  # doctest: +SKIP
        """
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        return self._inner.encode_batch_flat(list(texts), num_threads)

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The bytes of ``ids`` (special tokens decode to their strings)."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        return self._inner.decode_bytes(list(ids))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids``; bytes that are not valid UTF-8 (a cut sequence) become U+FFFD.

        Example:
            >>> tok.decode(tok.encode("héllo")) == "héllo"  # doctest: +SKIP
            True
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- properties ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (largest id + 1)."""
        return self._inner.vocab_size

    @property
    def n_ranks(self) -> int:
        """Number of ordinary (byte-string) tokens."""
        return self._inner.n_ranks

    @property
    def pattern(self) -> str:
        """The split pattern."""
        return self._inner.pattern

    @property
    def special_tokens(self) -> dict[str, int]:
        """``{special token: id}``."""
        return self._inner.special_tokens

    @property
    def bos_id(self) -> int:
        """Id of ``<|bos|>`` (or ``<|endoftext|>`` for tiktoken vocabularies that lack it).

        Raises:
            ValueError: the tokenizer has neither.
        """
        specials = self._inner.special_tokens
        for name in _BOS_CANDIDATES:
            if name in specials:
                return specials[name]
        raise ValueError(
            f"tokenizer has no BOS token ({' or '.join(_BOS_CANDIDATES)}); "
            "train it with special_tokens that include '<|bos|>'"
        )

    @property
    def hash(self) -> str:
        """Hex sha256 of the canonical serialization (same bytes as `save` writes)."""
        return self._inner.hash

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token."""
        return self._inner.token_bytes(token_id)

    def token_byte_lengths(self) -> np.ndarray:
        """int32 ``(vocab_size,)``: UTF-8 byte length of each token, 0 for special tokens."""
        return self._inner.token_byte_lengths()

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, specials={len(self.special_tokens)}, "
            f"hash={self.hash[:12]})"
        )


def find_tokenizer(data_dir: str | Path) -> Path | None:
    """The tokenizer saved beside the shards in `data_dir`: `tokenizer.bpe`, else the first
    other `tokenizer*` file (temp files excluded); None when there is none."""
    data_dir = Path(data_dir)
    preferred = data_dir / TOKENIZER_FILE
    if preferred.is_file():
        return preferred
    others = sorted(
        p for p in data_dir.glob("tokenizer*") if p.is_file() and not p.name.endswith(".tmp")
    )
    return others[0] if others else None
