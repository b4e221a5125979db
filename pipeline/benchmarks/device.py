"""Device helpers shared by the benchmarks: pick the device, synchronise, bf16 autocast on
CUDA, build a model on the device, reset and read CUDA peak memory.

Used by the step benchmark (`pipeline.benchmarks.train_timing`, `decode_timing`) and the GPU
script's workers (`pipeline.benchmarks.gpu`).
"""

from __future__ import annotations

import contextlib

import torch

from lrt.config import LRTConfig


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU (fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(cfg: LRTConfig, device: torch.device, compile_model: bool, seed: int = 0):
    """An `lrt.LRT` built on the meta device, materialised on `device`, initialised with
    `seed`, in train mode; optionally `model.compile()`d."""
    from lrt.model import LRT

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LRT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    model.train()
    if compile_model:
        model.compile(dynamic=False)  # compiles __call__, so strategy passes (model(...)) use it
    return model


def mem_reset(dev: torch.device) -> None:
    """Free cached blocks and restart the peak-memory count (CUDA); no-op on CPU."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def mem_peak(dev: torch.device) -> float | None:
    """Peak allocated GiB since the last `mem_reset` (CUDA); None on CPU."""
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
