"""Run a study: every (arm, seed) cell, resumable; aggregate with paired statistics; write it.

Cells are stored one JSON file each under `<root>/cells/`, named by a hash of everything that
determines them (model config, strategy, steps, seed, scale, data recipe, learning rates), so
a killed run resumes at the first unfinished cell and the two studies share their common cells
(the baseline; `ours_shared` is the equivalence study's `interleaved_s2`). Cells run seed by
seed, so a partial run holds complete arms for its first seeds.

Outputs under `<root>/<study>[-quick]/`: `results.json`, `<study>.md`, `<study>.html` and
`figures/*.png`, each written to a temp file and renamed. MLflow (`pipeline.tracking`): one
parent run per invocation, one child per cell (cached cells are logged again, tagged).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lrt.accounting import flops_per_token, matched_tokens
from lrt.config import LRTConfig, StrategyConfig
from pipeline import tracking
from pipeline.atomic import atomic_write_text
from pipeline.study.arms import (
    ARM_SETS,
    COMPARISONS,
    Arm,
    check_arm,
    equivalence_arms,
    model_config,
    strategy_config,
)
from pipeline.study.cell import CellContext, Scale, run_cell
from pipeline.study.data import prepare_data
from pipeline.study.stats import paired_difference, summary

METRICS: dict[str, bool] = {
    # metric -> lower is better
    "val_bpb": True,
    "train_test_gap": True,
    "icl_gain": True,
    "synthetic_acc": False,
    "core": False,
}


def study_arms(kind: str, scale: Scale) -> list[Arm]:
    if kind not in ARM_SETS:
        raise ValueError(f"unknown study {kind!r}; choose from {sorted(ARM_SETS)}")
    return equivalence_arms(scale.chunk_size) if kind == "equivalence" else ARM_SETS[kind]()


def probe_name(strategy: dict[str, Any]) -> str | None:
    """The measurement probe (`cell.probe_strategies`) that is this training strategy."""
    name = strategy.get("name")
    if name == "interleaved":
        return f"interleaved_s{strategy.get('subsets', 2)}"
    if name == "multi_refine":
        return f"multi_refine_k{strategy.get('refine_steps', 1)}"
    if name == "chunked":
        return "chunked"
    return None


def cell_probes(arm: Arm) -> list[str] | None:
    """Probes measured in an arm's cells: all of them at the exact-trained (sequential)
    weights; elsewhere the arm's own strategy and interleaved S=2 (the paper's default)."""
    if arm.strategy.get("name") == "sequential":
        return None
    return list(dict.fromkeys(p for p in (probe_name(arm.strategy), "interleaved_s2") if p))


def cell_steps(arm: Arm, arms: Sequence[Arm], scale: Scale, base: dict[str, Any]) -> int:
    """The study's step budget, or the steps matching another arm's effective compute."""
    if arm.match_compute_of is None:
        return scale.steps
    ref = next(a for a in arms if a.name == arm.match_compute_of)
    tokens = scale.steps * scale.batch_size * scale.seq_len
    base_tokens = matched_tokens(
        model_config(arm, base), model_config(ref, base), strategy_config(ref), tokens
    )
    return max(1, round(base_tokens / (scale.batch_size * scale.seq_len)))


def cell_key(arm: Arm, seed: int, steps: int, ctx: CellContext) -> str:
    """Hash of what determines a cell (the number of seeds is not part of it, so more seeds
    reuse the cells of the first ones)."""
    scale = ctx.scale.to_dict()
    scale.pop("seeds")
    blob = {
        "model": arm.model,
        "strategy": arm.strategy,
        "steps": steps,
        "seed": seed,
        "probes": cell_probes(arm),
        "scale": scale,
        "data": ctx.data.recipe.get("key"),
        "optim": ctx.optim.to_dict(),
        "device_kind": ctx.device.type,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]


def git_commit(project_dir: Path | None = None) -> str | None:
    """HEAD of the checkout, or `LRT_STUDY_COMMIT` (a run from an exported snapshot)."""
    if os.environ.get("LRT_STUDY_COMMIT"):
        return os.environ["LRT_STUDY_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_dir or Path.cwd(),
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA)"
    return (
        f"{os.cpu_count()}-core CPU ({platform.machine()}), torch threads {torch.get_num_threads()}"
    )


# ---------------------------------------------------------------------------------------------
# Running


def run_cells(
    kind: str,
    ctx: CellContext,
    root: Path,
    seeds: Sequence[int],
    *,
    tracker: Any = None,
    only: Sequence[str] | None = None,
    log_cached: bool = True,
) -> tuple[list[Arm], dict[str, str], dict[str, dict[int, dict[str, Any]]]]:
    """Run (or load) every available cell; returns (arms, unavailable reasons, records).
    `log_cached`: also log cells loaded from disk to MLflow (tagged `lrt.study.cached`)."""
    base = ctx.scale.base_model(ctx.data.tokenizer.vocab_size)
    arms = study_arms(kind, ctx.scale)
    if only:
        unknown = set(only) - {a.name for a in arms}
        if unknown:
            raise ValueError(f"--arms {sorted(unknown)}: not arms of {kind}; see `--help`")
        arms = [a for a in arms if a.name in only or a.name == "baseline"]
    unavailable = {a.name: r for a in arms if (r := check_arm(a, base)) is not None}
    for name, why in unavailable.items():
        ctx.say(f"[study {kind}] arm {name}: {why}")
    todo = [a for a in arms if a.name not in unavailable]
    unavailable.update(
        {a.name: f"needs arm {a.match_compute_of}, {unavailable[a.match_compute_of]}"
         for a in todo if a.match_compute_of in unavailable}
    )  # fmt: skip
    todo = [a for a in todo if a.name not in unavailable]
    cells_dir = root / "cells"
    records: dict[str, dict[int, dict[str, Any]]] = {a.name: {} for a in todo}
    total, done = len(todo) * len(seeds), 0
    for seed in seeds:
        for arm in todo:
            steps = cell_steps(arm, todo, ctx.scale, base)
            key = cell_key(arm, seed, steps, ctx)
            path = cells_dir / f"{key}.json"
            cached = path.is_file()
            done += 1
            if cached:
                rec = json.loads(path.read_text(encoding="utf-8"))
                ctx.say(f"[study {kind}] {done}/{total} {arm.name} seed {seed}: cached")
            else:
                ctx.say(f"[study {kind}] {done}/{total} {arm.name} seed {seed}: {steps} steps")
                rec = run_cell(arm, seed, steps, ctx, cell_probes(arm))
                rec["key"] = key
                atomic_write_text(path, json.dumps(rec))
                sec = rec["seconds"]
                ctx.say(
                    f"[study {kind}]   val_bpb {rec['metrics']['val_bpb']:.4f} "
                    f"train {sec['train']:.0f}s measure {sec['measure']:.0f}s eval {sec['eval']:.0f}s"
                )
            records[arm.name][seed] = rec
            if log_cached or not cached:
                _log_cell(tracker, kind, arm, seed, rec, cached)
    return arms, unavailable, records


def _log_cell(tracker: Any, kind: str, arm: Arm, seed: int, rec: dict, cached: bool) -> None:
    if tracker is None or not tracker.enabled:
        return
    params = {
        "study": kind, "arm": arm.name, "seed": seed, "steps": rec["steps"],
        "tokens": rec["tokens"], "strategy": json.dumps(rec["strategy"]),
        "model": json.dumps(arm.model),
    }  # fmt: skip
    with tracker.stage("study", variant=f"{kind}/{arm.name}/seed{seed}", params=params):
        m = rec["metrics"]
        scalars = {k: m.get(k) for k in METRICS} | {
            f"bpb_{mode}": v for mode, v in m.get("bpb", {}).items()
        }
        tracking.log_metrics({k: v for k, v in scalars.items() if isinstance(v, int | float)})
        for i, loss in enumerate(rec["losses"]):
            if i % 10 == 0 or i == len(rec["losses"]) - 1:
                tracking.log_metrics({"train/loss": loss}, step=i)
        tracking.set_tags(
            {"lrt.study.cached": str(cached).lower(), "lrt.study.key": rec.get("key")}
        )


# ---------------------------------------------------------------------------------------------
# Aggregation


def _by_seed(records: dict[int, dict[str, Any]], metric: str) -> dict[int, float]:
    out = {}
    for seed, rec in records.items():
        v = rec["metrics"].get(metric)
        if isinstance(v, int | float) and math.isfinite(v):
            out[int(seed)] = float(v)
    return out


def _mean_lists(lists: list[list[float | None]]) -> list[float | None]:
    if not lists:
        return []
    n = min(len(x) for x in lists)
    out = []
    for i in range(n):
        vals = [x[i] for x in lists if x[i] is not None]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def _diag_summary(records: dict[int, dict[str, Any]], probe: str) -> list[dict[str, Any]]:
    """Per measurement point: mean/std over seeds of the probe's state and gradient gaps."""
    points: dict[int, list[dict[str, Any]]] = {}
    for rec in records.values():
        for k, d in enumerate(rec.get("diagnostics", [])):
            if probe in d["probes"]:
                points.setdefault(k, []).append({"step": d["step"], **d["probes"][probe]})
    out = []
    for k in sorted(points):
        ps = points[k]
        groups = sorted({g for p in ps for g in p["grad"]})
        out.append({
            "point": k,
            "step": ps[0]["step"],
            "n": len(ps),
            "state_rel_l2": summary([p["state"]["rel_l2_mean"] for p in ps]),
            "state_cos": summary([p["state"]["cos_mean"] for p in ps]),
            "state_rel_l2_by_pos": _mean_lists([p["state"]["rel_l2"] for p in ps]),
            "state_cos_by_pos": _mean_lists([p["state"]["cos"] for p in ps]),
            "grad_cos": {g: summary([p["grad"][g]["cos"] for p in ps if g in p["grad"]])
                         for g in groups},
            "grad_norm_ratio": {g: summary([p["grad"][g]["norm_ratio"] for p in ps
                                            if g in p["grad"]]) for g in groups},
        })  # fmt: skip
    return out


def _fpt(rec: dict[str, Any]) -> float:
    strategy = {k: v for k, v in rec["strategy"].items() if k != "loss_weights"}
    return flops_per_token(LRTConfig(**rec["model"]), StrategyConfig(**strategy))


def aggregate(
    kind: str,
    arms: Sequence[Arm],
    unavailable: dict[str, str],
    records: dict[str, dict[int, dict[str, Any]]],
    seeds: Sequence[int],
    scale: Scale,
) -> dict[str, Any]:
    """The study's results: per arm summaries, paired differences, measurements."""
    base_recs = records.get("baseline", {})
    out_arms, missing = [], []
    for arm in arms:
        entry: dict[str, Any] = {"name": arm.name, "label": arm.label, "arm": arm.to_dict()}
        if arm.name in unavailable:
            entry.update(available=False, reason=unavailable[arm.name])
            out_arms.append(entry)
            continue
        recs = records.get(arm.name, {})
        missing += [f"{arm.name}/seed{s}" for s in seeds if s not in recs]
        any_rec = next(iter(recs.values()), None)
        entry.update(available=True, seeds=sorted(int(s) for s in recs))
        if any_rec is None:
            out_arms.append(entry)
            continue
        # FLOPs from this build's accounting (not the cell's record, which an older build
        # may have written), so every arm of one table is counted alike
        fpt = _fpt(any_rec)
        base_fpt = _fpt(next(iter(base_recs.values()))) if base_recs else None
        entry.update(
            steps=any_rec["steps"],
            tokens=any_rec["tokens"],
            params=any_rec["params"],
            flops_per_token=fpt,
            flops_ratio=fpt / base_fpt if base_fpt else None,
            effective_compute=fpt * any_rec["tokens"],
            seconds=summary([r["seconds"]["train"] for r in recs.values()]),
        )
        entry["metrics"] = {
            m: {"per_seed": _by_seed(recs, m), **summary(list(_by_seed(recs, m).values()))}
            for m in METRICS
        }
        if arm.name != "baseline" and base_recs:
            entry["vs_baseline"] = {
                m: paired_difference(_by_seed(recs, m), _by_seed(base_recs, m), lower_is_better=lo)
                for m, lo in METRICS.items()
            }
        entry["bpb_modes"] = {
            mode: summary([r["metrics"]["bpb"].get(mode) for r in recs.values()])
            for mode in any_rec["metrics"]["bpb"]
        }
        entry["bpb_buckets"] = _mean_lists([r["metrics"]["bpb_buckets"] for r in recs.values()])
        entry["bucket_size"] = any_rec["metrics"]["bucket_size"]
        entry["loss_curve"] = _mean_lists([r["losses"] for r in recs.values()])
        entry["synthetic"] = {
            task: {n: summary([r["metrics"]["synthetic"][task][n]["acc"] for r in recs.values()])
                   for n in per_n}
            for task, per_n in any_rec["metrics"]["synthetic"].items()
        }  # fmt: skip
        probe = probe_name(arm.strategy)
        if arm.recurrent:
            entry["own_probe"] = probe
            entry["diagnostics"] = (
                {p: _diag_summary(recs, p) for p in any_rec["diagnostics"][0]["probes"]}
                if any_rec.get("diagnostics")
                else {}
            )
        out_arms.append(entry)
    comparisons = []
    for a, b in COMPARISONS.get(kind, []):
        if a in records and b in records:
            comparisons.append({
                "arm": a, "reference": b,
                **{m: paired_difference(_by_seed(records[a], m), _by_seed(records[b], m),
                                        lower_is_better=lo) for m, lo in METRICS.items()},
            })  # fmt: skip
        else:
            why = unavailable.get(a) or unavailable.get(b) or "not run"
            comparisons.append({"arm": a, "reference": b, "unavailable": why})
    return {
        "study": kind,
        "scale": scale.to_dict(),
        "seeds": list(seeds),
        "partial": bool(missing),
        "missing_cells": missing,
        "arms": out_arms,
        "comparisons": comparisons,
    }


# ---------------------------------------------------------------------------------------------
# Entry point


def run_study(
    kind: str,
    scale: Scale,
    *,
    root: str | Path,
    text_dir: str | Path,
    core_dir: str | Path | None,
    seeds: Sequence[int] | None = None,
    device: str = "auto",
    tracker: Any = None,
    only: Sequence[str] | None = None,
    say: Callable[[str], None] = print,
    command: str | None = None,
    log_cached: bool = True,
) -> Path:
    """Run the study `kind` ("equivalence" or "attribution") and write its outputs.

    Returns:
        The output folder (`<root>/<kind>` or `<root>/<kind>-quick`).
    """
    from pipeline.study.render import write_outputs

    root = Path(root)
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    core = Path(core_dir) if core_dir is not None and Path(core_dir).is_dir() else None
    if core_dir is not None and core is None:
        say(f"[study {kind}] CORE tasks folder {core_dir} not found: CORE skipped")
    data = prepare_data(
        text_dir, root / f"data-{scale.name}", vocab_size=scale.vocab_size,
        train_bytes=scale.train_bytes, val_bytes=scale.val_bytes,
    )  # fmt: skip
    ctx = CellContext(scale, data, dev, core, say=say)
    seeds = list(range(scale.seeds)) if seeds is None else list(seeds)
    started = _dt.datetime.now(_dt.UTC)
    with contextlib.ExitStack() as stack:
        if tracker is not None:
            stack.enter_context(tracker.pipeline(f"lrt-pipeline study {kind}"))
        arms, unavailable, records = run_cells(
            kind, ctx, root, seeds, tracker=tracker, only=only, log_cached=log_cached
        )
        result = aggregate(kind, arms, unavailable, records, seeds, scale)
        result["meta"] = {
            "command": command or " ".join(sys.argv),
            "commit": git_commit(),
            "machine": machine(),
            "device": str(dev),
            "started": started.isoformat(timespec="seconds"),
            "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "data": {k: v for k, v in data.recipe.items() if k != "sizes"},
            "core_dir": str(core) if core else None,
        }
        out = root / (kind if scale.name == "full" else f"{kind}-{scale.name}")
        write_outputs(result, out)
        if tracker is not None and tracker.enabled:
            with tracker.stage("study", variant=f"{kind}/summary"):
                tracking.log_artifact(out / "results.json")
                tracking.log_artifact(out / f"{kind}.md")
    return out


__all__ = ["aggregate", "run_cells", "run_study"]
