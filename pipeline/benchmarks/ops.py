"""Count the aten operators of a decode step and of a training step: a device-free proxy for
launch-bound time.

Where a GPU step is bound by kernel launches (eager decoding at small batch: 10.4 ms a token
for d12 on an H100, ~100x the weight read), time grows with the number of operators, not with
FLOPs. Each aten call here is roughly one kernel in eager CUDA (views excluded); a CUDA graph
removes the launch cost of each but not its minimum run time. The count is exact and the same
on any machine, so it can be compared across code versions without a device.

    python -m pipeline.benchmarks.ops                      # d12 shapes, baseline vs LRT
    python -m pipeline.benchmarks.ops --depth 4 --n-embd 256 --n-head 2

Reports, per model: ops per eager decode step (`lrt.decode.decode_step`), per static decode
step (`lrt.static_decode.StaticDecoder`, stacked q/k/v/gate matmul, and unstacked), and per
training forward+backward of each strategy, and the LRT/baseline ratios.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lrt.config import LRTConfig, StrategyConfig

# Metadata-only operators: no kernel runs for them.
_VIEWS = {
    "view", "_unsafe_view", "reshape", "expand", "transpose", "t", "permute", "unsqueeze",
    "squeeze", "slice", "select", "alias", "as_strided", "detach", "split", "split_with_sizes",
    "unbind", "lift_fresh", "_to_copy_noop", "mT", "numpy_T",
}  # fmt: skip


class OpCounter(TorchDispatchMode):
    """Counts aten calls that do work (views and other metadata ops excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in _VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count(fn: Callable[[], Any]) -> Counter[str]:
    with OpCounter() as c:
        fn()
    return c.ops


def _model(cfg: LRTConfig):
    from lrt.model import LRT

    torch.manual_seed(0)
    model = LRT(cfg)
    model.init_weights()
    return model


def decode_ops(cfg: LRTConfig, batch_size: int = 1, context: int = 8) -> dict[str, int]:
    """Ops of one decode step after `context` tokens, per decoder."""
    from lrt.decode import decode_step, new_state
    from lrt.static_decode import StaticDecoder

    model = _model(cfg).eval()
    tok = torch.zeros(batch_size, dtype=torch.long)
    out = {}
    state = new_state(model, batch_size, context + 1)
    for _ in range(context):
        decode_step(model, state, tok)
    out["eager"] = sum(count(lambda: decode_step(model, state, tok)).values())
    for name, fuse in (("static", True), ("static_unstacked", False)):
        dec = StaticDecoder(model, batch_size, context + 1, fuse=fuse, cuda_graph=False)
        for _ in range(context):
            dec.step(tok)
        out[name] = sum(count(lambda d=dec: d._fn(d)).values())  # the step itself (no clone)
    return out


def train_ops(cfg: LRTConfig, strategy: StrategyConfig, batch_size: int = 1) -> int:
    """Ops of one forward + backward of `strategy` (no optimizer)."""
    model = _model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_len))

    def step() -> None:
        model.forward_train(idx, idx, strategy).loss.backward()

    return sum(count(step).values())


def run(depth: int = 12, n_embd: int = 768, n_head: int = 6, seq_len: int = 64) -> dict[str, Any]:
    shape = dict(vocab_size=512, depth=depth, seq_len=seq_len, n_embd=n_embd, n_head=n_head)
    base, lrt = LRTConfig(**shape), LRTConfig(pathway="shared", **shape)
    res: dict[str, Any] = {"config": shape, "decode": {}, "train": {}}
    db, dl = decode_ops(base), decode_ops(lrt)
    for k in db:
        res["decode"][k] = {"baseline": db[k], "lrt": dl[k], "ratio": dl[k] / db[k]}
    tb = train_ops(base, StrategyConfig())
    res["train"]["baseline"] = {"ops": tb, "ratio": 1.0}
    for label, st in (
        ("lrt_none", StrategyConfig()),
        ("interleaved:2", StrategyConfig(name="interleaved", subsets=2)),
        ("multi_refine:1", StrategyConfig(name="multi_refine", refine_steps=1)),
    ):
        n = train_ops(lrt, st)
        res["train"][label] = {"ops": n, "ratio": n / tb}
    return res


def format_table(res: dict[str, Any]) -> str:
    c = res["config"]
    lines = [f"aten ops (views excluded), depth {c['depth']}, n_embd {c['n_embd']}", ""]
    lines.append(f"{'decode step':<20}{'baseline':>10}{'LRT':>8}{'LRT/base':>10}")
    for k, v in res["decode"].items():
        lines.append(f"{k:<20}{v['baseline']:>10}{v['lrt']:>8}{v['ratio']:>10.3f}")
    lines += ["", f"{'train fwd+bwd':<20}{'ops':>10}{'x base':>8}"]
    for k, v in res["train"].items():
        lines.append(f"{k:<20}{v['ops']:>10}{v['ratio']:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    a = p.parse_args(argv)
    res = run(a.depth, a.n_embd, a.n_head, a.seq_len)
    print(json.dumps(res, indent=1) if a.json else format_table(res))
    return res


if __name__ == "__main__":
    main()
