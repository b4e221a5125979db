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
    >>> LRTConfig(vocab_size=100, depth=4, seq_len=64).window_sizes   # "SSSL", last layer L
    [32, 32, 32, 64]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Pathway = Literal["none", "shared", "layerwise", "official"]
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
        n_head: Number of attention (query) heads; None -> `n_embd // 128` (head dim 128).
        n_kv_head: Number of key/value heads (GQA: each serves n_head / n_kv_head query
            heads); None -> n_head.
        window_pattern: Sliding-window pattern tiled over the layers (nanochat): "L" = a window
            of `seq_len` keys back, "S" = `seq_len // 2`; the final layer is always "L". A
            query at position p sees keys k with p - window <= k <= p, in every path.
        use_value_embeds: nanochat's value embeddings: a token-indexed table per layer on
            alternating layers (last included), added to v with the gate
            `2*sigmoid(W xn[..., :ve_gate_channels])` (per KV head). Ignored by the official
            arm, whose init value embeddings replace them.
        ve_every_layer: Value embeddings on every layer (the official arm's capacity).
        ve_gate_channels: Input channels of the value-embedding and triple gates; 0 = full width.
        use_resid_lambdas: Per-layer learnable scale of the residual stream before each block
            (`resid_lambdas`, init 1).
        use_x0_residual: Per-layer skip to the normed embedding, `x += x0_lambdas[l] * x0`
            before block l (init 0.1).
        pad_vocab_size_to: Embedding and head rows are padded to a multiple of this (logits
            are sliced back to `vocab_size`); 1 = no padding.
        pathway: "none" (baseline, no pathway parameters), "shared" (one memory K/V projection
            for every layer), "layerwise" (one per layer) -- our single-gate pathway -- or
            "official", the authors' arm: per layer a triple gate `(g_local, g_fb, g_ve) =
            2*sigmoid(W xn[..., :ve_gate_channels])`, `k = g_local k + g_fb Wk_m m`, `v =
            g_local v + g_fb Wv_m m + g_ve E_l[token]` with a token-indexed init value
            embedding E_l on every layer (replacing the baseline's value embeddings), gamma
            injection and per-layer Wk_m, Wv_m; source = final layer.
        zero_memory: Keep every pathway parameter but feed zero memory to every layer (a
            capacity-only ablation: the parameters without the recurrence).
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
    n_kv_head: int | None = None
    window_pattern: str = "SSSL"
    use_value_embeds: bool = True
    ve_every_layer: bool = False
    ve_gate_channels: int = 32
    use_resid_lambdas: bool = True
    use_x0_residual: bool = True
    pad_vocab_size_to: int = 64
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
    zero_memory: bool = False

    def __post_init__(self) -> None:
        if self.n_embd is None:
            width = math.ceil(ASPECT_RATIO * self.depth / HEAD_DIM) * HEAD_DIM
            object.__setattr__(self, "n_embd", width)
        if self.n_head is None:
            object.__setattr__(self, "n_head", max(1, self.n_embd // HEAD_DIM))
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.rope_len is None:
            object.__setattr__(self, "rope_len", 10 * self.seq_len)
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.pathway not in ("none", "shared", "layerwise", "official"):
            raise ValueError(
                f"pathway must be none/shared/layerwise/official, got {self.pathway!r}"
            )
        if not -self.depth <= self.source_layer < self.depth:
            raise ValueError(
                f"source_layer={self.source_layer} is outside [-{self.depth}, {self.depth})"
            )
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}; pick a divisor "
                "(or None for plain multi-head attention)"
            )
        pattern = self.window_pattern.upper()
        if not pattern or any(c not in "SL" for c in pattern):
            raise ValueError(
                f"window_pattern={self.window_pattern!r} must be a non-empty string of S and L "
                '(e.g. "SSSL", or "L" for full attention everywhere)'
            )
        if not 0 <= self.ve_gate_channels <= self.n_embd:
            raise ValueError(
                f"ve_gate_channels={self.ve_gate_channels} is outside [0, n_embd={self.n_embd}]; "
                "use 0 for the full width"
            )
        if self.pad_vocab_size_to < 1:
            raise ValueError(
                f"pad_vocab_size_to={self.pad_vocab_size_to} must be >= 1 (1 = no padding)"
            )
        if self.pathway == "official" and self.source_index != self.depth - 1:
            raise ValueError(
                f'pathway="official" reads the final layer; source_layer={self.source_layer} '
                "is not supported there (use -1, or pathway shared/layerwise)"
            )
        if self.pathway == "official" and not (self.residual_injection and self.kv_projection):
            raise ValueError(
                'pathway="official" has a fixed recipe: keep residual_injection and '
                "kv_projection on (or use pathway shared/layerwise)"
            )
        if self.zero_memory and not self.has_pathway:
            raise ValueError("zero_memory=True needs a pathway; set pathway or zero_memory=False")

    @property
    def n_layer(self) -> int:
        """Alias of `depth` (nanoGPT naming)."""
        return self.depth

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_dim(self) -> int:
        """Width of the keys/values of one layer: n_kv_head * head_dim."""
        return self.n_kv_head * self.head_dim

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the head: vocab_size rounded up to pad_vocab_size_to."""
        m = self.pad_vocab_size_to
        return -(-self.vocab_size // m) * m

    @property
    def gate_channels(self) -> int:
        """Input width of the value-embedding / triple gates (ve_gate_channels, 0 = n_embd)."""
        return self.ve_gate_channels or self.n_embd

    @property
    def window_sizes(self) -> list[int]:
        """Per layer, how many keys back a query may look (nanochat's left window): seq_len for
        "L", seq_len // 2 for "S", pattern tiled, final layer seq_len."""
        pattern = self.window_pattern.upper()
        sizes = {"L": self.seq_len, "S": self.seq_len // 2}
        out = [sizes[pattern[i % len(pattern)]] for i in range(self.depth)]
        out[-1] = self.seq_len
        return out

    def has_ve(self, layer: int) -> bool:
        """Whether block `layer` has a baseline value embedding (never for the official arm,
        whose init value embeddings sit on every layer)."""
        if not self.use_value_embeds or self.pathway == "official":
            return False
        return self.ve_every_layer or layer % 2 == (self.depth - 1) % 2

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
        refresh_kv: "interleaved": the authors' `interleaved_kv_refresh`. Before each subset
            pass -- the first included, so right after the init pass every position is
            refreshed with the init pass's states -- the buffer's K/V rows at positions no
            subset pass has written yet are recomputed with the latest memory: the memory
            terms `g_fb * Wk_m m`, `g_fb * Wv_m m` change, the rest of the row (local k/v,
            gates, value embeddings) stays as the init pass made it; residual injection is
            not refreshed. One extra K/V projection per layer, no attention/MLP; see
            docs/MODEL.md.
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
