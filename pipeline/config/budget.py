"""How many optimizer steps and micro-batches a configured training run takes.

    >>> from pipeline.config.settings import TrainSettings
    >>> plan_steps(TrainSettings(max_steps=10), 1e6), grad_accum_steps(1024, 4, 32, 2)
    (10, 4)

Pure arithmetic on `train.*`: the training loop (`pipeline.train.loop`) and the data layer's
`num_shards: auto` (`pipeline.data.datasets.planning`) both size their work from it.
"""

from __future__ import annotations

from typing import Any


def plan_steps(train_settings: Any, scaling_params: float) -> int:
    """Optimizer steps: `max_steps`, else tokens_per_param x scaling params / batch tokens."""
    if train_settings.max_steps is not None:
        return int(train_settings.max_steps)
    tokens = train_settings.tokens_per_param * scaling_params
    return max(1, round(tokens / train_settings.total_batch_tokens))


def grad_accum_steps(
    total_batch_tokens: int, device_batch_size: int, seq_len: int, world: int
) -> int:
    """Micro-batches per rank per step; a clear error when the batch does not divide."""
    per_micro = device_batch_size * seq_len * world
    if total_batch_tokens % per_micro:
        raise ValueError(
            f"train.total_batch_tokens={total_batch_tokens} is not divisible by "
            f"device_batch_size={device_batch_size} x seq_len={seq_len} x world_size={world} "
            f"= {per_micro}; choose total_batch_tokens as a multiple of {per_micro}"
        )
    return total_batch_tokens // per_micro
