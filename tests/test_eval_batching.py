"""Sequential scoring batched from a memory budget: the batches obey it, the scores do not depend
on it, and the static decoder scores what eager decoding does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_eval_core import CharTokenizer, FakeModel, _toy_folder, hashed_rule

from pipeline.evaluation.batching import (
    length_batches,
    sequential_bytes_per_row,
    sequential_rows,
)
from pipeline.evaluation.bpb import chunked, evaluate_bpb, lrt_loss_fns
from pipeline.evaluation.core import evaluate_core, lrt_scorer
from pipeline.evaluation.core_tasks import load_tasks

torch.set_num_threads(1)


def test_bytes_per_row_by_hand() -> None:
    cfg = SimpleNamespace(n_kv_head=2, head_dim=64, n_layer=2, vocab_size=2048, n_embd=128)
    cache = 2 * 2 * 256 * (2 * 64) * 4  # K and V, 2 layers, 256 positions, fp32
    logits = 256 * 2048 * 4
    step = 32 * 128 * 4 + 2 * 2048 * 4
    assert sequential_bytes_per_row(cfg, 256) == cache + logits + step
    per_row = cache + logits + step
    assert sequential_rows(cfg, 256, 10 * per_row + 1) == 10
    assert sequential_rows(cfg, 256, 1) == 1  # at least one row
    assert sequential_rows(cfg, 1, 1 << 40, max_rows=7) == 7
    # BPB's sequential_losses keeps one step's logits, not (L, V)
    lean = sequential_bytes_per_row(cfg, 256, stacked_logits=False)
    assert lean == cache + step
    assert sequential_rows(cfg, 256, 10 * lean, stacked_logits=False) == 10


def test_budget_from_setting_env_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.evaluation.batching import BUDGET_ENV, DEFAULT_BUDGET_MB, budget_bytes

    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert budget_bytes(None, torch.device("cpu")) == DEFAULT_BUDGET_MB << 20
    monkeypatch.setenv(BUDGET_ENV, "3")
    assert budget_bytes(None) == 3 << 20
    assert budget_bytes(SimpleNamespace(sequential_memory_mb=5)) == 5 << 20


def test_length_batches_respect_the_token_budget() -> None:
    lengths = [5, 40, 12, 33, 7, 7, 90, 2, 12, 30]
    batches = length_batches(lengths, max_rows=3, max_tokens=80)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 3 and (len(b) * longest <= 80 or len(b) == 1)
    assert batches[0] == [6]  # 90 tokens: alone, over the budget


def test_core_scores_do_not_depend_on_the_token_budget(tmp_path) -> None:
    tasks = load_tasks(_toy_folder(tmp_path))
    kw = dict(modes=("init", "sequential"), progress=False)
    ref = evaluate_core(tasks, FakeModel(hashed_rule), CharTokenizer(), batch_size=1, **kw)
    model = FakeModel(hashed_rule)
    shapes: list[tuple[str, int, int]] = []

    def scorer(tokens: torch.Tensor, mode: str):
        shapes.append((mode, *tokens.shape))
        return model(tokens, mode)

    got = evaluate_core(
        tasks, scorer, CharTokenizer(), batch_size=2, sequential_batch=(16, 40), **kw
    )
    seq = [(b, L) for m, b, L in shapes if m == "sequential"]
    assert all(b * L <= 40 or b == 1 for b, L in seq) and max(b for b, _ in seq) > 2
    assert all(b <= 2 for m, b, _ in shapes if m == "init")  # other modes keep batch_size
    for mode in ("init", "sequential"):
        for name, r in ref[mode].tasks.items():
            assert got[mode].tasks[name].correct == r.correct
            assert got[mode].tasks[name].mean_loss == pytest.approx(r.mean_loss)


def _tiny_lrt(vocab: int = 41, seq_len: int = 24):
    lrt = pytest.importorskip("lrt")
    torch.manual_seed(0)
    cfg = lrt.LRTConfig(
        vocab_size=vocab, depth=2, seq_len=seq_len, n_embd=32, n_head=2, pathway="shared"
    )
    model = lrt.LRT(cfg)
    model.init_weights()
    with torch.no_grad():  # random everything, so the memory path matters
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def test_static_sequential_scorer_equals_eager() -> None:
    """The static decoder (padded to a power-of-two batch and a multiple-of-64 length, on CPU
    without a CUDA graph) gives the eager decoder's sequential scores."""
    model = _tiny_lrt()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 41, (3, 13), generator=g)
    eager = lrt_scorer(model, static=False)(tokens, "sequential")
    static = lrt_scorer(model, static=True)(tokens, "sequential")
    assert torch.allclose(static[0][:, :-1], eager[0][:, :-1], atol=1e-5)
    assert torch.equal(static[1][:, :-1], eager[1][:, :-1])
    init = lrt_scorer(model, static=True)(tokens, "init")  # other modes: the parallel pass
    assert not torch.allclose(init[0][:, :-1], eager[0][:, :-1], atol=1e-3)


def test_sequential_bpb_independent_of_row_chunks() -> None:
    model = _tiny_lrt()
    g = torch.Generator().manual_seed(2)
    data = torch.randint(0, 41, (2, 5, 25), generator=g)
    batches = [(d[:, :-1], d[:, 1:]) for d in data]
    token_bytes = torch.ones(41, dtype=torch.long)
    fns = lrt_loss_fns(model, ["sequential"], static=False)
    whole = evaluate_bpb(fns, batches, token_bytes, seq_len=24).results["sequential"]
    calls: list[int] = []

    def counting(x, y):
        calls.append(x.size(0))
        return fns["sequential"](x, y)

    parts = evaluate_bpb(
        {"sequential": chunked(counting, 2)}, batches, token_bytes, seq_len=24
    ).results["sequential"]
    assert calls == [2, 2, 1, 2, 2, 1]
    assert parts.nats == pytest.approx(whole.nats, rel=1e-6) and parts.tokens == whole.tokens
