"""nanochat's schedules and scalings (lrt/schedule.py) against hand-computed values."""

from __future__ import annotations

import pytest

from lrt.schedule import (
    batch_lr_scale,
    depth_weight_decay,
    lr_multiplier,
    muon_momentum,
    weight_decay_multiplier,
)


def test_lr_multiplier_defaults_are_nanochats():
    # total 100, no warm-up, warm-down 0.5 -> 50 steps: 1 until step 50, then (100 - s) / 50
    assert lr_multiplier(0, 100) == 1.0
    assert lr_multiplier(50, 100) == 1.0
    assert lr_multiplier(51, 100) == pytest.approx(49 / 50)
    assert lr_multiplier(75, 100) == pytest.approx(0.5)
    assert lr_multiplier(100, 100) == 0.0


def test_lr_multiplier_points():
    # warm-down 20 steps: constant until 80, then (100 - s) / 20
    assert lr_multiplier(80, 100, warmdown_ratio=0.2) == 1.0
    assert lr_multiplier(81, 100, warmdown_ratio=0.2) == pytest.approx(19 / 20)
    assert lr_multiplier(90, 100, warmdown_ratio=0.2) == pytest.approx(0.5)
    # final_lr_frac 0.1: halfway through warm-down = 0.5 + 0.5 * 0.1
    assert lr_multiplier(90, 100, warmdown_ratio=0.2, final_lr_frac=0.1) == pytest.approx(0.55)
    assert lr_multiplier(100, 100, final_lr_frac=0.1) == pytest.approx(0.1)
    # warm-up 10 steps: (s + 1) / 10
    assert lr_multiplier(0, 100, warmup_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(4, 100, warmup_ratio=0.1) == pytest.approx(0.5)
    assert lr_multiplier(10, 100, warmup_ratio=0.1) == 1.0
    # round(): 7 steps x 0.5 = 3.5 -> 4 warm-down steps (banker's rounding as Python's round)
    assert lr_multiplier(3, 7) == 1.0 and lr_multiplier(4, 7) == pytest.approx(3 / 4)
    assert lr_multiplier(99, 100, warmdown_ratio=0.0) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        lr_multiplier(0, 0)
    with pytest.raises(ValueError, match="warmdown_ratio"):
        lr_multiplier(0, 10, warmdown_ratio=1.5)


def test_muon_momentum_points():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(10_000) == pytest.approx(0.95)
    assert muon_momentum(5, warmup_steps=0) == 0.95
    assert muon_momentum(5, warmup_steps=10, start=0.5, end=1.0) == pytest.approx(0.75)


def test_weight_decay_schedule_and_scalings():
    assert [weight_decay_multiplier(s, 8) for s in (0, 2, 4, 8)] == [1.0, 0.75, 0.5, 0.0]
    # 0.2 * (12 / depth)^2 at the paper's depths
    assert depth_weight_decay(0.2, 12) == pytest.approx(0.2)
    assert depth_weight_decay(0.2, 20) == pytest.approx(0.072)
    assert depth_weight_decay(0.2, 24) == pytest.approx(0.05)
    assert depth_weight_decay(0.2, 3, reference_depth=None) == 0.2
    # sqrt(B / 2^19)
    assert batch_lr_scale(2**19) == 1.0
    assert batch_lr_scale(2**21) == pytest.approx(2.0)
    assert batch_lr_scale(4096) == pytest.approx(0.08838834764831845)  # 1 / sqrt(128)
    assert batch_lr_scale(4096, reference_tokens=None) == 1.0
    with pytest.raises(ValueError, match="total_batch_tokens"):
        batch_lr_scale(0)
    with pytest.raises(ValueError, match="depth"):
        depth_weight_decay(0.2, 0)
