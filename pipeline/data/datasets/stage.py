"""The download stage's entry for sharded datasets: plan, print, check the disk, fetch.

    result = download_dataset(settings.data, raw_dir, settings=settings, part=(1, 2))
    manifest = {..., "files": result.entries, **result.manifest_extra}

`pipeline.data.sources.download` calls this for `data.source` in `fineweb-edu`, `climbmix`,
`parquet-url`. It reads the `data` fields below when the section has them (and their
defaults otherwise): `num_shards` (int or "auto"), `val_shard`, `workers`, `reuse_dir`,
`hub`, `hub_cache`, `final_shard`, `file_pattern`, `base_url`, `retries`, `timeout_s`.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pipeline.data.datasets.fetcher import download_shards, hub_available, verify_shard
from pipeline.data.datasets.planning import (
    ShardPlan,
    check_disk,
    measure_bytes_per_token,
    plan,
    run_tokens,
)
from pipeline.data.datasets.progress import Progress
from pipeline.data.datasets.table import DatasetSpec, spec_from_settings

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WORKERS", "DatasetDownload", "download_dataset", "plan_from_settings"]

DEFAULT_WORKERS = 4


@dataclass(frozen=True)
class DatasetDownload:
    """What `download_dataset` did: manifest entries (plan order) and the manifest's extra keys
    (`dataset`, `validation_shard`, `num_train_shards`, `part`, `auto`)."""

    spec: DatasetSpec
    plan: ShardPlan
    entries: list[dict[str, Any]]
    manifest_extra: dict[str, Any]
    origins: list[str]  # per entry: present | reused | hub | fetched


def _opt(data: Any, name: str, default: Any) -> Any:
    value = getattr(data, name, None)
    return default if value is None else value


def plan_from_settings(
    data: Any,
    *,
    settings: Any | None = None,
    part: tuple[int, int] | None = None,
    local_dirs: Sequence[str | Path] = (),
) -> tuple[DatasetSpec, ShardPlan]:
    """The dataset and shard plan of a `data` section (and, for `num_shards: auto`, the full
    settings of the run). `local_dirs` are searched for a shard of this dataset to measure the
    tokenizer's bytes per token on.

    Raises:
        ValueError: `auto` without `settings`, too many shards, a bad part.
    """
    spec = spec_from_settings(data)
    num_shards = data.num_shards
    if num_shards != "auto":
        return spec, plan(spec, int(num_shards), part=part)
    if settings is None:
        raise ValueError("data.num_shards=auto needs the run's settings (train, model, tokenizer)")
    tokenizer = _existing_tokenizer(settings)
    vocab = None
    bpt = None
    source = None
    if tokenizer is not None:
        from pipeline.data.tokenizer import Tokenizer

        vocab = Tokenizer.load(tokenizer).vocab_size
        if not settings.tokenizer.pretrained and vocab != settings.tokenizer.vocab_size:
            tokenizer, vocab = None, None  # stale: tokenize will train a new one
    if tokenizer is not None:
        sample = _local_shard(spec, local_dirs)
        if sample is not None:
            bpt = measure_bytes_per_token(tokenizer, [sample], text_column=spec.text_column)
            source = f"measured with {tokenizer.name} on {sample.name}"
    run = run_tokens(settings, vocab)
    return spec, plan(
        spec,
        "auto",
        part=part,
        tokens=run["tokens"],
        bytes_per_token=bpt,
        bytes_per_token_source=source if bpt is not None else None,
    )


def _existing_tokenizer(settings: Any) -> Path | None:
    from pipeline.data.tokenizer import find_tokenizer

    if settings.tokenizer.pretrained:
        return Path(settings.tokenizer.pretrained)
    if Path(settings.tokenizer.out_dir).is_dir():
        return find_tokenizer(settings.tokenizer.out_dir)
    return None


def _local_shard(spec: DatasetSpec, dirs: Sequence[str | Path]) -> Path | None:
    """A verified local shard of `spec` (validation first), or None."""
    names = [spec.filename(spec.validation_shard), spec.filename(0)]
    for folder in dirs:
        for name in names:
            path = Path(folder) / name
            if verify_shard(path, spec.text_column) is not None:
                return path
    return None


def download_dataset(
    data: Any,
    raw_dir: str | Path,
    *,
    settings: Any | None = None,
    part: tuple[int, int] | None = None,
    reuse_dirs: Sequence[str | Path] = (),
    backoff_s: float = 1.0,
    stream: TextIO | None = None,
    progress_interval_s: float = 10.0,
) -> DatasetDownload:
    """Plan, print the plan, check free space, then fetch every shard into `raw_dir`.

    Args:
        data: The `data` settings section.
        raw_dir: Output folder (may be a staging copy of `data.raw_dir`).
        settings: Full settings, for `num_shards: auto`.
        part: (i, n) for `download --part i/n`.
        reuse_dirs: More folders to link verified shards from (e.g. the live `data.raw_dir`
            when `raw_dir` is a staging copy); `data.reuse_dir` is added.
        backoff_s: First retry delay of the plain fetcher.
        stream: Where the plan and plain progress lines go (default stderr).
        progress_interval_s: Seconds between plain progress lines (off a TTY).

    Raises:
        InsufficientDiskError: before any transfer, when the shards do not fit.
        DownloadError: a shard failed (its URL named).
    """
    stream = stream if stream is not None else sys.stderr
    raw_dir = Path(raw_dir)
    reuse = [Path(p) for p in reuse_dirs]
    reuse_dir = getattr(data, "reuse_dir", None)
    if reuse_dir:
        if not Path(reuse_dir).is_dir():
            raise FileNotFoundError(
                f"data.reuse_dir={reuse_dir} is not a folder; point it at a nanochat base_data "
                "folder (e.g. ~/.cache/nanochat/base_data) or unset it"
            )
        reuse.append(Path(reuse_dir))
    spec, shard_plan = plan_from_settings(
        data, settings=settings, part=part, local_dirs=[raw_dir, *reuse]
    )
    use_hub = bool(_opt(data, "hub", True))
    hub = bool(use_hub and spec.repo_id and hub_available())
    hub_cache = getattr(data, "hub_cache", None)
    if use_hub and spec.repo_id and not hub:
        log.warning(
            "huggingface_hub is not installed; fetching %s with the plain fetcher", spec.name
        )
    file_bytes = spec.shard_file_bytes or _remote_size(spec.url(spec.validation_shard))
    print(shard_plan.describe(file_bytes), file=stream, flush=True)
    _check_space(spec, shard_plan, raw_dir, reuse, file_bytes, hub=hub, hub_cache=hub_cache)

    progress = Progress(
        len(shard_plan.indices),
        stream=stream,
        interval_s=progress_interval_s,
        expected_shard_bytes=file_bytes,
    )
    try:
        results = download_shards(
            spec,
            shard_plan,
            raw_dir,
            workers=int(_opt(data, "workers", DEFAULT_WORKERS)),
            reuse_dirs=reuse,
            use_hub=use_hub,
            hub_cache=hub_cache,
            retries=int(_opt(data, "retries", 4)),
            timeout_s=float(_opt(data, "timeout_s", 60.0)),
            backoff_s=backoff_s,
            progress=progress,
        )
    finally:
        progress.close()
    origins: dict[str, int] = {}
    for r in results:
        origins[r.origin] = origins.get(r.origin, 0) + 1
    print(
        f"{spec.name}: {len(results)} shard(s) in {raw_dir} ("
        + ", ".join(f"{n} {o}" for o, n in sorted(origins.items()))
        + ")",
        file=stream,
        flush=True,
    )
    extra = {
        "dataset": spec.name,
        "validation_shard": shard_plan.validation_shard,
        "num_train_shards": shard_plan.num_train,
        "part": None if shard_plan.part is None else list(shard_plan.part),
        "auto": shard_plan.auto,
    }
    return DatasetDownload(
        spec, shard_plan, [r.entry() for r in results], extra, [r.origin for r in results]
    )


def _check_space(
    spec: DatasetSpec,
    shard_plan: ShardPlan,
    raw_dir: Path,
    reuse: Sequence[Path],
    file_bytes: float | None,
    *,
    hub: bool,
    hub_cache: str | None,
) -> None:
    """Bytes still to land in `raw_dir` (and in the hub cache) against their free space.

    A shard already in `raw_dir` needs nothing; one in a reuse folder on the same file system
    is hard-linked (nothing); a partial `.part` needs only its rest."""
    if not file_bytes:
        log.warning("shard size of %s unknown; free space not checked", spec.name)
        return
    raw_dir.mkdir(parents=True, exist_ok=True)
    dev = os.stat(raw_dir).st_dev
    needed = 0.0
    missing = 0
    for index in shard_plan.indices:
        name = spec.filename(index)
        if (raw_dir / name).exists():
            continue
        if any((d / name).exists() and os.stat(d / name).st_dev == dev for d in reuse):
            continue
        part = raw_dir / f"{name}.tmp.part"
        missing += 1
        needed += max(file_bytes - (part.stat().st_size if part.exists() else 0), 0)
    if not needed:
        return
    if hub:
        from huggingface_hub import constants

        cache = Path(hub_cache or constants.HF_HUB_CACHE)
        probe = cache
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if os.stat(probe).st_dev != dev:  # the cache holds one copy, raw_dir another
            check_disk(needed, cache, what=f"{spec.name} shards in the hub cache")
    check_disk(needed, raw_dir, what=f"{missing} {spec.name} shard(s) to fetch")


def _remote_size(url: str, timeout_s: float = 30.0) -> float | None:
    """Content-Length of a HEAD request (None when the server does not say)."""
    try:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "lrt-pipeline"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
    except OSError as exc:
        log.warning("HEAD %s failed (%s); shard size unknown", url, exc)
        return None
    return float(length) if length else None
