"""The optimizer step of a run, with its non-finite guard, the log row of a step (losses,
throughput, MFU) and the stop request all ranks agree on. A mixin of `pipeline.train.loop._Run`:
it works on the attributes `pipeline.train.state.RunState` sets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.train.checkpoint import list_checkpoints
from pipeline.train.forward_backward import accumulate_gradients
from pipeline.train.logs import say
from pipeline.train.signals import NonFiniteError


class Stepping:
    """`train_step`, `log_row` and `stop_signal` of a run (see `pipeline.train.loop._Run`)."""

    def train_step(self, batches: Iterator) -> tuple[torch.Tensor, list[float], float]:
        """One optimizer step; returns (mean loss tensor, mean pass losses, LR multiplier)."""
        ts = self.ts
        lr_mult, momentum, wd_mult = self.recipe.schedule(self.step, self.total_steps)
        self.optimizer.set_schedule(lr_mult, momentum, wd_mult)
        loss, pass_losses = accumulate_gradients(
            self.step_module, batches, self.accum, device=self.device, dtype=self.dtype
        )
        # The norm is needed for the non-finite guard even without clipping (max_norm=inf
        # leaves the gradients as they are).
        max_norm = ts.grad_clip if ts.grad_clip > 0 else math.inf
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not self._finite(loss, norm, pass_losses):
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite(loss, norm)
            return loss, pass_losses, lr_mult
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss, pass_losses, lr_mult

    def _finite(self, loss: torch.Tensor, norm: torch.Tensor, pass_losses: list[float]) -> bool:
        """Loss and gradient norm finite on every rank (one device sync per step)."""
        ok = torch.isfinite(loss.detach().float()) & torch.isfinite(norm.detach().float())
        ok = ok & all(math.isfinite(v) for v in pass_losses)
        if self.info.enabled:
            flag = ok.to(self.device, torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            return bool(flag.item())
        return bool(ok.item())

    def _nonfinite(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Skip the step (counted) while `train.nonfinite_skips` allows, else stop."""
        limit = int(getattr(self.ts, "nonfinite_skips", 0))
        what = f"loss {float(loss):.4g}, gradient norm {float(norm):.4g}"
        if self.nonfinite_skipped < limit:
            self.nonfinite_skipped += 1
            if self.main:
                say(f"{self.variant}: step {self.step + 1}: non-finite {what}; step skipped "
                     f"({self.nonfinite_skipped}/{limit} of train.nonfinite_skips)")  # fmt: skip
            return
        found = list_checkpoints(self.ckpt_dir)
        last = f"the last good checkpoint {found[-1][1]} is intact" if found else "no checkpoint"
        raise NonFiniteError(
            f"{self.variant}: non-finite {what} at step {self.step + 1}/{self.total_steps} "
            f"(after {self.nonfinite_skipped} skipped); nothing was applied or saved, {last}. "
            "Lower the learning rates (train.*_lr), check the data, or allow skipping with "
            "train.nonfinite_skips=N"
        )

    def log_row(
        self, loss: torch.Tensor, pass_losses: list[float], lr_mult: float, t0: float
    ) -> dict[str, Any]:
        """Synchronise, account the step's time (it began at `t0`) and build its log row
        (losses averaged over ranks)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.elapsed += time.perf_counter() - t0
        if self.info.enabled:
            stats = torch.tensor([loss.item(), *pass_losses], device=self.device)
            dist.all_reduce(stats)
            values = (stats / self.info.world_size).tolist()
        else:
            values = [loss.item(), *pass_losses]
        now = time.perf_counter()
        t_last, step_last = self._window
        tok_s = (self.step - step_last) * self.ts.total_batch_tokens / max(now - t_last, 1e-9)
        self._window = (now, self.step)
        tokens = self.step * self.ts.total_batch_tokens
        return {
            "step": self.step,
            "tokens": tokens,
            "effective_flops": self.fpt * tokens,
            "lr": lr_mult * self.ts.matrix_lr * self.lr_scale,  # Muon's lr, batch-scaled
            "loss": values[0],
            **dict(zip(self.pass_cols, values[1:], strict=False)),
            "tokens_per_s": tok_s,
            "mfu": self._mfu(tok_s),
            "elapsed_s": self.elapsed,
        }

    def _mfu(self, tok_s: float | None) -> float | None:
        if not self.peak or not tok_s:
            return None
        return self.fpt * tok_s / (self.peak * self.info.world_size)

    def stop_signal(self, local: int) -> int:
        """The stop request (signal number or 0) agreed by all ranks."""
        if not self.info.enabled:
            return local
        flag = torch.tensor([local], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
