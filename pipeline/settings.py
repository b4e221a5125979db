"""Typed settings for every pipeline component, and where each value came from.

One pydantic model per component (`extra="forbid"`, a docstring per field), composed into
`Settings`. Values are layered, highest first:

    --set a.b=c  >  environment LRT_A__B  >  --config FILE (default params.yaml)  >  defaults

`load_settings` applies the layers itself so that it can record the source of every value
(`lrt-pipeline config show` prints it), give a useful message for an unknown key (with a close
match), and resolve relative paths against the project folder (the folder of the config file).
`--set` and environment values are parsed as YAML scalars (`1e-3`, `true`, `null`, `[1, 2]`).

Example:
    >>> s = load_settings(None, ["train.max_steps=5", "model.depth=2"])
    >>> s.train.max_steps, s.model.depth, s.provenance["model.depth"]
    (5, 2, '--set')
    >>> model, strategy = variant_settings(s, "lrt")
    >>> model.pathway, strategy.name
    ('shared', 'interleaved')

Paths: components should use the path fields as given. `load_settings` makes them absolute
(relative to the project folder); `Settings()` built directly leaves them relative to the current
directory, which is the project folder whenever DVC or the CLI runs a stage.
"""

from __future__ import annotations

import contextvars
import difflib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:
    from lrt.config import LRTConfig, StrategyConfig

DEFAULT_CONFIG = "params.yaml"
ENV_PREFIX = "LRT_"
ENV_DELIMITER = "__"
FINEWEB_EDU_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"

__all__ = [
    "DEFAULT_CONFIG",
    "DataSettings",
    "EvalSettings",
    "ModelSettings",
    "ReportSettings",
    "Settings",
    "SettingsError",
    "StrategySettings",
    "TokenizerSettings",
    "TrackingSettings",
    "TrainSettings",
    "load_settings",
    "variant_settings",
]


class SettingsError(ValueError):
    """A user-facing configuration mistake: unknown key, bad value, unreadable config file."""


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True
    )


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class DataSettings(_Section):
    """Where raw documents come from (stage `download`)."""

    source: Literal["builtin", "fineweb-edu", "files"] = "builtin"
    """`builtin`: the running Python's standard-library sources (offline, always present);
    `fineweb-edu`: parquet shards of karpathy/fineweb-edu-100b-shuffle over HTTPS;
    `files`: the local files listed in `paths`."""
    paths: list[str] = []
    """Local .txt / .jsonl / .jsonl.zst / .parquet files or folders (source `files` only)."""
    base_url: str = FINEWEB_EDU_URL
    """Base URL of the fineweb-edu parquet shards (`{base_url}/shard_00000.parquet`, ...)."""
    num_shards: int = Field(1, ge=1)
    """fineweb-edu: number of training shards to fetch; one more (the last) is validation."""
    max_bytes: int | None = Field(4_000_000, ge=1)
    """Cap on raw corpus bytes for `builtin` and `files` (None = no cap)."""
    raw_dir: str = "data/raw"
    """Output folder: documents plus manifest.json."""
    retries: int = Field(4, ge=0)
    """fineweb-edu: download retries per shard (exponential backoff)."""
    timeout_s: float = Field(60.0, gt=0)
    """fineweb-edu: socket timeout in seconds."""

    @model_validator(mode="after")
    def _files_need_paths(self) -> DataSettings:
        if self.source == "files" and not self.paths:
            raise ValueError("data.source=files needs data.paths (a list of files or folders)")
        return self


class TokenizerSettings(_Section):
    """Byte-level BPE training and shard packing (stage `tokenize`)."""

    vocab_size: int = Field(2048, ge=266)
    """Vocabulary size including special tokens (256 bytes + 9 specials at least). The paper
    uses 32768/65536; the CPU demo default is small because the LM head dominates tiny models."""
    pretrained: str | None = None
    """Use this saved tokenizer (project format) instead of training one."""
    train_max_bytes: int = Field(2_000_000, ge=1)
    """Raw text bytes used to train the BPE (the first documents, in corpus order)."""
    shard_tokens: int = Field(1 << 24, ge=1024)
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

    depth: int = Field(4, ge=1)
    """Number of transformer blocks (the one scaling dial)."""
    n_embd: int | None = Field(None, ge=8)
    """Model width; None = nanochat rule 64*depth rounded up to a multiple of 128."""
    n_head: int | None = Field(None, ge=1)
    """Attention heads; None = n_embd // 128."""
    seq_len: int = Field(256, ge=2)
    """Training context length in tokens."""
    pathway: Literal["none", "shared", "layerwise"] = "none"
    """Latent recurrent pathway: none (baseline), shared or layerwise memory K/V projections."""
    source_layer: int = -1
    """Block whose output at token t-1 is the memory of token t; negative counts from the end."""
    residual_injection: bool = True
    """Add gamma_l * m_t to the residual stream before block l."""
    kv_projection: bool = True
    """Mix projected memory into each layer's keys and values (gated per head)."""
    gamma_init: float = 0.1
    """Initial residual-injection scale."""
    identity_init: bool = False
    """Zero-initialise the pathway so LRT equals the baseline at step 0."""

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSettings:
        if self.n_embd is not None and self.n_head is not None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not -self.depth <= self.source_layer < self.depth:
            raise ValueError(
                f"source_layer={self.source_layer} is outside [-{self.depth}, {self.depth})"
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
    subsets: int = Field(2, ge=1)
    """S for interleaved."""
    refine_steps: int = Field(1, ge=0)
    """K for multi_refine."""
    chunk_size: int = Field(64, ge=1)
    """C for chunked."""
    detach: bool = False
    """Cut gradients through the buffer read by later passes."""
    refresh_kv: bool = False
    """interleaved: recompute not-yet-visited K/V rows after each subset pass."""
    loss_weights: list[float] | None = None
    """Weights over passes (init pass first); None = plain mean."""

    def to_config(self) -> StrategyConfig:
        """Build the `lrt.StrategyConfig`."""
        from lrt.config import StrategyConfig

        data = self.model_dump()
        if data["loss_weights"] is not None:
            data["loss_weights"] = tuple(data["loss_weights"])
        return StrategyConfig(**data)


_EXPONENT = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_VARIANT_SECTIONS: dict[str, type[_Section]] = {
    "model": ModelSettings,
    "strategy": StrategySettings,
}


def _flatten_overrides(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"pathway": "shared"}} and {"model.pathway": "shared"} -> {"model.pathway": ...}."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, Mapping) and dotted in _VARIANT_SECTIONS:
            out.update(_flatten_overrides(item, prefix=f"{dotted}."))
        else:
            out[dotted] = item
    return out


def _check_variant_key(key: str) -> None:
    section, _, field = key.partition(".")
    valid = [f"{s}.{f}" for s, cls in _VARIANT_SECTIONS.items() for f in cls.model_fields]
    if section not in _VARIANT_SECTIONS or field not in _VARIANT_SECTIONS[section].model_fields:
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
    """Runs to train and compare: name -> overrides of `model.*` / `strategy.*` (dotted keys,
    or nested {model: {...}}). Each variant trains into `{out_dir}/{name}`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available, else cpu."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Autocast dtype; auto = bfloat16 on cuda, float32 on cpu."""
    compile: bool = False
    """torch.compile the model."""
    total_batch_tokens: int = Field(4096, ge=1)
    """Tokens per optimizer step (gradient accumulation fills it)."""
    device_batch_size: int = Field(16, ge=1)
    """Sequences per forward/backward micro-batch."""
    max_steps: int | None = Field(150, ge=1)
    """Optimizer steps; None = derive from tokens_per_param."""
    tokens_per_param: float | None = Field(None, gt=0)
    """Training tokens per model parameter, used when max_steps is None."""
    matrix_lr: float = Field(0.02, ge=0)
    """Learning rate of matrix parameters (Muon in nanochat; AdamW fallback)."""
    embedding_lr: float = Field(0.2, ge=0)
    """Learning rate of the token embedding."""
    unembedding_lr: float = Field(0.004, ge=0)
    """Learning rate of the LM head."""
    scalar_lr: float = Field(0.02, ge=0)
    """Learning rate of scalars and gates (gamma, per-head gate weights)."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay for matrix parameters."""
    grad_clip: float = Field(1.0, ge=0)
    """Global gradient-norm clip; 0 disables it."""
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    """Fraction of steps with linear LR warm-up."""
    warmdown_ratio: float = Field(0.2, ge=0, le=1)
    """Fraction of final steps with linear LR decay."""
    final_lr_frac: float = Field(0.0, ge=0, le=1)
    """LR at the end of warm-down, as a fraction of the peak."""
    loader_mode: Literal["bestfit", "contiguous"] = "bestfit"
    """Batch windows: BOS-aligned best-fit packing or contiguous windows."""
    log_every: int = Field(10, ge=1)
    """Steps between training-log rows (train_log.csv, MLflow)."""
    eval_every: int = Field(50, ge=0)
    """Steps between validation-loss checks; 0 = only at the end."""
    eval_tokens: int = Field(32768, ge=1)
    """Validation tokens per check."""
    checkpoint_every: int = Field(0, ge=0)
    """Steps between resumable checkpoints; 0 = only the final one."""
    seed: int = 42
    """Seed of model init, data order and dropout-free RNG state."""
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
    sequential_max_tokens: int = Field(8192, ge=1)
    """Cap on tokens scored in sequential mode (token-by-token is slow on CPU)."""
    bucket_size: int = Field(32, ge=1)
    """Positions per bucket in the per-position BPB table."""
    core_dir: str = "../shared/data/core"
    """Folder of CORE task .jsonl files; missing = CORE skipped with a message."""
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
    temperature: float = Field(0.0, ge=0)
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
    "tokenizer.pretrained",
    "tokenizer.out_dir",
    "train.out_dir",
    "eval.core_dir",
    "report.out_dir",
    "tracking.artifact_location",
)
"""Dotted keys holding filesystem paths, resolved against the project folder by load_settings."""


# ---------------------------------------------------------------------------------------------
# Composite settings
# ---------------------------------------------------------------------------------------------

# Set while load_settings builds a Settings: it has merged env and file itself, so pydantic-settings
# must not read them again (it would parse env values as JSON, not YAML).
_EXPLICIT = contextvars.ContextVar("_EXPLICIT", default=False)


class Settings(BaseSettings):
    """All pipeline settings. `Settings()` reads defaults, params.yaml in the current folder and
    LRT_* environment variables; prefer `load_settings`, which also takes `--set` overrides and
    records provenance."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    data: DataSettings = DataSettings()
    """Raw data source (download)."""
    tokenizer: TokenizerSettings = TokenizerSettings()
    """BPE and shards (tokenize)."""
    model: ModelSettings = ModelSettings()
    """Architecture shared by all variants (variants override)."""
    strategy: StrategySettings = StrategySettings()
    """Training strategy shared by all variants (variants override)."""
    train: TrainSettings = TrainSettings()
    """Training loop and the variants to compare."""
    eval: EvalSettings = EvalSettings()
    """Evaluation."""
    report: ReportSettings = ReportSettings()
    """Report."""
    tracking: TrackingSettings = TrackingSettings()
    """MLflow."""

    _provenance: dict[str, str] = PrivateAttr(default_factory=dict)
    _project_dir: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if _EXPLICIT.get():
            return (init_settings,)
        from pydantic_settings import YamlConfigSettingsSource

        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=DEFAULT_CONFIG),
        )

    @model_validator(mode="after")
    def _check_variants(self) -> Settings:
        for name in self.train.variants:
            model, _ = variant_settings(self, name)
            micro = self.train.device_batch_size * model.seq_len
            if self.train.total_batch_tokens % micro:
                raise ValueError(
                    f"train.total_batch_tokens={self.train.total_batch_tokens} must be a multiple of "
                    f"train.device_batch_size * model.seq_len = {micro} (variant {name!r})"
                )
        return self

    @property
    def provenance(self) -> dict[str, str]:
        """Dotted key -> where its value came from ("default", the config file, "env LRT_...",
        "--set"). Empty for settings not built by `load_settings`."""
        return dict(self._provenance)

    @property
    def project_dir(self) -> Path:
        """Folder that relative paths were resolved against (cwd if not built by load_settings)."""
        return self._project_dir if self._project_dir is not None else Path.cwd()

    def flat(self) -> dict[str, Any]:
        """Every value under its dotted key (variants as `train.variants.NAME.model.pathway`)."""
        return dict(_flatten(self.model_dump(mode="json")))

    def section(self, name: str) -> _Section:
        """One section by name (`settings.section("train")`)."""
        if name not in SECTIONS:
            raise SettingsError(_unknown_key_message(name, list(SECTIONS), "a section"))
        return getattr(self, name)


def variant_settings(settings: Settings, name: str) -> tuple[ModelSettings, StrategySettings]:
    """The model and strategy of one variant: the shared sections with its overrides applied.

    Raises:
        SettingsError: `name` is not in `train.variants`, or an override is invalid.
    """
    variants = settings.train.variants
    if name not in variants:
        raise SettingsError(f"unknown variant {name!r}; train.variants has {sorted(variants)}")
    updates: dict[str, dict[str, Any]] = {"model": {}, "strategy": {}}
    for key, value in variants[name].items():
        section, _, field = key.partition(".")
        updates[section][field] = value
    try:
        model = ModelSettings.model_validate({**settings.model.model_dump(), **updates["model"]})
    except ValidationError as exc:
        raise SettingsError(f"variant {name!r}: {_format_errors(exc, prefix='model.')}") from None
    try:
        strategy = StrategySettings.model_validate(
            {**settings.strategy.model_dump(), **updates["strategy"]}
        )
    except ValidationError as exc:
        raise SettingsError(
            f"variant {name!r}: {_format_errors(exc, prefix='strategy.')}"
        ) from None
    return model, strategy


# ---------------------------------------------------------------------------------------------
# Layered loading with provenance
# ---------------------------------------------------------------------------------------------


def load_settings(
    config_path: str | Path | None = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    project_dir: str | Path | None = None,
) -> Settings:
    """Build settings from defaults < config file < environment < `overrides`.

    Args:
        config_path: YAML file (DVC's params.yaml). The default `params.yaml` may be absent;
            an explicitly named other file must exist. None = no file.
        overrides: `section.key=value` strings (values are YAML scalars).
        env: Environment to read LRT_* variables from (default `os.environ`).
        project_dir: Folder for relative paths (default: the config file's folder, else cwd).

    Raises:
        SettingsError: unknown key (with the valid keys and a close match), bad value, or an
            unreadable config file.

    Example:
        >>> load_settings(None, ["data.max_bytes=1e6"]).data.max_bytes
        1000000
    """
    env = os.environ if env is None else env
    tree: dict[str, Any] = {name: cls().model_dump() for name, cls in SECTIONS.items()}
    provenance = {key: "default" for key, _ in _flatten(tree)}

    config_file: Path | None = None
    if config_path is not None:
        config_file = Path(config_path)
        if config_file.exists():
            _apply_mapping(
                tree, provenance, _read_yaml(config_file), str(config_path), replace_variants=True
            )
        elif Path(config_path).name != DEFAULT_CONFIG or Path(config_path).parent != Path():
            raise SettingsError(f"config file {config_path} does not exist")
        else:
            config_file = None

    for var, raw in sorted(env.items()):
        parts = _env_path(var)
        if parts is not None:
            _apply(tree, provenance, parts, _parse_scalar(raw), f"env {var}")

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects KEY=VALUE (e.g. train.max_steps=100), got {item!r}")
        _apply(tree, provenance, key.strip().split("."), _parse_scalar(raw), "--set")

    if project_dir is not None:
        root = Path(project_dir).resolve()
    elif config_file is not None:
        root = config_file.resolve().parent
    else:
        root = Path.cwd().resolve()
    _resolve_paths(tree, root)

    token = _EXPLICIT.set(True)
    try:
        settings = Settings(**tree)
    except ValidationError as exc:
        raise SettingsError(
            "invalid settings: " + _format_errors(exc, provenance=provenance)
        ) from None
    except ValueError as exc:  # a variant_settings error raised inside a validator
        raise SettingsError(str(exc)) from None
    finally:
        _EXPLICIT.reset(token)
    settings._provenance = {key: provenance.get(key, "default") for key in settings.flat()}
    settings._project_dir = root
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"config file {path} must hold a mapping of sections, got {type(data).__name__}"
        )
    return data


def _parse_scalar(raw: str) -> Any:
    """`--set`/environment values are YAML scalars; a string YAML cannot parse stays a string."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and _EXPONENT.match(value):
        # PyYAML (YAML 1.1) reads `1e-3` and `1e6` as strings; users mean numbers.
        number = float(value)
        return int(number) if number.is_integer() and "." not in value else number
    return raw if value is None and raw.strip() not in ("", "null", "~", "None") else value


def _env_path(var: str) -> list[str] | None:
    """LRT_TRAIN__MAX_STEPS -> ["train", "max_steps"]; None for LRT_* variables outside the schema
    (e.g. LRT_MLFLOW_PARENT_RUN_ID)."""
    if not var.upper().startswith(ENV_PREFIX):
        return None
    parts = var[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
    if len(parts) < 2 or parts[0] not in SECTIONS:
        return None
    return parts


def _schema_at(parts: Sequence[str]) -> tuple[str, Any]:
    """Classify a dotted path: ("model", cls) for a section or nested model, ("variants", None)
    for train.variants, ("variant", None) for train.variants.NAME, ("leaf", None) otherwise.
    Raises SettingsError for unknown keys."""
    if not parts or parts[0] not in SECTIONS:
        hint = _unknown_key_message(parts[0] if parts else "", list(SECTIONS), "a section")
        raise SettingsError(f"{'.'.join(parts)}: {hint}" if len(parts) > 1 else hint)
    cls: type[BaseModel] = SECTIONS[parts[0]]
    if len(parts) == 1:
        return "model", cls
    if parts[0] == "train" and parts[1] == "variants":
        if len(parts) == 2:
            return "variants", None
        if len(parts) == 3:
            return "variant", None
        try:
            _check_variant_key(".".join(parts[3:]))
        except ValueError as exc:
            raise SettingsError(f"{'.'.join(parts)}: {exc}") from None
        return "leaf", None
    field = parts[1]
    if field not in cls.model_fields:
        valid = [f"{parts[0]}.{name}" for name in cls.model_fields]
        raise SettingsError(_unknown_key_message(".".join(parts[:2]), valid, "a setting"))
    if len(parts) > 2:
        raise SettingsError(f"{'.'.join(parts)}: {parts[0]}.{field} has no sub-keys")
    return "leaf", None


def _apply(
    tree: dict, provenance: dict[str, str], parts: list[str], value: Any, source: str
) -> None:
    kind, _ = _schema_at(parts)
    dotted = ".".join(parts)
    if kind == "model":
        if not isinstance(value, Mapping):
            raise SettingsError(
                f"{dotted} is a section; set its keys ({dotted}.KEY=...) or give a mapping"
            )
        _apply_mapping(tree, provenance, {parts[0]: value}, source, replace_variants=True)
    elif kind in ("variants", "variant"):
        if value is not None and not isinstance(value, Mapping):
            raise SettingsError(f"{dotted} must be a mapping, got {value!r}")
        variants = tree["train"]["variants"]
        if kind == "variants":
            variants.clear()
            new = dict(value or {})
        else:
            variants.pop(parts[2], None)
            new = {parts[2]: value or {}}
        for key in [k for k in provenance if k == dotted or k.startswith(dotted + ".")]:
            del provenance[key]
        for name, overrides in new.items():
            if not isinstance(overrides, Mapping):
                raise SettingsError(f"train.variants.{name} must be a mapping, got {overrides!r}")
            flat = _flatten_overrides(overrides)
            variants[str(name)] = {}
            for key, item in flat.items():
                _apply(
                    tree,
                    provenance,
                    ["train", "variants", str(name), *key.split(".")],
                    item,
                    source,
                )
            provenance.setdefault(f"train.variants.{name}", source)
    elif parts[:2] == ["train", "variants"]:
        tree["train"]["variants"].setdefault(parts[2], {})[".".join(parts[3:])] = value
        provenance[dotted] = source
    else:
        tree[parts[0]][parts[1]] = value
        provenance[dotted] = source


def _apply_mapping(
    tree: dict, provenance: dict[str, str], data: Mapping, source: str, *, replace_variants: bool
) -> None:
    for section, values in data.items():
        _schema_at([str(section)])
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise SettingsError(f"{source}: section {section!r} must be a mapping, got {values!r}")
        for key, value in values.items():
            parts = [str(section), str(key)]
            kind, _ = _schema_at(parts)
            if kind == "variants" and not replace_variants:
                for name, overrides in (value or {}).items():
                    _apply(tree, provenance, [*parts, str(name)], overrides, source)
            else:
                _apply(tree, provenance, parts, value, source)


def _resolve_paths(tree: dict, root: Path) -> None:
    def resolve(value: Any) -> Any:
        if value is None or value == "":
            return value
        path = Path(os.path.expanduser(str(value)))
        return str(path if path.is_absolute() else (root / path).resolve())

    for key in PATH_FIELDS:
        section, field = key.split(".")
        value = tree[section][field]
        tree[section][field] = (
            [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
        )
    uri = str(tree["tracking"]["uri"])
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        tree["tracking"]["uri"] = "sqlite:///" + str((root / uri[len("sqlite:///") :]).resolve())


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and (not prefix or dotted.startswith("train.variants")):
            yield from _flatten(value, prefix=f"{dotted}.")
        else:
            yield dotted, value


def _unknown_key_message(key: str, valid: Iterable[str], what: str) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} (expected {what}).{hint} Valid: {', '.join(valid)}"


def _format_errors(
    exc: ValidationError, *, prefix: str = "", provenance: Mapping[str, str] | None = None
) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # a cross-field check: its message names the keys
            lines.append(msg)
            continue
        loc = prefix + loc
        where = f" (from {provenance[loc]})" if provenance and loc in provenance else ""
        value = "" if isinstance(err.get("input"), Mapping) else f" = {err['input']!r}"
        lines.append(f"{loc}{value}{where}: {msg}")
    return "; ".join(lines)
