"""Worker side: run one section (`--worker NAME`) in this process and write its `Part`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.benchmarks.gpu.checks import worker_env, worker_pytest
from pipeline.benchmarks.gpu.config import sizes
from pipeline.benchmarks.gpu.decode import worker_decode
from pipeline.benchmarks.gpu.loader import worker_loader
from pipeline.benchmarks.gpu.part import Part
from pipeline.benchmarks.gpu.quality import worker_quality
from pipeline.benchmarks.gpu.train import worker_train


def worker_main(a: argparse.Namespace) -> None:
    cfg = sizes(a.smoke, a.quick_quality)
    part = Part(Path(a.part))
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        if a.worker == "env":
            worker_env(part, cfg)
        elif a.worker == "train_eager":
            worker_train(part, cfg, compiled=False)
        elif a.worker == "train_compiled":
            worker_train(part, cfg, compiled=True)
        elif a.worker == "decode":
            worker_decode(part, cfg)
        elif a.worker == "loader":
            worker_loader(part, cfg, Path(a.data))
        elif a.worker == "quality":
            worker_quality(part, cfg, Path(a.data), a.worker_budget)
        elif a.worker == "pytest":
            worker_pytest(part, a.worker_budget)
        else:
            raise ValueError(f"unknown worker {a.worker}")
    except BaseException as exc:  # noqa: BLE001
        part.error("worker_error", exc)
        raise
