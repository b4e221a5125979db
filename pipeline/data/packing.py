"""Packing: tokenize documents or input files into versioned, checksummed shards.

    from pipeline.data.packing import pack_files
    manifest = pack_files([Path("corpus.jsonl.zst")], tokenizer, "data/tokens")

The packing rules are specified in docs/SHARD_FORMAT.md. Encoding, packing, checksumming and
writing run in Rust (`pipeline._rust`) with the GIL released; this module owns the defaults and
the per-part pack (`pack_files(part=...)`, merged by `pipeline.data.parts.merge_parts`). The
input readers are `pipeline.data.pack_inputs`, the format and manifest model
`pipeline.data.shards`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from pipeline import _rust
from pipeline.data.pack_inputs import BATCH_DOCS, Utf8Stats, input_documents
from pipeline.data.parts import PartSpec
from pipeline.data.shards import DEFAULT_CHUNK_TOKENS, Manifest, manifest_from_json

__all__ = ["TokenizerLike", "pack", "pack_files"]

# A batch handed to the encoder: enough documents for every core (`BATCH_DOCS`), bounded memory.
_BATCH_CHARS = 32 << 20


class TokenizerLike(Protocol):
    """What packing needs of a tokenizer (`pipeline.data.tokenizer.Tokenizer` satisfies it)."""

    bos_id: int
    vocab_size: int
    hash: str

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...


def _rust_tokenizer(tokenizer: Any) -> Any | None:
    """The `_rust.Tokenizer` behind a tokenizer, when there is one (fast path: Rust encodes)."""
    cls = getattr(_rust, "Tokenizer", None)
    if cls is None or not hasattr(_rust.Packer, "add_texts"):
        return None
    if isinstance(tokenizer, cls):
        return tokenizer
    for name in ("_inner", "_rust", "_tok", "inner"):
        inner = getattr(tokenizer, name, None)
        if isinstance(inner, cls):
            return inner
    return None


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for doc in documents:
        if not isinstance(doc, str):
            raise TypeError(f"documents must be str, got {type(doc).__name__}")
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= BATCH_DOCS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _pack(
    groups: Iterable[tuple[str | None, Iterable[str]]],
    tokenizer: TokenizerLike,
    out_dir: str | Path,
    *,
    shard_tokens: int,
    compression: str,
    val_fraction: float,
    seed: int,
    chunk_tokens: int,
    source: dict[str, Any],
    prefix: str = "",
    first_document: int = 0,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    if compression not in ("none", "zstd"):
        raise ValueError(f"compression={compression!r} is not one of 'none', 'zstd'")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens={shard_tokens} must be positive")
    if chunk_tokens <= 0 or chunk_tokens % 4:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be a positive multiple of 4")
    tok_hash = bytes.fromhex(tokenizer.hash)
    packer = _rust.Packer(
        str(out_dir),
        vocab_size=int(tokenizer.vocab_size),
        bos_id=int(tokenizer.bos_id),
        tokenizer_hash=tok_hash,
        shard_tokens=int(shard_tokens),
        chunk_tokens=int(chunk_tokens),
        compression=compression,
        val_fraction=float(val_fraction),
        seed=int(seed),
        prefix=prefix,
        first_document=int(first_document),
    )
    fast = _rust_tokenizer(tokenizer)
    try:
        # A group's split: "train" / "val" forces it (a source's own validation files), None
        # leaves it to the seeded val_fraction draw.
        for split, documents in groups:
            packer.set_split(split)
            for batch in _batches(documents):
                if fast is not None:
                    packer.add_texts(batch, fast)  # Rust encodes on all cores, GIL released
                    continue
                encoded = tokenizer.encode_batch(batch)
                lengths = np.fromiter(map(len, encoded), dtype=np.uint64, count=len(encoded))
                flat = np.fromiter(
                    itertools.chain.from_iterable(encoded),
                    dtype=np.uint32,
                    count=int(lengths.sum()),
                )
                packer.add_encoded(flat, lengths)
        text = packer.finish(json.dumps(source), json.dumps(extra) if extra else None)
    except BaseException:
        packer.abort()  # removes every temp shard written so far
        raise
    return manifest_from_json(Path(out_dir), json.loads(text))


def pack(
    documents: Iterable[str],
    tokenizer: TokenizerLike,
    out_dir: str | Path,
    *,
    shard_tokens: int = 2**24,
    compression: Literal["none", "zstd"] = "none",
    val_fraction: float = 0.01,
    seed: int = 0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> Manifest:
    """Tokenizes documents and packs them into `out_dir/{train,val}_NNNN.bin` + `manifest.json`.

    Every document becomes `<|bos|>` + its tokens; empty documents are skipped and counted.
    Documents are assigned to val with probability `val_fraction`, decided from (seed, document
    number) so the split is deterministic. `documents` is consumed lazily in batches. On any
    error (including one raised by `documents`) no shard or manifest is left half-written.

    Raises:
        ValueError: bad arguments, an empty corpus, or a token id outside the vocabulary.

    Example:
        >>> m = pack(["first doc", "second doc"], tok, "data/tokens", val_fraction=0.0)  # doctest: +SKIP
        >>> m.total_tokens  # doctest: +SKIP
        9
    """
    return _pack(
        [(None, documents)],
        tokenizer,
        out_dir,
        shard_tokens=shard_tokens,
        compression=compression,
        val_fraction=val_fraction,
        seed=seed,
        chunk_tokens=chunk_tokens,
        source={"kind": "documents"},
    )


def pack_files(
    paths: Sequence[str | Path],
    tokenizer: TokenizerLike,
    out_dir: str | Path,
    *,
    shard_tokens: int = 2**24,
    compression: Literal["none", "zstd"] = "none",
    val_fraction: float = 0.01,
    seed: int = 0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    val_paths: Sequence[str | Path] = (),
    part: PartSpec | None = None,
    file_documents: Sequence[int] | None = None,
    inputs_id: str | None = None,
) -> Manifest:
    """`pack` over files: .txt (one document per file), .jsonl and .jsonl.zst (field "text"
    per line), .parquet (column "text", read with polars).

    Every document of a file in `val_paths` goes to the val split (a source's own validation
    files, e.g. fineweb-edu's last shard); the other files are split by `val_fraction`.

    Invalid UTF-8 never fails a pack: it is decoded with replacement characters, and the
    number of affected files and replaced bytes is recorded in `manifest.source`.

    With `part` (part i of n, 1-based), only the documents numbered `(i-1)*N//n .. i*N//n - 1`
    of the whole input stream (N documents, files in the given order) are packed, into
    `{part.prefix}{train,val}_NNNN.bin` and `{part.prefix}manifest.json` (with a `part`
    record); each keeps its single-run document number, so its train/val draw is unchanged.
    `file_documents` (each file's document count, e.g. from the raw manifest) lets files
    outside the range be skipped unopened; without it every file is read once to count.
    `inputs_id` identifies the input data for `pipeline.data.parts.merge_parts` (default: a hash of
    the file names and counts). Merge the parts with `merge_parts`.

    Example:
        >>> m = pack_files([Path("a.txt"), Path("b.jsonl.zst")], tok, "data/tokens")  # doctest: +SKIP
        >>> m.source["invalid_utf8_bytes_replaced"]  # doctest: +SKIP
        0
    """
    stats = Utf8Stats()
    val = {Path(p).resolve() for p in val_paths}
    unknown = val - {Path(p).resolve() for p in paths}
    if unknown:
        raise ValueError(f"val_paths {sorted(map(str, unknown))} are not among the input paths")
    if part is not None:
        return _pack_part(
            paths,
            tokenizer,
            out_dir,
            stats=stats,
            part=part,
            file_documents=file_documents,
            inputs_id=inputs_id,
            shard_tokens=shard_tokens,
            compression=compression,
            val_fraction=val_fraction,
            seed=seed,
            chunk_tokens=chunk_tokens,
            val=val,
        )

    def file_docs(path: Path) -> Iterator[str]:
        for doc in input_documents(path, stats):
            stats.documents += 1
            yield doc

    source: dict[str, Any] = {}  # filled in once the last document has been read

    def groups() -> Iterator[tuple[str | None, Iterable[str]]]:
        for p in paths:
            yield ("val" if Path(p).resolve() in val else None), file_docs(Path(p))
        source.update(stats.as_dict())

    return _pack(
        groups(),
        tokenizer,
        out_dir,
        shard_tokens=shard_tokens,
        compression=compression,
        val_fraction=val_fraction,
        seed=seed,
        chunk_tokens=chunk_tokens,
        source=source,
    )


def _pack_part(
    paths: Sequence[str | Path],
    tokenizer: TokenizerLike,
    out_dir: str | Path,
    *,
    stats: Utf8Stats,
    part: PartSpec,
    file_documents: Sequence[int] | None,
    inputs_id: str | None,
    val: set[Path],
    **settings: Any,
) -> Manifest:
    """`pack_files` for one part; `val` holds the resolved validation paths (checked)."""
    files = [Path(p) for p in paths]
    if file_documents is None:
        counter = Utf8Stats()
        file_documents = [sum(1 for _ in input_documents(p, counter)) for p in files]
    counts = [int(c) for c in file_documents]
    if len(counts) != len(files) or any(c < 0 for c in counts):
        raise ValueError(
            f"file_documents has {len(counts)} counts for {len(files)} files (need one "
            "non-negative count per file)"
        )
    total = sum(counts)
    start, end = part.document_range(total)
    if inputs_id is None:
        ident = json.dumps(
            [[p.name, c, p.resolve() in val] for p, c in zip(files, counts, strict=True)]
        )
        inputs_id = hashlib.sha256(ident.encode()).hexdigest()

    def file_range(path: Path, lo: int, hi: int, expected: int) -> Iterator[str]:
        """Documents lo..hi-1 of `path` (lo skipped unencoded); fails if the file is short."""
        read = 0
        docs = input_documents(path, stats)
        try:
            for read, doc in enumerate(docs, 1):  # noqa: B007 - `read` is used after the loop
                if read > lo:
                    stats.documents += 1
                    yield doc
                if read >= hi:
                    return
        finally:
            docs.close()
        raise ValueError(
            f"{path}: {read} documents read, but the input's document counts say {expected}; "
            "every part must see the same input (re-run `lrt-pipeline download`)"
        )

    def groups() -> Iterator[tuple[str | None, Iterable[str]]]:
        offset = 0
        for path, count in zip(files, counts, strict=True):
            lo, hi = max(start - offset, 0), min(end - offset, count)
            offset += count
            if lo < hi:
                yield ("val" if path.resolve() in val else None), file_range(path, lo, hi, count)
        source.update(stats.as_dict())

    source: dict[str, Any] = {}
    extra = {
        "part": {
            "index": part.index,
            "count": part.count,
            "first_document": start,
            "end_document": end,
            "documents_total": total,
            "inputs": inputs_id,
        }
    }
    return _pack(
        groups(),
        tokenizer,
        out_dir,
        source=source,
        prefix=part.prefix,
        first_document=start,
        extra=extra,
        **settings,
    )
