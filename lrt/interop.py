"""Checkpoint interop with nanochat and the authors' LRT fork (a nanochat fork).

`from_nanochat(state_dict, config)` builds an `LRT` from a nanochat `GPT` state dict (nanochat's
key names, padded vocab rows included, an optional `_orig_mod.` prefix from torch.compile) and
its `GPTConfig` fields as a mapping; `to_nanochat(model)` is the inverse. A baseline maps to
`pathway="none"`, the fork's `use_interleaved=True` model to `pathway="official"`. The same
weights give the same outputs (float32, within 1e-4; checked side by side against both
codebases): `logits(idx, mode="init")` == `GPT.forward(idx)` (for the fork's LRT,
`GPT.forward(idx, h_final_prev=zeros)`), `mode="sequential"` == the fork's token-by-token
recurrence, `forward_train(idx, targets, nanochat_strategy(config)).loss` ==
`forward_interleaved_train(idx, targets)["loss"]`.

Name map (nanochat -> ours; `{i}` a layer):

    transformer.wte.weight                       wte.weight
    transformer.h.{i}.attn.{c_q,c_k,c_v,c_proj}  blocks.{i}.attn.{...}
    transformer.h.{i}.attn.ve_gate               blocks.{i}.attn.ve_gate
    transformer.h.{i}.attn.triple_gate           blocks.{i}.attn.triple_gate
    transformer.h.{i}.mlp.{c_fc,c_proj}          blocks.{i}.mlp.{...}
    lm_head.weight, resid_lambdas, x0_lambdas    same
    value_embeds.{i}.weight                      value_embeds.{i}.weight
    interleaved_lambdas                          pathway.gamma
    interleaved_key_projections.{i}.W_v.weight   pathway.k_proj.{i}.weight
    interleaved_projections.{i}.W_v.weight       pathway.v_proj.{i}.weight
    interleaved_init_value_embeds.{i}.weight     pathway.init_value_embeds.{i}.weight

    >>> model = LRT(LRTConfig(vocab_size=100, depth=2, seq_len=32, n_embd=64, n_head=2))
    >>> model.init_weights()
    >>> sd, cfg = to_nanochat(model)
    >>> cfg["n_layer"], sd["transformer.wte.weight"].shape[0]   # vocab padded to 128 rows
    (2, 128)
    >>> from_nanochat(sd, cfg).config == model.config
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lrt.config import LRTConfig, StrategyConfig
from lrt.model import LRT

# The fork's GPTConfig fields and defaults (nanochat's, plus the fork's toggles). Missing keys
# take these, as nanochat's GPTConfig(**kwargs) does.
GPT_CONFIG_DEFAULTS: dict[str, Any] = {
    "sequence_len": 2048,
    "vocab_size": 32768,
    "n_layer": 12,
    "n_head": 6,
    "n_kv_head": 6,
    "n_embd": 768,
    "window_pattern": "SSSL",
    "use_value_embeds": True,
    "ve_every_layer": False,
    "use_x0_residual": True,
    "use_resid_lambdas": True,
    "ve_gate_channels": 32,
    "use_interleaved": False,
    "interleaved_num_passes": 2,
    "interleaved_kv_refresh": False,
}
PAD_VOCAB_SIZE_TO = 64  # nanochat's GPT(config, pad_vocab_size_to=64)

_PREFIX = "_orig_mod."
# One table of (nanochat name, our name) templates; both directions are derived from it.
# Placeholders: {i} a layer/projection index, {part} attn|mlp, {proj} a projection's name.
_NAMES: list[tuple[str, str]] = [
    ("transformer.wte.weight", "wte.weight"),
    ("transformer.h.{i}.{part}.{proj}.weight", "blocks.{i}.{part}.{proj}.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("resid_lambdas", "resid_lambdas"),
    ("x0_lambdas", "x0_lambdas"),
    ("value_embeds.{i}.weight", "value_embeds.{i}.weight"),
    ("interleaved_lambdas", "pathway.gamma"),
    ("interleaved_key_projections.{i}.W_v.weight", "pathway.k_proj.{i}.weight"),
    ("interleaved_projections.{i}.W_v.weight", "pathway.v_proj.{i}.weight"),
    ("interleaved_init_value_embeds.{i}.weight", "pathway.init_value_embeds.{i}.weight"),
]
_FIELDS = {"i": r"\d+", "part": "attn|mlp", "proj": r"\w+"}


def _pattern(template: str) -> re.Pattern[str]:
    """`transformer.h.{i}.x` -> a regex with a named group per placeholder."""
    out = re.escape(template)
    for name, body in _FIELDS.items():
        out = out.replace(re.escape("{" + name + "}"), f"(?P<{name}>{body})")
    return re.compile(out)


_RULES = [(_pattern(theirs), ours) for theirs, ours in _NAMES]  # nanochat -> ours
_INVERSE = [(_pattern(ours), theirs) for theirs, ours in _NAMES]  # ours -> nanochat


class InteropError(ValueError):
    """A nanochat checkpoint or config that does not map onto an LRT (or back)."""


def _rename(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        if match := pattern.fullmatch(name):
            return template.format(**match.groupdict())
    return None


def lrt_config_from_nanochat(config: Mapping[str, Any]) -> LRTConfig:
    """`LRTConfig` of a nanochat / fork `GPTConfig` mapping (missing keys: GPTConfig defaults;
    an extra `pad_vocab_size_to` key is accepted, default 64)."""
    unknown = sorted(set(config) - set(GPT_CONFIG_DEFAULTS) - {"pad_vocab_size_to"})
    if unknown:
        raise InteropError(
            f"unknown nanochat GPTConfig keys {unknown}; expected some of "
            f"{sorted(GPT_CONFIG_DEFAULTS)}"
        )
    c = {**GPT_CONFIG_DEFAULTS, **config}
    return LRTConfig(
        vocab_size=int(c["vocab_size"]),
        depth=int(c["n_layer"]),
        seq_len=int(c["sequence_len"]),
        n_embd=int(c["n_embd"]),
        n_head=int(c["n_head"]),
        n_kv_head=int(c["n_kv_head"]),
        window_pattern=str(c["window_pattern"]),
        use_value_embeds=bool(c["use_value_embeds"]),
        ve_every_layer=bool(c["ve_every_layer"]),
        ve_gate_channels=int(c["ve_gate_channels"]),
        use_resid_lambdas=bool(c["use_resid_lambdas"]),
        use_x0_residual=bool(c["use_x0_residual"]),
        pad_vocab_size_to=int(c.get("pad_vocab_size_to", PAD_VOCAB_SIZE_TO)),
        pathway="official" if c["use_interleaved"] else "none",
        source_layer=-1,
        gamma_init=0.1,
        softcap=15.0,
        rope_base=10000.0,
        rope_len=10 * int(c["sequence_len"]),
    )


def nanochat_strategy(config: Mapping[str, Any]) -> StrategyConfig:
    """The training strategy a fork config trains with: interleaved with
    S = interleaved_num_passes and refresh_kv = interleaved_kv_refresh (use_interleaved),
    else "none"."""
    c = {**GPT_CONFIG_DEFAULTS, **config}
    if not c["use_interleaved"]:
        return StrategyConfig(name="none")
    return StrategyConfig(
        name="interleaved",
        subsets=int(c["interleaved_num_passes"]),
        refresh_kv=bool(c["interleaved_kv_refresh"]),
    )


def from_nanochat(
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> LRT:
    """An `LRT` holding a nanochat / fork checkpoint's weights (cast to `dtype`).

    Args:
        state_dict: nanochat key names (`transformer.wte.weight`, ...), padded vocab rows
            included; a `_orig_mod.` prefix (torch.compile) is stripped.
        config: `GPTConfig` fields (the `model_config` of nanochat's meta_*.json).

    Raises:
        InteropError: unknown config keys, missing or unexpected state-dict keys (named), or
            a tensor whose shape differs from the config's.
    """
    cfg = lrt_config_from_nanochat(config)
    with torch.device("meta"):
        model = LRT(cfg)
    expected = {n: p.shape for n, p in model.named_parameters()}
    ours: dict[str, Tensor] = {}
    unexpected = []
    for name, tensor in state_dict.items():
        key = name.removeprefix(_PREFIX)
        mapped = _rename(key, _RULES)
        if mapped is None or mapped not in expected:
            unexpected.append(name)
            continue
        ours[mapped] = tensor
    missing = sorted(_rename(n, _INVERSE) or n for n in expected if n not in ours)
    if missing or unexpected:
        raise InteropError(
            f"nanochat state dict does not match its config ({_describe(config)}): "
            f"missing keys {missing}, unexpected keys {sorted(unexpected)}"
        )
    for name, tensor in ours.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise InteropError(
                f"nanochat tensor {_rename(name, _INVERSE)} has shape {tuple(tensor.shape)}, the "
                f"config ({_describe(config)}) needs {tuple(expected[name])}"
            )
    model.to_empty(device=device)
    model.init_weights()  # buffers (rotary tables); every parameter is overwritten next
    model.load_state_dict({n: t.to(device=device, dtype=dtype) for n, t in ours.items()})
    return model.to(dtype=dtype)


def to_nanochat(
    model: LRT, strategy: StrategyConfig | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict with nanochat key names, GPTConfig mapping) of `model`; inverse of
    `from_nanochat`. `strategy` (interleaved) fills the fork's interleaved_num_passes and
    interleaved_kv_refresh.

    Raises:
        InteropError: a model nanochat cannot express (our shared/layerwise pathway, a source
            layer other than the last, another softcap / rope base / MLP ratio / vocab padding,
            zero_memory).
    """
    cfg = model.config
    problems = []
    if cfg.pathway not in ("none", "official"):
        problems.append(f"pathway={cfg.pathway!r} (nanochat has none/official only)")
    if cfg.softcap != 15.0 or cfg.rope_base != 10000.0 or cfg.mlp_ratio != 4:
        problems.append("softcap/rope_base/mlp_ratio other than 15/10000/4")
    if cfg.pad_vocab_size_to != PAD_VOCAB_SIZE_TO:
        problems.append(f"pad_vocab_size_to={cfg.pad_vocab_size_to} (nanochat pads to 64)")
    if cfg.zero_memory:
        problems.append("zero_memory=True")
    if problems:
        raise InteropError("cannot export to nanochat: " + "; ".join(problems))
    state = {}
    for name, tensor in model.state_dict().items():
        mapped = _rename(name, _INVERSE)
        if mapped is None:
            raise InteropError(f"parameter {name} has no nanochat name")
        state[mapped] = tensor.detach().clone()
    strat = strategy or StrategyConfig(name="interleaved")
    config = {
        "sequence_len": cfg.seq_len,
        "vocab_size": cfg.vocab_size,
        "n_layer": cfg.depth,
        "n_head": cfg.n_head,
        "n_kv_head": cfg.n_kv_head,
        "n_embd": cfg.n_embd,
        "window_pattern": cfg.window_pattern,
        "use_value_embeds": cfg.use_value_embeds,
        "ve_every_layer": cfg.ve_every_layer,
        "use_x0_residual": cfg.use_x0_residual,
        "use_resid_lambdas": cfg.use_resid_lambdas,
        "ve_gate_channels": cfg.ve_gate_channels,
        "use_interleaved": cfg.pathway == "official",
        "interleaved_num_passes": strat.subsets,
        "interleaved_kv_refresh": strat.refresh_kv,
    }
    return state, config


def _describe(config: Mapping[str, Any]) -> str:
    c = {**GPT_CONFIG_DEFAULTS, **config}
    return (
        f"n_layer={c['n_layer']}, n_embd={c['n_embd']}, vocab_size={c['vocab_size']}, "
        f"use_interleaved={c['use_interleaved']}"
    )
