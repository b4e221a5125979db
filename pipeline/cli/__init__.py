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
`python -m pipeline.cli ...` is the same program (`__main__.py`).
"""

from __future__ import annotations

import logging

import click

from pipeline.cli import nanochat, stages, tools

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


# The commands live by topic: stages.py (the pipeline's stages), tools.py (generate, config,
# bench, sweep), nanochat.py (checkpoint interop); common.py holds what they share.
for _command in (
    stages.download,
    stages.tokenize,
    stages.train,
    stages.eval_,
    stages.report,
    stages.run,
    tools.generate,
    tools.config,
    tools.bench,
    tools.sweep,
    stages.eval_bundle,
    nanochat.import_nanochat,
    nanochat.export_nanochat,
):
    main.add_command(_command)


def _register_study() -> None:
    # pipeline.study imports only click at its top (torch and the rest inside the commands)
    from pipeline.study import study

    main.add_command(study, name="study")


_register_study()
