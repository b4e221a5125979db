"""ICL probes: in-context gain by hand, synthetic tasks reproducible from their seed and scored."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.evaluation.icl import (
    default_windows,
    evaluate_synthetic,
    icl_metrics,
    in_context_gain,
    make_task,
)

torch.set_num_threads(1)


def test_in_context_gain_by_hand() -> None:
    losses = [5.0, 4.0, 3.0, math.nan, 2.0, 1.0]
    # late [4, 6): 1.5; early [0, 2): 4.5
    assert in_context_gain(losses, early=(0, 2), late=(4, 6)) == pytest.approx(-3.0)
    # NaN entries are skipped: [2, 4) has only 3.0
    assert in_context_gain(losses, early=(2, 4), late=(4, 6)) == pytest.approx(-1.5)
    assert default_windows(512) == ((32, 64), (448, 512))
    flat = [2.0] * 64
    assert in_context_gain(flat) == pytest.approx(0.0)


@pytest.mark.parametrize("task", ["kv_recall", "pattern"])
def test_synthetic_tasks_reproducible_from_seed(task: str) -> None:
    a = make_task(task, 4, 20, seed=7)
    assert a == make_task(task, 4, 20, seed=7)
    assert a != make_task(task, 4, 20, seed=8)
    assert a != make_task(task, 2, 20, seed=7)
    assert len(a) == 20 and len({it["context"] for it in a}) > 15


def test_kv_recall_answer_is_in_context() -> None:
    for n in (1, 2, 4, 8):
        for item in make_task("kv_recall", n, 10, seed=0):
            lines = item["context"].split("\n")
            assert len(lines) == n + 1
            pairs = dict(line.split(": ") for line in lines[:-1])
            query = lines[-1].removesuffix(":")
            assert pairs[query] == item["continuation"]


def test_pattern_continuation_structure() -> None:
    for n in (1, 3):
        for item in make_task("pattern", n, 10, seed=0):
            words = item["context"].split(" ")
            assert len(words) == 3 * n + 2
            assert words[:3] * n + words[:2] == words
            assert item["continuation"] == words[2]


def test_unknown_task_and_bad_count() -> None:
    with pytest.raises(ValueError, match="unknown synthetic task"):
        make_task("nope", 1, 1)
    with pytest.raises(ValueError, match="n_examples"):
        make_task("pattern", 0, 1)


class CopyOracle:
    """Predicts the true next token unless it is a digit; loss 1.0 everywhere."""

    def __call__(self, tokens: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        pred = torch.roll(tokens, -1, dims=1)
        digit = (pred >= ord("0")) & (pred <= ord("9"))
        pred = torch.where(digit, torch.full_like(pred, ord("?")), pred)
        return torch.ones(tokens.shape), pred


def test_evaluate_synthetic_accuracy_by_count() -> None:
    res = evaluate_synthetic(
        CopyOracle(),
        lambda s: [ord(c) for c in s],
        0,
        modes=("init",),
        n_examples=(1, 2),
        n_items=5,
    )
    # the oracle misses every digit: kv_recall answers are numbers, pattern answers are words
    assert res["init"]["kv_recall"] == {1: {"acc": 0.0, "loss": 1.0}, 2: {"acc": 0.0, "loss": 1.0}}
    assert res["init"]["pattern"] == {1: {"acc": 1.0, "loss": 1.0}, 2: {"acc": 1.0, "loss": 1.0}}
    m = icl_metrics(res, {"init": -0.5})
    assert m["icl_gain"]["init"] == -0.5
    assert m["icl"]["init"]["pattern"]["n01"]["acc"] == 1.0


def test_in_context_gain_finite_when_documents_outlast_the_window() -> None:
    """The bug: `icl_gain` was null in every metrics.json, since validation documents are longer
    than a window and positions after a document start that lay before the window were dropped.
    A model whose loss falls with the tokens it has read gives a negative gain, by hand."""
    from pipeline.evaluation.bpb import BPBMeter

    T = 64
    meter = BPBMeter(torch.tensor([0, 1, 1, 1]), seq_len=T, bos_id=0)
    inputs = torch.randint(1, 4, (3, T), generator=torch.Generator().manual_seed(0))  # no BOS
    losses = (10.0 / torch.arange(2, T + 2, dtype=torch.float64)).expand(3, T)  # 10 / (t + 2)
    meter.update(losses, inputs.roll(-1, 1), inputs)
    gain = in_context_gain(meter.result().doc_position_loss)
    (e0, e1), (l0, l1) = default_windows(T)
    # position p holds target t = p - 1 (t+1 tokens read), loss 10 / (p + 1); p = T-1 also
    # holds t = T-1 (clamped), loss 10 / (T + 1)
    late = [10.0 / (p + 1) for p in range(l0, l1)]
    late[-1] = (10.0 / T + 10.0 / (T + 1)) / 2
    expected = sum(late) / len(late) - sum(10.0 / (p + 1) for p in range(e0, e1)) / (e1 - e0)
    assert math.isfinite(gain) and gain == pytest.approx(expected)
