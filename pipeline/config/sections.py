"""The settings of each pipeline component: one pydantic model per section of params.yaml.

Every model forbids unknown keys and documents each field (attribute docstrings, shown by
`lrt-pipeline config show` and docs/PIPELINE.md). `pipeline.config.settings` composes them into
`Settings` and layers params.yaml, the environment and `--set` overrides on top; import them
from there.

This module holds the registry of sections (`SECTIONS`, in pipeline order; `PATH_FIELDS`) and
the stages' small sections (data, tokenizer, eval, report, tracking), and `SettingsError`. The
others live by what they configure: `model_sections.py` (model, strategy: mirrors of lrt's
configs), `train_sections.py` (train, with its variants); `base.py` holds their shared base.

Example:
    >>> SECTIONS["train"] is TrainSettings, PATH_FIELDS[0]
    (True, 'data.paths')
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.config.base import SettingsSection
from pipeline.config.model_sections import ModelSettings, StrategySettings
from pipeline.config.train_sections import TrainSettings

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
"""nanochat's eval bundle (its base_eval `EVAL_BUNDLE_URL`; pipeline.evaluation.bundle.DEFAULT_URL)."""
FINEWEB_EDU_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"

__all__ = [
    "PATH_FIELDS",
    "SECTIONS",
    "DataSettings",
    "EvalSettings",
    "ModelSettings",
    "ReportSettings",
    "SettingsError",
    "StrategySettings",
    "TokenizerSettings",
    "TrackingSettings",
    "TrainSettings",
]


class SettingsError(ValueError):
    """A user-facing configuration mistake: unknown key, bad value, unreadable config file."""


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class DataSettings(SettingsSection):
    """Where raw documents come from (stage `download`)."""

    source: Literal["builtin", "fineweb-edu", "climbmix", "parquet-url", "files"] = "builtin"
    """`builtin`: the running Python's standard-library sources (offline, always present);
    `fineweb-edu` / `climbmix`: parquet shards of karpathy/fineweb-edu-100b-shuffle /
    karpathy/climbmix-400b-shuffle (docs/DATA.md); `parquet-url`: parquet shards at `base_url`;
    `files`: the local files listed in `paths`."""
    paths: list[str] = []
    """Local .txt / .jsonl / .jsonl.zst / .parquet files or folders (source `files` only)."""
    base_url: str | None = None
    """Folder URL of the shards. None = the dataset's own (fineweb-edu, climbmix: the Hugging
    Face hub through huggingface_hub); another URL (a mirror) is fetched with the plain HTTP
    fetcher. Required for `parquet-url`."""
    num_shards: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] = 1
    """Training shards to fetch, or `auto`: as many as the configured run consumes (tokens per
    param x params x bytes per token / text bytes per shard; docs/DATA.md). The validation
    shard is fetched in addition, whatever this is."""
    val_shard: int | None = Field(None, ge=0)
    """Validation shard index; None = the dataset's final shard (fineweb-edu 1822, climbmix
    6542), as in the paper and nanochat."""
    final_shard: int | None = Field(None, ge=0)
    """`parquet-url`: index of the dataset's last shard."""
    file_pattern: str = "shard_{index:05d}.parquet"
    """`parquet-url`: shard file name, a `str.format` pattern with `{index}`."""
    workers: int = Field(4, ge=1, le=64)
    """Shards downloaded at once (threads)."""
    reuse_dir: str | None = None
    """A folder of already-downloaded shards (e.g. nanochat's ~/.cache/nanochat/base_data):
    valid ones are hard-linked (or copied), never fetched again."""
    hub: bool = True
    """Use huggingface_hub (HF_TOKEN, HF_ENDPOINT, its cache) for datasets on the hub."""
    hub_cache: str | None = None
    """huggingface_hub cache folder; None = its default (HF_HUB_CACHE / HF_HOME)."""
    max_bytes: int | None = Field(4_000_000, ge=1)
    """Cap on raw corpus bytes for `builtin` and `files` (None = no cap)."""
    raw_dir: str = "data/raw"
    """Output folder: documents plus manifest.json."""
    retries: int = Field(4, ge=0, le=100)
    """Remote shards: download retries per shard (exponential backoff)."""
    timeout_s: float = Field(60.0, gt=0, le=86_400)
    """Remote shards: socket timeout in seconds."""

    @model_validator(mode="after")
    def _files_need_paths(self) -> DataSettings:
        if self.source == "files" and not self.paths:
            raise ValueError("data.source=files needs data.paths (a list of files or folders)")
        if self.source == "parquet-url" and (not self.base_url or self.final_shard is None):
            raise ValueError("data.source=parquet-url needs data.base_url and data.final_shard")
        return self


class TokenizerSettings(SettingsSection):
    """Byte-level BPE training and shard packing (stage `tokenize`)."""

    vocab_size: int = Field(2048, ge=266, le=1 << 22)
    """Vocabulary size including special tokens (256 bytes + 9 specials at least). The paper
    uses 32768/65536; the CPU demo default is small because the LM head dominates tiny models."""
    pretrained: str | None = None
    """Use this saved tokenizer (project format) instead of training one."""
    train_max_bytes: int = Field(2_000_000, ge=1)
    """Raw text bytes used to train the BPE (the first documents, in corpus order)."""
    shard_tokens: int = Field(1 << 24, ge=1024, le=1 << 31)
    """Tokens per shard file."""
    compression: Literal["none", "zstd"] = "none"
    """Shard payload: raw (memory-mapped) or zstd chunks."""
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """Fraction of documents held out for validation (sources without their own split)."""
    seed: int = 0
    """Seed of the train/val document split."""
    out_dir: str = "data/tokens"
    """Output folder: tokenizer, shards, manifest.json, stats.json."""


class EvalSettings(SettingsSection):
    """Evaluation of a trained variant (stage `eval`)."""

    bpb_max_tokens: int = Field(65536, ge=1)
    """Validation tokens scored for bits-per-byte in the parallel modes."""
    modes: list[Literal["init", "merged", "refine", "sequential"]] = [
        "init",
        "refine",
        "sequential",
    ]
    """BPB modes: init (zero memory), merged, refine (training strategy's last pass) and
    sequential (exact token-by-token decoding, as deployed)."""
    sequential_max_tokens: int | None = Field(None, ge=1)
    """Cap on tokens scored in sequential mode (token-by-token is slow on CPU); None = the same
    tokens as every other mode (bpb_max_tokens), so all modes are comparable."""
    bucket_size: int = Field(32, ge=1)
    """Positions per bucket in the per-position BPB table."""
    core_dir: str = "data/eval_bundle"
    """Folder of CORE task files (nanochat's eval bundle: core.yaml, eval_data/; the
    `eval_bundle` stage downloads it here); missing = CORE skipped with a message."""
    bundle_url: str | None = Field(None, min_length=1)
    """Where the `eval_bundle` stage downloads nanochat's eval bundle (a zip) from; null =
    $LRT_EVAL_BUNDLE_URL when set, else nanochat's own (EVAL_BUNDLE_URL, the
    karpathy-public S3 eval_bundle.zip)."""
    bundle_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    """Expected SHA-256 of the bundle zip; null = not checked (its size and core.yaml are)."""
    sequential_memory_mb: float | None = Field(None, gt=0, le=1 << 30)
    """Memory budget (MiB) for batching sequential scoring (rows decoded at once); null =
    $LRT_EVAL_SEQUENTIAL_MEMORY_MB when set, else a quarter of the free CUDA memory on a GPU,
    else 1024 MiB."""
    core_max_items: int | None = Field(50, ge=1)
    """Items per CORE task (None = all)."""
    icl_enabled: bool = True
    """Run the in-context-learning probes."""
    icl_max_items: int = Field(32, ge=1)
    """Items per ICL probe."""
    samples_prompts: list[str] = ["The meaning of", "def main():", "import "]
    """Prompts for the text samples shown in the report."""
    max_new_tokens: int = Field(48, ge=1)
    """Tokens generated per sample."""
    temperature: float = Field(0.0, ge=0, le=100)
    """Sampling temperature for samples; 0 = greedy."""
    seed: int = 0
    """Seed of sampling and item selection."""


class ReportSettings(SettingsSection):
    """Report (stage `report`)."""

    out_dir: str = "reports"
    """Output folder: report.md, report.html, figures."""


class TrackingSettings(SettingsSection):
    """MLflow tracking."""

    enabled: bool = True
    """Log to MLflow; false makes every tracking call a no-op."""
    uri: str = "sqlite:///mlruns.db"
    """Tracking URI; a relative sqlite path is resolved against the project folder."""
    artifact_location: str = "mlartifacts"
    """Artifact root for newly created experiments (relative to the project folder)."""
    experiment: str = "lrt"
    """Experiment name."""


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

SECTIONS: dict[str, type[SettingsSection]] = {
    "data": DataSettings,
    "tokenizer": TokenizerSettings,
    "model": ModelSettings,
    "strategy": StrategySettings,
    "train": TrainSettings,
    "eval": EvalSettings,
    "report": ReportSettings,
    "tracking": TrackingSettings,
}
"""Section name -> model, in pipeline order."""

PATH_FIELDS = (
    "data.paths",
    "data.raw_dir",
    "data.reuse_dir",
    "data.hub_cache",
    "tokenizer.pretrained",
    "tokenizer.out_dir",
    "train.out_dir",
    "eval.core_dir",
    "report.out_dir",
    "tracking.artifact_location",
)
"""Dotted keys holding filesystem paths, resolved against the project folder by load_settings."""
