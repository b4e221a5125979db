"""Training strategies: the loss over the passes that `lrt.passes` schedules for one batch.

Every strategy (none, interleaved, multi_refine, chunked, sequential) and the meaning of a
position's "merged" output are described once, in `lrt/passes.py`'s docstring; this module turns
those passes into `TrainOutput` (the mean, or `loss_weights`-weighted mean, of the pass losses)
and into the per-mode logits and token losses evaluation reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrt.backbone import Backbone
from lrt.config import StrategyConfig
from lrt.decode import sequential_forward, sequential_losses
from lrt.passes import (  # noqa: F401 - re-exported: the schedules used to live here
    Piece,
    Run,
    merged_hidden,
    refresh_kv,
    run_chunked,
    run_interleaved,
    run_multi_refine,
    run_none,
    run_passes,
)


@dataclass
class TrainOutput:
    """loss: scalar to backprop; pass_losses: per logical pass mean loss (floats, init first);
    position_loss: (B, T) detached merged per-position losses in nats (0 where ignored)."""

    loss: Tensor
    pass_losses: list[float]
    position_loss: Tensor


# ---------------------------------------------------------------------------------------------
# Losses


def forward_train(
    model: Backbone, idx: Tensor, targets: Tensor, strategy: StrategyConfig
) -> TrainOutput:
    """Loss of one batch. idx, targets: (B, T) int64; targets == -1 are ignored.

    Each logical pass's loss is its summed token loss over its non-ignored positions divided by
    their count; the step loss is their mean (or `loss_weights`-weighted mean, normalised).
    """
    run = run_passes(model, idx, strategy)
    n = len(run.passes)
    weights = strategy.loss_weights
    if weights is not None and len(weights) != n:
        raise ValueError(f"loss_weights has {len(weights)} entries; {strategy.name} has {n} passes")
    position_loss = torch.zeros(targets.shape, device=idx.device, dtype=torch.float32)
    pass_losses = []
    for pieces in run.passes:
        total, count = 0.0, 0
        for p in pieces:
            tg = targets if p.positions is None else targets[:, p.positions]
            logits = model.head(p.hidden)  # (B, Tp, V) float32
            tok = F.cross_entropy(
                logits.flatten(0, 1), tg.flatten(), ignore_index=-1, reduction="none"
            ).view(tg.shape)
            total = total + tok.sum()
            count = count + (tg != -1).sum()
            if p.positions is None:
                position_loss = tok.detach()
            else:
                position_loss = position_loss.index_copy(1, p.positions, tok.detach())
        pass_losses.append(total / torch.clamp(count, min=1))
    stacked = torch.stack(pass_losses)
    if weights is None:
        loss = stacked.mean()
    else:
        w = torch.tensor(weights, device=stacked.device, dtype=stacked.dtype)
        loss = (w * stacked).sum() / w.sum()
    return TrainOutput(loss, stacked.detach().tolist(), position_loss)


_MODES = {
    "init": "none",
    "none": "none",
    "merged": "interleaved",
    "interleaved": "interleaved",
    "refine": "multi_refine",
    "multi_refine": "multi_refine",
    "chunked": "chunked",
    "sequential": "sequential",
}


def _eval_run(model: Backbone, idx: Tensor, mode: str, strategy: StrategyConfig) -> Run:
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(_MODES)}")
    s = strategy
    name = _MODES[mode]
    return run_passes(
        model,
        idx,
        StrategyConfig(
            name=name,
            subsets=s.subsets,
            refine_steps=s.refine_steps,
            chunk_size=s.chunk_size,
            refresh_kv=s.refresh_kv,
        ),
    )


@torch.no_grad()
def mode_logits(model: Backbone, idx: Tensor, mode: str, strategy: StrategyConfig) -> Tensor:
    """Logits (B, T, V) of an evaluation mode (see `LRT.token_losses`)."""
    if _MODES.get(mode) == "sequential":
        return sequential_forward(model, idx)
    return model.head(merged_hidden(_eval_run(model, idx, mode, strategy), idx.size(1)))


@torch.no_grad()
def token_losses(
    model: Backbone,
    idx: Tensor,
    targets: Tensor,
    mode: str,
    strategy: StrategyConfig,
    rows: int = 256,
) -> Tensor:
    """Per-position losses (B, T) in nats under `mode`; 0 where targets == -1.

    The head runs `rows` positions at a time, so full (B, T, V) logits never exist at once.
    """
    if _MODES.get(mode) == "sequential":
        return sequential_losses(model, idx, targets)
    hidden = merged_hidden(_eval_run(model, idx, mode, strategy), idx.size(1))
    out = torch.empty(targets.shape, device=idx.device, dtype=torch.float32)
    for start in range(0, idx.size(1), rows):
        logits = model.head(hidden[:, start : start + rows])
        tg = targets[:, start : start + rows]
        out[:, start : start + rows] = F.cross_entropy(
            logits.flatten(0, 1), tg.flatten(), ignore_index=-1, reduction="none"
        ).view(tg.shape)
    return out


class StrategyStep(nn.Module):
    """`forward(idx, targets) -> TrainOutput` of one strategy, as a module.

    A strategy calls the model several times per step; wrapping this module (not the model) in
    DistributedDataParallel makes the whole step one DDP forward, so gradient sync sees every
    pass. It owns no parameters of its own: `step.model` is the wrapped LRT.

        >>> step = StrategyStep(model, StrategyConfig(name="interleaved"))  # doctest: +SKIP
        >>> loss = step(idx, targets).loss                                  # doctest: +SKIP
    """

    def __init__(self, model: Backbone, strategy: StrategyConfig) -> None:
        super().__init__()
        self.model = model
        self.strategy = strategy

    def forward(self, idx: Tensor, targets: Tensor) -> TrainOutput:
        return forward_train(self.model, idx, targets, self.strategy)
