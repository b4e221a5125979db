"""Latent Recurrent Transformer model library (torch only).

    >>> from lrt import LRTConfig, LRT, StrategyConfig
    >>> model = LRT(LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2, pathway="shared"))
    >>> model.init_weights()
"""

from lrt.config import LRTConfig, StrategyConfig

__all__ = ["LRTConfig", "StrategyConfig"]
