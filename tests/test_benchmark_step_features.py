"""The step benchmark's backbone-feature flags (pipeline/benchmarks/step.py): nanochat's
backbone by default, the features-off model with --features-off, one toggle at a time."""

from __future__ import annotations

import pytest

from lrt import accounting
from lrt.config import LRTConfig

TINY = "--depth 2 --n-embd 32 --n-head 2 --vocab-size 64 --seq-len 16 --batch-size 2 --steps 1"
TINY += " --warmup 0 --decode-tokens 2 --decode-batches 1 --decode-rounds 1 --device cpu"
TINY += " --strategies interleaved:2 --interleave"
DIMS = dict(vocab_size=64, depth=2, n_embd=32, n_head=2, seq_len=16)


@pytest.mark.parametrize(
    ("flags", "features"),
    [
        ("", {}),
        (
            "--features-off",
            dict(
                window_pattern="L",
                use_value_embeds=False,
                use_resid_lambdas=False,
                use_x0_residual=False,
            ),
        ),
        (
            "--features-off --value-embeds --n-kv-head 1",
            dict(window_pattern="L", use_value_embeds=True, n_kv_head=1)
            | {
                "use_resid_lambdas": False,
                "use_x0_residual": False,
            },
        ),
        (
            "--window-pattern L --no-lambdas",
            dict(window_pattern="L")
            | {
                "use_resid_lambdas": False,
                "use_x0_residual": False,
            },
        ),
    ],
)
def test_feature_flags_build_the_model_they_name(flags: str, features: dict) -> None:
    from pipeline.benchmarks.step import main

    result = main([*TINY.split(), *flags.split()])
    assert result["errors"] == {}
    expected = LRTConfig(**DIMS, **features)
    config = result["config"]
    for key in ("window_pattern", "use_value_embeds", "use_resid_lambdas", "use_x0_residual"):
        assert config[key] == getattr(expected, key), key
    assert config["n_kv_head"] == expected.n_kv_head
    # the timed models are those: their parameter counts are the configs' (lrt.accounting)
    assert result["params"]["baseline"] == accounting.param_counts(expected)["total"]
    lrt = LRTConfig(**DIMS, **features, pathway="shared")
    assert result["params"]["lrt"] == accounting.param_counts(lrt)["total"]
