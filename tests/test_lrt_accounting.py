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


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pathway="none"),
        dict(pathway="shared"),
        dict(pathway="layerwise"),
        dict(pathway="layerwise", source_layer=1, residual_injection=False),
        dict(pathway="shared", kv_projection=False),
    ],
)
def test_param_counts_match_the_model(kwargs):
    cfg = LRTConfig(vocab_size=61, depth=3, seq_len=16, n_embd=64, n_head=2, **kwargs)
    model = build(cfg)
    counts = param_counts(model)
    by_prefix: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = name.split(".", 1)[0]
        by_prefix[key] = by_prefix.get(key, 0) + p.numel()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == by_prefix["wte"] == 61 * 64
    assert counts["lm_head"] == by_prefix["lm_head"] == 61 * 64
    assert counts["blocks"] == by_prefix["blocks"] == 3 * 12 * 64 * 64
    assert counts["pathway"] == by_prefix.get("pathway", 0)
    assert counts["other"] == 0
    assert counts["scalars"] == sum(p.numel() for p in model.parameters() if p.ndim <= 1)
    mats = sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.ndim == 2 and n.startswith(("blocks.", "pathway."))
    )
    assert counts["scaling_params"] == mats + counts["lm_head"]
    assert counts["non_embedding"] == counts["total"] - counts["embedding"]
    assert counts["pathway_frac_total"] == pytest.approx(counts["pathway"] / counts["total"])
    # a config gives the same counts (built on the meta device), and so do wrapped models
    assert param_counts(cfg) == counts
    assert param_counts(torch.compile(model)) == counts


def test_pathway_sizes_by_hand():
    c, h, n = 64, 2, 3
    base = dict(vocab_size=61, depth=n, seq_len=16, n_embd=c, n_head=h)
    shared = param_counts(LRTConfig(pathway="shared", **base))["pathway"]
    layerwise = param_counts(LRTConfig(pathway="layerwise", **base))["pathway"]
    # gamma (L) + gates (L x C x H) + Wk_m, Wv_m (C x C; once shared, per layer layerwise)
    assert shared == n + n * c * h + 2 * c * c
    assert layerwise == n + n * c * h + n * 2 * c * c


def test_paper_scale_pathway_overhead():
    """The paper's 20-layer size: depth 20 (n_embd 1280, 10 heads), vocab 65536, seq 2048."""
    dims = dict(vocab_size=65536, depth=20, seq_len=2048)
    shared = param_counts(LRTConfig(pathway="shared", **dims))
    layerwise = param_counts(LRTConfig(pathway="layerwise", **dims))
    base = param_counts(LRTConfig(**dims))
    print(
        f"\nd20 baseline: total {base['total']:,}, non-embedding {base['non_embedding']:,}, "
        f"scaling {base['scaling_params']:,}"
        f"\nshared pathway {shared['pathway']:,} = {100 * shared['pathway_frac_total']:.3f}% of the "
        f"LRT total, {100 * shared['pathway_frac_non_embedding']:.3f}% of non-embedding"
        f"\nlayerwise pathway {layerwise['pathway']:,} = {100 * layerwise['pathway_frac_total']:.3f}% "
        f"of total, {100 * layerwise['pathway_frac_non_embedding']:.3f}% of non-embedding"
    )
    assert shared["total"] - base["total"] == shared["pathway"] == 3_532_820
    assert shared["pathway_frac_total"] == pytest.approx(0.006258, abs=1e-6)
    assert shared["pathway_frac_non_embedding"] == pytest.approx(0.007350, abs=1e-6)
    # The paper's "~0.3%" counts nanochat's value embeddings (10 tables of vocab x n_embd at
    # d20) in the total, which this backbone does not have (docs/ACCOUNTING.md):
    with_value_embeds = shared["total"] + 10 * 65536 * 1280
    assert 0.002 < shared["pathway"] / with_value_embeds < 0.003


# -----------------------------------------------------------------------------
# FLOPs by hand

# Tiny config: V=10, L=2, C=8, H=2, D=4, T=6, MLP 4x.
#   backbone matmul weights per token: L * (4 + 8) * C^2 + C * V = 2 * 12 * 64 + 80 = 1616
#   shared pathway weights applied per pass: 2 * C^2 (once) + L * C * H (gates) = 128 + 32 = 160
#   attention per query and key, forward: 4 * L * H * D = 64
TINY = dict(vocab_size=10, depth=2, seq_len=6, n_embd=8, n_head=2)


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


def test_effective_compute_and_matched_tokens():
    base = LRTConfig(**TINY)
    lrt = LRTConfig(pathway="shared", **TINY)
    st = StrategyConfig("interleaved")
    assert effective_compute(lrt, st, 1000) == 1000 * 2 * 11808
    assert matched_tokens(base, lrt, st, 1000) == round(1000 * 2 * 11808 / 10848)
    assert matched_tokens(base, base, None, 1234) == 1234


def test_paper_scale_strategy_ratios():
    dims = dict(vocab_size=65536, depth=20, seq_len=2048)
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
]


@pytest.mark.parametrize(("pathway", "strategy"), CASES, ids=lambda x: getattr(x, "name", x))
def test_forward_flops_match_flop_counter(pathway, strategy):
    """Forward FLOPs equal FlopCounterMode's count of matmuls + attention exactly; training
    FLOPs (3 x forward, nanochat's convention) stay within a few % of the counted backward
    (which skips input grads of the zero memory and counts attention recompute)."""
    b, t = 2, (8 if strategy.name == "sequential" else 16)  # sequential: T passes, keep T small
    cfg = LRTConfig(vocab_size=50, depth=2, seq_len=t, n_embd=32, n_head=2, pathway=pathway)
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
