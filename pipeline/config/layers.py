"""The layers of `load_settings` applied to a plain tree of section dicts, with provenance:
read params.yaml, parse `--set` / environment values as YAML scalars, map LRT_A__B variables
to keys, check every dotted key against the schema (`_schema_at`), apply values and variant
overrides (`apply_value`), resolve path fields against the project folder, and format pydantic's
errors with where each bad value came from. `pipeline.config.settings` builds `Settings` from
the result.

Example:
    >>> env_path("LRT_TRAIN__MAX_STEPS"), parse_scalar("1e-3")
    (['train', 'max_steps'], 0.001)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.base import unknown_key_message
from pipeline.config.sections import PATH_FIELDS, SECTIONS, SettingsError
from pipeline.config.train_sections import check_variant_key, flatten_overrides

ENV_PREFIX = "LRT_"
ENV_DELIMITER = "__"

_EXPONENT = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")


def read_yaml(path: Path) -> dict[str, Any]:
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


def parse_scalar(raw: str) -> Any:
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


def env_path(var: str) -> list[str] | None:
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
        hint = unknown_key_message(parts[0] if parts else "", list(SECTIONS), "a section")
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
            check_variant_key(".".join(parts[3:]))
        except ValueError as exc:
            raise SettingsError(f"{'.'.join(parts)}: {exc}") from None
        return "leaf", None
    field = parts[1]
    if field not in cls.model_fields:
        valid = [f"{parts[0]}.{name}" for name in cls.model_fields]
        raise SettingsError(unknown_key_message(".".join(parts[:2]), valid, "a setting"))
    if len(parts) > 2:
        raise SettingsError(f"{'.'.join(parts)}: {parts[0]}.{field} has no sub-keys")
    return "leaf", None


def apply_value(
    tree: dict, provenance: dict[str, str], parts: list[str], value: Any, source: str
) -> None:
    kind, _ = _schema_at(parts)
    dotted = ".".join(parts)
    if kind == "model":
        if not isinstance(value, Mapping):
            raise SettingsError(
                f"{dotted} is a section; set its keys ({dotted}.KEY=...) or give a mapping"
            )
        apply_mapping(tree, provenance, {parts[0]: value}, source, replace_variants=True)
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
            flat = flatten_overrides(overrides)
            variants[str(name)] = {}
            for key, item in flat.items():
                apply_value(
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


def apply_mapping(
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
                    apply_value(tree, provenance, [*parts, str(name)], overrides, source)
            else:
                apply_value(tree, provenance, parts, value, source)


def resolve_paths(tree: dict, root: Path) -> None:
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


def settings_items(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and (not prefix or dotted.startswith("train.variants")):
            yield from settings_items(value, prefix=f"{dotted}.")
        else:
            yield dotted, value


def format_errors(
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
        # `strategy.loss_weights.1` came from wherever `strategy.loss_weights` did.
        known = [k for k in (provenance or {}) if loc == k or loc.startswith(k + ".")]
        where = f" (from {provenance[max(known, key=len)]})" if provenance and known else ""
        value = "" if isinstance(err.get("input"), Mapping) else f" = {err['input']!r}"
        lines.append(f"{loc}{value}{where}: {msg}")
    return "; ".join(lines)
