"""Parameter and FLOP accounting (lrt/accounting.py) against real lrt models, hand counts and
torch's FlopCounterMode. CPU, fp32, tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lrt import LRTConfig, StrategyConfig
from lrt.accounting import (
    decode_flops_per_token,
    effective_compute,
    flop_breakdown,
    flops_per_token,
    matched_tokens,
    mfu,
    param_counts,
    peak_flops,
)

torch.set_num_threads(1)
model_mod = pytest.importorskip("lrt.model", reason="lrt.model not written yet")


def build(cfg: LRTConfig):
    torch.manual_seed(0)
    model = model_mod.LRT(cfg)
    model.init_weights()
    return model


# -----------------------------------------------------------------------------
# Parameters

CONFIGS = [
    dict(pathway="none"),
    dict(pathway="none", use_value_embeds=False, use_resid_lambdas=False, pad_vocab_size_to=1),
    dict(pathway="none", ve_every_layer=True, n_kv_head=1, ve_gate_channels=0),
    dict(pathway="shared"),
    dict(pathway="shared", n_kv_head=1, use_x0_residual=False),
    dict(pathway="shared", kv_projection=False),
    dict(pathway="layerwise"),
    dict(pathway="layerwise", source_layer=1, residual_injection=False, window_pattern="L"),
    dict(pathway="official"),
    dict(pathway="official", n_kv_head=1, ve_gate_channels=16, zero_memory=True),
    dict(pathway="official", depth=4, pad_vocab_size_to=128),
]


def _meta_model(cfg: LRTConfig):
    with torch.device("meta"):
        return model_mod.LRT(cfg)


@pytest.mark.parametrize(
    "kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
)
def test_param_counts_match_the_model(kwargs):
    """The analytic count of a config equals the instantiated model's tensors, part by part."""
    cfg = LRTConfig(**{**dict(vocab_size=61, depth=3, seq_len=16, n_embd=64, n_head=2), **kwargs})
    model = _meta_model(cfg)
    analytic, counted = param_counts(cfg), param_counts(model)
    assert analytic == counted
    by_prefix: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = name.split(".", 1)[0]
        by_prefix[key] = by_prefix.get(key, 0) + p.numel()
    assert analytic["total"] == sum(p.numel() for p in model.parameters())
    vp = -(-61 // cfg.pad_vocab_size_to) * cfg.pad_vocab_size_to
    assert analytic["embedding"] == by_prefix["wte"] == vp * 64
    assert analytic["lm_head"] == by_prefix["lm_head"] == vp * 64
    assert analytic["blocks"] == by_prefix["blocks"]
    assert analytic["value_embeds"] == by_prefix.get("value_embeds", 0)
    assert analytic["pathway"] == by_prefix.get("pathway", 0)
    assert analytic["lambdas"] == by_prefix.get("resid_lambdas", 0) + by_prefix.get("x0_lambdas", 0)
    assert analytic["other"] == 0
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    assert analytic["matmul"] == linear and analytic["tables"] == tables
    assert analytic["scalars"] == sum(p.numel() for p in model.parameters() if p.ndim <= 1)
    # scaling = the fork's transformer matrices + lm_head + feedback/pathway matrices
    mats = sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.ndim == 2 and n.startswith(("blocks.", "pathway.")) and "init_value_embeds" not in n
    )
    assert analytic["scaling_params"] == mats + analytic["lm_head"]
    assert analytic["non_embedding"] == analytic["total"] - tables
    assert analytic["pathway_frac_total"] == pytest.approx(analytic["pathway"] / analytic["total"])
    assert param_counts(torch.compile(model)) == counted  # wrappers are looked through


def test_param_counts_by_hand():
    """V=10 padded to 16, L=2, C=8, H=2, Hkv=1 (D=4, Ckv=4), MLP 4x, gate channels 4."""
    tw = dict(
        vocab_size=10,
        depth=2,
        seq_len=8,
        n_embd=8,
        n_head=2,
        n_kv_head=1,
        window_pattern="SL",
        pad_vocab_size_to=16,
        ve_gate_channels=4,
    )
    base = param_counts(LRTConfig(**tw))
    # per layer q, proj 64 each; k, v 8x4 each; MLP 2 x 4 x 64 -> 704; ve gate (layer 1) 4 x 1
    assert base["blocks"] == 2 * 704 + 4
    assert base["value_embeds"] == 16 * 4  # one table (layer 1: alternating, last included)
    assert base["total"] == 128 + 128 + 1412 + 64 + 4 == 1736
    off = param_counts(LRTConfig(pathway="official", **tw))
    # triple gates 2 x (4 x 3); no value embeddings; gamma 2 + Wk_m, Wv_m 2 x 2 x (8 x 4)
    # + init value embeddings 2 x 16 x 4
    assert off["blocks"] == 2 * 704 + 24 and off["value_embeds"] == 0
    assert off["pathway"] == 2 + 128 + 128
    assert off["total"] == 1950
    shared = param_counts(LRTConfig(pathway="shared", **tw))
    # gamma 2 + our gates 2 x (8 x Hkv=1) + Wk_m, Wv_m once (2 x 8 x 4)
    assert shared["pathway"] == 2 + 16 + 64
    layerwise = param_counts(LRTConfig(pathway="layerwise", **tw))
    assert layerwise["pathway"] == 2 + 16 + 128


@pytest.mark.parametrize(
    ("depth", "baseline", "official"),
    [(12, 286.3, 451.4), (20, 896.5, 1381.5), (24, 1384.1, 2101.4)],
)
def test_fork_parameter_counts(depth, baseline, official):
    """The fork's own counts (docs REFERENCES: meta device, vocab 32768, seq 2048), in M."""
    dims = dict(vocab_size=32768, depth=depth, seq_len=2048)
    assert round(param_counts(LRTConfig(**dims))["total"] / 1e6, 1) == baseline
    assert round(param_counts(LRTConfig(pathway="official", **dims))["total"] / 1e6, 1) == official


def test_paper_scale_pathway_overhead():
    """d20, vocab 32768: our single-gate pathway adds ~0.4% (shared) of the baseline's
    parameters; the authors' arm ~54%, most of it init value-embedding tables."""
    dims = dict(vocab_size=32768, depth=20, seq_len=2048)
    base = param_counts(LRTConfig(**dims))
    shared = param_counts(LRTConfig(pathway="shared", **dims))
    official = param_counts(LRTConfig(pathway="official", **dims))
    # gamma 20 + gates 20 x 1280 x 10 + Wk_m, Wv_m 2 x 1280 x 1280
    assert shared["total"] - base["total"] == shared["pathway"] == 20 + 256_000 + 3_276_800
    assert 0.003 < shared["pathway"] / base["total"] < 0.005
    assert 0.5 < official["total"] / base["total"] - 1 < 0.6
    init_ve = 20 * 32768 * 1280
    assert official["tables"] - base["tables"] == init_ve - base["value_embeds"]


# -----------------------------------------------------------------------------
# FLOPs by hand

# Tiny config: V=10, L=2, C=8, H=2, D=4, T=6, MLP 4x.
#   backbone matmul weights per token: L * (4 + 8) * C^2 + C * V = 2 * 12 * 64 + 80 = 1616
#   shared pathway weights applied per pass: 2 * C^2 (once) + L * C * H (gates) = 128 + 32 = 160
#   attention per query and key, forward: 4 * L * H * D = 64
# (no windows, value embeddings or vocab padding: the pre-nanochat backbone's arithmetic)
TINY = dict(
    vocab_size=10,
    depth=2,
    seq_len=6,
    n_embd=8,
    n_head=2,
    window_pattern="L",
    use_value_embeds=False,
    pad_vocab_size_to=1,
    ve_gate_channels=0,
)


def test_flops_by_hand():
    base = LRTConfig(**TINY)
    lrt = LRTConfig(pathway="shared", **TINY)
    lw = LRTConfig(pathway="layerwise", **TINY)
    # nanochat: 6 * 1616 + 12 * L * H * D * T = 9696 + 1152
    assert flops_per_token(base) == 9696 + 1152 == 10848
    assert flops_per_token(base, training=False) == 2 * 1616 + 64 * 6
    # LRT, zero memory still runs the pathway: 6 * (1616 + 160) + 1152
    assert flops_per_token(lrt, "none") == 11808
    # layerwise pathway: 2 * C^2 per layer + gates = 256 + 32 = 288
    assert flops_per_token(lw, "none") == 6 * (1616 + 288) + 1152
    # interleaved S=2: two full passes of matmul, queries of both charged T keys
    assert flops_per_token(lrt, StrategyConfig("interleaved", subsets=2)) == 2 * 11808
    # + refresh_kv: S refreshes of the memory K/V projections (2 * 128 FLOPs fwd each), x3
    assert (
        flops_per_token(lrt, StrategyConfig("interleaved", refresh_kv=True))
        == 2 * 11808 + 3 * 2 * 256
    )
    # multi_refine K=3: 4 full passes
    assert flops_per_token(lrt, StrategyConfig("multi_refine", refine_steps=3)) == 4 * 11808
    # chunked C=4, T=6: first chunk 4 queries x 4 keys, second 2 queries x 6 (buffer) keys
    attn = 3 * 64 * (4 * 4 + 2 * 6) / 6
    assert flops_per_token(lrt, StrategyConfig("chunked", chunk_size=4)) == pytest.approx(
        10656 + attn
    )
    # sequential: first token 1 key, the other 5 the 6-row buffer
    attn = 3 * 64 * (1 + 5 * 6) / 6
    assert flops_per_token(lrt, "sequential") == pytest.approx(10656 + attn)
    # causal counting: (T + 1) / 2 keys per query on average, for every pass
    assert flops_per_token(base, causal=True) == 9696 + 3 * 64 * 3.5
    assert flops_per_token(lrt, "interleaved", causal=True) == 2 * (10656 + 3 * 64 * 3.5)
    # decoding one token against a cache of 5 keys
    assert decode_flops_per_token(base, context=5) == 2 * 1616 + 64 * 5
    assert decode_flops_per_token(lrt, context=5) == 2 * (1616 + 160) + 64 * 5


# Windowed: V=10 padded to 16, L=2, C=8, H=2, Hkv=1, T=8, pattern "SL" (windows 4, 8),
# value embedding on layer 1 with gate channels 4.
#   matmul weights: 2 x 704 (blocks) + 4 (ve gate) + 16 x 8 (padded head) = 1540
#   attention per query and key, one layer, forward: 4 x H x D = 32; keys min(4, 8) + 8 = 12
TW = dict(
    vocab_size=10,
    depth=2,
    seq_len=8,
    n_embd=8,
    n_head=2,
    n_kv_head=1,
    window_pattern="SL",
    pad_vocab_size_to=16,
    ve_gate_channels=4,
)


def test_flops_by_hand_with_windows_gqa_and_value_embeddings():
    base = LRTConfig(**TW)
    assert flops_per_token(base) == 6 * 1540 + 3 * 32 * 12 == 10392
    # causal: layer 0 (window 4): keys 1,2,3,4,5,5,5,5 -> 3.75 per query; layer 1: 4.5
    assert flops_per_token(base, causal=True) == 6 * 1540 + 3 * 32 * (3.75 + 4.5)
    # official arm: triple gates 24 instead of the ve gate 4, Wk_m, Wv_m 128 -> 1688 per pass
    off = LRTConfig(pathway="official", **TW)
    assert flops_per_token(off, "none") == 6 * 1688 + 3 * 32 * 12
    b = flop_breakdown(off, StrategyConfig("interleaved", subsets=2, refresh_kv=True))
    assert b.pathway == 2 * 2 * (24 + 128) and b.backbone == 2 * 2 * (1688 - 152)
    assert b.refresh == 2 * 2 * 128 and b.attention == 2 * 32 * 12
    # chunked C=2: first chunk 2 queries x min(w, 2) keys, the other 6 the 8-row buffer
    attn = 32 * (2 * (2 + 2) + 6 * (4 + 8)) / 8
    assert flop_breakdown(off, StrategyConfig("chunked", chunk_size=2)).attention == attn
    # decoding at context 6: min(6, 4) + min(6, 8) keys
    assert decode_flops_per_token(base, context=6) == 2 * 1540 + 32 * 10


def _nanochat_windows(pattern: str, depth: int, t: int) -> list[int]:
    """nanochat's _compute_window_sizes: pattern tiled, L = T, S = T // 2, last layer L."""
    sizes = [t if pattern[i % len(pattern)] == "L" else t // 2 for i in range(depth)]
    return sizes[:-1] + [t]


@pytest.mark.parametrize(
    "kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
)
def test_one_pass_flops_are_nanochats_estimate(kwargs):
    """nanochat's estimate_flops on the instantiated model: 6 x (every nn.Linear weight) +
    sum over layers of 12 H D min(window, T)."""
    dims = dict(vocab_size=61, depth=3, seq_len=16, n_embd=64, n_head=2, window_pattern="SLS")
    cfg = LRTConfig(**{**dims, **kwargs})
    model = _meta_model(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    windows = _nanochat_windows(cfg.window_pattern, cfg.depth, 16)
    attn = sum(12 * 2 * 32 * min(w, 16) for w in windows)
    assert flops_per_token(cfg, "none") == 6 * linear + attn


def test_effective_compute_and_matched_tokens():
    base = LRTConfig(**TINY)
    lrt = LRTConfig(pathway="shared", **TINY)
    st = StrategyConfig("interleaved")
    assert effective_compute(lrt, st, 1000) == 1000 * 2 * 11808
    assert matched_tokens(base, lrt, st, 1000) == round(1000 * 2 * 11808 / 10848)
    assert matched_tokens(base, base, None, 1234) == 1234


def test_paper_scale_strategy_ratios():
    dims = dict(vocab_size=32768, depth=20, seq_len=2048)
    base, lrt = LRTConfig(**dims), LRTConfig(pathway="shared", **dims)
    ratio = {
        s: flops_per_token(lrt, StrategyConfig(s)) / flops_per_token(base)
        for s in ("none", "interleaved", "multi_refine", "chunked")
    }
    print(
        "\nd20 training FLOPs per token relative to the baseline:",
        {k: round(v, 4) for k, v in ratio.items()},
    )
    assert 1.0 < ratio["none"] < 1.01  # the pathway costs < 1 %
    assert 2.0 < ratio["interleaved"] < 2.02  # "roughly 2x baseline compute" (paper)
    assert ratio["multi_refine"] == pytest.approx(ratio["interleaved"])  # K=1: 2 full passes


def test_mfu_and_peaks():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert math.isinf(peak_flops("cpu"))
    assert mfu(1e9, 1000, 1e13) == pytest.approx(0.1)
    assert mfu(1e9, 1000, math.inf) == 0.0


# -----------------------------------------------------------------------------
# Against torch's FlopCounterMode: what the implementation actually executes


CASES = [
    ("none", StrategyConfig("none")),
    ("shared", StrategyConfig("none")),
    ("shared", StrategyConfig("interleaved", subsets=2)),
    ("layerwise", StrategyConfig("interleaved", subsets=3, refresh_kv=True)),
    ("shared", StrategyConfig("multi_refine", refine_steps=2)),
    ("layerwise", StrategyConfig("chunked", chunk_size=4)),
    ("shared", StrategyConfig("sequential")),
    ("official", StrategyConfig("none")),
    ("official", StrategyConfig("interleaved", subsets=2, refresh_kv=True)),
    ("official", StrategyConfig("chunked", chunk_size=4)),
]


@pytest.mark.parametrize(("pathway", "strategy"), CASES, ids=lambda x: getattr(x, "name", x))
def test_forward_flops_match_flop_counter(pathway, strategy):
    """Forward FLOPs equal FlopCounterMode's count of matmuls + attention exactly; training
    FLOPs (3 x forward, nanochat's convention) stay within a few % of the counted backward
    (which skips input grads of the zero memory and counts attention recompute). GQA, value
    embeddings and the padded head on; windows off ("L"): the counter charges a masked
    attention call its full size, the accounting (nanochat's convention) only the window."""
    b, t = 2, (8 if strategy.name == "sequential" else 16)  # sequential: T passes, keep T small
    cfg = LRTConfig(
        vocab_size=50,
        depth=2,
        seq_len=t,
        n_embd=32,
        n_head=2,
        n_kv_head=1,
        window_pattern="L",
        pathway=pathway,
    )
    model = build(cfg)
    g = torch.Generator().manual_seed(0)
    idx, tgt = torch.randint(0, 50, (b, t), generator=g), torch.randint(0, 50, (b, t), generator=g)
    with FlopCounterMode(display=False) as fwd:
        out = model.forward_train(idx, tgt, strategy)
    assert fwd.get_total_flops() / (b * t) == pytest.approx(
        flop_breakdown(cfg, strategy).forward, rel=1e-9
    )
    with FlopCounterMode(display=False) as both:
        model.forward_train(idx, tgt, strategy).loss.backward()
    counted = both.get_total_flops() / (b * t)
    assert counted == pytest.approx(flops_per_token(cfg, strategy), rel=0.03)
    assert out.loss.isfinite()


# -----------------------------------------------------------------------------
# The step benchmark (pipeline/benchmarks/step.py) on a tiny CPU config


@pytest.mark.parametrize("interleave", [True, False])
def test_step_benchmark_smoke(tmp_path, interleave):
    import json

    from pipeline.benchmarks.step import main

    out = tmp_path / "step.json"
    argv = "--depth 1 --n-embd 32 --n-head 2 --vocab-size 64 --seq-len 16 --batch-size 2 --steps 1"
    argv += " --warmup 0 --decode-tokens 2 --decode-batches 1 --decode-rounds 1 --device cpu"
    argv += " --decode-modes eager static"
    argv += " --interleave" if interleave else " --no-interleave"
    result = main([*argv.split(), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["errors"] == {}
    runs = {"baseline", "interleaved:2", "multi_refine:1", "chunked:64"}
    assert set(result["train"]) == (runs if interleave else runs | {"baseline_again"})
    assert result["train"]["interleaved:2"]["rel_flops"] > 1.9
    assert result["decode"]["batch_1"]["lrt_rel_throughput"] > 0
    assert result["decode"]["static/batch_1"]["lrt"]["mode"] == "static"


def test_ops_benchmark_counts_what_the_pathway_adds():
    """pipeline.benchmarks.ops on a tiny model: the LRT runs more operators than the baseline
    in every decoder and pass; interleaved S=2 (3 passes) more than multi_refine K=1 (2)."""
    from pipeline.benchmarks.ops import format_table, run

    res = run(depth=2, n_embd=32, n_head=2, seq_len=8)
    for row in res["decode"].values():
        assert row["lrt"] > row["baseline"] > 0
    train = res["train"]
    assert train["interleaved:2"]["ops"] > train["multi_refine:1"]["ops"] > train["baseline"]["ops"]
    assert "static" in format_table(res)
