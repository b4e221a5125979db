"""The `train_compiled` and `train_eager` sections: d12 training-step time, optimizer time,
peak memory and MFU per model and strategy (`pipeline.benchmarks.train_timing.TrainBench`)."""

from __future__ import annotations

import time
from typing import Any

from pipeline.benchmarks.device import default_device, mem_peak, mem_reset
from pipeline.benchmarks.gpu.config import strategies, train_configs
from pipeline.benchmarks.gpu.part import Part


def _time_run(
    name: str,
    model_cfg,
    strategy,
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    compile_mode: str,
    backend: str,
) -> dict[str, Any]:
    """Median step time of one model/strategy; compile_mode none | pass | step."""
    import gc

    import torch

    from lrt import accounting
    from pipeline.benchmarks.train_timing import TrainBench

    dev = default_device()
    mem_reset(dev)
    bench = TrainBench(model_cfg, strategy, dev, batch_size=batch_size, compile_model=False)
    model = bench.model
    if compile_mode == "pass":
        model.compile(dynamic=False, backend=backend)
    elif compile_mode == "step":  # the whole loss (every pass, head, cross-entropy) compiled
        bench.loss_fn = torch.compile(bench.loss_fn, dynamic=False, backend=backend)
    t0 = time.perf_counter()
    bench.step(timed=False)
    first_s = time.perf_counter() - t0
    for i in range(1, warmup + steps):
        bench.step(timed=i >= warmup)
    res = bench.result()
    res.update(
        first_step_s=first_s,
        compile=compile_mode,
        peak_mem_gb=mem_peak(dev),
        batch_size=batch_size,
        seq_len=model_cfg.seq_len,
        flops_per_token_causal=accounting.flops_per_token(model_cfg, strategy, causal=True),
    )
    if dev.type == "cuda":
        name_ = torch.cuda.get_device_name()
        res["peak_flops"] = accounting.peak_flops(name_)
        res["mfu_causal"] = accounting.mfu(
            res["flops_per_token_causal"], res["tokens_per_s"], res["peak_flops"]
        )
    res["step_ms_all"] = res.get("step_ms_all", [])[:20]
    bench.loss_fn = None  # break the closure cycle
    bench.close()
    gc.collect()
    if compile_mode != "none":
        torch._dynamo.reset()
    return res


def worker_train(part: Part, cfg: dict[str, Any], *, compiled: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    base, lrt, official = train_configs(cfg)
    sts = strategies(cfg)
    if compiled:
        c = cfg["compiled"]
        big = 4 * cfg["batch_size"]  # 32 at d12: nanochat's device batch for its 41 % MFU
        plan = [  # (name, model, strategy, compile mode, batch size)
            ("baseline", base, "baseline", "step", None),
            (f"baseline_batch_{big}", base, "baseline", "step", big),
            ("interleaved:2", lrt, "interleaved:2", "step", None),
            ("official_interleaved:2", official, "interleaved:2", "step", None),
            ("multi_refine:1", lrt, "multi_refine:1", "step", None),
        ]
        kw = dict(steps=c["steps"], warmup=c["warmup"], backend=c["backend"])
    else:
        e = cfg["eager"]
        plan = [
            ("baseline", base, "baseline", "none", None),
            ("interleaved:2", lrt, "interleaved:2", "none", None),
            ("official_interleaved:2", official, "interleaved:2", "none", None),
            ("multi_refine:1", lrt, "multi_refine:1", "none", None),
            ("baseline_lrt_model", lrt, "baseline", "none", None),
            ("baseline_again", base, "baseline", "none", None),
        ]
        kw = dict(steps=e["steps"], warmup=e["warmup"], backend="inductor")
    part.put("config", {**cfg["model"], "batch_size": cfg["batch_size"], **kw,
                        "dtype": "bf16 autocast" if default_device().type == "cuda" else "fp32"})  # fmt: skip
    for name, mcfg, st, mode, batch in plan:
        try:
            r = _time_run(
                name, mcfg, sts[st], batch_size=batch or cfg["batch_size"], compile_mode=mode, **kw
            )
            part.put(f"run/{name}", r)
        except Exception as exc:  # noqa: BLE001
            part.error(f"run/{name}", exc)
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
