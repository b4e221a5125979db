"""Raw-data sources for the `download` stage: builtin (offline), sharded datasets (fineweb-edu,
climbmix, parquet-url: `pipeline.data.datasets`), files.

Every source leaves the same thing in `data.raw_dir`: parquet files with one `text` column (one
row per document) and `manifest.json` listing each file's size, sha256, document count and split.
Sharded datasets keep their shards as published; the pinned validation shard (the dataset's
final one unless `data.val_shard`) is the validation split, as in nanochat. builtin and files write `documents_NNNNN.parquet`; their validation split is carved out
at tokenize time (`tokenizer.val_fraction`).

Example:
    >>> from pipeline.config.settings import DataSettings
    >>> manifest = download(DataSettings(source="builtin", max_bytes=200_000, raw_dir="/tmp/raw"))
    >>> manifest["documents"] > 0
    True

Remote downloads are resumable: bytes go to `NAME.part`, a retry asks for the rest with an
HTTP Range header, the result must match the Content-Length/Content-Range total, and the parquet
footer must parse (a corrupt file is deleted and fetched once more). Nothing else touches the
network.
"""

from __future__ import annotations

import hashlib
import http.client
import io
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

from pipeline.config.settings import DataSettings

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
    "sha256_file",
]


class DownloadError(OSError):
    """A remote file could not be fetched or verified after all retries."""


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def download(
    settings: DataSettings,
    *,
    backoff_s: float = 1.0,
    run: Any | None = None,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Materialise the configured source in `settings.raw_dir` and return its manifest.

    Args:
        settings: The `data` section.
        backoff_s: First retry delay for remote files (doubles per retry).
        run: The full settings (for `data.num_shards: auto`, which sizes the download from the
            train, model and tokenizer sections).
        part: (i, n), sharded sources only: fetch training shards i-1, i-1+n, ... (part 1 also
            the validation shard) straight into `raw_dir`, without staging or manifest (see
            `_download_part`); a plain download afterwards writes the manifest.

    Raises:
        DownloadError: a remote shard failed after `settings.retries` retries.
        FileNotFoundError: a `files` path does not exist.
        OutputLockedError: another download writes the folder (a part, or a plain download).
    """
    from pipeline.atomic import output_dir
    from pipeline.data import datasets as data_sources

    sharded = settings.source in data_sources.SOURCES
    if part is not None:
        if not sharded:
            raise ValueError(
                f"download --part splits sharded sources ({', '.join(data_sources.SOURCES)}); "
                f"data.source={settings.source} is one run: drop --part"
            )
        return _download_part(settings, part, run=run, backoff_s=backoff_s)
    # The whole folder (parts + manifest) is written beside the old one and swapped in after
    # success. Sharded sources stage in the fixed `.raw.partial` so that a killed download's
    # finished shards and `.part` files are resumed by the next run; valid shards already in
    # the folder (an earlier run's, or `download --part` runs') are carried over (hard links)
    # and not fetched again.
    staged = output_dir(
        settings.raw_dir,
        owned=_raw_ours,
        keep=(lambda name: _SHARD.match(name) is not None) if sharded else (lambda name: False),
        partial=sharded,
        resume=sharded,
    )
    with staged as raw_dir:
        if sharded:
            _refuse_running_parts(Path(settings.raw_dir))
        manifest = _download_into(settings, raw_dir, backoff_s=backoff_s, run=run)
    return manifest


def _part_lock_folder(raw_dir: Path, part: tuple[int, int]) -> Path:
    """The name whose lock (`.RAW.partIofN.lock` beside the folder) one part run holds."""
    return raw_dir.parent / f"{raw_dir.name}.part{part[0]}of{part[1]}"


def _refuse_running_parts(raw_dir: Path) -> None:
    """With the folder lock held: fail when a `download --part` run still writes the folder."""
    from pipeline.atomic import locked

    folder = Path(os.path.realpath(raw_dir))
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.part\d+of\d+\.lock$")
    if not folder.parent.is_dir():
        return
    for lock in sorted(folder.parent.iterdir()):
        if pattern.match(lock.name):
            with locked(folder.parent / lock.name[1 : -len(".lock")]):
                pass  # OutputLockedError (naming the part's process) while it runs


def _download_part(
    settings: DataSettings, part: tuple[int, int], *, run: Any | None, backoff_s: float
) -> dict[str, Any]:
    """`download --part i/n`: this part's shards straight into `raw_dir`, no manifest.

    Parts may run at once on one folder (one machine, or a shared file system), so none takes
    the folder's own lock or swaps it: each holds the lock of its own part (the same part twice
    is refused), checks that no plain download holds the folder, and writes shards the way
    every download does, a verified `NAME.tmp` renamed into place (a killed part leaves only
    temps, resumed by the next run). The folder's manifest.json is left as it was: once every
    part is done, a plain `download` (same settings, no --part) links the shards, fetches any
    that are missing and writes the manifest. Returns the part's manifest (not written).
    """
    from pipeline.atomic import locked
    from pipeline.data import datasets as data_sources

    raw_dir = Path(os.path.realpath(settings.raw_dir))
    with locked(_part_lock_folder(raw_dir, part)):
        with locked(raw_dir):  # taken and released: no plain download writes the folder now
            pass
        raw_dir.mkdir(parents=True, exist_ok=True)
        result = data_sources.download_dataset(
            settings, raw_dir, settings=run, part=part, backoff_s=backoff_s
        )
    entries = result.entries
    return {
        "version": MANIFEST_VERSION,
        "source": settings.source,
        "files": entries,
        "documents": sum(e["documents"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "text_bytes": sum(e.get("text_bytes", 0) for e in entries),
        **result.manifest_extra,
    }


# What `download` writes in its folder; everything else there is the user's and is kept.
_RAW_OURS = re.compile(
    r"^(documents_\d+\.parquet|shard_\d+\.parquet|manifest\.json)(\.tmp|\.part|\.tmp\.part)?$"
)
_SHARD = re.compile(r"^shard_\d+\.parquet$")


def _raw_ours(name: str) -> bool:
    return _RAW_OURS.match(name) is not None


def _download_into(
    settings: DataSettings, raw_dir: Path, *, backoff_s: float, run: Any | None = None
) -> dict[str, Any]:
    from pipeline.data import datasets as data_sources

    extra: dict[str, Any] = {}
    if settings.source in data_sources.SOURCES:
        result = data_sources.download_dataset(
            settings,
            raw_dir,
            settings=run,
            backoff_s=backoff_s,
            # a resumed `.raw.partial` predates shards that `--part` runs added to the folder
            reuse_dirs=[Path(os.path.realpath(settings.raw_dir))],
        )
        entries, extra = result.entries, result.manifest_extra
    else:
        if settings.source == "builtin":
            docs = builtin_documents(settings.max_bytes)
            origin = str(_stdlib_root())
        else:
            docs = file_documents([Path(p) for p in settings.paths], settings.max_bytes)
            origin = ", ".join(settings.paths)
        entries = _write_documents(docs, raw_dir)
        if not sum(e["documents"] for e in entries):
            raise ValueError(
                f"download: 0 documents from {origin} (data.source={settings.source}); "
                "every input was empty: check data.paths and data.max_bytes"
            )
        log.info("wrote %d documents from %s", sum(e["documents"] for e in entries), origin)
    manifest = {
        "version": MANIFEST_VERSION,
        "source": settings.source,
        "files": entries,
        "documents": sum(e["documents"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "text_bytes": sum(e.get("text_bytes", 0) for e in entries),
        **extra,
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
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        for entry in files:
            name = entry["name"]
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(f"file name {name!r} is not a plain name in this folder")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a valid raw-data manifest ({exc}); re-run `lrt-pipeline download`"
        ) from None
    for entry in files:
        file = Path(raw_dir) / entry["name"]
        size = file.stat().st_size if file.is_file() else None
        if "bytes" in entry and size != entry["bytes"]:
            state = "is missing" if size is None else f"has {size} bytes, not {entry['bytes']}"
            raise ValueError(
                f"{file} {state} as listed in {path}: the raw folder changed after download; "
                "re-run `lrt-pipeline download`"
            )
    return manifest


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
    path order, until `max_bytes` UTF-8 bytes. Offline and deterministic for a Python version.
    A file that is not UTF-8 is skipped with a warning (counted); it is the interpreter's."""
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
            docs = _parquet_texts(path, budget=budget)
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


def _parquet_texts(
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


def _write_documents(docs: Iterable[str], raw_dir: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    batch: list[str] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        path = raw_dir / f"documents_{len(entries):05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        try:
            pl.DataFrame({"text": batch}, schema={"text": pl.String}).write_parquet(tmp)
        except pl.exceptions.PolarsError as exc:  # polars reports I/O errors as ComputeError
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            num = int(code.group(1))
            raise OSError(num, f"{os.strerror(num)} (writing {tmp})", str(tmp)) from None
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
# Resumable, verified HTTP(S) download of one file (sharded datasets: pipeline.data.datasets)
# ---------------------------------------------------------------------------------------------

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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (hashlib releases the GIL: threads hash in
    parallel)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_entry(path: Path, *, documents: int, split: str | None) -> dict[str, Any]:
    return {
        "name": path.name,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "documents": documents,
        "split": split,
    }


def _remove_stale(raw_dir: Path, keep: set[str]) -> None:
    """Drop our own files a previous configuration left behind (never a user's file)."""
    for path in raw_dir.iterdir():
        stale = path.is_file() and path.name not in keep and path.name != MANIFEST
        if stale and _raw_ours(path.name):
            path.unlink()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
