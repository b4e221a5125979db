"""Batch sizes for exact sequential scoring: from a memory budget, not from training's batch.

Exact decoding runs one model step per position for the whole batch, so its cost is
`max length x steps` whatever the batch holds, and on small models each step is bound by
per-call overhead: on two CPU cores the demo model decodes about 220 tokens/s at batch 1 and
1650 at batch 32. Scoring sequentially at training's `device_batch_size` (4 in the demo) left
most of that on the table. Here the batch grows until the memory it needs reaches a budget:

- `sequential_bytes_per_row`: what one sequence of length L costs while decoding: its K/V
  cache (2 x layers x L x kv width), the (L, V) logits that CORE's scorer stacks, and a few
  step activations, in the model's dtype (float32 logits).
- `sequential_rows`: rows of length L that fit `budget_bytes`.
- `length_batches`: CORE sequences sorted by length, longest first, cut into batches whose
  rows x longest length stays within a token budget, so short sequences share a batch and a
  batch never decodes many padding steps.

    >>> length_batches([3, 9, 4, 8], max_rows=8, max_tokens=18)
    [[1, 3], [2, 0]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

DEFAULT_BUDGET_MB = 1024
"""Memory for one sequential-scoring batch when `eval.sequential_memory_mb` is not set."""
MAX_ROWS = 256
"""Rows per sequential batch at most: past this, per-step overhead is already amortised."""
BUDGET_ENV = "LRT_EVAL_SEQUENTIAL_MEMORY_MB"


CUDA_FREE_FRACTION = 0.25
"""On CUDA without a setting: this share of the memory free when evaluation starts."""


def budget_bytes(eval_settings: Any = None, device: Any = None) -> int:
    """The sequential-scoring memory budget: `eval.sequential_memory_mb` when that setting
    exists, else $LRT_EVAL_SEQUENTIAL_MEMORY_MB, else a quarter of the free memory on a CUDA
    `device`, else `DEFAULT_BUDGET_MB`."""
    mb = getattr(eval_settings, "sequential_memory_mb", None) or os.environ.get(BUDGET_ENV)
    if mb:
        return int(float(mb) * (1 << 20))
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_FRACTION)
    return DEFAULT_BUDGET_MB << 20


def sequential_bytes_per_row(
    config: Any, length: int, *, dtype_bytes: int = 4, stacked_logits: bool = True
) -> int:
    """Bytes one sequence of `length` tokens needs while it is decoded exactly (see the module
    docstring); `config` is an `lrt.LRTConfig`. `stacked_logits`: the (L, V) logits are kept
    (CORE's scorer) rather than one step's (BPB's `sequential_losses`)."""
    kv_width = int(config.n_kv_head) * int(config.head_dim)
    cache = 2 * int(config.n_layer) * length * kv_width * dtype_bytes
    logits = length * int(config.vocab_size) * 4 if stacked_logits else 0  # float32
    step = 32 * int(config.n_embd) * dtype_bytes + 2 * int(config.vocab_size) * 4
    return cache + logits + step


def sequential_rows(
    config: Any,
    length: int,
    budget: int,
    *,
    max_rows: int = MAX_ROWS,
    stacked_logits: bool = True,
) -> int:
    """Rows of `length` tokens that fit `budget` bytes (at least 1, at most `max_rows`).

    >>> from types import SimpleNamespace as NS
    >>> cfg = NS(n_kv_head=2, head_dim=64, n_layer=2, vocab_size=2048, n_embd=128)
    >>> sequential_rows(cfg, 256, 64 << 20)
    25
    """
    per_row = max(
        1, sequential_bytes_per_row(config, max(1, length), stacked_logits=stacked_logits)
    )
    return max(1, min(max_rows, budget // per_row))


def length_batches(lengths: Sequence[int], *, max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` in batches: longest first, each batch's rows x its longest length at
    most `max_tokens` (a sequence longer than that goes alone) and at most `max_rows` rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            cur = batches[-1]
            longest = lengths[cur[0]]  # sorted: the first is the longest
            if len(cur) < max_rows and (len(cur) + 1) * longest <= max_tokens:
                cur.append(i)
                continue
        batches.append([i])
    return batches
