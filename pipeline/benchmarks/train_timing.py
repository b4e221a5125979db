"""Training-step timing: `TrainBench` (one model, optimizer and fixed batch whose step is timed
repeatedly), `time_train` (one model alone on the device) and `time_train_interleaved` (several
models stepped round-robin). Used by the step benchmark (`pipeline.benchmarks.step`) and the GPU
script (`pipeline.benchmarks.gpu.train`).
"""

from __future__ import annotations

import gc
import statistics
import time
import traceback
from collections.abc import Sequence
from typing import Any

import torch

from lrt import accounting
from lrt.config import LRTConfig, StrategyConfig
from lrt.optim import OptimizerRecipe
from pipeline.benchmarks.device import autocast, build_model, sync


class TrainBench:
    """One model + optimizer + fixed batch whose training step can be timed repeatedly."""

    def __init__(
        self,
        cfg: LRTConfig,
        strategy: StrategyConfig,
        device: torch.device,
        *,
        batch_size: int,
        compile_model: bool,
    ) -> None:
        self.cfg, self.strategy, self.device, self.batch_size = cfg, strategy, device, batch_size
        self.model = build_model(cfg, device, compile_model)
        # the training recipe's optimizer (nanochat's, with weight decay: its cautious mask)
        self.opt = OptimizerRecipe().build(self.model, batch_size * cfg.seq_len)
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_len + 1), generator=g)
        data = data.to(device)
        self.idx, self.tgt = data[:, :-1], data[:, 1:]
        self.times: list[float] = []
        self.opt_times: list[float] = []
        self.loss = float("nan")
        # (idx, targets) -> scalar loss; replace with a compiled version to time a whole-loss
        # compile (`torch.compile(bench.loss_fn)`)
        self.loss_fn: Any = lambda idx, tgt: self.model.forward_train(idx, tgt, strategy).loss

    def step(self, timed: bool = True) -> None:
        """One training step: forward (all passes of the strategy), backward, optimizer.

        The optimizer is timed on its own too (a synchronise between backward and the
        optimizer step; it removes only the overlap of the optimizer's launches with the end
        of the backward)."""
        sync(self.device)
        t0 = time.perf_counter()
        with autocast(self.device):
            loss = self.loss_fn(self.idx, self.tgt)
        loss.backward()
        sync(self.device)
        t1 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        if timed:
            t2 = time.perf_counter()
            self.times.append(t2 - t0)
            self.opt_times.append(t2 - t1)
        self.loss = loss.item()

    def result(self) -> dict[str, Any]:
        step_s = statistics.median(self.times)
        out = {
            "step_ms": 1e3 * step_s,
            "optimizer_ms": 1e3 * statistics.median(self.opt_times),
            "step_ms_all": [round(1e3 * t, 3) for t in self.times],
            "tokens_per_s": self.batch_size * self.cfg.seq_len / step_s,
            "flops_per_token": accounting.flops_per_token(self.cfg, self.strategy),
            "loss": self.loss,
        }
        if self.device.type == "cuda":
            peak = accounting.peak_flops(torch.cuda.get_device_name(self.device))
            out["mfu"] = accounting.mfu(out["flops_per_token"], out["tokens_per_s"], peak)
        return out

    def close(self) -> None:
        del self.model, self.opt
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def time_train(
    cfg: LRTConfig,
    strategy: StrategyConfig,
    device: torch.device,
    *,
    steps: int,
    warmup: int,
    batch_size: int,
    compile_model: bool,
) -> dict[str, Any]:
    """Median wall time of a training step (fwd + bwd + optimizer), alone on the device; on
    CUDA also the peak memory of building and training this one model."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    bench = TrainBench(cfg, strategy, device, batch_size=batch_size, compile_model=compile_model)
    for i in range(warmup + steps):
        bench.step(timed=i >= warmup)
    result = bench.result()
    if device.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    bench.close()
    return result


def time_train_interleaved(
    runs: Sequence[tuple[str, LRTConfig, StrategyConfig]],
    device: torch.device,
    *,
    steps: int,
    warmup: int,
    batch_size: int,
    compile_model: bool,
    errors: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Like `time_train` for several runs at once, stepping them round-robin so that load from
    other processes (shared CPUs) hits every run alike. No memory figures."""
    benches: dict[str, TrainBench] = {}
    for name, cfg, st in runs:
        try:
            benches[name] = TrainBench(
                cfg, st, device, batch_size=batch_size, compile_model=compile_model
            )
            for _ in range(warmup):
                benches[name].step(timed=False)
        except Exception as exc:  # noqa: BLE001 - record and go on with the other runs
            errors[f"train/{name}"] = describe_error(exc)
            benches.pop(name, None)
    for _ in range(steps):
        for bench in benches.values():
            bench.step()
    results = {name: b.result() for name, b in benches.items()}
    for b in benches.values():
        b.close()
    return results


def describe_error(exc: Exception) -> str:
    """One line: the exception and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"
