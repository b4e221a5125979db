"""The `decode` section: greedy decoding tokens/s, baseline vs LRT, per decoder mode and batch
size (`pipeline.benchmarks.decode_timing.time_decode`)."""

from __future__ import annotations

from typing import Any

from pipeline.benchmarks.device import default_device, mem_peak, mem_reset
from pipeline.benchmarks.gpu.config import train_configs
from pipeline.benchmarks.gpu.part import Part


def worker_decode(part: Part, cfg: dict[str, Any]) -> None:
    """Baseline vs LRT (shared pathway, "lrt") and the authors' arm ("official") decoding per
    decoder mode and batch size (cheap modes first)."""
    from pipeline.benchmarks.decode_timing import time_decode

    dev = default_device()
    base, lrt, official = train_configs(cfg)
    d = cfg["decode"]
    for mode in d["modes"]:
        rounds = 1 if mode == "compiled_graph" else d["rounds"]  # compiles cost ~10 s each
        for b in d["batches"]:
            row: dict[str, Any] = {}
            try:
                for _ in range(rounds):  # alternate the models; keep each one's best round
                    for name, mcfg in (("baseline", base), ("lrt", lrt), ("official", official)):
                        mem_reset(dev)
                        r = time_decode(
                            mcfg, dev, batch_size=b, tokens=d["tokens"], warmup=d["warmup"],
                            mode=mode,
                        )  # fmt: skip
                        r["peak_mem_gb"] = mem_peak(dev)
                        if name not in row or r["tokens_per_s"] > row[name]["tokens_per_s"]:
                            row[name] = r
                for name in ("lrt", "official"):
                    rel = row[name]["tokens_per_s"] / row["baseline"]["tokens_per_s"]
                    row[f"{name}_rel_throughput"] = rel
                    row[f"{name}_overhead_pct"] = 100 * (1 / rel - 1)
                part.put(f"decode/{mode}/batch_{b}", row)
            except Exception as exc:  # noqa: BLE001
                part.error(f"decode/{mode}/batch_{b}", exc)
            finally:
                if mode == "compiled_graph":
                    import torch

                    torch._dynamo.reset()
