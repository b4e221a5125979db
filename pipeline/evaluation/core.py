"""The CORE metric (DCLM's in-context-learning suite, as nanochat reports it): scoring.

Every item is scored from one causal forward over each of its `<|bos|> prompt` sequences (the
tasks, prompts and scored spans come from `pipeline.evaluation.core_tasks`):

- `multiple_choice`: the prediction is the choice with the lowest mean loss over its
  continuation tokens (those after the options' common token prefix).
- `schema`: the prediction is the context option under which the shared continuation (the
  options' common token suffix) has the lowest mean loss.
- `language_modeling`: correct only if the greedy argmax at every continuation position
  reproduces the continuation token.

Accuracy is centred against the task's random baseline, `(acc - rb/100) / (1 - rb/100)`, and
CORE is the mean centred accuracy over tasks.

The model is seen only through a `LossesAndArgmax` callable, so tests plug in fake models with
known per-token losses; `lrt_scorer` adapts an `lrt.LRT` in either memory mode ("init" = zero
memory, "sequential" = exact recurrent decoding).

Example:
    >>> from pipeline.evaluation.core_tasks import load_tasks     # doctest: +SKIP
    >>> tasks = load_tasks("../shared/data/core")            # doctest: +SKIP
    >>> res = evaluate_core(tasks, lrt_scorer(model), tok)    # doctest: +SKIP
    >>> res["init"].core                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from pipeline.evaluation.core_tasks import (
    FEWSHOT_SEED,
    SHUFFLE_SEED,
    Scored,
    TaskSpec,
    encode_item,
    fewshot_indices,
    load_items,
)

log = logging.getLogger(__name__)

# -----------------------------------------------------------------------------
# Model protocol


class LossesAndArgmax(Protocol):
    """`(tokens (B, L) int64, mode) -> (losses (B, L), argmax (B, L))`.

    `losses[b, i]` is the cross-entropy (nats) of `tokens[b, i+1]` given `tokens[b, :i+1]` and
    `argmax[b, i]` the most likely next token there; the last column is unused. Padding sits on
    the right, so a causal model's scores at real positions do not depend on it.
    """

    def __call__(self, tokens: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]: ...


def lrt_scorer(
    model: Any, *, device: torch.device | str | None = None, static: bool | None = None
) -> LossesAndArgmax:
    """`LossesAndArgmax` over `model.logits(idx, mode=...)` (modes "init" and "sequential").

    static (default: on CUDA) decodes mode "sequential" with `lrt.static_decode.StaticDecoder`
    (one CUDA graph replay per position), batches padded on the right to a few shapes (rows
    to a power of two, length to a multiple of 64) so few graphs are captured; padding sits
    after every scored position, so it changes no score.
    """
    dev = torch.device(device if device is not None else next(model.parameters()).device)
    use_static = dev.type == "cuda" if static is None else static
    decoders: dict[tuple[int, int], Any] = {}

    def static_logits(idx: torch.Tensor) -> torch.Tensor:
        from lrt.static_decode import StaticDecoder

        B, L = idx.shape
        rows = 1 << (B - 1).bit_length()
        length = min(-(-L // 64) * 64, int(getattr(model.config, "rope_len", L)))
        length = max(length, L)
        key = (rows, length)
        if key not in decoders:
            amp = (
                torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None
            )
            decoders[key] = StaticDecoder(model, rows, length, autocast_dtype=amp)
        dec = decoders[key]
        dec.reset()
        padded = torch.zeros(rows, L, dtype=idx.dtype, device=idx.device)
        padded[:B] = idx
        out = [dec.step(padded[:, i])[:B] for i in range(L)]
        return torch.stack(out, dim=1)  # (B, L, V)

    @torch.no_grad()
    def score(tokens: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = tokens.to(dev)
        if use_static and mode == "sequential" and model.config.has_pathway:
            logits = static_logits(idx).float()  # (B, L, V)
        else:
            logits = model.logits(idx, mode=mode).float()  # (B, L, V)
        B, L, V = logits.shape
        losses = torch.full((B, L), math.nan, device=logits.device)
        losses[:, :-1] = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1), reduction="none"
        ).view(B, L - 1)
        return losses.cpu(), logits.argmax(-1).cpu()

    return score


# -----------------------------------------------------------------------------
# Evaluation


@dataclass
class TaskResult:
    """Score of one task in one mode.

    Attributes:
        name: Task label.
        accuracy: Fraction of items answered correctly.
        centered: `(accuracy - rb/100) / (1 - rb/100)`.
        n: Number of items scored.
        correct: Per-item correctness, in evaluation order (after shuffling).
        mean_loss: Mean over items of the gold continuation's mean loss (nats per token); for
            language modelling the continuation's mean loss.
    """

    name: str
    accuracy: float
    centered: float
    n: int
    correct: list[bool] = field(default_factory=list, repr=False)
    mean_loss: float = math.nan


@dataclass
class CoreResult:
    """CORE in one mode: mean centred accuracy over `tasks`."""

    mode: str
    core: float
    tasks: dict[str, TaskResult]


def centered_accuracy(accuracy: float, random_baseline: float) -> float:
    """`(acc - rb/100) / (1 - rb/100)`; `random_baseline` in percent.

    >>> centered_accuracy(0.75, 50.0)
    0.5
    """
    rb = random_baseline / 100.0
    return (accuracy - rb) / (1.0 - rb)


def _run_batches(
    seqs: Sequence[Scored],
    scorer: LossesAndArgmax,
    mode: str,
    batch_size: int,
    pad_id: int,
    bar: Any = None,
    token_budget: tuple[int, int] | None = None,
) -> tuple[list[float], list[bool]]:
    """Mean continuation loss and exact greedy match of every sequence.

    `token_budget` = (max rows, max rows x length) replaces the fixed `batch_size`: batches of
    similar lengths, as many rows as fit (see `pipeline.evaluation.batching`)."""
    mean_loss = [math.nan] * len(seqs)
    exact = [False] * len(seqs)
    # Longest first: similar lengths share a batch (less padding), and OOM shows up at once.
    if token_budget is not None:
        from pipeline.evaluation.batching import length_batches

        max_rows, max_tokens = token_budget
        chunks = length_batches(
            [len(sq.tokens) for sq in seqs], max_rows=max_rows, max_tokens=max_tokens
        )
    else:
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].tokens))
        chunks = [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]
    for chunk in chunks:
        L = max(len(seqs[i].tokens) for i in chunk)
        batch = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        for r, i in enumerate(chunk):
            batch[r, : len(seqs[i].tokens)] = torch.tensor(seqs[i].tokens, dtype=torch.long)
        losses, argmax = scorer(batch, mode)
        losses, argmax = losses.float().cpu(), argmax.cpu()
        for r, i in enumerate(chunk):
            s, e = seqs[i].start, seqs[i].end
            mean_loss[i] = float(losses[r, s - 1 : e - 1].mean())
            exact[i] = bool(torch.equal(argmax[r, s - 1 : e - 1], batch[r, s:e]))
        if bar is not None:
            bar.update(len(chunk))
    return mean_loss, exact


def evaluate_task(
    spec: TaskSpec,
    items: Sequence[Mapping[str, Any]],
    scorer: LossesAndArgmax,
    encode: Callable[[str], list[int]],
    bos_id: int,
    *,
    modes: Sequence[str] = ("init",),
    batch_size: int = 32,
    max_len: int | None = None,
    max_items: int | None = None,
    fewshot_seed: int = FEWSHOT_SEED,
    progress: bool = False,
    sequential_batch: tuple[int, int] | None = None,
) -> dict[str, TaskResult]:
    """Score one task in each mode; the prompts are encoded once and shared by the modes.

    Args:
        spec: The task.
        items: Its items (already shuffled, see `load_items`); few-shot examples come from all
            of them, the scored items are the first `max_items`.
        scorer: The model (see `LossesAndArgmax`).
        encode: Text -> token ids, without BOS (e.g. `tokenizer.encode`).
        bos_id: `<|bos|>` id: prepended to every prompt, and used as padding.
        modes: Memory modes passed to `scorer`.
        batch_size: Sequences per forward (options of one item may span batches; the result
            does not depend on it).
        max_len: Model context; longer prompts lose tokens on the left.
        max_items: Score only this many items (None or <= 0: all).
        fewshot_seed: Base seed of the per-item few-shot draw.
        progress: Show a tqdm progress bar.
        sequential_batch: (max rows, max rows x length) for mode "sequential", from a memory
            budget (`pipeline.evaluation.batching`); None = `batch_size` rows as other modes.
    """
    n = len(items) if not max_items or max_items <= 0 else min(max_items, len(items))
    seqs: list[Scored] = []
    for i in range(n):
        shots = [items[j] for j in fewshot_indices(i, len(items), spec.shots, fewshot_seed)]
        seqs.extend(encode_item(items[i], spec, shots, encode, bos_id, index=i, max_len=max_len))
    results = {}
    for mode in modes:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(seqs), desc=f"core {spec.name} [{mode}]", unit="seq", leave=False)
        budget = sequential_batch if mode == "sequential" else None
        mean_loss, exact = _run_batches(seqs, scorer, mode, batch_size, bos_id, bar, budget)
        if bar is not None:
            bar.close()
        correct = [False] * n
        gold_loss = [math.nan] * n
        if spec.type == "language_modeling":
            for k, sq in enumerate(seqs):
                correct[sq.item], gold_loss[sq.item] = exact[k], mean_loss[k]
        else:
            per_item: dict[int, dict[int, float]] = {}
            for k, sq in enumerate(seqs):
                per_item.setdefault(sq.item, {})[sq.option] = mean_loss[k]
            for i, opts in per_item.items():
                scores = [opts[o] for o in sorted(opts)]
                # NaN (an empty span) never wins; ties go to the first option, as list.index(min).
                clean = [s if not math.isnan(s) else math.inf for s in scores]
                pred = clean.index(min(clean))
                gold = int(items[i]["gold"])
                correct[i] = pred == gold
                gold_loss[i] = scores[gold] if gold < len(scores) else math.nan
        acc = sum(correct) / n if n else math.nan
        finite = [x for x in gold_loss if not math.isnan(x)]
        results[mode] = TaskResult(
            name=spec.name,
            accuracy=acc,
            centered=centered_accuracy(acc, spec.random_baseline),
            n=n,
            correct=correct,
            mean_loss=sum(finite) / len(finite) if finite else math.nan,
        )
    return results


def evaluate_core(
    tasks: Sequence[TaskSpec],
    scorer: LossesAndArgmax,
    tokenizer: Any,
    *,
    modes: Sequence[str] = ("init",),
    batch_size: int = 32,
    max_len: int | None = None,
    max_items: int | None = None,
    shuffle_seed: int | None = SHUFFLE_SEED,
    fewshot_seed: int = FEWSHOT_SEED,
    progress: bool = True,
    sequential_batch: tuple[int, int] | None = None,
) -> dict[str, CoreResult]:
    """CORE of a model in each memory mode.

    Args:
        tasks: Task table (see `load_tasks`).
        scorer: The model (see `LossesAndArgmax`, `lrt_scorer`).
        tokenizer: Anything with `encode(text) -> list[int]` and `bos_id`.
        modes: Memory modes; for an LRT "init" (zero memory) and "sequential" (recurrent).
        batch_size, max_len, max_items, fewshot_seed, progress, sequential_batch: see
            `evaluate_task`.
        shuffle_seed: Seed of the one-time shuffle of each file (None keeps file order).

    Returns:
        Mode -> `CoreResult`; `core` is the mean centred accuracy over the tasks.
    """
    per_mode: dict[str, dict[str, TaskResult]] = {m: {} for m in modes}
    for spec in tasks:
        items = load_items(spec, shuffle_seed=shuffle_seed)
        if not items:
            continue
        res = evaluate_task(
            spec,
            items,
            scorer,
            tokenizer.encode,
            tokenizer.bos_id,
            modes=modes,
            batch_size=batch_size,
            max_len=max_len,
            max_items=max_items,
            fewshot_seed=fewshot_seed,
            progress=progress,
            sequential_batch=sequential_batch,
        )
        for mode, r in res.items():
            per_mode[mode][spec.name] = r
        if not progress:  # no bars (not a terminal): one plain line per task
            log.info(
                "core %s: %s (%d items)",
                spec.name,
                ", ".join(f"{m} acc {r.accuracy:.3f}" for m, r in res.items()),
                next(iter(res.values())).n if res else 0,
            )
    out = {}
    for mode, task_results in per_mode.items():
        vals = [r.centered for r in task_results.values()]
        out[mode] = CoreResult(mode, sum(vals) / len(vals) if vals else math.nan, task_results)
    return out


def core_metrics(results: Mapping[str, CoreResult]) -> dict[str, Any]:
    """Metrics dict: `core.<mode>` and `core_tasks.<mode>.<task>.{acc,centered}`."""
    return {
        "core": {m: r.core for m, r in results.items()},
        "core_tasks": {
            m: {
                name: {"acc": t.accuracy, "centered": t.centered, "n": t.n}
                for name, t in r.tasks.items()
            }
            for m, r in results.items()
        },
    }
