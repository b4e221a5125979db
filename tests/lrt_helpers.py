"""Tiny LRT models with every weight random and non-zero, shared by the lrt test files.

Random gates, gamma and memory K/V projections make the identity tests meaningful: with the
zero-initialised gates of `init_weights()` several identities would hold trivially.
"""

from __future__ import annotations

import torch

from lrt import LRT, LRTConfig

V, T = 97, 16


def make_model(pathway: str = "layerwise", seed: int = 0, **kw) -> LRT:
    """Tiny model with every weight random and non-zero (gates, gamma, memory K/V included)."""
    torch.manual_seed(seed)
    kw = {"depth": 3, "n_embd": 64, "n_head": 2, **kw}
    model = LRT(LRTConfig(vocab_size=V, seq_len=T, pathway=pathway, **kw))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name != "wte.weight":
                p.uniform_(-0.3, 0.3)
            elif p.dim() == 1:
                p.uniform_(0.2, 0.8)
    return model


def tokens(b: int = 2, t: int = T, seed: int = 1) -> torch.Tensor:
    """A (b, t) batch of token ids from a fixed seed."""
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))
