"""One optimizer step's forward/backward: the module DDP and torch.compile wrap, and gradient
accumulation over micro-batches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from lrt.config import StrategyConfig
from pipeline.train.device import autocast_ctx


class TrainStep(nn.Module):
    """`forward(idx, targets) -> (loss, pass_losses)`: the module DDP / torch.compile wrap, so
    their hooks run although the model's training entry point is `forward_train`."""

    def __init__(self, model: nn.Module, strategy: StrategyConfig) -> None:
        super().__init__()
        self.model = model
        self.strategy = strategy

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        out = self.model.forward_train(idx, targets, self.strategy)
        return out.loss, out.pass_losses


def accumulate_gradients(
    step_module: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    accum: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, list[float]]:
    """Forward/backward `accum` micro-batches, each loss scaled by 1/accum.

    Under DDP only the last micro-batch all-reduces gradients (`no_sync` on the others).

    Returns:
        (mean loss over the micro-batches as a detached tensor, mean pass losses).
    """
    loss_sum = torch.zeros((), device=device)
    pass_sums: list[float] = []
    is_ddp = isinstance(step_module, nn.parallel.DistributedDataParallel)
    for micro in range(accum):
        inputs, targets = next(batches)
        # Async copy from the loader's pinned slot: safe because forward_train's pass_losses
        # (Python floats) synchronise before the next batch is drawn.
        x = inputs.to(device, non_blocking=True).long()  # (B, T)
        y = targets.to(device, non_blocking=True).long()
        sync = step_module.no_sync() if is_ddp and micro < accum - 1 else contextlib.nullcontext()
        with sync:
            with autocast_ctx(device, dtype):
                loss, pass_losses = step_module(x, y)
            (loss / accum).backward()
        loss_sum += loss.detach()
        if not pass_sums:
            pass_sums = [0.0] * len(pass_losses)
        for i, v in enumerate(pass_losses):
            pass_sums[i] += float(v)
    return loss_sum / accum, [v / accum for v in pass_sums]
