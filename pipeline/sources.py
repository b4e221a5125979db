"""Raw-data sources for the `download` stage: builtin (offline), fineweb-edu (HTTPS), files.

Every source leaves the same thing in `data.raw_dir`: parquet files with one `text` column (one
row per document) and `manifest.json` listing each file's size, sha256, document count and split.
fineweb-edu keeps its shards as published; the last one fetched is the validation split, as in
nanochat. builtin and files write `documents_NNNNN.parquet`; their validation split is carved out
at tokenize time (`tokenizer.val_fraction`).

Example:
    >>> from pipeline.settings import DataSettings
    >>> manifest = download(DataSettings(source="builtin", max_bytes=200_000, raw_dir="/tmp/raw"))
    >>> manifest["documents"] > 0
    True

fineweb-edu downloads are resumable: bytes go to `NAME.part`, a retry asks for the rest with an
HTTP Range header, the result must match the Content-Length/Content-Range total, and the parquet
footer must parse (a corrupt file is deleted and fetched once more). Nothing else touches the
network.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.settings import DataSettings

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
DOCS_PER_PART_BYTES = 64 << 20  # split builtin/files output into parquet parts of about this size
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
    "DownloadError",
    "MANIFEST",
    "builtin_documents",
    "download",
    "fetch",
    "file_documents",
    "iter_documents",
    "raw_files",
    "read_raw_manifest",
]


class DownloadError(OSError):
    """A remote file could not be fetched or verified after all retries."""


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def download(settings: DataSettings, *, backoff_s: float = 1.0) -> dict[str, Any]:
    """Materialise the configured source in `settings.raw_dir` and return its manifest.

    Args:
        settings: The `data` section.
        backoff_s: First retry delay for remote files (doubles per retry).

    Raises:
        DownloadError: a remote shard failed after `settings.retries` retries.
        FileNotFoundError: a `files` path does not exist.
    """
    raw_dir = Path(settings.raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    if settings.source == "fineweb-edu":
        entries = _download_fineweb(settings, raw_dir, backoff_s=backoff_s)
    else:
        if settings.source == "builtin":
            docs = builtin_documents(settings.max_bytes)
            origin = str(_stdlib_root())
        else:
            docs = file_documents([Path(p) for p in settings.paths], settings.max_bytes)
            origin = ", ".join(settings.paths)
        entries = _write_documents(docs, raw_dir)
        log.info("wrote %d documents from %s", sum(e["documents"] for e in entries), origin)
    manifest = {
        "version": MANIFEST_VERSION,
        "source": settings.source,
        "files": entries,
        "documents": sum(e["documents"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "text_bytes": sum(e.get("text_bytes", 0) for e in entries),
    }
    _remove_stale(raw_dir, {e["name"] for e in entries})
    _write_json_atomic(raw_dir / MANIFEST, manifest)
    return manifest


def read_raw_manifest(raw_dir: str | Path) -> dict[str, Any]:
    """The manifest written by `download`.

    Raises:
        FileNotFoundError: no manifest (run `lrt-pipeline download` first).
    """
    path = Path(raw_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `lrt-pipeline download` first")
    return json.loads(path.read_text(encoding="utf-8"))


def raw_files(raw_dir: str | Path, split: str | None = None) -> list[Path]:
    """Parquet files in `raw_dir`, in manifest order; `split` = "train"/"val" filters by the
    source's own split (files without one count as train)."""
    manifest = read_raw_manifest(raw_dir)
    return [
        Path(raw_dir) / e["name"]
        for e in manifest["files"]
        if split is None or (e.get("split") or "train") == split
    ]


def iter_documents(
    raw_dir: str | Path, split: str | None = None, *, batch_rows: int = 1024
) -> Iterator[str]:
    """Documents of `raw_dir` in manifest order, streamed file by file."""
    for path in raw_files(raw_dir, split):
        yield from _parquet_texts(path, batch_rows=batch_rows)


# ---------------------------------------------------------------------------------------------
# builtin: the running Python's standard library
# ---------------------------------------------------------------------------------------------


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def builtin_documents(max_bytes: int | None) -> Iterator[str]:
    """The standard library's `.py` files (tests, vendored packages and demos skipped), in sorted
    path order, until `max_bytes` UTF-8 bytes. Offline and deterministic for a Python version."""
    root = _stdlib_root()
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
    yield from _capped(_read_texts(paths), max_bytes)


def _read_texts(paths: Iterable[Path]) -> Iterator[str]:
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            log.debug("skipping %s: %s", path, exc)
            continue
        if text.strip():
            yield text


def _capped(docs: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    """Stop before the document that would take the total past `max_bytes` (at least one doc)."""
    total = 0
    for doc in docs:
        size = len(doc.encode("utf-8"))
        if max_bytes is not None and total and total + size > max_bytes:
            return
        total += size
        yield doc
        if max_bytes is not None and total >= max_bytes:
            return


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
    with a `text` field (or bare strings); .parquet files have a `text` column."""

    def docs() -> Iterator[str]:
        for path in _expand(paths):
            name = path.name
            if name.endswith(".txt"):
                yield from _read_texts([path])
            elif name.endswith(".parquet"):
                yield from _parquet_texts(path)
            else:
                yield from _jsonl_texts(path)

    yield from _capped(docs(), max_bytes)


def _jsonl_texts(path: Path) -> Iterator[str]:
    import io

    if path.name.endswith(".zst"):
        import zstandard

        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield from _jsonl_lines(io.TextIOWrapper(reader, encoding="utf-8"), path)
    else:
        with path.open(encoding="utf-8") as fh:
            yield from _jsonl_lines(fh, path)


def _jsonl_lines(lines: Iterable[str], path: Path) -> Iterator[str]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ValueError(
                f"{path}:{lineno}: expected a string or an object with a `text` string"
            )
        if text:
            yield text


def _parquet_texts(path: Path, *, batch_rows: int = 1024) -> Iterator[str]:
    schema = pl.read_parquet_schema(path)
    if "text" not in schema:
        raise ValueError(f"{path}: parquet file has no `text` column (columns: {list(schema)})")
    frame = pl.scan_parquet(path).select("text")
    # Streamed in batches where polars can (>= 1.3x); otherwise one read of the column.
    batches = (
        frame.collect_batches(chunk_size=batch_rows)
        if hasattr(frame, "collect_batches")
        else [frame.collect()]
    )
    for batch in batches:
        for text in batch["text"]:
            if text:
                yield text


def _write_documents(docs: Iterable[str], raw_dir: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    batch: list[str] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        path = raw_dir / f"documents_{len(entries):05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pl.DataFrame({"text": batch}, schema={"text": pl.String}).write_parquet(tmp)
        os.replace(tmp, path)
        entry = _file_entry(path, documents=len(batch), split=None)
        entry["text_bytes"] = batch_bytes
        entries.append(entry)
        batch, batch_bytes = [], 0

    for doc in docs:
        batch.append(doc)
        batch_bytes += len(doc.encode("utf-8"))
        if batch_bytes >= DOCS_PER_PART_BYTES:
            flush()
    if batch or not entries:
        flush()
    return entries


# ---------------------------------------------------------------------------------------------
# fineweb-edu: resumable, verified HTTPS download
# ---------------------------------------------------------------------------------------------


def _download_fineweb(
    settings: DataSettings, raw_dir: Path, *, backoff_s: float
) -> list[dict[str, Any]]:
    entries = []
    count = settings.num_shards + 1  # the last one is the validation split
    for index in range(count):
        name = f"shard_{index:05d}.parquet"
        url = f"{settings.base_url.rstrip('/')}/{name}"
        dest = raw_dir / name
        documents = _verified(dest)
        if documents is None:
            documents = _fetch_verified(url, dest, settings=settings, backoff_s=backoff_s)
        else:
            log.info("%s already present and valid", dest)
        entries.append(
            _file_entry(dest, documents=documents, split="val" if index == count - 1 else "train")
        )
    return entries


def _fetch_verified(url: str, dest: Path, *, settings: DataSettings, backoff_s: float) -> int:
    """Fetch `url` to `dest`; a file whose footer does not parse is deleted and fetched once more."""
    for attempt in (1, 2):
        fetch(
            url, dest, retries=settings.retries, timeout_s=settings.timeout_s, backoff_s=backoff_s
        )
        documents = _verified(dest)
        if documents is not None:
            return documents
        log.warning(
            "%s is not a readable parquet file (attempt %d); fetching it again", dest, attempt
        )
        dest.unlink(missing_ok=True)
    raise DownloadError(
        f"{url}: downloaded file is not valid parquet twice; the source may be corrupt"
    )


def _verified(path: Path) -> int | None:
    """Row count from the parquet footer, or None when the file is absent or unreadable."""
    if not path.exists():
        return None
    try:
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    except (Exception, pl.exceptions.PanicException):  # any parse failure means "fetch again"
        return None


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def fetch(
    url: str, dest: str | Path, *, retries: int = 4, timeout_s: float = 60.0, backoff_s: float = 1.0
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming with HTTP Range after a failure.

    The finished size must equal the server's total (Content-Length, or the total of
    Content-Range); only then is `.part` renamed to `dest`.

    Raises:
        DownloadError: a 4xx answer (other than a stale range), or every retry failed.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("retrying %s in %.1fs (%s)", url, delay, last_error)
            time.sleep(delay)
        try:
            _fetch_once(url, part, timeout_s=timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()  # an HTTPError holds the response's socket
            if exc.code == 416:  # our .part is longer than the file: start over
                part.unlink(missing_ok=True)
                last_error = exc
                continue
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            last_error = exc
        except (*_RETRYABLE, _Incomplete) as exc:
            last_error = exc
        else:
            os.replace(part, dest)
            return dest
    raise DownloadError(f"{url}: failed after {retries + 1} attempts: {last_error}")


class _Incomplete(OSError):
    """The connection ended before the announced size; the next attempt resumes."""


def _fetch_once(url: str, part: Path, *, timeout_s: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "lrt-pipeline", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise _Incomplete(
                    f"unexpected Content-Range {response.headers.get('Content-Range')!r}"
                )
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:  # 200: the server sent the whole file (no range asked, or range ignored)
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            offset, mode = 0, "wb"
        with part.open(mode) as out:
            try:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            except http.client.IncompleteRead as exc:
                out.write(exc.partial)
                raise _Incomplete(f"connection closed early: {exc}") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Incomplete(f"{part.name}: {size} bytes of {total}")


# ---------------------------------------------------------------------------------------------
# Manifest helpers
# ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_entry(path: Path, *, documents: int, split: str | None) -> dict[str, Any]:
    return {
        "name": path.name,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "documents": documents,
        "split": split,
    }


def _remove_stale(raw_dir: Path, keep: set[str]) -> None:
    """Drop parquet/part files a previous configuration left behind (DVC owns the folder)."""
    for path in raw_dir.iterdir():
        stale = path.is_file() and path.name not in keep and path.name != MANIFEST
        if stale and path.name.endswith((".parquet", ".part", ".tmp")):
            path.unlink()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
