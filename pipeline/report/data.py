"""The report's inputs and comparisons: run folders read into `RunData`, BPB per purpose, the
LRT-vs-baseline numbers (equal tokens, matched compute), the CLI summary table, and the
long-format curves DVC plots. Pure functions over files other stages wrote;
`pipeline.report.sections` lays them out as the report's sections.

    >>> from pipeline.report.data import load_runs, headline_deltas
    >>> headline_deltas(load_runs("runs"))                        # doctest: +SKIP
    {'lrt/bpb': 1.25, 'lrt/delta_equal_tokens': -0.05}
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_write_text

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
        return to_float((self.eval_metrics or {}).get("val_bpb"))

    def final(self, key: str) -> float | None:
        """Last finite value of a train-log column (falls back to train_metrics.json)."""
        if key in (self.train_metrics or {}) and to_float(self.train_metrics[key]) is not None:
            return to_float(self.train_metrics[key])
        for table in (self.log, self.val):
            if table and key in table:
                vals = table[key][np.isfinite(table[key])]
                if len(vals):
                    return float(vals[-1])
        return None


def to_float(x: Any) -> float | None:
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
        vals = [to_float(r.get(key)) for r in rows]
        cols[key] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    return cols


def read_json(path: Path | None) -> Any:
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
        run.train_metrics = read_json(d / "train_metrics.json")
        candidates = [d / "metrics.json"]
        if eval_dir is not None:
            candidates.insert(0, Path(eval_dir) / d.name / "metrics.json")
        for c in candidates:
            run.eval_metrics = read_json(c)
            if run.eval_metrics is not None:
                details = read_json(c.with_name("eval_details.json"))
                run.details = details if isinstance(details, dict) else None
                samples = read_json(c.with_name("samples.json"))
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
            if to_float(v) is not None:
                out[str(k)] = to_float(v)
    elif to_float(bpb) is not None:
        out["init"] = to_float(bpb)
    for k, v in metrics.items():
        m = re.fullmatch(r"(?:val_)?bpb[_/](\w+)", str(k))
        if m and m.group(1) != "buckets" and to_float(v) is not None:
            out.setdefault(m.group(1), to_float(v))
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
        if isinstance(obj, Mapping) and obj and all(to_float(v) is not None for v in obj.values()):
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


def flatten_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix or "value": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_dict(v, key))
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
    for k, v in flatten_dict(rest).items():
        if re.fullmatch(r"(?:val_)?bpb[_/]\w+", k) or k.startswith(EVAL_SKIP) or k.endswith(".n"):
            continue
        if to_float(v) is not None and not isinstance(v, bool):
            out[k] = to_float(v)
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
    base = to_float((metrics.get(baseline) or {}).get("val_bpb")) if baseline else None
    head = ["variant", "BPB init", "merged", "refine", "exact dec.", "CORE init", "CORE seq"]
    head.append(f"Δ exact vs {baseline}" if baseline else "Δ exact")

    def cell(v: Any) -> str:
        v = to_float(v)
        return "–" if v is None else f"{v:.4f}"

    rows = []
    for name, m in metrics.items():
        m = m or {}
        bpb, core = m.get("bpb") or {}, m.get("core") or {}
        seq = to_float(bpb.get("sequential"))
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


def read_sweep(path: Path | None) -> list[dict[str, Any]] | None:
    """Sweep results: a JSON list of records (or `{"runs": [...]}`) or a CSV with a header."""
    if path is None or not path.is_file():
        return None
    if path.suffix == ".csv":
        cols = read_csv_columns(path)
        with path.open(newline="") as f:
            return list(csv.DictReader(f)) if cols else None
    data = read_json(path)
    if isinstance(data, Mapping):
        data = data.get("runs") or data.get("results")
    return data if isinstance(data, list) and data else None
