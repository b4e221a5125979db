"""Report stage: `reports/report.md` + a self-contained `reports/report.html` from metrics files.

Reads only files other stages wrote (never a model): every `runs/<variant>/train_log.csv` (and
`val_log.csv`, `train_metrics.json`) from training, `metrics.json`, `eval_details.json` (per-
position buckets, CORE status) and `samples.json` from evaluation, the tokenizer stats
`data/tokens/stats.json`, and optional sweep results. Any missing input becomes a "not
available" line instead of an error. Plots are matplotlib (Agg) PNGs, inlined as base64 in the
HTML and written to `reports/figures/` for the Markdown and DVC; `reports/headline.json` (DVC
metrics) and `reports/*_curves.csv` (DVC's vega-lite overlays) are written beside them.

Modules: `pipeline.report.data` (inputs and comparisons), `pipeline.report.plots` (figures),
`pipeline.report.sections` (the report's content as `Section`s), `pipeline.report.render` (the
`Section` type, HTML and Markdown), this one (writing the files, the stage, the MLflow parent);
names of the first two are re-exported here.

    >>> from pipeline.report.build import render_report
    >>> render_report("runs", "reports", tokens_stats="data/tokens/stats.json")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_bytes, atomic_write_text
from pipeline.report.data import (  # noqa: F401 - re-exported: `pipeline.report.build` is the public API
    COMPUTE_TOLERANCE,
    CURVE_FILES,
    EVAL_BPB_LABEL,
    HEADLINE_FILE,
    MODE_ORDER,
    NA,
    NOT_REACHED,
    TOKENS_TOLERANCE,
    TRAIN_BPB_LABEL,
    RunData,
    compare_to_baseline,
    eval_bpb_modes,
    eval_buckets,
    eval_comparison,
    eval_scalars,
    flatten_dict,
    headline_deltas,
    headline_metrics,
    interpolate_at,
    read_csv_columns,
    read_json,
    read_sweep,
    run_buckets,
    summary_table,
    to_float,
    write_curves,
)
from pipeline.report.plots import (  # noqa: F401 - re-exported
    DVC_FIGURES,
    PALETTE,
    placeholder_png,
    plot_bucket_diff,
    plot_buckets,
    plot_curves,
    plot_sweep,
    pyplot,
)
from pipeline.report.render import (
    render_html,
    render_markdown,
)
from pipeline.report.sections import build_sections


def load_runs(runs_dir: str | Path, eval_dir: str | Path | None = None) -> list[RunData]:
    """`pipeline.report.data.load_runs` without hidden subfolders: a failed or running train
    or eval leaves its staging folder (`runs/.VARIANT.partial`, `.VARIANT.new-*`) in `runs/`,
    which is not a variant."""
    from pipeline.report import data as report_data

    return [r for r in report_data.load_runs(runs_dir, eval_dir) if not r.name.startswith(".")]


def render_report(
    runs_dir: str | Path,
    out_dir: str | Path,
    *,
    eval_dir: str | Path | None = None,
    tokens_stats: str | Path | None = None,
    sweep: str | Path | None = None,
    title: str = "Latent Recurrent Transformer — experiment report",
) -> Path:
    """Write `out_dir/report.md`, `out_dir/report.html` and `out_dir/figures/*.png`.

    Args:
        runs_dir: Folder with one subfolder per variant (train_log.csv, train_metrics.json, ...).
        out_dir: Output folder (created).
        eval_dir: Optional folder with `<variant>/metrics.json` from evaluation.
        tokens_stats: Tokenizer/packing stats JSON (the tokenize stage's stats.json).
        sweep: Optional sweep results (JSON list of records or CSV).
        title: Report title.

    Returns:
        Path of report.html.
    """
    out_dir = Path(out_dir)
    runs = load_runs(runs_dir, eval_dir)
    stats = read_json(Path(tokens_stats)) if tokens_stats else None
    sections = build_sections(
        runs, tokens_stats=stats, sweep=read_sweep(Path(sweep) if sweep else None)
    )
    write_curves(runs, out_dir)
    atomic_write_text(out_dir / HEADLINE_FILE, json.dumps(headline_metrics(runs), indent=2) + "\n")
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"Generated {now} from {Path(runs_dir)} ({len(runs)} run{'s' * (len(runs) != 1)})"
    fig_dir = out_dir / "figures"
    written = set()
    for sec in sections:
        for name, png in sec.images:
            if png is not None:
                atomic_write_bytes(fig_dir / f"{name}.png", png)
                written.add(name)
    for name in DVC_FIGURES:  # declared DVC plots must exist even with nothing to draw
        if name not in written:
            atomic_write_bytes(fig_dir / f"{name}.png", placeholder_png(name))
    atomic_write_text(out_dir / "report.md", render_markdown(sections, title, meta, "figures"))
    return atomic_write_text(out_dir / "report.html", render_html(sections, title, meta))


class ReportError(FileNotFoundError):
    """Nothing to report: no run folder holds a training log or metrics file."""


def build_report(settings: Any) -> Path:
    """Report stage: runs from `train.out_dir`, tokenizer stats from `tokenizer.out_dir`, sweep
    results from `report.out_dir/sweep.json`; writes into `report.out_dir`.

    Args:
        settings: `pipeline.config.settings.Settings`.

    Returns:
        Path of report.html.

    Raises:
        ReportError: no run in `train.out_dir` (the stage exits non-zero rather than writing an
            empty report).
    """
    out_dir = Path(settings.report.out_dir)
    if not load_runs(settings.train.out_dir):
        raise ReportError(
            f"no runs in {settings.train.out_dir} (train.out_dir): nothing to report; train and "
            "evaluate first (`dvc repro`, or `lrt-pipeline run`)"
        )
    path = render_report(
        settings.train.out_dir,
        out_dir,
        tokens_stats=Path(settings.tokenizer.out_dir) / "stats.json",
        sweep=out_dir / "sweep.json",
    )
    _log_parent(settings, load_runs(settings.train.out_dir))
    return path


def _log_parent(settings: Any, runs: Sequence[RunData]) -> None:
    """Headline deltas vs baseline and what each variant is, on the MLflow parent run (a no-op
    without an active stage run)."""
    from pipeline import tracking

    variants = {}
    for r in runs:
        variants[r.name] = f"pathway={r.pathway}, strategy={r.strategy}"
    tracking.log_to_parent(
        metrics=headline_deltas(runs),
        params={"variants": variants, "report.out_dir": str(settings.report.out_dir)},
    )
