"""Tokenizing on several machines: pack part i of n of the document stream, then merge.

    lrt-pipeline tokenize --tokenizer-only        # once: train (or copy) the tokenizer
    lrt-pipeline tokenize --part 1/3              # on machine 1 (2/3, 3/3 on the others)
    lrt-pipeline tokenize --merge                 # once every part's files are in one folder

Rules (docs/PIPELINE.md, docs/SHARD_FORMAT.md):

* Parts are 1-based. Part i of n takes the documents numbered `(i-1)*N//n .. i*N//n - 1` of
  the input stream (N documents: the raw files in manifest order, each file's documents in
  order), a contiguous range, so every machine computes the same split from the raw manifest.
* A part keeps the single run's document numbering (`first_document`), so every document gets
  the same train/val draw, and a source's own validation files go to val whole, as before.
* A part never trains a tokenizer: it uses `tokenizer.bpe` already in the output folder.
* A part writes `partIIIIofNNNN_{train,val}_KKKK.bin` and `partIIIIofNNNN_manifest.json`;
  the merge checks that all n parts are there, made with the same tokenizer, settings and
  input, and writes `manifest.json` listing their shards in part order (temp + rename). The
  shards are not rewritten.

This module has no dependency on the extension (the CLI parses `--part` without it): it reads
the shard format (`pipeline.data.shards`) only inside `merge_parts`. The per-part pack itself is
`pipeline.data.packing.pack_files(part=...)`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.atomic import atomic_write_json

if TYPE_CHECKING:
    from pipeline.data.shards import Manifest

__all__ = [
    "PART_FILE",
    "PartMergeError",
    "PartSpec",
    "PartTokenizerMismatchError",
    "find_part_manifests",
    "merge_parts",
]

# A part's files: `part0002of0003_train_0000.bin`, `part0002of0003_manifest.json`.
PART_FILE = re.compile(r"^part(\d+)of(\d+)_")
_PART_MANIFEST = re.compile(r"^part(\d+)of(\d+)_manifest\.json$")
# Settings every part must share; compared field by field at merge time.
_SAME = (
    "format_version",
    "tokenizer_hash",
    "vocab_size",
    "bos_id",
    "token_dtype",
    "compression",
    "shard_tokens",
    "chunk_tokens",
    "val_fraction",
    "seed",
)
_SAME_PART = ("count", "documents_total", "inputs")


class PartMergeError(ValueError):
    """The parts of a multi-machine tokenize cannot be merged: one is missing, is a stray copy,
    or was made with other settings or input. The message names the part file and the fix."""


class PartTokenizerMismatchError(PartMergeError):
    """A part was packed with another tokenizer than the other parts (or than the output
    folder's `tokenizer.bpe`)."""


@dataclass(frozen=True)
class PartSpec:
    """Part `index` (1-based) of `count` of a tokenize run."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.index, int) and isinstance(self.count, int)):
            raise TypeError("PartSpec index and count must be int")
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ValueError(
                f"part {self.index}/{self.count}: need 1 <= i <= n (parts are 1-based), "
                f"e.g. 1/{max(self.count, 1)} for the first of {max(self.count, 1)}"
            )

    @classmethod
    def parse(cls, text: str) -> PartSpec:
        """`"2/3"` -> PartSpec(2, 3). Raises ValueError naming the value and the fix."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(
                f"{text!r} is not I/N; write the part number and the number of parts, "
                "e.g. 1/4 for the first of four (parts are 1-based)"
            )
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def prefix(self) -> str:
        """File-name prefix of this part's shards and manifest, e.g. `part0002of0003_`."""
        return f"part{self.index:04d}of{self.count:04d}_"

    @property
    def manifest_name(self) -> str:
        return f"{self.prefix}manifest.json"

    def document_range(self, total: int) -> tuple[int, int]:
        """`[start, end)` document numbers of this part in a stream of `total` documents."""
        if total < self.count:
            raise ValueError(
                f"{total} documents cannot be split into {self.count} parts; "
                f"use at most {total} part(s)"
            )
        return (self.index - 1) * total // self.count, self.index * total // self.count


def find_part_manifests(out_dir: str | Path) -> dict[tuple[int, int], Path]:
    """`{(index, count): path}` of the part manifests in `out_dir`."""
    found: dict[tuple[int, int], Path] = {}
    with contextlib.suppress(FileNotFoundError):
        for path in Path(out_dir).iterdir():
            m = _PART_MANIFEST.match(path.name)
            if m and path.is_file():
                found[int(m.group(1)), int(m.group(2))] = path
    return found


def _load_part(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        part = raw["part"]
        if not isinstance(part, dict):
            raise TypeError("'part' is not an object")
        for key in ("index", "count", "first_document", "end_document", *_SAME_PART):
            part[key]  # noqa: B018 - presence check
        return raw
    except (ValueError, KeyError, TypeError) as e:
        raise PartMergeError(
            f"{path}: not a part manifest ({e!r}); re-run the `lrt-pipeline tokenize --part` "
            "that writes it"
        ) from e


def _rerun(path: Path, index: int, count: int) -> str:
    return (
        f"re-run `lrt-pipeline tokenize --part {index}/{count}` with the same settings as the "
        f"other parts and copy its files (part{index:04d}of{count:04d}_*) into {path.parent}"
    )


def merge_parts(out_dir: str | Path, *, tokenizer_hash: str | None = None) -> Manifest:
    """Checks the part manifests in `out_dir` and writes `manifest.json` for all of them.

    The merged manifest lists part 1's train shards, then part 2's, ... (likewise val), and sums
    the totals, so the loader reads the same per-split token stream, document by document, as a
    single-run pack of the same input; only the shard boundaries differ (each part's last shard
    may be short). Shards of an earlier single-run pack (`train_0000.bin`, ...) are removed once
    the manifest is in place; part files are kept (re-merging is idempotent).

    Raises:
        PartMergeError: no parts, a missing part, parts of different splits (n), a renamed or
            copied part manifest, different settings or input, a shard missing or of the wrong
            size or header.
        PartTokenizerMismatchError: parts made with different tokenizers, or with another
            tokenizer than `tokenizer_hash` (the folder's `tokenizer.bpe`).
    """
    from pipeline.data.shards import (
        MANIFEST_NAME,
        ShardFormatError,
        manifest_from_json,
        shard_file,
    )

    root = Path(out_dir)
    found = find_part_manifests(root)
    if not found:
        raise PartMergeError(
            f"{root}: no part manifests (partIofN_manifest.json); run "
            "`lrt-pipeline tokenize --part i/n` for every i = 1..n and collect their files here "
            "before `--merge`"
        )
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        names = ", ".join(sorted(p.name for p in found.values()))
        raise PartMergeError(
            f"{root}: part manifests of splits into {counts} parts are mixed ({names}); "
            "remove the files of the split you no longer use (part*of<N>_*)"
        )
    (count,) = counts
    missing = [i for i in range(1, count + 1) if (i, count) not in found]
    if missing:
        want = ", ".join(f"part{i:04d}of{count:04d}_manifest.json" for i in missing)
        runs = "; ".join(f"`lrt-pipeline tokenize --part {i}/{count}`" for i in missing)
        raise PartMergeError(
            f"{root}: {len(missing)} of {count} parts missing ({want}); run {runs} and copy "
            "the part's files into this folder"
        )

    parts = [_load_part(found[i, count]) for i in range(1, count + 1)]
    first_path = found[1, count]
    ref = parts[0]
    for i, raw in enumerate(parts, 1):
        path = found[i, count]
        part = raw["part"]
        if (part["index"], part["count"]) != (i, count):
            raise PartMergeError(
                f"{path}: its content is part {part['index']}/{part['count']}, not {i}/{count} "
                "as its name says (a copied or renamed file); " + _rerun(path, i, count)
            )
        got = raw.get("tokenizer_hash")
        if got != ref.get("tokenizer_hash") or (
            tokenizer_hash is not None and got != tokenizer_hash
        ):
            want = tokenizer_hash if tokenizer_hash is not None else ref.get("tokenizer_hash")
            raise PartTokenizerMismatchError(
                f"{path}: packed with tokenizer {got}, but "
                + (
                    f"{root / 'tokenizer.bpe'} is {want}"
                    if tokenizer_hash is not None
                    else f"{first_path.name} used {want}"
                )
                + "; every part must use the one tokenizer.bpe (from `lrt-pipeline tokenize "
                "--tokenizer-only`): copy it to every machine and " + _rerun(path, i, count)
            )
        for key in _SAME:
            if raw.get(key) != ref.get(key):
                raise PartMergeError(
                    f"{path}: {key} = {raw.get(key)!r}, but {first_path.name} has "
                    f"{ref.get(key)!r}; " + _rerun(path, i, count)
                )
        for key in _SAME_PART:
            if part[key] != ref["part"][key]:
                raise PartMergeError(
                    f"{path}: input data differs from {first_path.name}'s (part.{key}: "
                    f"{part[key]!r} vs {ref['part'][key]!r}); all parts must read the same raw "
                    "data; " + _rerun(path, i, count)
                )
        start, end = PartSpec(i, count).document_range(int(part["documents_total"]))
        read = int(raw["totals"]["documents_read"])
        if (part["first_document"], part["end_document"]) != (start, end) or read != end - start:
            raise PartMergeError(
                f"{path}: covers documents {part['first_document']}..{part['end_document']} "
                f"({read} read), expected {start}..{end}; " + _rerun(path, i, count)
            )

    # Every listed shard is here, of the listed size, with a valid header written by the same
    # tokenizer (headers and indices only: chunk checksums are verified when the loader reads).
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for i, raw in enumerate(parts, 1):
        path = found[i, count]
        for split in splits:
            for entry in raw["splits"].get(split, []):
                try:
                    shard = shard_file(root, entry["file"])
                except ShardFormatError as e:
                    raise PartMergeError(f"{path}: {e}") from None
                if not PART_FILE.match(shard.name) or not shard.name.startswith(
                    PartSpec(i, count).prefix
                ):
                    raise PartMergeError(
                        f"{path}: lists {shard.name}, which is not a file of part {i}/{count}; "
                        + _rerun(path, i, count)
                    )
                if not shard.is_file() or shard.stat().st_size != int(entry["bytes"]):
                    state = "missing" if not shard.is_file() else "of another size"
                    raise PartMergeError(
                        f"{shard}: shard of part {i}/{count} is {state} (listed in "
                        f"{path.name}); copy part{i:04d}of{count:04d}_* from the machine that "
                        f"ran it, or " + _rerun(path, i, count)
                    )
                splits[split].append(entry)
    _check_headers(root, splits, ref["tokenizer_hash"])

    merged = _merged_manifest(ref, parts, splits, found, count)
    atomic_write_json(root / MANIFEST_NAME, merged)
    keep = {e["file"] for entries in splits.values() for e in entries}
    single = re.compile(r"^(train|val)_\d+\.bin(\.tmp)?$")
    for path in root.iterdir():
        if single.match(path.name) and path.name not in keep:
            path.unlink()
    return manifest_from_json(root, merged)


def _check_headers(root: Path, splits: Mapping[str, Sequence[dict[str, Any]]], tok: str) -> None:
    from pipeline import _rust

    for entries in splits.values():
        if not entries:
            continue
        try:
            _rust.ShardDataset(
                [str(root / e["file"]) for e in entries],
                tokenizer_hash=bytes.fromhex(tok),
                tokens=[int(e["tokens"]) for e in entries],
            )
        except ValueError as e:  # ShardFormatError / TokenizerMismatchError
            raise PartMergeError(
                f"{e}; the part that wrote this shard must be re-run (`lrt-pipeline tokenize "
                "--part i/n`) or its files copied again"
            ) from e


def _merged_manifest(
    ref: Mapping[str, Any],
    parts: Sequence[Mapping[str, Any]],
    splits: Mapping[str, list[dict[str, Any]]],
    found: Mapping[tuple[int, int], Path],
    count: int,
) -> dict[str, Any]:
    def split_totals(split: str) -> dict[str, int]:
        return {
            "tokens": sum(int(e["tokens"]) for e in splits[split]),
            "documents": sum(int(e["documents"]) for e in splits[split]),
            "shards": len(splits[split]),
        }

    train, val = split_totals("train"), split_totals("val")
    summed: dict[str, int] = {}
    for raw in parts:
        for key, value in (raw.get("source") or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                summed[key] = summed.get(key, 0) + value
    source = {
        "kind": "parts",
        "parts": count,
        "part_manifests": [found[i, count].name for i in range(1, count + 1)],
        "inputs": ref["part"]["inputs"],
        "part_sources": [raw.get("source") for raw in parts],
        **{f"sum_{k}": v for k, v in summed.items()},
    }
    out = {key: ref[key] for key in ("format", *_SAME) if key in ref}
    out.update(
        {
            "splits": {name: list(entries) for name, entries in splits.items()},
            "totals": {
                "tokens": train["tokens"] + val["tokens"],
                "documents": train["documents"] + val["documents"],
                "documents_read": sum(int(p["totals"]["documents_read"]) for p in parts),
                "empty_documents_skipped": sum(
                    int(p["totals"]["empty_documents_skipped"]) for p in parts
                ),
                "train": train,
                "val": val,
            },
            "source": source,
        }
    )
    return out
