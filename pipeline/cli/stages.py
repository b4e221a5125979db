"""The pipeline's stage commands: download, tokenize, train, eval, report, run, eval-bundle.

Each calls the stage's function in `pipeline.steps` under one MLflow parent run and prints a
one-line summary; `dvc repro` runs the same functions through `stages/*.py`.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from pipeline.cli.common import resolve_variants, tracked_invocation, with_settings
from pipeline.config.settings import Settings

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


@click.command()
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

    with tracked_invocation(settings, "download"):
        manifest = steps.download(settings, part=part)
    prefix = f"part {part}: " if part is not None else ""
    click.echo(
        f"{prefix}{manifest['documents']} documents, {manifest['bytes']:,} bytes in "
        f"{len(manifest['files'])} file(s) -> {settings.data.raw_dir}"
    )


@click.command()
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
    with tracked_invocation(settings, "tokenize"):
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


@click.command()
@_VARIANT
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint.")
@with_settings
def train(settings: Settings, variants: tuple[str, ...], resume: bool) -> None:
    """Train variants into train.out_dir/VARIANT."""
    from pipeline import steps
    from pipeline.train.launch import maybe_relaunch

    names = resolve_variants(settings, variants)
    with tracked_invocation(settings, "train"):
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


@click.command(name="eval")
@_VARIANT
@with_settings
def eval_(settings: Settings, variants: tuple[str, ...]) -> None:
    """Evaluate trained variants (BPB in every mode, CORE, ICL probes, samples)."""
    from pipeline import steps
    from pipeline.report.data import summary_table

    names = resolve_variants(settings, variants)
    results: dict[str, Any] = {}
    with tracked_invocation(settings, "eval"):
        for name in names:
            results[name] = metrics = steps.evaluate(settings, name)
            click.echo(f"{name}: {_summary(metrics)}")
    click.echo(summary_table(results))


@click.command()
@with_settings
def report(settings: Settings) -> None:
    """Write report.md and report.html comparing the variants."""
    from pipeline import steps

    with tracked_invocation(settings, "report"):
        click.echo(str(steps.report(settings)))


@click.command()
@_VARIANT
@with_settings
def run(settings: Settings, variants: tuple[str, ...]) -> None:
    """Run every stage in order (no DVC caching), all variants, under one MLflow parent run."""
    from pipeline import steps
    from pipeline.report.data import summary_table

    result = steps.run_all(settings, variants=resolve_variants(settings, variants))
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


@click.command(name="eval-bundle")
@with_settings
def eval_bundle(settings: Settings) -> None:
    """Fetch nanochat's CORE eval bundle (eval.bundle_url) into data/eval_bundle.

    Offline, the folder holds only a status.json saying why; eval then skips CORE with that
    sentence. `dvc repro` runs the same as its `eval_bundle` stage.
    """
    from pipeline import steps

    with tracked_invocation(settings, "eval-bundle"):
        status = steps.eval_bundle(settings)
    click.echo(status["message"])
