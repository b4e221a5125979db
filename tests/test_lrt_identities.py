"""Must-hold identities of the LRT recurrence (DESIGN §4), on tiny CPU fp32 models.

Every model has random NON-ZERO pathway weights (gamma, Wk_m, Wv_m, Wg), so memory really
changes the outputs and no identity holds trivially; several tests also check that a "near
miss" (S = T-1, K = T-2, ...) does NOT match, to show the comparison can fail.

Tolerance: rtol = atol = 1e-5 (torch.testing.assert_close semantics) in fp32; the central
identity (interleaved S = T == sequential) is also checked in float64 at 1e-10.
"""

from __future__ import annotations

import dataclasses
import math

import lrt_reference
import pytest
import torch
import torch.nn.functional as F
from lrt_helpers import T, V, make_model, tokens

from lrt import LRT, LRTConfig, StrategyConfig, shift_right
from lrt.decode import new_state, sequential_forward
from lrt.strategies import run_passes

torch.set_num_threads(1)

TOL = {"rtol": 1e-5, "atol": 1e-5}


def strat(name: str, **kw) -> StrategyConfig:
    return StrategyConfig(name=name, **kw)


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() > 1e-3)


ALL_STRATEGIES = [
    strat("none"),
    strat("interleaved", subsets=2),
    strat("interleaved", subsets=3, refresh_kv=True),
    strat("interleaved", subsets=2, detach=True),
    strat("multi_refine", refine_steps=2),
    strat("chunked", chunk_size=5),  # T = 16: a short last chunk
    strat("sequential"),
]


# ---------------------------------------------------------------------------------------------
# Exactness against sequential decoding


# Every identity runs on each of these: all backbone features on (T = seq_len = 16, so the
# "S" layers' window of 8 keys really cuts attention; value embeddings; resid/x0 lambdas), our
# layerwise pathway, the authors' arm with GQA, and our shared pathway with GQA on one KV head.
FEATURE_MODELS = {
    "layerwise": {"pathway": "layerwise"},
    "official_gqa": {"pathway": "official", "n_head": 4, "n_kv_head": 2},
    "shared_gqa1_SL_ve_every": {
        "pathway": "shared",
        "n_head": 4,
        "n_kv_head": 1,
        "window_pattern": "SL",
        "ve_every_layer": True,
        "ve_gate_channels": 0,
    },
}


@pytest.fixture(scope="module", params=sorted(FEATURE_MODELS))
def lrt_model(request):
    kw = dict(FEATURE_MODELS[request.param])
    return make_model(kw.pop("pathway"), **kw)


def test_feature_models_really_use_windows(lrt_model):
    """The window cuts attention at T = 16 (else every identity above would hold vacuously
    for windows): the same model with full windows gives other init logits."""
    cfg = lrt_model.config
    assert min(lrt_model.window_sizes) < T - 1
    full = LRT(dataclasses.replace(cfg, window_pattern="L"))
    full.load_state_dict(lrt_model.state_dict())
    assert differs(full.logits(tokens(), "init"), lrt_model.logits(tokens(), "init"))


@pytest.fixture(scope="module")
def seq_logits(lrt_model):
    return sequential_forward(lrt_model, tokens())


def test_zero_memory_decode_equals_init_pass(lrt_model):
    idx = tokens()
    state = new_state(lrt_model, 2, T)
    rows = []
    for t in range(T):
        state.memory = torch.zeros_like(state.memory)  # never feed the recurrence
        out = lrt_model(idx[:, t : t + 1], state.memory, cache=state.cache)
        rows.append(lrt_model.head(out.hidden))
    torch.testing.assert_close(torch.cat(rows, 1), lrt_model.logits(idx, "init"), **TOL)


def test_init_pass_differs_from_recurrence(lrt_model, seq_logits):
    assert differs(lrt_model.logits(tokens(), "init"), seq_logits)


def test_interleaved_s_eq_t_is_exact_sequential(lrt_model, seq_logits):
    idx = tokens()
    for refresh in (False, True):
        s = strat("interleaved", subsets=T, refresh_kv=refresh)
        torch.testing.assert_close(lrt_model.logits(idx, "merged", s), seq_logits, **TOL)
        exact = F.cross_entropy(
            seq_logits.flatten(0, 1), idx.roll(-1, 1).flatten(), reduction="none"
        )
        torch.testing.assert_close(
            lrt_model.token_losses(idx, idx.roll(-1, 1), "merged", s), exact.view(2, T), **TOL
        )
        torch.testing.assert_close(
            lrt_model.token_losses(idx, idx.roll(-1, 1), "sequential"), exact.view(2, T), **TOL
        )
    # one subset fewer is not exact (the comparison can fail)
    assert differs(lrt_model.logits(idx, "merged", strat("interleaved", subsets=T - 1)), seq_logits)


def test_interleaved_s_eq_t_exact_in_float64():
    model = make_model("shared", source_layer=1).double()
    idx = tokens()
    torch.testing.assert_close(
        model.logits(idx, "merged", strat("interleaved", subsets=T)),
        sequential_forward(model, idx),
        rtol=1e-10,
        atol=1e-10,
    )


def test_multi_refine_k_ge_t_minus_1_is_exact(lrt_model, seq_logits):
    idx = tokens()
    for k in (T - 1, T + 2):
        refined = lrt_model.logits(idx, "refine", strat("multi_refine", refine_steps=k))
        torch.testing.assert_close(refined, seq_logits, **TOL)
    short = lrt_model.logits(idx, "refine", strat("multi_refine", refine_steps=T // 2))
    assert differs(short, seq_logits)
    # after K passes the first K+1 positions are already exact
    torch.testing.assert_close(short[:, : T // 2 + 1], seq_logits[:, : T // 2 + 1], **TOL)


def test_multi_refine_exactness_is_sharp_in_float64():
    """The Jacobi error shrinks fast with K, so K = T-2 is within fp32 noise; in float64 it is
    clearly not exact while K = T-1 is."""
    model = make_model("layerwise").double()
    idx = tokens()
    seq = sequential_forward(model, idx)
    exact = model.logits(idx, "refine", strat("multi_refine", refine_steps=T - 1))
    torch.testing.assert_close(exact, seq, rtol=1e-10, atol=1e-10)
    near = model.logits(idx, "refine", strat("multi_refine", refine_steps=T - 2))
    assert (near - seq).abs().max() > 1e-8
    torch.testing.assert_close(near[:, : T - 1], seq[:, : T - 1], rtol=1e-10, atol=1e-10)


def test_chunked_c1_is_sequential_and_ct_is_init_pass(lrt_model, seq_logits):
    idx = tokens()
    torch.testing.assert_close(
        lrt_model.logits(idx, "chunked", strat("chunked", chunk_size=1)), seq_logits, **TOL
    )
    init = lrt_model.logits(idx, "init")
    torch.testing.assert_close(
        lrt_model.logits(idx, "chunked", strat("chunked", chunk_size=T)), init, **TOL
    )
    c4 = lrt_model.logits(idx, "chunked", strat("chunked", chunk_size=4))
    torch.testing.assert_close(c4[:, :4], init[:, :4], **TOL)  # first chunk has no memory
    assert differs(c4, init) and differs(c4, seq_logits)


def test_sequential_strategy_loss_equals_decode_loss(lrt_model, seq_logits):
    idx, targets = tokens(), tokens(seed=5)
    out = lrt_model.forward_train(idx, targets, strat("sequential"))
    exact = F.cross_entropy(seq_logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(out.loss, exact, **TOL)
    assert len(out.pass_losses) == 1


def test_interleaved_one_subset_equals_one_refine_step(lrt_model):
    idx = tokens()
    torch.testing.assert_close(
        lrt_model.logits(idx, "merged", strat("interleaved", subsets=1)),
        lrt_model.logits(idx, "refine", strat("multi_refine", refine_steps=1)),
        **TOL,
    )


# ---------------------------------------------------------------------------------------------
# Pathway off == baseline


def _copy_backbone(src: LRT, dst: LRT) -> None:
    own = {k: v for k, v in src.state_dict().items() if not k.startswith("pathway")}
    missing, unexpected = dst.load_state_dict(own, strict=False)
    assert not unexpected and all(k.startswith("pathway") for k in missing)


@pytest.mark.parametrize("dims", [{}, {"n_head": 4, "n_kv_head": 2}], ids=["mha", "gqa"])
@pytest.mark.parametrize(
    "kw",
    [{"identity_init": True}, {"residual_injection": False, "kv_projection": False}],
    ids=["identity_init", "switches_off"],
)
def test_pathway_off_equals_baseline_everywhere(kw, dims):
    base = make_model("none", **dims)
    dims = {"n_head": 2, **dims}
    lrt = LRT(
        LRTConfig(vocab_size=V, seq_len=T, depth=3, n_embd=64, pathway="layerwise", **dims, **kw)
    )
    lrt.init_weights()  # identity_init: gamma = Wk_m = Wv_m = 0; gates (= 1) stay at init
    _copy_backbone(base, lrt)
    if lrt.pathway is not None and lrt.pathway.gates is not None:
        with torch.no_grad():
            for g in lrt.pathway.gates:
                g.weight.uniform_(-0.3, 0.3)  # non-trivial gates still multiply zero memory terms
    idx, targets = tokens(), tokens(seed=5)
    ref = base.logits(idx, "init")
    for s in ALL_STRATEGIES:
        a = base.forward_train(idx, targets, s)
        b = lrt.forward_train(idx, targets, s)
        torch.testing.assert_close(a.loss, b.loss, **TOL)
        torch.testing.assert_close(a.position_loss, b.position_loss, **TOL)
    for mode in ("init", "merged", "refine", "chunked", "sequential"):
        torch.testing.assert_close(lrt.logits(idx, mode), ref, **TOL)
        torch.testing.assert_close(base.logits(idx, mode), ref, **TOL)
    torch.testing.assert_close(sequential_forward(lrt, idx), ref, **TOL)
    # the same LRT with its pathway switched on is different (the test can fail)
    on = make_model("layerwise", **dims)
    _copy_backbone(base, on)
    assert differs(on.logits(idx, "merged"), ref)


def test_baseline_strategies_all_equal_plain_pass():
    base = make_model("none")
    idx, targets = tokens(), tokens(seed=5)
    plain = base.forward_train(idx, targets, strat("none"))
    for s in ALL_STRATEGIES[1:]:
        out = base.forward_train(idx, targets, s)
        torch.testing.assert_close(out.position_loss, plain.position_loss, **TOL)
        for p in out.pass_losses:
            if s.name in ("none", "multi_refine", "chunked", "sequential"):
                assert math.isclose(p, plain.pass_losses[0], rel_tol=1e-5)


# ---------------------------------------------------------------------------------------------
# Causality


@pytest.mark.parametrize("s", ALL_STRATEGIES, ids=lambda s: f"{s.name}")
def test_no_position_sees_a_later_token(lrt_model, s):
    idx = tokens()
    j = 9
    other = idx.clone()
    other[:, j] = (idx[:, j] + 1) % V
    with torch.no_grad():
        ra, rb = run_passes(lrt_model, idx, s), run_passes(lrt_model, other, s)
    changed_later = False
    for pa, pb in zip(ra.passes, rb.passes, strict=True):
        for qa, qb in zip(pa, pb, strict=True):
            pos = torch.arange(T) if qa.positions is None else qa.positions
            early, late = pos < j, pos >= j
            torch.testing.assert_close(qa.hidden[:, early], qb.hidden[:, early], rtol=0, atol=1e-6)
            if late.any():
                changed_later |= differs(qa.hidden[:, late], qb.hidden[:, late])
    torch.testing.assert_close(ra.source[:, :j], rb.source[:, :j], rtol=0, atol=1e-6)
    assert changed_later  # the perturbation is visible from j on


def test_decode_no_position_sees_a_later_token(lrt_model):
    idx = tokens()
    other = idx.clone()
    other[:, 9] = (idx[:, 9] + 1) % V
    a, b = sequential_forward(lrt_model, idx), sequential_forward(lrt_model, other)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert differs(a[:, 9:], b[:, 9:])


# ---------------------------------------------------------------------------------------------
# Gradients through the buffer


@pytest.mark.parametrize("name", sorted(FEATURE_MODELS))
def test_gradients_reach_init_pass_through_buffer(name):
    """Train only on subset pass 0 (even positions). Odd-position tokens enter that pass only
    through the init pass's buffer rows and source states; their embedding rows get a gradient
    exactly when the buffer is not detached."""
    kw = dict(FEATURE_MODELS[name])
    model = make_model(kw.pop("pathway"), **kw)
    idx = tokens()
    idx[:, 0::2] = idx[:, 0::2] % 40  # even positions: tokens < 40
    idx[:, 1::2] = 50 + idx[:, 1::2] % 40  # odd positions: tokens >= 50
    odd_rows = idx[:, 1::2].unique()
    grads = {}
    for detach in (False, True):
        model.zero_grad()
        s = strat("interleaved", subsets=2, detach=detach, loss_weights=(0.0, 1.0, 0.0))
        model.forward_train(idx, tokens(seed=5), s).loss.backward()
        grads[detach] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
    assert grads[False]["wte.weight"][odd_rows].abs().max() > 1e-6
    assert grads[True]["wte.weight"][odd_rows].abs().max() == 0
    assert differs(
        grads[False]["blocks.0.attn.c_k.weight"] * 1e3,
        grads[True]["blocks.0.attn.c_k.weight"] * 1e3,
    )


def test_multi_refine_detach_cuts_gradient_between_passes():
    """With detach, the last pass's gradient equals that of one pass fed constant memory."""
    model = make_model("layerwise")
    idx, targets = tokens(), tokens(seed=5)
    grads = {}
    for detach in (False, True):
        model.zero_grad()
        s = strat("multi_refine", refine_steps=2, detach=detach, loss_weights=(0.0, 0.0, 1.0))
        model.forward_train(idx, targets, s).loss.backward()
        grads[detach] = model.pathway.gamma.grad.clone()
    with torch.no_grad():
        memory = torch.zeros(2, T, 64)
        for _ in range(2):
            memory = shift_right(model(idx, memory).source)
    model.zero_grad()
    logits = model.head(model(idx, memory).hidden)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    torch.testing.assert_close(grads[True], model.pathway.gamma.grad, **TOL)
    assert differs(grads[False] * 1e3, grads[True] * 1e3)


# ---------------------------------------------------------------------------------------------
# Loss aggregation and the hand-written S = 2 reference


def reference_interleaved(model: LRT, seq: list[int], subsets: int, **kw):
    """Slow interleaved schedule for one sequence (tests/lrt_reference.py)."""
    return lrt_reference.interleaved(model, seq, subsets, **kw)


def test_hand_written_s2_reference_matches_fast_path():
    model = make_model("layerwise", source_layer=1)
    b, t = 2, 8
    idx, targets = tokens(b, t), tokens(b, t, seed=5)
    targets[1, 3] = -1
    with torch.no_grad():
        ref = [reference_interleaved(model, idx[i].tolist(), 2) for i in range(b)]
        out = model.forward_train(idx, targets, strat("interleaved", subsets=2))
        run = run_passes(model, idx, strat("interleaved", subsets=2))
    # per-pass logits
    for p, pieces in enumerate(run.passes):
        (piece,) = pieces
        fast = model.head(piece.hidden)
        positions = range(t) if piece.positions is None else piece.positions.tolist()
        for i in range(b):
            expect = torch.stack([ref[i][p][pos] for pos in positions])
            torch.testing.assert_close(fast[i], expect, **TOL)
    # loss = mean over the 3 passes of each pass's mean token loss (ignored targets excluded)
    pass_losses = []
    for p in range(3):
        nats, count = 0.0, 0
        for i in range(b):
            for pos, logit in ref[i][p].items():
                if targets[i, pos] >= 0:
                    nats += F.cross_entropy(logit, targets[i, pos]).item()
                    count += 1
        pass_losses.append(nats / count)
    assert out.pass_losses == pytest.approx(pass_losses, rel=1e-5)
    assert out.loss.item() == pytest.approx(sum(pass_losses) / 3, rel=1e-5)
    # merged per-position losses: each position scored by its subset pass
    for i in range(b):
        for pos in range(t):
            want = (
                0.0
                if targets[i, pos] < 0
                else F.cross_entropy(ref[i][1 + pos % 2][pos], targets[i, pos]).item()
            )
            assert out.position_loss[i, pos].item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(model.token_losses(idx, targets, "merged"), out.position_loss, **TOL)


def test_loss_weights_weighted_mean():
    model = make_model("layerwise")
    idx, targets = tokens(), tokens(seed=5)
    plain = model.forward_train(idx, targets, strat("multi_refine", refine_steps=2))
    w = (1.0, 2.0, 5.0)
    weighted = model.forward_train(
        idx, targets, strat("multi_refine", refine_steps=2, loss_weights=w)
    )
    assert weighted.pass_losses == pytest.approx(plain.pass_losses, rel=1e-6)
    expect = sum(wi * li for wi, li in zip(w, plain.pass_losses, strict=True)) / sum(w)
    assert weighted.loss.item() == pytest.approx(expect, rel=1e-5)
    assert plain.loss.item() == pytest.approx(sum(plain.pass_losses) / 3, rel=1e-5)
    # multi_refine's merged positions come from its final pass
    torch.testing.assert_close(
        plain.position_loss,
        model.token_losses(idx, targets, "refine", strat("multi_refine", refine_steps=2)),
        **TOL,
    )
