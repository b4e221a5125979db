"""Token shards, the format: the manifest and header models, and reading them back.

    from pipeline.data.shards import read_manifest, read_shard
    manifest = read_manifest("data/tokens")
    header, tokens = read_shard("data/tokens/train_0000.bin")

The byte layout is specified in docs/SHARD_FORMAT.md; checksums are verified in Rust
(`pipeline._rust`) with the GIL released. Writing shards is `pipeline.data.packing` (`pack`,
`pack_files`); multi-machine parts and their merge are `pipeline.data.parts`.
"""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import _rust
from pipeline._rust import ShardFormatError, TokenizerMismatchError

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "ShardEntry",
    "ShardFormatError",
    "ShardHeader",
    "TokenizerMismatchError",
    "manifest_from_json",
    "read_manifest",
    "read_shard",
    "shard_file",
    "shard_set_hash",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
DEFAULT_CHUNK_TOKENS = 1 << 20


# ---------------------------------------------------------------------------------------------
# Manifest and header models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    """One shard file as the manifest lists it."""

    file: str
    path: Path
    tokens: int
    documents: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` of a packed folder."""

    root: Path
    format_version: int
    tokenizer_hash: str
    vocab_size: int
    bos_id: int
    token_dtype: str
    compression: str
    shard_tokens: int
    chunk_tokens: int
    val_fraction: float
    seed: int
    splits: dict[str, list[ShardEntry]]
    total_tokens: int
    documents: int
    documents_read: int
    empty_documents_skipped: int
    source: dict[str, Any] = field(default_factory=dict)

    def split_tokens(self, split: str) -> int:
        return sum(e.tokens for e in self.splits[split])

    def split_documents(self, split: str) -> int:
        return sum(e.documents for e in self.splits[split])


@dataclass(frozen=True)
class ShardHeader:
    """A shard's header and document index (BOS offsets of the documents that start in it)."""

    path: Path
    version: int
    dtype: str
    vocab_size: int
    bos_id: int
    tokenizer_hash: str
    tokens: int
    documents: int
    chunk_tokens: int
    compression: str
    n_chunks: int
    doc_starts: np.ndarray


def shard_file(root: Path, name: Any) -> Path:
    # A manifest names shards inside its own folder. An absolute name or one with a separator
    # or `..` (a hand-edited or hostile manifest) would read files anywhere; refuse it.
    plain = isinstance(name, str) and name not in ("", ".", "..") and "\\" not in name
    if not plain or Path(name).name != name:
        raise ShardFormatError(
            f"{root / MANIFEST_NAME}: shard file {name!r} is not a plain file name in this "
            "folder; re-run `lrt-pipeline tokenize`"
        )
    return root / name


def manifest_from_json(root: Path, raw: dict[str, Any]) -> Manifest:
    splits = {
        name: [
            ShardEntry(
                file=e["file"],
                path=shard_file(root, e["file"]),
                tokens=int(e["tokens"]),
                documents=int(e["documents"]),
                bytes=int(e["bytes"]),
                sha256=e["sha256"],
            )
            for e in raw["splits"].get(name, [])
        ]
        for name in SPLITS
    }
    totals = raw["totals"]
    return Manifest(
        root=root,
        format_version=int(raw["format_version"]),
        tokenizer_hash=raw["tokenizer_hash"],
        vocab_size=int(raw["vocab_size"]),
        bos_id=int(raw["bos_id"]),
        token_dtype=raw["token_dtype"],
        compression=raw["compression"],
        shard_tokens=int(raw["shard_tokens"]),
        chunk_tokens=int(raw["chunk_tokens"]),
        val_fraction=float(raw["val_fraction"]),
        seed=int(raw["seed"]),
        splits=splits,
        total_tokens=int(totals["tokens"]),
        documents=int(totals["documents"]),
        documents_read=int(totals["documents_read"]),
        empty_documents_skipped=int(totals["empty_documents_skipped"]),
        source=dict(raw.get("source") or {}),
    )


def read_manifest(out_dir: str | Path) -> Manifest:
    """Reads `out_dir/manifest.json`.

    Raises:
        FileNotFoundError: no manifest (the folder was never packed, or packing failed).
        ShardFormatError: the manifest is not valid JSON of format version 1.

    Example:
        >>> m = read_manifest("data/tokens")  # doctest: +SKIP
        >>> [e.file for e in m.splits["val"]]  # doctest: +SKIP
        ['val_0000.bin']
    """
    root = Path(out_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            errno.ENOENT,
            f"no shard manifest; run `lrt-pipeline tokenize` to pack {root}",
            str(path),
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ShardFormatError(
                f"{path}: format version {version!r}, this build reads {FORMAT_VERSION}; "
                "re-run `lrt-pipeline tokenize`"
            )
        return manifest_from_json(root, raw)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        if isinstance(e, ShardFormatError):
            raise
        raise ShardFormatError(
            f"{path}: not a valid shard manifest ({e!r}); re-run `lrt-pipeline tokenize`"
        ) from e


def shard_set_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the manifest's shard list (split, file, sha256) and tokenizer hash: equal
    exactly when two folders hold the same shards."""
    entries = [
        [split, e.get("file"), e.get("sha256")]
        for split in ("train", "val")
        for e in (manifest.get("splits") or {}).get(split, [])
    ]
    ident = json.dumps([manifest.get("tokenizer_hash"), entries])
    return hashlib.sha256(ident.encode()).hexdigest()


def read_shard(path: str | Path) -> tuple[ShardHeader, np.ndarray]:
    """Reads one shard, verifying every checksum.

    Returns the header and the tokens (uint16 when the vocab fits, else uint32), moved from
    Rust into numpy without a copy.

    Raises:
        ShardFormatError: truncated, corrupt (names the chunk), or of an unknown format/version.
        FileNotFoundError / PermissionError / OSError: the file cannot be read.

    Example:
        >>> header, tokens = read_shard("data/tokens/train_0000.bin")  # doctest: +SKIP
        >>> int(tokens[header.doc_starts[0]]) == header.bos_id  # doctest: +SKIP
        True
    """
    p = Path(path)
    h, tokens, starts = _rust.read_shard(str(p))
    return ShardHeader(path=p, doc_starts=starts, **h), tokens
