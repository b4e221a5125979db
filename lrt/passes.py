"""Pass schedules: how one batch is turned into passes of `Backbone.forward`.

The losses over these passes are in `lrt.strategies`; decoding's approximate prefill uses
`run_interleaved` too.

Every strategy produces a list of *logical passes*; each logical pass is a list of *pieces*
(positions, normed final states). A position's "merged" output is the one written by the last
piece that covered it. Notation: B batch, T length, C width, m = shift_right(source states).

- none:         one plain pass, m = 0.                                    1 logical pass.
- interleaved:  init pass (m = 0) over all T positions builds the buffer: every layer's K/V and
                the source states. Then for s = 0..S-1, in order, the subset P_s = {t: t mod S
                == s} is recomputed with m_t = source[t-1] read from the latest states; its
                queries attend to the buffer with their own rows freshly written, causally by
                original position (key <= query); the pass writes its K/V rows and source
                states back. Loss = mean of the S+1 pass losses (each pass: mean over its
                positions), or a weighted mean with `loss_weights`.
                detach: each subset pass reads the buffer and source states detached (its own
                rows still get gradients); refresh_kv: before each subset pass, the K/V rows of
                positions no subset pass has visited yet are recomputed with the latest memory
                (see `refresh_kv`).
- multi_refine: K+1 full passes; pass 0 has m = 0, pass k uses the source states of pass k-1
                (Jacobi). Loss = mean (or weighted mean) of the K+1 pass losses. detach cuts the
                gradient between passes.
- chunked:      chunks [0, C), [C, 2C), ... in order, each one pass over its C positions that
                attends to the K/V of earlier chunks (exact, already computed) and its own.
                Memory crosses chunk boundaries only: m_t = source[t-1] when t is the first
                position of a chunk (t = cC, c > 0), else 0. So C = T is the init pass and C = 1
                is exact sequential. One logical pass. detach: truncated BPTT at chunk borders.
- sequential:   chunked with C = 1: exact token-by-token recurrence (slow; verification).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lrt.attention import causal_masks, window_masks
from lrt.backbone import KV, Backbone
from lrt.config import StrategyConfig
from lrt.recurrence import shift_right


@dataclass
class Piece:
    """Part of a logical pass: final states `hidden` (B, Tp, C) at `positions` (Tp,) or all."""

    positions: Tensor | None
    hidden: Tensor


@dataclass
class Run:
    """All passes of one strategy on one batch, plus the state the last pass left behind."""

    passes: list[list[Piece]]
    source: Tensor  # (B, T, C) latest source states (memory of position t+1 is source[:, t])
    buffer: list[KV]  # per layer (K, V) (B, H, T, D), latest rows


# ---------------------------------------------------------------------------------------------
# Pass schedules


def _zeros_memory(model: Backbone, idx: Tensor) -> Tensor:
    b, t = idx.shape
    return torch.zeros(b, t, model.config.n_embd, device=idx.device, dtype=model.wte.weight.dtype)


def _detached(buffer: list[KV]) -> list[KV]:
    return [(k.detach(), v.detach()) for k, v in buffer]


def _pad_rows(kv: Tensor, pad: int) -> Tensor:
    """(B, H, T, D) -> (B, H, T + pad, D), zero rows appended, laid out (B, T, H, D) in memory
    like every other K/V buffer (see `lrt.model._write_rows`)."""
    return F.pad(kv.transpose(1, 2), (0, 0, 0, 0, 0, pad)).transpose(1, 2)


def _plain(model: Backbone, idx: Tensor, memory: Tensor, capture: bool = False):
    """A plain pass with its masks built here, outside a compiled model (no graph break)."""
    masks = causal_masks(idx.size(1), model.window_sizes, idx.device)
    return model(idx, memory, capture=capture, attn_mask=masks)


def run_none(model: Backbone, idx: Tensor) -> Run:
    out = _plain(model, idx, _zeros_memory(model, idx))
    return Run([[Piece(None, out.hidden)]], out.source, out.kv)


def refresh_kv(
    model: Backbone,
    buffer: list[KV],
    pre: list[tuple[Tensor, Tensor, Tensor | None]],
    source: Tensor,
    stale: Tensor,
) -> list[KV]:
    """Recompute the buffer rows at `stale` (T,) bool positions with memory shift_right(source).

    The authors' `interleaved_kv_refresh` (their `_refresh_kv_buffer`): the init pass's
    memory-free parts of every row (`pre`: k_base, v_base and the memory gate, see
    `PassOutput.pre`) are kept; only the memory terms g * Wk_m m and g * Wv_m m change, then
    RoPE and QK-norm are re-applied to k. They add deltas to the captured rows, we recompute
    k_base + g * Wk_m m_new: the same numbers up to rounding. Cost per layer: two C x Ckv
    projections over T rows plus RoPE and QK-norm -- no attention, no MLP. Residual injection
    is not refreshed (it would need the whole layer stack). A no-op without the KV projection.
    """
    pw = model.pathway
    if pw is None or pw.k_proj is None:
        return buffer
    t = source.size(1)
    cos, sin = model.cos[:t], model.sin[:t]
    mem_kv = pw.all_memory_kv(shift_right(source))
    keep = stale.view(1, 1, t, 1)
    out = []
    for i, ((kb, vb), (k_loc, v_loc, g)) in enumerate(zip(buffer, pre, strict=True)):
        k, v = model.blocks[i].attn.project_kv(k_loc, v_loc, cos, sin, (g, *mem_kv[i]))
        out.append((torch.where(keep, k.to(kb.dtype), kb), torch.where(keep, v.to(vb.dtype), vb)))
    return out


def run_interleaved(
    model: Backbone, idx: Tensor, subsets: int, detach: bool = False, refresh: bool = False
) -> Run:
    b, t = idx.shape
    subset_pos = [torch.arange(s, t, subsets, device=idx.device) for s in range(min(subsets, t))]
    # every subset pass's mask, built here at once: outside the (compilable) passes, shared by
    # all layers of a pass, and one graph break per step when the whole step is compiled
    masks = window_masks(
        subset_pos,
        t,
        model.window_sizes,
        idx.device,
        [("stride", s, subsets, t) for s in range(len(subset_pos))],
    )
    init = _plain(model, idx, _zeros_memory(model, idx), capture=refresh)
    passes = [[Piece(None, init.hidden)]]
    source, buffer = init.source, init.kv
    pre = init.pre
    if refresh and detach:
        pre = [(k.detach(), v.detach(), None if g is None else g.detach()) for k, v, g in pre]
    visited = torch.zeros(t, dtype=torch.bool, device=idx.device)
    for pos, mask in zip(subset_pos, masks, strict=True):
        read_src, read_buf = (source.detach(), _detached(buffer)) if detach else (source, buffer)
        if refresh:
            read_buf = refresh_kv(model, read_buf, pre, read_src, ~visited)
        memory = shift_right(read_src)[:, pos]  # (B, T/S, C): source at t-1
        out = model(idx[:, pos], memory, positions=pos, buffer=read_buf, attn_mask=mask)
        buffer = out.kv
        source = source.index_copy(1, pos, out.source)
        visited = visited.index_fill(0, pos, True)
        passes.append([Piece(pos, out.hidden)])
    return Run(passes, source, buffer)


def run_multi_refine(model: Backbone, idx: Tensor, steps: int, detach: bool = False) -> Run:
    memory = _zeros_memory(model, idx)
    passes = []
    for _ in range(steps + 1):
        out = _plain(model, idx, memory)
        passes.append([Piece(None, out.hidden)])
        memory = shift_right(out.source.detach() if detach else out.source)
    return Run(passes, out.source, out.kv)


def run_chunked(model: Backbone, idx: Tensor, chunk: int, detach: bool = False) -> Run:
    b, t = idx.shape
    c0 = min(chunk, t)
    first = _plain(model, idx[:, :c0], _zeros_memory(model, idx[:, :c0]))
    pieces = [Piece(None if c0 == t else torch.arange(c0, device=idx.device), first.hidden)]
    pad = t - c0
    buffer = [(_pad_rows(k, pad), _pad_rows(v, pad)) for k, v in first.kv]
    source = F.pad(first.source, (0, 0, 0, pad))  # (B, T, C); rows >= c0 unwritten yet
    starts = list(range(c0, t, chunk))
    chunk_pos = [torch.arange(a, min(a + chunk, t), device=idx.device) for a in starts]
    keys = [("range", a, chunk, t) for a in starts]
    masks = window_masks(chunk_pos, t, model.window_sizes, idx.device, keys)
    for start, pos, mask in zip(starts, chunk_pos, masks, strict=True):
        read_src, read_buf = (source.detach(), _detached(buffer)) if detach else (source, buffer)
        memory = F.pad(read_src[:, start - 1 : start], (0, 0, 0, pos.numel() - 1))  # (B, Tc, C)
        out = model(idx[:, pos], memory, positions=pos, buffer=read_buf, attn_mask=mask)
        buffer = out.kv
        source = source.index_copy(1, pos, out.source)
        pieces.append(Piece(pos, out.hidden))
    return Run([pieces], source, buffer)


def run_passes(model: Backbone, idx: Tensor, strategy: StrategyConfig) -> Run:
    """Run the passes of `strategy` on idx (B, T)."""
    name = strategy.name
    if name == "none":
        return run_none(model, idx)
    if name == "interleaved":
        return run_interleaved(model, idx, strategy.subsets, strategy.detach, strategy.refresh_kv)
    if name == "multi_refine":
        return run_multi_refine(model, idx, strategy.refine_steps, strategy.detach)
    if name == "chunked":
        return run_chunked(model, idx, strategy.chunk_size, strategy.detach)
    if name == "sequential":
        return run_chunked(model, idx, 1, strategy.detach)
    raise ValueError(f"unknown strategy {name!r}")


def merged_hidden(run: Run, t: int) -> Tensor:
    """(B, T, C) final states, each position from the last piece that covered it."""
    merged = None
    for pieces in run.passes:
        for p in pieces:
            if p.positions is None:
                merged = p.hidden
            else:
                if merged is None:
                    b, _, c = p.hidden.shape
                    merged = p.hidden.new_zeros(b, t, c)
                merged = merged.index_copy(1, p.positions, p.hidden)
    return merged
