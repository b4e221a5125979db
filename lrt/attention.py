"""Attention kernels for the LRT: plain causal, and causal-by-original-position for partial passes.

A partial pass (an interleaved subset, a chunk, one decoded token) has queries at some original
positions `q_pos` and keys at every position 0..Tk-1 of a K/V buffer or cache. Query i may see
key j iff `j <= q_pos[i]` (causal by ORIGINAL position, not by row index).

Backends for the masked case:
- "sdpa": `F.scaled_dot_product_attention` with a dense boolean (Tq, Tk) mask. Works everywhere;
  on CUDA it falls back to the math / memory-efficient kernel (scores materialised per layer).
- "flex": FlexAttention with a cached block mask (near flash speed on CUDA; compiled there).
  On CPU it runs eager and unfused, which is only useful for testing that it agrees with SDPA.
- "auto" (default): flex on CUDA when `torch.nn.attention.flex_attention` imports, else sdpa.
  If flex fails once, we warn and use sdpa from then on.

A pass builds its mask once, before the layer loop (`attention_mask`), and hands the same mask to
every layer's `masked_attention(..., mask=...)`. The flex block mask is host-side bookkeeping
(cached per (mask_key, Tq, Tk, device)) and is built outside compiled code, so a compiled pass
has no graph break per layer (one per layer used to make dynamo recompile per layer index).

    >>> q = torch.randn(1, 2, 3, 8); k = v = torch.randn(1, 2, 6, 8)
    >>> masked_attention(q, k, v, torch.tensor([1, 3, 5])).shape
    torch.Size([1, 2, 3, 8])
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "sdpa", "flex"]

_backend: Backend = "auto"
_flex_failed = False
_flex_fn = None
_block_masks: dict[Hashable, object] = {}


def set_attention_backend(backend: Backend) -> None:
    """Choose the kernel for position-masked attention ("auto", "sdpa" or "flex")."""
    global _backend
    if backend not in ("auto", "sdpa", "flex"):
        raise ValueError(f"attention backend must be auto/sdpa/flex, got {backend!r}")
    _backend = backend


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Ordinary causal attention (no window). q: (B, H, T, D), k, v: (B, Hkv, T, D) ->
    (B, H, T, D).

    With one query row (decoding against a cache) every key is in the past, so no mask.
    """
    k, v = k.to(q.dtype), v.to(q.dtype)
    gqa = q.size(1) != k.size(1)
    if q.size(2) == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if q.size(2) != k.size(2):
        raise ValueError("causal_attention needs Tq == Tk (or Tq == 1); use masked_attention")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)


def window_needed(window: int | None, n_keys: int) -> bool:
    """Whether a left window of `window` keys can exclude any key among n_keys."""
    return window is not None and window < n_keys - 1


def position_mask(q_pos: Tensor, n_keys: int, window: int | None = None) -> Tensor:
    """Boolean (Tq, Tk) mask: True where key position <= query's original position (and, with
    a window, query position - key position <= window)."""
    keys = torch.arange(n_keys, device=q_pos.device).unsqueeze(0)
    q = q_pos.unsqueeze(1)
    mask = keys <= q
    if window_needed(window, n_keys):
        mask = mask & (q - keys <= window)
    return mask


def attention_mask(
    q_pos: Tensor,
    n_queries: int,
    n_keys: int,
    device: torch.device | str | None = None,
    mask_key: Hashable | None = None,
    window: int | None = None,
) -> object:
    """The mask for `masked_attention` of one pass, built once and shared by every layer with
    the same window.

    Returns a flex `BlockMask` (cached per (mask_key, Tq, Tk, device); building it is host-side
    and never traced) when the flex backend is in use, else the dense boolean (Tq, Tk) mask.

    Args:
        q_pos: (Tq,) int64 original positions of the queries.
        n_queries, n_keys: Tq and Tk.
        device: device of the attention inputs (default: q_pos's).
        mask_key: Hashable naming the mask (e.g. ("stride", s, S, T)) so the flex block mask is
            cached without reading `q_pos` back to the host; None keys it by q_pos's values.
        window: left sliding window (keys q_pos - window .. q_pos); None = unlimited.
    """
    device = torch.device(device) if device is not None else q_pos.device
    window = window if window_needed(window, n_keys) else None
    if _use_flex(device):
        try:
            return _block_mask(q_pos, n_queries, n_keys, device, mask_key, window)
        except Exception as exc:  # noqa: BLE001 - any mask-build failure -> dense fallback
            _disable_flex(exc)
    return position_mask(q_pos, n_keys, window)


def attention_masks(
    q_positions: list[Tensor],
    n_keys: int,
    device: torch.device | str | None = None,
    mask_keys: list[Hashable | None] | None = None,
    window: int | None = None,
) -> list[object]:
    """`attention_mask` for several passes at once (e.g. every subset pass of a step), so that
    inside a compiled step the flex masks cost one graph break, not one per pass."""
    if not q_positions:
        return []
    device = torch.device(device) if device is not None else q_positions[0].device
    keys = mask_keys if mask_keys is not None else [None] * len(q_positions)
    window = window if window_needed(window, n_keys) else None
    if _use_flex(device):
        try:
            return _block_mask_list(q_positions, n_keys, device, keys, window)
        except Exception as exc:  # noqa: BLE001 - any mask-build failure -> dense fallback
            _disable_flex(exc)
    return [position_mask(p, n_keys, window) for p in q_positions]


def window_masks(
    q_positions: list[Tensor],
    n_keys: int,
    windows: list[int],
    device: torch.device | str | None = None,
    mask_keys: list[Hashable | None] | None = None,
) -> list[dict[int, object]]:
    """Per pass, {layer window: mask} for every distinct window in `windows` (the model's
    `window_sizes`): what `LRT.forward(attn_mask=...)` takes. Windows that exclude no key among
    n_keys share one unwindowed mask."""
    out: list[dict[int, object]] = [{} for _ in q_positions]
    built: dict[int | None, list[object]] = {}
    for w in dict.fromkeys(windows):
        eff = w if window_needed(w, n_keys) else None
        if eff not in built:
            built[eff] = attention_masks(q_positions, n_keys, device, mask_keys, eff)
        for d, m in zip(out, built[eff], strict=True):
            d[w] = m
    return out


def causal_masks(
    n: int, windows: list[int], device: torch.device | str | None = None
) -> dict[int, object]:
    """{layer window: mask} of a plain causal pass over n positions: None (plain causal
    kernel) where the window excludes no key, else the windowed causal mask (built here,
    outside compiled code, like every other pass mask)."""
    out: dict[int, object] = dict.fromkeys(windows)
    needed = [w for w in out if window_needed(w, n)]
    if needed:
        q_pos = torch.arange(n, device=device)
        for w in needed:
            out[w] = attention_mask(q_pos, n, n, device, ("causal", n), w)
    return out


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor,
    mask_key: Hashable | None = None,
    mask: object | None = None,
    window: int | None = None,
) -> Tensor:
    """Attention of queries at original positions `q_pos` to keys at positions 0..Tk-1.

    Args:
        q: (B, H, Tq, D) queries.
        k, v: (B, Hkv, Tk, D) the full K/V buffer (rows of the current pass already written in).
        q_pos: (Tq,) int64 original positions of the queries.
        mask_key: Hashable naming the mask (e.g. ("stride", s, S, T)) so the flex backend can
            reuse its block mask without reading `q_pos` back to the host.
        mask: the pass's mask from `attention_mask` (a BlockMask runs flex, a boolean tensor
            SDPA); None builds it here (one graph break per call inside compiled code with flex).
            It must have been built with the same `window`.
        window: left sliding window; None = unlimited.

    Returns:
        (B, H, Tq, D).
    """
    k, v = k.to(q.dtype), v.to(q.dtype)
    gqa = q.size(1) != k.size(1)
    if mask is None:
        mask = attention_mask(q_pos, q.size(2), k.size(2), q.device, mask_key, window)
    if not isinstance(mask, Tensor):  # a flex BlockMask
        if not _flex_failed:
            try:
                return _flex_attention(q, k, v, mask)
            except Exception as exc:  # noqa: BLE001 - any kernel/compile failure -> dense fallback
                _disable_flex(exc)
        mask = position_mask(q_pos, k.size(2), window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


# ---------------------------------------------------------------------------------------------
# FlexAttention path


def _use_flex(device: torch.device) -> bool:
    if _flex_failed or _backend == "sdpa":
        return False
    if _backend == "flex":
        return True
    return device.type == "cuda"


def _disable_flex(exc: Exception) -> None:
    global _flex_failed
    if _backend == "flex":
        raise exc
    _flex_failed = True
    warnings.warn(
        f"FlexAttention failed ({type(exc).__name__}: {exc}); using SDPA with a dense mask",
        stacklevel=3,
    )


@torch.compiler.disable  # host-side bookkeeping; called once per pass, before the layer loop
def _block_mask(q_pos: Tensor, tq: int, tk: int, device: torch.device, mask_key, window):
    return _build_block_mask(q_pos, tq, tk, device, mask_key, window)


@torch.compiler.disable  # host-side bookkeeping; once per step for all its buffer passes
def _block_mask_list(q_positions: list[Tensor], tk: int, device: torch.device, mask_keys, window):
    return [
        _build_block_mask(p, p.numel(), tk, device, key, window)
        for p, key in zip(q_positions, mask_keys, strict=True)
    ]


def _build_block_mask(q_pos: Tensor, tq: int, tk: int, device: torch.device, mask_key, window):
    from torch.nn.attention.flex_attention import create_block_mask

    if mask_key is None:
        mask_key = tuple(q_pos.tolist())
    key = (mask_key, tq, tk, str(device), window)
    block_mask = _block_masks.get(key)
    if block_mask is None:
        # a private copy: masks of one pass (one per window) must not share `pos`, or dynamo
        # guards on the aliasing and recompiles when a cached mask (own `pos`) is reused
        pos = q_pos.to(torch.int64).clone()

        if window is None:

            def mask_mod(b, h, q_idx, kv_idx):
                return kv_idx <= pos[q_idx]

        else:

            def mask_mod(b, h, q_idx, kv_idx):
                return (kv_idx <= pos[q_idx]) & (pos[q_idx] - kv_idx <= window)

        block_mask = create_block_mask(
            mask_mod, B=None, H=None, Q_LEN=tq, KV_LEN=tk, device=str(device)
        )
        if len(_block_masks) > 256:  # bounded: one mask per pass shape, a handful per run
            _block_masks.clear()
        _block_masks[key] = block_mask
    return block_mask


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask) -> Tensor:
    global _flex_fn
    from torch.nn.attention.flex_attention import flex_attention

    gqa = q.size(1) != k.size(1)
    if torch.compiler.is_compiling():  # inside a compiled pass: dynamo fuses the kernel itself
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    if _flex_fn is None:
        # Eager callers get a compiled kernel on CUDA; CPU stays eager (unfused, tests only).
        _flex_fn = torch.compile(flex_attention, dynamic=False) if q.is_cuda else flex_attention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager CPU flex warns that it is unfused
        return _flex_fn(q, k, v, block_mask=block_mask, enable_gqa=gqa)
