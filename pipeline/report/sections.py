"""The report's content, format-free: one `Section` per table or figure group, from the runs.

`build_sections` lays out the report (runs, headline vs baseline, loss and BPB curves, the
evaluation table, per-position BPB, CORE, samples, tokenizer stats, the compute sweep); each
`_*_section` builds one from `pipeline.report.data`'s readings and `pipeline.report.plots`'
figures, with cells formatted by `_fmt` (numbers) and `_delta` (signed differences, which the
HTML colours). `pipeline.report.render` turns the sections into HTML or Markdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.report.data import (
    COMPUTE_TOLERANCE,
    EVAL_BPB_LABEL,
    MODE_ORDER,
    NA,
    NOT_REACHED,
    TOKENS_TOLERANCE,
    TRAIN_BPB_LABEL,
    RunData,
    compare_to_baseline,
    eval_bpb_modes,
    eval_comparison,
    eval_scalars,
    flatten_dict,
    run_buckets,
    to_float,
)
from pipeline.report.plots import plot_bucket_diff, plot_buckets, plot_curves, plot_sweep
from pipeline.report.render import Section


def _fmt(v: Any) -> str:
    if v is None:
        return NA
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        v = int(v)
        return f"{v:.3e}" if abs(v) >= 1e9 else f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1e6 or (v != 0 and abs(v) < 1e-4):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def _round(v: float | None) -> int | None:
    return None if v is None else round(v)


def _delta(a: Any, b: Any) -> str:
    """Signed difference with a typographic minus (also how the HTML spots deltas to colour)."""
    if isinstance(a, float) and isinstance(b, float):
        return f"{a - b:+.4f}".replace("-", "\u2212")
    return "–"


def _tokenizer_section(stats: Any) -> Section:
    sec = Section("Tokenizer")
    if not isinstance(stats, Mapping):
        sec.text = f"Tokenizer stats: {NA} (expected the tokenize stage's stats.json)."
        return sec
    sec.headers = ["statistic", "value"]
    sec.rows = [[k, _fmt(v)] for k, v in flatten_dict(stats).items() if not isinstance(v, list)]
    sec.note = (
        "The tokenize stage's stats.json: the BPE's vocabulary and training sample, bytes per "
        "token, and the train/validation split packed into shards."
    )
    return sec


def build_sections(
    runs: Sequence[RunData], *, tokens_stats: Any = None, sweep: Sequence[Mapping] | None = None
) -> list[Section]:
    """The report's content, independent of the output format."""
    secs: list[Section] = [_runs_section(runs), _headline_section(runs)]
    secs += _curve_sections(runs)
    secs.append(_evaluation_section(runs))
    secs.append(_buckets_section(runs))
    secs.append(_core_section(runs))
    secs.append(_samples_section(runs))
    secs.append(_tokenizer_section(tokens_stats))
    if sweep:
        sw = Section("Compute sweep")
        png = plot_sweep(sweep)
        sw.images = [("sweep_compute", png)]
        core_png = plot_sweep(sweep, "core", "CORE (centred)")
        if core_png is not None:
            sw.images.append(("sweep_core_compute", core_png))
        if png is None:
            sw.text = f"Sweep plot: {NA} (records lack effective_flops / val_bpb)."
        else:
            sw.note = (
                "Each point is one sweep run (`lrt-pipeline sweep`): its evaluation BPB against "
                "its training FLOPs; at equal compute, the lower line is the better method."
            )
        secs.append(sw)
    return secs


def _runs_section(runs: Sequence[RunData]) -> Section:
    ov = Section("Runs")
    if not runs:
        ov.text = f"Training runs: {NA} (no runs/*/train_log.csv or metrics files found)."
        return ov
    ov.headers = [
        "variant",
        "pathway",
        "strategy",
        "params",
        "steps",
        "tokens",
        "eff. FLOPs",
        "final loss",
        f"{TRAIN_BPB_LABEL}",
        "tok/s",
        "MFU",
    ]
    ov.rows = []
    for r in runs:
        tm = r.train_metrics or {}
        mfu = r.final("mfu")
        ov.rows.append(
            [
                r.name,
                _fmt(r.pathway),
                _fmt(r.strategy),
                _fmt(to_float(tm.get("params"))),
                _fmt(None if r.final("step") is None else int(r.final("step"))),
                _fmt(r.final("tokens")),
                _fmt(r.final("effective_flops")),
                _fmt(r.final("loss")),
                _fmt(r.final("val_bpb")),
                _fmt(_round(r.final("tokens_per_s"))),
                NA if mfu is None else f"{100 * mfu:.1f}%",
            ]
        )
    ov.note = (
        f'One row per trained variant. "{TRAIN_BPB_LABEL}" is the training loop\'s periodic '
        "check: the zero-memory (init) pass on `train.eval_tokens` validation tokens. It draws "
        "the learning curves; it is not the number to compare models by, which is the "
        f'evaluation\'s "{EVAL_BPB_LABEL}" (exact token-by-token decoding with the memory, on '
        "the evaluation windows) in the next table."
    )
    return ov


def _headline_section(runs: Sequence[RunData]) -> Section:
    sec = Section("Headline: LRT vs baseline")
    bases = [r for r in runs if r.is_baseline and r.eval_bpb() is not None]
    others = [r for r in runs if not r.is_baseline and r.eval_bpb() is not None]
    if not bases or not others:
        sec.text = (
            f"Comparison: {NA} (needs an evaluated baseline, pathway 'none', and an evaluated "
            "LRT variant: `runs/<variant>/metrics.json`)."
        )
        return sec
    sec.headers = [
        "variant",
        "eff. FLOPs",
        EVAL_BPB_LABEL,
        "baseline @ equal tokens",
        "Δ",
        "baseline @ matched compute",
        "Δ",
    ]
    sec.rows = []
    for r in others:
        c = eval_comparison(r, bases)
        cells = [r.name, _fmt(r.final("effective_flops")), _fmt(c["val_bpb"])]
        for label in ("equal_tokens", "matched_compute"):
            m = c[label]
            if m is None:
                cells += [NOT_REACHED, "–"]
            else:
                cells += [
                    f"{_fmt(m['val_bpb'])} ({m['baseline']}, {m['ratio']:.2f}x)",
                    _delta(c["val_bpb"], m["val_bpb"]),
                ]
        sec.rows.append(cells)
    sec.note = (
        f"Each LRT variant's {EVAL_BPB_LABEL} against a baseline variant's, both from the eval "
        "stage on the same validation windows; Δ < 0 means the LRT is better. Equal tokens: the "
        f"baseline trained on the same tokens (within {TOKENS_TOLERANCE:.2f}x); matched compute: "
        "the baseline whose training FLOPs are closest to the LRT's (within "
        f"{COMPUTE_TOLERANCE:.2f}x; the ratio is shown), e.g. a `baseline_2x` variant trained "
        f"about twice as long. '{NOT_REACHED}': no baseline variant was trained that far; add "
        "one to `train.variants`."
    )
    return sec


def _curve_sections(runs: Sequence[RunData]) -> list[Section]:
    tr = Section("Training loss")
    tr.images = [
        (
            "loss_vs_tokens",
            plot_curves(
                runs,
                "log",
                "tokens",
                "loss",
                xlabel="training tokens",
                ylabel="train loss (nats/token, EMA)",
                title="Training loss vs tokens",
                smooth=True,
            ),
        ),
        (
            "loss_vs_compute",
            plot_curves(
                runs,
                "log",
                "effective_flops",
                "loss",
                xlabel="effective training compute (FLOPs)",
                ylabel="train loss (nats/token, EMA)",
                title="Training loss vs effective compute",
                logx=True,
                smooth=True,
            ),
        ),
    ]
    tr.note = (
        "Training loss (the strategy's objective, smoothed) against tokens and against training "
        "FLOPs; the LRT's interleaved passes cost about 2x per token, so the right-hand plot is "
        "the fair one."
    )
    va = Section(f"Learning curves: {TRAIN_BPB_LABEL}")
    va.images = [
        (
            "val_bpb_vs_tokens",
            plot_curves(
                runs,
                "val",
                "tokens",
                "val_bpb",
                xlabel="training tokens",
                ylabel=TRAIN_BPB_LABEL,
                title="Validation BPB vs tokens",
            ),
        ),
        (
            "val_bpb_vs_compute",
            plot_curves(
                runs,
                "val",
                "effective_flops",
                "val_bpb",
                xlabel="effective training compute (FLOPs)",
                ylabel=TRAIN_BPB_LABEL,
                title="Validation BPB vs effective compute",
                logx=True,
            ),
        ),
    ]
    bases = [r for r in runs if r.is_baseline]
    others = [r for r in runs if not r.is_baseline]
    if bases and others:
        base = bases[0]
        va.headers = [
            "variant",
            "tokens",
            "eff. FLOPs",
            TRAIN_BPB_LABEL,
            f"{base.name} curve @ equal tokens",
            "Δ",
            f"{base.name} curve @ matched compute",
            "Δ",
        ]
        va.rows = []
        for r in others:
            c = compare_to_baseline(r, base)
            va.rows.append(
                [
                    r.name,
                    _fmt(c["tokens"]),
                    _fmt(c["effective_flops"]),
                    _fmt(c["val_bpb"]),
                    _fmt(c["equal_tokens"]),
                    _delta(c["val_bpb"], c["equal_tokens"]),
                    _fmt(c["matched_compute"]),
                    _delta(c["val_bpb"], c["matched_compute"]),
                ]
            )
    va.note = (
        "The training loop's zero-memory check along training. The table "
        f"reads `{bases[0].name if bases else 'the baseline'}`'s curve, linearly interpolated, "
        "at each LRT run's final tokens and final training FLOPs; "
        f"'{NOT_REACHED}' means that curve ends earlier. The LRT's memory is off in this check, "
        "so the headline table above is the comparison that counts."
    )
    return [tr, va]


def _evaluation_section(runs: Sequence[RunData]) -> Section:
    """One row per metric, one column per variant (scales with many metrics)."""
    ev = Section("Evaluation")
    modes: list[str] = []
    scalars: list[str] = []
    for r in runs:
        modes += [m for m in eval_bpb_modes(r.eval_metrics) if m not in modes]
        scalars += [k for k in eval_scalars(r.eval_metrics) if k not in scalars]
    mode_rank = {m: i for i, m in enumerate(MODE_ORDER)}
    modes.sort(key=lambda m: (mode_rank.get(m, len(mode_rank)), m))
    group = ("bpb_gap", "core", "icl_gain", "icl_acc")
    scalars.sort(
        key=lambda k: (next((i for i, g in enumerate(group) if k.startswith(g)), len(group)), k)
    )
    evaluated = [r for r in runs if r.eval_metrics]
    if not (modes or scalars):
        ev.text = f"Evaluation metrics: {NA} (no metrics.json from the eval stage)."
        return ev
    ev.headers = ["metric"] + [r.name for r in evaluated]
    ev.rows = []
    for m in modes:
        label = EVAL_BPB_LABEL if m == "sequential" else f"BPB {m}"
        ev.rows.append([label] + [_fmt(eval_bpb_modes(r.eval_metrics).get(m)) for r in evaluated])
    for k in scalars:
        ev.rows.append([k] + [_fmt(eval_scalars(r.eval_metrics).get(k)) for r in evaluated])
    ev.note = (
        "Each variant's `metrics.json` (eval stage), all modes on the same validation windows. "
        f"{EVAL_BPB_LABEL} = exact token-by-token decoding with the memory, what a user gets "
        "(a baseline's is its one pass); BPB init = the LRT with zero memory; merged / refine = "
        "the training strategy's parallel passes. bpb_gap.merged = merged minus sequential, the "
        "train/test gap of parallel training (near 0: the approximation holds). core = CORE "
        "(centred accuracy, 0 = chance); icl_gain = late minus early loss along the context "
        "(more negative: more use of context); icl_acc = synthetic recall accuracy."
    )
    return ev


def _buckets_section(runs: Sequence[RunData]) -> Section:
    pb = Section("Per-position BPB")
    bases = [r for r in runs if r.is_baseline and run_buckets(r)]
    others = [r for r in runs if not r.is_baseline and run_buckets(r)]
    png = plot_bucket_diff(others, bases[0]) if bases and others else None
    if png is not None:
        pb.title = f"Per-position BPB: difference from {bases[0].name}"
        pb.images = [("bpb_buckets", png)]
        pb.note = (
            f"Each LRT variant's BPB by position in the context window minus `{bases[0].name}`'s "
            "at the same positions (below 0: the LRT is better there), for its zero-memory and "
            "exact-decoding modes. The memory should help most where a token has little "
            "context; a gap that grows along the window would show the parallel approximation "
            "drifting."
        )
        return pb
    png = plot_buckets(runs)
    if png is None:
        pb.text = f"Per-position BPB buckets: {NA}."
    else:
        pb.images = [("bpb_buckets", png)]
        pb.note = "Validation BPB by position in the context window (no baseline to subtract)."
    return pb


def _core_section(runs: Sequence[RunData]) -> Section:
    sec = Section("CORE")
    evaluated = [r for r in runs if r.eval_metrics is not None]
    if not evaluated:
        sec.text = f"CORE: {NA} (no evaluation)."
        return sec
    sec.headers = ["variant", "CORE init", "CORE sequential", "status"]
    sec.rows = []
    for r in evaluated:
        core = (r.eval_metrics or {}).get("core") or {}
        status = (r.details or {}).get("core_status") or {}
        message = status.get("message")
        if message is None:
            message = "scored" if core else "CORE skipped (no status recorded)"
        sec.rows.append(
            [
                r.name,
                _fmt(to_float(core.get("init"))),
                _fmt(to_float(core.get("sequential"))),
                message,
            ]
        )
    skipped = [r for r in sec.rows if r[1] == NA]
    sec.note = (
        "CORE (DCLM's in-context suite as nanochat scores it): mean centred accuracy over the "
        "tasks, 0 = chance, 1 = perfect; `eval.core_max_items` items per task. init = zero "
        "memory, sequential = with the recurrent memory. "
        + (
            "CORE was skipped: the status says why and what to run."
            if skipped
            else "Tiny models score near 0; see the synthetic ICL rows above."
        )
    )
    return sec


def _samples_section(runs: Sequence[RunData], width: int = 90) -> Section:
    sec = Section("Samples")
    rows = []
    for r in runs:
        for s in r.samples or []:
            text = str(s.get("completion", "")).replace("\n", "\u23ce")
            if len(text) > width:
                text = text[: width - 1] + "\u2026"
            rows.append([r.name, repr(str(s.get("prompt", ""))), text])
    if not rows:
        sec.text = f"Samples: {NA} (no samples.json from the eval stage)."
        return sec
    sec.headers = ["variant", "prompt", "completion"]
    sec.rows = rows
    temps = {s.get("temperature") for r in runs for s in r.samples or []}
    how = "greedy" if temps == {0.0} else f"temperature {', '.join(map(str, sorted(temps)))}"
    sec.note = (
        f"Continuations of `eval.samples_prompts` ({how}, exact decoding with the memory; "
        "\u23ce = newline), to eyeball what each variant has learnt."
    )
    return sec
