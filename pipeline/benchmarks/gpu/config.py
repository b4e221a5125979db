"""The GPU script's sizes (`sizes`: d12 on the device, tiny with `--smoke`), the models
and strategies its training and decoding sections time, and the repository root.

The models are `lrt.LRTConfig`'s defaults, i.e. nanochat's backbone (window pattern SSSL, value
embeddings, resid/x0 lambdas, vocab padded to 64, n_kv_head = n_head as nanochat's d12): the
baseline (pathway none), our shared pathway, and the authors' arm (pathway official: triple
gate, per-layer init value embeddings). At d12 the vocabulary is nanochat's 32768 (2^15).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


def sizes(smoke: bool, quick_quality: bool = False) -> dict[str, Any]:
    if smoke:
        model = dict(vocab_size=512, depth=2, seq_len=64, n_embd=64, n_head=2)
        return dict(
            model=model,
            batch_size=2,
            chunk=16,
            eager=dict(steps=2, warmup=1),
            compiled=dict(steps=2, warmup=1, backend="eager"),
            decode=dict(tokens=8, warmup=2, batches=[1, 4], rounds=1, modes=["eager", "static"]),
            loader=dict(batch_size=2, seq_len=64, batches=5),
            quality=dict(
                model=dict(vocab_size=8192, depth=2, seq_len=64, n_embd=64, n_head=2),
                batch_size=4,
                val_rows=8,
                curve_rows=4,
                min_steps=6,
                max_steps=6,
                base_seq_check=True,
                seeds=[0, 1],
            ),
        )
    model = dict(vocab_size=32768, depth=12, seq_len=2048)  # nanochat's d12 (tok_train default)
    return dict(
        model=model,
        batch_size=8,
        chunk=64,
        eager=dict(steps=5, warmup=2),
        compiled=dict(steps=10, warmup=3, backend="inductor"),
        decode=dict(
            tokens=128,
            warmup=4,
            batches=[1, 32],
            rounds=2,
            # graph_unfused (the graph without stacked projections) is left out: a diagnostic
            # that costs ~25 s with three models; pass it to time_decode to compare.
            modes=["eager", "eager_bf16", "graph", "compiled_graph"],
        ),
        loader=dict(batch_size=8, seq_len=2048, batches=50),
        quality=dict(
            model=dict(vocab_size=8192, depth=6, seq_len=512),
            batch_size=32,
            val_rows=256,
            curve_rows=32,
            min_steps=30,
            max_steps=2000,
            base_seq_check=True,
            seeds=[0, 1],
        )
        if not quick_quality
        # The same experiment, smaller and shorter (fits ~2 minutes of device time).
        else dict(
            model=dict(vocab_size=8192, depth=4, seq_len=256),
            batch_size=64,
            val_rows=256,
            curve_rows=64,
            min_steps=30,
            max_steps=2000,
            base_seq_check=False,
            seeds=[0, 1],
        ),
    )


# ---------------------------------------------------------------------------------------------


def train_configs(cfg: dict[str, Any]):
    """(baseline, shared pathway, the authors' arm `pathway="official"`) at `cfg["model"]`."""
    from lrt.config import LRTConfig

    base = LRTConfig(**cfg["model"])
    lrt = LRTConfig(pathway="shared", **cfg["model"])
    official = LRTConfig(pathway="official", **cfg["model"])
    return base, lrt, official


def strategies(cfg: dict[str, Any]):
    from lrt.config import StrategyConfig

    return {
        "baseline": StrategyConfig(),
        "interleaved:2": StrategyConfig(name="interleaved", subsets=2),
        "multi_refine:1": StrategyConfig(name="multi_refine", refine_steps=1),
        f"chunked:{cfg['chunk']}": StrategyConfig(name="chunked", chunk_size=cfg["chunk"]),
    }
