"""LRT backbone, config, attention kernels, decoding and generation (tiny CPU fp32 models).

The must-hold identities of the recurrence live in test_lrt_identities.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lrt_helpers import T, V, make_model, tokens

from lrt import LRT, LRTConfig, StrategyConfig
from lrt.attention import causal_attention, masked_attention, set_attention_backend
from lrt.decode import generate, new_state, prefill, sequential_forward

torch.set_num_threads(1)

# ---------------------------------------------------------------------------------------------
# Config


def test_config_nanochat_width_rule_and_overrides():
    cfg = LRTConfig(vocab_size=32768, depth=20)
    assert (cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.n_layer) == (1280, 10, 128, 20)
    assert LRTConfig(vocab_size=10, depth=3).n_embd == 256  # 192 rounded up to 256
    tiny = LRTConfig(vocab_size=V, depth=2, n_embd=64, n_head=4)
    assert (tiny.n_embd, tiny.n_head, tiny.head_dim) == (64, 4, 16)
    assert LRTConfig(**tiny.to_dict()) == tiny
    assert LRTConfig(vocab_size=V, depth=4, source_layer=-2).source_index == 2


@pytest.mark.parametrize(
    "kw",
    [
        {"n_embd": 64, "n_head": 3},
        {"pathway": "both"},
        {"source_layer": 3},
        {"depth": 0},
    ],
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        LRTConfig(vocab_size=V, **{"depth": 3, "n_embd": 64, "n_head": 2, **kw})


def test_strategy_config_rejects_unknown_name():
    with pytest.raises(ValueError):
        StrategyConfig(name="jacobi")


# ---------------------------------------------------------------------------------------------
# Parameters and init


def _names(model: LRT) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_parameter_layout_per_pathway():
    base, shared, layer = make_model("none"), make_model("shared"), make_model("layerwise")
    assert not any(n.startswith("pathway") for n in _names(base))
    backbone = _names(base)
    assert backbone <= _names(shared) and backbone <= _names(layer)
    assert {n for n in _names(shared) - backbone if "k_proj" in n} == {"pathway.k_proj.0.weight"}
    assert len([n for n in _names(layer) if "k_proj" in n]) == 3
    assert len([n for n in _names(layer) if "gates" in n]) == 3
    for model in (shared, layer):
        for name, p in model.named_parameters():
            if name.startswith(("blocks.", "pathway.k_proj", "pathway.v_proj", "pathway.gates")):
                assert p.dim() == 2, name
        assert model.pathway.gamma.shape == (3,)
    off = make_model("shared", residual_injection=False, kv_projection=False)
    assert not any(n.startswith("pathway") for n in _names(off))


def test_init_weights_nanochat_and_pathway_defaults():
    torch.manual_seed(0)
    model = LRT(LRTConfig(vocab_size=V, depth=2, n_embd=64, n_head=2, pathway="layerwise"))
    model.init_weights()
    for block in model.blocks:
        assert block.attn.c_proj.weight.abs().max() == 0
        assert block.mlp.c_proj.weight.abs().max() == 0
        assert block.attn.c_q.weight.abs().max() > 0
    assert model.lm_head.weight.std() < 0.01
    pw = model.pathway
    assert torch.equal(pw.gamma, torch.full((2,), 0.1))
    assert all(g.weight.abs().max() == 0 for g in pw.gates)  # gates 2*sigmoid(0) = 1
    assert pw.gate(torch.randn(1, 3, 64), 0).eq(1).all()
    assert all(p.weight.abs().max() > 0 for p in [*pw.k_proj, *pw.v_proj])
    ident = LRT(
        LRTConfig(vocab_size=V, depth=2, n_embd=64, n_head=2, pathway="shared", identity_init=True)
    )
    ident.init_weights()
    assert ident.pathway.gamma.abs().max() == 0
    assert ident.pathway.k_proj[0].weight.abs().max() == 0


def test_meta_device_build_matches_cpu_build():
    cfg = LRTConfig(vocab_size=V, depth=2, seq_len=T, n_embd=64, n_head=2, pathway="shared")
    with torch.device("meta"):
        meta = LRT(cfg)
    meta.to_empty(device="cpu")
    torch.manual_seed(3)
    meta.init_weights()
    torch.manual_seed(3)
    cpu = LRT(cfg)
    torch.manual_seed(3)
    cpu.init_weights()
    for (n1, p1), (_, p2) in zip(meta.named_parameters(), cpu.named_parameters(), strict=True):
        assert torch.equal(p1, p2), n1
    assert torch.equal(meta.cos, cpu.cos) and torch.equal(meta.sin, cpu.sin)
    idx = tokens()
    torch.testing.assert_close(meta.logits(idx), cpu.logits(idx), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Forward


def test_forward_shapes_softcap_and_memory_matters():
    model = make_model("layerwise")
    idx = tokens()
    out = model(idx, torch.zeros(2, T, 64))
    assert out.hidden.shape == out.source.shape == (2, T, 64)
    assert len(out.kv) == 3 and out.kv[0][0].shape == (2, 2, T, 32)
    logits = model.head(out.hidden)
    assert logits.shape == (2, T, V) and logits.dtype == torch.float32
    assert logits.abs().max() <= 15.0
    # memory=None means zeros; a non-zero memory changes the output
    torch.testing.assert_close(model(idx).hidden, out.hidden, rtol=0, atol=0)
    assert (model(idx, torch.randn(2, T, 64)).hidden - out.hidden).abs().max() > 1e-3


def test_source_layer_selects_block_output():
    model = make_model("shared", source_layer=1)
    out = model(tokens())
    assert (out.source - out.hidden).abs().max() > 1e-3  # layer 1 of 3 is not the final state
    final = make_model("shared")
    out = final(tokens())
    assert out.source is out.hidden


def test_targets_minus_one_ignored():
    model = make_model("layerwise")
    idx = tokens()
    targets = torch.full_like(idx, -1)
    targets[0, 5] = idx[0, 6]
    logits = model.logits(idx)
    expected = F.cross_entropy(logits[0, 5], targets[0, 5])
    out = model.forward_train(idx, targets)
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
    assert out.position_loss[targets == -1].abs().max() == 0
    losses = model.token_losses(idx, targets, "merged")
    assert losses[targets == -1].abs().max() == 0 and losses[0, 5] > 0


def test_loss_weights_validated():
    model = make_model("layerwise")
    with pytest.raises(ValueError, match="loss_weights"):
        model.forward_train(
            tokens(), tokens(), StrategyConfig(name="interleaved", loss_weights=(1, 1))
        )


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="mode"):
        make_model().token_losses(tokens(), tokens(), "jacobi")


def test_bf16_autocast_runs_every_strategy():
    model = make_model("layerwise")
    idx = tokens()
    for strat in [
        StrategyConfig(name="none"),
        StrategyConfig(name="interleaved", subsets=2, refresh_kv=True),
        StrategyConfig(name="multi_refine", refine_steps=1),
        StrategyConfig(name="chunked", chunk_size=8),
    ]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.forward_train(idx, idx, strat)
        out.loss.backward()
        assert torch.isfinite(out.loss), strat.name
        used = model.pathway.gamma.grad.abs().sum() > 0
        assert used == (strat.name != "none"), strat.name  # zero memory: no gradient to gamma
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert generate(model, idx[:, :3], 4, temperature=0.0).shape == (2, 7)


# ---------------------------------------------------------------------------------------------
# Attention kernels


def test_masked_attention_matches_causal_and_explicit_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 16) for _ in range(3))
    pos = torch.arange(8)
    torch.testing.assert_close(masked_attention(q, k, v, pos), causal_attention(q, k, v))
    sub = torch.tensor([1, 4, 6])
    out = masked_attention(q[:, :, sub], k, v, sub)
    for i, p in enumerate(sub.tolist()):
        w = torch.softmax(q[:, :, p : p + 1] @ k[:, :, : p + 1].transpose(-1, -2) / 4.0, dim=-1)
        torch.testing.assert_close(out[:, :, i], (w @ v[:, :, : p + 1]).squeeze(-2))


def test_flex_backend_matches_sdpa_on_cpu():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16)
    pos = torch.arange(1, 16, 2)
    try:
        set_attention_backend("sdpa")
        dense = masked_attention(q, k, v, pos)
        set_attention_backend("flex")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flex = masked_attention(q, k, v, pos, ("stride", 1, 2, 16))
    finally:
        set_attention_backend("auto")
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Decoding and generation


def test_sequential_forward_batched_equals_single():
    model = make_model("layerwise")
    idx = tokens(3)
    batched = sequential_forward(model, idx)
    for b in range(3):
        single = sequential_forward(model, idx[b : b + 1])[0]
        torch.testing.assert_close(batched[b], single, rtol=1e-4, atol=1e-4)


def test_generate_seeded_deterministic_and_greedy_is_argmax():
    model = make_model("layerwise")
    prompt = tokens(2, 4).tolist()
    a = generate(model, prompt, 8, temperature=1.0, seed=7)
    b = generate(model, prompt, 8, temperature=1.0, seed=7)
    assert torch.equal(a, b) and a.shape == (2, 12)
    assert torch.equal(a[:, :4], torch.tensor(prompt))
    c = generate(model, prompt, 8, temperature=1.0, seed=8)
    assert not torch.equal(a, c)
    greedy = generate(model, prompt, 8, temperature=0.0)
    argmax = sequential_forward(model, greedy).argmax(-1)  # (B, 12): prediction after each token
    assert torch.equal(greedy[:, 4:], argmax[:, 3:-1])
    assert torch.equal(generate(model, prompt, 8, top_k=1, seed=0), greedy)
    single = generate(model, prompt[0], 3, temperature=0.0)
    assert torch.equal(single, greedy[:1, :7])


def test_approximate_prefill_warns_and_is_exact_with_s_ge_t():
    model = make_model("layerwise")
    prompt = tokens(2, 6)
    exact_state = new_state(model, 2, 6)
    exact = prefill(model, exact_state, prompt)
    with pytest.warns(UserWarning, match="approximate"):
        approx = prefill(model, new_state(model, 2, 6), prompt, approximate=True, subsets=2)
    assert (approx - exact).abs().max() > 1e-4  # S=2 really is an approximation here
    state = new_state(model, 2, 6)
    full = prefill(model, state, prompt, approximate=True, subsets=6)
    torch.testing.assert_close(full, exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.memory, exact_state.memory, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        state.cache.k[2][:, :, :6], exact_state.cache.k[2], rtol=1e-5, atol=1e-5
    )
    with pytest.warns(UserWarning):
        out = generate(model, prompt, 3, temperature=0.0, approximate_prefill=True)
    assert out.shape == (2, 9)


def test_strategy_step_module_equals_forward_train():
    from lrt.strategies import StrategyStep

    model = make_model("shared")
    s = StrategyConfig(name="interleaved", subsets=2)
    step = StrategyStep(model, s)
    assert {n for n, _ in step.named_parameters()} == {
        f"model.{n}" for n, _ in model.named_parameters()
    }
    idx, targets = tokens(), tokens(seed=5)
    torch.testing.assert_close(step(idx, targets).loss, model.forward_train(idx, targets, s).loss)


def test_baseline_parallel_prefill_matches_sequential_decode():
    model = make_model("none")
    idx = tokens()
    torch.testing.assert_close(
        sequential_forward(model, idx), model.logits(idx), rtol=1e-5, atol=1e-5
    )
    greedy = generate(model, idx[:, :5], 6, temperature=0.0)
    assert torch.equal(greedy[:, 5:], model.logits(greedy).argmax(-1)[:, 4:-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_flex_matches_sdpa_with_gradients():
    model = make_model("layerwise").cuda()
    idx, targets = tokens().cuda(), tokens(seed=5).cuda()
    s = StrategyConfig(name="interleaved", subsets=2, refresh_kv=True)
    results = {}
    try:
        for backend in ("sdpa", "flex"):
            set_attention_backend(backend)
            model.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model.forward_train(idx, targets, s)
            out.loss.backward()
            results[backend] = (out.loss.detach(), model.pathway.gamma.grad.clone())
    finally:
        set_attention_backend("auto")
    torch.testing.assert_close(results["flex"][0], results["sdpa"][0], rtol=2e-2, atol=2e-2)
    g_flex, g_sdpa = results["flex"][1], results["sdpa"][1]
    assert (g_flex - g_sdpa).norm() <= 0.1 * g_sdpa.norm()  # bf16: same gradient up to rounding
    greedy = generate(model, idx[:, :4], 4, temperature=0.0)
    assert greedy.shape == (2, 8)


def test_token_losses_head_in_row_chunks_matches_full_logits():
    from lrt.strategies import token_losses

    model = make_model("layerwise")
    idx, targets = tokens(), tokens(seed=5)
    s = StrategyConfig(subsets=3)
    full = F.cross_entropy(
        model.logits(idx, "merged", s).flatten(0, 1), targets.flatten(), reduction="none"
    ).view(2, T)
    torch.testing.assert_close(token_losses(model, idx, targets, "merged", s, rows=3), full)
