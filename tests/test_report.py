"""Report stage: builds from synthetic metrics files, and degrades to "not available"."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.report.build import NA, NOT_REACHED, eval_buckets, interpolate_at, render_report


def _write_run(
    runs: Path,
    name: str,
    pathway: str,
    *,
    steps: int,
    flops_per_tok: float,
    final_bpb: float,
    eval_metrics: dict | None = None,
) -> None:
    d = runs / name
    d.mkdir(parents=True)
    with (d / "train_log.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "step",
                "tokens",
                "effective_flops",
                "lr",
                "loss",
                "pass0_loss",
                "val_bpb",
                "tokens_per_s",
                "mfu",
            ]
        )
        for s in range(1, steps + 1):
            tok = s * 1024
            loss = 3.0 + 5.0 / s
            val = final_bpb + 2.0 / s if s % 10 == 0 or s == steps else ""
            w.writerow([s, tok, tok * flops_per_tok, 0.02, loss, loss, val, 5e4, 0.31])
    (d / "train_metrics.json").write_text(
        json.dumps(
            {
                "step": steps,
                "tokens": steps * 1024,
                "effective_flops": steps * 1024 * flops_per_tok,
                "params": 123456,
                "config": {
                    "model": {"pathway": pathway},
                    "strategy": {"name": "none" if pathway == "none" else "interleaved"},
                },
            }
        )
    )
    if eval_metrics is not None:
        (d / "metrics.json").write_text(json.dumps(eval_metrics))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    _write_run(
        runs,
        "baseline",
        "none",
        steps=100,
        flops_per_tok=6e6,
        final_bpb=1.20,
        eval_metrics={
            "bpb": {"init": 1.21},
            "val_bpb": 1.21,
            "core": {"init": 0.12},
            "bpb_buckets": {"init": {"0-7": 1.5, "8-15": 1.2, "16-31": 1.1}},
            "core_tasks": {"init": {"hellaswag": {"acc": 0.3, "n": 50}}},
        },
    )
    _write_run(
        runs,
        "lrt",
        "layerwise",
        steps=60,
        flops_per_tok=12e6,
        final_bpb=1.15,
        eval_metrics={
            "bpb": {"init": 1.30, "merged": 1.16, "refine": 1.15, "sequential": 1.149},
            "bpb_buckets": {
                "init": {"edges": [0, 8, 16, 32], "bpb": [1.7, 1.3, 1.2]},
                "sequential": {"edges": [0, 8, 16, 32], "bpb": [1.4, 1.1, 1.0]},
            },
            "val_bpb": 1.149,
            "bpb_gap": {"init": 0.151, "merged": 0.011},
            "core": {"init": 0.11, "sequential": 0.13},
            "icl_acc": {"sequential": {"copy": 0.8, "induction": 0.6}},
        },
    )
    _write_run(runs, "lrt_big", "shared", steps=100, flops_per_tok=12e6, final_bpb=1.10)
    tok = tmp_path / "data" / "tokens"
    tok.mkdir(parents=True)
    (tok / "stats.json").write_text(
        json.dumps({"vocab_size": 512, "bytes_per_token": 3.9, "train_tokens": 1_000_000})
    )
    (tmp_path / "sweep.json").write_text(
        json.dumps(
            [
                {"group": "baseline", "effective_flops": 1e15, "val_bpb": 1.3, "core": 0.01},
                {"group": "baseline", "effective_flops": 4e15, "val_bpb": 1.2, "core": 0.03},
                {"group": "lrt", "effective_flops": 2e15, "val_bpb": 1.22, "core": 0.02},
            ]
        )
    )
    return tmp_path


def test_report_full(project: Path) -> None:
    out = render_report(
        project / "runs",
        project / "reports",
        tokens_stats=project / "data/tokens/stats.json",
        sweep=project / "sweep.json",
    )
    assert out == project / "reports" / "report.html"
    page = out.read_text()
    md = (project / "reports" / "report.md").read_text()
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    # loss x2, val x2, buckets, sweep BPB and CORE vs compute
    assert len(imgs) == 7
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert "src='http" not in page and "<script" not in page  # self-contained
    for name in (
        "loss_vs_tokens",
        "loss_vs_compute",
        "val_bpb_vs_tokens",
        "bpb_buckets",
        "sweep_compute",
        "sweep_core_compute",
    ):
        assert (project / "reports/figures" / f"{name}.png").is_file()
        assert f"figures/{name}.png" in md
    # Eval table has every mode and the scalar metrics.
    ev_md = md.split("## Evaluation")[1].split("## ")[0]
    assert "| metric | baseline | lrt |" in ev_md  # lrt_big has no metrics.json
    for col in (
        "BPB init",
        "BPB merged",
        "BPB refine",
        "BPB (exact decoding)",
        "core.sequential",
        "icl_acc.sequential.copy",
        "bpb_gap.merged",
    ):
        assert f"| {col} |" in ev_md, col
    assert "core_tasks" not in ev_md and "| val_bpb" not in ev_md
    assert "| BPB merged | not available | 1.1600 |" in ev_md
    # Comparison: lrt (60 steps at 2x FLOPs/token) vs baseline: equal tokens at 61440 tokens,
    # matched compute at 60*1024*12e6 FLOPs = baseline at 120 steps -> beyond its 100: not reached.
    cmp_md = md.split("## Learning curves")[1].split("## ")[0]
    row = next(line for line in cmp_md.splitlines() if line.startswith("| lrt |"))
    base_curve_at_60 = 1.20 + 2.0 / 60
    assert f"{base_curve_at_60:.4f}" in row
    assert NOT_REACHED in row
    assert f"\u2212{base_curve_at_60 - 1.1833:.4f}" in row  # LRT better: negative delta
    assert '<td class="good">\u2212' in page
    row_big = next(line for line in cmp_md.splitlines() if line.startswith("| lrt_big |"))
    assert NOT_REACHED in row_big  # 100 steps at 2x compute
    assert "| vocab_size | 512 |" in md
    # Headline (eval BPB): lrt has 60 steps, the baseline 100: not equal tokens; at 2x FLOPs per
    # token the baseline's compute is 100*6e6 / (60*12e6) = 0.83x the LRT's: matched (<= 1.25x).
    head_md = md.split("## Headline")[1].split("## ")[0]
    row = next(line for line in head_md.splitlines() if line.startswith("| lrt |"))
    assert (
        row == "| lrt | 7.373e+11 | 1.1490 | not reached | – | 1.2100 (baseline, 0.83x) | −0.0610 |"
    )
    # every table has a sentence under it saying what it shows
    for title in ("Runs", "Headline", "Learning curves", "Evaluation", "Per-position", "CORE"):
        body = md.split(f"## {title}")[1].split("## ")[0]
        assert body.rstrip().endswith("_") and "\n_" in body, title


def test_report_missing_inputs(tmp_path: Path) -> None:
    out = render_report(tmp_path / "nope", tmp_path / "reports", tokens_stats=tmp_path / "x.json")
    page = out.read_text()
    md = (tmp_path / "reports" / "report.md").read_text()
    assert NA in page and NA in md
    assert "data:image/png" not in page
    assert not list((tmp_path / "reports").glob(".*tmp*"))


def test_report_partial(project: Path) -> None:
    """A run with only a log and no eval, and a broken metrics.json, still renders."""
    (project / "runs" / "lrt" / "metrics.json").write_text("{not json")
    (project / "runs" / "baseline" / "train_log.csv").unlink()
    out = render_report(project / "runs", project / "reports")
    md = (project / "reports" / "report.md").read_text()
    assert out.is_file()
    assert "Tokenizer stats: not available" in md


def test_helpers() -> None:
    xs, ys = np.array([1.0, 2.0, 4.0]), np.array([3.0, 2.0, 1.0])
    assert interpolate_at(xs, ys, 3.0) == pytest.approx(1.5)
    assert interpolate_at(xs, ys, 5.0) is None
    assert eval_buckets({"bpb_buckets": [{"start": 0, "end": 7, "bpb": 1.0}]}) == {
        "init": (["0-7"], [1.0])
    }
    assert eval_buckets({"bpb_buckets": {"0-7": 1.0, "8-15": 0.9}}) == {
        "init": (["0-7", "8-15"], [1.0, 0.9])
    }


def test_build_report_from_settings(project: Path) -> None:
    from pipeline.config.settings import load_settings
    from pipeline.report.build import build_report

    reports = project / "out"
    reports.mkdir()
    (reports / "sweep.json").write_text((project / "sweep.json").read_text())
    settings = load_settings(
        None,
        [
            f"train.out_dir={project / 'runs'}",
            f"tokenizer.out_dir={project / 'data/tokens'}",
            f"report.out_dir={reports}",
        ],
    )
    out = build_report(settings)
    assert out == reports / "report.html"
    md = (reports / "report.md").read_text()
    assert "| vocab_size | 512 |" in md and "figures/sweep_compute.png" in md


def _eval_files(run: Path, metrics: dict, details: dict, samples: list | None = None) -> None:
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "eval_details.json").write_text(json.dumps(details))
    if samples is not None:
        (run / "samples.json").write_text(json.dumps(samples))


@pytest.fixture
def matched(tmp_path: Path) -> Path:
    """baseline (100 steps), baseline_2x (200 steps) and lrt (100 steps at 2.01x FLOPs/token),
    evaluated in today's layout: headline metrics.json, buckets in eval_details.json."""
    runs = tmp_path / "runs"
    buckets = {"edges": [0, 8, 16], "bpb": [1.5, 1.3]}
    for name, steps, fpt, bpb in (
        ("baseline", 100, 6e6, 1.30),
        ("baseline_2x", 200, 6e6, 1.22),
        ("lrt", 100, 12.06e6, 1.25),
    ):
        pathway = "shared" if name == "lrt" else "none"
        _write_run(runs, name, pathway, steps=steps, flops_per_tok=fpt, final_bpb=bpb)
        seq = {"edges": [0, 8, 16], "bpb": [1.4, 1.2]} if name == "lrt" else buckets
        _eval_files(
            runs / name,
            {"val_bpb": bpb, "bpb": {"init": bpb + 0.05, "sequential": bpb}, "core": {}},
            {
                "metrics": {"bpb_buckets": {"init": buckets, "sequential": seq}},
                "core_status": {
                    "available": False,
                    "message": "CORE skipped: eval bundle unavailable: no network; run "
                    "`dvc repro -f -s eval_bundle && dvc repro` with network",
                },
            },
            [{"prompt": "def ", "completion": f"{name}()\nreturn", "temperature": 0.0}],
        )
    return tmp_path


def test_matched_compute_row_has_numbers_with_a_baseline_2x(matched: Path) -> None:
    from pipeline.report.build import headline_deltas, load_runs

    render_report(matched / "runs", matched / "reports")
    md = (matched / "reports" / "report.md").read_text()
    head_md = md.split("## Headline")[1].split("## ")[0]
    row = next(line for line in head_md.splitlines() if line.startswith("| lrt |"))
    # equal tokens: baseline (1.00x); matched compute: baseline_2x at 200*6e6 / (100*12.06e6)
    assert "1.3000 (baseline, 1.00x)" in row and "\u22120.0500" in row
    assert f"1.2200 (baseline_2x, {200 * 6e6 / (100 * 12.06e6):.2f}x)" in row
    assert "+0.0300" in row
    deltas = headline_deltas(load_runs(matched / "runs"))
    assert deltas == pytest.approx(
        {"lrt/bpb": 1.25, "lrt/delta_equal_tokens": -0.05, "lrt/delta_matched_compute": 0.03}
    )
    # CORE status and samples are in the report
    assert "CORE skipped: eval bundle unavailable: no network" in md
    samples_md = md.split("## Samples")[1].split("## ")[0]
    assert "| lrt | 'def ' | lrt()\u23cereturn |" in samples_md
    # per-position chart is the difference from the baseline
    assert "## Per-position BPB: difference from baseline" in md
    assert (matched / "reports" / "figures" / "bpb_buckets.png").is_file()


def test_bucket_difference_values(matched: Path) -> None:
    """The plotted differences, by hand: lrt sequential [1.4, 1.2] minus the baseline's
    sequential [1.5, 1.3] = [-0.1, -0.1]; lrt init [1.5, 1.3] minus it = [0, 0]."""
    from unittest import mock

    from pipeline.report import build as report
    from pipeline.report.build import load_runs

    runs = {r.name: r for r in load_runs(matched / "runs")}
    plotted: dict[str, list[float]] = {}
    real_subplots = report.pyplot().subplots

    def subplots(*args, **kwargs):
        fig, ax = real_subplots(*args, **kwargs)
        real_plot = ax.plot

        def plot(xs, ys, *a, label=None, **k):
            plotted[label] = list(ys)
            return real_plot(xs, ys, *a, label=label, **k)

        ax.plot = plot
        return fig, ax

    with mock.patch.object(report.pyplot(), "subplots", subplots):
        assert report.plot_bucket_diff([runs["lrt"]], runs["baseline"]) is not None
    assert plotted["lrt (sequential)"] == pytest.approx([-0.1, -0.1])
    assert plotted["lrt (init)"] == pytest.approx([0.0, 0.0])


def test_report_with_no_runs_is_an_error(tmp_path: Path) -> None:
    from pipeline.config.settings import load_settings
    from pipeline.report.build import ReportError, build_report

    settings = load_settings(
        None, [f"train.out_dir={tmp_path / 'runs'}", f"report.out_dir={tmp_path / 'rep'}"]
    )
    with pytest.raises(ReportError, match="no runs in .*train and evaluate first"):
        build_report(settings)
    assert not (tmp_path / "rep" / "report.html").exists()


def test_summary_table() -> None:
    from pipeline.report.build import summary_table

    table = summary_table(
        {
            "baseline": {"val_bpb": 1.3, "bpb": {"init": 1.3, "sequential": 1.3}, "core": {}},
            "lrt": {
                "val_bpb": 1.25,
                "bpb": {"init": 1.35, "merged": 1.26, "sequential": 1.25},
                "core": {"init": 0.01, "sequential": 0.02},
            },
            "broken": None,
        }
    )
    lines = table.splitlines()
    assert len(lines) == 4 and max(map(len, lines)) <= 100
    assert lines[0].split()[:3] == ["variant", "BPB", "init"]
    assert lines[2].split() == ["lrt", "1.3500", "1.2600", "–", "1.2500", "0.0100", "0.0200",
                                "\u22120.0500"]  # fmt: skip
    assert lines[3].split()[1:] == ["–"] * 7


def test_hidden_run_folders_are_not_variants(matched: Path) -> None:
    """A failed train leaves `runs/.VARIANT.partial` (a staged copy with the same files):
    neither load_runs nor the report may show it as a variant."""
    import shutil

    from pipeline.report.build import load_runs, render_report

    runs = matched / "runs"
    shutil.copytree(runs / "lrt", runs / ".lrt.partial")
    shutil.copytree(runs / "lrt", runs / ".lrt.new-123-abcd")
    assert [r.name for r in load_runs(runs)] == ["baseline", "baseline_2x", "lrt"]
    render_report(runs, matched / "rep")
    text = (matched / "rep" / "report.md").read_text(encoding="utf-8")
    assert "lrt" in text and ".lrt.partial" not in text and ".lrt.new" not in text
