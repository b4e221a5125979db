"""The input files `pack_files` reads: .txt (one document per file), .jsonl and .jsonl.zst
(field "text" per line), .parquet (column "text", read with polars).

    stats = Utf8Stats()
    docs = list(input_documents(Path("corpus.jsonl.zst"), stats))
    stats.as_dict()["invalid_utf8_bytes_replaced"]

Invalid UTF-8 never fails a pack: it is decoded with replacement characters and counted
(`Utf8Stats`, recorded in the manifest's `source`). Every reader failure names the file. The
download stage's own, strict readers are `pipeline.data.documents`.
"""

from __future__ import annotations

import codecs
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["BATCH_DOCS", "Utf8Stats", "input_documents"]

# A batch handed to the encoder (`pipeline.data.packing`), and a parquet file's read slice.
BATCH_DOCS = 4096


class Utf8Stats:
    """Decodes bytes as UTF-8, replacing invalid sequences with U+FFFD and counting them."""

    _handler_name = "lrt-count-replace"
    _current: Utf8Stats | None = None

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
            Utf8Stats._current = self
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


codecs.register_error(Utf8Stats._handler_name, Utf8Stats._handler)


def _jsonl_docs(path: Path, lines: Iterable[bytes], stats: Utf8Stats) -> Iterator[str]:
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


def _parquet_docs(path: Path, stats: Utf8Stats) -> Iterator[str]:
    import polars as pl

    schema = pl.read_parquet_schema(path)
    if "text" not in schema:
        raise ValueError(f'{path}: parquet file has no "text" column (columns: {list(schema)})')
    df = pl.read_parquet(path, columns=["text"])
    binary = df.schema["text"] == pl.Binary
    for part in df.iter_slices(n_rows=BATCH_DOCS):
        for value in part["text"].to_list():
            if value is None:
                yield ""
            else:
                yield stats.decode(value) if binary else value


def input_documents(path: Path, stats: Utf8Stats) -> Iterator[str]:
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


def _read_file_docs(path: Path, stats: Utf8Stats) -> Iterator[str]:
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
