"""What a model and strategy imply for training: the optimizer recipe of `train.*`, parameter
and FLOP accounting, the number of forward passes a step logs, and the strategy/geometry check.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lrt import accounting
from lrt.config import LRTConfig, StrategyConfig
from lrt.optim import OptimizerRecipe


def model_accounting(model: nn.Module, strategy: StrategyConfig) -> dict[str, float]:
    """Parameter counts (`lrt.accounting.param_counts`) and training FLOPs per token."""
    counts = accounting.param_counts(model)
    return {
        "params": float(counts["total"]),
        "scaling_params": float(counts["scaling_params"]),
        "flops_per_token": float(accounting.flops_per_token(model.config, strategy)),
    }


def recipe_from_settings(ts: Any) -> OptimizerRecipe:
    """The `lrt.optim.OptimizerRecipe` of `train.*`: nanochat's Muon/AdamW recipe, its lr /
    momentum / weight-decay schedules, batch and depth scalings and gradient clip.

    Example:
        >>> from pipeline.config.settings import TrainSettings
        >>> r = recipe_from_settings(TrainSettings(reference_batch_tokens=None))
        >>> r.lr_scale(1024), r.weight_decay_at(depth=12), r.grad_clip
        (1.0, 0.2, 0.0)
    """
    return OptimizerRecipe(
        matrix_lr=ts.matrix_lr,
        embedding_lr=ts.embedding_lr,
        unembedding_lr=ts.unembedding_lr,
        scalar_lr=ts.scalar_lr,
        weight_decay=ts.weight_decay,
        muon_variant=ts.muon_variant,
        variance_reduction=ts.variance_reduction,
        cautious_wd=ts.cautious_wd,
        muon_beta2=ts.muon_beta2,
        reference_batch_tokens=ts.reference_batch_tokens,
        reference_depth=ts.weight_decay_reference_depth,
        warmup_ratio=ts.warmup_ratio,
        warmdown_ratio=ts.warmdown_ratio,
        final_lr_frac=ts.final_lr_frac,
        schedule_weight_decay=ts.schedule_weight_decay,
        grad_clip=ts.grad_clip,
    )


def n_passes(strategy: StrategyConfig, cfg: LRTConfig) -> int:
    if not cfg.has_pathway:
        return 1
    return {"interleaved": strategy.subsets + 1, "multi_refine": strategy.refine_steps + 1}.get(
        strategy.name, 1
    )


def check_strategy_fits(model_cfg: LRTConfig, strategy_cfg: StrategyConfig) -> None:
    # Caught here, before any data is read: otherwise torch fails deep inside the first step
    # with "upper bound and lower bound inconsistent with step sign".
    if strategy_cfg.name == "interleaved" and strategy_cfg.subsets > model_cfg.seq_len:
        raise ValueError(
            f"strategy.subsets={strategy_cfg.subsets} is larger than model.seq_len="
            f"{model_cfg.seq_len}: interleaved training splits the {model_cfg.seq_len} positions "
            "into that many subsets; use subsets <= seq_len"
        )
