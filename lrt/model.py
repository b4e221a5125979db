"""The LRT: the backbone (`lrt.backbone`, one pass) plus its training and evaluation front ends.

`LRT` is `lrt.backbone.Backbone` -- same parameters, same `forward` (one pass) -- with
`forward_train`, `token_losses` and `logits` over the strategies of `lrt.strategies`. The
library reads bottom-up: config, attention, recurrence, backbone; then passes, static_decode,
decode, strategies; then this module and `lrt.interop`. No module imports one above it.

Parameter names: the table in `lrt.backbone` (stable; `lrt.optim` groups by them and
`lrt.interop` maps them to nanochat's).

    >>> cfg = LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2, pathway="shared")
    >>> model = LRT(cfg); model.init_weights()
    >>> idx = torch.randint(0, 97, (2, 16))
    >>> out = model(idx, torch.zeros(2, 16, 64))
    >>> model.head(out.hidden).shape
    torch.Size([2, 16, 97])
"""

from __future__ import annotations

from torch import Tensor

from lrt.backbone import (  # noqa: F401 - re-exported for callers of lrt.model
    KV,
    Backbone,
    Block,
    CausalSelfAttention,
    FusedWeights,
    PassOutput,
    apply_rotary,
    norm,
)
from lrt.config import LRTConfig, StrategyConfig
from lrt.strategies import TrainOutput, forward_train, mode_logits, token_losses

__all__ = ["KV", "LRT", "Backbone", "FusedWeights", "LRTConfig", "PassOutput", "norm"]


class LRT(Backbone):
    """Latent Recurrent Transformer (`cfg.pathway="none"`: the plain baseline).

    Parameters: see the module docstring. Buildable on the meta device; call `init_weights()`
    after `to_empty`.
    """

    def forward_train(
        self, idx: Tensor, targets: Tensor, strategy: StrategyConfig | None = None
    ) -> TrainOutput:
        """Training loss of one batch under `strategy` (default: "none"). See strategies.py."""
        return forward_train(self, idx, targets, strategy or StrategyConfig())

    def token_losses(
        self,
        idx: Tensor,
        targets: Tensor,
        mode: str = "init",
        strategy: StrategyConfig | None = None,
    ) -> Tensor:
        """Per-position losses in nats (B, T), 0 where targets == -1. No gradients.

        mode: "init" (zero memory), "merged" (interleaved, each position scored by its subset
        pass; S = strategy.subsets), "refine" (last multi_refine pass; K = strategy.refine_steps),
        "chunked" (C = strategy.chunk_size) or "sequential" (exact recurrence).
        """
        return token_losses(self, idx, targets, mode, strategy or StrategyConfig())

    def logits(
        self, idx: Tensor, mode: str = "init", strategy: StrategyConfig | None = None
    ) -> Tensor:
        """Logits (B, T, V) under `mode` (same modes as `token_losses`). No gradients."""
        return mode_logits(self, idx, mode, strategy or StrategyConfig())
