"""Measurements at fixed weights: how far a parallel strategy is from exact recurrence.

At the current weights and one fixed batch:

- **state gap**: the strategy's merged source states (each position from the last pass that
  wrote it; `lrt.strategies.Run.source`) against the exact sequential ones (the `sequential`
  strategy: token-by-token, memory = previous exact state), per position: relative L2
  `||s - s*|| / ||s*||` and cosine, averaged over the batch;
- **gradient cosine**: the gradient of the strategy's training loss against the exact BPTT
  gradient (the `sequential` strategy's loss), per parameter group, plus the norm ratio.

    >>> from lrt import LRT, LRTConfig, StrategyConfig
    >>> import torch
    >>> m = LRT(LRTConfig(vocab_size=64, depth=1, seq_len=8, n_embd=32, n_head=1,
    ...                   pathway="shared")); m.init_weights()
    >>> x = torch.randint(0, 64, (2, 8))
    >>> gap = state_gap(m, x, StrategyConfig("interleaved", subsets=8))   # S = T is exact
    >>> max(gap["rel_l2"]) < 1e-5
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lrt.config import StrategyConfig
from lrt.strategies import forward_train, run_passes

EXACT = StrategyConfig(name="sequential")

GROUPS = ("embedding", "blocks", "pathway", "lm_head", "other")


def param_group(name: str) -> str:
    """Coarse group of a parameter name: embedding, blocks, pathway, lm_head or other."""
    if name.startswith("pathway."):
        return "pathway"
    if name.startswith("wte") or "value_embed" in name or name.startswith("ve"):
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if name.startswith("blocks."):
        return "blocks"
    return "other"


@torch.no_grad()
def state_gap(
    model: nn.Module, idx: Tensor, strategy: StrategyConfig, exact: Tensor | None = None
) -> dict[str, Any]:
    """Per-position relative L2 and cosine of the strategy's source states vs exact ones.

    Args:
        model: An `lrt.LRT` with a pathway.
        idx: (B, T) token ids.
        strategy: The parallel strategy.
        exact: Precomputed exact source states (B, T, C) (`exact_source`), else computed here.
    """
    ref = exact_source(model, idx) if exact is None else exact
    got = run_passes(model, idx, strategy).source.float()  # (B, T, C)
    diff = (got - ref).norm(dim=-1)  # (B, T)
    rel = diff / ref.norm(dim=-1).clamp(min=1e-12)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1, eps=1e-12)  # (B, T)
    return {
        "rel_l2": rel.mean(0).tolist(),
        "cos": cos.mean(0).tolist(),
        "rel_l2_mean": float(rel.mean()),
        "cos_mean": float(cos.mean()),
    }


@torch.no_grad()
def exact_source(model: nn.Module, idx: Tensor) -> Tensor:
    """Exact sequential source states (B, T, C), float32."""
    return run_passes(model, idx, EXACT).source.float()


def _grads(model: nn.Module, idx: Tensor, targets: Tensor, strategy: StrategyConfig):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = forward_train(model, idx, targets, strategy).loss
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {
        n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named, grads, strict=True)
    }


def gradient_cosine(
    model: nn.Module,
    idx: Tensor,
    targets: Tensor,
    strategy: StrategyConfig,
    exact: dict[str, Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Cosine and norm ratio of the strategy's gradient vs the exact BPTT gradient per group.

    Returns `{group: {"cos": c, "norm_ratio": |g| / |g*|}}` for every group with parameters,
    plus "all". `exact` = `exact_gradients(...)` to reuse across strategies.
    """
    ref = exact_gradients(model, idx, targets) if exact is None else exact
    got = _grads(model, idx, targets, strategy)
    out: dict[str, dict[str, float]] = {}
    for group in (*GROUPS, "all"):
        names = [n for n in ref if group == "all" or param_group(n) == group]
        if not names:
            continue
        a = torch.cat([got[n].flatten().double() for n in names])
        b = torch.cat([ref[n].flatten().double() for n in names])
        na, nb = float(a.norm()), float(b.norm())
        cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan
        out[group] = {"cos": cos, "norm_ratio": na / nb if nb > 0 else math.nan}
    return out


def exact_gradients(model: nn.Module, idx: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Gradients of the exact sequential loss (true BPTT through the recurrence)."""
    return _grads(model, idx, targets, EXACT)
