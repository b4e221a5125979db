"""Parallel, resumable, verified shard download into one folder.

For each shard of a `ShardPlan`, in a thread pool of `workers`:

1. present: `dest/NAME` whose parquet footer parses (and has the text column) is kept;
2. reused: a verified `NAME` in one of `reuse_dirs` (a nanochat `base_data` folder, the live
   raw folder when writing a staging copy) is hard-linked, or copied across file systems;
3. hub: datasets with a repo id go through `huggingface_hub.hf_hub_download` (HF_TOKEN,
   HF_ENDPOINT, its cache: a shard already in the cache is linked, not fetched again);
4. plain: other URLs through `pipeline.data.http.fetch` (HTTP Range resume of `NAME.tmp.part`).

A shard reaches `dest/NAME` only by a rename of a complete, verified file (`NAME.tmp`); a file
whose footer does not parse is fetched once more, then the download fails naming its URL.
Each shard has its own temporary names, so one failing never touches another. The first hard
error stops the pool: no further shard starts, the ones in flight finish (they are resumable
anyway), and the error is raised naming the shard's URL.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.data.datasets.planning import ShardPlan
from pipeline.data.datasets.progress import Progress
from pipeline.data.datasets.table import DatasetSpec
from pipeline.data.http import DownloadError, fetch, sha256_file

log = logging.getLogger(__name__)

__all__ = ["ShardResult", "download_shards", "hub_available", "verify_shard"]


@dataclass(frozen=True)
class ShardResult:
    """One shard in place: its manifest entry and how it got there."""

    index: int
    path: Path
    documents: int
    bytes: int
    sha256: str
    split: str
    origin: str  # present | reused | hub | fetched

    def entry(self) -> dict[str, Any]:
        """The raw-manifest entry (`pipeline.data.sources` format plus `shard`). `origin` stays out:
        the manifest must not change when a re-run finds the same shards."""
        return {
            "name": self.path.name,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "documents": self.documents,
            "split": self.split,
            "shard": self.index,
        }


class _Stopped(Exception):
    """Another shard failed; this one was not started."""


def verify_shard(path: str | Path, text_column: str = "text") -> int | None:
    """Row count from the parquet footer when `path` is a readable parquet file with a string
    `text_column`; None when it is absent or unreadable (fetch it again)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        schema = pl.read_parquet_schema(path)
        if schema.get(text_column) not in (pl.String, pl.Utf8):
            log.warning("%s has no string column %r (columns: %s)", path, text_column, schema)
            return None
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    except (Exception, pl.exceptions.PanicException):  # any parse failure means "fetch again"
        return None


def hub_available() -> bool:
    """huggingface_hub is importable."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


def download_shards(
    spec: DatasetSpec,
    shard_plan: ShardPlan,
    dest: str | Path,
    *,
    workers: int = 4,
    reuse_dirs: Sequence[str | Path] = (),
    use_hub: bool = True,
    hub_cache: str | Path | None = None,
    retries: int = 4,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
    progress: Progress | None = None,
) -> list[ShardResult]:
    """Put every shard of `shard_plan` in `dest`, verified; results in plan order.

    Args:
        spec: The dataset.
        shard_plan: Shards to fetch (`pipeline.data.datasets.planning`).
        dest: Output folder (created).
        workers: Shards transferred at once.
        reuse_dirs: Folders whose verified shards of the same name are linked, never fetched.
        use_hub: Use huggingface_hub for datasets with a repo id (when installed).
        hub_cache: The hub cache folder; None = huggingface_hub's (HF_HUB_CACHE / HF_HOME).
        retries, timeout_s, backoff_s: Per shard, for the plain fetcher.
        progress: Display; None = one for this download on stderr.

    Raises:
        DownloadError: a shard failed after its retries or is not valid parquet twice (the
            message names its URL).
    """
    if workers < 1:
        raise ValueError(f"data.workers={workers} must be >= 1")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    indices = shard_plan.indices
    own_progress = progress is None
    if progress is None:
        progress = Progress(len(indices), expected_shard_bytes=spec.shard_file_bytes)
    hub = bool(use_hub and spec.repo_id and hub_available())
    job = _Job(
        spec=spec,
        dest=dest,
        reuse_dirs=[Path(d) for d in reuse_dirs],
        hub=hub,
        hub_cache=None if hub_cache is None else str(hub_cache),
        retries=retries,
        timeout_s=timeout_s,
        backoff_s=backoff_s,
        progress=progress,
        stop=threading.Event(),
    )
    results: dict[int, ShardResult] = {}
    first_error: BaseException | None = None
    try:
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard") as pool:
            futures = {
                pool.submit(job.get, i, "val" if i == shard_plan.val else "train"): i
                for i in indices
            }
            for future in cf.as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except _Stopped:
                    continue
                except BaseException as exc:  # noqa: BLE001 - re-raised below, first one wins
                    if first_error is None:
                        first_error = exc
                        job.stop.set()
                        for f in futures:
                            f.cancel()
    finally:
        if own_progress:
            progress.close()
    if first_error is not None:
        if isinstance(first_error, DownloadError):
            raise first_error
        raise DownloadError(str(first_error)) from first_error
    return [results[i] for i in indices]


@dataclass
class _Job:
    spec: DatasetSpec
    dest: Path
    reuse_dirs: list[Path]
    hub: bool
    hub_cache: str | None
    retries: int
    timeout_s: float
    backoff_s: float
    progress: Progress
    stop: threading.Event

    def get(self, index: int, split: str) -> ShardResult:
        if self.stop.is_set():
            raise _Stopped
        try:
            return self._get(index, split)
        except _Stopped:
            raise
        except BaseException:
            self.stop.set()  # here, not in the caller: this worker's next shard must not start
            raise

    def _get(self, index: int, split: str) -> ShardResult:
        name = self.spec.filename(index)
        final = self.dest / name
        tmp = self.dest / f"{name}.tmp"
        column = self.spec.text_column
        docs = verify_shard(final, column)
        origin = "present"
        transferred = 0
        if docs is None:
            docs, origin, transferred = self._obtain(index, name, tmp)
            os.replace(tmp, final)
        size = final.stat().st_size
        result = ShardResult(
            index=index,
            path=final,
            documents=docs,
            bytes=size,
            sha256=sha256_file(final),
            split=split,
            origin=origin,
        )
        self.progress.finish_shard(index, size, transferred=transferred)
        return result

    def _obtain(self, index: int, name: str, tmp: Path) -> tuple[int, str, int]:
        """A verified `tmp`; returns (documents, origin, bytes transferred)."""
        column = self.spec.text_column
        docs = verify_shard(tmp, column)  # a previous run got it but died before the rename
        if docs is not None:
            return docs, "present", 0
        for folder in self.reuse_dirs:
            candidate = folder / name
            if candidate.resolve() == (self.dest / name).resolve():
                continue
            if verify_shard(candidate, column) is not None:
                _link_or_copy(candidate, tmp)
                docs = verify_shard(tmp, column)
                if docs is not None:
                    log.info("%s: reused %s", name, candidate)
                    return docs, "reused", 0
        if self.stop.is_set():
            raise _Stopped
        if self.hub:
            return self._from_hub(index, name, tmp)
        return self._from_url(index, tmp)

    def _from_url(self, index: int, tmp: Path) -> tuple[int, str, int]:
        url = self.spec.url(index)
        part = tmp.with_name(tmp.name + ".part")
        start = part.stat().st_size if part.exists() else 0
        self.progress.start_shard(index, poll=lambda: max(_size(part, tmp) - start, 0))
        for attempt in (1, 2):
            fetch(
                url,
                tmp,
                retries=self.retries,
                timeout_s=self.timeout_s,
                backoff_s=self.backoff_s,
            )
            docs = verify_shard(tmp, self.spec.text_column)
            if docs is not None:
                return docs, "fetched", max(tmp.stat().st_size - start, 0)
            log.warning("%s is not valid parquet (attempt %d); fetching it again", url, attempt)
            tmp.unlink(missing_ok=True)
            start = 0
        raise DownloadError(
            f"{url}: downloaded file is not valid parquet with a {self.spec.text_column!r} "
            "column twice; the source may be corrupt"
        )

    def _from_hub(self, index: int, name: str, tmp: Path) -> tuple[int, str, int]:
        from huggingface_hub import hf_hub_download

        progress = self.progress
        progress.start_shard(index)
        counted = [0]

        class _Bytes:
            """tqdm stand-in huggingface_hub drives: forwards byte counts to our display."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def update(self, n: float | None = 1) -> None:
                counted[0] += int(n or 0)
                progress.add_bytes(index, int(n or 0))

            def __enter__(self) -> _Bytes:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def close(self) -> None:
                pass

            def set_description(self, *args: Any, **kwargs: Any) -> None:
                pass

        endpoint = os.environ.get("HF_ENDPOINT") or None
        url = f"{self.spec.repo_id}:{name} at {endpoint or 'https://huggingface.co'}"
        kwargs: dict[str, Any] = {
            "repo_id": self.spec.repo_id,
            "filename": name,
            "repo_type": "dataset",
            "revision": self.spec.revision,
            "cache_dir": self.hub_cache,
            "endpoint": endpoint,
        }
        if "tqdm_class" in inspect.signature(hf_hub_download).parameters:
            kwargs["tqdm_class"] = _Bytes
        for attempt in (1, 2):
            try:
                cached = Path(hf_hub_download(**kwargs, force_download=attempt == 2))
            except Exception as exc:  # hub HTTP errors, httpx errors, a full disk: all fatal here
                raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from None
            blob = cached.resolve()
            if verify_shard(blob, self.spec.text_column) is not None:
                _link_or_copy(blob, tmp)
                docs = verify_shard(tmp, self.spec.text_column)
                if docs is not None:
                    return docs, "hub", counted[0]
            log.warning("%s in the hub cache is not valid parquet (attempt %d)", url, attempt)
        raise DownloadError(f"{url}: not valid parquet twice; the source may be corrupt")


def _link_or_copy(src: Path, tmp: Path) -> None:
    """`tmp` becomes a hard link of `src` (no bytes copied), or a copy across file systems.

    Sharing the inode is safe: nothing in the pipeline writes a shard in place (every writer
    replaces by rename), so neither the cache nor the raw folder can change the other."""
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # EXDEV (other file system), EPERM/EMLINK, no hard links on this FS
        shutil.copyfile(src, tmp)


def _size(*paths: Path) -> int:
    for path in paths:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            continue
    return 0
