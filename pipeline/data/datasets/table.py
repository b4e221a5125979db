"""Known pretraining datasets as data: where the parquet shards are, which one is validation.

Each dataset is a `DatasetSpec` (frozen): the shard URL folder, the file-name pattern, the final
shard index, the validation shard (default: the final one, pinned whatever `num_shards` is),
the text column and, when it is hosted there, its Hugging Face repo id. A generic "parquet
shards at a URL" spec is built from settings (`data.source: parquet-url`).

Example:
    >>> spec = dataset("fineweb-edu")
    >>> spec.name, spec.validation_shard, spec.filename(spec.validation_shard)
    ('fineweb-edu-100b', 1822, 'shard_01822.parquet')
    >>> dataset("climbmix-400b").url(6542).rsplit("/", 3)[-3:]
    ['resolve', 'main', 'shard_06542.parquet']

The figures per shard (`shard_text_bytes`, `shard_file_bytes`, `bytes_per_token`) are estimates
for planning (`data.num_shards: auto`, the disk-space check); docs/DATA.md says where each one
comes from. Downloads never trust them: every shard is verified by its parquet footer.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DATASETS",
    "DEFAULT_BYTES_PER_TOKEN",
    "HF_DEFAULT_ENDPOINT",
    "SOURCE_ALIASES",
    "DatasetSpec",
    "UnknownDatasetError",
    "dataset",
    "hub_base_url",
    "parquet_url_spec",
    "spec_from_settings",
]

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
# nanochat's repackaging (dev/repackage_data_reference.py): shards of >= 250M characters of text,
# zstd level 3, "~100MB" per file. Characters ~= UTF-8 bytes for these mostly-English corpora
# (bytes are slightly more, so the shard counts planned from it err on the side of more shards).
_SHARD_TEXT_BYTES = 250e6
_SHARD_FILE_BYTES = 100e6
DEFAULT_BYTES_PER_TOKEN = 4.0
"""Bytes of text per token when no tokenizer has been measured on the data (generic sources)."""


class UnknownDatasetError(ValueError):
    """A dataset name that is not in the table."""


@dataclass(frozen=True)
class DatasetSpec:
    """Parquet shards `base_url/pattern.format(index=i)` for i = 0..final_shard.

    Attributes:
        name: Table key (also recorded in the raw manifest).
        base_url: Folder URL of the shards (no trailing slash needed).
        final_shard: Index of the last shard the dataset has.
        file_pattern: `str.format` pattern with `{index}`.
        val_shard: Validation shard; None = the final shard.
        text_column: Column with one document per row.
        repo_id: Hugging Face dataset repo, when hosted there (downloaded with huggingface_hub).
        revision: Hub revision (branch, tag or commit).
        shard_text_bytes: Approximate bytes of text per shard (planning only; None = unknown).
        shard_file_bytes: Approximate bytes per shard file on disk (None = ask the server).
        bytes_per_token: Default bytes of text per token when no tokenizer was measured.
    """

    name: str
    base_url: str
    final_shard: int
    file_pattern: str = "shard_{index:05d}.parquet"
    val_shard: int | None = None
    text_column: str = "text"
    repo_id: str | None = None
    revision: str = "main"
    shard_text_bytes: float | None = None
    shard_file_bytes: float | None = None
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN

    def __post_init__(self) -> None:
        if self.final_shard < 0:
            raise ValueError(f"dataset {self.name}: final_shard={self.final_shard} must be >= 0")
        if self.val_shard is not None and not 0 <= self.val_shard <= self.final_shard:
            raise ValueError(
                f"dataset {self.name}: val_shard={self.val_shard} is outside 0..{self.final_shard}"
            )
        if "{index" not in self.file_pattern:
            raise ValueError(
                f"dataset {self.name}: file_pattern {self.file_pattern!r} has no {{index}} field"
            )

    @property
    def validation_shard(self) -> int:
        """The pinned validation shard (the final shard unless `val_shard` says otherwise)."""
        return self.final_shard if self.val_shard is None else self.val_shard

    @property
    def num_train_available(self) -> int:
        """Shards that may be used for training (all but the validation shard)."""
        return self.final_shard

    def filename(self, index: int) -> str:
        return self.file_pattern.format(index=index)

    def url(self, index: int) -> str:
        return f"{self.base_url.rstrip('/')}/{self.filename(index)}"


def hub_base_url(repo_id: str, revision: str = "main", endpoint: str | None = None) -> str:
    """The plain `resolve` URL folder of a hub dataset (HF_ENDPOINT mirrors honoured)."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    return f"{endpoint}/datasets/{repo_id}/resolve/{revision}"


def _hub_dataset(name: str, repo_id: str, final_shard: int, **kw: Any) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        base_url=hub_base_url(repo_id, endpoint=HF_DEFAULT_ENDPOINT),
        final_shard=final_shard,
        repo_id=repo_id,
        shard_text_bytes=_SHARD_TEXT_BYTES,
        shard_file_bytes=_SHARD_FILE_BYTES,
        **kw,
    )


DATASETS: dict[str, DatasetSpec] = {
    # The paper's data. FineWeb-Edu sample-100BT = 100B GPT-2 tokens in 1823 shards of 250M
    # characters: 4.56 bytes/token; 4.5 for a 32768-65536 vocabulary (a smaller vocabulary
    # compresses a little less).
    "fineweb-edu-100b": _hub_dataset(
        "fineweb-edu-100b", "karpathy/fineweb-edu-100b-shuffle", 1822, bytes_per_token=4.5
    ),
    # nanochat's current data (since 2026-03-04): 400B GPT-2 tokens in 6543 shards: 4.09.
    "climbmix-400b": _hub_dataset(
        "climbmix-400b", "karpathy/climbmix-400b-shuffle", 6542, bytes_per_token=4.0
    ),
}
SOURCE_ALIASES: dict[str, str] = {"fineweb-edu": "fineweb-edu-100b", "climbmix": "climbmix-400b"}
"""`data.source` values that name a table entry."""


def dataset(name: str) -> DatasetSpec:
    """The table entry `name` (or its `data.source` alias).

    Raises:
        UnknownDatasetError: not in the table (the message lists the known names).
    """
    key = SOURCE_ALIASES.get(name, name)
    if key not in DATASETS:
        known = sorted({*DATASETS, *SOURCE_ALIASES})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownDatasetError(
            f"unknown dataset {name!r}{hint} Known: {', '.join(known)}; or use "
            "data.source=parquet-url with data.base_url and data.final_shard"
        )
    return DATASETS[key]


def parquet_url_spec(
    base_url: str,
    final_shard: int,
    *,
    file_pattern: str = "shard_{index:05d}.parquet",
    val_shard: int | None = None,
    text_column: str = "text",
    name: str = "parquet-url",
) -> DatasetSpec:
    """A generic dataset: parquet shards `base_url/file_pattern` for index 0..final_shard."""
    return DatasetSpec(
        name=name,
        base_url=base_url,
        final_shard=final_shard,
        file_pattern=file_pattern,
        val_shard=val_shard,
        text_column=text_column,
    )


def spec_from_settings(data: Any) -> DatasetSpec:
    """The dataset a `data` settings section describes.

    Reads `source`, `base_url`, and (where the section has them) `val_shard`, `final_shard`,
    `file_pattern`. A known dataset whose `base_url` is set to another URL is fetched from
    that URL with the plain fetcher (a mirror or a test server), not from the hub.

    Raises:
        UnknownDatasetError: `data.source` names no dataset.
        ValueError: `parquet-url` without `base_url` / `final_shard`.
    """
    source = data.source
    base_url = getattr(data, "base_url", None)
    val_shard = getattr(data, "val_shard", None)
    if source == "parquet-url":
        final_shard = getattr(data, "final_shard", None)
        if not base_url or final_shard is None:
            raise ValueError(
                "data.source=parquet-url needs data.base_url (the folder URL of the shards) and "
                "data.final_shard (the index of the last shard)"
            )
        return parquet_url_spec(
            base_url,
            int(final_shard),
            file_pattern=getattr(data, "file_pattern", None) or "shard_{index:05d}.parquet",
            val_shard=val_shard,
        )
    spec = dataset(source)
    if val_shard is not None:
        spec = dataclasses.replace(spec, val_shard=int(val_shard))
    if base_url and base_url.rstrip("/") != spec.base_url.rstrip("/"):
        spec = dataclasses.replace(spec, base_url=base_url, repo_id=None)
    return spec
