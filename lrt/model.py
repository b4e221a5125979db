"""The LRT backbone: a nanochat-style decoder whose layers can read a latent memory.

One `LRT.forward` call is one *pass*: token ids plus an explicit memory tensor in, normalised
final states, source states (the next memory) and every layer's K/V out. Training strategies
(`lrt/strategies.py`) and decoding (`lrt/decode.py`) are loops over passes. A pass runs in one
of three attention modes:

- plain:  all positions 0..T-1, causal attention (the baseline / init pass),
- buffer: only positions `positions` of a longer sequence; their fresh K/V rows are written into
          a copy of `buffer` (per layer (B, H, T_full, D)) and they attend to it causally by
          original position (interleaved subsets, chunks),
- cache:  decoding; K/V appended to a `KVCache` in place.

Backbone: pre-norm blocks, parameter-free RMSNorm (embeddings, QK-norm, before the head), RoPE
(base 10000), ReLU^2 MLP, untied embedding/head, logit softcap, no biases.

    >>> cfg = LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2, pathway="shared")
    >>> model = LRT(cfg); model.init_weights()
    >>> idx = torch.randint(0, 97, (2, 16))
    >>> out = model(idx, torch.zeros(2, 16, 64))
    >>> model.head(out.hidden).shape
    torch.Size([2, 16, 97])
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrt.attention import attention_mask, causal_attention, masked_attention
from lrt.config import LRTConfig, StrategyConfig
from lrt.recurrence import GATE_SCALE, LatentPathway

if TYPE_CHECKING:
    from lrt.decode import KVCache
    from lrt.static_decode import StaticKVCache
    from lrt.strategies import TrainOutput

KV = tuple[Tensor, Tensor]


def norm(x: Tensor) -> Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate halves of the head dim. x: (B, T, H, D); cos, sin: (T, D/2)."""
    d = x.size(-1) // 2
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class PassOutput(NamedTuple):
    """What one pass returns.

    hidden: (B, T, C) RMS-normed final states (input of the head).
    source: (B, T, C) RMS-normed source-layer states (memory of the next position).
    kv: per layer (K, V), each (B, H, T_kv, D): the fresh K/V (plain pass), the buffer with this
        pass's rows written in (buffer pass), or the cache up to the new length (cache pass).
    pre: only with `capture=True`: per layer (k_local, v_local, gate) at this pass's positions,
        k_local pre-RoPE (B, T, H, D), gate (B, T, H) or None; used by the K/V refresh. `gate`
        is sigmoid(Wg RMSNorm(x)), the gate g = GATE_SCALE * gate without its constant factor
        (which `project_kv` folds into its multiply-add).
    """

    hidden: Tensor
    source: Tensor
    kv: list[KV]
    pre: list[tuple[Tensor, Tensor, Tensor | None]] | None


class FusedWeights(NamedTuple):
    """Stacked copies of projection weights, for kernel-count-bound decoding
    (`LRT.fused_projection_weights`, `forward(..., fused_weights=...)`).

    layers: per layer [Wq; Wk; Wv] (+ the gate weight Wg with the KV projection), (3C (+H), C).
    memory_kv: [Wk_m; Wv_m] of every memory projection (one for `shared`, one per layer for
        `layerwise`), (2 * n_proj * C, C): all layers' k_fb, v_fb from one matmul; None
        without the KV projection.
    """

    layers: list[Tensor]
    memory_kv: Tensor | None


class _AttnCtx(NamedTuple):
    """Attention mode of a pass (see module docstring). Shared by every layer of the pass."""

    q_pos: Tensor | None  # (T,) original positions, None for a plain pass / single-token decode
    positions: Tensor | None  # rows of the buffer this pass writes (buffer pass only)
    cache: KVCache | StaticKVCache | None
    mask: Any  # the pass's position mask (BlockMask or dense bool), built once before the layers


# ---------------------------------------------------------------------------------------------
# Blocks


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LRTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        c = cfg.n_embd
        self.c_q = nn.Linear(c, c, bias=False)
        self.c_k = nn.Linear(c, c, bias=False)
        self.c_v = nn.Linear(c, c, bias=False)
        self.c_proj = nn.Linear(c, c, bias=False)

    def project_kv(self, k_local: Tensor, v_local: Tensor, cos: Tensor, sin: Tensor, fb: Any) -> KV:
        """Mix memory into local k/v, then RoPE + QK-norm on k. Returns (B, H, T, D) each.

        fb = (sigmoid(Wg RMSNorm(x)) (B, T, H), k_fb, v_fb (B, T, H, D)): k + 2 sigmoid * k_fb
        as one multiply-add (addcmul) per tensor, the gate's factor 2 folded in."""
        k, v = k_local, v_local
        if fb is not None:
            s, k_fb, v_fb = fb
            s = s.unsqueeze(-1).to(k.dtype)
            k = torch.addcmul(k, s, k_fb.to(k.dtype), value=GATE_SCALE)
            v = torch.addcmul(v, s, v_fb.to(v.dtype), value=GATE_SCALE)
        # autocast may run rms_norm in float32; keep q/k/v (and the cache) in the matmul dtype
        k = norm(apply_rotary(k, cos, sin)).to(v.dtype)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        xn: Tensor,
        cos: Tensor,
        sin: Tensor,
        gate_w: Tensor | None,
        mem_kv: KV | None,
        ctx: _AttnCtx,
        kv_in: KV | None,
        fused_w: Tensor | None = None,
    ):
        """gate_w: the pathway's gate weight (H, C) of this layer and mem_kv its memory
        (k_fb, v_fb), each (B, T, H, D); both None without the KV projection. kv_in: this
        layer's (K, V) buffer in a buffer pass (the rows are written into a copy), else None.
        fused_w: [Wq; Wk; Wv; Wg] stacked (3C (+H), C) so q, k, v and the gate logits come from
        one matmul (`LRT.fused_projection_weights`, decoding). Nothing here depends on the layer
        index except the decode cache's slot."""
        b, t, c = xn.shape
        shape = (b, t, self.n_head, self.head_dim)
        if fused_w is not None:
            proj = F.linear(xn, fused_w)
            q_lin, k_lin, v_lin = proj[..., :c], proj[..., c : 2 * c], proj[..., 2 * c : 3 * c]
            gate_logits = proj[..., 3 * c :] if gate_w is not None else None
        else:
            q_lin, k_lin, v_lin = self.c_q(xn), self.c_k(xn), self.c_v(xn)
            gate_logits = F.linear(xn, gate_w) if gate_w is not None else None
        fb = None
        if mem_kv is not None:
            fb = (torch.sigmoid(gate_logits), *mem_kv)  # GATE_SCALE applied in project_kv
        k_local, v_local = k_lin.reshape(shape), v_lin.reshape(shape)
        q = norm(apply_rotary(q_lin.reshape(shape), cos, sin)).to(v_local.dtype)
        q = q.transpose(1, 2)  # (B, H, T, D)
        k, v = self.project_kv(k_local, v_local, cos, sin, fb)  # (B, H, T, D)
        if ctx.cache is not None:
            k_all, v_all = ctx.cache.update(self.layer_idx, k, v)
        elif kv_in is not None:
            k_all = _write_rows(kv_in[0], ctx.positions, k)
            v_all = _write_rows(kv_in[1], ctx.positions, v)
        else:
            k_all, v_all = k, v
        if ctx.q_pos is None:
            y = causal_attention(q, k_all, v_all)
        else:
            y = masked_attention(q, k_all, v_all, ctx.q_pos, mask=ctx.mask)
        y = self.c_proj(y.transpose(1, 2).reshape(b, t, -1))
        gate = fb[0] if fb is not None else None
        return y, (k_all, v_all), (k_local, v_local, gate)


def _write_rows(buf: Tensor, positions: Tensor, rows: Tensor) -> Tensor:
    """A copy of buf (B, H, T, D) with rows (B, H, Tp, D) written at `positions` (one
    index_copy). The copy is laid out (B, T, H, D) in memory like the plain pass's K/V (which
    are transposed views), so every buffer a pass sees has the same strides and a compiled
    pass does not recompile between the first subset pass and the later ones."""
    out = buf.transpose(1, 2).index_copy(1, positions, rows.transpose(1, 2).to(buf.dtype))
    return out.transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, cfg: LRTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: LRTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp = MLP(cfg)


# ---------------------------------------------------------------------------------------------
# Model


class LRT(nn.Module):
    """Latent Recurrent Transformer (`cfg.pathway="none"`: the plain baseline).

    Parameters: `wte` (embedding), `blocks[i].attn.c_{q,k,v,proj}`, `blocks[i].mlp.c_{fc,proj}`,
    `lm_head`, and with a pathway `pathway.gamma` (L,), `pathway.{k,v}_proj[j]`,
    `pathway.gates[i]`. Buildable on the meta device; call `init_weights()` after `to_empty`.
    """

    def __init__(self, cfg: LRTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.pathway = LatentPathway(cfg) if cfg.has_pathway else None
        cos, sin = self._rotary_tables(device=self.wte.weight.device)
        self.register_buffer("cos", cos, persistent=False)  # (rope_len, head_dim/2)
        self.register_buffer("sin", sin, persistent=False)

    def _rotary_tables(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        cfg = self.config
        freqs = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (cfg.rope_base ** (freqs / cfg.head_dim))
        t = torch.arange(cfg.rope_len, dtype=torch.float32, device=device)
        angles = torch.outer(t, inv_freq)
        return angles.cos(), angles.sin()

    @torch.no_grad()
    def init_weights(self) -> None:
        """All initialisation (nanochat): wte ~ N(0, 1), lm_head ~ N(0, 0.001), block inputs
        uniform with std 1/sqrt(n_embd), output projections (attn and MLP c_proj) zero; pathway
        see `LatentPathway.init_weights`; rotary tables recomputed (meta-device builds)."""
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        s = math.sqrt(3.0 / self.config.n_embd)  # uniform bound with the std of N(0, 1/C)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        if self.pathway is not None:
            self.pathway.init_weights()
        cos, sin = self._rotary_tables(device=self.wte.weight.device)
        self.cos, self.sin = cos, sin  # assigning a tensor to a buffer name updates the buffer

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    # -----------------------------------------------------------------------------------------
    # One pass

    def forward(
        self,
        idx: Tensor,
        memory: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        buffer: list[KV] | None = None,
        cache: KVCache | StaticKVCache | None = None,
        capture: bool = False,
        mask_key: Hashable | None = None,
        attn_mask: Any = None,
        fused_weights: FusedWeights | None = None,
    ) -> PassOutput:
        """One pass over `idx` (B, T) with memory (B, T, C) (None means zeros).

        Args:
            positions: (T,) original positions of `idx` in a longer sequence; required with
                `buffer` (the rows written and the causal mask), ignored otherwise.
            buffer: per layer (K, V) (B, H, T_full, D) from earlier passes. Not modified: the
                returned `kv` are new tensors with this pass's rows written in (autograd flows
                through both the old rows and the new ones).
            cache: decoding cache; the pass's K/V are appended in place at `cache.pos`
                (`KVCache`), or written at the device-side position of a `StaticKVCache`.
            capture: also return per-layer (k_local, v_local, gate) for the K/V refresh.
            mask_key: hashable name of the position mask (lets FlexAttention cache it).
            attn_mask: the buffer pass's mask, prebuilt with `lrt.attention.attention_mask(
                positions, T, T_full, device, mask_key)` outside compiled code (the strategies
                do); None builds it here, once, before the layer loop. Every layer shares it.
            fused_weights: from `fused_projection_weights()`: stacked q/k/v/gate and memory
                K/V projection weights, fewer matmuls (a snapshot; rebuild it after the weights
                change).
        """
        cfg = self.config
        b, t = idx.shape
        if cache is not None:  # rotary rows and mask come from the cache (dynamic or static)
            cos, sin, q_pos, mask = cache.pass_context(self.cos, self.sin, t, cfg.rope_len)
            ctx = _AttnCtx(q_pos, None, cache, mask)
        elif buffer is not None:
            if positions is None:
                raise ValueError("a buffer pass needs `positions`")
            cos, sin = self.cos[positions], self.sin[positions]
            if attn_mask is None:  # at most one graph break per pass (flex), never per layer
                tk = buffer[0][0].size(2)
                attn_mask = attention_mask(positions, t, tk, idx.device, mask_key)
            ctx = _AttnCtx(positions, positions, None, attn_mask)
        else:
            if t > cfg.rope_len:
                raise ValueError(f"sequence longer than the rotary table ({t} > {cfg.rope_len})")
            cos, sin = self.cos[:t], self.sin[:t]
            ctx = _AttnCtx(None, None, None, None)

        pw = self.pathway
        if pw is not None and memory is None:
            memory = torch.zeros(b, t, cfg.n_embd, device=idx.device, dtype=self.wte.weight.dtype)
        mem_kv = None
        if pw is not None:
            stacked = None if fused_weights is None else fused_weights.memory_kv
            mem_kv = pw.all_memory_kv(memory, stacked)

        x = norm(self.wte(idx))  # (B, T, C)
        source = None
        kvs: list[KV] = []
        pres = [] if capture else None
        for i, block in enumerate(self.blocks):
            if pw is not None:
                x = pw.inject(x, memory, i)
            xn = norm(x)
            y, kv, pre = block.attn(
                xn,
                cos,
                sin,
                pw.gates[i].weight if mem_kv is not None else None,
                mem_kv[i] if mem_kv is not None else None,
                ctx,
                None if buffer is None else buffer[i],
                None if fused_weights is None else fused_weights.layers[i],
            )
            x = x + y
            x = x + block.mlp(norm(x))
            kvs.append(kv)
            if capture:
                pres.append(pre)
            if i == cfg.source_index:
                source = norm(x)
        hidden = source if cfg.source_index == cfg.n_layer - 1 else norm(x)
        if cache is not None:
            cache.advance(t)
        return PassOutput(hidden, source, kvs, pres)

    @torch.no_grad()
    def fused_projection_weights(self, out: FusedWeights | None = None) -> FusedWeights:
        """Stacked projection weights (`FusedWeights`) for `forward(..., fused_weights=...)`:
        per layer one matmul for q, k, v and the gate instead of three or four, and one for
        every layer's memory K/V instead of 2 (shared) or 2L (layerwise), which matters when
        decoding is bound by the number of kernels. A snapshot of the current weights; `out`
        (a previous result) is refreshed in place, so captured graphs stay valid."""
        pw = self.pathway
        with_kv = pw is not None and pw.k_proj is not None

        def stack(parts: list[Tensor], dst: Tensor | None) -> Tensor:
            return torch.cat(parts) if dst is None else torch.cat(parts, out=dst)

        layers = []
        for i, block in enumerate(self.blocks):
            a = block.attn
            parts = [a.c_q.weight, a.c_k.weight, a.c_v.weight]
            if with_kv:
                parts.append(pw.gates[i].weight)
            layers.append(stack(parts, None if out is None else out.layers[i]))
        memory_kv = None
        if with_kv:
            parts = [w for kp, vp in zip(pw.k_proj, pw.v_proj, strict=True)
                     for w in (kp.weight, vp.weight)]  # fmt: skip
            memory_kv = stack(parts, None if out is None else out.memory_kv)
        return FusedWeights(layers, memory_kv)

    def head(self, hidden: Tensor) -> Tensor:
        """Logits (float32, soft-capped) from normed final states: (B, T, C) -> (B, T, V)."""
        logits = self.lm_head(hidden).float()
        c = self.config.softcap
        return c * torch.tanh(logits / c) if c > 0 else logits

    # -----------------------------------------------------------------------------------------
    # Strategy front ends (implemented in lrt/strategies.py)

    def forward_train(
        self, idx: Tensor, targets: Tensor, strategy: StrategyConfig | None = None
    ) -> TrainOutput:
        """Training loss of one batch under `strategy` (default: "none"). See strategies.py."""
        from lrt.strategies import forward_train

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
        from lrt.strategies import token_losses

        return token_losses(self, idx, targets, mode, strategy or StrategyConfig())

    def logits(
        self, idx: Tensor, mode: str = "init", strategy: StrategyConfig | None = None
    ) -> Tensor:
        """Logits (B, T, V) under `mode` (same modes as `token_losses`). No gradients."""
        from lrt.strategies import mode_logits

        return mode_logits(self, idx, mode, strategy or StrategyConfig())
