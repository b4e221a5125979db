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
    """Ordinary causal attention. q, k, v: (B, H, T, D) -> (B, H, T, D).

    With one query row (decoding against a cache) every key is in the past, so no mask.
    """
    k, v = k.to(q.dtype), v.to(q.dtype)
    if q.size(2) == 1:
        return F.scaled_dot_product_attention(q, k, v)
    if q.size(2) != k.size(2):
        raise ValueError("causal_attention needs Tq == Tk (or Tq == 1); use masked_attention")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def position_mask(q_pos: Tensor, n_keys: int) -> Tensor:
    """Boolean (Tq, Tk) mask: True where key position <= query's original position."""
    keys = torch.arange(n_keys, device=q_pos.device)
    return keys.unsqueeze(0) <= q_pos.unsqueeze(1)


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, mask_key: Hashable | None = None
) -> Tensor:
    """Attention of queries at original positions `q_pos` to keys at positions 0..Tk-1.

    Args:
        q: (B, H, Tq, D) queries.
        k, v: (B, H, Tk, D) the full K/V buffer (rows of the current pass already written in).
        q_pos: (Tq,) int64 original positions of the queries.
        mask_key: Hashable naming the mask (e.g. ("stride", s, S, T)) so the flex backend can
            reuse its block mask without reading `q_pos` back to the host.

    Returns:
        (B, H, Tq, D).
    """
    k, v = k.to(q.dtype), v.to(q.dtype)
    if _use_flex(q):
        try:
            return _flex_attention(q, k, v, q_pos, mask_key)
        except Exception as exc:  # noqa: BLE001 - any kernel/compile failure -> dense fallback
            _disable_flex(exc)
    mask = position_mask(q_pos, k.size(2))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---------------------------------------------------------------------------------------------
# FlexAttention path


def _use_flex(q: Tensor) -> bool:
    if _flex_failed or _backend == "sdpa":
        return False
    if _backend == "flex":
        return True
    return q.is_cuda


def _disable_flex(exc: Exception) -> None:
    global _flex_failed
    if _backend == "flex":
        raise exc
    _flex_failed = True
    warnings.warn(
        f"FlexAttention failed ({type(exc).__name__}: {exc}); using SDPA with a dense mask",
        stacklevel=3,
    )


@torch.compiler.disable  # host-side mask bookkeeping: a graph break, then the kernel is traced
def _block_mask(q_pos: Tensor, tq: int, tk: int, device: torch.device, mask_key):
    from torch.nn.attention.flex_attention import create_block_mask

    if mask_key is None:
        mask_key = tuple(q_pos.tolist())
    key = (mask_key, tq, tk, str(device))
    block_mask = _block_masks.get(key)
    if block_mask is None:
        pos = q_pos.to(torch.int64)

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= pos[q_idx]

        block_mask = create_block_mask(
            mask_mod, B=None, H=None, Q_LEN=tq, KV_LEN=tk, device=str(device)
        )
        if len(_block_masks) > 256:  # bounded: one mask per pass shape, a handful per run
            _block_masks.clear()
        _block_masks[key] = block_mask
    return block_mask


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, mask_key) -> Tensor:
    global _flex_fn
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = _block_mask(q_pos, q.size(2), k.size(2), q.device, mask_key)
    if torch.compiler.is_compiling():  # inside a compiled pass: dynamo fuses the kernel itself
        return flex_attention(q, k, v, block_mask=block_mask)
    if _flex_fn is None:
        # Eager callers get a compiled kernel on CUDA; CPU stays eager (unfused, tests only).
        _flex_fn = torch.compile(flex_attention, dynamic=False) if q.is_cuda else flex_attention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager CPU flex warns that it is unfused
        return _flex_fn(q, k, v, block_mask=block_mask)
