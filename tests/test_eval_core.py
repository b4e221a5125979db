"""CORE: prompt rules, each task type on fake models with known losses, centring, batching,
bundle layouts, and a run over the real task files in ../shared/data/core."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

import pytest
import torch
from conftest import shared_path

from pipeline.evaluation.core import (
    centered_accuracy,
    core_metrics,
    evaluate_core,
    evaluate_task,
    lrt_scorer,
)
from pipeline.evaluation.core_tasks import (
    DEFAULT_TASKS,
    TaskSpec,
    encode_item,
    fewshot_indices,
    load_tasks,
    render_prompts,
)

torch.set_num_threads(1)
BOS = 0


def encode(text: str) -> list[int]:
    """Character-level tokenizer (ids = code points; 0 is free for BOS)."""
    return [ord(c) for c in text]


class CharTokenizer:
    bos_id = BOS

    @staticmethod
    def encode(text: str) -> list[int]:
        return encode(text)


class FakeModel:
    """`LossesAndArgmax` from a per-position rule `fn(row, i) -> (loss, prediction)` for the
    prediction of row[i+1]; records the batch sizes it was called with."""

    def __init__(self, fn: Callable[[list[int], int], tuple[float, int]]) -> None:
        self.fn = fn
        self.batch_sizes: list[int] = []
        self.modes: list[str] = []

    def __call__(self, tokens: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.batch_sizes.append(tokens.size(0))
        self.modes.append(mode)
        B, L = tokens.shape
        losses = torch.full((B, L), math.nan)
        pred = torch.zeros((B, L), dtype=torch.long)
        for b in range(B):
            row = tokens[b].tolist()
            for i in range(L - 1):
                losses[b, i], pred[b, i] = self.fn(row, i)
        return losses, pred


# -----------------------------------------------------------------------------
# Prompt rules


def test_render_multiple_choice_with_shots() -> None:
    spec = TaskSpec("t", "t.jsonl", "multiple_choice", 2, 25.0, "\nAnswer: ")
    shots = [
        {"query": "Q1", "choices": ["a", "b"], "gold": 1},
        {"query": "Q2", "choices": ["c", "d"], "gold": 0},
    ]
    item = {"query": "Q3", "choices": ["x", "y"], "gold": 0}
    assert render_prompts(item, spec, shots) == [
        "Q1\nAnswer: b\n\nQ2\nAnswer: c\n\nQ3\nAnswer: x",
        "Q1\nAnswer: b\n\nQ2\nAnswer: c\n\nQ3\nAnswer: y",
    ]


def test_render_schema_and_lm() -> None:
    schema = TaskSpec("s", "s.jsonl", "schema", 1, 50.0, " ")
    shot = {"context_options": ["A", "B"], "continuation": "c.", "gold": 1}
    item = {"context_options": ["P", "Q"], "continuation": "r."}
    assert render_prompts(item, schema, [shot]) == ["B c.\n\nP r.", "B c.\n\nQ r."]
    lm = TaskSpec("l", "l.jsonl", "language_modeling", 1, 0.0, " ")
    shot = {"context": " one ", "continuation": "two"}
    item = {"context": "three  ", "continuation": "four"}
    assert render_prompts(item, lm, [shot]) == ["one two\n\nthree", "one two\n\nthree four"]


def test_fewshot_draw_is_seeded_and_excludes_the_item() -> None:
    for i in range(10):
        idx = fewshot_indices(i, 10, 4)
        assert i not in idx and len(set(idx)) == 4
        assert idx == fewshot_indices(i, 10, 4)
    assert fewshot_indices(0, 3, 10) != [] and len(fewshot_indices(0, 3, 10)) == 2
    assert fewshot_indices(0, 100, 3, seed=1) != fewshot_indices(0, 100, 3, seed=2)


def test_fewshot_draw_matches_nanochats() -> None:
    """nanochat's core_eval draws item idx's shots as Random(1234 + idx).sample(others, k)."""
    for idx in (0, 3, 9):
        others = [i for i in range(10) if i != idx]
        assert fewshot_indices(idx, 10, 4) == random.Random(1234 + idx).sample(others, 4)


def test_left_truncation_keeps_the_continuation() -> None:
    spec = TaskSpec("l", "l.jsonl", "language_modeling", 0, 0.0, " ")
    (seq,) = encode_item(
        {"context": "abcdefgh", "continuation": "xy"}, spec, [], encode, BOS, max_len=5
    )
    assert seq.tokens == tuple(encode("gh xy"))
    assert seq.tokens[seq.start : seq.end] == tuple(encode(" xy"))


# -----------------------------------------------------------------------------
# Task types on fake models

# multiple choice: the loss of a token depends only on the token
MC_LOSS = {ord("x"): 0.1, ord("y"): 2.0}


def mc_rule(row: list[int], i: int) -> tuple[float, int]:
    return MC_LOSS.get(row[i + 1], 1.0), 0


def test_multiple_choice_picks_min_mean_loss() -> None:
    spec = TaskSpec("mc", "mc.jsonl", "multiple_choice", 0, 50.0, " ")
    items = [
        {"query": "Q", "choices": ["ab", "xx", "yy"], "gold": 1},  # means 1.0, 0.1, 2.0 -> 1
        # means 0.733 and 1.0 -> 0 (the sum, 2.2 vs 1.0, would pick 1)
        {"query": "Q", "choices": ["xxy", "a"], "gold": 0},
        {"query": "Q", "choices": ["yy", "ab"], "gold": 0},  # means 2.0, 1.0 -> 1: wrong
    ]
    r = evaluate_task(spec, items, FakeModel(mc_rule), encode, BOS)["init"]
    assert r.correct == [True, True, False]
    assert r.accuracy == pytest.approx(2 / 3)
    assert r.centered == pytest.approx((2 / 3 - 0.5) / 0.5)
    # gold options' mean losses: 0.1, (0.1 + 0.1 + 2.0) / 3, 2.0
    assert r.mean_loss == pytest.approx((0.1 + 2.2 / 3 + 2.0) / 3)


def schema_rule(row: list[int], i: int) -> tuple[float, int]:
    # every prediction is harder once a "y" has been read
    return (2.0 if ord("y") in row[: i + 1] else 1.0), 0


def test_schema_scores_the_shared_continuation() -> None:
    spec = TaskSpec("sc", "sc.jsonl", "schema", 0, 50.0, " ")
    items = [
        {"context_options": ["ax", "yy"], "continuation": "cd", "gold": 0},
        {"context_options": ["yb", "ab"], "continuation": "cd", "gold": 1},
        {"context_options": ["ya", "ab"], "continuation": "cd", "gold": 0},  # picks 1: wrong
    ]
    seqs = encode_item(items[0], spec, [], encode, BOS)
    # common suffix " cd" (the options differ in their last character)
    assert [s.tokens[s.start : s.end] for s in seqs] == [tuple(encode(" cd"))] * 2
    r = evaluate_task(spec, items, FakeModel(schema_rule), encode, BOS)["init"]
    assert r.correct == [True, True, False]
    assert r.centered == pytest.approx(1 / 3)


def lm_rule(row: list[int], i: int) -> tuple[float, int]:
    # an oracle with a blind spot: predicts the true next token except "z"
    nxt = row[i + 1]
    return 0.5, (ord("?") if nxt == ord("z") else nxt)


def test_language_modeling_needs_every_token() -> None:
    spec = TaskSpec("lm", "lm.jsonl", "language_modeling", 0, 0.0, " ")
    items = [
        {"context": "ab", "continuation": "cd"},
        {"context": "ab", "continuation": "cdz"},  # last token missed -> wrong
        {"context": "zz", "continuation": "ab"},  # a missed context token does not matter
    ]
    r = evaluate_task(spec, items, FakeModel(lm_rule), encode, BOS)["init"]
    assert r.correct == [True, False, True]
    assert r.accuracy == pytest.approx(2 / 3) and r.centered == pytest.approx(2 / 3)


def test_centering() -> None:
    assert centered_accuracy(0.75, 50.0) == pytest.approx(0.5)
    assert centered_accuracy(0.25, 25.0) == pytest.approx(0.0)
    assert centered_accuracy(0.3, 0.0) == pytest.approx(0.3)
    assert centered_accuracy(0.0, 50.0) == pytest.approx(-1.0)


# -----------------------------------------------------------------------------
# Whole evaluator: bundle layouts, batching, modes


def _write_jsonl(path, items) -> None:
    path.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")


def _toy_folder(tmp_path):
    _write_jsonl(
        tmp_path / "copa.jsonl",
        [
            {"query": f"Q{i}", "choices": ["ab", "xx", "yy"][: 2 + i % 2], "gold": i % 2}
            for i in range(12)
        ],
    )
    _write_jsonl(
        tmp_path / "winograd_wsc.jsonl",
        [
            {"context_options": ["ax", "yy"], "continuation": f"c{i}", "gold": i % 2}
            for i in range(9)
        ],
    )
    _write_jsonl(
        tmp_path / "bigbench_operators.jsonl",
        [
            {"context": f"{i} + 1 =", "continuation": str(i + 1) + "z" * (i % 3 == 0)}
            for i in range(11)
        ],
    )
    return tmp_path


def hashed_rule(row: list[int], i: int) -> tuple[float, int]:
    # a causal, deterministic, non-trivial model: depends on the prefix and the next token
    h = (sum((j + 1) * t for j, t in enumerate(row[: i + 1])) * 31 + row[i + 1]) % 97
    return h / 10.0, (row[i + 1] if h % 3 else 1)


def test_flat_folder_uses_default_table(tmp_path) -> None:
    tasks = load_tasks(_toy_folder(tmp_path))
    assert [t.name for t in tasks] == ["copa", "winograd", "bigbench_operators"]
    by_name = {t.name: t for t in DEFAULT_TASKS}
    assert tasks[2].shots == by_name["bigbench_operators"].shots == 10
    # a user table entry overrides and extends
    extra = [
        {
            "name": "copa",
            "file": "copa.jsonl",
            "type": "multiple_choice",
            "shots": 3,
            "random_baseline": 40,
        }
    ]
    tasks = load_tasks(tmp_path, extra=extra)
    assert {t.name: (t.shots, t.random_baseline) for t in tasks}["copa"] == (3, 40.0)


def test_same_score_with_batch_size_1_and_32(tmp_path) -> None:
    tasks = load_tasks(_toy_folder(tmp_path))
    results = {}
    for bs in (1, 32):
        model = FakeModel(hashed_rule)
        results[bs] = evaluate_core(
            tasks,
            model,
            CharTokenizer(),
            modes=("init", "sequential"),
            batch_size=bs,
            progress=False,
        )
        assert max(model.batch_sizes) == bs if bs == 1 else max(model.batch_sizes) > 1
        assert set(model.modes) == {"init", "sequential"}
    for mode in ("init", "sequential"):
        a, b = results[1][mode], results[32][mode]
        assert a.core == pytest.approx(b.core)
        for name in a.tasks:
            assert a.tasks[name].correct == b.tasks[name].correct
            assert a.tasks[name].mean_loss == pytest.approx(b.tasks[name].mean_loss)
    r = results[32]["init"]
    assert r.core == pytest.approx(sum(t.centered for t in r.tasks.values()) / 3)
    m = core_metrics(results[32])
    assert m["core"]["init"] == r.core
    assert m["core_tasks"]["init"]["copa"]["acc"] == r.tasks["copa"].accuracy


def test_nanochat_bundle_layout(tmp_path) -> None:
    (tmp_path / "eval_data" / "sub").mkdir(parents=True)
    (tmp_path / "core.yaml").write_text(
        "icl_tasks:\n"
        "  - label: toy_lm\n"
        "    dataset_uri: sub/toy.jsonl\n"
        "    num_fewshot: [2]\n"
        "    icl_task_type: language_modeling\n"
        "    continuation_delimiter: ' '\n"
        "  - label: absent\n"
        "    dataset_uri: nope.jsonl\n"
        "    num_fewshot: [0]\n"
        "    icl_task_type: schema\n",
        encoding="utf-8",
    )
    (tmp_path / "eval_meta_data.csv").write_text(
        "Eval Task,Task Category,Random baseline\ntoy_lm,x,12.5\nabsent,y,50\n", encoding="utf-8"
    )
    _write_jsonl(
        tmp_path / "eval_data" / "sub" / "toy.jsonl", [{"context": "ab", "continuation": "cd"}] * 4
    )
    (task,) = load_tasks(tmp_path)
    assert (task.name, task.type, task.shots, task.random_baseline) == (
        "toy_lm",
        "language_modeling",
        2,
        12.5,
    )
    res = evaluate_core([task], FakeModel(lm_rule), CharTokenizer(), progress=False)
    assert res["init"].tasks["toy_lm"].accuracy == 1.0
    assert res["init"].core == pytest.approx(1.0)


def test_core_tasks_yaml_layout(tmp_path) -> None:
    _write_jsonl(tmp_path / "mine.jsonl", [{"query": "Q", "choices": ["xx", "yy"], "gold": 0}] * 3)
    (tmp_path / "core_tasks.yaml").write_text(
        "- {name: mine, file: mine.jsonl, type: multiple_choice, shots: 1, random_baseline: 50}\n",
        encoding="utf-8",
    )
    (task,) = load_tasks(tmp_path)
    res = evaluate_core([task], FakeModel(mc_rule), CharTokenizer(), max_items=2, progress=False)
    assert res["init"].tasks["mine"].n == 2
    assert res["init"].tasks["mine"].centered == pytest.approx(1.0)


# -----------------------------------------------------------------------------
# Real files, real (tiny, random) LRT


class ByteTokenizer:
    bos_id = 256

    @staticmethod
    def encode(text: str) -> list[int]:
        return list(text.encode("utf-8"))


def test_core_on_shared_files_with_tiny_lrt() -> None:
    lrt = pytest.importorskip("lrt")
    folder = shared_path("core")
    tasks = load_tasks(folder)
    assert {t.name for t in tasks} == {t.name for t in DEFAULT_TASKS}
    torch.manual_seed(0)
    cfg = lrt.LRTConfig(vocab_size=257, depth=1, seq_len=48, n_embd=32, n_head=2, pathway="shared")
    model = lrt.LRT(cfg)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.eval()
    scorer = lrt_scorer(model)
    kw = dict(modes=("init", "sequential"), max_len=48, max_items=2, progress=False)
    a = evaluate_core(tasks, scorer, ByteTokenizer(), batch_size=32, **kw)
    b = evaluate_core(tasks, scorer, ByteTokenizer(), batch_size=3, **kw)
    for mode in ("init", "sequential"):
        assert set(a[mode].tasks) == {t.name for t in tasks}
        assert all(r.n == 2 for r in a[mode].tasks.values())
        assert -1.0 <= a[mode].core <= 1.0
        for name, r in a[mode].tasks.items():
            assert r.correct == b[mode].tasks[name].correct
            assert r.mean_loss == pytest.approx(b[mode].tasks[name].mean_loss, rel=1e-4)
    # the memory changes the scores
    assert a["init"].tasks["copa"].mean_loss != pytest.approx(
        a["sequential"].tasks["copa"].mean_loss
    )
