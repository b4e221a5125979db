"""The static-shape decoder (lrt/static_decode.py) computes what exact recurrent decoding does.

References: the eager `KVCache` decoder (`lrt.decode.sequential_forward`) and, independent of
any decode cache, the chunked strategy with C = 1 (buffer passes, exact recurrence). Models
have every weight random and non-zero (tests/lrt_helpers.py), so the memory path matters.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from lrt_helpers import T, make_model, tokens
from torch._dynamo.utils import counters

from lrt import StrategyConfig
from lrt.decode import generate, sequential_forward, sequential_losses
from lrt.static_decode import StaticDecoder

torch.set_num_threads(1)
TOL = dict(rtol=1e-5, atol=1e-5)
PATHWAYS = ["none", "shared", "layerwise"]


def static_logits(decoder: StaticDecoder, idx: torch.Tensor) -> torch.Tensor:
    return torch.stack([decoder.step(idx[:, i]) for i in range(idx.size(1))], dim=1)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("pathway", PATHWAYS)
def test_static_equals_eager_decoding_and_chunked_c1(pathway, fuse):
    model = make_model(pathway)
    idx = tokens()
    got = static_logits(StaticDecoder(model, 2, T, fuse=fuse), idx)
    torch.testing.assert_close(got, sequential_forward(model, idx), **TOL)
    chunked = model.logits(idx, "chunked", StrategyConfig(name="chunked", chunk_size=1))
    torch.testing.assert_close(got, chunked, **TOL)


def test_static_cache_longer_than_the_sequence_changes_nothing():
    """Rows past pos are masked: a cache of 16 rows decoding 7 tokens gives the same logits."""
    model = make_model("shared")
    idx = tokens(t=7)
    torch.testing.assert_close(
        static_logits(StaticDecoder(model, 2, T), idx), sequential_forward(model, idx), **TOL
    )


def test_surrounding_autocast_changes_nothing():
    """Steps run in the model's dtype: inside a bf16 autocast region the logits are the fp32
    ones (an autocast step would differ at the 1e-2 level)."""
    model = make_model("shared")
    idx = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = static_logits(StaticDecoder(model, 2, T), idx)
    torch.testing.assert_close(got, sequential_forward(model, idx), **TOL)


@pytest.mark.parametrize("pathway", PATHWAYS)
def test_sequential_losses_static_equals_eager(pathway):
    model = make_model(pathway)
    idx = tokens(b=3)
    tgt = idx.roll(-1, 1)
    tgt[1, 5] = -1  # ignored target: 0 in both
    eager = sequential_losses(model, idx, tgt)
    torch.testing.assert_close(sequential_losses(model, idx, tgt, static=True), eager, **TOL)
    assert eager[1, 5] == 0


def test_sequential_losses_static_follows_surrounding_autocast():
    """Inside bf16 autocast the static path decodes under bf16 autocast too (its cache is
    bf16), so it agrees with eager autocast decoding up to bf16 rounding of differently
    blocked attention (masked rows), far closer than either is to the fp32 losses' scale."""
    model = make_model("shared")
    idx = tokens(b=4)
    tgt = idx.roll(-1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = sequential_losses(model, idx, tgt)
        static = sequential_losses(model, idx, tgt, static=True)
        dec = StaticDecoder(model, 1, 4, autocast_dtype=torch.bfloat16)
    assert dec.cache.k[0].dtype == torch.bfloat16
    assert (static - eager).abs().mean() < 0.02
    assert abs(float(static.mean() - eager.mean())) < 0.01


def test_reset_reuses_the_decoder_without_leaking_old_rows():
    model = make_model("layerwise")
    dec = StaticDecoder(model, 2, T)
    first = static_logits(dec, tokens(seed=1))
    dec.reset()
    other = tokens(t=9, seed=2)
    torch.testing.assert_close(static_logits(dec, other), sequential_forward(model, other), **TOL)
    dec.reset()
    torch.testing.assert_close(static_logits(dec, tokens(seed=1)), first, rtol=0, atol=0)


def test_fused_weights_follow_weight_changes_at_reset():
    """The fused q/k/v/gate stack is a copy: after the weights change (an optimizer step, a
    checkpoint load), reset() re-stacks it, so decoding uses the new weights."""
    model = make_model("layerwise")
    dec = StaticDecoder(model, 2, T)
    idx = tokens()
    before = static_logits(dec, idx)
    with torch.no_grad():
        model.blocks[1].attn.c_k.weight.mul_(-1.5)
        model.pathway.gates[2].weight.add_(0.5)
        model.pathway.v_proj[1].weight.mul_(-2.0)  # the stacked memory K/V projections too
    dec.reset()
    after = static_logits(dec, idx)
    torch.testing.assert_close(after, sequential_forward(model, idx), **TOL)
    assert (after - before).abs().max() > 1e-3


def test_prefill_then_steps_equal_sequential():
    model = make_model("shared")
    idx = tokens()
    dec = StaticDecoder(model, 2, T)
    last = dec.prefill(idx[:, :10])
    ref = sequential_forward(model, idx)
    torch.testing.assert_close(last, ref[:, 9], **TOL)
    torch.testing.assert_close(dec.step(idx[:, 10]), ref[:, 10], **TOL)


@pytest.mark.parametrize("pathway", ["none", "shared"])
def test_generate_static_gives_the_same_tokens(pathway):
    model = make_model(pathway)
    prompt = tokens(t=5)
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_k=20, seed=3)):
        eager = generate(model, prompt, 8, **kw)
        static = generate(model, prompt, 8, static=True, **kw)
        assert torch.equal(eager, static)


def test_compiled_step_is_one_graph_for_every_position():
    """fullgraph=True: the whole step traces (no graph break); and because the position is a
    device tensor, 16 steps at 16 positions compile once (no recompile per position)."""
    model = make_model("shared")
    torch._dynamo.reset()
    counters.clear()
    dec = StaticDecoder(model, 2, T, compile_backend="eager")
    idx = tokens()
    got = static_logits(dec, idx)
    torch.testing.assert_close(got, sequential_forward(model, idx), **TOL)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    torch._dynamo.reset()


def test_a_decoder_is_freed_without_the_cycle_collector():
    """No reference cycle: a dropped decoder frees its cache (and, on CUDA, its graph pool) at
    once, not at the next full garbage collection."""
    import gc
    import weakref

    model = make_model("shared")
    gc.disable()
    try:
        dec = StaticDecoder(model, 2, T, compile_backend="eager")
        dec.step(tokens()[:, 0])
        ref = weakref.ref(dec)
        del dec
        assert ref() is None
    finally:
        gc.enable()
        torch._dynamo.reset()


def test_bad_use_is_refused_with_a_clear_error():
    model = make_model("shared")
    with pytest.raises(ValueError, match="rotary table"):
        StaticDecoder(model, 1, model.config.rope_len + 1)
    with pytest.raises(ValueError, match="needs a model on CUDA"):
        StaticDecoder(model, 1, 4, cuda_graph=True)
    dec = StaticDecoder(model, 2, 3)
    with pytest.raises(ValueError, match="expected 2 tokens"):
        dec.step(torch.zeros(3, dtype=torch.long))
    for _ in range(3):
        dec.step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="static cache full"):
        dec.step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="fresh state"):
        dec.prefill(tokens(t=2))
    with pytest.raises(ValueError, match="approximate_prefill"):
        generate(model, [1, 2], 2, static=True, approximate_prefill=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_sequential_losses_under_bf16_autocast():
    model = make_model("shared").cuda()
    idx = tokens(b=4).cuda()
    tgt = idx.roll(-1, 1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = sequential_losses(model, idx, tgt)
        static = sequential_losses(model, idx, tgt, static=True)
    assert (static - eager).abs().mean() < 0.02
    torch.testing.assert_close(
        sequential_losses(model, idx, tgt, static=True), sequential_losses(model, idx, tgt),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pathway", ["none", "shared"])
def test_cuda_graph_replay_equals_eager_decoding(pathway):
    model = make_model(pathway).cuda()
    idx = tokens().cuda()
    dec = StaticDecoder(model, 2, T)
    assert dec._graph is not None
    torch.testing.assert_close(static_logits(dec, idx), sequential_forward(model, idx), **TOL)
    dec.reset()  # the captured graph serves the next sequences too
    other = tokens(seed=5).cuda()
    torch.testing.assert_close(static_logits(dec, other), sequential_forward(model, other), **TOL)
    one = StaticDecoder(model, 2, 1)  # warm-up must not write past a 1-row cache
    torch.testing.assert_close(one.step(idx[:, 0]), sequential_forward(model, idx[:, :1])[:, 0])
