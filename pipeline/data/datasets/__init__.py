"""Sharded pretraining datasets (FineWeb-Edu 100B, ClimbMix 400B, parquet shards at a URL):
the dataset table, the shard plan with the pinned validation shard, and the parallel,
resumable, verified download the `download` stage calls. See docs/DATA.md.

    >>> from pipeline.data.datasets import dataset, plan
    >>> plan(dataset("climbmix"), 2).indices
    (0, 1, 6542)
"""

from __future__ import annotations

from pipeline.data.datasets.fetcher import ShardResult, download_shards, hub_available, verify_shard
from pipeline.data.datasets.planning import (
    InsufficientDiskError,
    ShardPlan,
    check_disk,
    measure_bytes_per_token,
    paper_d20,
    plan,
    run_tokens,
    shards_for_tokens,
)
from pipeline.data.datasets.progress import Progress
from pipeline.data.datasets.stage import DatasetDownload, download_dataset, plan_from_settings
from pipeline.data.datasets.table import (
    DATASETS,
    SOURCE_ALIASES,
    DatasetSpec,
    UnknownDatasetError,
    dataset,
    parquet_url_spec,
    spec_from_settings,
)

SOURCES = ("fineweb-edu", "climbmix", "parquet-url")
"""`data.source` values this package serves."""

__all__ = [
    "DATASETS",
    "SOURCES",
    "SOURCE_ALIASES",
    "DatasetDownload",
    "DatasetSpec",
    "InsufficientDiskError",
    "Progress",
    "ShardPlan",
    "ShardResult",
    "UnknownDatasetError",
    "check_disk",
    "dataset",
    "download_dataset",
    "download_shards",
    "hub_available",
    "measure_bytes_per_token",
    "paper_d20",
    "parquet_url_spec",
    "plan",
    "plan_from_settings",
    "run_tokens",
    "shards_for_tokens",
    "spec_from_settings",
    "verify_shard",
]
