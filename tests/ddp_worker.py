"""One DDP rank for tests/test_ddp.py: train tiny models for a few steps on this rank's share of
a fixed global batch and save the resulting parameters.

Launched by the test as `python tests/ddp_worker.py OUT_DIR` with torchrun-style environment
variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); gloo backend, CPU. Also importable: the
test calls `train_case(..., ddp=False)` in-process for the single-process reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrt import LRTConfig, StrategyConfig  # noqa: E402
from lrt.model import LRT  # noqa: E402
from lrt.optim import build_optimizer  # noqa: E402

GLOBAL_BATCH, SEQ, VOCAB, STEPS = 4, 16, 61, 2

# name -> (pathway, strategy, distributed Muon, depth). Depth 3 gives odd counts of same-shape
# matrices, so the distributed Newton-Schulz split needs padding.
CASES = {
    "baseline": ("none", StrategyConfig("none"), False, 2),
    "interleaved": ("shared", StrategyConfig("interleaved", subsets=2), False, 2),
    "interleaved_dist_muon": ("layerwise", StrategyConfig("interleaved", subsets=2), True, 3),
}


class TrainLoss(nn.Module):
    """Routes forward_train through nn.Module.__call__ so DDP's forward hooks see it."""

    def __init__(self, model: LRT, strategy: StrategyConfig) -> None:
        super().__init__()
        self.model, self.strategy = model, strategy

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.forward_train(idx, targets, self.strategy).loss


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    data = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def build_model(name: str) -> LRT:
    """The case's model, initialised from seed 0, in float64 (Adam's scale invariance amplifies
    fp32 summation-order noise between a 2-rank all-reduce and a 1-process sum past 1e-6)."""
    pathway, _, _, depth = CASES[name]
    torch.manual_seed(0)
    cfg = LRTConfig(
        vocab_size=VOCAB, depth=depth, seq_len=SEQ, n_embd=64, n_head=2, pathway=pathway
    )
    model = LRT(cfg).double()
    model.init_weights()
    return model


def train_case(
    name: str, rank: int = 0, world: int = 1, ddp: bool = False
) -> dict[str, torch.Tensor]:
    """Train case `name` for STEPS steps on this rank's contiguous share of each global batch."""
    _, strategy, dist_muon, _ = CASES[name]
    model = build_model(name)
    step_fn: nn.Module = TrainLoss(model, strategy)
    if ddp:
        step_fn = nn.parallel.DistributedDataParallel(step_fn)
    opt = build_optimizer(model, distributed=dist_muon and ddp)
    assert opt.distributed == (dist_muon and ddp and world > 1)
    per_rank = GLOBAL_BATCH // world
    for step in range(STEPS):
        idx, tgt = global_batch(step)
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        step_fn(idx[rows], tgt[rows]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        for name in CASES:
            torch.save(train_case(name, rank, world, ddp=True), out / f"{name}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
