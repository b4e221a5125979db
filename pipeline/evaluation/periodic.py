"""The validation loss and BPB training logs every `train.eval_every` steps (all ranks).

    >>> metrics = periodic_bpb(model, "data/tokens", token_bytes=tb, eval_tokens=65536,
    ...                        batch_size=8, seq_len=1024, device=device)  # doctest: +SKIP
    >>> sorted(metrics)                                                    # doctest: +SKIP
    ['val_bpb', 'val_loss']

A lighter cousin of `pipeline.evaluation.bpb.evaluate_bpb` (the eval stage's): the sums stay on
the device and are all-reduced over the DDP ranks, and there are no per-position tables. It
scores with the same per-mode loss functions (`lrt_loss_fns`) and ratio (`bits_per_byte`), but
its numbers are not `BPBMeter`'s: here the nats of every non-ignored target are summed (special
tokens too, which count 0 bytes) and `val_loss` averages over all of them, where `BPBMeter`
counts only targets of at least one byte. (Kept so: training's logged numbers stay comparable
with earlier runs.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lrt.config import StrategyConfig
from pipeline.evaluation.bpb import bits_per_byte, lrt_loss_fns
from pipeline.train.device import DistInfo, autocast_ctx


@torch.no_grad()
def periodic_bpb(
    model: nn.Module,
    data_dir: str | Path,
    *,
    token_bytes: np.ndarray | torch.Tensor | None,
    eval_tokens: int,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    modes: tuple[str, ...] = ("init",),
    strategy: StrategyConfig | None = None,
    info: DistInfo = DistInfo(),
    tokenizer_hash: str | None = None,
) -> dict[str, float]:
    """Validation loss (nats/token) and BPB on the first `eval_tokens` of the val split.

    BPB = sum of CE nats / (ln 2 * sum of UTF-8 bytes of the target tokens); special tokens
    count 0 bytes. Ranks score disjoint windows and the sums are all-reduced.

    Returns:
        {"val_loss": ..., "val_bpb": ...} for mode "init", plus `val_bpb_<mode>` for others.
    """
    from pipeline.data.loader import validation_loader

    tb = (
        None
        if token_bytes is None
        else torch.as_tensor(np.asarray(token_bytes), dtype=torch.float64)
    )
    tb = tb.to(device) if tb is not None else None
    loader = validation_loader(
        data_dir,
        batch_size,
        seq_len,
        tokenizer_hash=tokenizer_hash,
        rank=info.rank,
        world_size=info.world_size,
    )
    n_batches = max(1, math.ceil(eval_tokens / (batch_size * seq_len * info.world_size)))
    # (nats, bytes, tokens) per mode
    sums = torch.zeros(len(modes), 3, dtype=torch.float64, device=device)
    # `model.token_losses(x, y, mode=, strategy=)` per mode (static=False: never the CUDA-graph
    # sequential decoder).
    loss_fns = lrt_loss_fns(model, modes, strategy, static=False)
    was_training = model.training
    model.eval()
    try:
        for i, (inputs, targets) in enumerate(loader):
            if i >= n_batches:
                break
            # Blocking copies: nothing below synchronises, and the loader may reuse the pinned
            # slot once `prefetch` more batches are drawn.
            x = inputs.to(device).long()
            y = targets.to(device).long()
            valid = y >= 0
            nbytes = tb[y.clamp(min=0)] * valid if tb is not None else valid.double()
            for j, mode in enumerate(modes):
                with autocast_ctx(device, dtype):
                    nats = loss_fns[mode](x, y)  # (B, T)
                sums[j, 0] += nats.double()[valid].sum()
                sums[j, 1] += nbytes.sum()
                sums[j, 2] += valid.sum()
    finally:
        model.train(was_training)
        loader.close()
    if info.enabled:
        dist.all_reduce(sums)
    out: dict[str, float] = {}
    for j, mode in enumerate(modes):
        nats, nbytes, ntok = sums[j].tolist()
        key = "" if mode == "init" else f"_{mode}"
        if ntok == 0:
            continue
        if mode == "init":
            out["val_loss"] = nats / ntok
        if tb is not None and nbytes > 0:
            out[f"val_bpb{key}"] = bits_per_byte(nats, nbytes)
    return out
