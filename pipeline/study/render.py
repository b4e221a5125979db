"""Tables, plots and files of a study result (`runner.aggregate`): JSON, markdown, HTML, PNG.

The markdown and HTML come from `pipeline.report.render`'s section renderer, so the study reads like
the pipeline's report. Every file is written to a temp file and renamed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_bytes, atomic_write_text, finite_json
from pipeline.report.render import Section, render_html, render_markdown

NA = "–"
GRAD_GROUPS = ("all", "blocks", "pathway", "embedding", "lm_head")


def _f(x: Any, nd: int = 4) -> str:
    if not isinstance(x, int | float) or not math.isfinite(x):
        return NA
    return f"{x:.{nd}f}"


def _pm(s: dict[str, Any] | None, nd: int = 4) -> str:
    if not s or not isinstance(s.get("mean"), int | float) or not math.isfinite(s["mean"]):
        return NA
    std = s.get("std")
    tail = f" ± {std:.{nd}f}" if isinstance(std, int | float) and math.isfinite(std) else ""
    return f"{s['mean']:.{nd}f}{tail} (n={s['n']})"


def _ci(d: dict[str, Any] | None, nd: int = 4) -> str:
    if not d or not isinstance(d.get("mean"), int | float) or not math.isfinite(d["mean"]):
        return NA
    lo, hi = d.get("lo"), d.get("hi")
    if isinstance(lo, int | float) and math.isfinite(lo):
        return f"{d['mean']:+.{nd}f} [{lo:+.{nd}f}, {hi:+.{nd}f}]"
    return f"{d['mean']:+.{nd}f} [n={d['n']}]"


def _verdict(d: dict[str, Any] | None) -> str:
    return d.get("verdict", NA) if d else NA


# ---------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _ran(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in result["arms"] if a.get("available") and a.get("metrics")]


def plot_bpb(result: dict[str, Any]) -> bytes | None:
    arms = _ran(result)
    if not arms:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [a["name"] for a in arms]
    means = [a["metrics"]["val_bpb"]["mean"] for a in arms]
    stds = [a["metrics"]["val_bpb"]["std"] or 0.0 for a in arms]
    stds = [s if isinstance(s, int | float) and math.isfinite(s) else 0.0 for s in stds]
    ax.bar(range(len(arms)), means, yerr=stds, capsize=3, color="#4c72b0")
    lo = min(means) - 2 * max(stds + [0.01])
    ax.set_ylim(bottom=max(0.0, lo))
    ax.set_xticks(range(len(arms)), names, rotation=30, ha="right")
    ax.set_ylabel("val BPB (exact sequential)")
    ax.set_title("Validation BPB, mean ± std over seeds")
    return _png(fig)


def plot_positions(result: dict[str, Any]) -> bytes | None:
    arms = [a for a in _ran(result) if a.get("bpb_buckets")]
    if not arms:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for a in arms:
        ys = a["bpb_buckets"]
        xs = [(i + 0.5) * a["bucket_size"] for i in range(len(ys))]
        ax.plot(xs, ys, marker=".", label=a["name"])
    ax.set_xlabel("position in window")
    ax.set_ylabel("BPB")
    ax.set_title("Per-position BPB (exact sequential), mean over seeds")
    ax.legend(fontsize=7)
    return _png(fig)


def _exact_arm(result: dict[str, Any]) -> dict[str, Any] | None:
    return next((a for a in _ran(result) if a["name"] == "sequential" and a.get("diagnostics")),
                None)  # fmt: skip


def plot_state_gap(result: dict[str, Any]) -> bytes | None:
    """Relative L2 by position of every probe at the final weights of exact training (or of
    each arm's own strategy when the study has no sequential arm)."""
    exact = _exact_arm(result)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    drawn = False
    if exact is not None:
        for probe, points in exact["diagnostics"].items():
            if points:
                ax.plot(points[-1]["state_rel_l2_by_pos"], label=probe)
                drawn = True
        ax.set_title("State gap at the exact-trained weights (final point)")
    else:
        for a in _ran(result):
            pts = a.get("diagnostics", {}).get(a.get("own_probe") or "", [])
            if pts:
                ax.plot(pts[-1]["state_rel_l2_by_pos"], label=f"{a['name']} ({a['own_probe']})")
                drawn = True
        ax.set_title("State gap of each arm's own strategy (final point)")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("position")
    ax.set_ylabel("||s - s*|| / ||s*||")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_grad_cos(result: dict[str, Any]) -> bytes | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    drawn = False
    for a in _ran(result):
        pts = a.get("diagnostics", {}).get(a.get("own_probe") or "", [])
        if pts:
            ax.plot([p["step"] for p in pts], [p["grad_cos"]["all"]["mean"] for p in pts],
                    marker="o", label=a["name"])  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("training step")
    ax.set_ylabel("cos(g, g_BPTT), all parameters")
    ax.set_title("Gradient cosine to exact BPTT, own strategy")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_losses(result: dict[str, Any]) -> bytes | None:
    arms = [a for a in _ran(result) if a.get("loss_curve")]
    if not arms:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for a in arms:
        ys = a["loss_curve"]
        k = max(1, len(ys) // 50)
        sm = [sum(ys[i : i + k]) / len(ys[i : i + k]) for i in range(0, len(ys), k)]
        ax.plot([i * k for i in range(len(sm))], sm, label=a["name"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (strategy's own)")
    ax.legend(fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Sections


def sections(result: dict[str, Any]) -> list[Section]:
    kind, meta, sc = result["study"], result.get("meta", {}), result["scale"]
    out = []
    partial = (
        f"PARTIAL: missing cells {', '.join(result['missing_cells'])}. "
        if result.get("partial") else ""
    )  # fmt: skip
    out.append(Section(
        "Setup",
        f"{partial}Study `{kind}`, scale `{sc['name']}`: depth {sc['depth']}, width "
        f"{sc['n_embd']}, {sc['n_head']} heads, T={sc['seq_len']}, batch {sc['batch_size']}, "
        f"{sc['steps']} steps, vocab {sc['vocab_size']}, seeds {result['seeds']} (seed = init "
        f"and data order, paired). Machine: {meta.get('machine', NA)}. Commit "
        f"`{meta.get('commit', NA)}`. Command: `{meta.get('command', NA)}`. Intervals: 95% "
        "Student-t of the per-seed paired difference; a difference counts only when its "
        "interval excludes 0.",
    ))  # fmt: skip
    rows = []
    for a in result["arms"]:
        if not a.get("available"):
            rows.append([a["name"], a["label"], a.get("reason", "not run"), *[NA] * 5])
            continue
        if not a.get("metrics"):
            rows.append([a["name"], a["label"], "no finished cell", *[NA] * 5])
            continue
        rows.append([
            a["name"], a["label"], "ran",
            str(a["steps"]), str(a["tokens"]), str(int(a["params"]["total"])),
            _f(a.get("flops_ratio"), 2), _f((a.get("seconds") or {}).get("mean"), 0),
        ])  # fmt: skip
    out.append(Section(
        "Arms",
        "FLOPs ratio = training FLOPs per token over the baseline's (lrt.accounting; "
        "sequential is one pass of matmuls per token, cheap in FLOPs but T serial steps). "
        "Train s = mean wall-clock training seconds per cell on this machine (shared, noisy).",
        ["arm", "what", "status", "steps", "tokens", "params", "FLOPs/token ratio",
         "train s"], rows,
    ))  # fmt: skip
    rows = []
    for a in _ran(result):
        m, vb = a["metrics"], a.get("vs_baseline", {})
        rows.append([
            a["name"], _pm(m["val_bpb"]), _ci(vb.get("val_bpb")), _verdict(vb.get("val_bpb")),
            _pm(m["train_test_gap"]), _pm(m["icl_gain"], 3), _pm(m["synthetic_acc"], 3),
            _pm(m["core"], 3),
        ])  # fmt: skip
    out.append(Section(
        "Validation BPB and probes",
        "BPB scored by exact sequential decoding; Δ = arm − baseline paired by seed. Gap = BPB "
        "in the mode training optimises (merged / refine / chunked) − exact sequential BPB. ICL "
        "gain = late − early loss within documents (nats; more negative = more use of context). "
        "Synthetic = mean exact-match accuracy of kv_recall and pattern. CORE: centred accuracy.",
        ["arm", "BPB", "Δ vs baseline [95% CI]", "verdict", "train/test gap", "ICL gain",
         "synthetic acc", "CORE"], rows,
        [("bpb", plot_bpb(result)), ("per_position_bpb", plot_positions(result)),
         ("loss_curves", plot_losses(result))],
    ))  # fmt: skip
    rows = []
    for c in result.get("comparisons", []):
        name = f"{c['arm']} − {c['reference']}"
        if "unavailable" in c:
            rows.append([name, c["unavailable"], NA, NA, NA])
            continue
        rows.append([
            name, _ci(c["val_bpb"]), _verdict(c["val_bpb"]), _ci(c["train_test_gap"]),
            _ci(c["synthetic_acc"], 3),
        ])  # fmt: skip
    if rows:
        out.append(Section(
            "Paired comparisons",
            "Each row: arm − reference per seed, mean [95% CI].",
            ["comparison", "Δ BPB", "verdict", "Δ gap", "Δ synthetic acc"], rows,
        ))  # fmt: skip
    rows = []
    for a in _ran(result):
        probe = a.get("own_probe")
        for p in a.get("diagnostics", {}).get(probe or "", []):
            rows.append([
                a["name"], probe, str(p["step"]), _pm(p["state_rel_l2"]), _pm(p["state_cos"]),
                *[_pm(p["grad_cos"].get(g), 3) for g in GRAD_GROUPS],
            ])  # fmt: skip
    if rows:
        out.append(Section(
            "Gaps at fixed weights: each arm's own strategy",
            "On one fixed validation batch, at the arm's weights after the given step: the "
            "strategy's merged source states vs exact sequential ones (relative L2, cosine; "
            "mean over positions and sequences), and the cosine between the strategy's "
            "training-loss gradient and the exact BPTT gradient, per parameter group.",
            ["arm", "strategy", "step", "state rel L2", "state cos",
             *[f"grad cos {g}" for g in GRAD_GROUPS]], rows,
            [("grad_cos", plot_grad_cos(result))],
        ))  # fmt: skip
    exact = _exact_arm(result)
    if exact is not None:
        rows = []
        for probe, points in exact["diagnostics"].items():
            if points:
                p = points[-1]
                rows.append([
                    probe, str(p["step"]), _pm(p["state_rel_l2"]), _pm(p["state_cos"]),
                    *[_pm(p["grad_cos"].get(g), 3) for g in GRAD_GROUPS],
                ])  # fmt: skip
        out.append(Section(
            "Every parallel strategy at the exact-trained weights",
            "The same measurements for every strategy, all at the final weights of the "
            "sequential (true BPTT) arm: how well each parallel estimate approximates the "
            "recurrence the model was trained for.",
            ["strategy", "step", "state rel L2", "state cos",
             *[f"grad cos {g}" for g in GRAD_GROUPS]], rows,
            [("state_gap_by_position", plot_state_gap(result))],
        ))  # fmt: skip
    elif any(a.get("diagnostics") for a in _ran(result)):
        out.append(Section("State gap by position", "", None, None,
                           [("state_gap_by_position", plot_state_gap(result))]))  # fmt: skip
    return out


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write results.json, <study>.md, <study>.html and figures/*.png under out_dir."""
    out = Path(out_dir)
    kind = result["study"]
    secs = sections(result)
    for sec in secs:
        for name, png in sec.images:
            if png is not None:
                atomic_write_bytes(out / "figures" / f"{name}.png", png)
    title = f"LRT study: {kind}"
    meta = result.get("meta", {})
    line = f"{meta.get('finished', '')} · {meta.get('machine', '')} · commit {meta.get('commit')}"
    atomic_write_text(out / "results.json", json.dumps(finite_json(result), indent=1, default=str))
    atomic_write_text(out / f"{kind}.md", render_markdown(secs, title, line, "figures"))
    atomic_write_text(out / f"{kind}.html", render_html(secs, title, line))
    return out
