"""One pass of the LRT: a nanochat decoder whose layers can read a latent memory.

The bottom of the library (with `lrt.config`, `lrt.attention` and `lrt.recurrence`): one
`Backbone.forward` call is one *pass*: token ids plus an explicit memory tensor in, normalised
final states, source states (the next memory) and every layer's K/V out. Training strategies
(`lrt.passes`, `lrt.strategies`) and decoding (`lrt.decode`, `lrt.static_decode`) are loops over
passes; `lrt.model.LRT` adds their front ends. A pass runs in one of three attention modes:

- plain:  all positions 0..T-1, causal attention (the baseline / init pass),
- buffer: only positions `positions` of a longer sequence; their fresh K/V rows are written into
          a copy of `buffer` (per layer (B, Hkv, T_full, D)) and they attend to it causally by
          original position (interleaved subsets, chunks),
- cache:  decoding; K/V appended to a `KVCache` in place.
Every mode honours each layer's sliding window (`LRTConfig.window_sizes`).

Backbone (nanochat as the authors' release uses it): pre-norm blocks, parameter-free RMSNorm
(embeddings, QK-norm, before the head), RoPE (base 10000), ReLU^2 MLP, untied embedding/head
with rows padded to `pad_vocab_size_to`, logit softcap, no biases, GQA, sliding windows,
per-layer `resid_lambdas` / `x0_lambdas`, value embeddings on alternating layers.

Parameter names (stable; the optimizer groups by them and `lrt.interop` maps them to nanochat's):

    wte.weight                      (V_pad, C)    token embedding         nanochat transformer.wte
    blocks.{i}.attn.c_q.weight      (C, C)        query projection        transformer.h.{i}.attn.c_q
    blocks.{i}.attn.c_k/c_v.weight  (Ckv, C)      key/value projections   (Ckv = n_kv_head * D)
    blocks.{i}.attn.c_proj.weight   (C, C)        attention output
    blocks.{i}.attn.ve_gate.weight  (Hkv, G)      value-embedding gate    (layers with has_ve)
    blocks.{i}.attn.triple_gate.weight (3 Hkv, G) official arm's gate     (every layer)
    blocks.{i}.mlp.c_fc/c_proj.weight             MLP
    lm_head.weight                  (V_pad, C)    head                    lm_head
    resid_lambdas, x0_lambdas       (L,)          per-layer scalars       resid_lambdas, x0_lambdas
    value_embeds.{i}.weight         (V_pad, Ckv)  value embeddings        value_embeds.{i}
    pathway.gamma                   (L,)          injection scales        interleaved_lambdas
    pathway.k_proj.{j} / v_proj.{j} (Ckv, C)      memory K/V projections  interleaved_(key_)projections
    pathway.gates.{i}.weight        (Hkv, C)      our single gate         (shared/layerwise only)
    pathway.init_value_embeds.{i}   (V_pad, Ckv)  official init VE        interleaved_init_value_embeds

(G = ve_gate_channels, 0 meaning C.) Buildable on the meta device; `init_weights()` after
`to_empty`.

    >>> cfg = LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2, pathway="shared")
    >>> model = Backbone(cfg); model.init_weights()
    >>> idx = torch.randint(0, 97, (2, 16))
    >>> out = model(idx, torch.zeros(2, 16, 64))
    >>> model.head(out.hidden).shape
    torch.Size([2, 16, 97])
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrt.attention import (
    causal_attention,
    causal_masks,
    masked_attention,
    window_masks,
    window_needed,
)
from lrt.config import LRTConfig
from lrt.recurrence import GATE_SCALE, LatentPathway

KV = tuple[Tensor, Tensor]


class Cache(Protocol):
    """What a pass needs from a decoding cache (`lrt.decode.KVCache`,
    `lrt.static_decode.StaticKVCache`)."""

    def pass_context(
        self, cos: Tensor, sin: Tensor, t: int, rope_len: int, windows: list[int]
    ) -> tuple[Tensor, Tensor, Tensor | None, dict[int, Any]]: ...

    def update(self, layer: int, k: Tensor, v: Tensor) -> KV: ...

    def advance(self, t: int) -> None: ...


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
    kv: per layer (K, V), each (B, Hkv, T_kv, D): the fresh K/V (plain pass), the buffer with
        this pass's rows written in (buffer pass), or the cache up to the new length.
    pre: only with `capture=True`: per layer (k_base, v_base, gate) at this pass's positions:
        the pre-RoPE key and the value WITHOUT their memory terms (B, T, Hkv, D), and the
        memory gate's sigmoid (B, T, Hkv) or None, so that k = k_base + 2 gate Wk_m m (then
        RoPE, QK-norm) and v = v_base + 2 gate Wv_m m; used by the K/V refresh. For our
        pathway k_base, v_base are the local k and v (+ the gated value embedding); for the
        official arm g_local k and g_local v + g_ve E[token].
    """

    hidden: Tensor
    source: Tensor
    kv: list[KV]
    pre: list[tuple[Tensor, Tensor, Tensor | None]] | None


class FusedWeights(NamedTuple):
    """Stacked copies of projection weights, for kernel-count-bound decoding
    (`Backbone.fused_projection_weights`, `forward(..., fused_weights=...)`).

    layers: per layer [Wq; Wk; Wv] (+ our pathway's gate weight Wg), (C + 2 Ckv (+ Hkv), C).
    memory_kv: [Wk_m; Wv_m] of every memory projection (one for `shared`, one per layer
        otherwise), (2 * n_proj * Ckv, C): all layers' k_fb, v_fb from one matmul; None
        without the KV projection.
    """

    layers: list[Tensor]
    memory_kv: Tensor | None


class _AttnCtx(NamedTuple):
    """Attention mode of a pass (see module docstring). Shared by every layer of the pass."""

    q_pos: Tensor | None  # (T,) original positions (None: plain pass without windows)
    positions: Tensor | None  # rows of the buffer this pass writes (buffer pass only)
    cache: Cache | None
    masks: dict[int, Any]  # layer window -> mask (BlockMask / dense bool) or None (causal)


# ---------------------------------------------------------------------------------------------
# Blocks


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LRTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.window = cfg.window_sizes[layer_idx]
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        c, ckv = cfg.n_embd, cfg.kv_dim
        self.gate_channels = cfg.gate_channels
        self.c_q = nn.Linear(c, c, bias=False)
        self.c_k = nn.Linear(c, ckv, bias=False)
        self.c_v = nn.Linear(c, ckv, bias=False)
        self.c_proj = nn.Linear(c, c, bias=False)
        g = cfg.gate_channels
        self.ve_gate = nn.Linear(g, cfg.n_kv_head, bias=False) if cfg.has_ve(layer_idx) else None
        official = cfg.pathway == "official"
        self.triple_gate = nn.Linear(g, 3 * cfg.n_kv_head, bias=False) if official else None

    def project_kv(self, k_base: Tensor, v_base: Tensor, cos: Tensor, sin: Tensor, fb: Any) -> KV:
        """Mix memory into k/v, then RoPE + QK-norm on k. Returns (B, Hkv, T, D) each.

        fb = (sigmoid of the memory gate (B, T, Hkv), k_fb, v_fb (B, T, Hkv, D)) or None:
        k_base + 2 sigmoid * k_fb as one multiply-add (addcmul) per tensor, the gate's factor
        2 folded in."""
        k, v = k_base, v_base
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
        ve: Tensor | None = None,
    ):
        """xn: (B, T, C) normed input. gate_w: our pathway's gate weight (Hkv, C) of this layer
        and mem_kv its memory (k_fb, v_fb), each (B, T, Hkv, D); both None without the KV
        projection (the official arm passes mem_kv and no gate_w: its triple gate is here).
        kv_in: this layer's (K, V) buffer in a buffer pass (the rows are written into a copy),
        else None. fused_w: [Wq; Wk; Wv (; Wg)] stacked so q, k, v (and the gate logits) come
        from one matmul (`fused_projection_weights`, decoding). ve: (B, T, Ckv) rows of this
        layer's value embedding (baseline VE, or the official arm's init VE)."""
        b, t, c = xn.shape
        ckv = self.n_kv_head * self.head_dim
        kv_shape = (b, t, self.n_kv_head, self.head_dim)
        if fused_w is not None:
            proj = F.linear(xn, fused_w)
            q_lin, k_lin = proj[..., :c], proj[..., c : c + ckv]
            v_lin = proj[..., c + ckv : c + 2 * ckv]
            gate_logits = proj[..., c + 2 * ckv :] if gate_w is not None else None
        else:
            q_lin, k_lin, v_lin = self.c_q(xn), self.c_k(xn), self.c_v(xn)
            gate_logits = F.linear(xn, gate_w) if gate_w is not None else None
        k_base, v_base = k_lin.view(kv_shape), v_lin.view(kv_shape)
        s_fb = None
        if self.triple_gate is not None:  # official arm: v = gl v + gf v_fb + gv E[tok]
            s_all = torch.sigmoid(self.triple_gate(xn[..., : self.gate_channels]))
            s_local, s_fb, s_ve = s_all.split(self.n_kv_head, dim=-1)  # (B, T, Hkv) each
            g_local = (GATE_SCALE * s_local).unsqueeze(-1)
            k_base = g_local * k_base
            v_base = g_local * v_base
            if ve is not None:
                v_base = torch.addcmul(
                    v_base, s_ve.unsqueeze(-1), ve.view(kv_shape).to(v_base.dtype),
                    value=GATE_SCALE,
                )  # fmt: skip
        elif ve is not None:  # nanochat's value embedding: v += 2 sigmoid(W xn[:G]) E[tok]
            s_ve = torch.sigmoid(self.ve_gate(xn[..., : self.gate_channels])).unsqueeze(-1)
            v_base = torch.addcmul(v_base, s_ve, ve.view(kv_shape).to(v_base.dtype), value=2.0)
        if gate_logits is not None:
            s_fb = torch.sigmoid(gate_logits)
        fb = None
        if mem_kv is not None:
            fb = (s_fb, *mem_kv)  # GATE_SCALE applied in project_kv
        q = norm(apply_rotary(q_lin.view(b, t, self.n_head, self.head_dim), cos, sin))
        q = q.to(v_base.dtype).transpose(1, 2)  # (B, H, T, D)
        k, v = self.project_kv(k_base, v_base, cos, sin, fb)  # (B, Hkv, T, D)
        if ctx.cache is not None:
            k_all, v_all = ctx.cache.update(self.layer_idx, k, v)
        elif kv_in is not None:
            k_all = _write_rows(kv_in[0], ctx.positions, k)
            v_all = _write_rows(kv_in[1], ctx.positions, v)
        else:
            k_all, v_all = k, v
        mask = ctx.masks.get(self.window)
        if mask is None:
            y = causal_attention(q, k_all, v_all)
        else:
            y = masked_attention(q, k_all, v_all, ctx.q_pos, mask=mask, window=self.window)
        y = self.c_proj(y.transpose(1, 2).reshape(b, t, -1))
        return y, (k_all, v_all), (k_base, v_base, fb[0] if fb is not None else None)


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


class Backbone(nn.Module):
    """The network and one pass over it (`cfg.pathway="none"`: the plain baseline). Parameter
    names: see the module docstring. `lrt.model.LRT` is this plus the strategy front ends."""

    def __init__(self, cfg: LRTConfig) -> None:
        super().__init__()
        self.config = cfg
        vp, c, n = cfg.padded_vocab_size, cfg.n_embd, cfg.n_layer
        self.window_sizes = cfg.window_sizes
        self.wte = nn.Embedding(vp, c)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(n))
        self.lm_head = nn.Linear(c, vp, bias=False)
        self.resid_lambdas = nn.Parameter(torch.empty(n)) if cfg.use_resid_lambdas else None
        self.x0_lambdas = nn.Parameter(torch.empty(n)) if cfg.use_x0_residual else None
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(vp, cfg.kv_dim) for i in range(n) if cfg.has_ve(i)}
        )
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
        """All initialisation (nanochat / the authors' fork): wte ~ N(0, 1), lm_head ~
        N(0, 0.001), block inputs and value embeddings uniform with std 1/sqrt(n_embd), output
        projections (attn and MLP c_proj) zero, resid_lambdas 1, x0_lambdas 0.1, gates zero (so
        every gate starts at 2*sigmoid(0) = 1); pathway see `LatentPathway.init_weights`;
        rotary tables recomputed (meta-device builds)."""
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        s = math.sqrt(3.0 / self.config.n_embd)  # uniform bound with the std of N(0, 1/C)
        for block in self.blocks:
            a = block.attn
            for lin in (a.c_q, a.c_k, a.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(a.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            for gate in (a.ve_gate, a.triple_gate):
                if gate is not None:
                    nn.init.zeros_(gate.weight)
        if self.resid_lambdas is not None:
            self.resid_lambdas.fill_(1.0)
        if self.x0_lambdas is not None:
            self.x0_lambdas.fill_(0.1)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
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
        cache: Cache | None = None,
        capture: bool = False,
        mask_key: Hashable | None = None,
        attn_mask: Any = None,
        fused_weights: FusedWeights | None = None,
    ) -> PassOutput:
        """One pass over `idx` (B, T) with memory (B, T, C) (None means zeros).

        Args:
            positions: (T,) original positions of `idx` in a longer sequence; required with
                `buffer` (the rows written and the causal mask), ignored otherwise.
            buffer: per layer (K, V) (B, Hkv, T_full, D) from earlier passes. Not modified: the
                returned `kv` are new tensors with this pass's rows written in (autograd flows
                through both the old rows and the new ones).
            cache: decoding cache; the pass's K/V are appended in place at `cache.pos`
                (`KVCache`), or written at the device-side position of a `StaticKVCache`.
            capture: also return per-layer (k_base, v_base, gate) for the K/V refresh.
            mask_key: hashable name of the position mask (lets FlexAttention cache it).
            attn_mask: the pass's masks, {layer window: mask}, prebuilt outside compiled code
                (the strategies do): for a buffer pass `lrt.attention.window_masks([positions],
                T_full, model.window_sizes, ...)[0]` (a single mask is accepted when no layer's
                window excludes a key), for a plain pass `lrt.attention.causal_masks(T,
                model.window_sizes)`. None builds them here, once, before the layer loop.
            fused_weights: from `fused_projection_weights()`: stacked q/k/v/gate and memory
                K/V projection weights, fewer matmuls (a snapshot; rebuild it after the weights
                change).
        """
        cfg = self.config
        b, t = idx.shape
        windows = self.window_sizes
        if cache is not None:  # rotary rows and masks come from the cache (dynamic or static)
            cos, sin, q_pos, masks = cache.pass_context(
                self.cos, self.sin, t, cfg.rope_len, windows
            )
            ctx = _AttnCtx(q_pos, None, cache, masks)
        elif buffer is not None:
            if positions is None:
                raise ValueError("a buffer pass needs `positions`")
            cos, sin = self.cos[positions], self.sin[positions]
            tk = buffer[0][0].size(2)
            if attn_mask is None:  # at most one graph break per pass (flex), never per layer
                attn_mask = window_masks([positions], tk, windows, idx.device, [mask_key])[0]
            elif not isinstance(attn_mask, dict):
                if any(window_needed(w, tk) for w in windows):
                    raise ValueError(
                        "a single attn_mask cannot serve sliding-window layers; build one per "
                        "window with lrt.attention.window_masks"
                    )
                attn_mask = dict.fromkeys(windows, attn_mask)
            ctx = _AttnCtx(positions, positions, None, attn_mask)
        else:
            if t > cfg.rope_len:
                raise ValueError(f"sequence longer than the rotary table ({t} > {cfg.rope_len})")
            cos, sin = self.cos[:t], self.sin[:t]
            masks = attn_mask if attn_mask is not None else causal_masks(t, windows, idx.device)
            q_pos = None
            if any(m is not None for m in masks.values()):
                q_pos = torch.arange(t, device=idx.device)
            ctx = _AttnCtx(q_pos, None, None, masks)

        pw = self.pathway
        if pw is not None and (memory is None or cfg.zero_memory):
            memory = torch.zeros(b, t, cfg.n_embd, device=idx.device, dtype=self.wte.weight.dtype)
        mem_kv = None
        if pw is not None:
            stacked = None if fused_weights is None else fused_weights.memory_kv
            mem_kv = pw.all_memory_kv(memory, stacked)

        x = norm(self.wte(idx))  # (B, T, C)
        x0 = x
        source = None
        kvs: list[KV] = []
        pres = [] if capture else None
        for i, block in enumerate(self.blocks):
            if self.resid_lambdas is not None:
                x = self.resid_lambdas[i].to(x.dtype) * x
            if self.x0_lambdas is not None:
                x = torch.addcmul(x, self.x0_lambdas[i].to(x.dtype), x0)
            if pw is not None:
                x = pw.inject(x, memory, i)
            key = str(i)
            if key in self.value_embeds:
                ve = self.value_embeds[key](idx)
            elif pw is not None and pw.init_value_embeds is not None:
                ve = pw.init_value_embeds[key](idx)
            else:
                ve = None
            y, kv, pre = block.attn(
                norm(x),
                cos,
                sin,
                pw.gates[i].weight if pw is not None and pw.gates is not None else None,
                mem_kv[i] if mem_kv is not None else None,
                ctx,
                None if buffer is None else buffer[i],
                None if fused_weights is None else fused_weights.layers[i],
                ve,
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
        per layer one matmul for q, k, v and our pathway's gate instead of three or four, and
        one for every layer's memory K/V instead of 2 (shared) or 2L, which matters when
        decoding is bound by the number of kernels. A snapshot of the current weights; `out`
        (a previous result) is refreshed in place, so captured graphs stay valid. (The value-
        embedding and triple gates read only the first ve_gate_channels; they stay separate.)"""
        pw = self.pathway
        with_gate = pw is not None and pw.gates is not None
        with_kv = pw is not None and pw.k_proj is not None

        def stack(parts: list[Tensor], dst: Tensor | None) -> Tensor:
            return torch.cat(parts) if dst is None else torch.cat(parts, out=dst)

        layers = []
        for i, block in enumerate(self.blocks):
            a = block.attn
            parts = [a.c_q.weight, a.c_k.weight, a.c_v.weight]
            if with_gate:
                parts.append(pw.gates[i].weight)
            layers.append(stack(parts, None if out is None else out.layers[i]))
        memory_kv = None
        if with_kv:
            parts = [w for kp, vp in zip(pw.k_proj, pw.v_proj, strict=True)
                     for w in (kp.weight, vp.weight)]  # fmt: skip
            memory_kv = stack(parts, None if out is None else out.memory_kv)
        return FusedWeights(layers, memory_kv)

    def head(self, hidden: Tensor) -> Tensor:
        """Logits (float32, soft-capped) from normed final states: (B, T, C) -> (B, T, V); the
        padded rows of the head are sliced off."""
        logits = self.lm_head(hidden)[..., : self.config.vocab_size].float()
        c = self.config.softcap
        return c * torch.tanh(logits / c) if c > 0 else logits
