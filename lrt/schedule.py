"""Learning-rate and Muon-momentum schedules (nanochat style), as pure functions of the step.

The trainer multiplies every group's `initial_lr` by `lr_multiplier(step, total_steps)` and sets
the Muon momentum to `muon_momentum(step)` before each optimizer step (see
`MuonAdamW.set_schedule` in `lrt/optim.py`).

Example:
    >>> [round(lr_multiplier(s, 10, warmdown_ratio=0.2), 2) for s in (0, 7, 8, 9, 10)]
    [1.0, 1.0, 1.0, 0.5, 0.0]
    >>> [round(muon_momentum(s), 3) for s in (0, 150, 1000)]
    [0.85, 0.9, 0.95]
"""

from __future__ import annotations


def lr_multiplier(
    step: int,
    total_steps: int,
    warmup_ratio: float = 0.0,
    warmdown_ratio: float = 0.2,
    final_lr_frac: float = 0.0,
) -> float:
    """Multiplier on each group's initial learning rate at optimizer step `step` (0-based).

    Three phases: linear warmup over `round(warmup_ratio * total_steps)` steps (reaching 1 at the
    end of warmup), constant 1, then a linear warmdown over the last
    `round(warmdown_ratio * total_steps)` steps that reaches `final_lr_frac` at
    `step == total_steps`.

    Args:
        step: Current step, 0 <= step <= total_steps.
        total_steps: Number of optimizer steps in the run.
        warmup_ratio: Fraction of steps spent warming up.
        warmdown_ratio: Fraction of steps spent decaying.
        final_lr_frac: Multiplier reached at the end of the warmdown.

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
    progress = max(0.0, (total_steps - step) / warmdown)  # 1 -> 0 over the warmdown
    return progress + (1.0 - progress) * final_lr_frac


def muon_momentum(
    step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95
) -> float:
    """Muon momentum: linear ramp from `start` to `end` over the first `warmup_steps` steps.

    Example:
        >>> muon_momentum(300)
        0.95
    """
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end
