"""Muon/AdamW optimizer and schedules (lrt/optim.py, lrt/schedule.py). CPU, fp32, tiny models."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lrt.optim import (
    NS_COEFFS,
    MuonAdamW,
    build_optimizer,
    lr_multiplier,
    muon_momentum,
    param_groups,
    zeropower_via_newtonschulz,
)

torch.set_num_threads(1)


def _ns_scalar(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The Newton-Schulz polynomial applied to singular values directly (float64 reference)."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def tiny_model(pathway: str = "none", depth: int = 2):
    lrt = pytest.importorskip("lrt.model", reason="lrt.model not written yet")
    from lrt import LRTConfig

    torch.manual_seed(0)
    cfg = LRTConfig(vocab_size=61, depth=depth, seq_len=16, n_embd=64, n_head=2, pathway=pathway)
    model = lrt.LRT(cfg)
    model.init_weights()
    return model


def _loss(model, idx, targets, strategy="none"):
    from lrt import StrategyConfig

    return model.forward_train(idx, targets, StrategyConfig(name=strategy)).loss


# -----------------------------------------------------------------------------
# Newton-Schulz


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48)])
def test_newton_schulz_matches_svd(shape):
    """NS(G) = U f(S/|G|_F) V^T with f the quintic polynomial: same singular vectors as G, and
    singular values in [0.68, 1.21] for every singular value of G above 2e-3 of its Frobenius norm
    (the scalar map's range there, computed on a fine grid)."""
    torch.manual_seed(0)
    m, n = shape
    k = min(m, n)
    # A spread of singular values (condition number 1e3), random singular vectors.
    U, _ = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64))
    S = torch.logspace(0, -3, k, dtype=torch.float64)
    G = U @ torch.diag(S) @ V.T

    X = zeropower_via_newtonschulz(G.float()).double()
    assert X.dtype == torch.float64 and X.shape == G.shape

    # In G's singular basis the output is diagonal, with the scalar iteration's values.
    M = U.T @ X @ V  # (k, k)
    diag = torch.diagonal(M)
    off = M - torch.diag(diag)
    assert off.abs().max() < 1e-4
    expected = _ns_scalar(S / S.norm())
    torch.testing.assert_close(diag, expected, atol=2e-4, rtol=1e-3)

    # The intended range: singular values of G above 2e-3 * |G|_F map into [0.68, 1.21].
    rel = S / S.norm()
    big = rel > 2e-3
    assert big.sum() >= k // 2
    assert diag[big].min() > 0.67 and diag[big].max() < 1.22, diag[big]
    # ... and the output singular values (from torch's SVD) agree with that.
    sv = torch.linalg.svdvals(X)
    assert sv.max() < 1.25


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_newton_schulz_bf16_on_cuda():
    """On CUDA the iteration runs in bf16; its singular values stay in the intended range."""
    torch.manual_seed(0)
    G = torch.randn(4, 256, 1024, device="cuda")
    X = zeropower_via_newtonschulz(G)
    assert X.dtype == torch.bfloat16
    sv = torch.linalg.svdvals(X.float())
    assert sv.min() > 0.5 and sv.max() < 1.3, (sv.min(), sv.max())


def test_newton_schulz_batched_equals_single():
    torch.manual_seed(1)
    G = torch.randn(3, 16, 40)
    batched = zeropower_via_newtonschulz(G)
    for i in range(3):
        torch.testing.assert_close(
            batched[i], zeropower_via_newtonschulz(G[i]), atol=1e-6, rtol=1e-5
        )


# -----------------------------------------------------------------------------
# Update rules against hand computation / torch.optim.AdamW


def test_muon_step_by_hand():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(24, 8))  # tall: lr scaled by sqrt(24/8)
    opt = MuonAdamW([dict(kind="muon", params=[w], lr=0.05, momentum=0.9, weight_decay=0.1)])
    buf = torch.zeros_like(w)
    ref = w.detach().clone()
    for _ in range(3):
        g = torch.randn_like(w)
        w.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        nesterov = 0.1 * g + 0.9 * buf
        ref = ref * (1 - 0.05 * 0.1) - 0.05 * 3**0.5 * zeropower_via_newtonschulz(nesterov)
        torch.testing.assert_close(w.detach(), ref, atol=1e-6, rtol=1e-5)


def test_muon_step_by_hand_many_matrices():
    """Several matrices, two of one shape (stacked for Newton-Schulz), one tall, one without a
    gradient: each follows its own hand-computed update (multi-tensor kernels must not mix
    them up)."""
    torch.manual_seed(0)
    ws = [nn.Parameter(torch.randn(s)) for s in [(8, 12), (8, 12), (24, 8), (5, 5), (8, 12)]]
    opt = MuonAdamW([dict(kind="muon", params=ws, lr=0.05, momentum=0.9, weight_decay=0.1)])
    bufs = [torch.zeros_like(w) for w in ws]
    refs = [w.detach().clone() for w in ws]
    for _ in range(3):
        grads = [torch.randn_like(w) for w in ws]
        for w, g in zip(ws, grads, strict=True):
            w.grad = g.clone()
        ws[3].grad = None  # skipped: no update, no state
        opt.step()
        for i, g in enumerate(grads):
            if i == 3:
                continue
            bufs[i] = 0.9 * bufs[i] + 0.1 * g
            nesterov = 0.1 * g + 0.9 * bufs[i]
            scale = max(1.0, ws[i].shape[0] / ws[i].shape[1]) ** 0.5
            ortho = zeropower_via_newtonschulz(nesterov)
            refs[i] = refs[i] * (1 - 0.05 * 0.1) - 0.05 * scale * ortho
        for w, ref in zip(ws, refs, strict=True):
            torch.testing.assert_close(w.detach(), ref, atol=1e-6, rtol=1e-5)
    assert ws[3] not in opt.state or not opt.state[ws[3]]


def test_adamw_matches_torch():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(10))
    b = nn.Parameter(a.detach().clone())
    ours = MuonAdamW(
        [dict(kind="adamw", params=[a], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)]
    )
    ref = torch.optim.AdamW([b], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(10)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5)


def test_muon_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([dict(kind="muon", params=[nn.Parameter(torch.zeros(3))], lr=0.1)])
    with pytest.raises(ValueError, match="kind"):
        MuonAdamW([dict(kind="sgd", params=[nn.Parameter(torch.zeros(3))], lr=0.1)])


# -----------------------------------------------------------------------------
# Schedules


def test_lr_multiplier_points():
    # total 100, no warmup, warmdown 20 steps -> constant until 80, then (100 - s) / 20.
    assert lr_multiplier(0, 100) == 1.0
    assert lr_multiplier(80, 100) == 1.0
    assert lr_multiplier(81, 100) == pytest.approx(19 / 20)
    assert lr_multiplier(90, 100) == pytest.approx(0.5)
    assert lr_multiplier(100, 100) == 0.0
    # final_lr_frac 0.1: halfway through warmdown = 0.5 + 0.5 * 0.1
    assert lr_multiplier(90, 100, final_lr_frac=0.1) == pytest.approx(0.55)
    assert lr_multiplier(100, 100, final_lr_frac=0.1) == pytest.approx(0.1)
    # warmup 10 steps: (s + 1) / 10
    assert lr_multiplier(0, 100, warmup_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(4, 100, warmup_ratio=0.1) == pytest.approx(0.5)
    assert lr_multiplier(10, 100, warmup_ratio=0.1) == 1.0
    # no warmdown at all
    assert lr_multiplier(99, 100, warmdown_ratio=0.0) == 1.0
    with pytest.raises(ValueError):
        lr_multiplier(0, 0)


def test_muon_momentum_points():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(10_000) == pytest.approx(0.95)
    assert muon_momentum(5, warmup_steps=0) == 0.95


def test_set_schedule():
    w, s = nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(4))
    opt = MuonAdamW(
        [
            dict(kind="muon", params=[w], lr=0.02, weight_decay=0.2),
            dict(kind="adamw", params=[s], lr=0.5, weight_decay=0.1),
        ]
    )
    opt.set_schedule(0.5, momentum=0.9, wd_mult=0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.25]
    assert opt.param_groups[0]["momentum"] == 0.9 and "momentum" not in opt.param_groups[1]
    assert [g["weight_decay"] for g in opt.param_groups] == [
        0.05,
        0.1,
    ]  # AdamW's wd is not scheduled
    opt.set_schedule(1.0)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.5]


# -----------------------------------------------------------------------------
# Real LRT models


@pytest.mark.parametrize("pathway", ["none", "shared", "layerwise"])
def test_groups_cover_every_parameter_once(pathway):
    model = tiny_model(pathway)
    groups = param_groups(model)
    ids = [id(p) for items in groups.values() for _, p in items]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {k: [n for n, _ in v] for k, v in groups.items()}
    assert names["embedding"] == ["wte.weight"]
    assert names["lm_head"] == ["lm_head.weight"]
    assert all(n.startswith(("blocks.", "pathway.")) for n in names["matrix"])
    block_mats = [n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    assert set(block_mats) <= set(names["matrix"])
    path = [n for n, p in model.named_parameters() if n.startswith("pathway.")]
    assert bool(path) == (pathway != "none")
    for n, p in model.named_parameters():
        if n.startswith("pathway."):
            assert n in (names["matrix"] if p.ndim == 2 else names["scalar"]), n

    opt = build_optimizer(torch.compile(model))  # wrappers are looked through
    in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(in_opt) == sorted(id(p) for p in model.parameters())
    muon = {id(p) for g in opt.param_groups if g["kind"] == "muon" for p in g["params"]}
    pathway_mats = {
        id(p) for n, p in model.named_parameters() if n.startswith("pathway.") and p.ndim == 2
    }
    assert pathway_mats <= muon
    # nanochat's AdamW LR scaling at width 64: (64 / 768) ** -0.5
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["embedding"] == pytest.approx(0.2 * (64 / 768) ** -0.5)
    assert lrs["lm_head"] == pytest.approx(0.004 * (64 / 768) ** -0.5)
    assert lrs["matrix"] == 0.02


def _batch(seed: int, vocab: int = 61, b: int = 2, t: int = 16):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (b, t + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def _train_steps(model, opt, steps, start=0, strategy="interleaved"):
    for s in range(start, start + steps):
        opt.set_schedule(lr_multiplier(s, 10), muon_momentum(s, warmup_steps=5))
        idx, tgt = _batch(s)
        _loss(model, idx, tgt, strategy).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_state_dict_round_trip_resumes_identically():
    model = tiny_model("shared")
    opt = build_optimizer(model)
    _train_steps(model, opt, 2)

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # the checkpoint format must be weights_only-safe

    _train_steps(model, opt, 2, start=2)

    resumed = tiny_model("shared")
    resumed.load_state_dict(ckpt["model"])
    opt2 = build_optimizer(resumed)
    opt2.load_state_dict(ckpt["optim"])
    _train_steps(resumed, opt2, 2, start=2)
    for (n, p), (_, q) in zip(model.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_training_reduces_loss():
    model = tiny_model("layerwise")
    opt = build_optimizer(model)
    idx, tgt = _batch(123)
    first = _loss(model, idx, tgt, "interleaved").item()
    for _ in range(15):
        _loss(model, idx, tgt, "interleaved").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert _loss(model, idx, tgt, "interleaved").item() < 0.7 * first
