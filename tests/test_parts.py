"""Tokenizing in parts (`tokenize --part i/n` + `--merge`) equals one run (pipeline.data.parts).

What must be equal between a single-run pack and n parts merged, for each split:
* the token stream: the shards the manifest lists, read in order and concatenated;
* the document starts in that stream (each shard's BOS index, offset by the tokens before it);
* the manifest's settings and totals (tokens, documents, documents_read, empty documents, and
  per split tokens and documents); only the shard files, and so `totals.<split>.shards`, differ.
Independently of the split draw, the documents of both splits together are exactly the
non-empty input documents, each `<|bos|>` + its encoding. Everything runs the real Rust packer.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import shared_path

from pipeline.cli import main
from pipeline.data.loader import DataLoader
from pipeline.data.packing import pack_files
from pipeline.data.parts import (
    PartMergeError,
    PartSpec,
    PartTokenizerMismatchError,
    merge_parts,
)
from pipeline.data.shards import read_manifest, read_shard
from pipeline.data.tokenizer import Tokenizer

SETTINGS = {"shard_tokens": 20_000, "val_fraction": 0.1, "seed": 3, "chunk_tokens": 4096}


def _documents() -> list[str]:
    """Real text cut into paragraphs (a few empty ones kept: they are skipped and counted)."""
    text = shared_path("text", "tinyshakespeare.txt").read_text(encoding="utf-8")
    paras = text.split("\n\n")[:2500]
    return [p if i % 97 else "" for i, p in enumerate(paras)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str], Path]:
    """Input files of uneven sizes (.jsonl, .txt, .jsonl) + a val file; all documents in order."""
    docs = _documents()
    root = tmp_path_factory.mktemp("corpus")
    cuts = [0, 700, 701, 1900, len(docs) - 300, len(docs)]
    files = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        if b - a == 1:
            path = root / f"f{k}.txt"
            path.write_text(docs[a], encoding="utf-8")
        else:
            path = root / f"f{k}.jsonl"
            path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[a:b]))
        files.append(path)
    return files, docs, files[-1]


@pytest.fixture(scope="module")
def tok(corpus) -> Tokenizer:
    return Tokenizer.train(corpus[1][:800], vocab_size=700)


def _stream(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's tokens (shards in manifest order) and its global document starts."""
    tokens, starts, offset = [], [], 0
    for entry in read_manifest(out).splits[split]:
        header, t = read_shard(entry.path)
        tokens.append(t.astype(np.int64))
        starts.append(header.doc_starts.astype(np.int64) + offset)
        offset += len(t)
    return np.concatenate(tokens), np.concatenate(starts)


def _docs_of(out: Path, split: str) -> list[tuple[int, ...]]:
    tokens, starts = _stream(out, split)
    ends = [*starts[1:], len(tokens)]
    return [tuple(tokens[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]


def _pack_parts(files, tok, out: Path, n: int, **kw) -> None:
    for i in range(1, n + 1):
        pack_files(
            files, tok, out, val_paths=[files[-1]], part=PartSpec(i, n), **{**SETTINGS, **kw}
        )


@pytest.fixture(scope="module")
def one_and_parts(corpus, tok, tmp_path_factory) -> tuple[Path, Path]:
    files, _, val_file = corpus
    one = tmp_path_factory.mktemp("one")
    pack_files(files, tok, one, val_paths=[val_file], **SETTINGS)
    parts = tmp_path_factory.mktemp("parts")
    _pack_parts(files, tok, parts, 3)
    merge_parts(parts, tokenizer_hash=tok.hash)
    return one, parts


def test_parts_merged_equal_one_run(one_and_parts, corpus, tok) -> None:
    one, parts = one_and_parts
    for split in ("train", "val"):
        t1, s1 = _stream(one, split)
        t3, s3 = _stream(parts, split)
        np.testing.assert_array_equal(t3, t1)
        np.testing.assert_array_equal(s3, s1)
    a, b = read_manifest(one), read_manifest(parts)
    for key in ("tokenizer_hash", "vocab_size", "bos_id", "token_dtype", "compression",
                "shard_tokens", "chunk_tokens", "val_fraction", "seed", "total_tokens",
                "documents", "documents_read", "empty_documents_skipped"):  # fmt: skip
        assert getattr(a, key) == getattr(b, key), key
    raw1 = json.loads((one / "manifest.json").read_text())["totals"]
    raw3 = json.loads((parts / "manifest.json").read_text())["totals"]
    for split in ("train", "val"):
        assert {k: raw3[split][k] for k in ("tokens", "documents")} == {
            k: raw1[split][k] for k in ("tokens", "documents")
        }
        assert raw3[split]["shards"] == len(b.splits[split]) >= len(a.splits[split])
    # Independent of the split draw: the documents are the non-empty inputs, BOS + encoding.
    _, docs, _ = corpus
    want = sorted((tok.bos_id, *tok.encode(d)) for d in docs if d)
    assert sorted(_docs_of(parts, "train") + _docs_of(parts, "val")) == want
    assert b.empty_documents_skipped == sum(1 for d in docs if not d) > 0
    # The source's own val file went to val whole (it is the tail of the val stream).
    val_docs = _docs_of(parts, "val")
    tail = [(tok.bos_id, *tok.encode(d)) for d in docs[-300:] if d]
    assert val_docs[-len(tail) :] == tail and len(val_docs) > len(tail)
    # Every shard the merged manifest lists belongs to a part; no single-run names.
    assert all(re.match(r"part000[123]of0003_(train|val)_\d{4}\.bin$", e.file)
               for s in b.splits.values() for e in s)  # fmt: skip


def test_loader_reads_merged_parts(one_and_parts) -> None:
    """The loader reads the merged folder like any other: contiguous val windows, in order,
    are the windows of the listed shards; a best-fit epoch sees every train document start."""
    _, parts = one_and_parts
    T = 64
    rows = [r for x, y in DataLoader(parts, "val", 4, T, mode="contiguous", shuffle=False,
                                     epochs=1) for r in torch_rows(x, y)]  # fmt: skip
    want = []
    for entry in read_manifest(parts).splits["val"]:
        _, t = read_shard(entry.path)
        want += [t[w * T : w * T + T + 1].tolist() for w in range((len(t) - 1) // T)]
    assert rows == want and rows
    train_tokens, _ = _stream(parts, "train")
    loader = DataLoader(parts, "train", 8, T, mode="bestfit", shuffle=False, epochs=1)
    seen = 0
    for x, _ in loader:
        assert (x[:, 0].long() == read_manifest(parts).bos_id).all()
        seen += x.numel()
    assert 0 < seen <= len(train_tokens)


def torch_rows(x, y) -> list[list[int]]:
    return [[*a.tolist(), b[-1].item()] for a, b in zip(x.long(), y.long(), strict=True)]


def test_partition_rule_and_parse() -> None:
    ranges = [PartSpec(i, 3).document_range(10) for i in (1, 2, 3)]
    assert ranges == [(0, 3), (3, 6), (6, 10)]
    assert PartSpec.parse(" 2 / 3 ") == PartSpec(2, 3) and str(PartSpec(2, 3)) == "2/3"
    assert PartSpec(2, 3).prefix == "part0002of0003_"
    for bad in ("0/3", "4/3", "1/0", "a/b", "1-3", "", "-1/3"):
        with pytest.raises(ValueError, match="1-based|I/N"):
            PartSpec.parse(bad)
    with pytest.raises(ValueError, match="at most 2 part"):
        PartSpec(1, 3).document_range(2)


def _fresh_parts(corpus, tok, tmp_path: Path, n: int = 3) -> Path:
    files, _, _ = corpus
    out = tmp_path / "parts"
    _pack_parts(files, tok, out, n)
    return out


def test_missing_part_is_named_with_the_fix(corpus, tok, tmp_path) -> None:
    out = _fresh_parts(corpus, tok, tmp_path)
    (out / "part0002of0003_manifest.json").unlink()
    with pytest.raises(PartMergeError, match=r"part0002of0003_manifest\.json.*--part 2/3"):
        merge_parts(out, tokenizer_hash=tok.hash)
    assert not (out / "manifest.json").exists()
    with pytest.raises(PartMergeError, match="no part manifests"):
        merge_parts(tmp_path / "empty")


def test_part_with_another_tokenizer_or_settings_is_refused(corpus, tok, tmp_path) -> None:
    files, docs, _ = corpus
    out = _fresh_parts(corpus, tok, tmp_path)
    other = Tokenizer.train(docs[:300], vocab_size=500)
    pack_files(files, other, out, val_paths=[files[-1]], part=PartSpec(2, 3), **SETTINGS)
    with pytest.raises(PartTokenizerMismatchError, match=r"part0002of0003_manifest\.json"):
        merge_parts(out, tokenizer_hash=tok.hash)
    with pytest.raises(PartTokenizerMismatchError, match="part0002of0003"):
        merge_parts(out)  # against part 1 when no folder tokenizer is given
    _pack_parts(files, tok, out, 3)
    pack_files(files, tok, out, val_paths=[files[-1]], part=PartSpec(3, 3),
               **{**SETTINGS, "seed": 4})  # fmt: skip
    with pytest.raises(PartMergeError, match=r"part0003of0003_manifest\.json: seed = 4"):
        merge_parts(out, tokenizer_hash=tok.hash)
    # Other input data (a file dropped) is caught too.
    pack_files(files[1:], tok, out, val_paths=[files[-1]], part=PartSpec(3, 3), **SETTINGS)
    with pytest.raises(PartMergeError, match="input data"):
        merge_parts(out, tokenizer_hash=tok.hash)


def test_copied_part_missing_shard_and_mixed_splits(corpus, tok, tmp_path) -> None:
    out = _fresh_parts(corpus, tok, tmp_path)
    p1, p2 = out / "part0001of0003_manifest.json", out / "part0002of0003_manifest.json"
    saved = p2.read_bytes()
    shutil.copy(p1, p2)  # a duplicate of part 1 under part 2's name
    with pytest.raises(
        PartMergeError, match=r"part0002of0003_manifest\.json: its content is part 1/3"
    ):
        merge_parts(out)
    p2.write_bytes(saved)
    shard = out / json.loads(saved)["splits"]["train"][0]["file"]
    shard.rename(shard.with_suffix(".moved"))
    with pytest.raises(PartMergeError, match=rf"{shard.name}: shard of part 2/3 is missing"):
        merge_parts(out)
    shard.with_suffix(".moved").rename(shard)
    merge_parts(out)  # now complete
    files, _, _ = corpus
    pack_files(files, tok, out, val_paths=[files[-1]], part=PartSpec(1, 2), **SETTINGS)
    with pytest.raises(PartMergeError, match=r"mixed.*part0001of0002_manifest\.json"):
        merge_parts(out)


# --- the CLI, end to end on the raw data of `download` ------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("LRT_MLFLOW_PARENT_RUN_ID", "LRT_TRACKING__ENABLED"):
        monkeypatch.delenv(var, raising=False)
    lines = shared_path("text", "wikitext2-valid.txt").read_text(encoding="utf-8").split("\n")
    text = tmp_path / "wiki.jsonl"  # one document per non-blank line of real text
    text.write_text("".join(json.dumps({"text": x}) + "\n" for x in lines if x.strip()))
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "tracking": {"enabled": False},
                "data": {"source": "files", "paths": [str(text)], "max_bytes": 400_000},
                "tokenizer": {"vocab_size": 400, "train_max_bytes": 100_000,
                              "shard_tokens": 30_000, "val_fraction": 0.2},
            }
        )
    )  # fmt: skip
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_parts_then_merge_equal_one_run(project: Path) -> None:
    assert invoke("download").exit_code == 0
    r = invoke("tokenize", "--set", "tokenizer.out_dir=one")
    assert r.exit_code == 0, r.output
    # A part run without the shared tokenizer refuses to train its own.
    r = invoke("tokenize", "--part", "1/3", "--set", "tokenizer.out_dir=parts")
    assert r.exit_code == 1 and "--tokenizer-only" in r.output and "Traceback" not in r.output
    r = invoke("tokenize", "--tokenizer-only", "--set", "tokenizer.out_dir=parts")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (project / "parts").iterdir()) == ["stats.json", "tokenizer.bpe"]
    assert (project / "parts/tokenizer.bpe").read_bytes() == (
        project / "one/tokenizer.bpe"
    ).read_bytes()
    for i in (3, 1, 2):  # any order
        r = invoke("tokenize", "--part", f"{i}/3", "--set", "tokenizer.out_dir=parts")
        assert r.exit_code == 0, r.output
        assert f"part {i}/3" in r.output
    r = invoke("tokenize", "--merge", "--set", "tokenizer.out_dir=parts")
    assert r.exit_code == 0, r.output
    for split in ("train", "val"):
        for a, b in zip(
            _stream(project / "one", split), _stream(project / "parts", split), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    s1 = json.loads((project / "one/stats.json").read_text())
    s3 = json.loads((project / "parts/stats.json").read_text())
    for key in ("vocab_size", "tokenizer_hash", "documents", "tokens", "train_tokens",
                "val_tokens", "bytes_per_token", "train_sample_bytes"):  # fmt: skip
        assert s1[key] == s3[key], key
    assert s3["parts"] == 3
    # A one-run tokenize afterwards clears the part files.
    r = invoke("tokenize", "--set", "tokenizer.out_dir=parts")
    assert r.exit_code == 0 and not list((project / "parts").glob("part*"))


@pytest.mark.parametrize("value", ["0/3", "4/3", "3", "1/0", "x/y"])
def test_cli_bad_part_value(project: Path, value: str) -> None:
    r = invoke("tokenize", "--part", value)
    assert r.exit_code == 2
    assert "Invalid value for '--part'" in r.output and repr(value) in r.output or value in r.output
    assert "1-based" in r.output or "I/N" in r.output, r.output


def test_cli_part_and_merge_exclude_each_other(project: Path) -> None:
    r = invoke("tokenize", "--part", "1/2", "--merge")
    assert r.exit_code == 2 and "exclude each other" in r.output


def test_cli_part_rerun_replaces_only_its_own_files(project: Path) -> None:
    """The folder rules of `tokenize --part i/n` (pipeline.data.tokenize_stage): a re-run replaces
    this part's old files (fewer shards now: none of the old ones linger), keeps the other
    parts of the same n, removes parts of another n and the merged manifest.json (stale)."""
    out = ["--set", "tokenizer.out_dir=parts"]
    assert invoke("download", "--set", "data.max_bytes=150000").exit_code == 0
    assert invoke("tokenize", "--tokenizer-only", *out).exit_code == 0
    small = ["--set", "tokenizer.shard_tokens=4000"]
    for part in ("3/3", "1/2", "2/2"):
        r = invoke("tokenize", "--part", part, *out, *small)
        assert r.exit_code == 0, r.output
    r = invoke("tokenize", "--merge", *out)
    assert r.exit_code == 0, r.output
    folder = project / "parts"

    def files(prefix: str) -> set[str]:
        return {p.name for p in folder.glob(prefix + "*")}

    def listed(prefix: str) -> set[str]:
        raw = json.loads((folder / f"{prefix}manifest.json").read_text())
        return {e["file"] for s in raw["splits"].values() for e in s} | {f"{prefix}manifest.json"}

    before_1, before_2 = files("part0001of0002_"), files("part0002of0002_")
    for i in (1, 2):  # a file of each part that no packer would remove (not a shard name)
        (folder / f"part000{i}of0002_old.txt").write_text("from an earlier run")
    r = invoke("tokenize", "--part", "1/2", *out)  # default shard_tokens: fewer, larger shards
    assert r.exit_code == 0, r.output
    after_1 = files("part0001of0002_")
    assert after_1 == listed("part0001of0002_") and len(after_1) < len(before_1)
    assert files("part0002of0002_") == before_2 | {"part0002of0002_old.txt"}
    assert before_2 == listed("part0002of0002_")
    assert not files("part0003of0003_") and not (folder / "manifest.json").exists()
    assert {"tokenizer.bpe", "stats.json"} <= {p.name for p in folder.iterdir()}
