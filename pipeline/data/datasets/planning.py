"""Which shards a run fetches: the training shards, the pinned validation shard, the disk needed.

    train = the first `num_shards` shard indices other than the validation shard (0..n-1 when
            validation is the final shard, the default)
    val   = the dataset's validation shard, fetched whatever `num_shards` is

`num_shards: auto` is the number of training shards the configured run consumes:

    tokens = max over variants of (optimizer steps x train.total_batch_tokens)
             (steps = train.max_steps, else tokens_per_param x scaling params / batch tokens)
    shards = ceil(tokens x bytes_per_token / shard_text_bytes)

with bytes_per_token measured with the run's tokenizer on this dataset's text when both are at
hand, else the dataset's documented default (`pipeline.data.datasets.table`).

Example:
    >>> from pipeline.data.datasets.table import dataset
    >>> p = plan(dataset("fineweb-edu"), 3)
    >>> p.train, p.val
    ((0, 1, 2), 1822)
    >>> plan(dataset("fineweb-edu"), 3, part=(2, 2)).indices
    (1,)
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.data.datasets.table import DatasetSpec, dataset

__all__ = [
    "InsufficientDiskError",
    "ShardPlan",
    "check_disk",
    "format_bytes",
    "format_duration",
    "measure_bytes_per_token",
    "paper_d20",
    "plan",
    "run_tokens",
    "shards_for_tokens",
]

PAPER_D20 = {"depth": 20, "vocab_size": 32768, "seq_len": 2048, "tokens_per_param": 10.0}
PAPER_BATCH_TOKENS = 524_288  # nanochat's total batch at d20 (2**19)


class InsufficientDiskError(OSError):
    """The shards to fetch do not fit in the free space of the target file system."""


@dataclass(frozen=True)
class ShardPlan:
    """The shards one `download` fetches.

    Attributes:
        dataset: Dataset name.
        train: Training shard indices this machine fetches (all of them without `part`).
        val: The validation shard when this machine fetches it (part 1 of n, or no part), else
            None.
        validation_shard: The dataset's validation shard (recorded in the manifest either way).
        num_train: Training shards of the whole run (all parts).
        part: (i, n) when this is part i of n.
        auto: How `num_shards: auto` was worked out (tokens, bytes_per_token, its source), or
            None when `num_shards` was given.
    """

    dataset: str
    train: tuple[int, ...]
    val: int | None
    validation_shard: int
    num_train: int
    part: tuple[int, int] | None = None
    auto: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def indices(self) -> tuple[int, ...]:
        """Every shard this machine fetches, training shards first."""
        return self.train + (() if self.val is None else (self.val,))

    def describe(self, shard_file_bytes: float | None = None) -> str:
        """One line for the user: what will be fetched (printed before downloading)."""
        span = _span(self.train)
        text = f"{self.dataset}: {len(self.train)} training shard(s) {span}"
        if self.part is not None:
            text += f" (part {self.part[0]}/{self.part[1]} of {self.num_train})"
        if self.val is not None:
            text += f" + validation shard {self.val}"
        else:
            text += f"; validation shard {self.validation_shard} is fetched by part 1"
        if self.auto is not None:
            a = self.auto
            text += (
                f"; auto: {a['tokens']:,} training tokens x {a['bytes_per_token']:.3g} "
                f"bytes/token ({a['bytes_per_token_source']}) / {format_bytes(a['shard_text_bytes'])}"
                " of text per shard"
            )
        if shard_file_bytes:
            text += f"; about {format_bytes(len(self.indices) * shard_file_bytes)} on disk"
        return text


def _span(indices: Sequence[int]) -> str:
    if not indices:
        return "(none)"
    if list(indices) == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}..{indices[-1]}"
    step = indices[1] - indices[0] if len(indices) > 1 else 1
    return f"{indices[0]}, {indices[0] + step}, ... {indices[-1]}"


def plan(
    spec: DatasetSpec,
    num_shards: int | Literal["auto"],
    *,
    part: tuple[int, int] | None = None,
    tokens: int | None = None,
    bytes_per_token: float | None = None,
    bytes_per_token_source: str | None = None,
) -> ShardPlan:
    """The training shards and the validation shard to fetch.

    Args:
        spec: The dataset.
        num_shards: Training shards, or "auto" (needs `tokens`: the run's training tokens).
        part: (i, n), 1-based: this machine takes training shards i-1, i-1+n, ...; the
            validation shard is fetched by part 1 only (parts may share one folder, and two
            machines must never write the same file).
        tokens: Training tokens of the run (`run_tokens`), for "auto".
        bytes_per_token: Measured bytes per token; None = the dataset's default.
        bytes_per_token_source: Where `bytes_per_token` came from (shown to the user).

    Raises:
        ValueError: more shards than the dataset has, a bad part, "auto" without the figures.
    """
    auto = None
    if num_shards == "auto":
        if tokens is None:
            raise ValueError("data.num_shards=auto needs the run's training tokens (run_tokens)")
        if not spec.shard_text_bytes:
            raise ValueError(
                f"data.num_shards=auto: the text bytes per shard of {spec.name} are unknown; "
                "set data.num_shards to a number"
            )
        bpt = bytes_per_token if bytes_per_token is not None else spec.bytes_per_token
        source = bytes_per_token_source or (
            "measured" if bytes_per_token is not None else f"{spec.name} default"
        )
        num_shards = shards_for_tokens(tokens, bpt, spec.shard_text_bytes)
        auto = {
            "tokens": int(tokens),
            "bytes_per_token": float(bpt),
            "bytes_per_token_source": source,
            "shard_text_bytes": float(spec.shard_text_bytes),
            "num_shards": num_shards,
        }
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"data.num_shards={num_shards!r} must be a positive integer or 'auto'")
    available = spec.num_train_available
    if num_shards > available:
        needed = f" (the run needs {num_shards})" if auto else ""
        raise ValueError(
            f"data.num_shards={num_shards}{needed} exceeds the {available} training shards of "
            f"{spec.name} (shards 0..{spec.final_shard}, {spec.validation_shard} is "
            "validation); lower it or train on fewer tokens"
        )
    val = spec.validation_shard
    train = [i for i in range(num_shards + 1) if i != val][:num_shards]
    fetch_val: int | None = val
    if part is not None:
        i, n = part
        if not (isinstance(i, int) and isinstance(n, int) and 1 <= i <= n):
            raise ValueError(f"part {i}/{n}: expected 1 <= i <= n")
        train = train[i - 1 :: n]
        if i != 1:
            fetch_val = None
    return ShardPlan(
        dataset=spec.name,
        train=tuple(train),
        val=fetch_val,
        validation_shard=val,
        num_train=num_shards,
        part=None if part is None else (part[0], part[1]),
        auto=auto,
    )


def shards_for_tokens(tokens: float, bytes_per_token: float, shard_text_bytes: float) -> int:
    """Training shards holding `tokens` tokens: ceil(tokens x bytes/token / bytes per shard)."""
    if tokens <= 0 or bytes_per_token <= 0 or shard_text_bytes <= 0:
        raise ValueError(
            f"tokens={tokens}, bytes_per_token={bytes_per_token} and "
            f"shard_text_bytes={shard_text_bytes} must be positive"
        )
    return max(1, math.ceil(tokens * bytes_per_token / shard_text_bytes))


# ---------------------------------------------------------------------------------------------
# What the configured run consumes
# ---------------------------------------------------------------------------------------------


def run_tokens(settings: Any, vocab_size: int | None = None) -> dict[str, Any]:
    """Training tokens of the configured run: the most any variant trains on.

    Args:
        settings: The full `Settings` (train, model, strategy, tokenizer sections).
        vocab_size: The tokenizer's vocabulary; None = `tokenizer.vocab_size`.

    Returns:
        {"tokens": int, "variant": name, "scaling_params": float, "steps": int,
         "vocab_size": int}
    """
    from lrt.accounting import param_counts
    from pipeline.config.budget import plan_steps
    from pipeline.config.settings import variant_settings, variant_train_settings

    vocab = int(vocab_size or settings.tokenizer.vocab_size)
    best: dict[str, Any] | None = None
    for name in settings.train.variants:
        model, _ = variant_settings(settings, name)
        scaling = float(param_counts(model.to_config(vocab))["scaling_params"])
        train = variant_train_settings(settings, name)  # a variant may set its own budget
        steps = plan_steps(train, scaling)
        tokens = steps * train.total_batch_tokens
        if best is None or tokens > best["tokens"]:
            best = {
                "tokens": int(tokens),
                "variant": name,
                "scaling_params": scaling,
                "steps": int(steps),
                "vocab_size": vocab,
            }
    assert best is not None  # settings refuse empty train.variants
    return best


def measure_bytes_per_token(
    tokenizer_path: str | Path,
    parquet_paths: Iterable[str | Path],
    *,
    text_column: str = "text",
    sample_bytes: int = 4_000_000,
) -> float | None:
    """UTF-8 bytes per token of a saved tokenizer on the first `sample_bytes` of text of the
    given parquet files (None when they hold no text)."""
    import polars as pl

    from pipeline.data.tokenizer import Tokenizer

    texts: list[str] = []
    total = 0
    for path in parquet_paths:
        # 4096 rows (~16 MB of FineWeb-Edu text) bound the read before the byte cap applies
        frame = pl.scan_parquet(path).select(text_column).head(4096).collect()
        for text in frame[text_column]:
            if not text:
                continue
            texts.append(text)
            total += len(text.encode("utf-8"))
            if total >= sample_bytes:
                break
        if total >= sample_bytes:
            break
    if not texts:
        return None
    tokens = sum(len(ids) for ids in Tokenizer.load(tokenizer_path).encode_batch(texts))
    return total / tokens if tokens else None


# ---------------------------------------------------------------------------------------------
# Disk space and the README's figures
# ---------------------------------------------------------------------------------------------


def check_disk(needed: float, folder: str | Path, *, what: str = "the shards") -> None:
    """Refuse before downloading when `needed` bytes exceed the free space under `folder`.

    Raises:
        InsufficientDiskError: names both numbers, the folder and the fixes.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise InsufficientDiskError(
            f"{what} need about {format_bytes(needed)} but {probe} has {format_bytes(free)} "
            "free; free some space, point data.raw_dir at a larger disk, or lower "
            "data.num_shards (or use download --part i/n on several machines)"
        )


def paper_d20(
    bandwidth_bytes_s: float | Sequence[float] = (100e6, 1e9), dataset_name: str = "fineweb-edu"
) -> dict[str, Any]:
    """Shards and download time for the paper's d20 run (vocab 32768, 10 tokens/param, the
    baseline and the shared-pathway LRT variant, nanochat's 2**19-token batch).

    The tokens follow this pipeline's rule (`train.tokens_per_param` x the scaling parameters
    of `lrt.accounting.param_counts`, for the larger of the two variants).

    Example:
        >>> r = paper_d20(100e6)
        >>> r["shards"], r["train_shards"], r["variant"]
        (80, 79, 'lrt')
    """
    from pipeline.config.settings import load_settings

    spec = dataset(dataset_name)
    overrides = [
        f"model.depth={PAPER_D20['depth']}",
        f"model.seq_len={PAPER_D20['seq_len']}",
        f"tokenizer.vocab_size={PAPER_D20['vocab_size']}",
        "train.max_steps=null",
        f"train.tokens_per_param={PAPER_D20['tokens_per_param']}",
        f"train.total_batch_tokens={PAPER_BATCH_TOKENS}",
        "train.device_batch_size=32",
    ]
    settings = load_settings(None, overrides)
    run = run_tokens(settings)
    p = plan(spec, "auto", tokens=run["tokens"])
    shards = len(p.indices)
    size = shards * (spec.shard_file_bytes or 0)
    bandwidths = (
        [bandwidth_bytes_s] if isinstance(bandwidth_bytes_s, int | float) else bandwidth_bytes_s
    )
    return {
        "dataset": spec.name,
        "variant": run["variant"],
        "scaling_params": run["scaling_params"],
        "tokens": run["tokens"],
        "bytes_per_token": spec.bytes_per_token,
        "train_shards": len(p.train),
        "shards": shards,
        "bytes": size,
        "seconds": {float(b): size / b for b in bandwidths},
    }


def format_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
