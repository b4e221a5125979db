"""Parameter and FLOP accounting for LRT models and training strategies (see docs/ACCOUNTING.md).

FLOPs follow nanochat's `estimate_flops`: a matmul weight costs 2 FLOPs per token forward and 4
backward (6 for training); attention adds, per layer and query, 4*H*D FLOPs per key forward
(QK^T and AV), times 3 for training; embeddings, norms, softmax and elementwise ops are free.
On top, every strategy is counted as this implementation executes it (lrt/strategies.py,
lrt/model.py):

- a pass with a pathway always runs it, zero memory included: gates (L x C x H) and the memory
  K/V projections (shared: 2 C x C once per pass; layerwise: 2 C x C per layer);
- each query is charged the keys of the attention call it is in (nanochat's `12*H*Q*T`): a
  plain pass over T positions T keys, a buffer pass (interleaved subset, chunk) T keys (the
  buffer is T rows). `causal=True` instead charges only the keys a query may see (t+1), the
  useful work; then every pass's attention costs the same as the baseline's;
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
    >>> cfg = LRTConfig(vocab_size=65536, depth=20, seq_len=2048, pathway="shared")
    >>> base = LRTConfig(vocab_size=65536, depth=20, seq_len=2048)
    >>> round(flops_per_token(cfg, StrategyConfig("interleaved")) / flops_per_token(base), 3)
    2.012
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lrt.config import LRTConfig, StrategyConfig

__all__ = [
    "PEAK_FLOPS",
    "FlopBreakdown",
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


# ---------------------------------------------------------------------------------------------
# Parameters


def param_counts(model_or_cfg: Any) -> dict[str, float]:
    """Parameter counts of an `LRT` model (or of the model an `LRTConfig` builds).

    Keys (ints unless noted):
        total, embedding (wte), lm_head, blocks (all block parameters), pathway (all pathway
        parameters, gamma included), other (anything else; 0 for lrt models) -- these five
        partition `total`;
        pathway_matrices (2-D pathway weights: memory K/V projections and gates),
        scalars (every 0-/1-D parameter, e.g. gamma), non_embedding (total - embedding),
        scaling_params: block matrices + lm_head + pathway matrices. This is nanochat's
            definition (transformer matrices + lm_head, "cleanest scaling laws") extended as the
            authors' fork does (it adds its feedback matrices); embeddings and scalars excluded;
        pathway_frac_total (float): pathway / total of this model,
        pathway_frac_non_embedding (float): pathway / non_embedding.

    A config is built on the meta device (no memory), so this is exact for any size.

    Example:
        >>> from lrt.config import LRTConfig
        >>> c = param_counts(LRTConfig(vocab_size=65536, depth=20, seq_len=2048, pathway="shared"))
        >>> c["pathway"], round(100 * c["pathway_frac_total"], 2)
        (3532820, 0.63)
    """
    model = _as_model(model_or_cfg)
    seen: set[int] = set()
    counts = dict.fromkeys(
        ("embedding", "lm_head", "blocks", "pathway", "other", "pathway_matrices", "scalars"), 0
    )
    block_matrices = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        top = name.split(".", 1)[0]
        key = {
            "wte": "embedding",
            "lm_head": "lm_head",
            "blocks": "blocks",
            "pathway": "pathway",
        }.get(top, "other")
        counts[key] += n
        if p.ndim <= 1:
            counts["scalars"] += n
        elif key == "pathway":
            counts["pathway_matrices"] += n
        elif key == "blocks":
            block_matrices += n
    total = sum(counts[k] for k in ("embedding", "lm_head", "blocks", "pathway", "other"))
    counts["total"] = total
    counts["non_embedding"] = total - counts["embedding"]
    counts["scaling_params"] = block_matrices + counts["lm_head"] + counts["pathway_matrices"]
    counts["pathway_frac_total"] = counts["pathway"] / total
    counts["pathway_frac_non_embedding"] = counts["pathway"] / counts["non_embedding"]
    return counts


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
    + LM head; pathway: gates + memory K/V projections; refresh: interleaved `refresh_kv`
    re-projections; attention: QK^T + AV.
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
    c, h, n = cfg.n_embd, cfg.n_head, cfg.n_layer
    backbone = n * (4 * c * c + 2 * cfg.mlp_ratio * c * c) + c * cfg.vocab_size
    kv = 0
    pathway = 0
    if cfg.has_pathway and cfg.kv_projection:
        kv = (1 if cfg.pathway == "shared" else n) * 2 * c * c  # shared: projected once per pass
        pathway = kv + n * c * h  # + per-layer gates
    return backbone, pathway, kv


def _as_strategy(strategy: StrategyConfig | str | None) -> StrategyConfig:
    if strategy is None:
        return StrategyConfig()
    if isinstance(strategy, str):
        return StrategyConfig(name=strategy)
    return strategy


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
        seq_len: Sequence length T (default cfg.seq_len).
        causal: Charge each query only the keys at or before it (useful work) instead of the
            keys of its attention call (nanochat convention, the default).
    """
    cfg = _config(cfg)
    st = _as_strategy(strategy)
    t = seq_len or cfg.seq_len
    backbone, pathway, kv = _matmul_params(cfg)
    attn_per_key = 4 * cfg.n_layer * cfg.n_head * cfg.head_dim  # per query, per key, forward
    causal_keys = (t + 1) / 2  # mean keys seen per query over positions 0..T-1

    refresh = 0.0
    name = st.name
    if name == "none":
        passes, keys = 1.0, (causal_keys if causal else t)
    elif name == "interleaved":
        passes = 2.0
        keys = 2 * (causal_keys if causal else t)
        if st.refresh_kv and kv:
            n_subsets = min(st.subsets, t)  # empty subsets are skipped
            refresh = n_subsets * 2.0 * kv
    elif name == "multi_refine":
        passes = float(st.refine_steps + 1)
        keys = passes * (causal_keys if causal else t)
    elif name in ("chunked", "sequential"):
        c = 1 if name == "sequential" else st.chunk_size
        c0 = min(c, t)
        passes = 1.0
        # first chunk: a plain causal pass over c0 positions; later chunks attend to the T-row buffer
        keys = causal_keys if causal else (c0 * c0 + (t - c0) * t) / t
    else:
        raise ValueError(f"unknown strategy {name!r}")
    return FlopBreakdown(
        passes=passes,
        backbone=passes * 2.0 * backbone,
        pathway=passes * 2.0 * pathway,
        refresh=refresh,
        attention=keys * attn_per_key,
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

    For the baseline with `strategy=None` this equals nanochat's
    `6 * (matrices + lm_head) + 12 * L * H * D * T`.

    Example:
        >>> from lrt.config import LRTConfig
        >>> cfg = LRTConfig(vocab_size=100, depth=1, seq_len=8, n_embd=8, n_head=1)
        >>> flops_per_token(cfg) == 6 * (12 * 8 * 8 + 8 * 100) + 12 * 1 * 1 * 8 * 8
        True
    """
    b = flop_breakdown(cfg, strategy, seq_len=seq_len, causal=causal)
    return b.training if training else b.forward


def decode_flops_per_token(cfg: LRTConfig | Any, context: int | None = None) -> float:
    """Forward FLOPs to decode one token with a KV cache holding `context` keys (incl. itself).

    One pass over one position: backbone + pathway matmuls (an LRT decodes with its memory, so
    it pays the gates and memory K/V projections) + attention over `context` keys
    (default cfg.seq_len, a token at full context; the mean over a whole window is
    (seq_len + 1) / 2).
    """
    cfg = _config(cfg)
    backbone, pathway, _ = _matmul_params(cfg)
    ctx = cfg.seq_len if context is None else context
    return 2.0 * (backbone + pathway) + 4.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * ctx


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
        >>> base = LRTConfig(vocab_size=65536, depth=20, seq_len=2048)
        >>> lrt = LRTConfig(vocab_size=65536, depth=20, seq_len=2048, pathway="shared")
        >>> matched_tokens(base, lrt, "interleaved", 1_000_000)
        2012141
    """
    compute = effective_compute(cfg_lrt, strategy, tokens_lrt, **kwargs)
    return int(round(compute / flops_per_token(cfg_base, None, **kwargs)))


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
