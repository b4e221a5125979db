"""The `loader` section: time to get the next batch from `pipeline.data.loader.DataLoader`
and to copy it to the device."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.benchmarks.device import default_device
from pipeline.benchmarks.gpu.part import Part


def worker_loader(part: Part, cfg: dict[str, Any], data_dir: Path) -> None:
    """Time to get the next batch (Rust thread ahead; pinned ring on CUDA) and the copy."""
    import statistics

    import torch

    from pipeline.data.loader import DataLoader

    dev = default_device()
    lo = cfg["loader"]
    for mode in ("bestfit", "contiguous"):
        try:
            loader = DataLoader(
                data_dir / "tokens", "train", lo["batch_size"], lo["seq_len"], mode=mode, seed=0
            )
            it = iter(loader)
            for _ in range(5):
                x, y = next(it)
            t_next, t_h2d = [], []
            for _ in range(lo["batches"]):
                t0 = time.perf_counter()
                x, y = next(it)
                t1 = time.perf_counter()
                xd = x.to(dev, non_blocking=True).long()
                yd = y.to(dev, non_blocking=True).long()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t2 = time.perf_counter()
                t_next.append(t1 - t0)
                t_h2d.append(t2 - t1)
                del xd, yd
            loader.close()
            part.put(
                f"loader/{mode}",
                {
                    "batch_size": lo["batch_size"],
                    "seq_len": lo["seq_len"],
                    "next_ms_median": 1e3 * statistics.median(t_next),
                    "next_ms_mean": 1e3 * statistics.mean(t_next),
                    "h2d_ms_median": 1e3 * statistics.median(t_h2d),
                    "h2d_ms_mean": 1e3 * statistics.mean(t_h2d),
                    "pinned": bool(x.is_pinned()) if dev.type == "cuda" else False,
                },
            )
        except Exception as exc:  # noqa: BLE001
            part.error(f"loader/{mode}", exc)
