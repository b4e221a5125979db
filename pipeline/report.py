"""Report stage: `reports/report.md` + a self-contained `reports/report.html` from metrics files.

Reads only files other stages wrote (never a model): every `runs/<variant>/train_log.csv` (and
`val_log.csv`, `train_metrics.json`) from training, `metrics.json` from evaluation (BPB per mode,
per-position buckets, CORE, ICL), the tokenizer stats `data/tokens/stats.json`, and optional sweep
results. Any missing input becomes a "not available" line instead of an error. Plots are matplotlib
(Agg) PNGs, inlined as base64 in the HTML and written to `reports/figures/` for the Markdown.

    >>> from pipeline.report import render_report
    >>> render_report("runs", "reports", tokens_stats="data/tokens/stats.json")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checkpoint import atomic_write_bytes, atomic_write_text

NA = "not available"
NOT_REACHED = "not reached"
# Modes the evaluation stage may report, in display order; unknown modes are appended.
MODE_ORDER = ("init", "merged", "refine", "sequential")
TRAIN_BPB_LABEL = "val BPB (training check)"
"""The training loop's periodic zero-memory pass on `train.eval_tokens` (learning curves)."""
EVAL_BPB_LABEL = "BPB (exact decoding)"
"""The eval stage's sequential BPB: token by token with the memory, what a user gets."""
TOKENS_TOLERANCE = 1.05
COMPUTE_TOLERANCE = 1.25
"""A baseline variant within this factor of an LRT's tokens / training FLOPs counts as equal
tokens / matched compute."""
PALETTE = ["#1f4e79", "#c0392b", "#2e8b57", "#8e44ad", "#d68910", "#17a589", "#7f8c8d", "#e67e22"]


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class RunData:
    """Everything the report knows about one variant (any field may be missing)."""

    name: str
    log: dict[str, np.ndarray] | None = None  # train_log.csv columns (NaN where empty)
    val: dict[str, np.ndarray] | None = None  # val_log.csv columns, or val rows of the log
    train_metrics: dict[str, Any] | None = None
    eval_metrics: dict[str, Any] | None = None
    details: dict[str, Any] | None = None  # eval_details.json
    samples: list[dict[str, Any]] | None = None  # samples.json
    notes: list[str] = field(default_factory=list)

    @property
    def pathway(self) -> str | None:
        cfg = (self.train_metrics or {}).get("config", {}).get("model", {})
        return cfg.get("pathway")

    @property
    def is_baseline(self) -> bool:
        if self.pathway is not None:
            return self.pathway == "none"
        return "baseline" in self.name.lower()

    @property
    def strategy(self) -> str | None:
        return (self.train_metrics or {}).get("config", {}).get("strategy", {}).get("name")

    def eval_bpb(self) -> float | None:
        """The evaluation's headline BPB: exact decoding (`val_bpb` of metrics.json)."""
        return _num((self.eval_metrics or {}).get("val_bpb"))

    def final(self, key: str) -> float | None:
        """Last finite value of a train-log column (falls back to train_metrics.json)."""
        if key in (self.train_metrics or {}) and _num(self.train_metrics[key]) is not None:
            return _num(self.train_metrics[key])
        for table in (self.log, self.val):
            if table and key in table:
                vals = table[key][np.isfinite(table[key])]
                if len(vals):
                    return float(vals[-1])
        return None


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_csv_columns(path: Path) -> dict[str, np.ndarray] | None:
    """CSV with a header -> {column: float array}; empty/non-numeric cells become NaN."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    cols = {}
    for key in rows[0]:
        vals = [_num(r.get(key)) for r in rows]
        cols[key] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    return cols


def _read_json(path: Path | None) -> Any:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_runs(runs_dir: str | Path, eval_dir: str | Path | None = None) -> list[RunData]:
    """One `RunData` per subfolder of `runs_dir` that holds any known metrics file.

    `metrics.json` is looked up in `runs/<variant>/` and, when given, `eval_dir/<variant>/`.
    """
    runs_dir = Path(runs_dir)
    runs: list[RunData] = []
    if not runs_dir.is_dir():
        return runs
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        run = RunData(d.name)
        run.log = read_csv_columns(d / "train_log.csv")
        run.val = read_csv_columns(d / "val_log.csv")
        if run.val is None and run.log is not None and "val_bpb" in run.log:
            mask = np.isfinite(run.log["val_bpb"])
            if mask.any():
                run.val = {k: v[mask] for k, v in run.log.items()}
        run.train_metrics = _read_json(d / "train_metrics.json")
        candidates = [d / "metrics.json"]
        if eval_dir is not None:
            candidates.insert(0, Path(eval_dir) / d.name / "metrics.json")
        for c in candidates:
            run.eval_metrics = _read_json(c)
            if run.eval_metrics is not None:
                details = _read_json(c.with_name("eval_details.json"))
                run.details = details if isinstance(details, dict) else None
                samples = _read_json(c.with_name("samples.json"))
                run.samples = samples if isinstance(samples, list) else None
                break
        if any(x is not None for x in (run.log, run.val, run.train_metrics, run.eval_metrics)):
            runs.append(run)
    return runs


def eval_bpb_modes(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """{mode: bpb} from an eval `metrics.json` (accepts `{"bpb": {mode: x}}` or `bpb_<mode>` keys)."""
    if not metrics:
        return {}
    out: dict[str, float] = {}
    bpb = metrics.get("bpb")
    if isinstance(bpb, Mapping):
        for k, v in bpb.items():
            if isinstance(v, Mapping):  # {"init": {"bpb": x, ...}}
                v = v.get("bpb")
            if _num(v) is not None:
                out[str(k)] = _num(v)
    elif _num(bpb) is not None:
        out["init"] = _num(bpb)
    for k, v in metrics.items():
        m = re.fullmatch(r"(?:val_)?bpb[_/](\w+)", str(k))
        if m and m.group(1) != "buckets" and _num(v) is not None:
            out.setdefault(m.group(1), _num(v))
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def eval_buckets(metrics: Mapping[str, Any] | None) -> dict[str, tuple[list[str], list[float]]]:
    """Per-position BPB buckets as {mode: (labels, bpb)} from the many shapes eval may write.

    Accepted: `{"edges": [...], "bpb": [...]}` (optionally per mode), `{label: bpb}`,
    `{mode: {label: bpb}}`, or a list of `{"start"|"lo", "end"|"hi", "bpb"}` records.
    """
    raw = (metrics or {}).get("bpb_buckets")
    if not raw:
        return {}

    def one(obj: Any) -> tuple[list[str], list[float]] | None:
        if isinstance(obj, Mapping) and "bpb" in obj and isinstance(obj["bpb"], Sequence):
            vals = [float(v) for v in obj["bpb"]]
            edges = obj.get("edges") or obj.get("bounds")
            labels = obj.get("labels")
            if labels is None and edges is not None and len(edges) == len(vals) + 1:
                labels = [f"{int(edges[i])}-{int(edges[i + 1]) - 1}" for i in range(len(vals))]
            if labels is None and edges is not None and len(edges) == len(vals):
                labels = [f"{int(e)}+" for e in edges]
            return [str(x) for x in (labels or range(len(vals)))], vals
        if isinstance(obj, Sequence) and obj and isinstance(obj[0], Mapping):
            labels, vals = [], []
            for rec in obj:
                lo = rec.get("start", rec.get("lo"))
                hi = rec.get("end", rec.get("hi"))
                labels.append(str(rec.get("label") or (f"{lo}-{hi}" if lo is not None else "?")))
                vals.append(float(rec.get("bpb", float("nan"))))
            return labels, vals
        if isinstance(obj, Mapping) and obj and all(_num(v) is not None for v in obj.values()):
            return [str(k) for k in obj], [float(v) for v in obj.values()]
        return None

    direct = one(raw)
    if direct is not None:
        return {"init": direct}
    out = {}
    if isinstance(raw, Mapping):
        for mode, obj in raw.items():
            parsed = one(obj)
            if parsed is not None:
                out[str(mode)] = parsed
    return out


def run_buckets(run: RunData) -> dict[str, tuple[list[str], list[float]]]:
    """Per-position buckets of a run: from eval_details.json (where eval writes them), else from
    an older metrics.json that still carried them."""
    detail = (run.details or {}).get("metrics")
    return eval_buckets(detail) or eval_buckets(run.eval_metrics)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix or "value": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


# Eval keys left out of the report's table: per-task detail and bookkeeping.
EVAL_SKIP = ("core_tasks", "timing", "seconds", "val_tokens", "tokens", "n_", "step")


def eval_scalars(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """CORE, ICL, BPB gaps and other scalar eval results (not BPB per mode or buckets), flattened
    with "." (e.g. `core.sequential`, `icl_acc.init.copy`)."""
    if not metrics:
        return {}
    out = {}
    rest = {
        k: v for k, v in metrics.items() if k not in ("bpb", "bpb_buckets", "val_bpb", "val_loss")
    }
    for k, v in _flatten(rest).items():
        if re.fullmatch(r"(?:val_)?bpb[_/]\w+", k) or k.startswith(EVAL_SKIP) or k.endswith(".n"):
            continue
        if _num(v) is not None and not isinstance(v, bool):
            out[k] = _num(v)
    return out


# ---------------------------------------------------------------------------------------------
# Comparisons


def interpolate_at(xs: np.ndarray, ys: np.ndarray, x: float) -> float | None:
    """Linear interpolation of the curve (xs, ys) at x; None when x lies beyond the curve's end."""
    mask = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[mask], ys[mask]
    if len(xs) == 0:
        return None
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if x > xs[-1] * (1 + 1e-9) or x < xs[0] * (1 - 1e-9):
        return None
    return float(np.interp(x, xs, ys))


def compare_to_baseline(run: RunData, base: RunData) -> dict[str, Any]:
    """Final val BPB of `run` vs the baseline's val curve at equal tokens and at equal compute."""
    row: dict[str, Any] = {
        "variant": run.name,
        "baseline": base.name,
        "tokens": run.final("tokens"),
        "effective_flops": run.final("effective_flops"),
        "val_bpb": run.final("val_bpb"),
    }
    for label, key in (("equal_tokens", "tokens"), ("matched_compute", "effective_flops")):
        x = row[key]
        if base.val is None or key not in base.val or "val_bpb" not in base.val or x is None:
            row[label] = NA
            continue
        y = interpolate_at(base.val[key], base.val["val_bpb"], x)
        row[label] = NOT_REACHED if y is None else y
    return row


def _closest(
    run: RunData, bases: Sequence[RunData], key: str, tolerance: float
) -> dict[str, Any] | None:
    """The evaluated baseline whose final `key` is nearest `run`'s (by ratio), within a factor
    `tolerance`; `{"baseline", "ratio", "val_bpb"}` or None."""
    x = run.final(key)
    best: dict[str, Any] | None = None
    for b in bases:
        y, bpb = b.final(key), b.eval_bpb()
        if x is None or y is None or x <= 0 or y <= 0 or bpb is None:
            continue
        ratio = y / x
        if 1 / tolerance <= ratio <= tolerance and (
            best is None or abs(math.log(ratio)) < abs(math.log(best["ratio"]))
        ):
            best = {"baseline": b.name, "ratio": ratio, "val_bpb": bpb}
    return best


def eval_comparison(run: RunData, bases: Sequence[RunData]) -> dict[str, Any]:
    """`run`'s evaluation BPB (exact decoding) vs the baseline variants' at equal tokens and at
    matched compute (see `TOKENS_TOLERANCE`, `COMPUTE_TOLERANCE`); a side is None when no
    baseline variant is close enough."""
    return {
        "variant": run.name,
        "val_bpb": run.eval_bpb(),
        "equal_tokens": _closest(run, bases, "tokens", TOKENS_TOLERANCE),
        "matched_compute": _closest(run, bases, "effective_flops", COMPUTE_TOLERANCE),
    }


def headline_deltas(runs: Sequence[RunData]) -> dict[str, float]:
    """`{"<variant>/bpb": x, "<variant>/delta_equal_tokens": d, "<variant>/delta_matched_compute":
    d}` for each evaluated LRT variant (delta = LRT minus baseline BPB, exact decoding): the
    numbers the MLflow parent run carries."""
    bases = [r for r in runs if r.is_baseline and r.eval_bpb() is not None]
    out: dict[str, float] = {}
    for r in runs:
        if r.is_baseline or r.eval_bpb() is None:
            continue
        c = eval_comparison(r, bases)
        out[f"{r.name}/bpb"] = c["val_bpb"]
        for label in ("equal_tokens", "matched_compute"):
            if c[label] is not None:
                out[f"{r.name}/delta_{label}"] = c["val_bpb"] - c[label]["val_bpb"]
    return out


HEADLINE_FILE = "headline.json"
"""The report stage's DVC metrics: each variant's exact-decoding BPB and each LRT's deltas vs
baseline, short unique names for `dvc exp show` (e.g. `lrt.delta_matched_compute`)."""


def headline_metrics(runs: Sequence[RunData]) -> dict[str, dict[str, float]]:
    """`{variant: {"bpb": x}}` for every evaluated variant, plus `delta_equal_tokens` and
    `delta_matched_compute` for LRT variants where a baseline matches (see `headline_deltas`)."""
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        if r.eval_bpb() is not None:
            out[r.name] = {"bpb": r.eval_bpb()}
    for key, value in headline_deltas(runs).items():
        name, _, metric = key.rpartition("/")
        out.setdefault(name, {})[metric] = value
    return out


def summary_table(
    metrics: Mapping[str, Mapping[str, Any] | None], *, baseline: str | None = None
) -> str:
    """A plain-text table for the end of `eval` / `run`: per-mode BPB, CORE and the exact-decoding
    BPB's difference from the baseline, one row per variant (fits 100 columns).

    Args:
        metrics: Variant -> its metrics.json content (None: not evaluated).
        baseline: Variant to subtract (default: "baseline" if present, else none).

    >>> print(summary_table({"baseline": {"val_bpb": 2.0, "bpb": {"init": 2.0}},
    ...                      "lrt": {"val_bpb": 1.9, "bpb": {"init": 2.1, "sequential": 1.9}}}))
    variant   BPB init  merged  refine  exact dec.  CORE init  CORE seq  Δ exact vs baseline
    baseline    2.0000       –       –           –          –         –                    –
    lrt         2.1000       –       –      1.9000          –         –              −0.1000
    """
    if baseline is None and "baseline" in metrics:
        baseline = "baseline"
    base = _num((metrics.get(baseline) or {}).get("val_bpb")) if baseline else None
    head = ["variant", "BPB init", "merged", "refine", "exact dec.", "CORE init", "CORE seq"]
    head.append(f"Δ exact vs {baseline}" if baseline else "Δ exact")

    def cell(v: Any) -> str:
        v = _num(v)
        return "–" if v is None else f"{v:.4f}"

    rows = []
    for name, m in metrics.items():
        m = m or {}
        bpb, core = m.get("bpb") or {}, m.get("core") or {}
        seq = _num(bpb.get("sequential"))
        delta = "–"
        if name != baseline and seq is not None and base is not None:
            delta = f"{seq - base:+.4f}".replace("-", "−")
        rows.append(
            [name]
            + [cell(bpb.get(k)) for k in ("init", "merged", "refine", "sequential")]
            + [cell(core.get("init")), cell(core.get("sequential")), delta]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for r in [head, *rows]:
        first = r[0].ljust(widths[0])
        lines.append(
            "  ".join([first] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)])
        )
    return "\n".join(line.rstrip() for line in lines)


# ---------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "legend.frameon": False,
        }
    )
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _smooth(y: np.ndarray, alpha: float = 0.9) -> np.ndarray:
    out = np.empty_like(y)
    acc, n = 0.0, 0
    for i, v in enumerate(y):
        if np.isfinite(v):
            acc = alpha * acc + (1 - alpha) * v
            n += 1
            out[i] = acc / (1 - alpha**n)  # debiased EMA (as nanochat's smooth loss)
        else:
            out[i] = out[i - 1] if i else np.nan
    return out


def _colors(runs: Sequence[RunData]) -> dict[str, str]:
    return {r.name: PALETTE[i % len(PALETTE)] for i, r in enumerate(runs)}


def plot_curves(
    runs: Sequence[RunData],
    table: str,
    x: str,
    y: str,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    smooth: bool = False,
) -> bytes | None:
    """One line per run of column `y` against column `x`; None when no run has both columns."""
    plt = _plt()
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawn = 0
    for r in runs:
        t = getattr(r, table)
        if not t or x not in t or y not in t:
            continue
        mask = np.isfinite(t[x]) & np.isfinite(t[y])
        if logx:
            mask &= t[x] > 0
        if not mask.any():
            continue
        ys = _smooth(t[y][mask]) if smooth else t[y][mask]
        style = "--" if r.is_baseline else "-"
        marker = "o" if table == "val" else None
        ax.plot(
            t[x][mask], ys, style, color=colors[r.name], label=r.name, marker=marker, ms=3, lw=1.6
        )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    return _png(fig)


def plot_buckets(runs: Sequence[RunData]) -> bytes | None:
    """Per-position BPB: one line per (variant, mode) over position buckets."""
    plt = _plt()
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    labels_ref: list[str] | None = None
    styles = ["-", "--", ":", "-."]
    drawn = 0
    for r in runs:
        for j, (mode, (labels, vals)) in enumerate(run_buckets(r).items()):
            labels_ref = labels_ref or labels
            ax.plot(
                range(len(vals)),
                vals,
                styles[j % 4],
                marker="o",
                ms=3,
                color=colors[r.name],
                label=f"{r.name} ({mode})",
            )
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xticks(range(len(labels_ref)), labels_ref, rotation=30, ha="right")
    ax.set(xlabel="position in context", ylabel="BPB", title="Per-position validation BPB")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def plot_bucket_diff(runs: Sequence[RunData], base: RunData) -> bytes | None:
    """Per-position BPB of each run minus `base`'s, one line per (run, mode), a zero line, the
    legend beside the axes so it never covers a line."""
    plt = _plt()
    colors = _colors([base, *runs])
    base_b = run_buckets(base)
    ref = base_b.get("sequential") or base_b.get("init") or next(iter(base_b.values()), None)
    if ref is None:
        return None
    ref_map = dict(zip(*ref, strict=True))
    fig, ax = plt.subplots(figsize=(7.4, 3.8))
    styles = {"init": ":", "merged": "-.", "refine": "--", "sequential": "-"}
    labels_ref: list[str] = []
    drawn = 0
    for r in runs:
        for mode, (labels, vals) in run_buckets(r).items():
            if mode not in ("init", "sequential"):
                continue
            pts = [(i, v - ref_map[lab]) for i, (lab, v) in enumerate(zip(labels, vals, strict=True))
                   if lab in ref_map and math.isfinite(v) and math.isfinite(ref_map[lab])]  # fmt: skip
            if not pts:
                continue
            labels_ref = labels if len(labels) > len(labels_ref) else labels_ref
            ax.plot(*zip(*pts, strict=True), styles.get(mode, "-"), marker="o", ms=3,
                    color=colors[r.name], label=f"{r.name} ({mode})")  # fmt: skip
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(0.0, color="#555", lw=0.8)
    ax.set_xticks(range(len(labels_ref)), labels_ref, rotation=30, ha="right")
    ax.set(
        xlabel="position in context",
        ylabel=f"BPB minus {base.name}",
        title=f"Per-position BPB, difference from {base.name} (below 0: better)",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


DVC_FIGURES = ("val_bpb_vs_tokens", "val_bpb_vs_compute", "loss_vs_compute", "bpb_buckets")
"""Figures dvc.yaml declares as image plots of the report stage (`dvc plots show` renders them
with no script at all, so offline)."""
CURVE_FILES = {
    "val_curves.csv": ("val", "val_bpb"),
    "loss_curves.csv": ("log", "loss"),
}
"""Long-format curves of every variant (`variant` column), for dvc.yaml's vega-lite overlay
plots (template `plot_templates/variants.json`)."""


def write_curves(runs: Sequence[RunData], out_dir: str | Path) -> list[Path]:
    """Write `val_curves.csv` (variant, step, tokens, effective_flops, val_bpb) and
    `loss_curves.csv` (the same with the training loss) into `out_dir`; a header only when no
    run has that curve. Returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    for fname, (table, y) in CURVE_FILES.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["variant", "step", "tokens", "effective_flops", y])
        for r in runs:
            t = getattr(r, table)
            if not t or y not in t or "tokens" not in t:
                continue
            for i in range(len(t[y])):
                row = [t.get(k, np.full(len(t[y]), np.nan))[i] for k in ("step", "tokens",
                       "effective_flops")] + [t[y][i]]  # fmt: skip
                if all(np.isfinite(v) for v in row):
                    w.writerow([r.name, int(row[0]), int(row[1]), f"{row[2]:.6g}", f"{row[3]:.6g}"])
        paths.append(atomic_write_text(out_dir / fname, buf.getvalue()))
    return paths


def _placeholder_png(name: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.0, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{name.replace('_', ' ')}: {NA}", ha="center", va="center", color="#777")
    return _png(fig)


def read_sweep(path: Path | None) -> list[dict[str, Any]] | None:
    """Sweep results: a JSON list of records (or `{"runs": [...]}`) or a CSV with a header."""
    if path is None or not path.is_file():
        return None
    if path.suffix == ".csv":
        cols = read_csv_columns(path)
        with path.open(newline="") as f:
            return list(csv.DictReader(f)) if cols else None
    data = _read_json(path)
    if isinstance(data, Mapping):
        data = data.get("runs") or data.get("results")
    return data if isinstance(data, list) and data else None


def plot_sweep(
    records: Sequence[Mapping[str, Any]], metric: str = "val_bpb", label: str = "val BPB"
) -> bytes | None:
    """`metric` (val BPB, or CORE) vs effective compute, one series per `group`/`variant`/
    `pathway`, log x, like the paper's scaling figures."""
    plt = _plt()
    series: dict[str, list[tuple[float, float]]] = {}
    for rec in records:
        x = _num(rec.get("effective_flops", rec.get("flops", rec.get("compute"))))
        y = _num(rec.get(metric, rec.get("bpb") if metric == "val_bpb" else None))
        if x is None or y is None or x <= 0:
            continue
        key = str(rec.get("group") or rec.get("variant") or rec.get("pathway") or "runs")
        series.setdefault(key, []).append((x, y))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        ax.plot(*zip(*pts, strict=True), "-o", ms=4, color=PALETTE[i % len(PALETTE)], label=name)
    ax.set_xscale("log")
    ax.set(
        xlabel="effective training compute (FLOPs)", ylabel=label, title=f"Compute sweep: {label}"
    )
    ax.legend()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Rendering


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


@dataclass
class Section:
    title: str
    text: str = ""
    headers: list[str] | None = None
    rows: list[list[str]] | None = None
    images: list[tuple[str, bytes | None]] = field(default_factory=list)  # (name, png)
    note: str = ""  # one or two sentences under the table/figures: what they show


def _tokenizer_section(stats: Any) -> Section:
    sec = Section("Tokenizer")
    if not isinstance(stats, Mapping):
        sec.text = f"Tokenizer stats: {NA} (expected the tokenize stage's stats.json)."
        return sec
    sec.headers = ["statistic", "value"]
    sec.rows = [[k, _fmt(v)] for k, v in _flatten(stats).items() if not isinstance(v, list)]
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
                _fmt(_num(tm.get("params"))),
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
            [r.name, _fmt(_num(core.get("init"))), _fmt(_num(core.get("sequential"))), message]
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


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;
 color:#1d2733;background:#f6f7f9;margin:0}
main{max-width:1080px;margin:0 auto;padding:28px 32px 60px}
header{border-bottom:3px solid #1f4e79;margin-bottom:18px;padding-bottom:8px}
h1{font-size:26px;margin:0 0 4px} .meta{color:#5f6b7a;font-size:13px}
section{background:#fff;border:1px solid #e2e6eb;border-radius:8px;padding:16px 20px;margin:16px 0;
 box-shadow:0 1px 2px rgba(0,0,0,.03)}
h2{font-size:18px;margin:0 0 10px;color:#1f4e79}
p{line-height:1.5;font-size:14px;margin:6px 0 10px}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-size:13px;width:auto;margin:4px 0 8px}
th,td{padding:5px 10px;border-bottom:1px solid #e6e9ee;text-align:right;white-space:nowrap}
th{background:#f0f3f7;font-weight:600} td:first-child,th:first-child{text-align:left}
tr:hover td{background:#f8fafc} .na{color:#9aa4b1;font-style:italic}
.good{color:#1e8449;font-weight:600} .bad{color:#b03a2e;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:12px} .figs img{max-width:100%;width:500px;border:1px solid #eef0f3;
 border-radius:4px}
.scroll{overflow-x:auto} td.txt{text-align:left;white-space:normal} .note{color:#3d4856;font-size:13px;margin-top:4px}
"""


_NUMERIC = re.compile(r"[+\-\u2212]?[\d,.]+(e[+-]?\d+)?%?( \(.*\))?|–")


def _is_numeric(cell: str) -> bool:
    """Numbers (and NA / dashes) align right; text such as samples and messages aligns left."""
    return cell in (NA, NOT_REACHED) or bool(_NUMERIC.fullmatch(cell))


def _html_cell(s: str, tag: str = "td") -> str:
    cls = ' class="na"' if s in (NA, NOT_REACHED) else ""
    if not cls and tag == "td" and not _is_numeric(s):
        cls = ' class="txt"'
    if re.fullmatch(r"[+\u2212]\d+\.\d+", s):  # a delta (see _delta): lower BPB is better
        cls = ' class="good"' if s.startswith("\u2212") else ' class="bad"'
    return f"<{tag}{cls}>{html.escape(s)}</{tag}>"


def _html_text(text: str) -> str:
    esc = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc)


def render_html(sections: Sequence[Section], title: str, meta: str) -> str:
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<header><h1>{html.escape(title)}</h1><div class='meta'>{html.escape(meta)}</div></header>",
    ]
    for sec in sections:
        parts.append(f"<section><h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            cls = " class='na'" if sec.text.endswith(f"{NA}.") else ""
            parts.append(f"<p{cls}>{_html_text(sec.text)}</p>")
        if sec.headers and sec.rows:
            parts.append("<div class='scroll'><table><thead><tr>")
            parts += [_html_cell(h, "th") for h in sec.headers]
            parts.append("</tr></thead><tbody>")
            for row in sec.rows:
                parts.append("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>")
            parts.append("</tbody></table></div>")
        figs = []
        for name, png in sec.images:
            if png is None:
                figs.append(f"<p class='na'>{html.escape(name.replace('_', ' '))}: {NA}.</p>")
            else:
                b64 = base64.b64encode(png).decode("ascii")
                figs.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
        if figs:
            parts.append("<div class='figs'>" + "".join(figs) + "</div>")
        if sec.note:
            parts.append(f"<p class='note'>{_html_text(sec.note)}</p>")
        parts.append("</section>")
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def render_markdown(sections: Sequence[Section], title: str, meta: str, fig_dir: str) -> str:
    lines = [f"# {title}", "", f"_{meta}_", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        if sec.text:
            lines += [sec.text, ""]
        if sec.headers and sec.rows:
            lines.append("| " + " | ".join(sec.headers) + " |")
            text_col = [
                i == 0 or not all(_is_numeric(row[i]) for row in sec.rows if i < len(row))
                for i in range(len(sec.headers))
            ]
            lines.append("|" + "|".join("---" if t else "---:" for t in text_col) + "|")
            lines += [
                "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in sec.rows
            ]
            lines.append("")
        for name, png in sec.images:
            if png is None:
                lines += [f"{name.replace('_', ' ')}: {NA}.", ""]
            else:
                lines += [f"![{name}]({fig_dir}/{name}.png)", ""]
        if sec.note:
            lines += [f"_{sec.note}_", ""]
    return "\n".join(lines)


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
    stats = _read_json(Path(tokens_stats)) if tokens_stats else None
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
            atomic_write_bytes(fig_dir / f"{name}.png", _placeholder_png(name))
    atomic_write_text(out_dir / "report.md", render_markdown(sections, title, meta, "figures"))
    return atomic_write_text(out_dir / "report.html", render_html(sections, title, meta))


class ReportError(FileNotFoundError):
    """Nothing to report: no run folder holds a training log or metrics file."""


def build_report(settings: Any) -> Path:
    """Report stage: runs from `train.out_dir`, tokenizer stats from `tokenizer.out_dir`, sweep
    results from `report.out_dir/sweep.json`; writes into `report.out_dir`.

    Args:
        settings: `pipeline.settings.Settings`.

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
