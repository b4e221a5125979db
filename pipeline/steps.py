"""The pipeline's stages as typed functions: download -> tokenize -> train -> eval -> report.

Each function takes the settings, glues the components together, and records itself in MLflow as
one child run (`pipeline.tracking`). The DVC entry points in `stages/` and the `lrt-pipeline`
CLI both call these and nothing else.

    >>> from pipeline import steps
    >>> from pipeline.config.settings import load_settings
    >>> settings = load_settings()                          # params.yaml + env
    >>> steps.run_all(settings)                             # doctest: +SKIP

Outputs (relative to the project folder, with the default settings):
    data/raw/            download: parquet documents + manifest.json
    data/tokens/         tokenize: tokenizer.bpe, {train,val}_NNNN.bin, manifest.json, stats.json
    runs/VARIANT/        train: model.pt, train_log.csv, val_log.csv, train_metrics.json, ckpt/
                         eval: metrics.json, eval_details.json, samples.json
    reports/             report: report.md, report.html
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config.settings import Settings, variant_settings
from pipeline.data.parts import PartSpec
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

STAGES = ("download", "tokenize", "train", "eval", "report", "eval_bundle")

# The settings each stage reads; they are its MLflow params and its `params:` in dvc.yaml.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    # data.num_shards: auto sizes the download from the run (tokens per param x params, bytes
    # per token of the tokenizer in tokenizer.out_dir when it matches tokenizer.vocab_size)
    "download": (
        "data",
        "train",
        "model",
        "strategy",
        "tokenizer.vocab_size",
        "tokenizer.pretrained",
        "tokenizer.out_dir",
    ),
    "tokenize": ("data.raw_dir", "tokenizer"),
    "train": ("tokenizer.out_dir", "model", "strategy", "train"),
    "eval": (
        "tokenizer.out_dir",
        "train.out_dir",
        "train.device",
        "train.device_batch_size",
        "train.allow_mismatch",
        "eval",
    ),
    "report": ("tokenizer.out_dir", "train.out_dir", "train.variants", "report"),
    "eval_bundle": ("eval.bundle_url", "eval.bundle_sha256"),
}

__all__ = [
    "STAGES",
    "STAGE_SECTIONS",
    "download",
    "eval_bundle",
    "evaluate",
    "report",
    "run_all",
    "stage_main",
    "stage_params",
    "tokenize",
    "train",
]


# ---------------------------------------------------------------------------------------------
# Tracking glue
# ---------------------------------------------------------------------------------------------


def stage_params(settings: Settings, stage: str, variant: str | None = None) -> dict[str, Any]:
    """The flattened settings `stage` reads (a variant's model/strategy with its overrides
    applied, other variants left out)."""
    flat = settings.flat()
    if variant is not None:
        model, strategy = variant_settings(settings, variant)
        flat.update({f"model.{k}": v for k, v in model.model_dump(mode="json").items()})
        flat.update({f"strategy.{k}": v for k, v in strategy.model_dump(mode="json").items()})
    prefixes = STAGE_SECTIONS[stage]
    if stage == "download" and getattr(settings.data, "num_shards", None) != "auto":
        prefixes = ("data",)  # the run's sections size the download only for `auto`
    params = {
        key: value
        for key, value in flat.items()
        if any(key == p or key.startswith(p + ".") for p in prefixes)
    }
    if variant is not None:
        params = {
            k: v
            for k, v in params.items()
            if not k.startswith("train.variants.") or k.startswith(f"train.variants.{variant}.")
        }
        params["variant"] = variant
    return params


def _tracker(settings: Settings) -> Tracker:
    return Tracker(settings.tracking, project_dir=settings.project_dir)


@contextlib.contextmanager
def _stage(settings: Settings, stage: str, variant: str | None = None) -> Iterator[None]:
    with _tracker(settings).stage(
        stage, variant=variant, params=stage_params(settings, stage, variant)
    ):
        yield


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def download(settings: Settings, part: PartSpec | None = None) -> dict[str, Any]:
    """Fetch or assemble the raw corpus into `data.raw_dir`; returns its manifest.

    `part` (sharded sources only: fineweb-edu, climbmix, parquet-url) fetches every N-th
    training shard into `data.raw_dir` in place and returns the part's manifest without writing
    it; one plain `download` afterwards links the parts' shards and writes manifest.json."""
    from pipeline.data import sources  # deferred: only this stage depends on it (dvc.yaml)

    with _stage(settings, "download"):
        manifest = sources.download(
            settings.data,
            run=settings,
            part=None if part is None else (part.index, part.count),
        )
        if part is not None:
            tracking.log_metrics({"raw/files": len(manifest["files"])})
            return manifest
        tracking.log_metrics(
            {
                "raw/documents": manifest["documents"],
                "raw/bytes": manifest["bytes"],
                "raw/text_bytes": manifest["text_bytes"],
                "raw/files": len(manifest["files"]),
            }
        )
        tracking.log_artifact(Path(settings.data.raw_dir) / sources.MANIFEST)
    return manifest


def tokenize(
    settings: Settings,
    *,
    part: PartSpec | None = None,
    merge: bool = False,
    tokenizer_only: bool = False,
) -> dict[str, Any]:
    """Train the BPE (or load `tokenizer.pretrained`), save it, pack the raw documents into
    shards in `tokenizer.out_dir`, and write `stats.json`; returns the stats.

    Across machines (at most one of the three):
        tokenizer_only: only train/load and save `tokenizer.bpe` (+ its stats in stats.json).
        part: pack part i of n (1-based) with the `tokenizer.bpe` already in the folder.
        merge: check the n parts and write the final `manifest.json` (and stats.json).
    """
    if sum((part is not None, merge, tokenizer_only)) > 1:
        raise ValueError("choose at most one of part, merge and tokenizer_only")
    from pipeline.atomic import locked

    # deferred, like every stage's own code: the other stages do not depend on it (dvc.yaml)
    from pipeline.data.tokenize_stage import (
        STATS_FILE,
        save_tokenizer,
        tokenize_merge,
        tokenize_part,
        tokenize_single_run,
    )

    # Locked from the start (not only while swapping): a second tokenize fails at once
    # instead of after training its own tokenizer.
    with _stage(settings, "tokenize"), locked(settings.tokenizer.out_dir):
        out = Path(settings.tokenizer.out_dir)
        from pipeline.data.tokenizer import (
            TOKENIZER_FILE,  # lazy: the CLI starts without the extension
        )

        if tokenizer_only:
            stats = save_tokenizer(settings)
        elif part is not None:
            stats = tokenize_part(settings, part)
            tracking.log_metrics({"tokenizer": {k: v for k, v in stats.items() if k != "part"}})
            tracking.log_artifact(out / part.manifest_name)
            return stats
        elif merge:
            stats = tokenize_merge(settings)
        else:
            stats = tokenize_single_run(settings)
        tracking.log_metrics({"tokenizer": stats})
        tracking.log_artifact(out / STATS_FILE)
        if not tokenizer_only:
            tracking.log_artifact(out / "manifest.json")
        tracking.log_artifact(out / TOKENIZER_FILE)
    return stats


def train(
    settings: Settings,
    variant: str,
    *,
    resume: bool = False,
    relaunch: tuple[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Train one variant into `{train.out_dir}/{variant}`; returns its final metrics.

    `relaunch=(module, argv)`: with `train.nproc_per_node` > 1 (outside torchrun), run
    `python -m module argv` under torchrun instead and return the metrics its rank 0 wrote.
    """
    from pipeline.train.launch import maybe_relaunch
    from pipeline.train.loop import train_variant

    variant_settings(settings, variant)  # fail early, with the valid names, on a typo
    if relaunch is not None:
        status = maybe_relaunch(settings.train, *relaunch)
        if status:
            raise SystemExit(status)
        if status == 0:
            out = Path(settings.train.out_dir) / variant  # PATH_FIELDS: already absolute
            return json.loads((out / "train_metrics.json").read_text())
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 alone records
        return train_variant(settings, variant, resume=resume, tracker=None)
    with _stage(settings, "train", variant):
        return train_variant(settings, variant, resume=resume, tracker=tracking)


def evaluate(settings: Settings, variant: str) -> dict[str, Any]:
    """Evaluate `{train.out_dir}/{variant}/model.pt`; writes metrics.json next to it."""
    from pipeline.atomic import output_dir
    from pipeline.evaluation.run import evaluate_variant
    from pipeline.train.checkpoint import expect_data, run_file_ours

    variant_settings(settings, variant)
    run_dir = Path(settings.train.out_dir) / variant
    # Locked and staged like train: the run folder (model, logs and the previous metrics)
    # is carried into a fresh copy, evaluated there, and swapped in after success. load_model
    # checks the model against this stage's tokens folder (train.allow_mismatch overrides).
    with (
        _stage(settings, "eval", variant),
        output_dir(run_dir, owned=run_file_ours, keep=lambda name: True) as staging,
        expect_data(settings.tokenizer.out_dir, allow_mismatch=settings.train.allow_mismatch),
    ):
        staged = settings.model_copy(
            update={"train": settings.train.model_copy(update={"out_dir": str(staging.parent)})}
        )
        return evaluate_variant(staged, variant, tracker=tracking)


def eval_bundle(settings: Settings) -> dict[str, Any]:
    """nanochat's CORE eval bundle into `eval.bundle_dir` (default data/eval_bundle), as the
    DVC stage `eval_bundle` does; offline the folder holds a status saying why (no error).

    Raises:
        EvalBundleError: an archive arrived but is not the expected bundle (URL or hash wrong).
    """
    from pipeline.evaluation.bundle import DEFAULT_DIR, prepare_bundle, settings_url

    url = settings_url(settings)
    out_dir = Path(getattr(settings.eval, "bundle_dir", None) or DEFAULT_DIR)
    sha256 = getattr(settings.eval, "bundle_sha256", None)
    params = {"eval.bundle_url": url, "eval.bundle_dir": str(out_dir)}
    with _tracker(settings).stage("eval_bundle", params=params):
        # the DVC stage's retries and timeout: offline, `run` must not wait minutes
        status = prepare_bundle(out_dir, url, sha256=sha256, retries=2, timeout_s=30.0)
        tracking.set_tags({"lrt.core_status": str(status.get("message", ""))[:5000]})
        tracking.log_metrics({"core_tasks": status.get("tasks", 0)})
    return status


def _eval_bundle_stage(settings: Settings) -> int:
    """`eval_bundle` as the DVC stage runs it: the status line on stdout, exit status 0 (offline
    included); an archive that arrived but is not the bundle is one line on stderr, status 1."""
    import sys

    from pipeline.evaluation.bundle import EvalBundleError

    try:
        status = eval_bundle(settings)
    except EvalBundleError as exc:
        print(f"stage eval_bundle: {exc}", file=sys.stderr)
        return 1
    print(status["message"])
    return 0


def report(settings: Settings) -> Path:
    """Build report.md / report.html in `report.out_dir`; returns the report path."""
    from pipeline.report.build import build_report

    with _stage(settings, "report"):
        path = Path(build_report(settings))
        tracking.log_artifact(path.parent)
    return path


def run_all(settings: Settings, *, variants: Iterable[str] | None = None) -> dict[str, Any]:
    """Every stage in order, every variant (or `variants`), under one MLflow parent run.

    Returns {"download": manifest, "tokenize": stats, "eval_bundle": status,
    "train": {v: metrics}, "eval": {v: ...}, "report": path}."""
    names = list(variants) if variants is not None else list(settings.train.variants)
    for name in names:
        variant_settings(settings, name)
    result: dict[str, Any] = {"train": {}, "eval": {}}
    with _tracker(settings).pipeline("lrt-pipeline run"):
        result["download"] = download(settings)
        result["tokenize"] = tokenize(settings)
        result["eval_bundle"] = eval_bundle(settings)
        for name in names:
            result["train"][name] = train(settings, name)
            result["eval"][name] = evaluate(settings, name)
        result["report"] = report(settings)
    return result


# ---------------------------------------------------------------------------------------------
# Entry point of the DVC stages (stages/*.py)
# ---------------------------------------------------------------------------------------------


def stage_main(stage: str, argv: list[str]) -> int:
    """Run one stage the way `dvc repro` does: settings from params.yaml (+ LRT_* environment),
    the variant (train, eval) as the only argument. Returns the exit status."""
    import sys

    from pipeline.config.settings import SettingsError, load_settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("alembic", "mlflow", "mlflow.system_metrics", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    needs_variant = stage in ("train", "eval")
    if len(argv) != (1 if needs_variant else 0):
        usage = " VARIANT" if needs_variant else ""
        print(f"usage: python -m stages.{stage}{usage}", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"stage {stage}: {exc}", file=sys.stderr)
        return 2
    if stage == "download":
        download(settings)
    elif stage == "tokenize":
        tokenize(settings)
    elif stage == "train":
        train(settings, argv[0], relaunch=("stages.train", argv))
    elif stage == "eval":
        evaluate(settings, argv[0])
    elif stage == "report":
        report(settings)
    elif stage == "eval_bundle":
        return _eval_bundle_stage(settings)
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return 0
