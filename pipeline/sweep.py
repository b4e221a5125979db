"""Compute sweep: tokens-per-parameter budgets x methods, trained and evaluated, for the report.

Each run trains a (tiny by default) model with `pipeline.train.loop.train` at a budget of R
training tokens per scaling parameter, evaluates it (`pipeline.evaluation.run.evaluate_model`
with light settings), and records its effective compute (training FLOPs, `lrt.accounting`)
next to its BPB and CORE. LRT's interleaved training costs about twice the baseline's FLOPs per
token, so the report compares methods both at equal R and at equal compute.

    >>> from pipeline.config.settings import load_settings
    >>> from pipeline.sweep import run_sweep
    >>> result = run_sweep(load_settings(), budgets=[0.5, 1.0])     # doctest: +SKIP

Writes `{report.out_dir}/sweep.json` (`{"runs": [...], "equal_compute": [...]}`, read by the
report's compute plot) and `{report.out_dir}/sweep.md`; run folders go to
`{train.out_dir}/sweep/<method>_tpp<R>/`. Needs the shards and tokenizer of the `tokenize`
stage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.25, 0.5)
"""Tokens per scaling parameter. Tiny on purpose: the default sweep takes a few CPU minutes."""

DEFAULT_METHODS: dict[str, dict[str, Any]] = {
    "baseline": {"model.pathway": "none", "strategy.name": "none"},
    "lrt_interleaved": {
        "model.pathway": "shared",
        "strategy.name": "interleaved",
        "strategy.subsets": 2,
    },
    "lrt_multi_refine": {
        "model.pathway": "shared",
        "strategy.name": "multi_refine",
        "strategy.refine_steps": 2,
    },
}
"""Method name -> `model.*` / `strategy.*` overrides (the format of `train.variants`)."""


@dataclass
class SweepOptions:
    """Overrides applied to every sweep run (on top of the project settings).

    Attributes:
        model: `model.*` overrides; the default is a CPU-sized model.
        train: `train.*` overrides (the budget fields are set per run).
        eval: `eval.*` overrides: a light evaluation (no ICL probes, no samples).
    """

    model: dict[str, Any] = field(
        default_factory=lambda: {"depth": 2, "n_embd": 64, "n_head": 2, "seq_len": 64}
    )
    train: dict[str, Any] = field(
        default_factory=lambda: {
            "total_batch_tokens": 1024,
            "device_batch_size": 8,
            "eval_every": 0,
            "checkpoint_every": 0,
            "warmup_ratio": 0.0,
        }
    )
    eval: dict[str, Any] = field(
        default_factory=lambda: {
            "bpb_max_tokens": 8192,
            "sequential_max_tokens": 2048,
            "core_max_items": 8,
            "icl_enabled": False,
            "samples_prompts": [],
            "modes": ["init", "merged", "sequential"],
        }
    )


def _method_overrides(
    settings: Any, methods: Sequence[str] | Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    if methods is None:
        return {k: dict(v) for k, v in DEFAULT_METHODS.items()}
    if isinstance(methods, Mapping):
        return {str(k): dict(v) for k, v in methods.items()}
    out = {}
    for name in methods:
        if name in DEFAULT_METHODS:
            out[name] = dict(DEFAULT_METHODS[name])
        elif name in settings.train.variants:
            out[name] = dict(settings.train.variants[name])
        else:
            known = sorted({*DEFAULT_METHODS, *settings.train.variants})
            raise ValueError(f"unknown sweep method {name!r}; known: {known}")
    return out


def _configs(
    settings: Any, overrides: Mapping[str, Any], model_over: Mapping[str, Any], vocab: int
):
    from pipeline.config.settings import ModelSettings, StrategySettings

    model = {**settings.model.model_dump(), **model_over}
    strategy = settings.strategy.model_dump()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        {"model": model, "strategy": strategy}[section][name] = value
    model_s = ModelSettings.model_validate(model)
    strategy_s = StrategySettings.model_validate(strategy)
    return model_s.to_config(vocab), strategy_s.to_config()


def interpolate_log(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """y at x by linear interpolation in log(x); None outside [min(xs), max(xs)].

    >>> interpolate_log([1.0, 100.0], [2.0, 1.0], 10.0)
    1.5
    """
    pts = sorted(
        (a, b) for a, b in zip(xs, ys, strict=True) if a > 0 and b is not None and math.isfinite(b)
    )
    if not pts or x < pts[0][0] * (1 - 1e-9) or x > pts[-1][0] * (1 + 1e-9):
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            if x1 == x0:
                return y0
            w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + w * (y1 - y0)
    return pts[0][1]


def equal_compute_table(
    records: Sequence[Mapping[str, Any]], baseline: str = "baseline"
) -> list[dict[str, Any]]:
    """Each non-baseline run next to the baseline's BPB at the same effective compute
    (interpolated in log compute across the baseline's budgets; None outside them)."""
    base = [r for r in records if r["method"] == baseline]
    xs = [r["effective_flops"] for r in base]
    ys = [r["val_bpb"] for r in base]
    rows = []
    for r in records:
        if r["method"] == baseline:
            continue
        at = interpolate_log(xs, ys, r["effective_flops"]) if base else None
        same_r = next(
            (b["val_bpb"] for b in base if b["tokens_per_param"] == r["tokens_per_param"]), None
        )
        rows.append(
            {
                "method": r["method"],
                "tokens_per_param": r["tokens_per_param"],
                "effective_flops": r["effective_flops"],
                "val_bpb": r["val_bpb"],
                "baseline_bpb_equal_compute": at,
                "delta_equal_compute": None if at is None else r["val_bpb"] - at,
                "baseline_bpb_equal_tokens": same_r,
                "delta_equal_tokens": None if same_r is None else r["val_bpb"] - same_r,
            }
        )
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def sweep_markdown(result: Mapping[str, Any]) -> str:
    """The runs and the equal-compute table as Markdown."""
    lines = [
        "# Compute sweep",
        "",
        "| method | tokens/param | eff. FLOPs | val BPB | CORE |",
        "|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['method']} | {_fmt(r['tokens_per_param'])} | {_fmt(r['effective_flops'])} "
            f"| {_fmt(r['val_bpb'])} | {_fmt(r.get('core'))} |"
        )
    lines += [
        "",
        "## At equal compute",
        "",
        "| method | tokens/param | eff. FLOPs | val BPB | baseline @ equal compute | delta "
        "| baseline @ equal tokens | delta |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["equal_compute"]:
        lines.append(
            "| "
            + " | ".join(
                _fmt(r[k])
                for k in (
                    "method",
                    "tokens_per_param",
                    "effective_flops",
                    "val_bpb",
                    "baseline_bpb_equal_compute",
                    "delta_equal_compute",
                    "baseline_bpb_equal_tokens",
                    "delta_equal_tokens",
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def run_sweep(
    settings: Any,
    budgets: Sequence[float] | None = None,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    *,
    options: SweepOptions | None = None,
    out_path: str | Path | None = None,
    match_compute: bool = True,
) -> dict[str, Any]:
    """Train and evaluate every (budget, method) pair; write sweep.json and sweep.md.

    Args:
        settings: `pipeline.config.settings.Settings` (data, tokenizer, model/strategy defaults, train
            and eval sections; `options` overrides parts of them).
        budgets: Training tokens per scaling parameter; None = `DEFAULT_BUDGETS`.
        methods: Names (from `DEFAULT_METHODS` or `train.variants`) or a mapping name ->
            overrides; None = `DEFAULT_METHODS`. Name the baseline "baseline" for the table.
        options: Model/train/eval overrides for every run; None = `SweepOptions()` (tiny).
        out_path: Where to write the JSON; None = `{report.out_dir}/sweep.json`.
        match_compute: Also train "baseline" at the budget where its effective compute reaches
            the most expensive other run (about 2x the largest budget for interleaved S=2), so
            every point has a baseline to compare with at equal compute.

    Returns:
        `{"runs": [record, ...], "equal_compute": [row, ...]}`; a record holds method,
        tokens_per_param, tokens, params, scaling_params, flops_per_token, effective_flops,
        val_bpb, bpb (per mode), core (sequential when present, else init) and the run folder.
    """
    import torch

    from lrt.accounting import effective_compute, flops_per_token
    from pipeline.atomic import atomic_write_json, atomic_write_text
    from pipeline.evaluation.run import evaluate_model, load_tokenizer
    from pipeline.train.checkpoint import load_model
    from pipeline.train.device import resolve_device
    from pipeline.train.loop import train

    opts = options or SweepOptions()
    budgets = list(budgets) if budgets is not None else list(DEFAULT_BUDGETS)
    method_over = _method_overrides(settings, methods)
    data_dir = Path(settings.tokenizer.out_dir)
    tokenizer = load_tokenizer(data_dir)
    token_bytes = tokenizer.token_byte_lengths()
    eval_s = settings.eval.model_copy(update=opts.eval)
    root = Path(settings.train.out_dir) / "sweep"
    configs = {
        name: _configs(settings, over, opts.model, tokenizer.vocab_size)
        for name, over in method_over.items()
    }
    device = resolve_device(settings.train.device)
    records: list[dict[str, Any]] = []

    def run_one(name: str, r: float) -> None:
        model_cfg, strategy_cfg = configs[name]
        train_s = settings.train.model_copy(
            update={**opts.train, "max_steps": None, "tokens_per_param": float(r)}
        )
        run_dir = root / f"{name}_tpp{r:g}"
        log.info("sweep: %s at %g tokens/param -> %s", name, r, run_dir)
        tm = train(
            model_cfg,
            strategy_cfg,
            train_s,
            data_dir,
            run_dir,
            token_bytes=token_bytes,
            tokenizer_hash=getattr(tokenizer, "hash", None),
            variant=f"{name}_tpp{r:g}",
            progress=False,
        )
        model, strategy, _ = load_model(run_dir / "model.pt", device=device)
        metrics, _, _ = evaluate_model(
            model,
            tokenizer,
            eval_s,
            data_dir=data_dir,
            strategy=strategy,
            batch_size=train_s.device_batch_size,
            device=device,
            progress=False,
        )
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        tokens = float(tm["tokens"])
        core = metrics.get("core", {})
        records.append(
            {
                "method": name,
                "group": name,
                "pathway": model_cfg.pathway,
                "strategy": strategy_cfg.name,
                "tokens_per_param": float(r),
                "tokens": tokens,
                "params": tm.get("params"),
                "scaling_params": tm.get("scaling_params"),
                "flops_per_token": tm.get("flops_per_token"),
                "effective_flops": effective_compute(model_cfg, strategy_cfg, tokens),
                "val_bpb": metrics["val_bpb"],
                "bpb": metrics["bpb"],
                "bpb_gap": metrics.get("bpb_gap"),
                "core": core.get("sequential", core.get("init")),
                "run_dir": str(run_dir),
            }
        )

    # baseline first: its scaling-parameter count sizes the matched-compute budget below
    for name in sorted(configs, key=lambda n: n != "baseline"):
        for r in budgets:
            run_one(name, r)
    others = [rec for rec in records if rec["method"] != "baseline"]
    base = [rec for rec in records if rec["method"] == "baseline"]
    if match_compute and base and others:
        # The budget whose (step-rounded) compute reaches the most expensive other run.
        batch = int(opts.train.get("total_batch_tokens", settings.train.total_batch_tokens))
        need = max(rec["effective_flops"] for rec in others) / flops_per_token(*configs["baseline"])
        steps = math.ceil(need / batch)
        extra = round((steps + 0.25) * batch / float(base[0]["scaling_params"]), 4)
        if extra > max(budgets):
            run_one("baseline", extra)
    records.sort(
        key=lambda rec: (rec["method"] != "baseline", rec["method"], rec["effective_flops"])
    )
    result = {"runs": records, "equal_compute": equal_compute_table(records)}
    out = Path(out_path) if out_path is not None else Path(settings.report.out_dir) / "sweep.json"
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), sweep_markdown(result))
    return result
