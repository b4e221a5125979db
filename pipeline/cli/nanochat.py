"""`import-nanochat` and `export-nanochat`: nanochat / authors'-fork checkpoint folders as runs
(the conversion itself is `pipeline.train.nanochat_io`)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import with_settings
from pipeline.config.settings import Settings


def _runs_dir(settings: Settings, runs_dir: str | None) -> str:
    return runs_dir if runs_dir is not None else settings.train.out_dir


@click.command(name="import-nanochat")
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


@click.command(name="export-nanochat")
@click.option("--variant", required=True, help="Run whose RUNS_DIR/VARIANT/model.pt to export.")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--runs-dir", default=None, help="Runs folder (default: train.out_dir).")
@with_settings
def export_nanochat(settings: Settings, variant: str, out_dir: Path, runs_dir: str | None) -> None:
    """Write a run's model as a nanochat checkpoint folder (model_<step>.pt, meta_<step>.json)."""
    from pipeline.train.nanochat_io import export_nanochat as run_export

    model_path, meta_path = run_export(variant, out_dir, runs_dir=_runs_dir(settings, runs_dir))
    click.echo(f"wrote {model_path} and {meta_path}")


# ---------------------------------------------------------------------------------------------
# Standalone commands without --config/--set (--runs-dir defaults to "runs"; not registered in
# `lrt-pipeline`, whose commands above read train.out_dir); moved here from
# pipeline/train/nanochat_io.py so that only pipeline/cli/ defines commands.


@click.command("import-nanochat")
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--variant", required=True, help="Run name: writes RUNS_DIR/VARIANT/model.pt.")
@click.option("--step", type=int, default=None, help="Checkpoint step (default: the last).")
@click.option("--runs-dir", default="runs", show_default=True, help="Runs folder (train.out_dir).")
def import_nanochat_command(checkpoint_dir: Path, variant: str, step: int | None, runs_dir: str):
    """Import a nanochat / authors'-fork checkpoint folder as a run (eval/generate/report)."""
    from pipeline.train.nanochat_io import import_nanochat as run_import

    path = run_import(checkpoint_dir, variant, step=step, runs_dir=runs_dir)
    click.echo(f"wrote {path}")


@click.command("export-nanochat")
@click.option("--variant", required=True, help="Run whose RUNS_DIR/VARIANT/model.pt to export.")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--runs-dir", default="runs", show_default=True, help="Runs folder (train.out_dir).")
def export_nanochat_command(variant: str, out_dir: Path, runs_dir: str):
    """Write a run's model as a nanochat checkpoint folder (model_<step>.pt, meta_<step>.json)."""
    from pipeline.train.nanochat_io import export_nanochat as run_export

    model_path, meta_path = run_export(variant, out_dir, runs_dir=runs_dir)
    click.echo(f"wrote {model_path} and {meta_path}")
