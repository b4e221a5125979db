"""Latent Recurrent Transformer model library (torch only).

>>> import torch
>>> from lrt import LRT, LRTConfig, StrategyConfig
>>> cfg = LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2, pathway="shared")
>>> model = LRT(cfg); model.init_weights()
>>> idx = torch.randint(0, 97, (2, 16))
>>> out = model.forward_train(idx, idx, StrategyConfig(name="interleaved", subsets=2))
>>> len(out.pass_losses)
3
"""

from lrt.config import LRTConfig, StrategyConfig
from lrt.model import LRT, PassOutput
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
