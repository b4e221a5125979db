"""In-context-learning probes: loss gain along the context, and seeded synthetic tasks.

Two probes complement CORE, which is near chance for the tiny models of a CPU demo:

- **In-context gain** (Olsson et al. 2022's "in-context learning score"): mean loss at late
  positions of a document minus mean loss at early positions, from the validation BPB pass. More
  negative = the model uses its context more.
- **Synthetic tasks**, generated locally from a seed and scored like CORE language-modelling
  items (greedy exact match, plus the continuation's mean loss) at several numbers of in-context
  examples:
  - `kv_recall`: n "key: value" lines, then one of the keys; the answer is its value.
  - `pattern`: a random period-3 word pattern repeated n times, then all but its last word; the
    answer is that word.

Example:
    >>> items = make_task("pattern", n_examples=2, n_items=1, seed=0)
    >>> sorted(items[0])
    ['context', 'continuation']
    >>> make_task("pattern", 2, 3, seed=0) == make_task("pattern", 2, 3, seed=0)
    True
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.evaluation.core import LossesAndArgmax, evaluate_task
from pipeline.evaluation.core_tasks import TaskSpec

SYNTHETIC_TASKS = ("kv_recall", "pattern")

# Short, common English words: single tokens in most BPE vocabularies, so the tasks measure
# recall and copying rather than spelling.
_WORDS = [
    "apple",
    "river",
    "chair",
    "stone",
    "green",
    "house",
    "light",
    "water",
    "table",
    "bread",
    "cloud",
    "horse",
    "paper",
    "glass",
    "music",
    "north",
    "plant",
    "sugar",
    "train",
    "voice",
    "field",
    "money",
    "night",
    "ocean",
    "queen",
    "smile",
    "tiger",
    "watch",
    "bird",
    "book",
    "cold",
    "door",
    "fire",
    "gold",
    "hand",
    "king",
    "lake",
    "moon",
    "rain",
    "road",
    "salt",
    "ship",
    "snow",
    "star",
    "tree",
    "wind",
    "wolf",
    "blue",
    "red",
    "black",
    "white",
    "dog",
    "cat",
    "fish",
    "milk",
]

# -----------------------------------------------------------------------------
# In-context gain


def default_windows(seq_len: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Early and late position windows for a context of `seq_len` tokens.

    Early = [T/16, T/8), late = [7T/8, T): for T = 512 roughly Olsson et al.'s tokens 50 and 500.
    """
    early = (max(1, seq_len // 16), max(2, seq_len // 8))
    late = (seq_len - max(1, seq_len // 8), seq_len)
    return early, late


def in_context_gain(
    position_loss: Sequence[float],
    early: tuple[int, int] | None = None,
    late: tuple[int, int] | None = None,
) -> float:
    """Mean loss over positions `late` minus mean loss over `early` (NaN entries skipped).

    Args:
        position_loss: Mean loss per position (e.g. `BPBResult.doc_position_loss`).
        early, late: Half-open position windows; None = `default_windows(len(position_loss))`.

    >>> in_context_gain([4.0, 3.0, 2.0, 1.0], early=(0, 2), late=(2, 4))
    -2.0
    """
    d_early, d_late = default_windows(len(position_loss))
    early, late = early or d_early, late or d_late

    def mean(lo: int, hi: int) -> float:
        vals = [v for v in position_loss[lo:hi] if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan

    return mean(*late) - mean(*early)


# -----------------------------------------------------------------------------
# Synthetic tasks


def make_task(task: str, n_examples: int, n_items: int, seed: int = 0) -> list[dict[str, str]]:
    """`n_items` language-modelling items (`context`, `continuation`) of a synthetic task.

    Deterministic in (task, n_examples, n_items, seed); a different seed gives different items.

    Args:
        task: "kv_recall" or "pattern".
        n_examples: In-context examples per item (key-value lines, or pattern repetitions).
        n_items: Number of items.
        seed: Base seed.
    """
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; choose from {SYNTHETIC_TASKS}")
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
    rng = random.Random(f"{task}:{n_examples}:{seed}")
    return [
        _kv_item(rng, n_examples) if task == "kv_recall" else _pattern_item(rng, n_examples)
        for _ in range(n_items)
    ]


def _kv_item(rng: random.Random, n: int) -> dict[str, str]:
    keys = rng.sample(_WORDS, n)
    values = [str(rng.randrange(10, 100)) for _ in keys]
    lines = "\n".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True))
    q = rng.randrange(n)
    return {"context": f"{lines}\n{keys[q]}:", "continuation": values[q]}


def _pattern_item(rng: random.Random, n: int, period: int = 3) -> dict[str, str]:
    pattern = rng.sample(_WORDS, period)
    seq = pattern * n + pattern[:-1]
    return {"context": " ".join(seq), "continuation": pattern[-1]}


def evaluate_synthetic(
    scorer: LossesAndArgmax,
    encode: Callable[[str], list[int]],
    bos_id: int,
    *,
    modes: Sequence[str] = ("init",),
    tasks: Sequence[str] = SYNTHETIC_TASKS,
    n_examples: Sequence[int] = (1, 2, 4, 8),
    n_items: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    max_len: int | None = None,
    sequential_batch: tuple[int, int] | None = None,
) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """Accuracy and continuation loss of each synthetic task vs number of in-context examples.

    `sequential_batch`: batching of mode "sequential" (see `core.evaluate_task`).

    Returns:
        `{mode: {task: {n: {"acc": float, "loss": float}}}}`.
    """
    out: dict[str, dict[str, dict[int, dict[str, float]]]] = {m: {} for m in modes}
    for task in tasks:
        for n in n_examples:
            items = make_task(task, n, n_items, seed)
            spec = TaskSpec(f"{task}_{n}", "<synthetic>", "language_modeling", 0, 0.0, " ")
            res = evaluate_task(
                spec,
                items,
                scorer,
                encode,
                bos_id,
                modes=modes,
                batch_size=batch_size,
                max_len=max_len,
                sequential_batch=sequential_batch,
            )
            for mode, r in res.items():
                out[mode].setdefault(task, {})[n] = {"acc": r.accuracy, "loss": r.mean_loss}
    return out


def icl_metrics(
    synthetic: dict[str, dict[str, dict[int, dict[str, float]]]],
    gains: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Metrics dict: `icl_gain.<mode>` and `icl.<mode>.<task>.n<k>.{acc,loss}`."""
    out: dict[str, Any] = {}
    if gains:
        out["icl_gain"] = dict(gains)
    out["icl"] = {
        mode: {
            task: {f"n{n:02d}": dict(v) for n, v in per_n.items()} for task, per_n in tasks.items()
        }
        for mode, tasks in synthetic.items()
    }
    return out
