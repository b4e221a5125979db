"""One cell of a study: train one arm with one seed, measure it at fixed weights, evaluate it.

A compact loop of its own (the pipeline's `train` has no hook for measurements at fixed weights
mid-run): nanochat's optimizer recipe (`lrt.optim.build_optimizer`), its LR/momentum schedules, the Rust loader over the study's shards. Seed s fixes
the initialisation (`torch.manual_seed(s)`) and the data order (loader seed s), the same in every
arm, so differences between arms are paired by seed.

Optimizer settings are the study's own (`StudyOptim`).

Evaluation, all through `pipeline.evaluation`: validation BPB scored by exact sequential
decoding (and in the mode training optimises, for the train/test gap), per-position BPB, the
in-context gain, the synthetic ICL probes and CORE on the tasks found in `core_dir`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lrt import LRT
from lrt.accounting import flops_per_token, param_counts
from lrt.config import StrategyConfig
from lrt.optim import build_optimizer
from lrt.schedule import lr_multiplier, muon_momentum
from lrt.strategies import forward_train
from pipeline.atomic import finite_json
from pipeline.data.loader import DataLoader, validation_loader
from pipeline.evaluation.bpb import evaluate_bpb, lrt_loss_fns
from pipeline.evaluation.core import core_metrics, evaluate_core, lrt_scorer
from pipeline.evaluation.core_tasks import load_tasks
from pipeline.evaluation.icl import evaluate_synthetic, in_context_gain
from pipeline.study.arms import Arm, model_config, strategy_config
from pipeline.study.data import PreparedData
from pipeline.study.measure import exact_gradients, exact_source, gradient_cosine, state_gap


@dataclass(frozen=True)
class Scale:
    """Sizes of one study run (model, budget, evaluation). `FULL` and `QUICK` below."""

    name: str
    vocab_size: int
    depth: int
    n_embd: int
    n_head: int
    seq_len: int
    batch_size: int
    steps: int
    seeds: int
    eval_tokens: int
    diag_batch: int
    icl_items: int
    icl_examples: tuple[int, ...]
    core_items: int
    core_max_len: int
    train_bytes: int
    val_bytes: int
    diag_fractions: tuple[float, ...] = (1 / 3, 2 / 3, 1.0)

    @property
    def chunk_size(self) -> int:
        return max(1, self.seq_len // 4)

    def base_model(self, vocab_size: int) -> dict[str, Any]:
        return {
            "vocab_size": int(vocab_size),
            "depth": self.depth,
            "seq_len": self.seq_len,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Scale(
    name="full", vocab_size=2048, depth=2, n_embd=128, n_head=2, seq_len=64, batch_size=16,
    steps=160, seeds=3, eval_tokens=8192, diag_batch=4, icl_items=24,
    icl_examples=(1, 2, 4, 8), core_items=8, core_max_len=64, train_bytes=6_000_000,
    val_bytes=500_000,
)  # fmt: skip
"""Sized for about 45 minutes on 2 shared CPU cores, one thread."""

QUICK = Scale(
    name="quick", vocab_size=320, depth=1, n_embd=64, n_head=1, seq_len=16, batch_size=4,
    steps=4, seeds=2, eval_tokens=128, diag_batch=2, icl_items=2, icl_examples=(1, 2),
    core_items=2, core_max_len=32, train_bytes=150_000, val_bytes=20_000,
)  # fmt: skip
"""CI smoke test: checks the outputs' structure, not their values."""

SCALES = {"full": FULL, "quick": QUICK}


@dataclass(frozen=True)
class StudyOptim:
    """The study's optimizer and schedule, pinned here (not the pipeline's `train.*`
    defaults, which may change) so a study's cells mean the same thing across builds. Values:
    the pipeline's defaults when the published study ran."""

    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    scalar_lr: float = 0.02
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_ratio: float = 0.0
    warmdown_ratio: float = 0.2
    final_lr_frac: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CellContext:
    """What every cell of a run shares."""

    scale: Scale
    data: PreparedData
    device: torch.device
    core_dir: Path | None
    optim: StudyOptim = field(default_factory=StudyOptim)
    say: Callable[[str], None] = print


def probe_strategies(scale: Scale) -> dict[str, StrategyConfig]:
    """Parallel strategies measured against exact recurrence at every measurement point."""
    return {
        "interleaved_s2": StrategyConfig("interleaved", subsets=2),
        "interleaved_s4": StrategyConfig("interleaved", subsets=4),
        "multi_refine_k1": StrategyConfig("multi_refine", refine_steps=1),
        "multi_refine_k2": StrategyConfig("multi_refine", refine_steps=2),
        "multi_refine_k3": StrategyConfig("multi_refine", refine_steps=3),
        "chunked": StrategyConfig("chunked", chunk_size=scale.chunk_size),
    }


def _batches(loader: DataLoader, device: torch.device):
    for x, y in loader:
        yield x.to(device).long(), y.to(device).long()


def _diag_batch(ctx: CellContext) -> tuple[torch.Tensor, torch.Tensor]:
    loader = validation_loader(ctx.data.dir, ctx.scale.diag_batch, ctx.scale.seq_len)
    x, y = next(iter(loader))
    out = x.to(ctx.device).long(), y.to(ctx.device).long()
    loader.close()
    return out


def measure(
    model: LRT, ctx: CellContext, x: torch.Tensor, y: torch.Tensor, names: list[str]
) -> dict[str, Any]:
    """State and gradient gaps of the named probe strategies at the model's current weights."""
    was_training = model.training
    model.train()
    ref_src = exact_source(model, x)
    ref_grad = exact_gradients(model, x, y)
    probes = {}
    for name, st in probe_strategies(ctx.scale).items():
        if name not in names:
            continue
        probes[name] = {
            "state": state_gap(model, x, st, exact=ref_src),
            "grad": gradient_cosine(model, x, y, st, exact=ref_grad),
        }
    model.train(was_training)
    return probes


def evaluate(model: LRT, arm: Arm, ctx: CellContext) -> dict[str, Any]:
    """BPB (exact sequential headline, training-estimate mode, init), per-position BPB,
    in-context gain, synthetic ICL probes and CORE."""
    scale, tok = ctx.scale, ctx.data.tokenizer
    model.eval()
    # without memory (baseline, zero-memory ablation) exact decoding is the one plain pass
    headline = "sequential" if arm.recurrent else "init"
    modes = [headline] + [m for m in (arm.eval_mode, "init") if m != headline]
    modes = list(dict.fromkeys(modes))
    fns = lrt_loss_fns(model, modes, strategy=strategy_config(arm))
    loader = validation_loader(ctx.data.dir, scale.batch_size, scale.seq_len)
    ev = evaluate_bpb(
        fns,
        loader,
        tok.token_byte_lengths(),
        seq_len=scale.seq_len,
        bucket_size=max(1, scale.seq_len // 8),
        max_tokens=scale.eval_tokens,
        bos_id=tok.bos_id,
        device=ctx.device,
    )
    loader.close()
    head = ev.results[headline]
    bpb = {m: r.bpb for m, r in ev.results.items()}
    gap = (
        ev.common[arm.eval_mode].bpb - ev.common[headline].bpb
        if arm.eval_mode in ev.common
        else 0.0
    )
    scorer = lrt_scorer(model, device=ctx.device)
    synth = evaluate_synthetic(
        scorer,
        tok.encode,
        tok.bos_id,
        modes=(headline,),
        n_examples=scale.icl_examples,
        n_items=scale.icl_items,
        max_len=scale.core_max_len,
    )[headline]
    accs = [v["acc"] for per_n in synth.values() for v in per_n.values()]
    out: dict[str, Any] = {
        "headline_mode": headline,
        "val_bpb": head.bpb,
        "bpb": bpb,
        "train_test_gap": gap,
        "bpb_buckets": head.buckets,
        "bucket_size": head.bucket_size,
        "position_loss": head.position_loss,
        "icl_gain": in_context_gain(head.doc_position_loss),
        "synthetic": {t: {str(n): v for n, v in per_n.items()} for t, per_n in synth.items()},
        "synthetic_acc": sum(accs) / len(accs) if accs else math.nan,
        "val_tokens": head.tokens,
    }
    if ctx.core_dir is not None:
        tasks = load_tasks(ctx.core_dir)
        if tasks:
            core = evaluate_core(
                tasks, scorer, tok, modes=(headline,), max_items=scale.core_items,
                max_len=scale.core_max_len, progress=False,
            )  # fmt: skip
            m = core_metrics(core)
            out["core"] = m["core"][headline]
            out["core_tasks"] = m["core_tasks"][headline]
    return out


def run_cell(
    arm: Arm, seed: int, steps: int, ctx: CellContext, probes: list[str] | None = None
) -> dict[str, Any]:
    """Train `arm` for `steps` optimizer steps with `seed`; return its record (JSON-safe).

    `probes`: the probe strategies measured at fixed weights (None = every probe); only arms
    with a pathway are measured.
    """
    probes = list(probe_strategies(ctx.scale)) if probes is None else probes
    scale, ts = ctx.scale, ctx.optim
    cfg = model_config(arm, scale.base_model(ctx.data.tokenizer.vocab_size))
    strategy = strategy_config(arm)
    torch.manual_seed(seed)
    model = LRT(cfg).to(ctx.device)
    model.init_weights()
    model.train()
    opt = build_optimizer(
        model, matrix_lr=ts.matrix_lr, embedding_lr=ts.embedding_lr,
        unembedding_lr=ts.unembedding_lr, scalar_lr=ts.scalar_lr, weight_decay=ts.weight_decay,
    )  # fmt: skip
    loader = DataLoader(
        ctx.data.dir, "train", scale.batch_size, scale.seq_len, mode="contiguous", seed=seed
    )
    diag_at = sorted({max(1, math.ceil(f * steps)) for f in scale.diag_fractions})
    dx, dy = _diag_batch(ctx)
    losses, diagnostics = [], []
    batches = _batches(loader, ctx.device)
    t0 = time.perf_counter()
    measure_s = 0.0
    for step in range(steps):
        lr = lr_multiplier(step, steps, ts.warmup_ratio, ts.warmdown_ratio, ts.final_lr_frac)
        opt.set_schedule(lr, muon_momentum(step))
        x, y = next(batches)
        out = forward_train(model, x, y, strategy)
        out.loss.backward()
        if ts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), ts.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"cell {arm.name} seed {seed}: loss {losses[-1]} at {step}")
        if arm.recurrent and step + 1 in diag_at:
            m0 = time.perf_counter()
            diagnostics.append({"step": step + 1, "probes": measure(model, ctx, dx, dy, probes)})
            measure_s += time.perf_counter() - m0
    loader.close()
    train_s = time.perf_counter() - t0 - measure_s
    e0 = time.perf_counter()
    metrics = evaluate(model, arm, ctx)
    eval_s = time.perf_counter() - e0
    tokens = steps * scale.batch_size * scale.seq_len
    fpt = flops_per_token(cfg, strategy)
    record = {
        "arm": arm.name,
        "seed": seed,
        "steps": steps,
        "tokens": tokens,
        "model": cfg.to_dict(),
        "strategy": asdict(strategy),
        "params": param_counts(model),
        "flops_per_token": fpt,
        "effective_compute": fpt * tokens,
        "losses": losses,
        "diagnostics": diagnostics,
        "metrics": metrics,
        "seconds": {"train": train_s, "measure": measure_s, "eval": eval_s},
        "optim": ts.to_dict(),
        "device": str(ctx.device),
    }
    return finite_json(record)
