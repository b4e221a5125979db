"""Training memory: estimated on the meta device and refused before anything is allocated."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lrt.config import LRTConfig
from pipeline.train.device import device_memory


def estimate_training_bytes(model: nn.Module, cfg: LRTConfig, batch: int) -> int:
    """A lower-end estimate of training memory: fp32 weights, gradients and two optimizer
    states per parameter (16 B), plus activations kept for backward (about 16 values of width
    n_embd per layer and the logits, per token, fp32). Works on a meta-device model."""
    params = sum(p.numel() for p in model.parameters())
    tokens = batch * cfg.seq_len
    activations = tokens * (16 * cfg.n_embd * cfg.depth + 2 * cfg.vocab_size) * 4
    return 16 * params + activations


def check_memory(model: nn.Module, cfg: LRTConfig, ts: Any, device: torch.device) -> None:
    """Refuse, before allocation, a model whose estimated training memory exceeds the device
    (or `train.max_memory_gb`)."""
    need = estimate_training_bytes(model, cfg, int(ts.device_batch_size))
    limit_gb = getattr(ts, "max_memory_gb", None)
    limit = int(limit_gb * 2**30) if limit_gb else device_memory(device)
    if need > limit:
        params = sum(p.numel() for p in model.parameters())
        where = "train.max_memory_gb" if limit_gb else f"the {device.type} device"
        raise ValueError(
            f"model of {params / 1e6:,.1f} M parameters (depth={cfg.depth}, n_embd={cfg.n_embd}) "
            f"needs about {need / 2**30:,.1f} GiB to train (weights, gradients, optimizer state, "
            f"activations at device_batch_size={ts.device_batch_size}, seq_len={cfg.seq_len}), "
            f"more than the {limit / 2**30:,.1f} GiB of {where}; reduce model.depth / "
            "model.n_embd / train.device_batch_size, or set train.max_memory_gb"
        )
