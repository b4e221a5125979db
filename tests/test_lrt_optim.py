"""Muon/AdamW optimizer (lrt/optim.py) against slow per-parameter references written here from
nanochat's math (Polar Express via the SVD, variance reduction, cautious decay). CPU, tiny."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lrt.optim import (
    GROUP_NAMES,
    NS_COEFFS,
    POLAR_EXPRESS_COEFFS,
    MuonAdamW,
    OptimizerRecipe,
    build_optimizer,
    lr_multiplier,
    muon_momentum,
    param_groups,
    zeropower_via_newtonschulz,
    zeropower_via_polar_express,
)

torch.set_num_threads(1)


def _ns_scalar(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The Newton-Schulz polynomial applied to singular values directly (float64 reference)."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


# Polar Express's published coefficients (arXiv 2505.16932, 5 steps, safety 2e-2, cushion 2),
# typed in from the paper's table as nanochat uses them: a typo in the module must fail here.
PE_PAPER = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def _pe_scalar(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    for a, b, c in PE_PAPER[:steps]:
        s = a * s + b * s**3 + c * s**5
    return s


def ref_polar_express(G: torch.Tensor, norm_factor: float = 1.02) -> torch.Tensor:
    """Polar Express as a map on singular values: U p5(...p1(S / (f |G|_F + 1e-6))) V^T, f64."""
    G = G.double()
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = S / (G.norm() * norm_factor + 1e-6)
    return U @ torch.diag(_pe_scalar(s)) @ Vh


def ref_variance_reduction(u: torch.Tensor, v: torch.Tensor, beta2: float):
    """NorMuon's factored second moment, one matrix: per row when rows >= cols, else per column.
    Returns (scaled update, new second moment) as 1-D v."""
    rows, cols = u.shape
    per = (u**2).mean(dim=1) if rows >= cols else (u**2).mean(dim=0)
    v = beta2 * v + (1 - beta2) * per
    s = 1 / torch.sqrt(torch.clamp(v, min=1e-10))
    us = u * (s[:, None] if rows >= cols else s[None, :])
    return us * (u.norm() / us.norm()), v


class RefMuon:
    """Slow Muon on one matrix: Nesterov momentum, orthogonalise, [variance reduction], then
    p - lr_eff u - lr_eff wd p [* (u p >= 0)] with lr_eff = lr sqrt(max(1, rows/cols))."""

    def __init__(self, p: torch.Tensor, polar: bool = True, vr: bool = True, cautious=True):
        self.p = p.detach().double().clone()
        self.buf = torch.zeros_like(self.p)
        rows, cols = p.shape
        self.v = torch.zeros(rows if rows >= cols else cols, dtype=torch.float64)
        self.polar, self.vr, self.cautious = polar, vr, cautious

    def step(self, g, lr, mom, wd, beta2=0.95):
        g = g.double()
        self.buf = mom * self.buf + (1 - mom) * g
        upd = (1 - mom) * g + mom * self.buf
        if self.polar:
            u = ref_polar_express(upd)
        else:
            u = zeropower_via_newtonschulz(upd.float()).double()
        if self.vr:
            u, self.v = ref_variance_reduction(u, self.v, beta2)
        rows, cols = self.p.shape
        lr_eff = lr * math.sqrt(max(1.0, rows / cols))
        mask = (u * self.p >= 0).double() if self.cautious else torch.ones_like(self.p)
        self.p = self.p - lr_eff * u - lr_eff * wd * self.p * mask


# -----------------------------------------------------------------------------
# Orthogonalisation


def _spread_matrix(m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """G = U diag(S) V^T with singular values from 1 to 1e-3 and random singular vectors."""
    torch.manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64))
    S = torch.logspace(0, -3, k, dtype=torch.float64)
    return U @ torch.diag(S) @ V.T, U, S, V


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48)])
def test_newton_schulz_matches_svd(shape):
    """NS(G) = U f(S/|G|_F) V^T with f the quintic polynomial; singular values of G above 2e-3
    of its Frobenius norm land in [0.68, 1.21]."""
    G, U, S, V = _spread_matrix(*shape)
    X = zeropower_via_newtonschulz(G.float()).double()
    M = U.T @ X @ V  # diagonal in G's singular basis
    diag = torch.diagonal(M)
    assert (M - torch.diag(diag)).abs().max() < 1e-4
    torch.testing.assert_close(diag, _ns_scalar(S / S.norm()), atol=2e-4, rtol=1e-3)
    big = S / S.norm() > 2e-3
    assert diag[big].min() > 0.67 and diag[big].max() < 1.22, diag[big]


def test_polar_express_coefficients_are_the_papers():
    assert [tuple(c) for c in POLAR_EXPRESS_COEFFS] == PE_PAPER


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48)])
def test_polar_express_matches_svd(shape):
    """Both the wide (A = X X^T) and the tall (A = X^T X) iteration equal the scalar map on
    G's singular values; singular values above 1e-3 |G|_F land in [0.846, 1.142] (the scalar
    map's range there on a fine grid; the quintic's is [0.68, 1.21])."""
    G, U, S, V = _spread_matrix(*shape, seed=1)
    X = zeropower_via_polar_express(G.float()).double()
    torch.testing.assert_close(X, ref_polar_express(G), atol=2e-5, rtol=1e-4)
    diag = torch.diagonal(U.T @ X @ V)
    big = S / S.norm() > 1e-3
    assert diag[big].min() > 0.846 and diag[big].max() < 1.142, diag[big]


def test_polar_express_batched_and_options():
    torch.manual_seed(1)
    G = torch.randn(3, 16, 40)
    batched = zeropower_via_polar_express(G)
    for i in range(3):
        torch.testing.assert_close(batched[i], zeropower_via_polar_express(G[i]))
    # Muon+ (renormalize): Frobenius norm sqrt(min(m, n)), direction unchanged
    r = zeropower_via_polar_express(G, renormalize=True)
    torch.testing.assert_close(r.norm(dim=(-2, -1)), torch.full((3,), 4.0))
    torch.testing.assert_close(
        r / r.norm(dim=(-2, -1), keepdim=True), batched / batched.norm(dim=(-2, -1), keepdim=True)
    )
    # MuonEq (row_equilibrate) = Polar Express of G with every row scaled to the mean row norm
    g = G[0].double()
    target = g.norm() / 16**0.5
    equal_rows = g * (target / g.norm(dim=1, keepdim=True))
    torch.testing.assert_close(
        zeropower_via_polar_express(G[0], row_equilibrate=True).double(),
        ref_polar_express(equal_rows),
        atol=2e-5,
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="1..5"):
        zeropower_via_polar_express(G, steps=6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_orthogonalisation_bf16_on_cuda():
    torch.manual_seed(0)
    G = torch.randn(4, 256, 1024, device="cuda")
    for fn, lo, hi in (
        (zeropower_via_newtonschulz, 0.5, 1.3),
        (zeropower_via_polar_express, 0.7, 1.1),
    ):
        X = fn(G)
        assert X.dtype == torch.bfloat16
        sv = torch.linalg.svdvals(X.float())
        assert sv.min() > lo and sv.max() < hi, (fn.__name__, sv.min(), sv.max())


# -----------------------------------------------------------------------------
# Muon update rules against the slow reference

SHAPES = [(8, 12), (8, 12), (24, 8), (5, 5), (8, 12), (12, 8)]  # wide x3 stacked, tall, square


@pytest.mark.parametrize(
    "polar,vr,cautious",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_muon_matches_reference(polar, vr, cautious):
    """Six matrices (three of one shape, stacked together; tall, square and wide; one without a
    gradient on one step): three steps with lr, momentum and weight decay changed between steps
    by set_schedule, each matrix against its own slow reference."""
    torch.manual_seed(0)
    ws = [nn.Parameter(torch.randn(s)) for s in SHAPES]
    opt = MuonAdamW(
        [
            dict(
                kind="muon",
                params=ws,
                lr=0.05,
                momentum=0.9,
                weight_decay=0.4,
                beta2=0.9,
                variant="polar_express" if polar else "newton_schulz",
                variance_reduction=vr,
                cautious_wd=cautious,
            )
        ]
    )
    refs = [RefMuon(w, polar, vr, cautious) for w in ws]
    for step, (lr_mult, mom, wd_mult) in enumerate(
        [(1.0, 0.9, 1.0), (0.5, 0.8, 0.5), (0.25, 0.95, 0.0)]
    ):
        opt.set_schedule(lr_mult, mom, wd_mult)
        grads = [torch.randn_like(w) for w in ws]
        for w, g in zip(ws, grads, strict=True):
            w.grad = g.clone()
        if step == 1:
            ws[3].grad = None  # skipped: no update
        opt.step()
        for i, g in enumerate(grads):
            if step == 1 and i == 3:
                continue
            refs[i].step(g, 0.05 * lr_mult, mom, 0.4 * wd_mult, beta2=0.9)
        for i, (w, ref) in enumerate(zip(ws, refs, strict=True)):
            torch.testing.assert_close(
                w.detach().double(),
                ref.p,
                atol=2e-5,
                rtol=1e-4,
                msg=f"step {step} matrix {i} {SHAPES[i]}",
            )
    st = opt.state[ws[2]]  # tall (24, 8): per-row second moment
    assert ("second_momentum_buffer" in st) == vr
    if vr:
        assert st["second_momentum_buffer"].shape == (24, 1)
        assert opt.state[ws[0]]["second_momentum_buffer"].shape == (1, 12)


def test_cautious_decay_only_where_update_agrees():
    """Zero gradient history except one sign pattern: with lr tiny relative to wd, the decay
    shows up only on entries whose update has the weight's sign."""
    w = nn.Parameter(torch.tensor([[1.0, -1.0], [2.0, -2.0]]))
    opt = MuonAdamW(
        [
            dict(
                kind="muon",
                params=[w],
                lr=1e-3,
                weight_decay=100.0,
                variance_reduction=False,
                nesterov=False,
                momentum=0.0,
            )
        ]
    )
    w.grad = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # rank 1 -> update = c * ones
    opt.step()
    u = zeropower_via_polar_express(torch.ones(2, 2))[0, 0].item()  # > 0
    lr = 1e-3
    expected = torch.tensor(
        [[1 - lr * u - lr * 100 * 1, -1 - lr * u], [2 - lr * u - lr * 100 * 2, -2 - lr * u]]
    )
    torch.testing.assert_close(w.detach(), expected)


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


def test_bad_groups_are_rejected():
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([dict(kind="muon", params=[nn.Parameter(torch.zeros(3))], lr=0.1)])
    with pytest.raises(ValueError, match="kind"):
        MuonAdamW([dict(kind="sgd", params=[nn.Parameter(torch.zeros(3))], lr=0.1)])
    with pytest.raises(ValueError, match="variant"):
        MuonAdamW(
            [dict(kind="muon", params=[nn.Parameter(torch.zeros(3, 3))], lr=0.1, variant="svd")]
        )
    with pytest.raises(ValueError, match="ns_steps=7"):
        MuonAdamW([dict(kind="muon", params=[nn.Parameter(torch.zeros(3, 3))], lr=0.1, ns_steps=7)])


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
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.1]  # AdamW's not scheduled
    opt.set_schedule(1.0)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.5]


# -----------------------------------------------------------------------------
# Groups and their learning rates


class FakeNanochat(nn.Module):
    """The parameter names the backbone features use (value embeddings, lambdas, gates,
    gamma), so grouping is tested independently of lrt.model."""

    def __init__(self, d: int = 64, depth: int = 6, vocab: int = 128):
        super().__init__()
        self.config = SimpleNamespace(n_embd=d, depth=depth)
        self.wte = nn.Embedding(vocab, d)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab, d) for i in (1, 3, 5)})
        self.blocks = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(depth))
        self.ve_gate = nn.Linear(32, 2, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(depth))
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))
        self.pathway = nn.Module()
        self.pathway.gamma = nn.Parameter(torch.zeros(depth))
        self.lm_head = nn.Linear(d, vocab, bias=False)


def test_groups_and_learning_rates_are_nanochats():
    model = FakeNanochat()
    names = {k: [n for n, _ in v] for k, v in param_groups(model).items()}
    assert names == {
        "lm_head": ["lm_head.weight"],
        "embedding": ["wte.weight"],
        "value_embeds": [f"value_embeds.{i}.weight" for i in (1, 3, 5)],
        "resid_lambdas": ["resid_lambdas"],
        "x0_lambdas": ["x0_lambdas"],
        "scalar": ["pathway.gamma"],
        "matrix": [f"blocks.{i}.weight" for i in range(6)] + ["ve_gate.weight"],
    }
    # The recipe at B = 2^17 tokens (lr x 0.5), depth 6 (wd x 4), width 64 (s = 12^0.5).
    opt = OptimizerRecipe().build(torch.compile(model), total_batch_tokens=2**17)
    s, b = (64 / 768) ** -0.5, 0.5
    got = {
        g["name"]: (g["kind"], g["lr"], g.get("betas"), g["weight_decay"]) for g in opt.param_groups
    }
    want = {
        "lm_head": ("adamw", 0.004 * s * b, (0.8, 0.95), 0.0),
        "embedding": ("adamw", 0.3 * s * b, (0.8, 0.95), 0.0),
        "value_embeds": ("adamw", 0.3 * s * b, (0.8, 0.95), 0.0),
        "resid_lambdas": ("adamw", 0.5 * 0.01 * b, (0.8, 0.95), 0.0),
        "x0_lambdas": ("adamw", 0.5 * b, (0.96, 0.95), 0.0),
        "scalar": ("adamw", 0.5 * b, (0.8, 0.95), 0.0),
        "matrix": ("muon", 0.02 * b, None, 0.2 * (12 / 6) ** 2),
    }
    assert list(got) == list(GROUP_NAMES)
    for k, (kind, lr, betas, wd) in want.items():
        assert got[k][0] == kind and got[k][2] == betas, k
        assert got[k][1] == pytest.approx(lr) and got[k][3] == pytest.approx(wd), k
    muon = next(g for g in opt.param_groups if g["kind"] == "muon")
    assert (muon["variant"], muon["variance_reduction"], muon["cautious_wd"], muon["beta2"]) == (
        "polar_express",
        True,
        True,
        0.95,
    )
    assert all(g["eps"] == 1e-10 for g in opt.param_groups if g["kind"] == "adamw")
    legacy = OptimizerRecipe.legacy().build(model, total_batch_tokens=2**17)
    muon = next(g for g in legacy.param_groups if g["kind"] == "muon")
    assert (muon["variant"], muon["variance_reduction"], muon["cautious_wd"], muon["lr"]) == (
        "newton_schulz",
        False,
        False,
        0.02,
    )
    assert muon["weight_decay"] == 0.0


def test_recipe_schedule_is_base_trains():
    r = OptimizerRecipe()
    n = 1000  # warm-down the last 500 steps; momentum 0.85 -> 0.95 over 300; wd 1 -> 0
    assert r.schedule(0, n) == (1.0, 0.85, 1.0)
    assert r.schedule(150, n) == pytest.approx((1.0, 0.90, 0.85))
    assert r.schedule(500, n) == pytest.approx((1.0, 0.95, 0.5))
    assert r.schedule(750, n) == pytest.approx((0.5, 0.95, 0.25))
    assert r.schedule(1000, n) == pytest.approx((0.0, 0.95, 0.0))
    assert r.grad_clip == 0.0 and OptimizerRecipe.legacy().grad_clip == 1.0
    assert OptimizerRecipe.legacy().schedule(500, n)[2] == 1.0


# -----------------------------------------------------------------------------
# Real LRT models


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


@pytest.mark.parametrize("pathway", ["none", "shared", "layerwise", "official"])
def test_groups_cover_every_parameter_once(pathway):
    model = tiny_model(pathway, depth=3)
    groups = param_groups(model)
    ids = [id(p) for items in groups.values() for _, p in items]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {k: [n for n, _ in v] for k, v in groups.items()}
    assert names["embedding"] == ["wte.weight"]
    assert names["lm_head"] == ["lm_head.weight"]
    assert names["resid_lambdas"] == ["resid_lambdas"] and names["x0_lambdas"] == ["x0_lambdas"]
    tables = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and n != "wte"]
    assert names["value_embeds"] == [f"{n}.weight" for n in tables]
    if pathway == "official":  # init value embeddings on every layer replace value embeddings
        assert tables == [f"pathway.init_value_embeds.{i}" for i in range(3)]
    else:  # alternating, last included
        assert tables == ["value_embeds.0", "value_embeds.2"]
    gates = [n for n in names["matrix"] if "gate" in n]
    assert gates and all(p.ndim == 2 for n, p in model.named_parameters() if n in gates)
    assert names["scalar"] == ([] if pathway == "none" else ["pathway.gamma"])
    rest = {n for n, p in model.named_parameters() if p.ndim == 2} - set(names["matrix"])
    assert rest == {"wte.weight", "lm_head.weight", *(f"{n}.weight" for n in tables)}

    opt = build_optimizer(torch.compile(model))  # wrappers are looked through
    in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(in_opt) == sorted(id(p) for p in model.parameters())
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["embedding"] == pytest.approx(0.2 * (64 / 768) ** -0.5)
    assert lrs["value_embeds"] == pytest.approx(0.2 * (64 / 768) ** -0.5)
    assert lrs["lm_head"] == pytest.approx(0.004 * (64 / 768) ** -0.5)
    assert lrs["matrix"] == 0.02 and lrs["resid_lambdas"] == pytest.approx(0.005)


def _batch(seed: int, vocab: int = 61, b: int = 2, t: int = 16):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (b, t + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def _train_steps(model, opt, steps, start=0, strategy="interleaved"):
    """Steps with the recipe's schedule (lr, momentum and weight decay all changing)."""
    recipe = OptimizerRecipe(momentum_warmup_steps=5)
    for s in range(start, start + steps):
        opt.set_schedule(*recipe.schedule(s, 10))
        idx, tgt = _batch(s)
        _loss(model, idx, tgt, strategy).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_state_dict_round_trip_resumes_identically():
    model = tiny_model("shared")
    opt = OptimizerRecipe().build(model, 4096)
    _train_steps(model, opt, 2)

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # the checkpoint format must be weights_only-safe

    _train_steps(model, opt, 2, start=2)

    resumed = tiny_model("shared")
    resumed.load_state_dict(ckpt["model"])
    opt2 = OptimizerRecipe().build(resumed, 4096)
    opt2.load_state_dict(ckpt["optim"])
    _train_steps(resumed, opt2, 2, start=2)
    for (n, p), (_, q) in zip(model.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize(
    "recipe", [OptimizerRecipe(), OptimizerRecipe.legacy()], ids=["nanochat", "legacy"]
)
def test_training_reduces_loss(recipe):
    model = tiny_model("layerwise")
    opt = recipe.build(model, 2**19)
    idx, tgt = _batch(123)
    first = _loss(model, idx, tgt, "interleaved").item()
    for _ in range(15):
        _loss(model, idx, tgt, "interleaved").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert _loss(model, idx, tgt, "interleaved").item() < 0.7 * first


def test_schedule_reexports():
    assert lr_multiplier(75, 100) == 0.5 and muon_momentum(0) == 0.85
