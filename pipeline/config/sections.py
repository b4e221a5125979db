"""The settings of each pipeline component: one pydantic model per section of params.yaml.

Every model forbids unknown keys and documents each field (attribute docstrings, shown by
`lrt-pipeline config show` and docs/PIPELINE.md). `pipeline.config.settings` composes them into
`Settings` and layers params.yaml, the environment and `--set` overrides on top; import them
from there.

Example:
    >>> ModelSettings(depth=2, n_embd=64, n_head=2).to_config(vocab_size=97).head_dim
    32
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from lrt.config import LRTConfig, StrategyConfig

MAX_DEPTH = 512
MAX_LR = 100.0
"""Upper bounds that only catch typos (`depth=100000`, `matrix_lr=2e5`); memory is checked
against the device when training starts (`train.max_memory_gb`)."""

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


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` in any float (lists included) is refused when
    # settings load, instead of training to a NaN loss that exits 0.
    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        allow_inf_nan=False,
    )


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class DataSettings(_Section):
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


class TokenizerSettings(_Section):
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


class ModelSettings(_Section):
    """Architecture; mirrors `lrt.LRTConfig` (the vocabulary comes from the tokenizer)."""

    depth: int = Field(4, ge=1, le=MAX_DEPTH)
    """Number of transformer blocks (the one scaling dial)."""
    n_embd: int | None = Field(None, ge=8, le=1 << 16)
    """Model width; None = nanochat rule 64*depth rounded up to a multiple of 128."""
    n_head: int | None = Field(None, ge=1, le=1024)
    """Attention heads; None = n_embd // 128."""
    n_kv_head: int | None = Field(None, ge=1, le=1024)
    """Key/value heads (GQA: each serves n_head / n_kv_head query heads; must divide n_head);
    None = n_head (plain multi-head attention)."""
    seq_len: int = Field(256, ge=2, le=1 << 20)
    """Training context length in tokens."""
    window_pattern: str = Field("SSSL", min_length=1, max_length=1024, pattern=r"^[SLsl]+$")
    """Sliding-window pattern tiled over the layers (nanochat): L = full context (seq_len keys
    back), S = seq_len // 2; the final layer is always L. "L" = full attention everywhere."""
    use_value_embeds: bool = True
    """nanochat's value embeddings: a token-indexed table added to v (gated per KV head) on
    alternating layers, the last included. Ignored by pathway official (its own replace them)."""
    ve_every_layer: bool = False
    """Value embeddings on every layer (the official arm's capacity)."""
    ve_gate_channels: int = Field(32, ge=0, le=1 << 16)
    """Input channels of the value-embedding and triple gates; 0 = the full width (at most
    n_embd)."""
    use_resid_lambdas: bool = True
    """Per-layer learnable scale of the residual stream before each block (init 1)."""
    use_x0_residual: bool = True
    """Per-layer skip to the normed embedding, x += x0_lambdas[l] * x0 before block l (init
    0.1)."""
    pad_vocab_size_to: int = Field(64, ge=1, le=1 << 16)
    """Embedding and head rows padded to a multiple of this (logits sliced back); 1 = none."""
    pathway: Literal["none", "shared", "layerwise", "official"] = "none"
    """Latent recurrent pathway: none (baseline), shared or layerwise memory K/V projections
    (our single gate), or official (the LRT authors' arm: triple gate, init value embeddings on
    every layer, per-layer projections, source = final layer)."""
    source_layer: int = -1
    """Block whose output at token t-1 is the memory of token t; negative counts from the end."""
    residual_injection: bool = True
    """Add gamma_l * m_t to the residual stream before block l."""
    kv_projection: bool = True
    """Mix projected memory into each layer's keys and values (gated per head)."""
    gamma_init: float = Field(0.1, ge=-100, le=100)
    """Initial residual-injection scale."""
    identity_init: bool = False
    """Zero-initialise the pathway so LRT equals the baseline at step 0."""
    zero_memory: bool = False
    """Keep every pathway parameter but feed zero memory to every layer (capacity-only
    ablation: the parameters without the recurrence); needs a pathway."""

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSettings:
        if self.n_embd is not None and self.n_head is not None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_kv_head is not None and self.n_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}; pick a divisor "
                "(or null for plain multi-head attention)"
            )
        if self.n_embd is not None and self.ve_gate_channels > self.n_embd:
            raise ValueError(
                f"ve_gate_channels={self.ve_gate_channels} exceeds n_embd={self.n_embd}; use 0 "
                "for the full width"
            )
        if not -self.depth <= self.source_layer < self.depth:
            raise ValueError(
                f"source_layer={self.source_layer} is outside [-{self.depth}, {self.depth})"
            )
        if self.zero_memory and self.pathway == "none":
            raise ValueError("zero_memory=true needs a pathway; set model.pathway or drop it")
        if self.pathway == "official" and self.source_layer % self.depth != self.depth - 1:
            raise ValueError(
                f"pathway=official reads the final layer; source_layer={self.source_layer} is "
                "not supported there (use -1, or pathway shared/layerwise)"
            )
        if self.pathway == "official" and not (self.residual_injection and self.kv_projection):
            raise ValueError(
                "pathway=official has a fixed recipe: keep residual_injection and kv_projection "
                "on (or use pathway shared/layerwise)"
            )
        return self

    def to_config(self, vocab_size: int) -> LRTConfig:
        """Build the `lrt.LRTConfig` for a tokenizer of `vocab_size` ids."""
        from lrt.config import LRTConfig

        return LRTConfig(vocab_size=vocab_size, **self.model_dump())


class StrategySettings(_Section):
    """How a training step uses the pathway; mirrors `lrt.StrategyConfig`."""

    name: Literal["none", "interleaved", "multi_refine", "chunked", "sequential"] = "none"
    """none (baseline), interleaved (S strided subsets), multi_refine (K Jacobi passes), chunked
    (memory crosses chunk boundaries only) or sequential (exact, slow; for verification)."""
    subsets: int = Field(2, ge=1, le=1 << 20)
    """S for interleaved."""
    refine_steps: int = Field(1, ge=0, le=1000)
    """K for multi_refine."""
    chunk_size: int = Field(64, ge=1, le=1 << 20)
    """C for chunked."""
    detach: bool = False
    """Cut gradients through the buffer read by later passes."""
    refresh_kv: bool = False
    """interleaved: recompute not-yet-visited K/V rows after each subset pass."""
    loss_weights: list[float] | None = None
    """Weights over passes (init pass first); None = plain mean."""

    @field_validator("loss_weights")
    @classmethod
    def _check_weights(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (any(w < 0 for w in value) or not sum(value) > 0):
            raise ValueError(f"loss_weights={value} must be >= 0 with a positive sum")
        return value

    def to_config(self) -> StrategyConfig:
        """Build the `lrt.StrategyConfig`."""
        from lrt.config import StrategyConfig

        data = self.model_dump()
        if data["loss_weights"] is not None:
            data["loss_weights"] = tuple(data["loss_weights"])
        return StrategyConfig(**data)


_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_VARIANT_SECTIONS: dict[str, type[_Section]] = {
    "model": ModelSettings,
    "strategy": StrategySettings,
}
_VARIANT_TRAIN_KEYS = ("max_steps", "tokens_per_param")
"""The `train.*` keys a variant may override (its budget: e.g. a baseline trained at ~2x the
tokens, the LRT's effective compute); every other train key is shared by all variants."""


def _variant_keys() -> list[str]:
    keys = [f"{s}.{f}" for s, cls in _VARIANT_SECTIONS.items() for f in cls.model_fields]
    return keys + [f"train.{f}" for f in _VARIANT_TRAIN_KEYS]


def _flatten_overrides(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"pathway": "shared"}} and {"model.pathway": "shared"} -> {"model.pathway": ...}."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, Mapping) and (dotted in _VARIANT_SECTIONS or dotted == "train"):
            out.update(_flatten_overrides(item, prefix=f"{dotted}."))
        else:
            out[dotted] = item
    return out


def _check_variant_key(key: str) -> None:
    valid = _variant_keys()
    if key not in valid:
        raise ValueError(_unknown_key_message(key, valid, "a variant override"))


class TrainSettings(_Section):
    """Training loop (stage `train`, once per variant).

    The budget: `max_steps` when set; otherwise `tokens_per_param` x (model parameters) /
    `total_batch_tokens` steps. Set `max_steps: null` to use the tokens-per-parameter rule (the
    paper trains at 10 tokens/param; LRT is also compared with the baseline at ~2x, see
    DESIGN.md §4).
    """

    variants: dict[str, dict[str, Any]] = {
        "baseline": {"model.pathway": "none", "strategy.name": "none"},
        "lrt": {"model.pathway": "shared", "strategy.name": "interleaved"},
    }
    """Runs to train and compare: name -> overrides of `model.*` / `strategy.*` and of the
    budget `train.max_steps` / `train.tokens_per_param` (dotted keys, or nested {model: {...}}).
    Each variant trains into `{out_dir}/{name}`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available, else cpu."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Autocast dtype; auto = bfloat16 on cuda, float32 on cpu."""
    compile: bool = False
    """torch.compile the model."""
    total_batch_tokens: int = Field(4096, ge=1, le=1 << 34)
    """Tokens per optimizer step (gradient accumulation fills it)."""
    device_batch_size: int = Field(16, ge=1, le=1 << 20)
    """Sequences per forward/backward micro-batch."""
    max_steps: int | None = Field(150, ge=1, le=1 << 40)
    """Optimizer steps; None = derive from tokens_per_param."""
    tokens_per_param: float | None = Field(None, gt=0, le=1e6)
    """Training tokens per model parameter, used when max_steps is None."""
    matrix_lr: float = Field(0.02, ge=0, le=MAX_LR)
    """Learning rate of matrix parameters (Muon), at reference_batch_tokens."""
    embedding_lr: float = Field(0.3, ge=0, le=MAX_LR)
    """Learning rate of the token embedding and value embeddings (AdamW, x (n_embd/768)^-0.5),
    at reference_batch_tokens."""
    unembedding_lr: float = Field(0.004, ge=0, le=MAX_LR)
    """Learning rate of the LM head (AdamW, x (n_embd/768)^-0.5), at reference_batch_tokens."""
    scalar_lr: float = Field(0.5, ge=0, le=MAX_LR)
    """Learning rate of scalars and gates (lambdas, gamma, gate weights), at
    reference_batch_tokens."""
    weight_decay: float = Field(0.2, ge=0, le=100)
    """Muon weight decay at depth weight_decay_reference_depth (cautious_wd, scaled by
    weight_decay_reference_depth, scheduled by schedule_weight_decay)."""
    muon_variant: Literal["polar_express", "newton_schulz"] = "polar_express"
    """Muon's orthogonalisation: nanochat's Polar Express or the previous quintic
    Newton-Schulz."""
    variance_reduction: bool = True
    """NorMuon-style factored second moment on Muon's updates."""
    cautious_wd: bool = True
    """Decay only weights whose Muon update shares their sign."""
    muon_beta2: float = Field(0.95, ge=0, lt=1)
    """EMA coefficient of the variance-reduction second moment."""
    reference_batch_tokens: int | None = Field(2**19, ge=1)
    """Every lr x sqrt(total_batch_tokens / this) (nanochat tunes at 2^19); null = no scaling
    (tiny demos)."""
    weight_decay_reference_depth: int | None = Field(12, ge=1)
    """Muon weight decay = weight_decay x (this/depth)^2; null = as given."""
    schedule_weight_decay: bool = True
    """Muon weight decay linear to 0 over training."""
    grad_clip: float = Field(0.0, ge=0, le=1e6)
    """Global gradient-norm clip; 0 disables it (nanochat clips nothing)."""
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    """Fraction of steps with linear LR warm-up."""
    warmdown_ratio: float = Field(0.5, ge=0, le=1)
    """Fraction of final steps with linear LR decay."""
    final_lr_frac: float = Field(0.0, ge=0, le=1)
    """LR at the end of warm-down, as a fraction of the peak."""
    loader_mode: Literal["bestfit", "contiguous"] = "contiguous"
    """Batch windows: contiguous windows (every token is trained on), or BOS-aligned best-fit
    packing (nanochat; every row starts at a document start, but documents longer than seq_len
    are cropped, so on corpora of long files such as books or source files it sees only their
    beginnings and overfits them)."""
    log_every: int = Field(10, ge=1)
    """Steps between training-log rows (train_log.csv, MLflow)."""
    eval_every: int = Field(50, ge=0)
    """Steps between validation-loss checks; 0 = only at the end."""
    eval_tokens: int = Field(32768, ge=1, le=1 << 40)
    """Validation tokens per check."""
    checkpoint_every: int = Field(0, ge=0)
    """Steps between resumable checkpoints; 0 = only the final one."""
    seed: int = 42
    """Seed of model init, data order and dropout-free RNG state."""
    nonfinite_skips: int = Field(0, ge=0, le=10_000)
    """Optimizer steps with a non-finite loss or gradient that may be skipped (not applied,
    counted in train_metrics.json) before the run stops with an error; 0 = stop at the first.
    The run never writes a checkpoint or model.pt with non-finite weights."""
    max_memory_gb: float | None = Field(None, gt=0, le=1 << 20)
    """Memory a run may use on its device, in GiB; None = the device's total memory (CPU:
    physical RAM). A model whose estimated training memory (weights, gradients, optimizer
    state, activations) exceeds it is refused before anything is allocated."""
    nproc_per_node: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"
    """Training processes per node: auto = every visible CUDA GPU (1 without CUDA or with
    device cpu). Above 1 the train stage (and `lrt-pipeline train`) re-launches itself under
    `torchrun --standalone`, so `dvc repro` uses every GPU; on CPU it starts gloo processes.
    Multi-node: start torchrun yourself (docs/TRAINING.md)."""
    allow_mismatch: bool = False
    """Evaluate, resume or sample a model with a tokenizer or shard set other than the ones
    it was trained on (both recorded in model.pt and its checkpoints); false = refused."""
    out_dir: str = "runs"
    """Output root: `{out_dir}/{variant}/model.pt, metrics.json, train_log.csv`."""

    @field_validator("variants", mode="before")
    @classmethod
    def _normalise_variants(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, dict[str, Any]] = {}
        for name, overrides in value.items():
            name = str(name)
            if not _VARIANT_NAME.match(name):
                raise ValueError(f"variant name {name!r} must match {_VARIANT_NAME.pattern}")
            if overrides is None:
                overrides = {}
            if not isinstance(overrides, Mapping):
                raise ValueError(
                    f"variant {name!r}: overrides must be a mapping, got {overrides!r}"
                )
            flat = _flatten_overrides(overrides)
            for key in flat:
                _check_variant_key(key)
            out[name] = flat
        return out

    @model_validator(mode="after")
    def _check_budget(self) -> TrainSettings:
        if not self.variants:
            raise ValueError("train.variants is empty: name at least one variant")
        if self.max_steps is None and self.tokens_per_param is None:
            raise ValueError(
                "set train.max_steps or train.tokens_per_param (one decides the budget)"
            )
        return self


class EvalSettings(_Section):
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


class ReportSettings(_Section):
    """Report (stage `report`)."""

    out_dir: str = "reports"
    """Output folder: report.md, report.html, figures."""


class TrackingSettings(_Section):
    """MLflow tracking."""

    enabled: bool = True
    """Log to MLflow; false makes every tracking call a no-op."""
    uri: str = "sqlite:///mlruns.db"
    """Tracking URI; a relative sqlite path is resolved against the project folder."""
    artifact_location: str = "mlartifacts"
    """Artifact root for newly created experiments (relative to the project folder)."""
    experiment: str = "lrt"
    """Experiment name."""


SECTIONS: dict[str, type[_Section]] = {
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


def _unknown_key_message(key: str, valid: Iterable[str], what: str) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} (expected {what}).{hint} Valid: {', '.join(valid)}"
