"""Multi-process training from `dvc repro` and `lrt-pipeline train`: re-launch under torchrun.

`train.nproc_per_node` (default `auto` = every visible CUDA GPU, 1 on a CPU machine) > 1 makes
the train stage start itself again under `torchrun --standalone --nproc_per_node N` and wait for
it, so `dvc repro` trains on every GPU of the node without leaving DVC. Inside torchrun (its
`LOCAL_RANK` is set) nothing is re-launched: the process is a rank. Multi-node runs are started
by hand with torchrun's own rendezvous flags (docs/TRAINING.md).

    >>> from pipeline.config.sections import TrainSettings
    >>> resolve_nproc(TrainSettings(nproc_per_node=3, device="cpu"))
    3
    >>> resolve_nproc(TrainSettings(device="cpu"))  # auto on CPU: one process
    1
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config.sections import TrainSettings

log = logging.getLogger(__name__)

__all__ = ["maybe_relaunch", "relaunch_command", "resolve_nproc", "under_torchrun"]


def under_torchrun() -> bool:
    """True in a process that torchrun (or any launcher setting LOCAL_RANK) started."""
    return "LOCAL_RANK" in os.environ


def resolve_nproc(train: TrainSettings) -> int:
    """Processes per node: `auto` -> the visible CUDA devices (1 without CUDA or on cpu)."""
    n = train.nproc_per_node
    if n != "auto":
        return int(n)
    if train.device == "cpu":
        return 1
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def relaunch_command(nproc: int, module: str, argv: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE ARGV...`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *argv,
    ]


def maybe_relaunch(train: TrainSettings, module: str, argv: Sequence[str]) -> int | None:
    """Run `module argv` under torchrun when more than one process per node is asked for.

    Returns torchrun's exit status, or None when this process should train itself (one
    process, or already a torchrun rank).
    """
    if under_torchrun():
        return None
    nproc = resolve_nproc(train)
    if nproc <= 1:
        return None
    cmd = relaunch_command(nproc, module, argv)
    log.info("train: %d processes per node, re-launching under torchrun: %s", nproc, " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode
