"""Where a training run executes: the torchrun process group, the device and dtype, autocast,
the device's peak FLOP/s and memory, and gathering an object from every rank.

    >>> resolve_dtype("auto", resolve_device("cpu"))
    torch.float32
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lrt import accounting


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when RANK/WORLD_SIZE are set (nccl on CUDA, gloo on CPU).

    The group stays up for the life of the process (several variants may train in one run).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(rank, world, local)


def resolve_device(setting: str, info: DistInfo | None = None) -> torch.device:
    """'auto' -> cuda when available (cuda:LOCAL_RANK under torchrun), else cpu; 'cuda' (or
    'cuda:N') without CUDA is a one-line ValueError, raised before a model or any data is read
    (train and eval both call this first)."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.split(":")[0] == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"train.device={setting} but this machine has no usable CUDA device "
                "(torch.cuda.is_available() is False); use train.device=auto or cpu"
            )
        if ":" in setting:
            return torch.device(setting)
        return torch.device("cuda", info.local_rank if info else 0)
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_flops(device: torch.device) -> float | None:
    """bf16 dense peak FLOP/s of a CUDA device (None on CPU or for an unknown GPU: no MFU)."""
    if device.type != "cuda":
        return None
    peak = accounting.peak_flops(torch.cuda.get_device_name(device))
    return peak if math.isfinite(peak) else None


def device_memory(device: torch.device) -> int:
    """Total memory of `device` in bytes (CPU: physical RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
