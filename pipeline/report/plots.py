"""The report's figures: matplotlib (Agg) PNGs of curves, per-position BPB (and its difference
from the baseline) and the compute sweep, one line per variant. Each returns PNG bytes, or None
when no run has the data.

    >>> from pipeline.report.data import load_runs
    >>> png = plot_curves(load_runs("runs"), "val", "tokens", "val_bpb", xlabel="tokens",
    ...                   ylabel="BPB", title="val BPB")          # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.report.data import NA, RunData, run_buckets, to_float

PALETTE = ["#1f4e79", "#c0392b", "#2e8b57", "#8e44ad", "#d68910", "#17a589", "#7f8c8d", "#e67e22"]


# ---------------------------------------------------------------------------------------------
# Plots


def pyplot():
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
    pyplot().close(fig)
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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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


def placeholder_png(name: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.0, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{name.replace('_', ' ')}: {NA}", ha="center", va="center", color="#777")
    return _png(fig)


def plot_sweep(
    records: Sequence[Mapping[str, Any]], metric: str = "val_bpb", label: str = "val BPB"
) -> bytes | None:
    """`metric` (val BPB, or CORE) vs effective compute, one series per `group`/`variant`/
    `pathway`, log x, like the paper's scaling figures."""
    plt = pyplot()
    series: dict[str, list[tuple[float, float]]] = {}
    for rec in records:
        x = to_float(rec.get("effective_flops", rec.get("flops", rec.get("compute"))))
        y = to_float(rec.get(metric, rec.get("bpb") if metric == "val_bpb" else None))
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
