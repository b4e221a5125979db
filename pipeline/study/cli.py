"""The `study` click group (registered in `pipeline/cli/__init__.py` as `lrt-pipeline study`)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

STUDIES = ("equivalence", "attribution")
DEFAULT_ROOT = Path("reports/study")
DEFAULT_CORE = Path("../shared/data/core")


def _options(f):
    opts = [
        click.option("--quick", is_flag=True, help="CI smoke scale (< 2 min): checks structure."),
        click.option("--data", "data", type=click.Path(path_type=Path), default=None,
                     help="Folder of .txt documents [default: ../shared/data/text/gutenberg]."),
        click.option("--core", "core", type=click.Path(path_type=Path), default=DEFAULT_CORE,
                     show_default=True, help="CORE task folder; skipped with a note if absent."),
        click.option("--out", "out", type=click.Path(path_type=Path), default=DEFAULT_ROOT,
                     show_default=True, help="Output root (cells, data, one folder per study)."),
        click.option("--seeds", type=click.IntRange(min=1), default=None,
                     help="Seeds per cell [default: 3; quick 2]."),
        click.option("--steps", type=click.IntRange(min=1), default=None,
                     help="Optimizer steps per cell (overrides the scale)."),
        click.option("--arms", default=None, help="Comma-separated subset of arms (+ baseline)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="torch CPU threads."),
        click.option("--tracking/--no-tracking", default=True, show_default=True,
                     help="Log to MLflow (the project's tracking settings)."),
        click.option("--config", "config", default=None,
                     help="Settings file for the tracking section [default: params.yaml]."),
    ]  # fmt: skip
    for o in reversed(opts):
        f = o(f)
    return f


@click.group(name="study")
def study() -> None:
    """Seeded small-scale studies of LRT training (issue 14): equivalence, attribution."""


def _run(kinds, quick, data, core, out, seeds, steps, arms, device, threads, tracking, config):
    import torch

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _run_kinds(kinds, quick, data, core, out, seeds, steps, arms, device, tracking, config)
    finally:
        torch.set_num_threads(prev_threads)


def _run_kinds(kinds, quick, data, core, out, seeds, steps, arms, device, tracking, config):
    import dataclasses

    from pipeline.study.cell import FULL, QUICK
    from pipeline.study.data import DEFAULT_DATA, text_files
    from pipeline.study.runner import run_study

    scale = QUICK if quick else FULL
    if steps is not None:
        scale = dataclasses.replace(scale, steps=steps)
    if seeds is not None:
        scale = dataclasses.replace(scale, seeds=seeds)
    text_dir = data if data is not None else DEFAULT_DATA
    try:
        text_files(text_dir)  # fail fast, before MLflow and models
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise click.BadParameter(f"{device!r}: use auto, cpu or cuda[:N]", param_hint="--device")
    tracker = None
    if tracking:
        from pipeline.config.settings import DEFAULT_CONFIG, load_settings
        from pipeline.tracking import Tracker

        cfg = (
            config
            if config is not None
            else (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
        )
        tracker = Tracker(load_settings(cfg).tracking)
    only = [a.strip() for a in arms.split(",") if a.strip()] if arms else None
    command = "python -m pipeline.study " + shlex.join(sys.argv[1:])
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        click.echo(f"[{time.perf_counter() - t0:7.1f}s] {msg}", err=True)

    # Several studies run seed by seed, alternating, so a run stopped early leaves every study
    # with complete seeds; the outputs are rewritten after each round from all cells so far.
    n_seeds = scale.seeds
    rounds = [n_seeds] if len(kinds) == 1 else list(range(1, n_seeds + 1))
    for r in rounds:
        for kind in kinds:
            try:
                path = run_study(
                    kind, scale, root=out, text_dir=text_dir, core_dir=core, device=device,
                    tracker=tracker, only=only, say=say, command=command,
                    seeds=list(range(r)), log_cached=r == rounds[-1],
                )  # fmt: skip
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(str(path / f"{kind}.md"))


@study.command()
@_options
def equivalence(**kw) -> None:
    """Every training strategy (sequential BPTT, interleaved S=2/4, multi_refine K=1..3,
    chunked, baseline) at equal tokens, scored by exact sequential decoding."""
    _run(["equivalence"], **kw)


@study.command()
@_options
def attribution(**kw) -> None:
    """Baseline, baseline + value embeddings, the authors' arm with and without memory, our
    pathway, and the baseline at matched effective compute."""
    _run(["attribution"], **kw)


@study.command(name="all")
@_options
def all_(**kw) -> None:
    """Both studies in one process, seed by seed (they share the baseline and interleaved S=2
    cells); outputs are rewritten after each seed."""
    _run(list(STUDIES), **kw)
