"""nanochat's training schedules and hyperparameter scalings, as pure functions of the step.

Each optimizer step the trainer calls (see `MuonAdamW.set_schedule` in `lrt/optim.py`)

    opt.set_schedule(lr_multiplier(step, n), muon_momentum(step), weight_decay_multiplier(step, n))

which is nanochat's `scripts/base_train.py` loop (`get_lr_multiplier`, `get_muon_momentum`,
`get_weight_decay`, as in the LRT authors' fork, e0d0f6e). The two one-off scalings applied when
the optimizer is built are here too: `batch_lr_scale` (every learning rate times
`sqrt(B / 2^19)`, B the total batch in tokens) and `depth_weight_decay` (`wd * (12 / depth)^2`).

Example:
    >>> [round(lr_multiplier(s, 10), 2) for s in (0, 5, 6, 9, 10)]
    [1.0, 1.0, 0.8, 0.2, 0.0]
    >>> [round(muon_momentum(s), 3) for s in (0, 150, 1000)]
    [0.85, 0.9, 0.95]
    >>> weight_decay_multiplier(25, 100), batch_lr_scale(2**17), depth_weight_decay(0.2, 24)
    (0.75, 0.5, 0.05)
"""

from __future__ import annotations

import math

__all__ = [
    "REFERENCE_BATCH_TOKENS",
    "REFERENCE_DEPTH",
    "batch_lr_scale",
    "depth_weight_decay",
    "lr_multiplier",
    "muon_momentum",
    "weight_decay_multiplier",
]

REFERENCE_BATCH_TOKENS = 2**19  # nanochat tuned its learning rates at 524,288 tokens per step
REFERENCE_DEPTH = 12  # ... and its weight decay at depth 12


def lr_multiplier(
    step: int,
    total_steps: int,
    warmup_ratio: float = 0.0,
    warmdown_ratio: float = 0.5,
    final_lr_frac: float = 0.0,
) -> float:
    """Multiplier on each group's initial learning rate at optimizer step `step` (0-based).

    nanochat's `get_lr_multiplier`: linear warm-up over `round(warmup_ratio * total_steps)`
    steps (`(step + 1) / warmup`), constant 1, then a linear warm-down over the last
    `round(warmdown_ratio * total_steps)` steps that reaches `final_lr_frac` at
    `step == total_steps`. Defaults are nanochat's (no warm-up, warm-down 0.5, to 0).

    Args:
        step: Current step, 0 <= step <= total_steps.
        total_steps: Number of optimizer steps in the run.
        warmup_ratio: Fraction of steps spent warming up.
        warmdown_ratio: Fraction of steps spent decaying.
        final_lr_frac: Multiplier reached at the end of the warm-down.

    Example:
        >>> lr_multiplier(0, 100, warmup_ratio=0.1)
        0.1
        >>> lr_multiplier(90, 100, warmdown_ratio=0.2)
        0.5
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not (0.0 <= warmup_ratio <= 1.0 and 0.0 <= warmdown_ratio <= 1.0):
        raise ValueError(
            f"warmup_ratio={warmup_ratio}, warmdown_ratio={warmdown_ratio} must be in [0, 1]"
        )
    warmup = round(warmup_ratio * total_steps)
    warmdown = round(warmdown_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if warmdown == 0 or step <= total_steps - warmdown:
        return 1.0
    progress = max(0.0, (total_steps - step) / warmdown)  # 1 -> 0 over the warm-down
    return progress + (1.0 - progress) * final_lr_frac


def muon_momentum(
    step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95
) -> float:
    """Muon momentum: linear ramp from `start` to `end` over the first `warmup_steps` steps
    (nanochat's `get_muon_momentum`), then constant.

    Example:
        >>> muon_momentum(300)
        0.95
    """
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end


def weight_decay_multiplier(step: int, total_steps: int) -> float:
    """Muon weight decay over training: `1 - step / total_steps`, linear to 0 at the end
    (nanochat's `get_weight_decay` divided by its base value).

    Example:
        >>> weight_decay_multiplier(0, 10), weight_decay_multiplier(10, 10)
        (1.0, 0.0)
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return 1.0 - step / total_steps


def batch_lr_scale(
    total_batch_tokens: int, reference_tokens: int | None = REFERENCE_BATCH_TOKENS
) -> float:
    """Factor on every learning rate for a batch of `total_batch_tokens` tokens per optimizer
    step: `sqrt(B / reference_tokens)` (nanochat's `batch_lr_scale`); 1 when reference is None.

    Example:
        >>> batch_lr_scale(2**21)
        2.0
    """
    if total_batch_tokens < 1:
        raise ValueError(f"total_batch_tokens must be >= 1, got {total_batch_tokens}")
    if reference_tokens is None:
        return 1.0
    return math.sqrt(total_batch_tokens / reference_tokens)


def depth_weight_decay(
    weight_decay: float, depth: int, reference_depth: int | None = REFERENCE_DEPTH
) -> float:
    """Weight decay for a model of `depth` blocks from its value at `reference_depth`:
    `wd * (reference_depth / depth)^2` (nanochat: wd ~ 1/width^2 at fixed aspect ratio);
    unchanged when reference_depth is None.

    Example:
        >>> depth_weight_decay(0.2, 12), depth_weight_decay(0.2, 6)
        (0.2, 0.8)
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if reference_depth is None:
        return weight_decay
    return weight_decay * (reference_depth / depth) ** 2
