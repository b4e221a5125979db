"""Tokenizer tests: ids identical to tiktoken, merges identical to a pure-Python reference,
round trips, the file format and its errors.

Run: .venv/bin/python -m pytest tests/test_tokenizer.py -q
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from bpe_reference import pretokenize, train_reference
from conftest import SHARED_DATA, shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.tokenizer import (
    GPT4_SPLIT_PATTERN,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerFormatError,
)

# Characters around every branch of the split pattern: contractions (incl. the case folds
# 'ſ' of s), letters, digits of several scripts, the white-space variants, symbols, emoji.
TRICKY = list("sSdmtlLveEr'’ſKabcXYZ é中ß0123456789½٣⅛!?.,;:()[]{}-_=+*/\\\"#@$%^&€😀")
TRICKY += [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u2028", "\u3000", "\u0301"]
tricky_text = st.text(alphabet=st.sampled_from(TRICKY), max_size=80)
HYPOTHESIS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def builtin_corpus(limit: int = 600_000) -> list[str]:
    """Some real text that is always present: the standard library's own .py files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append(text)
        size += len(text)
        if size > limit:
            break
    return docs


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    docs = builtin_corpus()
    shakespeare = SHARED_DATA / "text" / "tinyshakespeare.txt"
    if shakespeare.exists():
        docs.append(shakespeare.read_text(encoding="utf-8")[:300_000])
    docs.append("Ünïcödé 中文字符 Ελληνικά русский العربية 😀😀 ½ ٣ don't WE'LL you'RE")
    return docs


@pytest.fixture(scope="module")
def tok(corpus: list[str]) -> Tokenizer:
    return Tokenizer.train(corpus, vocab_size=4096)


@pytest.fixture(scope="module")
def enc(tok: Tokenizer) -> tiktoken.Encoding:
    return tok.to_tiktoken()


# --- ids identical to tiktoken -------------------------------------------------------------


@HYPOTHESIS
@given(text=st.text())
def test_ids_match_tiktoken_any_unicode(tok: Tokenizer, enc: tiktoken.Encoding, text: str) -> None:
    assert tok.encode(text) == enc.encode_ordinary(text)


@HYPOTHESIS
@given(text=tricky_text)
def test_ids_match_tiktoken_tricky(tok: Tokenizer, enc: tiktoken.Encoding, text: str) -> None:
    assert tok.encode(text) == enc.encode_ordinary(text)


def test_ids_match_tiktoken_on_every_code_point(tok: Tokenizer, enc: tiktoken.Encoding) -> None:
    # Each scalar value after a space, after an apostrophe and before a letter: catches any
    # disagreement between our scanner's Unicode tables and tiktoken's regex engine.
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(f" {c}'{c}a" for c in chars)
    ids, _ = tok.encode_batch_flat([text])
    assert ids.tolist() == enc.encode_ordinary(text)


def _shared_texts() -> list[tuple[str, str]]:
    root = shared_path("text")
    texts = []
    for name in ("tinyshakespeare.txt", "wikitext2-valid.txt"):
        if (root / name).exists():
            texts.append((name, (root / name).read_text(encoding="utf-8")))
    for path in sorted((root / "gutenberg").glob("*.txt")):
        # The first 64 KB of each book keeps the test fast; every book is still covered.
        with path.open("rb") as f:
            head = f.read(64 * 1024).decode("utf-8", errors="ignore")
        texts.append((f"gutenberg/{path.name}", head))
    return texts


def test_ids_match_tiktoken_on_shared_data(tok: Tokenizer, enc: tiktoken.Encoding) -> None:
    texts = _shared_texts()
    assert texts, "no text files under shared/data/text"
    ours = tok.encode_batch([t for _, t in texts], num_threads=2)
    theirs = enc.encode_ordinary_batch([t for _, t in texts], num_threads=2)
    for (name, _), a, b in zip(texts, ours, theirs, strict=True):
        assert a == b, f"ids differ from tiktoken on {name}"


def test_pretokenizer_matches_regex_module(tok: Tokenizer, corpus: list[str]) -> None:
    text = "".join(doc[:20_000] for doc in corpus)
    assert tok._inner.pretokenize(text) == pretokenize(text, GPT4_SPLIT_PATTERN)


def test_tiktoken_ranks_file(tok: Tokenizer, tmp_path: Path, monkeypatch) -> None:
    import base64

    from tiktoken.load import load_tiktoken_bpe

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file itself, no cache
    path = tmp_path / "lrt.tiktoken"
    # tiktoken.load.dump_tiktoken_bpe's exact format (it needs `blobfile` just to open a file).
    with path.open("wb") as f:
        for token, rank in sorted(tok._inner.ranks(), key=lambda x: x[1]):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    ranks = load_tiktoken_bpe(str(path))
    specials = {"<|endoftext|>": len(ranks) + 5}  # a gap before the special, like cl100k
    ref = tiktoken.Encoding(
        "file", pat_str=GPT4_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    ours = Tokenizer.from_tiktoken_ranks(path, special_tokens=specials)
    from_dict = Tokenizer.from_tiktoken_ranks(ranks, special_tokens=specials)
    assert ours.hash == from_dict.hash
    assert ours.vocab_size == len(ranks) + 6
    assert ours.bos_id == len(ranks) + 5
    text = "".join(builtin_corpus(50_000)) + " Ünïcödé 中文 😀 <|endoftext|>"
    assert ours.encode(text) == ref.encode_ordinary(text) == tok.encode(text)
    assert ours.decode_bytes([len(ranks) + 5]) == b"<|endoftext|>"


# --- the trainer against the pure-Python reference -----------------------------------------

FIXED_CORPORA = [
    ["hello world", "hello there", "the world is here", "aaaa aaa aa a"],
    ["abababab", "ab ab ab", "ba ba", "abc abc bca cab", "xbc bc bc ab ab abx abx"],
    ["def f(x):\n    return x ** 2\n", "    if y != 12345:\n\t\tpass  # done\r\n", "x = 'it's'"],
    ["Ünïcödé 中文字符 中文", "emoji 😀😀😀 😀", "don't you're we'll they've I'M"],
]


@pytest.mark.parametrize("texts", FIXED_CORPORA)
def test_trainer_matches_reference_fixed(texts: list[str]) -> None:
    ours = Tokenizer.train(texts, vocab_size=256 + 30 + 1, special_tokens=("<|bos|>",))
    ref = train_reference(texts, 256 + 30 + 1, GPT4_SPLIT_PATTERN, n_specials=1)
    assert [b for b, _ in ours._inner.ranks()] == ref
    assert ours.special_tokens == {"<|bos|>": len(ref)}


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(tricky_text, min_size=1, max_size=6))
def test_trainer_matches_reference_generated(texts: list[str]) -> None:
    ours = Tokenizer.train(texts, vocab_size=256 + 30, special_tokens=())
    ref = train_reference(texts, 256 + 30, GPT4_SPLIT_PATTERN)
    assert [b for b, _ in ours._inner.ranks()] == ref


def test_streaming_batches_equal_one_list(corpus: list[str]) -> None:
    docs = corpus[:40]
    whole = Tokenizer.train(docs, vocab_size=600)
    streamed = Tokenizer.train((d for d in docs), vocab_size=600)
    assert whole.hash == streamed.hash
    # Many small batches (the binding pulls about `batch_bytes` at a time) give the same result.
    from pipeline import _rust

    small = _rust.Tokenizer.train(iter(docs), 600, GPT4_SPLIT_PATTERN, list(SPECIAL_TOKENS), 1000)
    assert small.hash == whole.hash


def test_custom_pattern_goes_through_regex() -> None:
    texts = ["one two three two one", "two two"]
    tok = Tokenizer.train(texts, vocab_size=270, pattern=r"\w+|\s+", special_tokens=())
    enc = tok.to_tiktoken()
    assert tok.encode("two one!") == enc.encode_ordinary("two one!")
    with pytest.raises(ValueError, match="does not compile"):
        Tokenizer.train(texts, vocab_size=270, pattern=r"(unclosed")


# --- round trips, layout, policies ---------------------------------------------------------


@HYPOTHESIS
@given(text=st.text())
def test_decode_encode_roundtrip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_layout_and_specials(tok: Tokenizer) -> None:
    assert tok.vocab_size == 4096
    assert list(tok.special_tokens) == list(SPECIAL_TOKENS)
    assert tok.special_tokens["<|bos|>"] == tok.bos_id == 4096 - len(SPECIAL_TOKENS)
    # Special-token strings in documents are ordinary text.
    ids = tok.encode("<|bos|> hi")
    assert tok.bos_id not in ids and tok.decode(ids) == "<|bos|> hi"
    assert tok.encode("hi", prepend_bos=True) == [tok.bos_id, *tok.encode("hi")]
    assert tok.decode([tok.bos_id]) == "<|bos|>"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_encode_batch(tok: Tokenizer, corpus: list[str]) -> None:
    docs = [d[:5000] for d in corpus[:30]]
    single = [tok.encode(d) for d in docs]
    assert tok.encode_batch(docs) == single
    assert tok.encode_batch(docs, num_threads=1) == single
    with_bos = tok.encode_batch(docs, prepend_bos=True, num_threads=2)
    assert with_bos == [[tok.bos_id, *s] for s in single]
    with pytest.raises(ValueError):
        tok.encode_batch(docs, num_threads=0)
    ids, offsets = tok.encode_batch_flat(docs, num_threads=2)
    assert ids.dtype == np.uint32 and offsets.dtype == np.int64
    assert offsets[0] == 0 and offsets[-1] == len(ids)
    assert [ids[a:b].tolist() for a, b in zip(offsets, offsets[1:], strict=False)] == single


def test_token_byte_lengths(tok: Tokenizer) -> None:
    lengths = tok.token_byte_lengths()
    assert lengths.dtype == np.int32 and lengths.shape == (tok.vocab_size,)
    for i in range(tok.vocab_size):
        expected = 0 if i >= tok.n_ranks else len(tok.token_bytes(i))
        assert lengths[i] == expected
    assert lengths[: tok.n_ranks].min() >= 1


def test_vocab_size_counts_specials() -> None:
    with pytest.raises(ValueError, match="at least 265"):
        Tokenizer.train(["abc"], vocab_size=264)
    tiny = Tokenizer.train(["ab ab"], vocab_size=1000)  # runs out of pairs
    assert tiny.vocab_size == tiny.n_ranks + len(SPECIAL_TOKENS) < 1000


# --- the file format -----------------------------------------------------------------------


def test_save_load_roundtrip(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tok.bpe"
    path.parent.mkdir()
    tok.save(path)
    back = Tokenizer.load(path)
    assert back.hash == tok.hash
    assert back.special_tokens == tok.special_tokens
    assert back.pattern == tok.pattern
    assert [p.name for p in path.parent.iterdir()] == ["tok.bpe"]  # no temp file left over
    text = "fresh text, never seen: Zyzzyva 42!"
    assert back.encode(text) == tok.encode(text)
    # Hash is the sha256 of the file, so it can be checked without the library.
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == tok.hash


def test_corrupt_file_names_file_and_line(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok.bpe"
    tok.save(path)
    lines = path.read_text().split("\n")
    lines[300] = "not base64!! x"
    bad = tmp_path / "bad.bpe"
    bad.write_text("\n".join(lines))
    with pytest.raises(TokenizerFormatError, match=r"bad\.bpe, line 301") as info:
        Tokenizer.load(bad)
    assert "Tokenizer.save()" in str(info.value)
    bad.write_text("\n".join(lines[:100]))  # truncated
    with pytest.raises(TokenizerFormatError, match="ends early"):
        Tokenizer.load(bad)
    bad.write_bytes(b"\x00\xff garbage")
    with pytest.raises(TokenizerFormatError, match="bad.bpe"):
        Tokenizer.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.bpe"):
        Tokenizer.load(tmp_path / "missing.bpe")
    assert issubclass(TokenizerFormatError, ValueError)
