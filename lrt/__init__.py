"""Latent Recurrent Transformer model library (torch only).

Read bottom-up: `config`, `attention`, `recurrence` (the memory pathway's parameters),
`backbone` (one pass); `passes` (pass schedules), `static_decode`, `decode`, `strategies`
(losses and evaluation modes); `model` (`LRT`: the backbone + front ends), `interop`
(nanochat checkpoints). Each module imports only modules listed before it.

>>> import torch
>>> from lrt import LRT, LRTConfig, StrategyConfig
>>> cfg = LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2, pathway="shared")
>>> model = LRT(cfg); model.init_weights()
>>> idx = torch.randint(0, 97, (2, 16))
>>> out = model.forward_train(idx, idx, StrategyConfig(name="interleaved", subsets=2))
>>> len(out.pass_losses)
3
"""

from lrt.backbone import PassOutput
from lrt.config import LRTConfig, StrategyConfig
from lrt.model import LRT
from lrt.recurrence import shift_right
from lrt.strategies import StrategyStep, TrainOutput

__all__ = [
    "LRT",
    "LRTConfig",
    "PassOutput",
    "StrategyConfig",
    "StrategyStep",
    "TrainOutput",
    "shift_right",
]
