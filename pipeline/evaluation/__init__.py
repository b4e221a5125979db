"""Evaluation of trained variants: BPB in every decoding mode, CORE, ICL probes, samples.

Modules:
    bpb         bits per byte on validation shards, per mode and per position bucket
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
"""

from pipeline.evaluation.bpb import (
    BPBEvaluation,
    BPBMeter,
    BPBResult,
    bpb_metrics,
    evaluate_bpb,
    lrt_loss_fns,
    supported_modes,
)
from pipeline.evaluation.core import (
    CoreResult,
    LossesAndArgmax,
    TaskResult,
    centered_accuracy,
    core_metrics,
    evaluate_core,
    evaluate_task,
    lrt_scorer,
)
from pipeline.evaluation.core_tasks import DEFAULT_TASKS, TaskSpec, load_tasks
from pipeline.evaluation.icl import evaluate_synthetic, in_context_gain, make_task
from pipeline.evaluation.run import evaluate_model, evaluate_variant

__all__ = [
    "DEFAULT_TASKS",
    "BPBEvaluation",
    "BPBMeter",
    "BPBResult",
    "CoreResult",
    "LossesAndArgmax",
    "TaskResult",
    "TaskSpec",
    "bpb_metrics",
    "centered_accuracy",
    "core_metrics",
    "evaluate_bpb",
    "evaluate_core",
    "evaluate_model",
    "evaluate_synthetic",
    "evaluate_task",
    "evaluate_variant",
    "in_context_gain",
    "load_tasks",
    "lrt_loss_fns",
    "lrt_scorer",
    "make_task",
    "supported_modes",
]
