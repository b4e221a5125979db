"""The architecture and training-strategy sections (`model`, `strategy` of params.yaml): they
mirror `lrt.LRTConfig` and `lrt.StrategyConfig` and build them (`to_config`). A variant in
`train.variants` overrides their keys (`pipeline.config.train_sections`).

Example:
    >>> ModelSettings(depth=2, n_embd=64, n_head=2).to_config(vocab_size=97).head_dim
    32
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import MAX_DEPTH, SettingsSection

if TYPE_CHECKING:
    from lrt.config import LRTConfig, StrategyConfig


class ModelSettings(SettingsSection):
    """Architecture; mirrors `lrt.LRTConfig` (the vocabulary comes from the tokenizer)."""

    depth: int = Field(4, ge=1, le=MAX_DEPTH)
    """Number of transformer blocks (the one scaling dial)."""
    n_embd: int | None = Field(None, ge=8, le=1 << 16)
    """Model width; None = nanochat rule 64*depth rounded up to a multiple of 128."""
    n_head: int | None = Field(None, ge=1, le=1024)
    """Attention heads; None = n_embd // 128."""
    n_kv_head: int | None = Field(None, ge=1, le=1024)
    """Key/value heads (GQA: each serves n_head / n_kv_head query heads; must divide n_head);
    None = n_head (plain multi-head attention)."""
    seq_len: int = Field(256, ge=2, le=1 << 20)
    """Training context length in tokens."""
    window_pattern: str = Field("SSSL", min_length=1, max_length=1024, pattern=r"^[SLsl]+$")
    """Sliding-window pattern tiled over the layers (nanochat): L = full context (seq_len keys
    back), S = seq_len // 2; the final layer is always L. "L" = full attention everywhere."""
    use_value_embeds: bool = True
    """nanochat's value embeddings: a token-indexed table added to v (gated per KV head) on
    alternating layers, the last included. Ignored by pathway official (its own replace them)."""
    ve_every_layer: bool = False
    """Value embeddings on every layer (the official arm's capacity)."""
    ve_gate_channels: int = Field(32, ge=0, le=1 << 16)
    """Input channels of the value-embedding and triple gates; 0 = the full width (at most
    n_embd)."""
    use_resid_lambdas: bool = True
    """Per-layer learnable scale of the residual stream before each block (init 1)."""
    use_x0_residual: bool = True
    """Per-layer skip to the normed embedding, x += x0_lambdas[l] * x0 before block l (init
    0.1)."""
    pad_vocab_size_to: int = Field(64, ge=1, le=1 << 16)
    """Embedding and head rows padded to a multiple of this (logits sliced back); 1 = none."""
    pathway: Literal["none", "shared", "layerwise", "official"] = "none"
    """Latent recurrent pathway: none (baseline), shared or layerwise memory K/V projections
    (our single gate), or official (the LRT authors' arm: triple gate, init value embeddings on
    every layer, per-layer projections, source = final layer)."""
    source_layer: int = -1
    """Block whose output at token t-1 is the memory of token t; negative counts from the end."""
    residual_injection: bool = True
    """Add gamma_l * m_t to the residual stream before block l."""
    kv_projection: bool = True
    """Mix projected memory into each layer's keys and values (gated per head)."""
    gamma_init: float = Field(0.1, ge=-100, le=100)
    """Initial residual-injection scale."""
    identity_init: bool = False
    """Zero-initialise the pathway so LRT equals the baseline at step 0."""
    zero_memory: bool = False
    """Keep every pathway parameter but feed zero memory to every layer (capacity-only
    ablation: the parameters without the recurrence); needs a pathway."""

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSettings:
        if self.n_embd is not None and self.n_head is not None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_kv_head is not None and self.n_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}; pick a divisor "
                "(or null for plain multi-head attention)"
            )
        if self.n_embd is not None and self.ve_gate_channels > self.n_embd:
            raise ValueError(
                f"ve_gate_channels={self.ve_gate_channels} exceeds n_embd={self.n_embd}; use 0 "
                "for the full width"
            )
        if not -self.depth <= self.source_layer < self.depth:
            raise ValueError(
                f"source_layer={self.source_layer} is outside [-{self.depth}, {self.depth})"
            )
        if self.zero_memory and self.pathway == "none":
            raise ValueError("zero_memory=true needs a pathway; set model.pathway or drop it")
        if self.pathway == "official" and self.source_layer % self.depth != self.depth - 1:
            raise ValueError(
                f"pathway=official reads the final layer; source_layer={self.source_layer} is "
                "not supported there (use -1, or pathway shared/layerwise)"
            )
        if self.pathway == "official" and not (self.residual_injection and self.kv_projection):
            raise ValueError(
                "pathway=official has a fixed recipe: keep residual_injection and kv_projection "
                "on (or use pathway shared/layerwise)"
            )
        return self

    def to_config(self, vocab_size: int) -> LRTConfig:
        """Build the `lrt.LRTConfig` for a tokenizer of `vocab_size` ids."""
        from lrt.config import LRTConfig

        return LRTConfig(vocab_size=vocab_size, **self.model_dump())


class StrategySettings(SettingsSection):
    """How a training step uses the pathway; mirrors `lrt.StrategyConfig`."""

    name: Literal["none", "interleaved", "multi_refine", "chunked", "sequential"] = "none"
    """none (baseline), interleaved (S strided subsets), multi_refine (K Jacobi passes), chunked
    (memory crosses chunk boundaries only) or sequential (exact, slow; for verification)."""
    subsets: int = Field(2, ge=1, le=1 << 20)
    """S for interleaved."""
    refine_steps: int = Field(1, ge=0, le=1000)
    """K for multi_refine."""
    chunk_size: int = Field(64, ge=1, le=1 << 20)
    """C for chunked."""
    detach: bool = False
    """Cut gradients through the buffer read by later passes."""
    refresh_kv: bool = False
    """interleaved: recompute not-yet-visited K/V rows after each subset pass."""
    loss_weights: list[float] | None = None
    """Weights over passes (init pass first); None = plain mean."""

    @field_validator("loss_weights")
    @classmethod
    def _check_weights(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (any(w < 0 for w in value) or not sum(value) > 0):
            raise ValueError(f"loss_weights={value} must be >= 0 with a positive sum")
        return value

    def to_config(self) -> StrategyConfig:
        """Build the `lrt.StrategyConfig`."""
        from lrt.config import StrategyConfig

        data = self.model_dump()
        if data["loss_weights"] is not None:
            data["loss_weights"] = tuple(data["loss_weights"])
        return StrategyConfig(**data)
