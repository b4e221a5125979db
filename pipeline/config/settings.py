"""Typed settings for every pipeline component, and where each value came from.

One pydantic model per component (`pipeline/config/sections.py` and the modules it names:
`extra="forbid"`, a docstring per field), composed into `Settings`. Values are layered, highest
first:

    --set a.b=c  >  environment LRT_A__B  >  --config FILE (default params.yaml)  >  defaults

`load_settings` applies the layers itself (helpers in `pipeline/config/layers.py`) so that it can
record the source of every value (`lrt-pipeline config show` prints it), give a useful message
for an unknown key (with a close match), and resolve relative paths against the project folder
(the folder of the config file).
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
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.config.base import SettingsSection, unknown_key_message
from pipeline.config.layers import (
    ENV_DELIMITER,
    ENV_PREFIX,
    apply_mapping,
    apply_value,
    env_path,
    format_errors,
    parse_scalar,
    read_yaml,
    resolve_paths,
    settings_items,
)
from pipeline.config.model_sections import ModelSettings, StrategySettings
from pipeline.config.sections import (
    PATH_FIELDS,
    SECTIONS,
    DataSettings,
    EvalSettings,
    ReportSettings,
    SettingsError,
    TokenizerSettings,
    TrackingSettings,
)
from pipeline.config.train_sections import TrainSettings

DEFAULT_CONFIG = "params.yaml"

__all__ = [
    "DEFAULT_CONFIG",
    "PATH_FIELDS",
    "SECTIONS",
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
    "variant_train_settings",
]

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
            model, strategy = variant_settings(self, name)
            variant_train_settings(self, name)
            if strategy.name == "interleaved" and strategy.subsets > model.seq_len:
                raise ValueError(
                    f"variant {name!r}: strategy.subsets={strategy.subsets} is larger than "
                    f"model.seq_len={model.seq_len}; use at most seq_len subsets (S = seq_len is "
                    "already exact sequential training)"
                )
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
        return dict(settings_items(self.model_dump(mode="json")))

    def section(self, name: str) -> SettingsSection:
        """One section by name (`settings.section("train")`)."""
        if name not in SECTIONS:
            raise SettingsError(unknown_key_message(name, list(SECTIONS), "a section"))
        return getattr(self, name)


def variant_settings(settings: Settings, name: str) -> tuple[ModelSettings, StrategySettings]:
    """The model and strategy of one variant: the shared sections with its overrides applied.

    Raises:
        SettingsError: `name` is not in `train.variants`, or an override is invalid.
    """
    variants = settings.train.variants
    if name not in variants:
        raise SettingsError(f"unknown variant {name!r}; train.variants has {sorted(variants)}")
    updates: dict[str, dict[str, Any]] = {"model": {}, "strategy": {}, "train": {}}
    for key, value in variants[name].items():
        section, _, field = key.partition(".")
        updates[section][field] = value
    try:
        model = ModelSettings.model_validate({**settings.model.model_dump(), **updates["model"]})
    except ValidationError as exc:
        raise SettingsError(f"variant {name!r}: {format_errors(exc, prefix='model.')}") from None
    try:
        strategy = StrategySettings.model_validate(
            {**settings.strategy.model_dump(), **updates["strategy"]}
        )
    except ValidationError as exc:
        raise SettingsError(f"variant {name!r}: {format_errors(exc, prefix='strategy.')}") from None
    return model, strategy


def variant_train_settings(settings: Settings, name: str) -> TrainSettings:
    """`settings.train` with the variant's budget overrides (`train.max_steps`,
    `train.tokens_per_param`) applied; every other train key is shared by all variants.

    Example:
        >>> s = load_settings(None, ["train.variants={b2: {train: {max_steps: 9}}}"])
        >>> variant_train_settings(s, "b2").max_steps, s.train.max_steps
        (9, 150)

    Raises:
        SettingsError: `name` is not in `train.variants`, or the budget it gives is invalid.
    """
    variants = settings.train.variants
    if name not in variants:
        raise SettingsError(f"unknown variant {name!r}; train.variants has {sorted(variants)}")
    updates = {
        key.partition(".")[2]: value
        for key, value in variants[name].items()
        if key.startswith("train.")
    }
    if not updates:
        return settings.train
    try:
        return TrainSettings.model_validate({**settings.train.model_dump(), **updates})
    except ValidationError as exc:
        raise SettingsError(f"variant {name!r}: {format_errors(exc, prefix='train.')}") from None


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
    provenance = {key: "default" for key, _ in settings_items(tree)}

    config_file: Path | None = None
    if config_path is not None:
        config_file = Path(config_path)
        if config_file.exists():
            apply_mapping(
                tree, provenance, read_yaml(config_file), str(config_path), replace_variants=True
            )
        elif Path(config_path).name != DEFAULT_CONFIG or Path(config_path).parent != Path():
            raise SettingsError(f"config file {config_path} does not exist")
        else:
            config_file = None

    for var, raw in sorted(env.items()):
        parts = env_path(var)
        if parts is not None:
            apply_value(tree, provenance, parts, parse_scalar(raw), f"env {var}")

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects KEY=VALUE (e.g. train.max_steps=100), got {item!r}")
        apply_value(tree, provenance, key.strip().split("."), parse_scalar(raw), "--set")

    if project_dir is not None:
        root = Path(project_dir).resolve()
    elif config_file is not None:
        root = config_file.resolve().parent
    else:
        root = Path.cwd().resolve()
    resolve_paths(tree, root)

    token = _EXPLICIT.set(True)
    try:
        settings = Settings(**tree)
    except ValidationError as exc:
        raise SettingsError(
            "invalid settings: " + format_errors(exc, provenance=provenance)
        ) from None
    except ValueError as exc:  # a variant_settings error raised inside a validator
        raise SettingsError(str(exc)) from None
    finally:
        _EXPLICIT.reset(token)
    settings._provenance = {key: provenance.get(key, "default") for key in settings.flat()}
    settings._project_dir = root
    return settings
