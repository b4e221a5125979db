"""Evaluate one trained variant: BPB in every mode, CORE, ICL probes and samples (stage `eval`).

    >>> from pipeline.config.settings import load_settings
    >>> metrics = evaluate_variant(load_settings(), "lrt")     # doctest: +SKIP

Reads `{train.out_dir}/{variant}/model.pt` and the shards + tokenizer in `tokenizer.out_dir`;
writes into `{train.out_dir}/{variant}/`:

    metrics.json       headline numbers only (`split_headline`), for `dvc metrics show`,
                       `dvc exp show`, MLflow and the report
    eval_details.json  the rest: per-position BPB buckets (`metrics.bpb_buckets`), every mode's
                       gap and in-context gain, per-task CORE, ICL accuracy per number of
                       examples, per-position losses, CORE status (`core_status`)
    samples.json       generations from `eval.samples_prompts`

A baseline (no pathway) computes one function in every mode (an identity `lrt` tests): its
"sequential" BPB is the init pass over the sequential mode's windows (the same tokens as an LRT's),
the other BPB modes and its CORE / ICL "sequential" entries repeat the "init" values.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_write_json, finite_json
from pipeline.evaluation.batching import MAX_ROWS, budget_bytes, sequential_rows
from pipeline.evaluation.bpb import (
    bpb_metrics,
    chunked,
    evaluate_bpb,
    lrt_loss_fns,
    supported_modes,
)
from pipeline.evaluation.bundle import core_status
from pipeline.evaluation.core import core_metrics, evaluate_core, lrt_scorer
from pipeline.evaluation.core_tasks import load_tasks
from pipeline.evaluation.icl import evaluate_synthetic, in_context_gain
from pipeline.evaluation.samples import generate_samples, write_samples
from pipeline.train.device import resolve_device

log = logging.getLogger(__name__)

CORE_MODES_LRT = ("init", "sequential")  # zero memory vs recurrent memory


def load_tokenizer(data_dir: str | Path) -> Any:
    """The tokenizer saved next to the shards (`tokenizer*` in `data_dir`)."""
    from pipeline.data.tokenizer import Tokenizer, find_tokenizer

    path = find_tokenizer(data_dir)
    if path is None:
        raise FileNotFoundError(
            f"no tokenizer file (tokenizer*) in {data_dir}; run `lrt-pipeline tokenize` first"
        )
    return Tokenizer.load(path)


def evaluate_model(
    model: Any,
    tokenizer: Any,
    eval_settings: Any,
    *,
    data_dir: str | Path | None = None,
    val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    strategy: Any = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Run every evaluation on a loaded model.

    Args:
        model: An `lrt.LRT` in eval mode on `device`.
        tokenizer: `pipeline.data.tokenizer.Tokenizer` of the shards.
        eval_settings: The `eval` settings section.
        data_dir: Folder of the packed shards (its val split is scored).
        val_batches: (inputs, targets) batches to score instead of reading `data_dir`.
        strategy: The model's training `lrt.StrategyConfig` (S, K of "merged"/"refine").
        batch_size: Sequences per forward.
        device: Where the model runs.
        progress: Show progress bars.

    Returns:
        (metrics, details, samples).
    """
    ev = eval_settings
    cfg = model.config
    seq_len = cfg.seq_len
    lrt_modes = supported_modes(model)
    requested = list(ev.modes)
    modes = [m for m in requested if m in lrt_modes] or ["init"]
    if "init" not in modes:
        modes.insert(0, "init")
    if "sequential" in modes and "merged" in lrt_modes and "merged" not in modes:
        modes.append("merged")  # cheap (S+1 passes) and needed for the train/test gap
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"modes_computed": modes}
    timings: dict[str, float] = {}

    # Exact sequential scoring batches from a memory budget, not training's batch (its cost
    # is one step per position whatever the batch holds; see pipeline.evaluation.batching).
    budget = budget_bytes(ev, torch.device(device))
    seq_rows = sequential_rows(cfg, seq_len, budget)  # CORE / ICL: (L, V) logits kept
    bpb_rows = sequential_rows(cfg, seq_len, budget, stacked_logits=False)
    recurrent = cfg.has_pathway and "sequential" in modes
    bpb_batch = max(batch_size, bpb_rows) if recurrent else batch_size
    details["batching"] = {
        "device_batch_size": batch_size,
        "sequential_rows_bpb": bpb_rows,
        "sequential_rows_core": seq_rows,
        "sequential_budget_mb": budget / (1 << 20),
    }

    # -- BPB ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if val_batches is None:
        from pipeline.data.loader import validation_loader

        if data_dir is None:
            raise ValueError("evaluate_model needs data_dir or val_batches")
        val_batches = validation_loader(
            data_dir, bpb_batch, seq_len, tokenizer_hash=getattr(tokenizer, "hash", None)
        )
    loss_fns = {
        m: chunked(fn, bpb_rows if m == "sequential" else batch_size)
        for m, fn in lrt_loss_fns(model, modes, strategy).items()
    }
    if not cfg.has_pathway and "sequential" in requested:
        # Exact decoding of a baseline is its init pass; scoring it again over the sequential
        # mode's windows keeps `bpb.sequential` on the same tokens for every variant.
        loss_fns["sequential"] = loss_fns["init"]
    bpb = evaluate_bpb(
        loss_fns,
        val_batches,
        tokenizer.token_byte_lengths(),
        seq_len=seq_len,
        bucket_size=ev.bucket_size,
        max_tokens=ev.bpb_max_tokens,
        mode_max_tokens=(
            {"sequential": ev.sequential_max_tokens} if ev.sequential_max_tokens else None
        ),
        bos_id=tokenizer.bos_id,
        device=device,
        progress=progress,
    )
    metrics.update(bpb_metrics(bpb, alias_modes=[m for m in requested if m not in loss_fns]))
    metrics["icl_gain"] = {m: in_context_gain(bpb.results[m].doc_position_loss) for m in modes}
    details["bpb"] = {
        m: {
            "bpb": r.bpb,
            "loss": r.loss,
            "nats": r.nats,
            "bytes": r.bytes,
            "tokens": r.tokens,
            "bucket_size": r.bucket_size,
            "buckets": r.buckets,
            "position_loss": r.position_loss,
            "doc_position_loss": r.doc_position_loss,
        }
        for m, r in bpb.results.items()
    }
    details["bpb_common"] = {
        "tokens": bpb.common_tokens,
        "bpb": {m: r.bpb for m, r in bpb.common.items()},
    }
    timings["bpb"] = time.perf_counter() - t0
    log.info(
        "BPB %s (%.1f s)",
        ", ".join(f"{m} {r.bpb:.4f}" for m, r in bpb.results.items()),
        timings["bpb"],
    )

    # -- CORE -----------------------------------------------------------------------------------
    scorer = lrt_scorer(model, device=device)
    score_modes = CORE_MODES_LRT if cfg.has_pathway else ("init",)
    core_dir = Path(ev.core_dir)
    tasks = load_tasks(core_dir) if core_dir.is_dir() else []
    details["core_status"] = core_status(core_dir, len(tasks))
    if tasks:
        log.info("%s", details["core_status"]["message"])
        t0 = time.perf_counter()
        core = evaluate_core(
            tasks,
            scorer,
            tokenizer,
            modes=score_modes,
            batch_size=batch_size,
            max_len=seq_len,
            max_items=ev.core_max_items,
            progress=progress,
            sequential_batch=(MAX_ROWS, seq_rows * seq_len),
        )
        cm = core_metrics(core)
        metrics["core"] = cm["core"]
        details["core_tasks"] = cm["core_tasks"]
        details["core_table"] = [
            {"name": t.name, "type": t.type, "shots": t.shots, "random_baseline": t.random_baseline}
            for t in tasks
        ]
        timings["core"] = time.perf_counter() - t0
    else:
        log.warning("%s", details["core_status"]["message"])

    # -- ICL synthetic tasks --------------------------------------------------------------------
    if ev.icl_enabled:
        t0 = time.perf_counter()
        syn = evaluate_synthetic(
            scorer,
            tokenizer.encode,
            tokenizer.bos_id,
            modes=score_modes,
            n_items=ev.icl_max_items,
            seed=ev.seed,
            batch_size=batch_size,
            max_len=seq_len,
            sequential_batch=(MAX_ROWS, seq_rows * seq_len),
        )
        details["icl"] = {
            m: {task: {str(n): v for n, v in per_n.items()} for task, per_n in tasks_.items()}
            for m, tasks_ in syn.items()
        }
        # headline: accuracy averaged over the numbers of examples
        metrics["icl_acc"] = {
            m: {
                task: sum(v["acc"] for v in per_n.values()) / len(per_n)
                for task, per_n in tasks_.items()
            }
            for m, tasks_ in syn.items()
        }
        timings["icl"] = time.perf_counter() - t0

    if not cfg.has_pathway and "sequential" in requested:
        # No pathway: the recurrent scores are the zero-memory ones (see the module docstring).
        for key in ("core", "icl_gain", "icl_acc"):
            if "init" in metrics.get(key, {}):
                metrics[key]["sequential"] = metrics[key]["init"]

    # -- samples --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    samples = generate_samples(
        model,
        tokenizer,
        list(ev.samples_prompts),
        max_new_tokens=ev.max_new_tokens,
        temperature=ev.temperature,
        seed=ev.seed,
    )
    timings["samples"] = time.perf_counter() - t0
    details["seconds"] = timings
    metrics, details["metrics"] = split_headline(metrics)
    return metrics, details, samples


HEADLINE_KEYS = ("step", "val_bpb", "val_loss", "bpb", "core", "icl_acc")
"""Kept whole in metrics.json; of `bpb_gap` only `merged` (the train/test gap) and of `icl_gain`
only `init` and `sequential` are headline; the rest goes to eval_details.json."""


def split_headline(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(headline, rest): what `dvc metrics show` lists (a dozen or so numbers per variant) and
    the detail (per-position buckets, every mode's gap and gain, token counts).

    >>> split_headline({"val_bpb": 1.0, "bpb_gap": {"merged": 0.1, "init": 0.2}, "val_tokens": 8})
    ({'val_bpb': 1.0, 'bpb_gap': {'merged': 0.1}}, {'bpb_gap': {'init': 0.2}, 'val_tokens': 8})
    """
    keep_sub = {"bpb_gap": ("merged",), "icl_gain": ("init", "sequential")}
    head: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in HEADLINE_KEYS:
            head[key] = value
        elif key in keep_sub and isinstance(value, Mapping):
            sub = {m: v for m, v in value.items() if m in keep_sub[key]}
            other = {m: v for m, v in value.items() if m not in keep_sub[key]}
            if sub:
                head[key] = sub
            if other:
                rest[key] = other
        else:
            rest[key] = value
    return head, rest


def evaluate_variant(settings: Any, variant: str, *, tracker: Any = None) -> dict[str, Any]:
    """Evaluate `{train.out_dir}/{variant}/model.pt` and write metrics.json, eval_details.json
    and samples.json next to it.

    Args:
        settings: `pipeline.config.settings.Settings`.
        variant: Run folder name (normally a key of `train.variants`).
        tracker: None (no MLflow), a `pipeline.tracking.Tracker` (opens the `eval/<variant>`
            child run unless one is active), or an object with `log_metrics` / `log_artifact`
            (e.g. the `pipeline.tracking` module, logging to the active run).

    Returns:
        The metrics written to metrics.json.

    Raises:
        FileNotFoundError: no model.pt (train the variant first) or no tokenizer.
    """
    run_dir = Path(settings.train.out_dir) / variant
    model_path = run_dir / "model.pt"
    if not model_path.is_file():
        raise FileNotFoundError(
            f"{model_path} does not exist; train it first (`lrt-pipeline train --variant {variant}`)"
        )

    def run(logger: Any) -> dict[str, Any]:
        from pipeline.train.checkpoint import load_model

        device = resolve_device(settings.train.device)
        model, strategy, state = load_model(model_path, device=device)
        data_dir = Path(settings.tokenizer.out_dir)
        tokenizer = load_tokenizer(data_dir)
        metrics, details, samples = evaluate_model(
            model,
            tokenizer,
            settings.eval,
            data_dir=data_dir,
            strategy=strategy,
            batch_size=settings.train.device_batch_size,
            device=device,
            progress=sys.stderr.isatty(),  # tqdm on a terminal; plain log lines otherwise
        )
        metrics = {"step": int(state.get("step", 0)), **metrics}
        paths = [
            atomic_write_json(run_dir / "metrics.json", metrics),
            atomic_write_json(run_dir / "eval_details.json", {"variant": variant, **details}),
            write_samples(run_dir / "samples.json", samples),
        ]
        if logger is not None:
            logger.log_metrics(finite_json(metrics))
            for p in paths:
                logger.log_artifact(p)
            _log_model_params(logger, settings, variant, model)
            if getattr(logger, "log_generator", None) is not None:
                from pipeline.data.tokenizer import find_tokenizer

                logger.log_generator(model_path, find_tokenizer(data_dir))
        return metrics

    if tracker is None:
        return run(None)
    from pipeline import tracking

    if isinstance(tracker, tracking.Tracker) or tracker is tracking:
        logger = _MlflowLogger()
        if isinstance(tracker, tracking.Tracker) and tracking.active_run_id() is None:
            with tracker.stage("eval", variant=variant):
                return run(logger)
        return run(logger)
    return run(tracker)


class _MlflowLogger:
    """What the eval stage logs to its MLflow run: metrics, artifacts, model and strategy params
    (so runs group by pathway / strategy in the UI), and the model as a pyfunc generator."""

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        from pipeline import tracking

        tracking.log_metrics(metrics)

    def log_artifact(self, path: Path) -> None:
        from pipeline import tracking

        tracking.log_artifact(path)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from pipeline import tracking

        tracking.log_params(params)
        tracking.set_tags({k: v for k, v in params.items() if k.startswith("lrt.")})

    def log_generator(self, model_path: Path, tokenizer_path: Path | None) -> None:
        from pipeline.mlflow_model import log_generator

        if tokenizer_path is None:
            return
        try:
            log_generator(model_path, tokenizer_path)
        except Exception as exc:  # noqa: BLE001 - a logged model is a convenience, not a result
            log.warning("could not log the model to MLflow: %s", exc)


def _log_model_params(logger: Any, settings: Any, variant: str, model: Any) -> None:
    """The variant's `model.*` / `strategy.*` settings as params, as the train run has them."""
    if getattr(logger, "log_params", None) is None:
        return
    try:
        from pipeline.config.settings import variant_settings

        m, st = variant_settings(settings, variant)
    except Exception:  # noqa: BLE001 - a run folder outside train.variants: no settings
        return
    params: dict[str, Any] = {f"model.{k}": v for k, v in m.model_dump(mode="json").items()}
    params.update({f"strategy.{k}": v for k, v in st.model_dump(mode="json").items()})
    params["lrt.pathway"] = m.pathway
    params["lrt.strategy"] = st.name
    logger.log_params(params)
