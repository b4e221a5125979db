"""Shard format, packing and corruption handling (pipeline.data.shards, .packing over _rust).

The reference reader below parses shards from the byte layout in docs/SHARD_FORMAT.md with
struct/zlib/zstandard only, so the Rust writer and reader are checked against the spec, not
against themselves.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.packing import pack, pack_files
from pipeline.data.shards import (
    ShardFormatError,
    TokenizerMismatchError,
    read_manifest,
    read_shard,
)

# --- an independent reader of format v1 (from docs/SHARD_FORMAT.md) ---------------------------

HEADER = struct.Struct("<8sIIII32sQQIIQII28sI")
assert HEADER.size == 128


def ref_read(path: Path) -> dict:
    """Parses and verifies a shard with the standard library (+ zstandard)."""
    b = path.read_bytes()
    (magic, version, dtype, vocab, chunk, tok_hash, n_tok, n_doc, comp, n_chunks, payload,
     index_crc, bos, reserved, header_crc) = HEADER.unpack_from(b)  # fmt: skip
    assert magic == b"LRTSHRD\0" and version == 1 and reserved == bytes(28)
    assert zlib.crc32(b[:124]) == header_crc
    table_end = 128 + 8 * n_doc + 24 * n_chunks
    assert payload == table_end and zlib.crc32(b[128:table_end]) == index_crc
    starts = np.frombuffer(b, dtype="<u8", count=n_doc, offset=128)
    np_dtype = {1: "<u2", 2: "<u4"}[dtype]
    assert dtype == (1 if vocab <= 65536 else 2)
    parts = []
    end = payload
    for i in range(n_chunks):
        off, length, crc, stored_crc = struct.unpack_from("<QQII", b, 128 + 8 * n_doc + 24 * i)
        assert off == end and off % 8 == 0
        stored = b[off : off + length]
        assert stored_crc == (zlib.crc32(stored) if comp == 1 else 0)
        raw = stored if comp == 0 else __import__("zstandard").ZstdDecompressor().decompress(stored)
        assert zlib.crc32(raw) == crc
        parts.append(raw)
        end = (off + length + 7) // 8 * 8
        assert b[off + length : end] == bytes(end - off - length)
    assert len(b) == end
    tokens = np.frombuffer(b"".join(parts), dtype=np_dtype)
    assert len(tokens) == n_tok
    return {"tokens": tokens, "starts": starts, "vocab": vocab, "bos": bos, "hash": tok_hash,
            "chunk": chunk, "payload": payload, "compression": comp, "n_chunks": n_chunks}  # fmt: skip


# --- real (tiny) tokenizers ---------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, BOS = 256."""

    vocab_size = 257
    bos_id = 256
    hash = hashlib.sha256(b"byte-tokenizer-v1").hexdigest()

    def encode_batch(self, texts):
        return [list(t.encode("utf-8")) for t in texts]


class WideTokenizer(ByteTokenizer):
    """Same ids in a vocabulary too large for u16 (forces u32 shards)."""

    vocab_size = 70_000
    bos_id = 69_999
    hash = hashlib.sha256(b"wide-tokenizer-v1").hexdigest()


def docs_corpus(n=120):
    return [f"document {i}: " + "lorem ipsum " * (i % 23) for i in range(n)]


def expected_stream(tok, docs):
    out = []
    for ids in tok.encode_batch([d for d in docs if d]):
        out += [tok.bos_id, *ids]
    return np.array(out)


def all_tokens(manifest, split):
    """Concatenated tokens of a split and global document starts, via the reference reader."""
    toks, starts, base = [], [], 0
    for e in manifest.splits[split]:
        r = ref_read(e.path)
        toks.append(r["tokens"].astype(np.int64))
        starts.append(r["starts"].astype(np.int64) + base)
        base += len(r["tokens"])
    return np.concatenate(toks), np.concatenate(starts)


# --- packing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("tok", [ByteTokenizer(), WideTokenizer()], ids=["u16", "u32"])
def test_pack_matches_reference_reader(tmp_path, compression, tok):
    docs = docs_corpus()
    m = pack(docs, tok, tmp_path, shard_tokens=1000, chunk_tokens=64,
             compression=compression, val_fraction=0.0)  # fmt: skip
    assert m.splits["val"] == [] and len(m.splits["train"]) > 3
    tokens, starts = all_tokens(m, "train")
    want = expected_stream(tok, docs)
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_array_equal(starts, np.flatnonzero(want == tok.bos_id))
    for e in m.splits["train"]:
        assert hashlib.sha256(e.path.read_bytes()).hexdigest() == e.sha256
        assert e.tokens <= 1000
        header, toks = read_shard(e.path)
        ref = ref_read(e.path)
        np.testing.assert_array_equal(toks, ref["tokens"])
        np.testing.assert_array_equal(header.doc_starts, ref["starts"])
        assert toks.dtype == (np.uint16 if tok.vocab_size <= 65536 else np.uint32)
        assert header.tokenizer_hash == tok.hash and header.compression == compression
    assert m.total_tokens == len(want) and m.documents == len(docs)
    assert m.token_dtype == ("uint16" if tok.vocab_size <= 65536 else "uint32")
    assert not list(tmp_path.glob("*.tmp"))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    docs=st.lists(st.text(max_size=40), max_size=30),
    shard_tokens=st.integers(1, 50),
    chunk_tokens=st.sampled_from([4, 8, 64]),
    compression=st.sampled_from(["none", "zstd"]),
)
def test_pack_roundtrip_property(tmp_path_factory, docs, shard_tokens, chunk_tokens, compression):
    tok = ByteTokenizer()
    out = tmp_path_factory.mktemp("prop")
    if not any(docs):
        with pytest.raises(ValueError, match="empty corpus"):
            pack(docs, tok, out)
        return
    m = pack(docs, tok, out, shard_tokens=shard_tokens, chunk_tokens=chunk_tokens,
             compression=compression, val_fraction=0.0)  # fmt: skip
    tokens, starts = all_tokens(m, "train")
    want = expected_stream(tok, docs)
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_array_equal(starts, np.flatnonzero(want == tok.bos_id))
    assert all(e.tokens == shard_tokens for e in m.splits["train"][:-1])


def test_documents_split_across_shards_index_only_true_starts(tmp_path):
    tok = ByteTokenizer()
    m = pack(["a" * 25, "bb", "c" * 9], tok, tmp_path, shard_tokens=16, chunk_tokens=4,
             val_fraction=0.0)  # fmt: skip
    starts = [list(ref_read(e.path)["starts"]) for e in m.splits["train"]]
    assert [e.tokens for e in m.splits["train"]] == [16, 16, 7]
    # doc 0 = 26 tokens spans shards 0-1; doc 1 starts at 10 of shard 1; doc 2 at 13.
    assert starts == [[0], [10, 13], []]
    assert [e.documents for e in m.splits["train"]] == [1, 2, 0]


def test_split_is_deterministic_by_seed(tmp_path):
    tok, docs = ByteTokenizer(), docs_corpus(400)
    a = pack(docs, tok, tmp_path / "a", shard_tokens=10_000, val_fraction=0.2, seed=1)
    b = pack(docs, tok, tmp_path / "b", shard_tokens=10_000, val_fraction=0.2, seed=1)
    c = pack(docs, tok, tmp_path / "c", shard_tokens=10_000, val_fraction=0.2, seed=2)
    assert [e.sha256 for e in a.splits["val"]] == [e.sha256 for e in b.splits["val"]]
    assert [e.sha256 for e in a.splits["val"]] != [e.sha256 for e in c.splits["val"]]
    n_val = a.split_documents("val")
    assert 40 <= n_val <= 120 and n_val + a.split_documents("train") == 400
    # every document lands in exactly one split, whole
    train, _ = all_tokens(a, "train")
    val, _ = all_tokens(a, "val")
    assert len(train) + len(val) == len(expected_stream(tok, docs))


def test_empty_corpus_and_empty_documents(tmp_path):
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="empty corpus"):
        pack([], tok, tmp_path / "none")
    with pytest.raises(ValueError, match="empty corpus: 3 documents read, 3 of them empty"):
        pack(["", "", ""], tok, tmp_path / "empty")
    assert not (tmp_path / "empty" / "manifest.json").exists()
    m = pack(["", "ab", "", "c"], tok, tmp_path / "some", val_fraction=0.0)
    assert m.empty_documents_skipped == 2 and m.documents == 2 and m.documents_read == 4
    assert m.total_tokens == 5


def test_failed_pack_leaves_nothing_half_written(tmp_path):
    tok = ByteTokenizer()
    good = pack(["old corpus"] * 10, tok, tmp_path, shard_tokens=16, val_fraction=0.0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def exploding():
        for i in range(2000):
            yield f"doc {i} " * 20
        raise RuntimeError("source failed mid-corpus")

    with pytest.raises(RuntimeError, match="mid-corpus"):
        pack(exploding(), tok, tmp_path, shard_tokens=64, val_fraction=0.1)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no temp files, old shards and manifest untouched
    assert read_manifest(tmp_path).total_tokens == good.total_tokens


def test_token_outside_vocab_is_value_error(tmp_path):
    class Bad(ByteTokenizer):
        def encode_batch(self, texts):
            return [[1, 2, 300] for _ in texts]

    with pytest.raises(ValueError, match="outside the vocabulary"):
        pack(["x"], Bad(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_repack_removes_stale_shards(tmp_path):
    tok = ByteTokenizer()
    pack(["x" * 100] * 10, tok, tmp_path, shard_tokens=64, val_fraction=0.0)
    m = pack(["y" * 10], tok, tmp_path, shard_tokens=64, val_fraction=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "train_0000.bin"]
    assert len(m.splits["train"]) == 1


# --- pack_files ---------------------------------------------------------------------------------


def test_pack_files_every_format_and_invalid_utf8(tmp_path):
    import polars as pl
    import zstandard

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"plain text file")
    (src / "bad.txt").write_bytes(b"ok \xff\xfe then \xc3 end")  # 3 invalid bytes
    (src / "b.jsonl").write_text(
        json.dumps({"text": "json one"}) + "\n\n" + json.dumps({"text": "json two", "id": 2}) + "\n"
    )
    lines = b"".join(json.dumps({"text": f"zst {i}"}).encode() + b"\n" for i in range(3))
    (src / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pl.DataFrame({"text": ["pq one", "pq two"], "n": [1, 2]}).write_parquet(src / "d.parquet")
    paths = [src / n for n in ("a.txt", "bad.txt", "b.jsonl", "c.jsonl.zst", "d.parquet")]

    tok = ByteTokenizer()
    m = pack_files(paths, tok, tmp_path / "out", val_fraction=0.0)
    want_docs = ["plain text file", "ok \ufffd\ufffd then \ufffd end", "json one", "json two",
                 "zst 0", "zst 1", "zst 2", "pq one", "pq two"]  # fmt: skip
    tokens, _ = all_tokens(m, "train")
    np.testing.assert_array_equal(tokens, expected_stream(tok, want_docs))
    assert m.source == {"kind": "files", "files": 5, "documents": 9,
                        "files_with_invalid_utf8": 1, "invalid_utf8_bytes_replaced": 3}  # fmt: skip
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["source"]["invalid_utf8_bytes_replaced"] == 3


def test_pack_files_val_paths_go_to_val_whole(tmp_path):
    """A source's own validation file (fineweb-edu's last shard) lands in val, every document
    of it, while the other files keep the seeded val_fraction draw they had without it."""
    import polars as pl

    train_docs = [f"training document {i}" for i in range(60)]
    val_docs = [f"held-out document {i}" for i in range(7)]
    pl.DataFrame({"text": train_docs}).write_parquet(tmp_path / "shard_00000.parquet")
    pl.DataFrame({"text": val_docs}).write_parquet(tmp_path / "shard_00001.parquet")
    paths = [tmp_path / "shard_00000.parquet", tmp_path / "shard_00001.parquet"]
    tok = ByteTokenizer()

    only_train = pack_files(paths[:1], tok, tmp_path / "a", val_fraction=0.2, seed=3)
    both = pack_files(paths, tok, tmp_path / "b", val_fraction=0.2, seed=3, val_paths=paths[1:])
    assert 0 < only_train.split_documents("val") < 60  # the draw is in use
    assert both.split_documents("train") == only_train.split_documents("train")
    assert both.split_documents("val") == only_train.split_documents("val") + 7
    val_tokens, _ = all_tokens(both, "val")
    tail = expected_stream(tok, val_docs)
    np.testing.assert_array_equal(val_tokens[-len(tail) :], tail)
    with pytest.raises(ValueError, match="not among the input paths"):
        pack_files(paths[:1], tok, tmp_path / "c", val_paths=paths[1:])


def test_pack_files_bad_inputs(tmp_path):
    tok = ByteTokenizer()
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported input type"):
        pack_files([tmp_path / "x.csv"], tok, tmp_path / "o1")
    (tmp_path / "y.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"y.jsonl:2: no string field"):
        pack_files([tmp_path / "y.jsonl"], tok, tmp_path / "o2")
    with pytest.raises(FileNotFoundError):
        pack_files([tmp_path / "missing.txt"], tok, tmp_path / "o3")
    for d in ("o1", "o2", "o3"):
        assert not (tmp_path / d).exists() or list((tmp_path / d).iterdir()) == []


# --- corruption ---------------------------------------------------------------------------------


@pytest.fixture(params=["none", "zstd"])
def shard(tmp_path, request):
    m = pack(docs_corpus(60), ByteTokenizer(), tmp_path, shard_tokens=4000, chunk_tokens=256,
             compression=request.param, val_fraction=0.0)  # fmt: skip
    path = m.splits["train"][0].path
    return path, path.read_bytes(), ref_read(path)


def rewrite(path, data):
    path.write_bytes(bytes(data))


def test_flip_a_byte_in_each_chunk(shard):
    path, good, ref = shard
    assert ref["n_chunks"] >= 4
    b = good
    for i in range(ref["n_chunks"]):
        off, length, _, _ = struct.unpack_from("<QQII", b, 128 + 8 * len(ref["starts"]) + 24 * i)
        bad = bytearray(good)
        bad[off + length // 2] ^= 0x10
        rewrite(path, bad)
        with pytest.raises(ShardFormatError) as e:
            read_shard(path)
        msg = str(e.value)
        assert path.name in msg and "lrt-pipeline tokenize" in msg
        if ref["compression"] == 0:
            assert f"checksum mismatch in chunk {i} " in msg
        else:  # a flipped zstd byte fails decompression or the checksum, in that chunk
            assert f"chunk {i} " in msg


def test_flip_any_header_or_index_byte(shard):
    path, good, ref = shard
    for pos in list(range(0, 128, 3)) + list(range(128, ref["payload"], 37)):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        rewrite(path, bad)
        with pytest.raises(ShardFormatError, match=path.name):
            read_shard(path)


def test_truncated(shard):
    path, good, _ = shard
    for n in (0, 7, 127, 128, 200, len(good) // 2, len(good) - 1):
        rewrite(path, good[:n])
        with pytest.raises(ShardFormatError, match=rf"{path.name}.*truncated"):
            read_shard(path)
    rewrite(path, good + b"\0" * 8)
    with pytest.raises(ShardFormatError, match="trailing bytes"):
        read_shard(path)


def _with_field(good, offset, fmt, value):
    bad = bytearray(good)
    struct.pack_into(fmt, bad, offset, value)
    struct.pack_into("<I", bad, 124, zlib.crc32(bad[:124]))  # a consistent header otherwise
    return bad


def test_bad_magic_version_dtype(shard):
    path, good, _ = shard
    bad = bytearray(good)
    bad[0:8] = b"NOTSHARD"
    rewrite(path, bad)
    with pytest.raises(ShardFormatError, match=rf"{path.name}: bad magic"):
        read_shard(path)
    rewrite(path, _with_field(good, 8, "<I", 2))
    with pytest.raises(ShardFormatError, match="unsupported format version 2"):
        read_shard(path)
    rewrite(path, _with_field(good, 12, "<I", 2))  # u32 for a 257-token vocab
    with pytest.raises(ShardFormatError, match="token dtype uint32 does not match vocab size 257"):
        read_shard(path)
    rewrite(path, _with_field(good, 12, "<I", 9))
    with pytest.raises(ShardFormatError, match="unknown token dtype code 9"):
        read_shard(path)
    rewrite(path, _with_field(good, 72, "<I", 5))
    with pytest.raises(ShardFormatError, match="unknown compression code 5"):
        read_shard(path)


def test_tokenizer_mismatch_and_missing_files(tmp_path, shard):
    from pipeline.data.loader import DataLoader

    path, _, _ = shard
    other = hashlib.sha256(b"another tokenizer").hexdigest()
    with pytest.raises(TokenizerMismatchError, match=rf"{path.name}.*{other}") as e:
        DataLoader(path.parent, "train", 2, 8, tokenizer_hash=other)
    assert isinstance(e.value, ShardFormatError) and isinstance(e.value, ValueError)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=path.name):
        DataLoader(path.parent, "train", 2, 8)
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_shard(tmp_path / "nope.bin")


def test_corrupt_manifest(shard):
    path, _, _ = shard
    (path.parent / "manifest.json").write_text("{not json")
    with pytest.raises(ShardFormatError, match="manifest.json"):
        read_manifest(path.parent)


# --- the real tokenizer -------------------------------------------------------------------------


def test_rust_tokenizer_fast_path_equals_python_path(tmp_path):
    """`pack` with `pipeline.data.tokenizer.Tokenizer` encodes in Rust (GIL released, all cores);
    the result must be byte-identical to encoding through its Python `encode_batch`."""
    tokenizer = pytest.importorskip("pipeline.data.tokenizer")
    from pipeline.data import packing

    docs = docs_corpus(200) + ["naïve café ☕ <|bos|> 12345"]
    tok = tokenizer.Tokenizer.train(docs, vocab_size=400)
    assert packing._rust_tokenizer(tok) is not None

    class PythonPath:  # the same tokenizer, seen only through its Python API
        vocab_size, bos_id, hash = tok.vocab_size, tok.bos_id, tok.hash

        def encode_batch(self, texts):
            return tok.encode_batch(texts)

    assert packing._rust_tokenizer(PythonPath()) is None
    fast = pack(docs, tok, tmp_path / "fast", shard_tokens=2000, val_fraction=0.1)
    slow = pack(docs, PythonPath(), tmp_path / "slow", shard_tokens=2000, val_fraction=0.1)
    for split in ("train", "val"):
        assert [e.sha256 for e in fast.splits[split]] == [e.sha256 for e in slow.splits[split]]
    tokens, _ = all_tokens(fast, "train")
    val, _ = all_tokens(fast, "val")
    assert sorted(np.concatenate([tokens, val]).tolist()) == sorted(
        expected_stream(tok, docs).tolist()
    )


def test_ids_outside_the_vocabulary_are_caught_on_read(shard):
    """Valid checksums, but ids >= the header's vocabulary: the reader and the loader name the
    file, the token and the id (before: an embedding IndexError naming no file)."""
    from pipeline.data.loader import DataLoader

    path, good, _ = shard
    # 1. The header says vocab 200 (BOS 100, so the header itself is valid); the stored BOS
    #    256 at token 0 is outside it.
    bad = bytearray(good)
    struct.pack_into("<I", bad, 16, 200)
    struct.pack_into("<I", bad, 92, 100)
    struct.pack_into("<I", bad, 124, zlib.crc32(bad[:124]))
    rewrite(path, bad)
    first = rf"{path.name}: token 0 \(chunk 0\) has id 256, outside the vocabulary of 200"
    with pytest.raises(ShardFormatError, match=first):
        read_shard(path)
    # 2. One id poked into chunk 2 of a raw shard, every checksum recomputed.
    header = HEADER.unpack_from(good)
    if header[8] != 0:
        return  # zstd: the poked bytes would have to be recompressed; case 1 covers it
    n_doc, payload = header[7], header[10]
    entry = 128 + 8 * n_doc + 24 * 2
    off, length = struct.unpack_from("<QQ", good, entry)
    bad = bytearray(good)
    struct.pack_into("<H", bad, off + 2 * 5, 300)
    struct.pack_into("<I", bad, entry + 16, zlib.crc32(bad[off : off + length]))
    struct.pack_into("<I", bad, 88, zlib.crc32(bad[128:payload]))
    struct.pack_into("<I", bad, 124, zlib.crc32(bad[:124]))
    rewrite(path, bad)
    poked = r"token 517 \(chunk 2\) has id 300, outside"
    with pytest.raises(ShardFormatError, match=poked):
        read_shard(path)
    with pytest.raises(ShardFormatError, match=poked):  # the loader reaches it too
        batches = iter(DataLoader(path.parent, "train", 2, 8))
        for _ in range(5000):
            next(batches)


def test_pack_files_reader_errors_name_the_file(tmp_path):
    import polars as pl

    good = tmp_path / "good.parquet"
    pl.DataFrame({"text": ["a document"] * 200}).write_parquet(good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:-12])  # footer gone
    zst = tmp_path / "plain.jsonl.zst"
    zst.write_bytes(b'{"text": "not compressed"}\n')
    for path in (bad, zst):
        with pytest.raises(ValueError, match=rf"{path.name}: unreadable"):
            pack_files([good, path], ByteTokenizer(), tmp_path / f"out_{path.stem}")
        assert not list((tmp_path / f"out_{path.stem}").glob("*.bin"))
