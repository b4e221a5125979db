"""One-call GPU measurement of the LRT pipeline: speed, memory and a small quality experiment.

Run as `bash bench/gpu.sh` on the device (or `python -m pipeline.benchmarks.gpu --out DIR`).
The parent process imports no torch: it runs each section in a worker subprocess (its own
process group) with a timeout, merges what the worker wrote, and rewrites `results.json` after
every section, so a slow compile or a crash costs one section, never the file. A global
wall-clock budget is checked before each section; sections that no longer fit are skipped.

Sections, in order of value (issue 6's second device run):
  env        torch / device / flash-attention check, a big bf16 GEMM
  pytest     the CUDA-marked tests (CUDA-graph decoding, fused optimizer, bf16 passes)
  decode     greedy decoding tok/s, baseline vs LRT, batch 1 and 32, per decoder: eager
             (growing KV cache, autocast, as run 1), eager_bf16 (the same on a bf16 copy, no
             autocast: the reference for the rest), graph (static cache, stacked matmuls,
             replayed as a CUDA graph), graph_unfused (the same, separate matmuls) and
             compiled_graph (inductor + CUDA graph); see lrt/static_decode.py
  train_compiled  d12 (vocab 65536, T 2048), the whole loss compiled (every pass, head and
             cross-entropy in one `torch.compile`, as training's `compile: true` does):
             baseline at batch 8 and 32, interleaved S=2, multi_refine K=1;
             step ms with the optimizer timed apart, peak memory, MFU
  train_eager  the same models eager: baseline, interleaved S=2, multi_refine K=1, the LRT
             model with strategy none, baseline again
  loader     loader and host-to-device time per batch
  quality    small models on the packed Gutenberg shards (.gpu_data): baseline and LRT
             (shared, interleaved S=2) at equal tokens, the baseline at matched compute;
             validation BPB in init / merged / sequential modes (needs ~150 s more budget)

Needs torch, numpy, `lrt/` and `pipeline/_rust.abi3.so` (loader); no pydantic / mlflow.
`--smoke` runs every section with tiny sizes on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# Configurations


def sizes(smoke: bool, quick_quality: bool = False) -> dict[str, Any]:
    if smoke:
        model = dict(vocab_size=512, depth=2, seq_len=64, n_embd=64, n_head=2)
        return dict(
            model=model,
            batch_size=2,
            chunk=16,
            eager=dict(steps=2, warmup=1),
            compiled=dict(steps=2, warmup=1, backend="eager"),
            decode=dict(tokens=8, warmup=2, batches=[1, 4], rounds=1, modes=["eager", "static"]),
            loader=dict(batch_size=2, seq_len=64, batches=5),
            quality=dict(
                model=dict(vocab_size=8192, depth=2, seq_len=64, n_embd=64, n_head=2),
                batch_size=4,
                val_rows=8,
                curve_rows=4,
                min_steps=6,
                max_steps=6,
                base_seq_check=True,
                seeds=[0, 1],
            ),
        )
    model = dict(vocab_size=65536, depth=12, seq_len=2048)
    return dict(
        model=model,
        batch_size=8,
        chunk=64,
        eager=dict(steps=5, warmup=2),
        compiled=dict(steps=10, warmup=3, backend="inductor"),
        decode=dict(
            tokens=128,
            warmup=4,
            batches=[1, 32],
            rounds=2,
            modes=["eager", "eager_bf16", "graph", "graph_unfused", "compiled_graph"],
        ),
        loader=dict(batch_size=8, seq_len=2048, batches=50),
        quality=dict(
            model=dict(vocab_size=8192, depth=6, seq_len=512),
            batch_size=32,
            val_rows=256,
            curve_rows=32,
            min_steps=30,
            max_steps=2000,
            base_seq_check=True,
            seeds=[0, 1],
        )
        if not quick_quality
        # The same experiment, smaller and shorter (fits ~2 minutes of device time).
        else dict(
            model=dict(vocab_size=8192, depth=4, seq_len=256),
            batch_size=64,
            val_rows=256,
            curve_rows=64,
            min_steps=30,
            max_steps=2000,
            base_seq_check=False,
            seeds=[0, 1],
        ),
    )


# ---------------------------------------------------------------------------------------------
# Worker side (imports torch)


class Part:
    """Results of one worker, rewritten atomically after every entry."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)
        print(f"[{key}] {json.dumps(value, default=str)[:400]}", flush=True)

    def error(self, key: str, exc: BaseException) -> None:
        self.put(
            key, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        )


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _mem_reset(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _mem_peak(dev) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


def worker_env(part: Part, cfg: dict[str, Any]) -> None:
    import platform

    import torch

    from lrt import accounting

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=name,
            capability=list(torch.cuda.get_device_capability()),
            sm_count=props.multi_processor_count,
            total_mem_gb=props.total_memory / 2**30,
            peak_flops_bf16_dense=accounting.peak_flops(name),
        )
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                 "--format=csv,noheader"],
                capture_output=True, text=True, timeout=15,
            )  # fmt: skip
            info["nvidia_smi"] = out.stdout.strip()
        except Exception as exc:  # noqa: BLE001
            info["nvidia_smi"] = repr(exc)
    part.put("env", info)
    # Flash attention: the SDPA flash kernel must accept a bf16 causal call.
    if torch.cuda.is_available():
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            q = torch.randn(2, 6, 2048, 128, device="cuda", dtype=torch.bfloat16)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            torch.cuda.synchronize()
            part.put("flash_attention", {"sdpa_flash_bf16_causal": "ok"})
        except Exception as exc:  # noqa: BLE001
            part.error("flash_attention", exc)
        try:  # matmul sanity: what the card gives on a big bf16 GEMM
            a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
            for _ in range(3):
                a @ a
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                a @ a
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / 10
            part.put("gemm_8192_bf16", {"tflops": 2 * 8192**3 / dt / 1e12})
        except Exception as exc:  # noqa: BLE001
            part.error("gemm_8192_bf16", exc)


def _train_cfgs(cfg: dict[str, Any]):
    from lrt.config import LRTConfig

    base = LRTConfig(**cfg["model"])
    lrt = LRTConfig(pathway="shared", **cfg["model"])
    return base, lrt


def _strategies(cfg: dict[str, Any]):
    from lrt.config import StrategyConfig

    return {
        "baseline": StrategyConfig(),
        "interleaved:2": StrategyConfig(name="interleaved", subsets=2),
        "multi_refine:1": StrategyConfig(name="multi_refine", refine_steps=1),
        f"chunked:{cfg['chunk']}": StrategyConfig(name="chunked", chunk_size=cfg["chunk"]),
    }


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

    dev = _device()
    _mem_reset(dev)
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
        peak_mem_gb=_mem_peak(dev),
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
    base, lrt = _train_cfgs(cfg)
    sts = _strategies(cfg)
    if compiled:
        c = cfg["compiled"]
        big = 4 * cfg["batch_size"]  # 32 at d12: nanochat's device batch for its 41 % MFU
        plan = [  # (name, model, strategy, compile mode, batch size)
            ("baseline", base, "baseline", "step", None),
            (f"baseline_batch_{big}", base, "baseline", "step", big),
            ("interleaved:2", lrt, "interleaved:2", "step", None),
            ("multi_refine:1", lrt, "multi_refine:1", "step", None),
        ]
        kw = dict(steps=c["steps"], warmup=c["warmup"], backend=c["backend"])
    else:
        e = cfg["eager"]
        plan = [
            ("baseline", base, "baseline", "none", None),
            ("interleaved:2", lrt, "interleaved:2", "none", None),
            ("multi_refine:1", lrt, "multi_refine:1", "none", None),
            ("baseline_lrt_model", lrt, "baseline", "none", None),
            ("baseline_again", base, "baseline", "none", None),
        ]
        kw = dict(steps=e["steps"], warmup=e["warmup"], backend="inductor")
    part.put("config", {**cfg["model"], "batch_size": cfg["batch_size"], **kw,
                        "dtype": "bf16 autocast" if _device().type == "cuda" else "fp32"})  # fmt: skip
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


def worker_decode(part: Part, cfg: dict[str, Any]) -> None:
    """Baseline vs LRT decoding per decoder mode and batch size (cheap modes first)."""
    from pipeline.benchmarks.decode_timing import time_decode

    dev = _device()
    base, lrt = _train_cfgs(cfg)
    d = cfg["decode"]
    for mode in d["modes"]:
        rounds = 1 if mode == "compiled_graph" else d["rounds"]  # compiles cost ~10 s each
        for b in d["batches"]:
            row: dict[str, Any] = {}
            try:
                for _ in range(rounds):  # alternate the models; keep each one's best round
                    for name, mcfg in (("baseline", base), ("lrt", lrt)):
                        _mem_reset(dev)
                        r = time_decode(
                            mcfg, dev, batch_size=b, tokens=d["tokens"], warmup=d["warmup"],
                            mode=mode,
                        )  # fmt: skip
                        r["peak_mem_gb"] = _mem_peak(dev)
                        if name not in row or r["tokens_per_s"] > row[name]["tokens_per_s"]:
                            row[name] = r
                rel = row["lrt"]["tokens_per_s"] / row["baseline"]["tokens_per_s"]
                row["lrt_rel_throughput"] = rel
                row["lrt_overhead_pct"] = 100 * (1 / rel - 1)
                part.put(f"decode/{mode}/batch_{b}", row)
            except Exception as exc:  # noqa: BLE001
                part.error(f"decode/{mode}/batch_{b}", exc)
            finally:
                if mode == "compiled_graph":
                    import torch

                    torch._dynamo.reset()


def worker_loader(part: Part, cfg: dict[str, Any], data_dir: Path) -> None:
    """Time to get the next batch (Rust thread ahead; pinned ring on CUDA) and the copy."""
    import statistics

    import torch

    from pipeline.data.loader import DataLoader

    dev = _device()
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


def worker_quality(part: Part, cfg: dict[str, Any], data_dir: Path, budget_s: float) -> None:
    """Baseline vs LRT (shared, interleaved S=2) on Gutenberg; BPB in every mode."""
    import numpy as np
    import torch

    from lrt import accounting
    from lrt.config import LRTConfig, StrategyConfig
    from lrt.optim import build_optimizer
    from lrt.schedule import lr_multiplier, muon_momentum
    from pipeline.benchmarks.device import autocast as _autocast
    from pipeline.benchmarks.device import build_model as _build
    from pipeline.benchmarks.device import sync as _sync
    from pipeline.data.loader import DataLoader

    t_start = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = _device()
    q = cfg["quality"]
    base_cfg = LRTConfig(**q["model"])
    lrt_cfg = LRTConfig(pathway="shared", **q["model"])
    st_lrt = StrategyConfig(name="interleaved", subsets=2)
    st_none = StrategyConfig()
    B, T = q["batch_size"], base_cfg.seq_len
    byte_len = torch.as_tensor(np.load(data_dir / "token_bytes.npy").astype(np.int64), device=dev)
    ratio = accounting.flops_per_token(lrt_cfg, st_lrt) / accounting.flops_per_token(base_cfg)
    part.put(
        "config",
        {
            "model": base_cfg.to_dict(),
            "pathway": "shared",
            "strategy": "interleaved S=2",
            "sequential_decoder": "static, CUDA graph" if dev.type == "cuda" else "eager",
            "batch_size": B,
            "flops_per_token_base": accounting.flops_per_token(base_cfg),
            "flops_per_token_lrt": accounting.flops_per_token(lrt_cfg, st_lrt),
            "lrt_flops_ratio": ratio,
            "params_base": accounting.param_counts(base_cfg)["total"],
            "params_lrt": accounting.param_counts(lrt_cfg)["total"],
        },
    )

    # Validation rows: the first val windows, in order; targets of zero-byte tokens (BOS)
    # are excluded from both the loss and the byte count (nanochat's BPB).
    val = DataLoader(data_dir / "tokens", "val", 16, T, mode="contiguous", shuffle=False,
                     epochs=1, pin_memory=False)  # fmt: skip
    rows = []
    for x, y in val:
        rows.append(torch.cat([x[:, :1], y], dim=1).long().clone())
        if sum(r.size(0) for r in rows) >= q["val_rows"]:
            break
    val.close()
    vrows = torch.cat(rows)[: q["val_rows"]].to(dev)
    v_idx, v_tgt = vrows[:, :-1], vrows[:, 1:].clone()
    v_bytes = byte_len[v_tgt]
    v_tgt[v_bytes == 0] = -1
    total_bytes = float(v_bytes.sum())
    part.put("val", {"rows": int(v_idx.size(0)), "tokens": int((v_tgt >= 0).sum()),
                     "bytes": total_bytes})  # fmt: skip

    def bpb(model, mode: str, rows: int | None = None, strategy=st_lrt) -> float:
        i, t = (v_idx, v_tgt) if rows is None else (v_idx[:rows], v_tgt[:rows])
        nbytes = float(byte_len[t.clamp(min=0)].masked_fill(t < 0, 0).sum())
        model.eval()
        with torch.no_grad(), _autocast(dev):
            if mode == "sequential":  # static decoder: one CUDA graph replay per position
                from lrt.decode import sequential_losses

                nats = sequential_losses(model, i, t, static=dev.type == "cuda")
            else:
                nats = model.token_losses(i, t, mode, strategy)
        model.train()
        return float(nats.sum()) / (math.log(2) * nbytes)

    def batches(seed: int):
        # Contiguous shuffled windows. Not "bestfit": every Gutenberg book is one document of
        # ~1e5 tokens, and best-fit crops each document to the row, so it would train on the
        # first T tokens of each of the ~250 books only (the first run of this script did, and
        # memorised them).
        loader = DataLoader(data_dir / "tokens", "train", B, T, mode="contiguous", seed=seed)
        try:
            for x, y in loader:
                yield x.to(dev).long(), y.to(dev).long()
        finally:
            loader.close()

    class Trainer:
        def __init__(self, mcfg, st, total: int, seed: int = 0) -> None:
            self.model = _build(mcfg, dev, compile_model=False, seed=seed)
            self.opt = build_optimizer(self.model)
            self.st, self.total, self.step_i = st, total, 0
            self.data = batches(seed)  # the same batches for every model of one seed
            self.losses: list[float] = []
            self.fpt = accounting.flops_per_token(mcfg, st)

        def step(self) -> torch.Tensor:
            x, y = next(self.data)
            self.opt.set_schedule(
                lr_multiplier(self.step_i, self.total, warmdown_ratio=0.3),
                momentum=muon_momentum(self.step_i),
            )
            with _autocast(dev):
                out = self.model.forward_train(x, y, self.st)
            out.loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step_i += 1
            self.losses.append(float(out.position_loss.mean()))  # merged per-position loss
            return out.loss

    # Calibrate: a few steps of each to size the runs to the budget.
    cal: dict[str, float] = {}
    for name, mcfg, st in (("base", base_cfg, st_none), ("lrt", lrt_cfg, st_lrt)):
        tr = Trainer(mcfg, st, 1000)
        for _ in range(2):
            tr.step()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(4):
            tr.step()
        _sync(dev)
        cal[name] = (time.perf_counter() - t0) / 4
        # Warm every evaluation shape (compiles the flex kernel for them) and time it.
        t0 = time.perf_counter()
        bpb(tr.model, "init", q["curve_rows"])
        bpb(tr.model, "init")
        if mcfg.has_pathway:
            bpb(tr.model, "merged")
            bpb(tr.model, "merged", q["curve_rows"])
        cal[f"{name}_eval_warm_s"] = time.perf_counter() - t0
        # Sequential evaluation is token by token, after a one-off set-up (the static decoder's
        # warm-up and graph capture): time 16 and 32 positions, extrapolate to T.
        if mcfg.has_pathway or q["base_seq_check"]:
            rows_ = None if mcfg.has_pathway else q["curve_rows"]
            i_, t_ = (v_idx, v_tgt) if rows_ is None else (v_idx[:rows_], v_tgt[:rows_])
            from lrt.decode import sequential_losses

            took = {}
            for n_pos in (16, 32):
                _sync(dev)
                t0 = time.perf_counter()
                with torch.no_grad(), _autocast(dev):
                    sequential_losses(
                        tr.model, i_[:, :n_pos], t_[:, :n_pos], static=dev.type == "cuda"
                    )
                _sync(dev)
                took[n_pos] = time.perf_counter() - t0
            per_pos = max(0.0, (took[32] - took[16]) / 16)
            setup = max(0.0, took[16] - 16 * per_pos)
            cal[f"{name}_seq_eval_est_s"] = setup + per_pos * T
        del tr
    elapsed = time.perf_counter() - t_start
    seeds = q["seeds"]
    k = len(seeds)
    # Time left for training: budget minus evaluation (~8 % + a fixed allowance) and margin.
    # Per seed: baseline and LRT at equal tokens; the first seed also the matched baseline.
    eval_s = (
        (k + 1) * cal.get("base_seq_eval_est_s", 0.0)
        + k * cal.get("lrt_seq_eval_est_s", 0.0)
        + (k + 1) * cal["base_eval_warm_s"]
        + k * cal["lrt_eval_warm_s"]
    )
    cal["eval_est_s"] = eval_s
    train_s = max(0.0, (budget_s - elapsed - eval_s) * 0.85 - 10.0)
    per_n = k * (cal["base"] + cal["lrt"]) + cal["base"] * ratio
    n = int(min(q["max_steps"], max(q["min_steps"], train_s / per_n)))
    n_matched = int(round(n * ratio))
    part.put("plan", {"calibration_step_s": cal, "steps": n, "steps_matched": n_matched,
                      "seeds": seeds, "tokens_equal": n * B * T,
                      "tokens_matched": n_matched * B * T, "train_budget_s": train_s})  # fmt: skip

    curve_every = max(1, n // 5)
    results: dict[str, Any] = {}
    plan = []  # the first seed's runs keep the names of the single-seed version
    for j, seed in enumerate(seeds):
        tag = "" if j == 0 else f"_seed{seed}"
        plan += [(f"baseline{tag}", base_cfg, st_none, n, seed),
                 (f"lrt_interleaved2{tag}", lrt_cfg, st_lrt, n, seed)]  # fmt: skip
        if j == 0:
            plan.append(("baseline_matched_compute", base_cfg, st_none, n_matched, seed))
    for name, mcfg, st, steps, seed in plan:
        try:
            tr = Trainer(mcfg, st, steps, seed)
            curve = []
            t0 = time.perf_counter()
            for i in range(steps):
                tr.step()
                if (i + 1) % curve_every == 0 or i + 1 == steps:
                    tokens = (i + 1) * B * T
                    curve.append(
                        {
                            "step": i + 1,
                            "tokens": tokens,
                            "flops": tokens * tr.fpt,
                            "val_bpb_init_subset": bpb(tr.model, "init", q["curve_rows"]),
                            "train_loss": float(np.mean(tr.losses[-curve_every:])),
                        }
                    )
            _sync(dev)
            train_time = time.perf_counter() - t0
            r = {
                "seed": seed,
                "steps": steps,
                "tokens": steps * B * T,
                "flops": steps * B * T * tr.fpt,
                "train_s": train_time,
                "final_train_loss": float(np.mean(tr.losses[-max(1, steps // 10) :])),
                "curve": curve,
            }
            t0 = time.perf_counter()
            r["val_bpb_init"] = bpb(tr.model, "init")
            if mcfg.has_pathway:
                r["val_bpb_merged"] = bpb(tr.model, "merged")
                r["val_bpb_sequential"] = bpb(tr.model, "sequential")
                g = tr.model.pathway.gamma.detach().float()
                r["gamma"] = [round(float(v), 4) for v in g]
            elif q["base_seq_check"]:  # no recurrence: sequential decoding == init pass
                r["val_bpb_sequential"] = bpb(tr.model, "sequential", q["curve_rows"])
                r["val_bpb_init_same_rows"] = bpb(tr.model, "init", q["curve_rows"])
            r["eval_s"] = time.perf_counter() - t0
            results[name] = r
            part.put(f"run/{name}", r)
            del tr
        except Exception as exc:  # noqa: BLE001
            part.error(f"run/{name}", exc)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    b, lr_, m = (results.get(k) for k in ("baseline", "lrt_interleaved2",
                                          "baseline_matched_compute"))  # fmt: skip
    if b and lr_:
        summary = {
            "baseline_bpb": b["val_bpb_init"],
            "lrt_sequential_bpb": lr_.get("val_bpb_sequential"),
            "lrt_merged_bpb": lr_.get("val_bpb_merged"),
            "lrt_init_bpb": lr_.get("val_bpb_init"),
            "lrt_sequential_minus_baseline": lr_.get("val_bpb_sequential", math.nan)
            - b["val_bpb_init"],
        }
        if m:
            summary["baseline_matched_compute_bpb"] = m["val_bpb_init"]
            summary["lrt_sequential_minus_matched"] = (
                lr_.get("val_bpb_sequential", math.nan) - m["val_bpb_init"]
            )
        diffs = []  # LRT sequential - baseline at equal tokens, per seed with both runs
        for j, seed in enumerate(seeds):
            tag = "" if j == 0 else f"_seed{seed}"
            b_s, l_s = results.get(f"baseline{tag}"), results.get(f"lrt_interleaved2{tag}")
            if b_s and l_s and "val_bpb_sequential" in l_s:
                diffs.append(l_s["val_bpb_sequential"] - b_s["val_bpb_init"])
        summary["lrt_sequential_minus_baseline_per_seed"] = diffs
        if diffs:
            summary["lrt_sequential_minus_baseline_mean"] = float(np.mean(diffs))
        part.put("summary", summary)


def worker_pytest(part: Part, timeout: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_lrt_model.py",
           "tests/test_lrt_optim.py", "tests/test_static_decode.py",
           "-p", "no:cacheprovider"]  # fmt: skip
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        part.put("pytest", {"rc": out.returncode, "cmd": " ".join(cmd[1:]),
                            "tail": (out.stdout + out.stderr)[-3000:]})  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        part.error("pytest", exc)


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


# ---------------------------------------------------------------------------------------------
# Parent side (no torch)

# name, cap seconds, minimum useful seconds, seconds to keep for it while earlier ones run
SECTIONS = [
    ("env", 40, 10, 0),
    ("pytest", 90, 30, 0),
    ("decode", 150, 40, 0),
    ("train_compiled", 240, 60, 0),
    ("train_eager", 80, 30, 0),
    ("loader", 30, 10, 0),
    ("quality", 190, 60, 0),
]


def _run_worker(name: str, args: list[str], timeout: float, log) -> dict[str, Any]:
    """Run one worker in its own process group; kill the group at the timeout."""
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pipeline.benchmarks.gpu", "--worker", name, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(f"  {name}| {line}")
            sys.stdout.flush()
            log.write(f"{name}| {line}")
            log.flush()
            tail.append(line)
            del tail[:-40]

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    status = "ok"
    try:
        rc = proc.wait(timeout=timeout)
        if rc != 0:
            status = f"exit {rc}"
    except subprocess.TimeoutExpired:
        status = "timeout"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its compile workers only
        proc.wait()
    th.join(timeout=5)
    return {"status": status, "wall_s": round(time.time() - t0, 1), "timeout_s": round(timeout),
            "log_tail": "".join(tail[-15:]) if status != "ok" else ""}  # fmt: skip


def summarize(res: dict[str, Any]) -> str:
    s = res["sections"]
    lines = [f"device: {s.get('env', {}).get('env', {}).get('device', '?')}  "
             f"budget {res['budget_s']} s, used {res.get('elapsed_s', '?')} s"]  # fmt: skip

    def g(d, *keys):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    for sec in ("train_eager", "train_compiled"):
        runs = {k[4:]: v for k, v in s.get(sec, {}).items() if k.startswith("run/")}
        if not runs:
            continue
        ref = runs.get("baseline", {}).get("step_ms")
        lines.append(
            f"\n{sec}: {'run':<28}{'step ms':>9}{'x base':>8}{'MFU%':>7}{'mem GB':>8}{'opt ms':>8}"
        )
        for k, v in runs.items():
            if "error" in v:
                lines.append(f"  {k:<36} ERROR {v['error'][:80]}")
                continue
            rel = v["step_ms"] / ref if ref else float("nan")
            lines.append(
                f"  {k:<36}{v['step_ms']:>9.1f}{rel:>8.2f}{100 * v.get('mfu', 0):>7.1f}"
                f"{(v.get('peak_mem_gb') or 0):>8.2f}{v.get('optimizer_ms', float('nan')):>8.1f}"
            )
    for k, v in s.get("decode", {}).items():
        if "lrt_rel_throughput" in v:
            lines.append(
                f"{k}: base {v['baseline']['tokens_per_s']:.0f} tok/s, LRT "
                f"{v['lrt']['tokens_per_s']:.0f} tok/s, overhead {v['lrt_overhead_pct']:.1f} %"
            )
        elif "error" in v:
            lines.append(f"{k}: ERROR {v['error'][:80]}")
    for k, v in s.get("loader", {}).items():
        if "next_ms_median" in v:
            lines.append(f"{k}: next {v['next_ms_median']:.3f} ms, h2d {v['h2d_ms_median']:.3f} ms")
    for k, v in res.get("loader_share", {}).items():
        lines.append(
            f"loader share {k}: loader {v['loader_pct']:.2f} %, h2d {v['h2d_pct']:.2f} % "
            f"of a {v['step_ms']:.1f} ms step"
        )
    qs = g(s, "quality", "summary")
    if qs:

        def fmt(v: Any) -> str:
            return "[" + ", ".join(fmt(x) for x in v) + "]" if isinstance(v, list) else f"{v:.4f}"

        lines.append("quality (val BPB): " + ", ".join(f"{k}={fmt(v)}" for k, v in qs.items()))
    pt = g(s, "pytest", "pytest")
    if pt:
        lines.append(f"pytest rc={pt.get('rc')}: {pt.get('tail', '').strip().splitlines()[-1:]}")
    for name, meta in res["meta"].items():
        lines.append(f"section {name}: {meta['status']} ({meta.get('wall_s', 0)} s)")
    return "\n".join(lines)


def _loader_share(res: dict[str, Any]) -> dict[str, Any]:
    s = res["sections"]
    out = {}
    for sec in ("train_compiled", "train_eager"):
        step = s.get(sec, {}).get("run/baseline", {}).get("step_ms")
        if step:
            for mode in ("bestfit", "contiguous"):
                lo = s.get("loader", {}).get(f"loader/{mode}", {})
                if "next_ms_median" in lo:
                    out[f"{sec}/{mode}"] = {
                        "step_ms": step,
                        "loader_pct": 100 * lo["next_ms_median"] / step,
                        "h2d_pct": 100 * lo["h2d_ms_median"] / step,
                    }
    return out


def parent_main(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = Path(a.parts or "/tmp/lrt_gpu_parts")
    parts.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    res: dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        "smoke": a.smoke,
        "budget_s": a.budget,
        "commit": os.environ.get("LRT_COMMIT", ""),
        "sections": {},
        "meta": {},
    }
    only = set(a.only.split(",")) if a.only else None

    def write() -> None:
        res["elapsed_s"] = round(time.time() - t_start, 1)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(out / "results.json")

    write()
    with open(out / "run.log", "a") as log:
        for i, (name, cap, min_s, _) in enumerate(SECTIONS):
            if only is not None and name not in only:
                continue
            remaining = a.budget - (time.time() - t_start)
            later = sum(r for n, _, _, r in SECTIONS[i + 1 :] if only is None or n in only)
            if a.smoke:  # CPU smoke: a slow shared machine, no reservations
                timeout = min(cap * 3, remaining)
            else:
                timeout = min(cap, remaining - later)
            if timeout < min_s:
                res["meta"][name] = {"status": "skipped", "remaining_s": round(remaining),
                                     "reserved_for_later_s": later}  # fmt: skip
                print(f"== {name}: skipped (remaining {remaining:.0f} s)", flush=True)
                write()
                continue
            print(f"== {name}: timeout {timeout:.0f} s (remaining {remaining:.0f} s)", flush=True)
            part = parts / f"{name}.json"
            part.unlink(missing_ok=True)
            args = ["--part", str(part), "--data", a.data, "--worker-budget",
                    str(max(10.0, timeout - 15))]  # fmt: skip
            if a.smoke:
                args += ["--smoke", "--threads", "1"]
            if a.quick_quality:
                args += ["--quick-quality"]
            try:
                meta = _run_worker(name, args, timeout, log)
            except Exception as exc:  # noqa: BLE001
                meta = {"status": f"launch error: {exc!r}"}
            try:
                res["sections"][name] = json.loads(part.read_text()) if part.exists() else {}
            except Exception as exc:  # noqa: BLE001
                res["sections"][name] = {"error": f"unreadable part: {exc!r}"}
            res["meta"][name] = meta
            if name == "loader":
                res["loader_share"] = _loader_share(res)
            write()
        res["loader_share"] = _loader_share(res)
        write()
        table = summarize(res)
        (out / "summary.txt").write_text(table + "\n")
        print("\n" + table, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench/results/out"))
    p.add_argument("--data", default=str(REPO / ".gpu_data"))
    p.add_argument("--budget", type=float, default=420.0, help="wall-clock seconds in all")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, CPU (tests the script)")
    p.add_argument("--only", default=None, help="comma-separated sections to run")
    p.add_argument("--parts", default=None, help="scratch folder for the workers' files")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-budget", type=float, default=100.0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--quick-quality", action="store_true", help="smaller, shorter quality run")
    a = p.parse_args(argv)
    if a.worker:
        worker_main(a)
    else:
        parent_main(a)


if __name__ == "__main__":
    main()
