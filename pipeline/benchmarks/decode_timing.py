"""Decoding timing: greedy tokens/s of one model from an empty cache, per decoder mode
(`DECODE_MODES`: eager KV cache, bf16 copy, static cache, CUDA graph, compiled graph). Used by
the step benchmark (`pipeline.benchmarks.step`) and the GPU script
(`pipeline.benchmarks.gpu.decode`).
"""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Any

import torch

from lrt import accounting
from lrt.config import LRTConfig
from pipeline.benchmarks.device import autocast, build_model, sync

DECODE_MODES = ("eager", "eager_bf16", "static", "graph", "graph_unfused", "compiled_graph")


@torch.no_grad()
def time_decode(
    cfg: LRTConfig,
    device: torch.device,
    *,
    batch_size: int,
    tokens: int,
    warmup: int = 2,
    mode: str = "eager",
) -> dict[str, Any]:
    """Greedy decoding throughput (tokens/s over the batch) from an empty cache.

    mode: "eager" = `lrt.decode.decode_step` (growing `KVCache`) under bf16 autocast with fp32
    weights on CUDA (how training-time evaluation decodes). Every other mode decodes a copy of
    the model cast to bf16 on CUDA (fp32 on CPU) without autocast: "eager_bf16" =
    `decode_step` on it, the reference for the static modes (same dtype, no per-step weight
    casts); "static" = `lrt.static_decode.StaticDecoder` stepped eagerly, "graph" = replayed
    as a CUDA graph, "graph_unfused" = the same without the stacked projections,
    "compiled_graph" = compiled with inductor, then replayed as a CUDA graph. The static modes
    attend over a cache of warmup + tokens rows (rounded up to 16) at every step; the eager
    cache grows.
    """
    from lrt.decode import decode_step, new_state
    from lrt.static_decode import StaticDecoder

    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
    if mode in ("graph", "graph_unfused", "compiled_graph") and device.type != "cuda":
        raise ValueError(f"decode mode {mode!r} needs CUDA")
    model = build_model(cfg, device, compile_model=False)
    model.eval()
    if mode != "eager" and device.type == "cuda":
        model = model.to(torch.bfloat16)
    total = warmup + tokens
    nxt = torch.zeros(batch_size, dtype=torch.long, device=device)
    setup_s = 0.0
    decoder = None
    if mode in ("eager", "eager_bf16"):
        state = new_state(model, batch_size, total)

        def step(tok: torch.Tensor) -> torch.Tensor:
            with autocast(device) if mode == "eager" else contextlib.nullcontext():
                return decode_step(model, state, tok)
    else:
        t_setup = time.perf_counter()
        decoder = StaticDecoder(
            model,
            batch_size,
            total,
            compile_backend="inductor" if mode == "compiled_graph" else None,
            cuda_graph=mode != "static",
            fuse=mode != "graph_unfused",
        )
        sync(device)
        setup_s = time.perf_counter() - t_setup
        step = decoder.step
    t0 = 0.0
    for i in range(total):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        nxt = step(nxt).argmax(dim=-1)
    sync(device)
    elapsed = time.perf_counter() - t0
    model = step = decoder = None  # free the model, cache and graph pool before the next run
    gc.collect()
    return {
        "mode": mode,
        "tokens_per_s": batch_size * tokens / elapsed,
        "ms_per_step": 1e3 * elapsed / tokens,
        "setup_s": setup_s,
        "flops_per_token": accounting.decode_flops_per_token(cfg, context=(total + 1) // 2),
    }
