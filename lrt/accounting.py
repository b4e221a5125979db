"""Parameter and FLOP accounting for LRT models and training strategies (see docs/ACCOUNTING.md).

Run `python -m lrt.accounting` for the table in docs/ACCOUNTING.md (d12/d20/d24, vocab 32768).

Parameters are counted analytically from an `LRTConfig` (`param_counts(cfg)`; the tests check
it against instantiated models), or from a model's own tensors (`param_counts(model)`).

FLOPs follow nanochat's `estimate_flops`: a matmul weight (every `nn.Linear`: attention, MLP,
LM head with its padded rows, value-embedding / triple / pathway gates, memory K/V projections)
costs 2 FLOPs per token forward and 4 backward (6 for training); embedding tables (token,
value and init value embeddings), norms, softmax and elementwise ops are free. Attention adds,
per layer and query, 4*H*D FLOPs per key forward (QK^T and AV; H query heads, so GQA does not
change it), times 3 for training, where layer l is charged min(window_l, keys of the call)
keys (nanochat's `12*H*Q*min(window, T)`; window_l = seq_len for "L", seq_len // 2 for "S").
On top, every strategy is counted as this implementation executes it (lrt/strategies.py):

- a pass with a pathway always runs it, zero memory included: our gates (L x C x Hkv) and
  memory K/V projections (shared: 2 C x Ckv once per pass; layerwise/official: per layer), or
  the official arm's triple gates (L x 3 Hkv x ve_gate_channels);
- each query is charged the keys of the attention call it is in: a plain pass over T
  positions T keys, a buffer pass (interleaved subset, chunk) T keys (the buffer is T rows),
  each capped by the layer's window. `causal=True` instead charges only the keys a query may
  see (min(t, window) + 1), the useful work;
- the LM head runs on every supervised pass (every pass of every strategy here).

Per token of training data (T positions per sequence), forward:

    none            1 pass
    interleaved S   2 passes (init + S subsets of T/S positions) [+ S refreshes of the memory K/V]
    multi_refine K  K+1 passes
    chunked C       1 pass (matmul); attention: first chunk C keys, later chunks T keys
    sequential      chunked with C = 1

Training FLOPs = 3 x forward. "Effective compute" = training FLOPs x tokens.

Example:
    >>> from lrt.config import LRTConfig, StrategyConfig
    >>> cfg = LRTConfig(vocab_size=32768, depth=20, seq_len=2048, pathway="shared")
    >>> base = LRTConfig(vocab_size=32768, depth=20, seq_len=2048)
    >>> round(flops_per_token(cfg, StrategyConfig("interleaved")) / flops_per_token(base), 3)
    2.014
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from typing import Any

from lrt.config import LRTConfig, StrategyConfig

__all__ = [
    "PEAK_FLOPS",
    "FlopBreakdown",
    "accounting_table",
    "decode_flops_per_token",
    "effective_compute",
    "flop_breakdown",
    "flops_per_token",
    "matched_tokens",
    "mfu",
    "param_counts",
    "peak_flops",
]

# Dense bf16 tensor-core peak (no sparsity), FLOP/s. H200 is the H100 die with more/faster HBM.
PEAK_FLOPS: dict[str, float] = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}

# The partition of `total` that `param_counts` reports, in this order.
PARTS = ("embedding", "value_embeds", "lm_head", "blocks", "lambdas", "pathway", "other")


# ---------------------------------------------------------------------------------------------
# Parameters


def param_counts(model_or_cfg: Any) -> dict[str, float]:
    """Parameter counts of an `LRT` model, or (analytically) of the model an `LRTConfig` builds.

    Keys (ints unless noted):
        total; its partition by where a tensor lives: embedding (wte), value_embeds (the
            backbone's value-embedding tables), lm_head, blocks (attention + MLP + the
            value-embedding and official triple gates inside attention), lambdas
            (resid_lambdas + x0_lambdas), pathway (everything under `model.pathway`: gamma,
            our gates, memory/feedback K/V projections, the official init value embeddings),
            other (anything else; 0 for lrt models);
        tables: every embedding table (wte + value_embeds + init value embeddings);
        matmul: every nn.Linear weight (nanochat's `num_matmul_params`; the head's padded rows
            included);
        pathway_matrices (2-D pathway weights other than tables: memory K/V projections and
            our gates), scalars (every 0-/1-D parameter), non_embedding (total - tables),
        scaling_params: block matrices + lm_head + pathway matrices: nanochat's
            `transformer_matrices + lm_head` extended as the authors' fork does (it adds its
            feedback matrices); tables and scalars excluded;
        pathway_frac_total (float): pathway / total,
        pathway_frac_non_embedding (float): (pathway - init value embeddings) / non_embedding.

    Example:
        >>> from lrt.config import LRTConfig
        >>> c = param_counts(LRTConfig(vocab_size=32768, depth=12, seq_len=2048))
        >>> c["total"], c["value_embeds"]
        (286262424, 150994944)
    """
    if isinstance(model_or_cfg, LRTConfig):
        return _analytic_counts(model_or_cfg)
    return _model_counts(_as_model(model_or_cfg))


def _finish(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts[k] for k in PARTS)
    out: dict[str, float] = {"total": total, **{k: counts[k] for k in PARTS}}
    for k in ("tables", "matmul", "pathway_matrices", "scalars"):
        out[k] = counts[k]
    out["non_embedding"] = total - counts["tables"]
    out["scaling_params"] = (
        counts["block_matrices"] + counts["lm_head"] + counts["pathway_matrices"]
    )
    out["pathway_frac_total"] = counts["pathway"] / total
    pathway_non_table = counts["pathway"] - counts["pathway_tables"]
    out["pathway_frac_non_embedding"] = pathway_non_table / out["non_embedding"]
    return out


def _analytic_counts(cfg: LRTConfig) -> dict[str, float]:
    c, n, vp, ckv, hkv = cfg.n_embd, cfg.n_layer, cfg.padded_vocab_size, cfg.kv_dim, cfg.n_kv_head
    g = cfg.gate_channels
    official = cfg.pathway == "official"
    attn_mlp = 2 * c * c + 2 * c * ckv + 2 * cfg.mlp_ratio * c * c  # q, proj; k, v; fc, proj
    ve_layers = sum(cfg.has_ve(i) for i in range(n))
    block_gates = ve_layers * g * hkv + (n * g * 3 * hkv if official else 0)
    blocks = n * attn_mlp + block_gates
    gamma = n if cfg.has_pathway and cfg.residual_injection else 0
    kv = our_gates = 0
    if cfg.has_pathway and cfg.kv_projection:
        kv = (1 if cfg.pathway == "shared" else n) * 2 * c * ckv
        our_gates = 0 if official else n * c * hkv
    init_ve = n * vp * ckv if official else 0
    lambdas = n * (int(cfg.use_resid_lambdas) + int(cfg.use_x0_residual))
    counts = dict(
        embedding=vp * c,
        value_embeds=ve_layers * vp * ckv,
        lm_head=vp * c,
        blocks=blocks,
        lambdas=lambdas,
        pathway=gamma + kv + our_gates + init_ve,
        other=0,
        tables=vp * c + ve_layers * vp * ckv + init_ve,
        pathway_tables=init_ve,
        matmul=blocks + vp * c + kv + our_gates,
        pathway_matrices=kv + our_gates,
        scalars=lambdas + gamma,
        block_matrices=blocks,
    )
    return _finish(counts)


def _model_counts(model: Any) -> dict[str, float]:
    import torch.nn as nn

    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    table_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    counts = dict.fromkeys(
        (
            *PARTS,
            "tables",
            "pathway_tables",
            "matmul",
            "pathway_matrices",
            "scalars",
            "block_matrices",
        ),
        0,
    )
    top_key = {
        "wte": "embedding",
        "value_embeds": "value_embeds",
        "lm_head": "lm_head",
        "blocks": "blocks",
        "resid_lambdas": "lambdas",
        "x0_lambdas": "lambdas",
        "pathway": "pathway",
    }
    for name, p in model.named_parameters():  # shared parameters once
        n = p.numel()
        key = top_key.get(name.split(".", 1)[0], "other")
        counts[key] += n
        if id(p) in table_ids:
            counts["tables"] += n
            if key == "pathway":
                counts["pathway_tables"] += n
        if id(p) in linear_ids:
            counts["matmul"] += n
        if p.ndim <= 1:
            counts["scalars"] += n
        elif id(p) not in table_ids and key == "pathway":
            counts["pathway_matrices"] += n
        elif id(p) not in table_ids and key == "blocks":
            counts["block_matrices"] += n
    return _finish(counts)


def _as_model(model_or_cfg: Any):
    if isinstance(model_or_cfg, LRTConfig):
        import torch

        from lrt.model import LRT

        with torch.device("meta"):
            return LRT(model_or_cfg)
    from lrt.optim import unwrap_model

    return unwrap_model(model_or_cfg)


def _config(model_or_cfg: Any) -> LRTConfig:
    if isinstance(model_or_cfg, LRTConfig):
        return model_or_cfg
    cfg = getattr(_as_model(model_or_cfg), "config", None)
    if not isinstance(cfg, LRTConfig):
        raise TypeError(f"expected an LRTConfig or an LRT model, got {type(model_or_cfg).__name__}")
    return cfg


# ---------------------------------------------------------------------------------------------
# FLOPs


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs per training token of one strategy, by kind (training = 3 x `forward`).

    passes: pass-equivalents of matmul work (positions processed / T); backbone: block matrices
    (value-embedding gates included) + LM head; pathway: our gates or the official triple
    gates + memory K/V projections; refresh: interleaved `refresh_kv` re-projections;
    attention: QK^T + AV.
    """

    passes: float
    backbone: float
    pathway: float
    refresh: float
    attention: float

    @property
    def forward(self) -> float:
        return self.backbone + self.pathway + self.refresh + self.attention

    @property
    def training(self) -> float:
        return 3.0 * self.forward


def _matmul_params(cfg: LRTConfig) -> tuple[int, int, int]:
    """(backbone, pathway-applied, memory-K/V-projection) weights one token multiplies per pass."""
    counts = _analytic_counts(cfg)
    kv = 0
    if cfg.has_pathway and cfg.kv_projection:
        kv = (1 if cfg.pathway == "shared" else cfg.n_layer) * 2 * cfg.n_embd * cfg.kv_dim
    triple = cfg.n_layer * cfg.gate_channels * 3 * cfg.n_kv_head if cfg.pathway == "official" else 0
    backbone = int(counts["matmul"]) - int(counts["pathway_matrices"]) - triple
    pathway = int(counts["pathway_matrices"]) + triple
    return backbone, pathway, kv


def _as_strategy(strategy: StrategyConfig | str | None) -> StrategyConfig:
    if strategy is None:
        return StrategyConfig()
    if isinstance(strategy, str):
        return StrategyConfig(name=strategy)
    return strategy


def _keys(window: int, n_keys: int) -> float:
    """Keys charged per query of a call over `n_keys` keys (nanochat: min(window, keys))."""
    return float(min(window, n_keys))


def _causal_keys(window: int, t: int) -> float:
    """Mean keys a query at positions 0..t-1 may see: min(p, window) + 1."""
    if window >= t - 1:
        return (t + 1) / 2
    w = window
    return (w * (w + 1) / 2 + (t - w) * (w + 1)) / t


def flop_breakdown(
    cfg: LRTConfig | Any,
    strategy: StrategyConfig | str | None = None,
    *,
    seq_len: int | None = None,
    causal: bool = False,
) -> FlopBreakdown:
    """Forward FLOPs per training token of `strategy` on `cfg`, split by kind.

    Args:
        cfg: Model config (or an LRT model).
        strategy: StrategyConfig, a strategy name, or None (= "none").
        seq_len: Sequence length T (default cfg.seq_len; the windows stay cfg's).
        causal: Charge each query only the keys at or before it within its window (useful
            work) instead of the keys of its attention call (nanochat convention, the default).
    """
    cfg = _config(cfg)
    st = _as_strategy(strategy)
    t = seq_len or cfg.seq_len
    backbone, pathway, kv = _matmul_params(cfg)
    per_key = 4 * cfg.n_head * cfg.head_dim  # one layer, per query and key, forward
    windows = cfg.window_sizes

    def full(n_keys: int) -> float:  # summed over layers, one query of a call over n_keys keys
        if causal:
            return sum(_causal_keys(w, t) for w in windows) * per_key
        return sum(_keys(w, n_keys) for w in windows) * per_key

    refresh = 0.0
    name = st.name
    if name == "none":
        passes, attn = 1.0, full(t)
    elif name == "interleaved":
        passes, attn = 2.0, 2 * full(t)
        if st.refresh_kv and kv:
            refresh = min(st.subsets, t) * 2.0 * kv  # empty subsets are skipped
    elif name == "multi_refine":
        passes = float(st.refine_steps + 1)
        attn = passes * full(t)
    elif name in ("chunked", "sequential"):
        c0 = min(1 if name == "sequential" else st.chunk_size, t)
        passes = 1.0
        # first chunk: a plain causal pass over c0 positions; later chunks attend to the T-row buffer
        attn = full(t) if causal else (c0 * full(c0) + (t - c0) * full(t)) / t
    else:
        raise ValueError(f"unknown strategy {name!r}")
    return FlopBreakdown(
        passes=passes,
        backbone=passes * 2.0 * backbone,
        pathway=passes * 2.0 * pathway,
        refresh=refresh,
        attention=attn,
    )


def flops_per_token(
    cfg: LRTConfig | Any,
    strategy: StrategyConfig | str | None = None,
    *,
    training: bool = True,
    seq_len: int | None = None,
    causal: bool = False,
) -> float:
    """FLOPs per token of training data (forward + backward; forward only with training=False).

    For any model with `strategy=None` this is nanochat's `estimate_flops`:
    `6 * (nn.Linear weights) + sum over layers of 12 * H * D * min(window_l, T)`.

    Example:
        >>> from lrt.config import LRTConfig
        >>> cfg = LRTConfig(vocab_size=100, depth=1, seq_len=8, n_embd=8, n_head=1,
        ...                 use_value_embeds=False, pad_vocab_size_to=1, window_pattern="L",
        ...                 ve_gate_channels=0)
        >>> flops_per_token(cfg) == 6 * (12 * 8 * 8 + 8 * 100) + 12 * 1 * 1 * 8 * 8
        True
    """
    b = flop_breakdown(cfg, strategy, seq_len=seq_len, causal=causal)
    return b.training if training else b.forward


def decode_flops_per_token(cfg: LRTConfig | Any, context: int | None = None) -> float:
    """Forward FLOPs to decode one token with a KV cache holding `context` keys (incl. itself).

    One pass over one position: backbone + pathway matmuls (an LRT decodes with its memory, so
    it pays the gates and memory K/V projections) + attention over min(context, window_l)
    keys per layer (nanochat's `estimate_decode_flops`; default context cfg.seq_len).
    """
    cfg = _config(cfg)
    backbone, pathway, _ = _matmul_params(cfg)
    ctx = cfg.seq_len if context is None else context
    attn = sum(min(ctx, w) for w in cfg.window_sizes) * 4.0 * cfg.n_head * cfg.head_dim
    return 2.0 * (backbone + pathway) + attn


def effective_compute(
    cfg: LRTConfig | Any, strategy: StrategyConfig | str | None, tokens: float, **kwargs: Any
) -> float:
    """Total training FLOPs of `tokens` training tokens under `strategy` ("effective compute")."""
    return flops_per_token(cfg, strategy, **kwargs) * tokens


def matched_tokens(
    cfg_base: LRTConfig | Any,
    cfg_lrt: LRTConfig | Any,
    strategy: StrategyConfig | str | None,
    tokens_lrt: float,
    **kwargs: Any,
) -> int:
    """Baseline training tokens with the same effective compute as `tokens_lrt` LRT tokens.

    Example (interleaved S=2 at the paper's 20-layer size costs ~2x the baseline per token):
        >>> from lrt.config import LRTConfig
        >>> base = LRTConfig(vocab_size=32768, depth=20, seq_len=2048)
        >>> lrt = LRTConfig(vocab_size=32768, depth=20, seq_len=2048, pathway="shared")
        >>> matched_tokens(base, lrt, "interleaved", 1_000_000)
        2014111
    """
    compute = effective_compute(cfg_lrt, strategy, tokens_lrt, **kwargs)
    return int(round(compute / flops_per_token(cfg_base, None, **kwargs)))


# ---------------------------------------------------------------------------------------------
# The table in docs/ACCOUNTING.md

VARIANTS = {
    "baseline": dict(pathway="none"),
    "baseline, ve_every_layer": dict(pathway="none", ve_every_layer=True),
    "shared": dict(pathway="shared"),
    "layerwise": dict(pathway="layerwise"),
    "official (authors' arm)": dict(pathway="official"),
}


def accounting_table(
    depths: tuple[int, ...] = (12, 20, 24), vocab_size: int = 32768, seq_len: int = 2048
) -> str:
    """Markdown table: per depth and variant, parameters, scaling parameters and training
    FLOPs/token (one pass, and interleaved S=2 for the pathways), each with its overhead over
    the baseline of that depth (nanochat's defaults otherwise: SSSL windows, value embeddings,
    lambdas, vocab padded to 64)."""
    rows = [
        "| depth | variant | params | vs baseline | scaling params | vs baseline | "
        "FLOPs/token, 1 pass | vs baseline | FLOPs/token, interleaved S=2 | vs baseline 1 pass |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for depth in depths:
        base_cfg = LRTConfig(vocab_size=vocab_size, depth=depth, seq_len=seq_len)
        base = param_counts(base_cfg)
        base_f = flops_per_token(base_cfg)
        for label, kw in VARIANTS.items():
            cfg = replace(base_cfg, **kw)
            c = param_counts(cfg)
            f1 = flops_per_token(cfg)
            inter = (
                f"{flops_per_token(cfg, StrategyConfig('interleaved', subsets=2)) / 1e9:.3f} G | "
                f"{flops_per_token(cfg, StrategyConfig('interleaved', subsets=2)) / base_f:.3f}x"
                if cfg.has_pathway
                else "- | -"
            )
            rows.append(
                f"| d{depth} | {label} | {c['total'] / 1e6:,.1f}M | "
                f"{100 * (c['total'] / base['total'] - 1):+.1f}% | "
                f"{c['scaling_params'] / 1e6:,.1f}M | "
                f"{100 * (c['scaling_params'] / base['scaling_params'] - 1):+.2f}% | "
                f"{f1 / 1e9:.3f} G | {100 * (f1 / base_f - 1):+.2f}% | {inter} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """`python -m lrt.accounting [--depths 12 20 24] [--vocab-size 32768] [--seq-len 2048]`."""
    ap = argparse.ArgumentParser(prog="python -m lrt.accounting", description=main.__doc__)
    ap.add_argument("--depths", type=int, nargs="+", default=[12, 20, 24])
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=2048)
    args = ap.parse_args(argv)
    print(accounting_table(tuple(args.depths), args.vocab_size, args.seq_len))


# ---------------------------------------------------------------------------------------------
# Hardware


def peak_flops(device_name: str) -> float:
    """Dense bf16 peak FLOP/s for a device name (e.g. torch.cuda.get_device_name()); inf if unknown.

    Example:
        >>> peak_flops("NVIDIA H100 80GB HBM3")
        989000000000000.0
    """
    upper = device_name.upper()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key.upper() in upper:
            return PEAK_FLOPS[key]
    return math.inf


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over peak (0 when the peak is unknown/inf).

    Example:
        >>> round(mfu(6e9, 50_000, 989e12), 4)
        0.3033
    """
    if not math.isfinite(peak_flops) or peak_flops <= 0:
        return 0.0
    return flops_per_token * tokens_per_s / peak_flops


if __name__ == "__main__":
    main()
