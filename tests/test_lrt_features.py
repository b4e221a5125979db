"""nanochat backbone features and the authors' arm, against hand computations and the slow
per-position reference (tests/lrt_reference.py), in every path: plain pass, interleaved
subset passes against the buffer (with and without the K/V refresh), chunked, sequential,
KV-cache decoding and the static decoder.

Models: T = seq_len = 12 so the "S" layers' window (6 keys back) really cuts attention.
"""

from __future__ import annotations

import dataclasses

import lrt_reference as ref
import pytest
import torch

from lrt import LRT, LRTConfig, StrategyConfig
from lrt.attention import position_mask, window_masks
from lrt.decode import generate, sequential_forward
from lrt.passes import run_passes
from lrt.static_decode import StaticDecoder

torch.set_num_threads(1)

V, T = 61, 12
TOL = {"rtol": 5e-5, "atol": 5e-5}  # fp32 rounding over 3 layers of random weights


def model_of(pathway="layerwise", seed=0, **kw) -> LRT:
    torch.manual_seed(seed)
    kw = {"depth": 3, "n_embd": 32, "n_head": 4, "n_kv_head": 2, "ve_gate_channels": 8, **kw}
    model = LRT(LRTConfig(vocab_size=V, seq_len=T, pathway=pathway, **kw))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name != "wte.weight":
                p.uniform_(-0.4, 0.4)
            elif p.dim() == 1:
                p.uniform_(0.2, 0.8)
    return model


def toks(b=2, t=T, seed=1):
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


MODELS = {
    "baseline": {"pathway": "none"},
    "layerwise": {"pathway": "layerwise"},
    "shared_ve_every": {"pathway": "shared", "ve_every_layer": True, "window_pattern": "SL"},
    "official": {"pathway": "official"},
    "official_mqa_full_gate": {"pathway": "official", "n_kv_head": 1, "ve_gate_channels": 0},
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return model_of(**MODELS[request.param])


@pytest.fixture(scope="module")
def seq_ref(model):
    idx = toks()
    with torch.no_grad():
        return torch.stack([ref.sequential(model, idx[i].tolist()) for i in range(2)])


# ---------------------------------------------------------------------------------------------
# Hand-computed small cases


def test_window_sizes_tile_the_pattern_and_end_full():
    cfg = LRTConfig(vocab_size=10, depth=6, seq_len=100, n_embd=32, n_head=2, window_pattern="SSL")
    assert cfg.window_sizes == [50, 50, 100, 50, 50, 100]
    cfg = LRTConfig(vocab_size=10, depth=3, seq_len=100, n_embd=32, n_head=2, window_pattern="S")
    assert cfg.window_sizes == [50, 50, 100]  # final layer always full


def test_window_mask_brute_force():
    q_pos = torch.tensor([0, 3, 4, 9, 11])
    for window in (None, 0, 2, 5, 11, 50):
        got = position_mask(q_pos, 12, window)
        for i, q in enumerate(q_pos.tolist()):
            for k in range(12):
                want = k <= q and (window is None or q - k <= window)
                assert bool(got[i, k]) == want, (window, q, k)
    # window_masks: one mask per distinct layer window, unwindowed ones shared
    masks = window_masks([q_pos], 12, [5, 5, 12])[0]
    assert set(masks) == {5, 12}
    assert torch.equal(masks[5], position_mask(q_pos, 12, 5))
    assert torch.equal(masks[12], position_mask(q_pos, 12))


def test_gqa_equals_mha_with_repeated_kv_heads():
    """n_kv_head=2 of 4 heads == plain MHA whose K/V projections (and value embeddings, gates)
    repeat each KV head for its 2 query heads."""
    gqa = model_of("layerwise")
    cfg = dataclasses.replace(gqa.config, n_kv_head=4)
    mha = LRT(cfg)
    d = cfg.head_dim

    def rep(w):  # (Hkv*D, ...) -> (2*Hkv*D, ...): each head's D rows twice
        return w.view(2, d, *w.shape[1:]).repeat_interleave(2, dim=0).reshape(4 * d, *w.shape[1:])

    sd = {}
    for name, p in gqa.state_dict().items():
        if name.endswith(("c_k.weight", "c_v.weight")) or ".k_proj." in name or ".v_proj." in name:
            p = rep(p)
        elif name.startswith("value_embeds."):
            p = rep(p.T).T
        elif name.endswith("ve_gate.weight") or name.startswith("pathway.gates."):
            p = p.repeat_interleave(2, dim=0)  # (Hkv, G) -> (H, G)
        sd[name] = p
    mha.load_state_dict(sd)
    idx = toks()
    for mode in ("init", "merged", "sequential"):
        torch.testing.assert_close(mha.logits(idx, mode), gqa.logits(idx, mode), **TOL)
    assert sum(p.numel() for p in mha.parameters()) > sum(p.numel() for p in gqa.parameters())


def test_vocab_padding():
    m = model_of("none")
    assert m.wte.weight.shape[0] == m.lm_head.weight.shape[0] == 64  # 61 -> multiple of 64
    idx = toks()
    logits = m.logits(idx)
    assert logits.shape == (2, T, V)
    with torch.no_grad():  # padded rows are never read: changing them changes nothing
        m.lm_head.weight[V:] = 100.0
        m.wte.weight[V:] = -7.0
    torch.testing.assert_close(m.logits(idx), logits, rtol=0, atol=0)
    assert (
        LRTConfig(vocab_size=61, pad_vocab_size_to=1, n_embd=32, n_head=2).padded_vocab_size == 61
    )


def test_lambdas_at_neutral_values_equal_no_lambdas():
    m = model_of("layerwise")
    off = LRT(dataclasses.replace(m.config, use_resid_lambdas=False, use_x0_residual=False))
    off.load_state_dict(
        {k: v for k, v in m.state_dict().items() if k not in ("resid_lambdas", "x0_lambdas")}
    )
    with torch.no_grad():
        m.resid_lambdas.fill_(1.0)
        m.x0_lambdas.fill_(0.0)
    idx = toks()
    for mode in ("init", "merged"):
        torch.testing.assert_close(m.logits(idx, mode), off.logits(idx, mode), **TOL)
    with torch.no_grad():
        m.x0_lambdas.fill_(0.1)
    assert (m.logits(idx) - off.logits(idx)).abs().max() > 1e-3


def test_value_embedding_gate_by_hand():
    """Layer 0 (has_ve for depth 3): v = c_v xn + 2 sigmoid(W_gate xn[:8]) * E[token]."""
    m = model_of("none")
    assert [m.config.has_ve(i) for i in range(3)] == [True, False, True]
    assert set(m.value_embeds) == {"0", "2"}
    idx = toks(1)
    out = m(idx, capture=True)
    k_base, v_base, _ = out.pre[0]  # layer 0, before RoPE
    x0 = ref.rms(m.wte.weight[idx[0]])  # (T, C)
    xn = ref.rms(m.resid_lambdas[0] * x0 + m.x0_lambdas[0] * x0)
    gate = 2 * torch.sigmoid(xn[:, :8] @ m.blocks[0].attn.ve_gate.weight.T)  # (T, Hkv)
    ve = m.value_embeds["0"].weight[idx[0]].view(T, 2, 8)
    want = (xn @ m.blocks[0].attn.c_v.weight.T).view(T, 2, 8) + gate[..., None] * ve
    torch.testing.assert_close(v_base[0], want, **TOL)


def test_official_triple_gate_by_hand():
    """Layer 0 of the authors' arm: k = g_local k, v = g_local v + g_ve E_0[token] before the
    memory terms; the gates are 2 sigmoid over the first 8 channels, split local/fb/ve."""
    m = model_of("official")
    assert len(m.value_embeds) == 0  # replaced by the init value embeddings
    assert set(m.pathway.init_value_embeds) == {"0", "1", "2"}
    idx = toks(1)
    out = m(idx, capture=True)
    k_base, v_base, s_fb = out.pre[0]
    x0 = ref.rms(m.wte.weight[idx[0]])
    xn = ref.rms(m.resid_lambdas[0] * x0 + m.x0_lambdas[0] * x0)  # + gamma * 0
    g = 2 * torch.sigmoid(xn[:, :8] @ m.blocks[0].attn.triple_gate.weight.T)  # (T, 3 Hkv)
    gl, gf, gv = g[:, :2, None], g[:, 2:4], g[:, 4:, None]
    a = m.blocks[0].attn
    want_k = gl * (xn @ a.c_k.weight.T).view(T, 2, 8)
    want_v = gl * (xn @ a.c_v.weight.T).view(T, 2, 8)
    want_v = want_v + gv * m.pathway.init_value_embeds["0"].weight[idx[0]].view(T, 2, 8)
    torch.testing.assert_close(k_base[0], want_k, **TOL)
    torch.testing.assert_close(v_base[0], want_v, **TOL)
    torch.testing.assert_close(2 * s_fb[0], gf, **TOL)


# ---------------------------------------------------------------------------------------------
# Every path against the slow reference


def test_init_pass_matches_reference(model):
    idx = toks()
    with torch.no_grad():
        want = torch.stack(
            [
                torch.stack(list(ref.interleaved(model, idx[i].tolist(), 1)[0].values()))
                for i in range(2)
            ]
        )
    torch.testing.assert_close(model.logits(idx, "init"), want, **TOL)


def test_sequential_and_decoders_match_reference(model, seq_ref):
    idx = toks()
    torch.testing.assert_close(model.logits(idx, "sequential"), seq_ref, **TOL)
    torch.testing.assert_close(sequential_forward(model, idx), seq_ref, **TOL)
    # chunked C = 1 is the exact recurrence through the buffer path
    chunk1 = model.logits(idx, "chunked", StrategyConfig(chunk_size=1))
    torch.testing.assert_close(chunk1, seq_ref, **TOL)
    for fuse in (False, True):
        dec = StaticDecoder(model, 2, T, fuse=fuse)
        rows = [dec.step(idx[:, t]) for t in range(T)]
        torch.testing.assert_close(torch.stack(rows, 1), seq_ref, rtol=1e-4, atol=1e-4)
    # prefill + generate over the window: greedy tokens equal with both decoders
    a = generate(model, idx[:, :3], max_new_tokens=T - 3, temperature=0.0)
    b = generate(model, idx[:, :3], max_new_tokens=T - 3, temperature=0.0, static=True)
    assert torch.equal(a, b)


def test_chunked_matches_reference_boundaries(model, seq_ref):
    """Chunked C: positions of the first chunk see zero memory (= init pass rows); C = T is
    the init pass; and a chunk's rows attend through the windowed buffer."""
    idx = toks()
    torch.testing.assert_close(
        model.logits(idx, "chunked", StrategyConfig(chunk_size=T)), model.logits(idx), **TOL
    )
    c5 = model.logits(idx, "chunked", StrategyConfig(chunk_size=5))
    torch.testing.assert_close(c5[:, :5], model.logits(idx)[:, :5], **TOL)


@pytest.mark.parametrize("subsets", [2, 3, 5])
@pytest.mark.parametrize("refresh", [False, True], ids=["plain", "refresh"])
def test_interleaved_matches_reference(model, subsets, refresh):
    idx, tgt = toks(), toks(seed=7)
    s = StrategyConfig(name="interleaved", subsets=subsets, refresh_kv=refresh)
    with torch.no_grad():
        run = run_passes(model, idx, s)
        refs = [ref.interleaved(model, idx[i].tolist(), subsets, refresh=refresh) for i in range(2)]
    for p, (piece,) in enumerate(run.passes):
        fast = model.head(piece.hidden)
        positions = range(T) if piece.positions is None else piece.positions.tolist()
        want = torch.stack([torch.stack([refs[i][p][q] for q in positions]) for i in range(2)])
        torch.testing.assert_close(fast, want, **TOL)
    assert model.forward_train(idx, tgt, s).loss.isfinite()


def test_refresh_is_not_vacuous():
    """At S < T the refresh changes the subset passes, it matches the reference's refresh, and a
    refresh that fed zero memory into the refreshed rows (a plausible bug) is caught."""
    for pathway in ("layerwise", "official"):
        m = model_of(pathway)
        idx = toks()
        s = StrategyConfig(name="interleaved", subsets=3, refresh_kv=True)
        with torch.no_grad():
            run = run_passes(m, idx, s)
            plain = run_passes(m, idx, dataclasses.replace(s, refresh_kv=False))
            good = [ref.interleaved(m, idx[i].tolist(), 3, refresh=True) for i in range(2)]
            bad = [
                ref.interleaved(m, idx[i].tolist(), 3, refresh=True, refresh_zero=True)
                for i in range(2)
            ]
        for p in range(1, 4):
            (piece,) = run.passes[p]
            fast = m.head(piece.hidden)
            pos = piece.positions.tolist()
            want = torch.stack([torch.stack([good[i][p][q] for q in pos]) for i in range(2)])
            wrong = torch.stack([torch.stack([bad[i][p][q] for q in pos]) for i in range(2)])
            torch.testing.assert_close(fast, want, **TOL)
            assert (fast - wrong).abs().max() > 1e-3, (pathway, p)
            assert (m.head(plain.passes[p][0].hidden) - fast).abs().max() > 1e-3, (pathway, p)


def test_zero_memory_keeps_parameters_and_drops_the_recurrence():
    m = model_of("official")
    z = LRT(dataclasses.replace(m.config, zero_memory=True))
    z.load_state_dict(m.state_dict())
    assert sum(p.numel() for p in z.parameters()) == sum(p.numel() for p in m.parameters())
    idx = toks()
    init = z.logits(idx, "init")
    torch.testing.assert_close(init, m.logits(idx, "init"), **TOL)
    for mode in ("merged", "refine", "sequential"):
        torch.testing.assert_close(z.logits(idx, mode), init, **TOL)
    assert (m.logits(idx, "sequential") - init).abs().max() > 1e-3


def test_config_errors_are_one_line_and_name_the_fix():
    base = {"vocab_size": 10, "n_embd": 32, "n_head": 4}
    cases = [
        ({"n_kv_head": 3}, "n_kv_head=3 must divide n_head=4"),
        ({"window_pattern": "SXL"}, "window_pattern='SXL' must be a non-empty string of S and L"),
        ({"ve_gate_channels": 64}, "ve_gate_channels=64 is outside"),
        ({"pad_vocab_size_to": 0}, "pad_vocab_size_to=0 must be >= 1"),
        ({"pathway": "official", "source_layer": 0}, 'pathway="official" reads the final layer'),
        ({"zero_memory": True}, "zero_memory=True needs a pathway"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")) as e:
            LRTConfig(**base, **kw)
        assert "\n" not in str(e.value)


def test_flex_equals_sdpa_with_windows_and_gqa():
    """The FlexAttention block masks (window + causal by original position, GQA) agree with the
    dense SDPA masks on every pass of an interleaved step and on chunked passes (CPU eager)."""
    from lrt.attention import set_attention_backend

    m = model_of("official")
    idx = toks()
    out = {}
    for backend in ("sdpa", "flex"):
        set_attention_backend(backend)
        try:
            with torch.no_grad():
                run = run_passes(m, idx, StrategyConfig(name="interleaved", subsets=3))
                chunk = m.logits(idx, "chunked", StrategyConfig(chunk_size=5))
            out[backend] = [m.head(p[0].hidden) for p in run.passes] + [chunk]
        finally:
            set_attention_backend("auto")
    for a, b in zip(out["sdpa"], out["flex"], strict=True):
        torch.testing.assert_close(a, b, **TOL)
