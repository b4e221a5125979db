"""Token shards: pack documents into versioned, checksummed shards, and read them back.

    from pipeline.data.shards import pack_files, read_manifest, read_shard
    manifest = pack_files([Path("corpus.jsonl.zst")], tokenizer, "data/tokens")
    header, tokens = read_shard("data/tokens/train_0000.bin")

The byte layout and the packing rules are specified in docs/SHARD_FORMAT.md. Encoding, packing,
checksumming and writing run in Rust (`pipeline._rust`) with the GIL released; this module owns
the defaults, the input readers (.txt / .jsonl / .jsonl.zst / .parquet) and the manifest model.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from pipeline import _rust
from pipeline._rust import ShardFormatError, TokenizerMismatchError
from pipeline.data.parts import PartSpec

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "PartSpec",
    "ShardEntry",
    "ShardFormatError",
    "ShardHeader",
    "TokenizerMismatchError",
    "pack",
    "pack_files",
    "read_manifest",
    "read_shard",
    "shard_set_hash",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
DEFAULT_CHUNK_TOKENS = 1 << 20
# A batch handed to the encoder: enough documents for every core, bounded memory.
_BATCH_DOCS = 4096
_BATCH_CHARS = 32 << 20


class TokenizerLike(Protocol):
    """What packing needs of a tokenizer (`pipeline.data.tokenizer.Tokenizer` satisfies it)."""

    bos_id: int
    vocab_size: int
    hash: str

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...


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


def _shard_file(root: Path, name: Any) -> Path:
    # A manifest names shards inside its own folder. An absolute name or one with a separator
    # or `..` (a hand-edited or hostile manifest) would read files anywhere; refuse it.
    plain = isinstance(name, str) and name not in ("", ".", "..") and "\\" not in name
    if not plain or Path(name).name != name:
        raise ShardFormatError(
            f"{root / MANIFEST_NAME}: shard file {name!r} is not a plain file name in this "
            "folder; re-run `lrt-pipeline tokenize`"
        )
    return root / name


def _manifest_from_json(root: Path, raw: dict[str, Any]) -> Manifest:
    splits = {
        name: [
            ShardEntry(
                file=e["file"],
                path=_shard_file(root, e["file"]),
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
        return _manifest_from_json(root, raw)
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


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


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
        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
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
    return _manifest_from_json(Path(out_dir), json.loads(text))


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


# --- input files -----------------------------------------------------------------------------


class _Utf8Stats:
    """Decodes bytes as UTF-8, replacing invalid sequences with U+FFFD and counting them."""

    _handler_name = "lrt-count-replace"
    _current: _Utf8Stats | None = None

    def __init__(self) -> None:
        self.files = 0
        self.files_with_invalid_utf8 = 0
        self.invalid_utf8_bytes = 0
        self.documents = 0
        self._file_bytes = 0

    @classmethod
    def _handler(cls, err: UnicodeError) -> tuple[str, int]:
        assert isinstance(err, UnicodeDecodeError) and cls._current is not None
        cls._current._file_bytes += err.end - err.start
        return "\ufffd", err.end

    def decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            _Utf8Stats._current = self
            return data.decode("utf-8", errors=self._handler_name)

    def start_file(self) -> None:
        self.files += 1
        self._file_bytes = 0

    def end_file(self) -> None:
        if self._file_bytes:
            self.files_with_invalid_utf8 += 1
            self.invalid_utf8_bytes += self._file_bytes

    def as_dict(self) -> dict[str, int | str]:
        return {
            "kind": "files",
            "files": self.files,
            "documents": self.documents,
            "files_with_invalid_utf8": self.files_with_invalid_utf8,
            "invalid_utf8_bytes_replaced": self.invalid_utf8_bytes,
        }


codecs.register_error(_Utf8Stats._handler_name, _Utf8Stats._handler)


def _jsonl_docs(path: Path, lines: Iterable[bytes], stats: _Utf8Stats) -> Iterator[str]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(stats.decode(line))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}:{lineno}: invalid JSON ({e.msg}); fix or remove the line"
            ) from e
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise ValueError(f'{path}:{lineno}: no string field "text" in this JSON line')
        yield text


def _parquet_docs(path: Path, stats: _Utf8Stats) -> Iterator[str]:
    import polars as pl

    schema = pl.read_parquet_schema(path)
    if "text" not in schema:
        raise ValueError(f'{path}: parquet file has no "text" column (columns: {list(schema)})')
    df = pl.read_parquet(path, columns=["text"])
    binary = df.schema["text"] == pl.Binary
    for part in df.iter_slices(n_rows=_BATCH_DOCS):
        for value in part["text"].to_list():
            if value is None:
                yield ""
            else:
                yield stats.decode(value) if binary else value


def _file_docs(path: Path, stats: _Utf8Stats) -> Iterator[str]:
    """`_read_file_docs` with every reader failure (polars, zstd, I/O) naming the file."""
    import polars as pl
    import zstandard

    try:
        yield from _read_file_docs(path, stats)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, zstandard.ZstdError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(
            f"{path}: unreadable ({type(e).__name__}: {first}); the file is truncated or "
            "corrupt: re-create it (re-run `lrt-pipeline download` for data/raw)"
        ) from None
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, f"{e.strerror} (reading {path})", str(path)) from None


def _read_file_docs(path: Path, stats: _Utf8Stats) -> Iterator[str]:
    name = path.name.lower()
    stats.start_file()
    if name.endswith(".txt"):
        yield stats.decode(path.read_bytes())
    elif name.endswith(".jsonl"):
        with open(path, "rb") as f:
            yield from _jsonl_docs(path, f, stats)
    elif name.endswith(".jsonl.zst"):
        import zstandard

        with open(path, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            yield from _jsonl_docs(path, io.BufferedReader(reader), stats)
    elif name.endswith(".parquet"):
        yield from _parquet_docs(path, stats)
    else:
        raise ValueError(
            f"{path}: unsupported input type; expected .txt, .jsonl, .jsonl.zst or .parquet"
        )
    stats.end_file()


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
    stats = _Utf8Stats()
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
        for doc in _file_docs(path, stats):
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
    stats: _Utf8Stats,
    part: PartSpec,
    file_documents: Sequence[int] | None,
    inputs_id: str | None,
    val: set[Path],
    **settings: Any,
) -> Manifest:
    """`pack_files` for one part; `val` holds the resolved validation paths (checked)."""
    files = [Path(p) for p in paths]
    if file_documents is None:
        counter = _Utf8Stats()
        file_documents = [sum(1 for _ in _file_docs(p, counter)) for p in files]
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
        docs = _file_docs(path, stats)
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
