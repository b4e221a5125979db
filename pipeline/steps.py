"""The pipeline's stages as typed functions: download -> tokenize -> train -> eval -> report.

Each function takes the settings, glues the components together, and records itself in MLflow as
one child run (`pipeline.tracking`). The DVC entry points in `stages/` and the `lrt-pipeline`
CLI both call these and nothing else.

    >>> from pipeline import steps
    >>> from pipeline.settings import load_settings
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
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline import sources, tracking
from pipeline.settings import Settings, variant_settings
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

STAGES = ("download", "tokenize", "train", "eval", "report")
STATS_FILE = "stats.json"

# The settings each stage reads; they are its MLflow params and its `params:` in dvc.yaml.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "download": ("data",),
    "tokenize": ("data.raw_dir", "tokenizer"),
    "train": ("tokenizer.out_dir", "model", "strategy", "train"),
    "eval": (
        "tokenizer.out_dir",
        "train.out_dir",
        "train.device",
        "train.device_batch_size",
        "eval",
    ),
    "report": ("tokenizer.out_dir", "train.out_dir", "train.variants", "report"),
}

__all__ = [
    "STAGES",
    "STAGE_SECTIONS",
    "download",
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


def download(settings: Settings) -> dict[str, Any]:
    """Fetch or assemble the raw corpus into `data.raw_dir`; returns its manifest."""
    with _stage(settings, "download"):
        manifest = sources.download(settings.data)
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


def tokenize(settings: Settings) -> dict[str, Any]:
    """Train the BPE (or load `tokenizer.pretrained`), save it, pack the raw documents into
    shards in `tokenizer.out_dir`, and write `stats.json`; returns the stats."""
    with _stage(settings, "tokenize"):
        stats = _tokenize(settings)
        tracking.log_metrics({"tokenizer": stats})
        out = Path(settings.tokenizer.out_dir)
        tracking.log_artifact(out / STATS_FILE)
        tracking.log_artifact(out / "manifest.json")
        from pipeline.tokenizer import TOKENIZER_FILE  # lazy: the CLI starts without the extension

        tracking.log_artifact(out / TOKENIZER_FILE)
    return stats


def train(settings: Settings, variant: str, *, resume: bool = False) -> dict[str, Any]:
    """Train one variant into `{train.out_dir}/{variant}`; returns its final metrics."""
    from pipeline.training import train_variant

    variant_settings(settings, variant)  # fail early, with the valid names, on a typo
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 alone records
        return train_variant(settings, variant, resume=resume, tracker=None)
    with _stage(settings, "train", variant):
        return train_variant(settings, variant, resume=resume, tracker=tracking)


def evaluate(settings: Settings, variant: str) -> dict[str, Any]:
    """Evaluate `{train.out_dir}/{variant}/model.pt`; writes metrics.json next to it."""
    from pipeline.evaluation.run import evaluate_variant

    with _stage(settings, "eval", variant):
        return evaluate_variant(settings, variant, tracker=tracking)


def report(settings: Settings) -> Path:
    """Build report.md / report.html in `report.out_dir`; returns the report path."""
    from pipeline.report import build_report

    with _stage(settings, "report"):
        path = Path(build_report(settings))
        tracking.log_artifact(path.parent)
    return path


def run_all(settings: Settings, *, variants: Iterable[str] | None = None) -> dict[str, Any]:
    """Every stage in order, every variant (or `variants`), under one MLflow parent run.

    Returns {"download": manifest, "tokenize": stats, "train": {v: metrics}, "eval": {v: ...},
    "report": path}."""
    names = list(variants) if variants is not None else list(settings.train.variants)
    for name in names:
        variant_settings(settings, name)
    result: dict[str, Any] = {"train": {}, "eval": {}}
    with _tracker(settings).pipeline("lrt-pipeline run"):
        result["download"] = download(settings)
        result["tokenize"] = tokenize(settings)
        for name in names:
            result["train"][name] = train(settings, name)
            result["eval"][name] = evaluate(settings, name)
        result["report"] = report(settings)
    return result


# ---------------------------------------------------------------------------------------------
# Tokenize
# ---------------------------------------------------------------------------------------------

_STALE = re.compile(r"^((train|val)_\d+\.bin|manifest\.json|stats\.json|tokenizer.*)$")


def _take_bytes(docs: Iterable[str], max_bytes: int) -> list[str]:
    """The first documents up to `max_bytes` UTF-8 bytes (the last one cut to fit)."""
    out: list[str] = []
    total = 0
    for doc in docs:
        data = doc.encode("utf-8")
        if total + len(data) > max_bytes:
            rest = data[: max_bytes - total].decode("utf-8", errors="ignore")
            if rest:
                out.append(rest)
            break
        out.append(doc)
        total += len(data)
    return out


def _tokenize(settings: Settings) -> dict[str, Any]:
    tok = settings.tokenizer
    raw_dir = Path(settings.data.raw_dir)
    raw = sources.read_raw_manifest(raw_dir)  # first: "run download" beats an import error

    from pipeline.shards import pack_files
    from pipeline.tokenizer import TOKENIZER_FILE, Tokenizer

    out = Path(tok.out_dir)
    # Train the tokenizer on the training documents only (a source's own val split excluded).
    sample = _take_bytes(sources.iter_documents(raw_dir, "train"), tok.train_max_bytes)
    start = time.perf_counter()
    if tok.pretrained:
        tokenizer = Tokenizer.load(tok.pretrained)
    else:
        tokenizer = Tokenizer.train(sample, tok.vocab_size)
    train_s = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():  # a previous configuration's shards must not linger
        if path.is_file() and _STALE.match(path.name):
            path.unlink()
    tokenizer.save(out / TOKENIZER_FILE)
    sample_bytes = sum(len(d.encode("utf-8")) for d in sample)
    sample_tokens = sum(len(ids) for ids in tokenizer.encode_batch(sample)) if sample else 0

    # A source's own validation files (fineweb-edu's last shard) go to val whole; the rest are
    # split by val_fraction.
    start = time.perf_counter()
    manifest = pack_files(
        sources.raw_files(raw_dir),
        tokenizer,
        out,
        shard_tokens=tok.shard_tokens,
        compression=tok.compression,
        val_fraction=tok.val_fraction,
        seed=tok.seed,
        val_paths=sources.raw_files(raw_dir, "val"),
    )
    pack_s = time.perf_counter() - start
    stats = {
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_hash": tokenizer.hash,
        "pretrained": bool(tok.pretrained),
        "train_sample_bytes": sample_bytes,
        "train_sample_documents": len(sample),
        "bytes_per_token": sample_bytes / sample_tokens if sample_tokens else None,
        "documents": manifest.documents,
        "tokens": manifest.total_tokens,
        "train_tokens": manifest.split_tokens("train"),
        "val_tokens": manifest.split_tokens("val"),
        "train_documents": manifest.split_documents("train"),
        "val_documents": manifest.split_documents("val"),
        "shards": {split: len(entries) for split, entries in manifest.splits.items()},
        "raw_text_bytes": raw.get("text_bytes") or None,
        "tokenizer_train_s": train_s,
        "pack_s": pack_s,
    }
    tmp = out / (STATS_FILE + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / STATS_FILE)
    return stats


# ---------------------------------------------------------------------------------------------
# Entry point of the DVC stages (stages/*.py)
# ---------------------------------------------------------------------------------------------


def stage_main(stage: str, argv: list[str]) -> int:
    """Run one stage the way `dvc repro` does: settings from params.yaml (+ LRT_* environment),
    the variant (train, eval) as the only argument. Returns the exit status."""
    import sys

    from pipeline.settings import SettingsError, load_settings

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
        train(settings, argv[0])
    elif stage == "eval":
        evaluate(settings, argv[0])
    elif stage == "report":
        report(settings)
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return 0
