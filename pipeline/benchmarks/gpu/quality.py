"""The `quality` section: small models trained on the packed Gutenberg shards (`.gpu_data`),
baseline vs LRT at equal tokens and the baseline at matched compute, per seed, sized to the
budget; validation BPB in init / merged / sequential modes.

Optimizer: nanochat's recipe (`lrt.optim.OptimizerRecipe`: Polar Express Muon with variance
reduction and cautious weight decay 0.2 linear to 0, embedding lr 0.3, scalar lr 0.5,
warm-down 0.5, momentum 0.85 -> 0.95) without its batch and depth scaling: at these batches
(16k tokens) sqrt(B / 2^19) would cut every lr ~6x, and (12 / depth)^2 would raise the weight
decay 4-9x at depth 4-6 (the demo's params.yaml turns both off for the same reason).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from pipeline.benchmarks.device import autocast, build_model, default_device, sync
from pipeline.benchmarks.gpu.part import Part


def worker_quality(part: Part, cfg: dict[str, Any], data_dir: Path, budget_s: float) -> None:
    """Baseline vs LRT (shared, interleaved S=2) on Gutenberg; BPB in every mode."""
    import numpy as np
    import torch

    from lrt import accounting
    from lrt.config import LRTConfig, StrategyConfig
    from lrt.optim import OptimizerRecipe
    from pipeline.data.loader import DataLoader

    t_start = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = default_device()
    q = cfg["quality"]
    base_cfg = LRTConfig(**q["model"])
    lrt_cfg = LRTConfig(pathway="shared", **q["model"])
    st_lrt = StrategyConfig(name="interleaved", subsets=2)
    st_none = StrategyConfig()
    recipe = OptimizerRecipe(reference_batch_tokens=None, reference_depth=None)
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
            "optimizer": "OptimizerRecipe(reference_batch_tokens=None, reference_depth=None)",
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
        with torch.no_grad(), autocast(dev):
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
            self.model = build_model(mcfg, dev, compile_model=False, seed=seed)
            self.opt = recipe.build(self.model, B * T)
            self.st, self.total, self.step_i = st, total, 0
            self.data = batches(seed)  # the same batches for every model of one seed
            self.losses: list[float] = []
            self.fpt = accounting.flops_per_token(mcfg, st)

        def step(self) -> torch.Tensor:
            x, y = next(self.data)
            lr, momentum, wd = recipe.schedule(self.step_i, self.total)
            self.opt.set_schedule(lr, momentum=momentum, wd_mult=wd)
            with autocast(dev):
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
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(4):
            tr.step()
        sync(dev)
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
                sync(dev)
                t0 = time.perf_counter()
                with torch.no_grad(), autocast(dev):
                    sequential_losses(
                        tr.model, i_[:, :n_pos], t_[:, :n_pos], static=dev.type == "cuda"
                    )
                sync(dev)
                took[n_pos] = time.perf_counter() - t0
            per_pos = max(0.0, (took[32] - took[16]) / 16)
            setup = max(0.0, took[16] - 16 * per_pos)
            cal[f"{name}_seq_eval_est_s"] = setup + per_pos * T
        del tr
    elapsed = time.perf_counter() - t_start
    seeds = q["seeds"]
    k = len(seeds)
    # Time left for training: budget minus evaluation (~8 % + a fixed allowance) and margin.
    # Per seed: baseline and LRT at equal tokens, and the baseline at matched compute.
    eval_s = (
        2 * k * cal.get("base_seq_eval_est_s", 0.0)
        + k * cal.get("lrt_seq_eval_est_s", 0.0)
        + 2 * k * cal["base_eval_warm_s"]
        + k * cal["lrt_eval_warm_s"]
    )
    cal["eval_est_s"] = eval_s
    train_s = max(0.0, (budget_s - elapsed - eval_s) * 0.85 - 10.0)
    per_n = k * (cal["base"] + cal["lrt"] + cal["base"] * ratio)
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
                 (f"lrt_interleaved2{tag}", lrt_cfg, st_lrt, n, seed),
                 (f"baseline_matched_compute{tag}", base_cfg, st_none, n_matched, seed)]  # fmt: skip
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
            sync(dev)
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
        # LRT sequential - baseline at equal tokens / at matched compute, per seed with both runs
        for ref, key in (("baseline", "baseline"), ("baseline_matched_compute", "matched")):
            diffs = []
            for j, seed in enumerate(seeds):
                tag = "" if j == 0 else f"_seed{seed}"
                b_s, l_s = results.get(f"{ref}{tag}"), results.get(f"lrt_interleaved2{tag}")
                if b_s and l_s and "val_bpb_sequential" in l_s:
                    diffs.append(l_s["val_bpb_sequential"] - b_s["val_bpb_init"])
            summary[f"lrt_sequential_minus_{key}_per_seed"] = diffs
            if diffs:
                summary[f"lrt_sequential_minus_{key}_mean"] = float(np.mean(diffs))
        part.put("summary", summary)
