"""The training loop's section (`train` of params.yaml) and its variants: `train.variants` names
the runs to compare, each a set of `model.*` / `strategy.*` overrides and its own budget
(`train.max_steps` / `train.tokens_per_param`); the helpers here flatten and check them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import MAX_LR, SettingsSection, unknown_key_message
from pipeline.config.model_sections import ModelSettings, StrategySettings

_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_VARIANT_SECTIONS: dict[str, type[SettingsSection]] = {
    "model": ModelSettings,
    "strategy": StrategySettings,
}
_VARIANT_TRAIN_KEYS = ("max_steps", "tokens_per_param")
"""The `train.*` keys a variant may override (its budget: e.g. a baseline trained at ~2x the
tokens, the LRT's effective compute); every other train key is shared by all variants."""


def _variant_keys() -> list[str]:
    keys = [f"{s}.{f}" for s, cls in _VARIANT_SECTIONS.items() for f in cls.model_fields]
    return keys + [f"train.{f}" for f in _VARIANT_TRAIN_KEYS]


def flatten_overrides(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"pathway": "shared"}} and {"model.pathway": "shared"} -> {"model.pathway": ...}."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, Mapping) and (dotted in _VARIANT_SECTIONS or dotted == "train"):
            out.update(flatten_overrides(item, prefix=f"{dotted}."))
        else:
            out[dotted] = item
    return out


def check_variant_key(key: str) -> None:
    valid = _variant_keys()
    if key not in valid:
        raise ValueError(unknown_key_message(key, valid, "a variant override"))


class TrainSettings(SettingsSection):
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
            flat = flatten_overrides(overrides)
            for key in flat:
                check_variant_key(key)
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
