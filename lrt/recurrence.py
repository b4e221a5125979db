"""The LRT latent pathway: how the memory m_t enters every layer.

m_t = RMSNorm(h_src[t-1]) (m_0 = 0) is computed by the model (`LRT.forward` returns the source
states; `shift_right` turns them into memory). This module owns the pathway parameters:

- residual injection   x <- x + gamma_l * m_t                 before block l   (`gamma`, (L,))
- KV projection        k_fb = Wk_m m_t,  v_fb = Wv_m m_t      (`k_proj`, `v_proj`: 1 or L linears)
                       g = 2 * sigmoid(Wg_l RMSNorm(x))       per head, per layer (`gates`)
                       k <- k + g * k_fb,  v <- v + g * v_fb  before RoPE and QK-norm

`shared` keeps one (Wk_m, Wv_m) for all layers; `layerwise` one per layer. Gates are always
per layer (n_embd x n_kv_head each, tiny). The KV cache keeps its shape: memory only changes the
values written into it.

`official` (the authors' arm) keeps gamma and per-layer (Wk_m, Wv_m) here, plus a token-indexed
init value embedding per layer (`init_value_embeds`, keyed str(layer)); its triple gate lives
on each attention (`blocks[i].attn.triple_gate`), since it also gates the local k and v.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrt.config import LRTConfig


def shift_right(states: Tensor) -> Tensor:
    """Memory from source states: out[:, t] = states[:, t-1], out[:, 0] = 0. (B, T, C)."""
    return F.pad(states, (0, 0, 1, 0))[:, :-1]


class LatentPathway(nn.Module):
    """Parameters and arithmetic of the recurrent pathway (never built for pathway="none")."""

    def __init__(self, cfg: LRTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, h, n, ckv = cfg.n_embd, cfg.n_kv_head, cfg.n_layer, cfg.kv_dim
        self.gamma = nn.Parameter(torch.empty(n)) if cfg.residual_injection else None
        self.gates = self.init_value_embeds = None
        if cfg.kv_projection:
            n_proj = 1 if cfg.pathway == "shared" else n
            self.k_proj = nn.ModuleList(nn.Linear(c, ckv, bias=False) for _ in range(n_proj))
            self.v_proj = nn.ModuleList(nn.Linear(c, ckv, bias=False) for _ in range(n_proj))
            if cfg.pathway != "official":
                self.gates = nn.ModuleList(nn.Linear(c, h, bias=False) for _ in range(n))
        else:
            self.k_proj = self.v_proj = None
        if cfg.pathway == "official":
            vp = cfg.padded_vocab_size
            self.init_value_embeds = nn.ModuleDict(
                {str(i): nn.Embedding(vp, ckv) for i in range(n)}
            )

    @torch.no_grad()
    def init_weights(self) -> None:
        """gamma = gamma_init; Wk_m, Wv_m and the init value embeddings like the block's c_v
        (uniform, std 1/sqrt(C)); Wg = 0 (gates start at 1). The official arm's triple gate is
        zeroed by the model's `init_weights`.

        identity_init zeroes gamma and Wk_m, Wv_m, so the model starts equal to the baseline
        (for shared/layerwise; the official arm's init value embeddings still differ from it).
        """
        cfg = self.cfg
        if self.gamma is not None:
            self.gamma.fill_(0.0 if cfg.identity_init else cfg.gamma_init)
        if self.k_proj is not None:
            s = math.sqrt(3.0 / cfg.n_embd)
            for lin in [*self.k_proj, *self.v_proj]:
                if cfg.identity_init:
                    nn.init.zeros_(lin.weight)
                else:
                    nn.init.uniform_(lin.weight, -s, s)
            for lin in self.gates or []:
                nn.init.zeros_(lin.weight)
        if self.init_value_embeds is not None:
            s = math.sqrt(3.0 / cfg.n_embd)
            for emb in self.init_value_embeds.values():
                nn.init.uniform_(emb.weight, -s, s)

    # -----------------------------------------------------------------------------------------

    def inject(self, x: Tensor, memory: Tensor, layer: int) -> Tensor:
        """Residual injection before block `layer` (one multiply-add). x, memory: (B, T, C)."""
        if self.gamma is None:
            return x
        return torch.addcmul(x, self.gamma[layer].to(x.dtype), memory.to(x.dtype))

    def memory_kv(self, memory: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """(k_fb, v_fb) for `layer`, each (B, T, H, D)."""
        b, t, _ = memory.shape
        i = 0 if len(self.k_proj) == 1 else layer
        shape = (b, t, self.cfg.n_kv_head, self.cfg.head_dim)
        return self.k_proj[i](memory).view(shape), self.v_proj[i](memory).view(shape)

    def all_memory_kv(
        self, memory: Tensor, stacked: Tensor | None = None
    ) -> list[tuple[Tensor, Tensor]] | None:
        """`memory_kv` for every layer; the shared variant projects once.

        stacked: [Wk_m(0); Wv_m(0); Wk_m(1); ...] (2 * n_proj * C, C) (`FusedWeights.memory_kv`):
        every projection from one matmul, split into views.
        """
        if self.k_proj is None:
            return None
        n_proj = len(self.k_proj)
        if stacked is not None:
            b, t, _ = memory.shape
            shape = (b, t, self.cfg.n_kv_head, self.cfg.head_dim)
            parts = F.linear(memory, stacked).split(self.cfg.kv_dim, dim=-1)
            kvs = [(parts[2 * j].reshape(shape), parts[2 * j + 1].reshape(shape))
                   for j in range(n_proj)]  # fmt: skip
            return kvs * self.cfg.n_layer if n_proj == 1 else kvs
        if n_proj == 1:
            return [self.memory_kv(memory, 0)] * self.cfg.n_layer
        return [self.memory_kv(memory, i) for i in range(self.cfg.n_layer)]

    def gate(self, xn: Tensor, layer: int) -> Tensor:
        """Per-KV-head mixing gate 2*sigmoid(Wg RMSNorm(x)): (B, T, Hkv), in (0, 2), 1 at init
        (shared/layerwise only)."""
        return gate_activation(self.gates[layer](xn))


GATE_SCALE = 2.0  # g = GATE_SCALE * sigmoid(Wg RMSNorm(x)): in (0, 2), 1 at zero logits


def gate_activation(logits: Tensor) -> Tensor:
    """The gate from its logits Wg RMSNorm(x): 2*sigmoid, in (0, 2), 1 at zero logits.

    (The model's passes apply the sigmoid here and the factor inside `project_kv`'s
    multiply-add; this is the gate's value as a whole.)"""
    return GATE_SCALE * torch.sigmoid(logits)
