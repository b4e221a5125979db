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

The readers of builtin and files are `pipeline.data.documents`. Remote downloads are resumable
(`pipeline.data.http.fetch`): bytes go to `NAME.part`, a retry asks for the rest with an HTTP
Range header, the result must match the Content-Length/Content-Range total, and the parquet
footer must parse (a corrupt file is deleted and fetched once more). Nothing else touches the
network.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.atomic import atomic_write_json
from pipeline.config.settings import DataSettings
from pipeline.data.documents import (
    builtin_documents,
    file_documents,
    parquet_texts,
    stdlib_root,
)
from pipeline.data.http import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
DOCS_PER_PART_BYTES = 64 << 20  # split builtin/files output into parquet parts of about this size

__all__ = [
    "MANIFEST",
    "download",
    "iter_documents",
    "raw_files",
    "read_raw_manifest",
]


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
    from pipeline.data import datasets

    sharded = settings.source in datasets.SOURCES
    if part is not None:
        if not sharded:
            raise ValueError(
                f"download --part splits sharded sources ({', '.join(datasets.SOURCES)}); "
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
    from pipeline.data import datasets

    raw_dir = Path(os.path.realpath(settings.raw_dir))
    with locked(_part_lock_folder(raw_dir, part)):
        with locked(raw_dir):  # taken and released: no plain download writes the folder now
            pass
        raw_dir.mkdir(parents=True, exist_ok=True)
        result = datasets.download_dataset(
            settings, raw_dir, settings=run, part=part, backoff_s=backoff_s
        )
    return _manifest(settings, result.entries, result.manifest_extra)


# What `download` writes in its folder; everything else there is the user's and is kept.
_RAW_OURS = re.compile(
    r"^(documents_\d+\.parquet|shard_\d+\.parquet|manifest\.json)(\.tmp|\.part|\.tmp\.part)?$"
    r"|^\.manifest\.json\.tmp.*$"  # pipeline.atomic.atomic_write_json's temporary
)
_SHARD = re.compile(r"^shard_\d+\.parquet$")


def _raw_ours(name: str) -> bool:
    return _RAW_OURS.match(name) is not None


def _download_into(
    settings: DataSettings, raw_dir: Path, *, backoff_s: float, run: Any | None = None
) -> dict[str, Any]:
    from pipeline.data import datasets

    extra: dict[str, Any] = {}
    if settings.source in datasets.SOURCES:
        result = datasets.download_dataset(
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
            origin = str(stdlib_root())
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
    manifest = _manifest(settings, entries, extra)
    _remove_stale(raw_dir, {e["name"] for e in entries})
    atomic_write_json(raw_dir / MANIFEST, manifest)
    return manifest


def _manifest(
    settings: DataSettings, entries: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """The raw manifest (a part's, or the folder's) over `entries`, with their totals."""
    return {
        "version": MANIFEST_VERSION,
        "source": settings.source,
        "files": entries,
        "documents": sum(e["documents"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "text_bytes": sum(e.get("text_bytes", 0) for e in entries),
        **extra,
    }


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
        yield from parquet_texts(path, batch_rows=batch_rows)


# ---------------------------------------------------------------------------------------------
# Writing the raw folder
# ---------------------------------------------------------------------------------------------


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
