"""Sequential CORE scoring: items/s at training's batch size (before) vs a memory budget (after).

Exact sequential scoring decodes one position per model step for the whole batch, so its cost is
steps x per-step time and a small batch pays the per-step overhead over and over. This times
`pipeline.evaluation.core.evaluate_task` in mode "sequential" on synthetic multiple-choice items
(four choices, prompts of mixed length) with the demo's model shape, once with fixed batches of
`--before-batch` rows (what eval did: `train.device_batch_size`) and once batched by
`pipeline.evaluation.batching` from `--budget-mb`, checks both give the same scores, and prints
the ratio.

    python -m pipeline.benchmarks.core_sequential                      # demo shape, CPU
    python -m pipeline.benchmarks.core_sequential --items 64 --budget-mb 2048 --out core.json

Figures compare only within one run (one machine, one thread count).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from lrt import LRT, LRTConfig
from pipeline.evaluation.batching import MAX_ROWS, sequential_rows
from pipeline.evaluation.core import TaskSpec, evaluate_task, lrt_scorer

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "an",
    "be",
    "this",
    "are",
]


class _WordTokenizer:
    """Characters -> ids below the vocabulary; 0 is BOS."""

    bos_id = 0

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        return [1 + ord(c) % (self.vocab - 1) for c in text]


def make_items(n: int, seed: int = 0, max_chars: int = 200) -> list[dict[str, Any]]:
    """Multiple-choice items with prompts of 10..max_chars characters (mixed lengths, as CORE's
    tasks have)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        length = rng.randint(10, max_chars)
        query = ""
        while len(query) < length:
            query += rng.choice(WORDS) + " "
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4)]
        items.append({"query": query.strip(), "choices": choices, "gold": rng.randrange(4)})
    return items


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LRTConfig(
        vocab_size=args.vocab_size,
        depth=args.depth,
        seq_len=args.seq_len,
        n_embd=args.n_embd,
        n_head=args.n_head,
        pathway="shared",
    )
    device = torch.device(args.device)
    model = LRT(cfg).to(device)
    model.init_weights()
    model.eval()
    tok = _WordTokenizer(args.vocab_size)
    spec = TaskSpec("synthetic_mc", "<synthetic>", "multiple_choice", 0, 25.0, " ")
    items = make_items(args.items, max_chars=args.max_chars)
    scorer = lrt_scorer(model, device=device, static=args.static)
    rows = sequential_rows(cfg, args.seq_len, int(args.budget_mb * (1 << 20)))
    budget = (MAX_ROWS, rows * args.seq_len)
    common = dict(modes=("sequential",), max_len=args.seq_len)

    def timed(**kw: Any) -> tuple[float, Any]:
        evaluate_task(spec, items[:4], scorer, tok.encode, tok.bos_id, **common, **kw)  # warm-up
        t0 = time.perf_counter()
        res = evaluate_task(spec, items, scorer, tok.encode, tok.bos_id, **common, **kw)
        return time.perf_counter() - t0, res["sequential"]

    before_s, before = timed(batch_size=args.before_batch)
    after_s, after = timed(batch_size=args.before_batch, sequential_batch=budget)
    same = before.correct == after.correct and abs(before.mean_loss - after.mean_loss) < 1e-4
    out = {
        "device": str(device),
        "threads": args.threads,
        "model": {
            "depth": args.depth,
            "n_embd": args.n_embd,
            "seq_len": args.seq_len,
            "vocab_size": args.vocab_size,
        },  # fmt: skip
        "items": args.items,
        "sequences": args.items * 4,
        "before": {
            "batch_size": args.before_batch,
            "seconds": before_s,
            "items_per_s": args.items / before_s,
        },  # fmt: skip
        "after": {
            "budget_mb": args.budget_mb,
            "max_rows_full_length": rows,
            "token_budget": budget[1],
            "seconds": after_s,
            "items_per_s": args.items / after_s,
        },  # fmt: skip
        "speedup": before_s / after_s,
        "same_scores": same,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--items", type=int, default=32)
    p.add_argument("--max-chars", type=int, default=200)
    p.add_argument("--before-batch", type=int, default=4, help="the demo's device_batch_size")
    p.add_argument("--budget-mb", type=float, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--static", action=argparse.BooleanOptionalAction, default=None,
                   help="static decoder for sequential (default: on CUDA)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = p.parse_args(argv)
    res = run(args)
    b, a = res["before"], res["after"]
    print(
        f"sequential CORE, {res['items']} items ({res['sequences']} sequences), "
        f"{res['device']}, {res['threads']} thread(s)\n"
        f"  before: batch {b['batch_size']:>3}        {b['items_per_s']:8.2f} items/s "
        f"({b['seconds']:.2f} s)\n"
        f"  after:  budget {a['budget_mb']:.0f} MB      {a['items_per_s']:8.2f} items/s "
        f"({a['seconds']:.2f} s; up to {a['max_rows_full_length']} full-length rows)\n"
        f"  ratio after/before: {res['speedup']:.2f}x; same scores: {res['same_scores']}"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["same_scores"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
