"""Text samples from fixed prompts, decoded exactly (KV cache + memory), for eyeballing a model.

    >>> samples = generate_samples(model, tokenizer, ["The meaning of"], max_new_tokens=16)  # doctest: +SKIP
    >>> write_samples("runs/lrt/samples.json", samples)                                    # doctest: +SKIP

Each prompt is decoded on its own (prompts differ in length and `lrt.decode.generate` takes
equal-length batches), prefixed with `<|bos|>`, with a seed per prompt so a sample does not
depend on which prompts come before it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def generate_samples(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Continue each prompt with `lrt.decode.generate`.

    Args:
        model: An `lrt.LRT` (any pathway; decoding uses the memory when there is one).
        tokenizer: `encode(text)`, `decode(ids)`, `bos_id`.
        prompts: Prompt texts.
        max_new_tokens: Tokens generated per prompt (fewer when the rotary table ends).
        temperature: 0 = greedy.
        top_k: Optional top-k filter when sampling.
        seed: Prompt i samples with seed `seed + i`.

    Returns:
        One record per prompt: `prompt`, `completion` (the generated text only), `tokens`
        (generated ids), and the decoding settings.
    """
    from lrt.decode import generate

    limit = int(getattr(model.config, "rope_len", 1 << 30))
    out = []
    for i, prompt in enumerate(prompts):
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        ids = ids[-max(1, limit - 1) :]
        n_new = max(0, min(max_new_tokens, limit - len(ids)))
        seq = generate(model, ids, n_new, temperature=temperature, top_k=top_k, seed=seed + i)
        new = seq[0, len(ids) :].tolist()
        out.append(
            {
                "prompt": prompt,
                "completion": tokenizer.decode(new),
                "tokens": new,
                "temperature": temperature,
                "seed": seed + i,
            }
        )
    return out


def write_samples(path: str | Path, samples: Sequence[dict[str, Any]]) -> Path:
    """Write samples as pretty JSON (atomically) and return the path."""
    from pipeline.atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(list(samples), indent=2, ensure_ascii=False) + "\n")
