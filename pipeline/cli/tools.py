"""Commands around the stages: generate text, show the settings, run a benchmark or a sweep."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from pipeline.cli.common import UserError, echo_json, resolve_variants, with_settings
from pipeline.config.settings import Settings

BENCHMARKS = ("tokenizer", "loader", "step", "ops", "core_sequential", "download")


# ---------------------------------------------------------------------------------------------
# Generate
# ---------------------------------------------------------------------------------------------


@click.command()
@click.option("--prompt", required=True, help="Text to continue.")
@click.option(
    "--variant", default=None, metavar="NAME", help="Model to use (default: the first variant)."
)
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--temperature",
    default=0.8,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="0 = greedy.",
)
@click.option(
    "--top-k", default=50, show_default=True, type=click.IntRange(min=0), help="0 = no cut."
)
@click.option("--seed", default=None, type=int, help="Seed for reproducible samples.")
@click.option(
    "--static",
    is_flag=True,
    help="Static-shape decoder (lrt.static_decode): one CUDA graph replay per token on a GPU.",
)
@with_settings
def generate(
    settings: Settings,
    prompt: str,
    variant: str | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int | None,
    static: bool,
) -> None:
    """Continue a prompt with a trained model (exact recurrent decoding, KV cache + memory)."""
    import torch

    from lrt.decode import generate as lrt_generate
    from pipeline.evaluation.run import load_tokenizer
    from pipeline.train.checkpoint import load_model

    name = (
        resolve_variants(settings, [variant])[0] if variant else next(iter(settings.train.variants))
    )
    path = Path(settings.train.out_dir) / name / "model.pt"
    if not path.is_file():
        raise UserError(
            f"{path} does not exist; train it first (lrt-pipeline train --variant {name})"
        )
    device = settings.train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, _ = load_model(
        path,
        device=device,
        data_dir=settings.tokenizer.out_dir,
        allow_mismatch=settings.train.allow_mismatch,
    )
    tokenizer = load_tokenizer(settings.tokenizer.out_dir)
    ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    out = lrt_generate(
        model,
        ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k or None,
        seed=seed,
        static=static,
    )
    click.echo(prompt + tokenizer.decode(out[0, len(ids) :].tolist()))


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@click.group()
def config() -> None:
    """Inspect the effective settings."""


@config.command(name="show")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "yaml", "json"]),
    default="text",
    show_default=True,
    help="text: one line per key with its source; yaml/json: the settings only.",
)
@click.argument("section", required=False)
@with_settings
def config_show(settings: Settings, fmt: str, section: str | None) -> None:
    """Print every setting (or one SECTION) and where its value came from."""
    data = settings.model_dump(mode="json")
    if section is not None:
        settings.section(section)  # unknown section -> a message naming the valid ones
        data = {section: data[section]}
    if fmt == "json":
        echo_json(data)
        return
    if fmt == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
        return
    flat = {
        k: v for k, v in settings.flat().items() if section is None or k.split(".")[0] == section
    }
    provenance = settings.provenance
    width = max(len(k) for k in flat)
    for key, value in flat.items():
        click.echo(f"{key:<{width}}  {json.dumps(value)}  # {provenance.get(key, 'default')}")


# ---------------------------------------------------------------------------------------------
# Benchmarks and sweep
# ---------------------------------------------------------------------------------------------


def _parse_options(options: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--opt expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(raw)
    return out


@click.command()
@click.argument("name", type=click.Choice(BENCHMARKS))
@click.option(
    "--opt",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Keyword argument for the benchmark's run().",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), default=None, help="Also write the result JSON here."
)
@with_settings
def bench(settings: Settings, name: str, options: tuple[str, ...], out: str | None) -> None:
    """Run a benchmark (pipeline.benchmarks.NAME.run) and print its JSON result.

    Benchmarks with a command line only (core_sequential, download) get each --opt KEY=VALUE
    as `--KEY VALUE` (a list value: one argument per item; true: the bare flag) and print
    their own text; --out goes to the ones that take it.
    """
    try:
        module = importlib.import_module(f"pipeline.benchmarks.{name}")
    except ModuleNotFoundError as exc:
        raise UserError(f"benchmark {name!r} is not available: {exc}") from None
    kwargs = _parse_options(options)
    run_fn = getattr(module, "run", None)
    if run_fn is None or list(inspect.signature(run_fn).parameters) == ["args"]:
        _bench_main(module, name, kwargs, out)
        return
    accepted = inspect.signature(run_fn).parameters
    if "settings" in accepted and "settings" not in kwargs:
        kwargs["settings"] = settings
    unknown = (
        [k for k in kwargs if k not in accepted]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        else []
    )
    if unknown:
        raise UserError(
            f"benchmark {name!r} takes no option(s) {unknown}; it takes {list(accepted)}"
        )
    result = run_fn(**kwargs)
    echo_json(result)
    if out:
        Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


def _bench_argv(options: dict[str, Any]) -> list[str]:
    """--opt values as an argparse command line: {"budget_mb": 64} -> ["--budget-mb", "64"]."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _bench_main(module: Any, name: str, options: dict[str, Any], out: str | None) -> None:
    argv = _bench_argv(options)
    if out:
        argv += ["--out", out]
    try:
        status = module.main(argv)
    except SystemExit as exc:  # argparse: unknown option (its usage line is already printed)
        if exc.code in (0, None):
            return
        raise UserError(
            f"benchmark {name!r} rejected {' '.join(argv)}; see "
            f"`python -m pipeline.benchmarks.{name} --help`"
        ) from None
    if isinstance(status, int) and status != 0:
        raise click.exceptions.Exit(status)


@click.command()
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    type=float,
    metavar="R",
    help="Tokens per parameter (repeatable).",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    metavar="NAME",
    help="Method or variant name (repeatable).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as JSON (the equal-compute table and the run count) instead.",
)
@with_settings
def sweep(
    settings: Settings, budgets: tuple[float, ...], methods: tuple[str, ...], as_json: bool
) -> None:
    """Train and evaluate methods over token budgets; compare at equal effective compute.

    Prints the runs and the equal-compute table as Markdown (--json: as JSON)."""
    try:
        from pipeline.sweep import run_sweep, sweep_markdown
    except ImportError as exc:
        raise UserError(f"sweep is not available: {exc}") from None
    result = run_sweep(settings, budgets=list(budgets) or None, methods=list(methods) or None)
    if as_json:
        echo_json(
            {k: v for k, v in result.items() if k != "runs"} | {"runs": len(result.get("runs", []))}
        )
        return
    click.echo(sweep_markdown(result))
