"""Evaluation of trained variants: BPB in every decoding mode, CORE, ICL probes, samples.

Modules:
    bpb         bits per byte on validation shards, per mode and per position bucket
    periodic    the validation loss/BPB training logs every `train.eval_every` steps
    core_tasks  CORE's task table, bundle layouts, items and prompts
    core        CORE scoring (multiple choice, schema, language modelling) in each memory mode
    icl         in-context loss gain and seeded synthetic tasks
    samples     generations from fixed prompts
    run         `evaluate_variant`: load runs/<variant>/model.pt, run everything, write metrics.json

Run one variant (the `eval` stage does this for each):

    >>> from pipeline.config.settings import load_settings                  # doctest: +SKIP
    >>> from pipeline.evaluation import evaluate_variant             # doctest: +SKIP
    >>> metrics = evaluate_variant(load_settings(), "lrt")           # doctest: +SKIP
    >>> metrics["val_bpb"], metrics["core"]                          # doctest: +SKIP

The names below are imported on first use (PEP 562): training imports
`pipeline.evaluation.periodic`, which runs this file, and must not load (nor, for DVC, depend on)
CORE, the bundle and the eval stage.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "bpb": ("BPBEvaluation", "BPBMeter", "BPBResult", "bpb_metrics", "evaluate_bpb",
            "lrt_loss_fns", "supported_modes"),
    "core": ("CoreResult", "LossesAndArgmax", "TaskResult", "centered_accuracy", "core_metrics",
             "evaluate_core", "evaluate_task", "lrt_scorer"),
    "core_tasks": ("DEFAULT_TASKS", "TaskSpec", "load_tasks"),
    "icl": ("evaluate_synthetic", "in_context_gain", "make_task"),
    "run": ("evaluate_model", "evaluate_variant"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
