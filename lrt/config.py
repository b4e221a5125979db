"""Model and training-strategy configuration for the Latent Recurrent Transformer.

`LRTConfig` describes the architecture (backbone + optional recurrent pathway); `StrategyConfig`
describes how a training step uses the pathway (see `lrt/strategies.py`). Both are plain frozen
dataclasses so `lrt/` stays torch-only; the pipeline's pydantic settings build them.

Example:
    >>> cfg = LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2)
    >>> (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim)
    (2, 64, 2, 32)
    >>> LRTConfig(vocab_size=32768, depth=20).n_embd   # nanochat rule: 64*depth rounded to 128
    1280
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Pathway = Literal["none", "shared", "layerwise"]
StrategyName = Literal["none", "interleaved", "multi_refine", "chunked", "sequential"]

ASPECT_RATIO = 64  # nanochat: model width = 64 * depth ...
HEAD_DIM = 128  # ... rounded up to a multiple of the head dimension


@dataclass(frozen=True)
class LRTConfig:
    """Architecture of one model. `pathway="none"` is the baseline transformer.

    Attributes:
        vocab_size: Number of token ids (embedding rows and head outputs).
        depth: Number of transformer blocks (the one scaling dial).
        seq_len: Training context length; sizes the rotary table (decoding may go up to
            `rope_len`).
        n_embd: Model width; None -> `64 * depth` rounded up to a multiple of 128.
        n_head: Number of attention heads; None -> `n_embd // 128` (head dim 128).
        pathway: "none" (baseline, no pathway parameters), "shared" (one memory K/V projection
            for every layer) or "layerwise" (one per layer).
        source_layer: Block whose output, at token t-1, becomes the memory of token t. -1 = the
            final block (its output is RMS-normed like every memory). Negative values count
            from the end, as in Python.
        residual_injection: Add `gamma_l * m_t` to the residual stream before block l.
        kv_projection: Mix `Wk_m m_t`, `Wv_m m_t` into every layer's keys/values with per-head
            gates `2*sigmoid(Wg RMSNorm(x))`.
        gamma_init: Initial value of every per-layer residual-injection scale.
        identity_init: Zero gamma and the memory K/V projections so LRT == baseline at init.
        softcap: Logit soft cap `c * tanh(z / c)`; 0 disables it.
        rope_base: Rotary embedding base.
        rope_len: Positions covered by the rotary table; None -> `10 * seq_len` (nanochat).
        mlp_ratio: Hidden width of the ReLU^2 MLP over the model width.
    """

    vocab_size: int
    depth: int = 4
    seq_len: int = 256
    n_embd: int | None = None
    n_head: int | None = None
    pathway: Pathway = "none"
    source_layer: int = -1
    residual_injection: bool = True
    kv_projection: bool = True
    gamma_init: float = 0.1
    identity_init: bool = False
    softcap: float = 15.0
    rope_base: float = 10000.0
    rope_len: int | None = None
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.n_embd is None:
            width = math.ceil(ASPECT_RATIO * self.depth / HEAD_DIM) * HEAD_DIM
            object.__setattr__(self, "n_embd", width)
        if self.n_head is None:
            object.__setattr__(self, "n_head", max(1, self.n_embd // HEAD_DIM))
        if self.rope_len is None:
            object.__setattr__(self, "rope_len", 10 * self.seq_len)
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.pathway not in ("none", "shared", "layerwise"):
            raise ValueError(f"pathway must be none/shared/layerwise, got {self.pathway!r}")
        if not -self.depth <= self.source_layer < self.depth:
            raise ValueError(
                f"source_layer={self.source_layer} is outside [-{self.depth}, {self.depth})"
            )

    @property
    def n_layer(self) -> int:
        """Alias of `depth` (nanoGPT naming)."""
        return self.depth

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def source_index(self) -> int:
        """`source_layer` as a non-negative block index."""
        return self.source_layer % self.depth

    @property
    def has_pathway(self) -> bool:
        return self.pathway != "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints); `LRTConfig(**d)` rebuilds the same config."""
        return asdict(self)


@dataclass(frozen=True)
class StrategyConfig:
    """How a training step uses the latent pathway (see `lrt/strategies.py` and docs/MODEL.md).

    Attributes:
        name: "none" (one causal pass, zero memory), "interleaved", "multi_refine", "chunked"
            or "sequential" (exact token-by-token unrolling; slow, for verification).
        subsets: S for "interleaved": positions are split into S strided subsets (t mod S).
        refine_steps: K for "multi_refine": full Jacobi passes after the init pass.
        chunk_size: C for "chunked".
        detach: "interleaved"/"multi_refine": cut gradients through the buffer (K/V and source
            states read by later passes); the pass's own fresh rows still get gradients.
        refresh_kv: "interleaved": after each subset pass, also recompute the K/V rows of the
            not-yet-visited positions with the updated memory (one extra full-width K/V
            projection per layer, no attention/MLP); see docs/MODEL.md.
        loss_weights: Optional weights over passes (init pass first; S+1 for interleaved,
            K+1 for multi_refine). None = plain mean. Normalised to sum to 1.
    """

    name: StrategyName = "none"
    subsets: int = 2
    refine_steps: int = 1
    chunk_size: int = 64
    detach: bool = False
    refresh_kv: bool = False
    loss_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in ("none", "interleaved", "multi_refine", "chunked", "sequential"):
            raise ValueError(f"unknown strategy {self.name!r}")
        if self.subsets < 1 or self.refine_steps < 0 or self.chunk_size < 1:
            raise ValueError(f"bad strategy sizes in {self}")
        if self.loss_weights is not None:
            object.__setattr__(self, "loss_weights", tuple(float(w) for w in self.loss_weights))
