"""`lrt-pipeline`: run the LRT pipeline's stages, inspect settings, generate text, benchmark.

    lrt-pipeline run                                  # download -> tokenize -> train -> eval -> report
    lrt-pipeline train --variant lrt --set train.max_steps=50
    lrt-pipeline config show                          # every setting and where it came from
    lrt-pipeline generate --prompt "def main():" --variant lrt
    lrt-pipeline download --part 1/2                  # sharded sources: split across machines
    lrt-pipeline eval-bundle                          # CORE tasks into data/eval_bundle
    lrt-pipeline import-nanochat CKPT_DIR --variant nc   # a nanochat checkpoint as a run
    lrt-pipeline study equivalence --quick            # issue-14 studies

Every command takes `--config FILE` (default params.yaml) and repeatable `--set KEY=VALUE`.
Precedence: --set > environment LRT_SECTION__KEY > config file > defaults. `dvc repro` runs the
same stages through `stages/*.py`; this CLI runs them without DVC's caching.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from pipeline.config.settings import DEFAULT_CONFIG, Settings, SettingsError, load_settings

BENCHMARKS = ("tokenizer", "loader", "step", "ops", "core_sequential", "download")


class _UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit status 1."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input", not "bug": shown without a traceback."""
    from pipeline.atomic import OutputLockedError
    from pipeline.data.sources import DownloadError

    errors: list[type[BaseException]] = [
        SettingsError,
        FileNotFoundError,
        DownloadError,
        ValueError,
        OutputLockedError,  # another run writes the same folder
        OSError,  # disk full (ENOSPC / EFBIG), permissions: the message names the file
        FloatingPointError,  # training stopped on a non-finite loss (NonFiniteError)
    ]
    with contextlib.suppress(ImportError):  # the extension may not be built yet
        from pipeline.data.shards import ShardFormatError

        errors.append(ShardFormatError)
    return tuple(errors)


def _load(config_path: str | None, overrides: Sequence[str]) -> Settings:
    try:
        return load_settings(config_path, list(overrides))
    except SettingsError as exc:
        raise _UserError(str(exc)) from None


def with_settings(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --config/--set to a command and pass it the loaded `Settings` as first argument;
    turn user mistakes into clean one-line errors (--debug shows the traceback)."""

    @click.option(
        "--config",
        "config_path",
        default=DEFAULT_CONFIG,
        show_default=True,
        type=click.Path(dir_okay=False),
        help="YAML settings file (DVC's params.yaml). A missing params.yaml means defaults.",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override one setting, e.g. --set train.max_steps=100 (repeatable; YAML values).",
    )
    @functools.wraps(func)
    def wrapper(config_path: str, overrides: tuple[str, ...], **kwargs: Any) -> Any:
        settings = _load(config_path, overrides)
        try:
            return func(settings, **kwargs)
        except click.ClickException:
            raise
        except _user_errors() as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise _UserError(f"{type(exc).__name__}: {exc}") from None

    return wrapper


@contextlib.contextmanager
def _invocation(settings: Settings, command: str) -> Any:
    """One MLflow parent run for this command line, whatever stages and variants it runs."""
    from pipeline.tracking import Tracker

    with Tracker(settings.tracking, project_dir=settings.project_dir).pipeline(
        f"lrt-pipeline {command}"
    ):
        yield


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _variants(settings: Settings, names: Sequence[str]) -> list[str]:
    known = list(settings.train.variants)
    for name in names:
        if name not in known:
            raise _UserError(f"unknown variant {name!r}; train.variants has {', '.join(known)}")
    return list(names) or known


# ---------------------------------------------------------------------------------------------
# Root
# ---------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lrt-pipeline", prog_name="lrt-pipeline")
@click.option("--debug", is_flag=True, help="Show tracebacks for user errors; log at DEBUG level.")
def main(debug: bool) -> None:
    """Reproducible pipeline for the Latent Recurrent Transformer (LRT).

    Stages: download -> tokenize -> train -> eval -> report. `run` runs them all; `dvc repro`
    does the same with caching. Results land in runs/ and reports/, and in MLflow
    (`mlflow ui --backend-store-uri sqlite:///mlruns.db`).
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow", "mlflow.system_metrics", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------

_VARIANT = click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME",
    help="A key of train.variants (repeatable). Default: every variant.",
)


def _parse_part(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from pipeline.data.parts import PartSpec

    try:
        return PartSpec.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@main.command()
@click.option(
    "--part",
    metavar="I/N",
    callback=_parse_part,
    help="Sharded sources: fetch only training shards I-1, I-1+N, ... (1-based; part 1 also "
    "fetches the validation shard) into data.raw_dir in place, no manifest; parts may share "
    "the folder. Then one `download` without --part links them and writes the manifest.",
)
@with_settings
def download(settings: Settings, part: Any) -> None:
    """Fetch or assemble the raw corpus (data.source) into data.raw_dir."""
    from pipeline import steps

    with _invocation(settings, "download"):
        manifest = steps.download(settings, part=part)
    prefix = f"part {part}: " if part is not None else ""
    click.echo(
        f"{prefix}{manifest['documents']} documents, {manifest['bytes']:,} bytes in "
        f"{len(manifest['files'])} file(s) -> {settings.data.raw_dir}"
    )


@main.command()
@click.option(
    "--part",
    metavar="I/N",
    callback=_parse_part,
    help="Pack only part I of N (1-based) of the documents, with the tokenizer.bpe already "
    "in tokenizer.out_dir; run I = 1..N on any machines, then --merge.",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Check the N parts in tokenizer.out_dir and write the final manifest.json.",
)
@click.option(
    "--tokenizer-only",
    is_flag=True,
    help="Only train (or copy tokenizer.pretrained) and save tokenizer.bpe, for --part runs.",
)
@with_settings
def tokenize(settings: Settings, part: Any, merge: bool, tokenizer_only: bool) -> None:
    """Train the BPE tokenizer and pack the raw documents into token shards.

    Across machines: `--tokenizer-only` once, copy tokenizer.bpe to each machine's
    tokenizer.out_dir, `--part i/N` for i = 1..N, collect every part's files in one folder,
    `--merge`.
    """
    from pipeline import steps

    chosen = [name for name, on in (("--part", part), ("--merge", merge),
                                    ("--tokenizer-only", tokenizer_only)) if on]  # fmt: skip
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} exclude each other; use one per run")
    out = settings.tokenizer.out_dir
    with _invocation(settings, "tokenize"):
        stats = steps.tokenize(settings, part=part, merge=merge, tokenizer_only=tokenizer_only)
    if tokenizer_only:
        click.echo(
            f"tokenizer vocab {stats['vocab_size']}, hash {stats['tokenizer_hash'][:12]} -> {out}"
        )
        return
    prefix = ""
    if part is not None:
        prefix = f"part {part}: "
    elif merge:
        prefix = f"{stats.get('parts')} parts merged: "
    click.echo(
        prefix
        + (f"vocab {stats['vocab_size']}, " if "vocab_size" in stats else "")
        + f"{stats['tokens']:,} tokens "
        f"({stats['train_tokens']:,} train / {stats['val_tokens']:,} val) -> {out}"
    )


@main.command()
@_VARIANT
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint.")
@with_settings
def train(settings: Settings, variants: tuple[str, ...], resume: bool) -> None:
    """Train variants into train.out_dir/VARIANT."""
    from pipeline import steps
    from pipeline.train.launch import maybe_relaunch

    names = _variants(settings, variants)
    with _invocation(settings, "train"):
        # train.nproc_per_node > 1: the same command line under torchrun (the ranks reuse this
        # invocation's MLflow parent run through the environment)
        status = maybe_relaunch(settings.train, "pipeline.cli", sys.argv[1:])
        if status is not None:
            if status:
                raise SystemExit(status)
            return
        for name in names:
            metrics = steps.train(settings, name, resume=resume)
            click.echo(f"{name}: {_summary(metrics)}")


@main.command(name="eval")
@_VARIANT
@with_settings
def eval_(settings: Settings, variants: tuple[str, ...]) -> None:
    """Evaluate trained variants (BPB in every mode, CORE, ICL probes, samples)."""
    from pipeline import steps
    from pipeline.report.data import summary_table

    names = _variants(settings, variants)
    results: dict[str, Any] = {}
    with _invocation(settings, "eval"):
        for name in names:
            results[name] = metrics = steps.evaluate(settings, name)
            click.echo(f"{name}: {_summary(metrics)}")
    click.echo(summary_table(results))


@main.command()
@with_settings
def report(settings: Settings) -> None:
    """Write report.md and report.html comparing the variants."""
    from pipeline import steps

    with _invocation(settings, "report"):
        click.echo(str(steps.report(settings)))


@main.command()
@_VARIANT
@with_settings
def run(settings: Settings, variants: tuple[str, ...]) -> None:
    """Run every stage in order (no DVC caching), all variants, under one MLflow parent run."""
    from pipeline import steps
    from pipeline.report.data import summary_table

    result = steps.run_all(settings, variants=_variants(settings, variants))
    for name, metrics in result["eval"].items():
        click.echo(f"{name}: {_summary(metrics)}")
    click.echo(summary_table(result["eval"]))
    click.echo(f"report: {result['report']}")


def _summary(metrics: dict[str, Any]) -> str:
    keys = ("step", "val_bpb", "loss", "core", "elapsed_s")
    parts = [
        f"{k}={metrics[k]:.4g}" if isinstance(metrics.get(k), float) else f"{k}={metrics[k]}"
        for k in keys
        if metrics.get(k) is not None and not isinstance(metrics.get(k), dict)
    ]
    return ", ".join(parts) or "done"


# ---------------------------------------------------------------------------------------------
# Generate
# ---------------------------------------------------------------------------------------------


@main.command()
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

    name = _variants(settings, [variant])[0] if variant else next(iter(settings.train.variants))
    path = Path(settings.train.out_dir) / name / "model.pt"
    if not path.is_file():
        raise _UserError(
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


@main.group()
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
        _echo_json(data)
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
            raise _UserError(f"--opt expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(raw)
    return out


@main.command()
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
        raise _UserError(f"benchmark {name!r} is not available: {exc}") from None
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
        raise _UserError(
            f"benchmark {name!r} takes no option(s) {unknown}; it takes {list(accepted)}"
        )
    result = run_fn(**kwargs)
    _echo_json(result)
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
        raise _UserError(
            f"benchmark {name!r} rejected {' '.join(argv)}; see "
            f"`python -m pipeline.benchmarks.{name} --help`"
        ) from None
    if isinstance(status, int) and status != 0:
        raise click.exceptions.Exit(status)


@main.command()
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
        raise _UserError(f"sweep is not available: {exc}") from None
    result = run_sweep(settings, budgets=list(budgets) or None, methods=list(methods) or None)
    if as_json:
        _echo_json(
            {k: v for k, v in result.items() if k != "runs"} | {"runs": len(result.get("runs", []))}
        )
        return
    click.echo(sweep_markdown(result))


# ---------------------------------------------------------------------------------------------
# Eval bundle, nanochat interop, studies
# ---------------------------------------------------------------------------------------------


@main.command(name="eval-bundle")
@with_settings
def eval_bundle(settings: Settings) -> None:
    """Fetch nanochat's CORE eval bundle (eval.bundle_url) into data/eval_bundle.

    Offline, the folder holds only a status.json saying why; eval then skips CORE with that
    sentence. `dvc repro` runs the same as its `eval_bundle` stage.
    """
    from pipeline import steps

    with _invocation(settings, "eval-bundle"):
        status = steps.eval_bundle(settings)
    click.echo(status["message"])


def _runs_dir(settings: Settings, runs_dir: str | None) -> str:
    return runs_dir if runs_dir is not None else settings.train.out_dir


@main.command(name="import-nanochat")
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--variant", required=True, help="Run name: writes RUNS_DIR/VARIANT/model.pt.")
@click.option("--step", type=int, default=None, help="Checkpoint step (default: the last).")
@click.option("--runs-dir", default=None, help="Runs folder (default: train.out_dir).")
@with_settings
def import_nanochat(
    settings: Settings, checkpoint_dir: Path, variant: str, step: int | None, runs_dir: str | None
) -> None:
    """Import a nanochat / authors'-fork checkpoint folder as a run (eval/generate/report)."""
    from pipeline.train.nanochat_io import import_nanochat as run_import

    path = run_import(checkpoint_dir, variant, step=step, runs_dir=_runs_dir(settings, runs_dir))
    click.echo(f"wrote {path}")


@main.command(name="export-nanochat")
@click.option("--variant", required=True, help="Run whose RUNS_DIR/VARIANT/model.pt to export.")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--runs-dir", default=None, help="Runs folder (default: train.out_dir).")
@with_settings
def export_nanochat(settings: Settings, variant: str, out_dir: Path, runs_dir: str | None) -> None:
    """Write a run's model as a nanochat checkpoint folder (model_<step>.pt, meta_<step>.json)."""
    from pipeline.train.nanochat_io import export_nanochat as run_export

    model_path, meta_path = run_export(variant, out_dir, runs_dir=_runs_dir(settings, runs_dir))
    click.echo(f"wrote {model_path} and {meta_path}")


def _register_study() -> None:
    # pipeline.study imports only click at its top (torch and the rest inside the commands)
    from pipeline.study import study

    main.add_command(study, name="study")


_register_study()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
