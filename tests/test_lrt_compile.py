"""Compiled LRT passes: the number of dynamo graphs and graph breaks must not grow with depth.

Regression test for the per-layer recompiles seen on an H100 (docs/RESULTS.md, issue 1): the flex
block mask used to be built inside every layer's attention under `torch.compiler.disable`, so
each layer broke the compiled graph and the resumed frames recompiled per layer index (from
depth 9 on dynamo hit its recompile limit and ran the rest eager). Now a pass builds its mask
once, before the layer loop. `backend="eager"` makes dynamo trace without inductor (cheap on
CPU). FlexAttention has no CPU backward, so the flex runs are forward only (no_grad).
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from lrt import LRT, LRTConfig, StrategyConfig
from lrt.attention import set_attention_backend
from lrt.recurrence import shift_right

torch.set_num_threads(1)

V, T = 97, 16
STRATEGY = StrategyConfig(name="interleaved", subsets=2)


def make_model(depth: int) -> LRT:
    torch.manual_seed(0)
    model = LRT(
        LRTConfig(vocab_size=V, depth=depth, seq_len=T, n_embd=32, n_head=2, pathway="shared")
    )
    model.init_weights()
    return model


def tokens() -> torch.Tensor:
    return torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def backend(request):
    set_attention_backend(request.param)
    torch._dynamo.reset()
    try:
        yield request.param
    finally:
        set_attention_backend("auto")
        torch._dynamo.reset()


def compiled_step_counts(depth: int, train: bool) -> tuple[int, int, int]:
    """(unique graphs, graph breaks, frames compiled) of one interleaved S=2 step of a depth
    `depth` model compiled per pass (`model.compile`, as the benchmarks do). Also checks that
    the compiled step computes what the eager one does."""
    torch._dynamo.reset()
    model = make_model(depth)
    idx = tokens()
    with warnings.catch_warnings(), contextlib.nullcontext() if train else torch.no_grad():
        warnings.simplefilter("ignore")  # eager CPU flex warns that it is unfused
        eager = model.forward_train(idx, idx, STRATEGY)
        counters.clear()  # eager CPU flex runs its kernel through dynamo itself; count after
        model.compile(backend="eager")
        out = model.forward_train(idx, idx, STRATEGY)
        if train:
            out.loss.backward()
    torch.testing.assert_close(out.loss, eager.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.position_loss, eager.position_loss, rtol=1e-6, atol=1e-6)
    return (
        counters["stats"]["unique_graphs"],
        sum(counters["graph_break"].values()),
        counters["frames"]["total"],
    )


@pytest.mark.parametrize("backend", ["sdpa", "flex"], indirect=True)
def test_compiled_interleaved_step_graphs_do_not_grow_with_depth(backend):
    train = backend == "sdpa"  # flex: forward only (no CPU backward)
    shallow = compiled_step_counts(2, train)
    deep = compiled_step_counts(6, train)
    assert deep == shallow, f"graphs/breaks/frames grow with depth: d2 {shallow}, d6 {deep}"
    graphs, breaks, frames = deep
    assert breaks == 0, f"{breaks} graph breaks in a per-pass compiled interleaved step"
    # one graph for the plain init pass, one for the buffer passes (every buffer has the same
    # layout, so the subset passes share it): far below dynamo's recompile limit of 8
    assert graphs <= 2 and frames <= 2, deep


def buffer_pass_breaks(depth: int, prebuilt_mask: bool) -> int:
    """Graph breaks dynamo's explain finds in one interleaved subset (buffer) pass."""
    from lrt.attention import window_masks

    torch._dynamo.reset()
    model = make_model(depth)
    idx = tokens()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init = model(idx)
        pos = torch.arange(1, T, 2)
        memory = shift_right(init.source)[:, pos]
        key = ("stride", 1, 2, T)
        kw = {"attn_mask": window_masks([pos], T, model.window_sizes, idx.device, [key])[0]}
        if not prebuilt_mask:
            kw = {"mask_key": key}
        explanation = torch._dynamo.explain(model)(
            idx[:, pos], memory, positions=pos, buffer=init.kv, **kw
        )
    return explanation.graph_break_count


@pytest.mark.parametrize("backend", ["flex"], indirect=True)  # sdpa: covered by the step test
def test_buffer_pass_has_no_per_layer_graph_break(backend):
    # mask built outside the pass (what the strategies do): no break at all
    assert buffer_pass_breaks(6, prebuilt_mask=True) == 0
    # mask built by LRT.forward itself: at most one break (flex mask bookkeeping), before the
    # layer loop, so the count is the same at every depth
    shallow = buffer_pass_breaks(2, prebuilt_mask=False)
    assert shallow <= 1
    assert buffer_pass_breaks(6, prebuilt_mask=False) == shallow
