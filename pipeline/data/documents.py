"""Document readers of the `download` stage: builtin (the running Python's standard library)
and local files (.txt / .jsonl / .jsonl.zst / .parquet), streamed within `data.max_bytes`.

    from pipeline.data.documents import file_documents
    docs = list(file_documents([Path("corpus.jsonl.zst")], max_bytes=1 << 20))

Every reader error names the file (and line / row). `pipeline.data.sources` writes what these
yield into the raw folder, and reads that folder back with `parquet_texts`.
"""

from __future__ import annotations

import io
import json
import logging
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.zst", ".parquet")
# Standard-library folders that are tests, vendored packages or demos rather than library code.
_STDLIB_SKIP = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "__pycache__",
}

__all__ = [
    "TEXT_SUFFIXES",
    "builtin_documents",
    "file_documents",
    "parquet_texts",
    "stdlib_root",
]


# ---------------------------------------------------------------------------------------------
# builtin: the running Python's standard library
# ---------------------------------------------------------------------------------------------


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def builtin_documents(max_bytes: int | None) -> Iterator[str]:
    """The standard library's `.py` files (tests, vendored packages and demos skipped), in sorted
    path order, until `max_bytes` UTF-8 bytes. Offline and deterministic for a Python version.
    A file that is not UTF-8 is skipped with a warning (counted); it is the interpreter's."""
    root = stdlib_root()
    paths = sorted(
        (
            p
            for p in root.rglob("*.py")
            if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1])
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not paths:
        raise FileNotFoundError(f"no standard-library sources under {root}; use data.source=files")
    budget = _Budget(max_bytes)
    skipped = 0
    for path in paths:
        try:
            text = _read_txt(path, budget)
        except ValueError as exc:
            skipped += 1
            log.warning("builtin source: skipping %s", exc)
            continue
        if text is None:
            break
        if text.strip():
            budget.take(text)
            yield text
        if budget.full:
            break
    if skipped:
        log.warning("builtin source: %d standard-library file(s) skipped (not UTF-8)", skipped)


class _Budget:
    """`data.max_bytes` while streaming: readers never read much past what is left.

    A document that does not fit ends the corpus (the first one is cut to fit instead, at a
    character boundary, so a single huge file still yields `max_bytes` of text)."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes, self.used = max_bytes, 0

    @property
    def remaining(self) -> int | None:
        return None if self.max_bytes is None else max(self.max_bytes - self.used, 0)

    @property
    def full(self) -> bool:
        return self.max_bytes is not None and self.used >= self.max_bytes

    def fit(self, data: bytes) -> bytes | None:
        """`data` if it fits; its head when it is the first document; None = stop here."""
        left = self.remaining
        if left is None or len(data) <= left:
            return data
        if self.used:
            return None
        return data[:left]

    def take(self, text: str) -> None:
        self.used += len(text.encode("utf-8"))


def _utf8(data: bytes, where: str, *, cut: bool = False) -> str:
    """Strict UTF-8 (a cut head may end inside a character: that tail is dropped)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if cut and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8")
        raise ValueError(
            f"{where}: invalid UTF-8 at byte {exc.start} ({exc.reason}); convert the file to "
            "UTF-8 or remove it from data.paths"
        ) from None


def _read_txt(path: Path, budget: _Budget) -> str | None:
    """One .txt document, reading at most what the budget has left (+1 byte to tell)."""
    left = budget.remaining
    try:
        with path.open("rb") as fh:
            data = fh.read() if left is None else fh.read(left + 1)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read {path}: {exc.strerror}", str(path)) from None
    head = budget.fit(data)
    if head is None:
        return None
    return _utf8(head, str(path), cut=head is not data)


# ---------------------------------------------------------------------------------------------
# files: local txt / jsonl / jsonl.zst / parquet
# ---------------------------------------------------------------------------------------------


def _expand(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
            )
        elif path.exists():
            if not path.name.endswith(TEXT_SUFFIXES):
                raise ValueError(
                    f"{path}: unsupported file type; expected one of {', '.join(TEXT_SUFFIXES)}"
                )
            out.append(path)
        else:
            raise FileNotFoundError(f"data.paths entry {path} does not exist")
    if not out:
        raise FileNotFoundError(
            f"no {'/'.join(TEXT_SUFFIXES)} files under {[str(p) for p in paths]}"
        )
    return out


def file_documents(paths: Sequence[Path], max_bytes: int | None) -> Iterator[str]:
    """Documents of local files: a .txt file is one document; .jsonl(.zst) lines are JSON objects
    with a `text` field (or bare strings); .parquet files have a `text` column.

    Streams: at most about `max_bytes` are read (a 300 MB one-line file costs ~max_bytes of
    memory). Every error names the file (and line / row): invalid UTF-8, bad JSON, a
    corrupt parquet or zstd file, a non-string `text` column."""
    budget = _Budget(max_bytes)
    for path in _expand(paths):
        name = path.name
        if name.endswith(".txt"):
            docs: Iterator[str | None] = iter([_read_txt(path, budget)])
        elif name.endswith(".parquet"):
            docs = parquet_texts(path, budget=budget)
        else:
            docs = _jsonl_texts(path, budget)
        for text in docs:
            if text is None:
                return
            if not text:
                continue
            budget.take(text)
            yield text
            if budget.full:
                return


def _jsonl_texts(path: Path, budget: _Budget) -> Iterator[str | None]:
    """Documents of a .jsonl(.zst) file; None = the budget is spent (stop)."""
    if path.name.endswith(".zst"):
        import zstandard

        with path.open("rb") as raw:
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
            try:
                yield from _jsonl_lines(reader, path, budget)
            except zstandard.ZstdError as exc:
                raise ValueError(
                    f"{path}: not a valid zstd stream ({exc}); re-compress it with `zstd` or "
                    "remove it from data.paths"
                ) from None
    else:
        with path.open("rb") as fh:
            yield from _jsonl_lines(fh, path, budget)


# Bytes of JSON per byte of text at most (`\u00e9` is 6 bytes for 2): a longer line cannot fit.
_JSON_EXPANSION = 6


def _jsonl_lines(fh: Any, path: Path, budget: _Budget) -> Iterator[str | None]:
    lineno = 0
    while True:
        left = budget.remaining
        limit = -1 if left is None else _JSON_EXPANSION * left + (64 << 10)
        line = fh.readline(limit)
        if not line:
            return
        lineno += 1
        if limit >= 0 and len(line) >= limit and not line.endswith(b"\n"):
            if not budget.used:
                raise ValueError(
                    f"{path}:{lineno}: one JSON line longer than {limit} bytes, more than "
                    f"data.max_bytes={budget.max_bytes} can hold; raise data.max_bytes or "
                    "split the document"
                )
            yield None
            return
        if not line.strip():
            continue
        text_line = _utf8(line, f"{path}:{lineno}")
        try:
            item = json.loads(text_line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ValueError(
                f"{path}:{lineno}: expected a string or an object with a `text` string"
            )
        if text:
            head = budget.fit(text.encode("utf-8"))
            if head is None:
                yield None
                return
            yield text if len(head) == len(text.encode("utf-8")) else _utf8(head, "", cut=True)


def parquet_texts(
    path: Path, *, batch_rows: int = 1024, budget: _Budget | None = None
) -> Iterator[Any]:
    """Documents of a parquet file's `text` column (string), streamed in batches; with a
    budget, None = the budget is spent. Errors name the file (and row)."""
    try:
        schema = pl.read_parquet_schema(path)
    except (Exception, pl.exceptions.PanicException) as exc:  # polars: many error types
        raise ValueError(
            f"{path}: not a readable parquet file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); re-create or remove it"
        ) from None
    if "text" not in schema:
        raise ValueError(f"{path}: parquet file has no `text` column (columns: {list(schema)})")
    if schema["text"] not in (pl.String, pl.Utf8):
        raise ValueError(
            f"{path}: column `text` holds {schema['text']}, not strings; write the documents "
            "as a string column"
        )
    frame = pl.scan_parquet(path).select("text")
    # Streamed in batches where polars can (>= 1.3x); otherwise one read of the column.
    row = 0
    try:
        batches = (
            frame.collect_batches(chunk_size=batch_rows)
            if hasattr(frame, "collect_batches")
            else iter([frame.collect()])
        )
        for batch in batches:
            for text in batch["text"]:
                row += 1
                if not text:
                    continue
                if budget is not None:
                    head = budget.fit(text.encode("utf-8"))
                    if head is None:
                        yield None
                        return
                    if len(head) != len(text.encode("utf-8")):
                        text = _utf8(head, "", cut=True)
                yield text
    except (pl.exceptions.PolarsError, OSError, pl.exceptions.PanicException) as exc:
        raise ValueError(
            f"{path}: parquet data unreadable after row {row} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the file is truncated or corrupt: "
            "re-create or remove it"
        ) from None
