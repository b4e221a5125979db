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
import errno
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config.settings import Settings, variant_settings
from pipeline.data import sources
from pipeline.data.parts import PART_FILE, PartSpec
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

STAGES = ("download", "tokenize", "train", "eval", "report")
STATS_FILE = "stats.json"

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

    # Locked from the start (not only while swapping): a second tokenize fails at once
    # instead of after training its own tokenizer.
    with _stage(settings, "tokenize"), locked(settings.tokenizer.out_dir):
        out = Path(settings.tokenizer.out_dir)
        from pipeline.data.tokenizer import (
            TOKENIZER_FILE,  # lazy: the CLI starts without the extension
        )

        if tokenizer_only:
            stats = _tokenizer_only(settings)
        elif part is not None:
            stats = _tokenize_part(settings, part)
            tracking.log_metrics({"tokenizer": {k: v for k, v in stats.items() if k != "part"}})
            tracking.log_artifact(out / part.manifest_name)
            return stats
        elif merge:
            stats = _tokenize_merge(settings)
        else:
            stats = _tokenize(settings)
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
    from pipeline.train.checkpoint import expect_data
    from pipeline.train.loop import _run_ours

    variant_settings(settings, variant)
    run_dir = Path(settings.train.out_dir) / variant
    # Locked and staged like train: the run folder (model, logs and the previous metrics)
    # is carried into a fresh copy, evaluated there, and swapped in after success. load_model
    # checks the model against this stage's tokens folder (train.allow_mismatch overrides).
    with (
        _stage(settings, "eval", variant),
        output_dir(run_dir, owned=_run_ours, keep=lambda name: True) as staging,
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
# Tokenize
# ---------------------------------------------------------------------------------------------

# What `tokenize` writes in its folder (temps included). Everything else there is the user's
# (a pretrained `tokenizer_gpt.bpe`, notes) and is carried across every re-run untouched.
_TOKENS_OURS = re.compile(
    r"^((train|val)_\d+\.bin|manifest\.json|stats\.json|tokenizer\.bpe|part\d+of\d+_.*)"
    r"(\.tmp.*)?$|^\.tokenizer\.bpe\.tmp.*$"
)


def _tokens_ours(name: str) -> bool:
    return _TOKENS_OURS.match(name) is not None


def _tokens_output(settings: Settings, keep: Any = lambda name: False) -> Any:
    """The locked, staged tokens folder (`pipeline.atomic.output_dir`)."""
    from pipeline.atomic import output_dir

    return output_dir(settings.tokenizer.out_dir, owned=_tokens_ours, keep=keep)


# Stats of the tokenizer itself (not of the packed data): kept from `--tokenizer-only` to merge.
_TOKENIZER_STATS = (
    "vocab_size",
    "tokenizer_hash",
    "pretrained",
    "train_sample_bytes",
    "train_sample_documents",
    "bytes_per_token",
    "tokenizer_train_s",
)


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


def _train_tokenizer(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The tokenizer (trained on the first training documents, or `tokenizer.pretrained`) and
    its stats (`_TOKENIZER_STATS`)."""
    from pipeline.data.tokenizer import Tokenizer

    tok = settings.tokenizer
    raw_dir = Path(settings.data.raw_dir)
    # Train the tokenizer on the training documents only (a source's own val split excluded).
    sample = _take_bytes(sources.iter_documents(raw_dir, "train"), tok.train_max_bytes)
    start = time.perf_counter()
    if tok.pretrained:
        tokenizer = Tokenizer.load(tok.pretrained)
    else:
        tokenizer = Tokenizer.train(sample, tok.vocab_size)
    train_s = time.perf_counter() - start
    sample_bytes = sum(len(d.encode("utf-8")) for d in sample)
    sample_tokens = sum(len(ids) for ids in tokenizer.encode_batch(sample)) if sample else 0
    stats = {
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_hash": tokenizer.hash,
        "pretrained": bool(tok.pretrained),
        "train_sample_bytes": sample_bytes,
        "train_sample_documents": len(sample),
        "bytes_per_token": sample_bytes / sample_tokens if sample_tokens else None,
        "tokenizer_train_s": train_s,
    }
    return tokenizer, stats


def _write_stats(out: Path, stats: dict[str, Any]) -> None:
    tmp = out / (STATS_FILE + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / STATS_FILE)


def _tokenizer_only(settings: Settings) -> dict[str, Any]:
    """`tokenize --tokenizer-only`: train (or load) and save `tokenizer.bpe`, nothing else.

    When the folder already holds the same tokenizer (same hash) everything in it is kept, so
    parts packed with it stay valid; a different tokenizer makes every shard, manifest and
    part file in the folder stale, and they are removed."""
    sources.read_raw_manifest(settings.data.raw_dir)  # "run download" first
    from pipeline.data.tokenizer import TOKENIZER_FILE, Tokenizer

    out = Path(settings.tokenizer.out_dir)
    tokenizer, stats = _train_tokenizer(settings)
    path = out / TOKENIZER_FILE
    same = path.is_file() and Tokenizer.load(path).hash == tokenizer.hash
    # The same tokenizer keeps everything (parts packed with it stay valid); another one
    # makes every shard, manifest and part stale: the new folder holds only it and user files.
    with _tokens_output(settings, keep=lambda name: same and name != STATS_FILE) as staging:
        tokenizer.save(staging / TOKENIZER_FILE)
        _write_stats(staging, stats)
    return stats


def _part_tokenizer(settings: Settings) -> Any:
    """The output folder's `tokenizer.bpe`, which every part and the merge must use."""
    from pipeline.data.tokenizer import TOKENIZER_FILE, Tokenizer

    out = Path(settings.tokenizer.out_dir)
    path = out / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            errno.ENOENT,
            "no tokenizer here; a part never trains its own (all parts must share one): run "
            "`lrt-pipeline tokenize --tokenizer-only` once and copy "
            f"{out / TOKENIZER_FILE} to every machine before `--part` / `--merge`",
            str(path),
        )
    tokenizer = Tokenizer.load(path)
    pretrained = settings.tokenizer.pretrained
    if pretrained and Tokenizer.load(pretrained).hash != tokenizer.hash:
        raise ValueError(
            f"tokenizer.pretrained {pretrained} is not the tokenizer in {path} (hashes differ); "
            "re-run `lrt-pipeline tokenize --tokenizer-only` to copy it there"
        )
    return tokenizer


def _raw_inputs_id(raw: dict[str, Any]) -> str:
    """Identifies the raw data every part must read: its files' names, hashes, counts, splits."""
    files = [[e["name"], e.get("sha256"), e["documents"], e.get("split")] for e in raw["files"]]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def _tokenize_part(settings: Settings, part: PartSpec) -> dict[str, Any]:
    """`tokenize --part i/n`: pack documents `(i-1)*N//n .. i*N//n - 1` with the folder's
    tokenizer into `partIIIIofNNNN_*` files."""
    raw_dir = Path(settings.data.raw_dir)
    raw = sources.read_raw_manifest(raw_dir)
    from pipeline.data.shards import MANIFEST_NAME

    tokenizer = _part_tokenizer(settings)

    def keep(name: str) -> bool:
        # The merged manifest is stale once a part changes; parts of another split (n) are
        # stale, and this part's old files are replaced.
        m = PART_FILE.match(name)
        if m:
            return int(m.group(2)) == part.count and int(m.group(1)) != part.index
        return name != MANIFEST_NAME

    start = time.perf_counter()
    with _tokens_output(settings, keep=keep) as staging:
        manifest = _pack_raw(
            settings,
            tokenizer,
            staging,
            part=part,
            file_documents=[int(e["documents"]) for e in raw["files"]],
            inputs_id=_raw_inputs_id(raw),
        )
    return {
        "part": str(part),
        "manifest": part.manifest_name,
        **_data_stats(manifest),
        "pack_s": time.perf_counter() - start,
    }


def _pack_raw(settings: Settings, tokenizer: Any, out: Path, **part_args: Any) -> Any:
    """`pack_files` over the raw corpus into `out` with the tokenizer settings
    (`part_args`: a part's `part`, `file_documents`, `inputs_id`). A source's own validation
    files (fineweb-edu's last shard) go to val whole; the rest are split by val_fraction."""
    from pipeline.data.packing import pack_files

    tok, raw_dir = settings.tokenizer, Path(settings.data.raw_dir)
    return pack_files(
        sources.raw_files(raw_dir),
        tokenizer,
        out,
        shard_tokens=tok.shard_tokens,
        compression=tok.compression,
        val_fraction=tok.val_fraction,
        seed=tok.seed,
        val_paths=sources.raw_files(raw_dir, "val"),
        **part_args,
    )


def _data_stats(manifest: Any) -> dict[str, Any]:
    from pipeline.data.shards import shard_set_hash

    listed = {
        "tokenizer_hash": manifest.tokenizer_hash,
        "splits": {
            split: [{"file": e.file, "sha256": e.sha256} for e in entries]
            for split, entries in manifest.splits.items()
        },
    }
    return {
        "shards_hash": shard_set_hash(listed),  # what models trained on these shards record
        "documents": manifest.documents,
        "tokens": manifest.total_tokens,
        "train_tokens": manifest.split_tokens("train"),
        "val_tokens": manifest.split_tokens("val"),
        "train_documents": manifest.split_documents("train"),
        "val_documents": manifest.split_documents("val"),
        "shards": {split: len(entries) for split, entries in manifest.splits.items()},
    }


def _tokenize_merge(settings: Settings) -> dict[str, Any]:
    """`tokenize --merge`: check every part and write `manifest.json` and `stats.json`."""
    from pipeline.data.parts import merge_parts
    from pipeline.data.shards import MANIFEST_NAME

    out = Path(settings.tokenizer.out_dir)
    tokenizer = _part_tokenizer(settings)
    previous: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads((out / STATS_FILE).read_text(encoding="utf-8"))
    if previous.get("tokenizer_hash") != tokenizer.hash:
        previous = {}  # stats of another tokenizer
    stats = {key: previous.get(key) for key in _TOKENIZER_STATS}
    stats.update(vocab_size=tokenizer.vocab_size, tokenizer_hash=tokenizer.hash)
    raw = sources.read_raw_manifest(settings.data.raw_dir) if _has_raw(settings) else {}
    with _tokens_output(settings, keep=lambda n: n not in (MANIFEST_NAME, STATS_FILE)) as staging:
        manifest = merge_parts(staging, tokenizer_hash=tokenizer.hash)
        stats.update(
            _data_stats(manifest),
            parts=manifest.source.get("parts"),
            raw_text_bytes=raw.get("text_bytes") or None,
        )
        _write_stats(staging, stats)
    return stats


def _has_raw(settings: Settings) -> bool:
    return (Path(settings.data.raw_dir) / sources.MANIFEST).is_file()


def _tokenize(settings: Settings) -> dict[str, Any]:
    raw_dir = Path(settings.data.raw_dir)
    raw = sources.read_raw_manifest(raw_dir)  # first: "run download" beats an import error

    from pipeline.data.tokenizer import TOKENIZER_FILE

    tokenizer, tok_stats = _train_tokenizer(settings)

    # A fresh folder: a previous configuration's shards (and parts) cannot linger, and the
    # previous pack stays whole until this one has succeeded.
    with _tokens_output(settings) as staging:
        tokenizer.save(staging / TOKENIZER_FILE)
        start = time.perf_counter()
        manifest = _pack_raw(settings, tokenizer, staging)
        pack_s = time.perf_counter() - start
        stats = {
            **{k: v for k, v in tok_stats.items() if k != "tokenizer_train_s"},
            **_data_stats(manifest),
            "raw_text_bytes": raw.get("text_bytes") or None,
            "tokenizer_train_s": tok_stats["tokenizer_train_s"],
            "pack_s": pack_s,
        }
        _write_stats(staging, stats)
    return stats


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
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return 0
