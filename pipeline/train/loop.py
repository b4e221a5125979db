"""Training loop (stage `train`): one variant, one device or many (torchrun / DDP).

    >>> from pipeline.config.settings import load_settings
    >>> from pipeline.train.loop import train_variant
    >>> metrics = train_variant(load_settings(), "lrt")          # doctest: +SKIP

A step draws `accum = total_batch_tokens / (device_batch_size * seq_len * world_size)`
micro-batches per rank, back-propagates `loss / accum` on each (DDP syncs gradients on the last
one only), clips, sets the scheduled learning rate and steps the optimizer. The budget is
`train.max_steps`, or `train.tokens_per_param` x the model's scaling parameters.

Outputs in `{train.out_dir}/{variant}/` (rank 0 only):
    train_log.csv       step, tokens, effective_flops, lr, loss, pass losses, val_bpb, tok/s, MFU
    val_log.csv         the validation rows only (clean DVC plots)
    train_metrics.json  final metrics + the configs
    model.pt            final weights + configs (`pipeline.train.checkpoint.load_model`)
    ckpt/step_*.pt      resumable checkpoints (model, optimizer, loader, RNG, step)

Ctrl-C / SIGTERM finish the current step, write a checkpoint and exit non-zero
(`TrainingInterrupted`); `resume=True` continues from the newest checkpoint and, on CPU, yields
exactly the losses an uninterrupted run would. See docs/TRAINING.md.

Multi-GPU: `torchrun --nproc_per_node 8 -m stages.train ...` (any entry point calling
`train_variant`); RANK / WORLD_SIZE / LOCAL_RANK are read from the environment.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lrt import accounting
from lrt.config import LRTConfig, StrategyConfig
from lrt.optim import OptimizerRecipe
from pipeline.train.checkpoint import (
    CheckpointError,
    atomic_write_text,
    check_config,
    check_provenance,
    data_provenance,
    list_checkpoints,
    load_latest,
    load_state_strict,
    rng_state,
    save_checkpoint,
    save_model,
    set_rng_state,
)

KEEP_CHECKPOINTS = 3
# LRTConfig fields whose settings default is None (derived from depth / n_head / seq_len).
RESOLVED_MODEL_FIELDS = ("n_embd", "n_head", "n_kv_head", "rope_len")
# Which mode also gets a validation BPB column, per training strategy (LRT variants only).
STRATEGY_EVAL_MODE = {"interleaved": "merged", "multi_refine": "refine"}


class NonFiniteError(FloatingPointError):
    """The loss or the gradient became NaN/inf; nothing was applied or saved after the last
    good step."""


class TrainingInterrupted(SystemExit):
    """Raised after Ctrl-C / SIGTERM once a checkpoint is written; exits with 128 + signal."""

    def __init__(self, code: int, message: str, checkpoint: Path | None) -> None:
        super().__init__(code)
        self.message = message
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------------------------
# Distributed / device setup


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when RANK/WORLD_SIZE are set (nccl on CUDA, gloo on CPU).

    The group stays up for the life of the process (several variants may train in one run).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(rank, world, local)


def resolve_device(setting: str, info: DistInfo | None = None) -> torch.device:
    """'auto' -> cuda when available (cuda:LOCAL_RANK under torchrun), else cpu."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "train.device=cuda but this machine has no usable CUDA device "
                "(torch.cuda.is_available() is False); use train.device=auto or cpu"
            )
        return torch.device("cuda", info.local_rank if info else 0)
    return torch.device("cpu")


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_flops(device: torch.device) -> float | None:
    """bf16 dense peak FLOP/s of a CUDA device (None on CPU or for an unknown GPU: no MFU)."""
    if device.type != "cuda":
        return None
    peak = accounting.peak_flops(torch.cuda.get_device_name(device))
    return peak if math.isfinite(peak) else None


# ---------------------------------------------------------------------------------------------
# Accounting (lrt.accounting when present)


def model_accounting(model: nn.Module, strategy: StrategyConfig) -> dict[str, float]:
    """Parameter counts (`lrt.accounting.param_counts`) and training FLOPs per token."""
    counts = accounting.param_counts(model)
    return {
        "params": float(counts["total"]),
        "scaling_params": float(counts["scaling_params"]),
        "flops_per_token": float(accounting.flops_per_token(model.config, strategy)),
    }


def recipe_from_settings(ts: Any) -> OptimizerRecipe:
    """The `lrt.optim.OptimizerRecipe` of `train.*`: nanochat's Muon/AdamW recipe, its lr /
    momentum / weight-decay schedules, batch and depth scalings and gradient clip.

    Example:
        >>> from pipeline.config.settings import TrainSettings
        >>> r = recipe_from_settings(TrainSettings(reference_batch_tokens=None))
        >>> r.lr_scale(1024), r.weight_decay_at(depth=12), r.grad_clip
        (1.0, 0.2, 0.0)
    """
    return OptimizerRecipe(
        matrix_lr=ts.matrix_lr,
        embedding_lr=ts.embedding_lr,
        unembedding_lr=ts.unembedding_lr,
        scalar_lr=ts.scalar_lr,
        weight_decay=ts.weight_decay,
        muon_variant=ts.muon_variant,
        variance_reduction=ts.variance_reduction,
        cautious_wd=ts.cautious_wd,
        muon_beta2=ts.muon_beta2,
        reference_batch_tokens=ts.reference_batch_tokens,
        reference_depth=ts.weight_decay_reference_depth,
        warmup_ratio=ts.warmup_ratio,
        warmdown_ratio=ts.warmdown_ratio,
        final_lr_frac=ts.final_lr_frac,
        schedule_weight_decay=ts.schedule_weight_decay,
        grad_clip=ts.grad_clip,
    )


def plan_steps(train_settings: Any, scaling_params: float) -> int:
    """Optimizer steps: `max_steps`, else tokens_per_param x scaling params / batch tokens."""
    if train_settings.max_steps is not None:
        return int(train_settings.max_steps)
    tokens = train_settings.tokens_per_param * scaling_params
    return max(1, round(tokens / train_settings.total_batch_tokens))


def grad_accum_steps(
    total_batch_tokens: int, device_batch_size: int, seq_len: int, world: int
) -> int:
    """Micro-batches per rank per step; a clear error when the batch does not divide."""
    per_micro = device_batch_size * seq_len * world
    if total_batch_tokens % per_micro:
        raise ValueError(
            f"train.total_batch_tokens={total_batch_tokens} is not divisible by "
            f"device_batch_size={device_batch_size} x seq_len={seq_len} x world_size={world} "
            f"= {per_micro}; choose total_batch_tokens as a multiple of {per_micro}"
        )
    return total_batch_tokens // per_micro


# ---------------------------------------------------------------------------------------------
# One step


class TrainStep(nn.Module):
    """`forward(idx, targets) -> (loss, pass_losses)`: the module DDP / torch.compile wrap, so
    their hooks run although the model's training entry point is `forward_train`."""

    def __init__(self, model: nn.Module, strategy: StrategyConfig) -> None:
        super().__init__()
        self.model = model
        self.strategy = strategy

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        out = self.model.forward_train(idx, targets, self.strategy)
        return out.loss, out.pass_losses


def accumulate_gradients(
    step_module: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    accum: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, list[float]]:
    """Forward/backward `accum` micro-batches, each loss scaled by 1/accum.

    Under DDP only the last micro-batch all-reduces gradients (`no_sync` on the others).

    Returns:
        (mean loss over the micro-batches as a detached tensor, mean pass losses).
    """
    loss_sum = torch.zeros((), device=device)
    pass_sums: list[float] = []
    is_ddp = isinstance(step_module, nn.parallel.DistributedDataParallel)
    for micro in range(accum):
        inputs, targets = next(batches)
        # Async copy from the loader's pinned slot: safe because forward_train's pass_losses
        # (Python floats) synchronise before the next batch is drawn.
        x = inputs.to(device, non_blocking=True).long()  # (B, T)
        y = targets.to(device, non_blocking=True).long()
        sync = step_module.no_sync() if is_ddp and micro < accum - 1 else contextlib.nullcontext()
        with sync:
            with autocast_ctx(device, dtype):
                loss, pass_losses = step_module(x, y)
            (loss / accum).backward()
        loss_sum += loss.detach()
        if not pass_sums:
            pass_sums = [0.0] * len(pass_losses)
        for i, v in enumerate(pass_losses):
            pass_sums[i] += float(v)
    return loss_sum / accum, [v / accum for v in pass_sums]


# ---------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def evaluate_bpb(
    model: nn.Module,
    data_dir: str | Path,
    *,
    token_bytes: np.ndarray | torch.Tensor | None,
    eval_tokens: int,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    modes: tuple[str, ...] = ("init",),
    strategy: StrategyConfig | None = None,
    info: DistInfo = DistInfo(),
    tokenizer_hash: str | None = None,
) -> dict[str, float]:
    """Validation loss (nats/token) and BPB on the first `eval_tokens` of the val split.

    BPB = sum of CE nats / (ln 2 * sum of UTF-8 bytes of the target tokens); special tokens
    count 0 bytes. Ranks score disjoint windows and the sums are all-reduced.

    Returns:
        {"val_loss": ..., "val_bpb": ...} for mode "init", plus `val_bpb_<mode>` for others.
    """
    from pipeline.data.loader import validation_loader

    tb = (
        None
        if token_bytes is None
        else torch.as_tensor(np.asarray(token_bytes), dtype=torch.float64)
    )
    tb = tb.to(device) if tb is not None else None
    loader = validation_loader(
        data_dir,
        batch_size,
        seq_len,
        tokenizer_hash=tokenizer_hash,
        rank=info.rank,
        world_size=info.world_size,
    )
    n_batches = max(1, math.ceil(eval_tokens / (batch_size * seq_len * info.world_size)))
    # (nats, bytes, tokens) per mode
    sums = torch.zeros(len(modes), 3, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for i, (inputs, targets) in enumerate(loader):
            if i >= n_batches:
                break
            # Blocking copies: nothing below synchronises, and the loader may reuse the pinned
            # slot once `prefetch` more batches are drawn.
            x = inputs.to(device).long()
            y = targets.to(device).long()
            valid = y >= 0
            nbytes = tb[y.clamp(min=0)] * valid if tb is not None else valid.double()
            for j, mode in enumerate(modes):
                with autocast_ctx(device, dtype):
                    nats = model.token_losses(x, y, mode=mode, strategy=strategy)  # (B, T)
                sums[j, 0] += nats.double()[valid].sum()
                sums[j, 1] += nbytes.sum()
                sums[j, 2] += valid.sum()
    finally:
        model.train(was_training)
        loader.close()
    if info.enabled:
        dist.all_reduce(sums)
    out: dict[str, float] = {}
    for j, mode in enumerate(modes):
        nats, nbytes, ntok = sums[j].tolist()
        key = "" if mode == "init" else f"_{mode}"
        if ntok == 0:
            continue
        if mode == "init":
            out["val_loss"] = nats / ntok
        if tb is not None and nbytes > 0:
            out[f"val_bpb{key}"] = nats / (math.log(2) * nbytes)
    return out


# ---------------------------------------------------------------------------------------------
# Logs


class CsvLog:
    """Append-only CSV with a header fixed by the first row; `truncate_after` for resume."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path, self.fields = path, fields

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (they are recomputed on resume)."""
        if not self.path.is_file():
            return
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)

    def append(self, row: Mapping[str, Any]) -> None:
        new = not self.path.is_file()
        if not new and self.path.stat().st_nlink > 1:
            # A hard link shared with the previous run folder (pipeline.atomic carries files
            # by link): appending in place would change that folder too; own a copy first.
            atomic_write_text(self.path, self.path.read_text(encoding="utf-8"))
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _cell(row.get(k)) for k in self.fields})


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) >= 1e6 else f"{v:.8g}"
    return v


def n_passes(strategy: StrategyConfig, cfg: LRTConfig) -> int:
    if not cfg.has_pathway:
        return 1
    return {"interleaved": strategy.subsets + 1, "multi_refine": strategy.refine_steps + 1}.get(
        strategy.name, 1
    )


# ---------------------------------------------------------------------------------------------
# Signals


class _StopFlag:
    """First SIGINT/SIGTERM asks for a checkpoint at the end of the step; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n[train] {signal.Signals(signum).name} received: finishing this step, then "
            "writing a checkpoint (Ctrl-C again to abort without one)",
            file=sys.stderr,
        )

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------
# The loop


def _gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with tuples as lists (weights-only safe and JSON-able)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class _Run:
    """One rank's training run: model, optimizer, data, logs and the step counter.

    `train` drives it: `restore` (fresh or resume), `wrap` (compile / DDP), then `step` until
    the budget is spent, with `log`, `evaluate` and `checkpoint` at their cadences.
    """

    def __init__(
        self,
        model_cfg: LRTConfig,
        strategy_cfg: StrategyConfig,
        ts: Any,
        data_dir: Path,
        out_dir: Path,
        *,
        token_bytes: np.ndarray | None,
        tokenizer_hash: str | None,
        variant: str,
        keep_checkpoints: int,
    ) -> None:
        from lrt.model import LRT
        from pipeline.data.loader import DataLoader
        from pipeline.data.shards import read_manifest

        self.ts, self.data_dir, self.out_dir, self.variant = ts, data_dir, out_dir, variant
        self.model_cfg, self.strategy = model_cfg, strategy_cfg
        self.token_bytes, self.tokenizer_hash = token_bytes, tokenizer_hash
        self.ckpt_dir, self.keep = out_dir / "ckpt", keep_checkpoints
        self.info = init_distributed(resolve_device(ts.device).type)
        self.device = resolve_device(ts.device, self.info)
        self.dtype = resolve_dtype(ts.dtype, self.device)
        self.main = self.info.is_main

        self.B, self.T = ts.device_batch_size, model_cfg.seq_len
        self.accum = grad_accum_steps(ts.total_batch_tokens, self.B, self.T, self.info.world_size)
        data_vocab = read_manifest(data_dir).vocab_size
        if data_vocab > model_cfg.vocab_size:
            raise ValueError(
                f"the shards in {data_dir} use a vocabulary of {data_vocab} ids but the model has "
                f"vocab_size={model_cfg.vocab_size}; build the model config from the tokenizer"
            )

        torch.manual_seed(ts.seed)
        np.random.seed(ts.seed % 2**32)
        random.seed(ts.seed)
        with torch.device("meta"):
            self.model = LRT(model_cfg)
        check_memory(self.model, model_cfg, ts, self.device)  # before anything is allocated
        self.model.to_empty(device=self.device)
        self.model.init_weights()
        self.model.train()
        self.acct = model_accounting(self.model, strategy_cfg)
        self.total_steps = plan_steps(ts, self.acct["scaling_params"])
        self.fpt = self.acct["flops_per_token"]
        self.peak = peak_flops(self.device)
        self.recipe = recipe_from_settings(ts)
        self.optimizer = self.recipe.build(
            self.model, ts.total_batch_tokens, distributed=self.info.enabled
        )
        self.lr_scale = self.recipe.lr_scale(ts.total_batch_tokens)
        self.loader = DataLoader(
            data_dir,
            "train",
            self.B,
            self.T,
            mode=ts.loader_mode,
            seed=ts.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
            tokenizer_hash=tokenizer_hash,
        )
        self.config = {
            "model": _plain(model_cfg.to_dict()),
            "strategy": _plain(asdict(strategy_cfg)),
            "run": {
                "total_steps": self.total_steps,
                "total_batch_tokens": ts.total_batch_tokens,
                "device_batch_size": self.B,
                "seq_len": self.T,
                "world_size": self.info.world_size,
                "seed": ts.seed,
                "loader_mode": ts.loader_mode,
            },
        }

        self.eval_modes: tuple[str, ...] = ("init",)
        if model_cfg.has_pathway and strategy_cfg.name in STRATEGY_EVAL_MODE:
            self.eval_modes += (STRATEGY_EVAL_MODE[strategy_cfg.name],)
        self.pass_cols = [f"pass{i}_loss" for i in range(n_passes(strategy_cfg, model_cfg))]
        val_cols = ["val_loss", "val_bpb"] + [f"val_bpb_{m}" for m in self.eval_modes[1:]]
        self.train_log = CsvLog(
            out_dir / "train_log.csv",
            ["step", "tokens", "effective_flops", "lr", "loss", *self.pass_cols, *val_cols,
             "tokens_per_s", "mfu", "elapsed_s"],
        )  # fmt: skip
        self.val_log = CsvLog(
            out_dir / "val_log.csv", ["step", "tokens", "effective_flops", *val_cols]
        )

        self.provenance = data_provenance(data_dir, tokenizer_hash)
        self.nonfinite_skipped = 0
        self.step = 0  # optimizer steps completed
        self.elapsed = 0.0  # training seconds (validation excluded), across resumes
        self.last_val: dict[str, float] = {}
        self.step_module: nn.Module = TrainStep(self.model, strategy_cfg)
        self._window = (time.perf_counter(), 0)  # (time, step) of the last log row

    # -- setup ----------------------------------------------------------------------------------

    def restore(self, resume: bool) -> None:
        """Resume from the newest checkpoint, or clear the run folder for a fresh run."""
        if resume:
            found = load_latest(self.ckpt_dir, map_location="cpu")
            if found is None:
                raise CheckpointError(
                    f"--resume: no loadable checkpoint in {self.ckpt_dir}; "
                    "start the run without --resume"
                )
            path, state = found
            for key in ("model", "strategy"):
                check_config(state["config"][key], self.config[key], key)
            # A larger budget (train.max_steps) extends the run, finished or not; the LR
            # schedule follows the new total from here on.
            saved_run = dict(state["config"]["run"])
            if int(state["step"]) > self.total_steps:
                raise CheckpointError(
                    f"--resume: the checkpoint {path} is at step {state['step']}, past the "
                    f"{self.total_steps} steps of this budget; raise train.max_steps"
                )
            saved_run["total_steps"] = self.total_steps
            check_config(saved_run, self.config["run"], "run")
            same_data = check_provenance(
                state.get("provenance"),
                self.provenance,
                path,
                allow=bool(getattr(self.ts, "allow_mismatch", False)),
            )
            self.nonfinite_skipped = int(state["progress"].get("nonfinite_skipped", 0))
            load_state_strict(self.model, state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if same_data:  # other data (allowed): its position in the old data means nothing
                self.loader.load_state_dict(state["loader"][self.info.rank])
            set_rng_state(state["rng"][self.info.rank])
            self.step = int(state["step"])
            self.elapsed = float(state["progress"].get("elapsed_s", 0.0))
            self.last_val = dict(state["progress"].get("last_val", {}))
            if self.main:
                self.train_log.truncate_after(self.step)
                self.val_log.truncate_after(self.step)
                _say(f"{self.variant}: resumed from {path} at step {self.step}/{self.total_steps}")
        elif self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for _, old in list_checkpoints(self.ckpt_dir):
                old.unlink()
            self.train_log.reset()
            self.val_log.reset()
            (self.out_dir / "train_metrics.json").unlink(missing_ok=True)
        if self.info.enabled:
            dist.barrier()
        self._window = (time.perf_counter(), self.step)

    def wrap(self) -> None:
        """torch.compile and/or DDP around the step module (the raw model stays `self.model`)."""
        if self.ts.compile:
            self.step_module = torch.compile(self.step_module)
        if self.info.enabled:
            # A pathway run with strategy "none" may leave pathway weights out of the graph.
            unused = self.model_cfg.has_pathway and self.strategy.name == "none"
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused,
            )

    def params(self) -> dict[str, Any]:
        """Parameters for the tracker."""
        model = self.config["model"]
        return {
            # Fields the settings may leave None (filled in by LRTConfig) are logged as resolved
            # values under their own keys: the stage already logged the settings' `model.*`, and
            # MLflow refuses a param whose value changes within a run.
            **{f"model.{k}": v for k, v in model.items() if k not in RESOLVED_MODEL_FIELDS},
            **{f"resolved.model.{k}": model[k] for k in RESOLVED_MODEL_FIELDS if k in model},
            **{f"strategy.{k}": v for k, v in self.config["strategy"].items()},
            **{f"run.{k}": v for k, v in self.config["run"].items()},
            "params": self.acct["params"],
            "scaling_params": self.acct["scaling_params"],
            "flops_per_token": self.fpt,
            "grad_accum": self.accum,
            "device": str(self.device),
        }

    # -- work -----------------------------------------------------------------------------------

    def train_step(self, batches: Iterator) -> tuple[torch.Tensor, list[float], float]:
        """One optimizer step; returns (mean loss tensor, mean pass losses, LR multiplier)."""
        ts = self.ts
        lr_mult, momentum, wd_mult = self.recipe.schedule(self.step, self.total_steps)
        self.optimizer.set_schedule(lr_mult, momentum, wd_mult)
        loss, pass_losses = accumulate_gradients(
            self.step_module, batches, self.accum, device=self.device, dtype=self.dtype
        )
        # The norm is needed for the non-finite guard even without clipping (max_norm=inf
        # leaves the gradients as they are).
        max_norm = ts.grad_clip if ts.grad_clip > 0 else math.inf
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not self._finite(loss, norm, pass_losses):
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite(loss, norm)
            return loss, pass_losses, lr_mult
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss, pass_losses, lr_mult

    def _finite(self, loss: torch.Tensor, norm: torch.Tensor, pass_losses: list[float]) -> bool:
        """Loss and gradient norm finite on every rank (one device sync per step)."""
        ok = torch.isfinite(loss.detach().float()) & torch.isfinite(norm.detach().float())
        ok = ok & all(math.isfinite(v) for v in pass_losses)
        if self.info.enabled:
            flag = ok.to(self.device, torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            return bool(flag.item())
        return bool(ok.item())

    def _nonfinite(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Skip the step (counted) while `train.nonfinite_skips` allows, else stop."""
        limit = int(getattr(self.ts, "nonfinite_skips", 0))
        what = f"loss {float(loss):.4g}, gradient norm {float(norm):.4g}"
        if self.nonfinite_skipped < limit:
            self.nonfinite_skipped += 1
            if self.main:
                _say(f"{self.variant}: step {self.step + 1}: non-finite {what}; step skipped "
                     f"({self.nonfinite_skipped}/{limit} of train.nonfinite_skips)")  # fmt: skip
            return
        found = list_checkpoints(self.ckpt_dir)
        last = f"the last good checkpoint {found[-1][1]} is intact" if found else "no checkpoint"
        raise NonFiniteError(
            f"{self.variant}: non-finite {what} at step {self.step + 1}/{self.total_steps} "
            f"(after {self.nonfinite_skipped} skipped); nothing was applied or saved, {last}. "
            "Lower the learning rates (train.*_lr), check the data, or allow skipping with "
            "train.nonfinite_skips=N"
        )

    def log_row(
        self, loss: torch.Tensor, pass_losses: list[float], lr_mult: float, t0: float
    ) -> dict[str, Any]:
        """Synchronise, account the step's time (it began at `t0`) and build its log row
        (losses averaged over ranks)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.elapsed += time.perf_counter() - t0
        if self.info.enabled:
            stats = torch.tensor([loss.item(), *pass_losses], device=self.device)
            dist.all_reduce(stats)
            values = (stats / self.info.world_size).tolist()
        else:
            values = [loss.item(), *pass_losses]
        now = time.perf_counter()
        t_last, step_last = self._window
        tok_s = (self.step - step_last) * self.ts.total_batch_tokens / max(now - t_last, 1e-9)
        self._window = (now, self.step)
        tokens = self.step * self.ts.total_batch_tokens
        return {
            "step": self.step,
            "tokens": tokens,
            "effective_flops": self.fpt * tokens,
            "lr": lr_mult * self.ts.matrix_lr * self.lr_scale,  # Muon's lr, batch-scaled
            "loss": values[0],
            **dict(zip(self.pass_cols, values[1:], strict=False)),
            "tokens_per_s": tok_s,
            "mfu": self._mfu(tok_s),
            "elapsed_s": self.elapsed,
        }

    def _mfu(self, tok_s: float | None) -> float | None:
        if not self.peak or not tok_s:
            return None
        return self.fpt * tok_s / (self.peak * self.info.world_size)

    def evaluate(self) -> dict[str, float]:
        """Validation loss/BPB now; excluded from the tokens/s window."""
        self.last_val = evaluate_bpb(
            self.model,
            self.data_dir,
            token_bytes=self.token_bytes,
            eval_tokens=self.ts.eval_tokens,
            batch_size=self.B,
            seq_len=self.T,
            device=self.device,
            dtype=self.dtype,
            modes=self.eval_modes,
            strategy=self.strategy,
            info=self.info,
            tokenizer_hash=self.tokenizer_hash,
        )
        self._window = (time.perf_counter(), self._window[1])
        return self.last_val

    def _check_weights(self) -> None:
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteError(
                f"{self.variant}: non-finite weights after step {self.step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); not saved, the previous checkpoint is "
                "intact. Lower the learning rates (train.*_lr)"
            )

    def checkpoint(self) -> Path | None:
        """Collective: gather every rank's loader and RNG state; rank 0 writes the file."""
        self._check_weights()
        state = {
            "format_version": 1,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": _gather(self.loader.state_dict(), self.info),
            "rng": _gather(rng_state(), self.info),
            "config": self.config,
            "provenance": self.provenance,
            "progress": {
                "tokens": self.step * self.ts.total_batch_tokens,
                "elapsed_s": self.elapsed,
                "last_val": self.last_val,
                "nonfinite_skipped": self.nonfinite_skipped,
            },
        }
        path = None
        if self.main:
            path = save_checkpoint(self.ckpt_dir, state, self.step, keep=self.keep)
        if self.info.enabled:
            dist.barrier()
        return path

    def stop_signal(self, local: int) -> int:
        """The stop request (signal number or 0) agreed by all ranks."""
        if not self.info.enabled:
            return local
        flag = torch.tensor([local], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def finish(self, last_row: Mapping[str, Any]) -> dict[str, Any]:
        """Final checkpoint, model.pt and train_metrics.json; returns the metrics."""
        if not last_row:  # resumed a finished run: nothing trained, re-evaluate for the metrics
            self.evaluate()
        self.checkpoint()
        tokens = self.step * self.ts.total_batch_tokens
        tok_s = tokens / self.elapsed if self.elapsed > 0 else None
        metrics: dict[str, Any] = {
            "variant": self.variant,
            "step": self.step,
            "total_steps": self.total_steps,
            "tokens": tokens,
            "effective_flops": self.fpt * tokens,
            "flops_per_token": self.fpt,
            "params": self.acct["params"],
            "scaling_params": self.acct["scaling_params"],
            "loss": last_row.get("loss"),
            **self.last_val,
            "tokens_per_s": tok_s,
            "mfu": self._mfu(tok_s),
            "elapsed_s": self.elapsed,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "world_size": self.info.world_size,
            "grad_accum": self.accum,
            "nonfinite_skipped": self.nonfinite_skipped,
            "provenance": self.provenance,
            "config": {**self.config, "train": _dump(self.ts)},
        }
        if self.main:
            save_model(
                self.out_dir / "model.pt",
                self.model,
                model_config=self.config["model"],
                strategy_config=self.config["strategy"],
                step=self.step,
                progress={"tokens": tokens, "elapsed_s": self.elapsed},
                provenance=self.provenance,
            )
            atomic_write_text(
                self.out_dir / "train_metrics.json", json.dumps(metrics, indent=2) + "\n"
            )
        return metrics


def device_memory(device: torch.device) -> int:
    """Total memory of `device` in bytes (CPU: physical RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def estimate_training_bytes(model: nn.Module, cfg: LRTConfig, batch: int) -> int:
    """A lower-end estimate of training memory: fp32 weights, gradients and two optimizer
    states per parameter (16 B), plus activations kept for backward (about 16 values of width
    n_embd per layer and the logits, per token, fp32). Works on a meta-device model."""
    params = sum(p.numel() for p in model.parameters())
    tokens = batch * cfg.seq_len
    activations = tokens * (16 * cfg.n_embd * cfg.depth + 2 * cfg.vocab_size) * 4
    return 16 * params + activations


def check_memory(model: nn.Module, cfg: LRTConfig, ts: Any, device: torch.device) -> None:
    """Refuse, before allocation, a model whose estimated training memory exceeds the device
    (or `train.max_memory_gb`)."""
    need = estimate_training_bytes(model, cfg, int(ts.device_batch_size))
    limit_gb = getattr(ts, "max_memory_gb", None)
    limit = int(limit_gb * 2**30) if limit_gb else device_memory(device)
    if need > limit:
        params = sum(p.numel() for p in model.parameters())
        where = "train.max_memory_gb" if limit_gb else f"the {device.type} device"
        raise ValueError(
            f"model of {params / 1e6:,.1f} M parameters (depth={cfg.depth}, n_embd={cfg.n_embd}) "
            f"needs about {need / 2**30:,.1f} GiB to train (weights, gradients, optimizer state, "
            f"activations at device_batch_size={ts.device_batch_size}, seq_len={cfg.seq_len}), "
            f"more than the {limit / 2**30:,.1f} GiB of {where}; reduce model.depth / "
            "model.n_embd / train.device_batch_size, or set train.max_memory_gb"
        )


def _check_strategy_fits(model_cfg: LRTConfig, strategy_cfg: StrategyConfig) -> None:
    # Caught here, before any data is read: otherwise torch fails deep inside the first step
    # with "upper bound and lower bound inconsistent with step sign".
    if strategy_cfg.name == "interleaved" and strategy_cfg.subsets > model_cfg.seq_len:
        raise ValueError(
            f"strategy.subsets={strategy_cfg.subsets} is larger than model.seq_len="
            f"{model_cfg.seq_len}: interleaved training splits the {model_cfg.seq_len} positions "
            "into that many subsets; use subsets <= seq_len"
        )


def train(
    model_cfg: LRTConfig,
    strategy_cfg: StrategyConfig,
    train_settings: Any,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    tracker: Any = None,
    token_bytes: np.ndarray | None = None,
    tokenizer_hash: str | None = None,
    variant: str | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    keep_checkpoints: int = KEEP_CHECKPOINTS,
) -> dict[str, Any]:
    """Train one model and write its logs, checkpoints and final weights into `out_dir`.

    Args:
        model_cfg: Architecture (its vocabulary must cover the shards').
        strategy_cfg: Training strategy (pathway usage per step).
        train_settings: `pipeline.config.settings.TrainSettings` (batch, budget, LRs, cadence, device).
        data_dir: Folder of packed shards (train and val splits).
        out_dir: Run folder (`runs/<variant>`).
        resume: Continue from the newest loadable checkpoint in `out_dir/ckpt`.
        tracker: None, or an object with `log_params`, `log_metrics(metrics, step=)` and
            `log_artifact(path)` (e.g. the `pipeline.tracking` module); rank 0 logs to it.
        token_bytes: (vocab,) UTF-8 bytes per token for BPB; None = validation loss only.
        tokenizer_hash: Checked against the shards' headers when given.
        variant: Name used in messages and metrics (default: the folder name).
        progress: Show a tqdm bar (default: when stderr is a terminal; otherwise plain
            progress lines on stdout every `log_every` steps). False: neither.
        on_step: Called as `on_step(step, row)` after every step on every rank (`row` is empty
            on steps that are not logged); raising KeyboardInterrupt there acts like Ctrl-C
            (single process only: under DDP every rank must stop at the same step).
        keep_checkpoints: How many checkpoints to keep.

    Returns:
        The final metrics (also written to `out_dir/train_metrics.json`).

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM, once the checkpoint is written.
        CheckpointError: `resume` with no usable checkpoint or one of another configuration.
        ValueError: a batch geometry that does not divide, or a vocabulary smaller than the data's.

    Example:
        >>> m = train(LRTConfig(vocab_size=512, depth=2, seq_len=64), StrategyConfig(),
        ...           TrainSettings(max_steps=10), "data/tokens", "runs/demo")  # doctest: +SKIP
    """
    ts = train_settings
    out_dir = Path(out_dir)
    _check_strategy_fits(model_cfg, strategy_cfg)
    run = _Run(
        model_cfg,
        strategy_cfg,
        ts,
        Path(data_dir),
        out_dir,
        token_bytes=token_bytes,
        tokenizer_hash=tokenizer_hash,
        variant=variant or out_dir.name,
        keep_checkpoints=keep_checkpoints,
    )
    run.restore(resume)
    run.wrap()
    track = tracker is not None and run.main
    if track:
        _track(tracker, "log_params", run.params())
    bar = None
    if run.main and (sys.stderr.isatty() if progress is None else progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total_steps, initial=run.step, desc=run.variant, unit="step",
                   dynamic_ncols=True)  # fmt: skip

    # Not a terminal (a log file, CI, DVC): plain lines every log_every steps instead of tqdm.
    plain = run.main and bar is None and progress is None
    batches = iter(run.loader)
    last_row: dict[str, Any] = {}
    at_boundary = True  # the model, optimizer and loader agree on `run.step`
    stop = _StopFlag()
    try:
        with stop:
            while run.step < run.total_steps:
                at_boundary = False
                t0 = time.perf_counter()
                before = run.step
                loss, pass_losses, lr_mult = run.train_step(batches)
                at_boundary = True
                if run.step == before:  # a non-finite step skipped (train.nonfinite_skips)
                    continue
                step, is_last = run.step, run.step == run.total_steps
                do_eval = is_last or (ts.eval_every > 0 and step % ts.eval_every == 0)
                row: dict[str, Any] = {}
                if do_eval or step % ts.log_every == 0 or step == 1:
                    row = run.log_row(loss, pass_losses, lr_mult, t0)
                    if do_eval:
                        row.update(run.evaluate())
                    if run.main:
                        run.train_log.append(row)
                        if do_eval:
                            run.val_log.append(row)
                    if track:
                        _track(tracker, "log_metrics", _metric_names(row), step=step)
                    if plain:
                        _progress_line(run, row)
                    last_row = row
                else:
                    run.elapsed += time.perf_counter() - t0
                if ts.checkpoint_every and step % ts.checkpoint_every == 0 and not is_last:
                    run.checkpoint()
                if bar is not None:
                    bar.update(1)
                    if row:
                        bar.set_postfix(_postfix(row), refresh=False)
                if on_step is not None:
                    on_step(step, row)
                signum = run.stop_signal(stop.signum)
                if signum and not is_last:
                    raise _Stop(signum)
    except (KeyboardInterrupt, _Stop) as exc:
        run.loader.close()
        if bar is not None:
            bar.close()
        if not at_boundary:
            if run.main:
                _say(f"{run.variant}: aborted during step {run.step + 1}; no checkpoint written. "
                     f"Resume from the last checkpoint in {run.ckpt_dir} with --resume.")  # fmt: skip
            raise
        path = run.checkpoint()
        msg = (
            f"{run.variant}: interrupted at step {run.step}/{run.total_steps}; checkpoint written "
            f"to {path or run.ckpt_dir}. Resume with `lrt-pipeline train --variant {run.variant} "
            "--resume` (or train_variant(..., resume=True))."
        )
        if run.main:
            _say(msg)
        signum = exc.signum if isinstance(exc, _Stop) else signal.SIGINT
        raise TrainingInterrupted(128 + int(signum), msg, path) from None
    except BaseException:
        run.loader.close()
        raise
    run.loader.close()
    if bar is not None:
        bar.close()

    metrics = run.finish(last_row)
    if track:
        finals = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        _track(tracker, "log_metrics", {f"final/{k}": v for k, v in finals.items()}, step=run.step)
        # model.pt is a weights_only-loadable state dict (pipeline.train.checkpoint.load_model).
        for name in ("train_log.csv", "val_log.csv", "train_metrics.json", "model.pt"):
            if (out_dir / name).is_file():
                _track(tracker, "log_artifact", out_dir / name)
    return metrics


def _progress_line(run: _Run, row: Mapping[str, Any]) -> None:
    """`[train] lrt step 40/100 loss 3.2101 tok/s 51,200 eta 0:00:12 val_bpb 1.93` (stdout)."""
    step, total = int(row["step"]), run.total_steps
    rate = row["step"] / run.elapsed if run.elapsed > 0 else 0.0  # steps per training second
    eta = int((total - step) / rate) if rate > 0 else None
    parts = [
        f"[train] {run.variant} step {step}/{total}",
        f"loss {row['loss']:.4f}",
        f"tok/s {row['tokens_per_s']:,.0f}",
        f"eta {_hms(eta) if eta is not None else '?'}",
    ]
    if row.get("val_bpb") is not None:
        parts.append(f"val_bpb {row['val_bpb']:.4f}")
    print(" ".join(parts), flush=True)


def _hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _say(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


def _dump(ts: Any) -> dict[str, Any]:
    return ts.model_dump(mode="json") if hasattr(ts, "model_dump") else dict(vars(ts))


def _postfix(row: Mapping[str, Any]) -> dict[str, str]:
    post = {"loss": f"{row['loss']:.4f}", "tok/s": f"{row['tokens_per_s']:,.0f}"}
    if row.get("mfu") is not None:
        post["mfu"] = f"{100 * row['mfu']:.1f}%"
    if "val_bpb" in row:
        post["val_bpb"] = f"{row['val_bpb']:.4f}"
    return post


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _track(tracker: Any, method: str, *args: Any, **kwargs: Any) -> None:
    fn = getattr(tracker, method, None)
    if fn is not None:
        fn(*args, **kwargs)


def _metric_names(row: Mapping[str, Any]) -> dict[str, float]:
    """CSV row -> MLflow metric names: `train/loss`, `train/pass0_loss`, `val/bpb`, ..."""
    out = {}
    for k, v in row.items():
        if k == "step" or v is None:
            continue
        out[f"val/{k.removeprefix('val_')}" if k.startswith("val_") else f"train/{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------
# Stage entry


def train_variant(
    settings: Any, variant: str, *, resume: bool = False, tracker: Any = None
) -> dict:
    """Train one variant of `settings.train.variants` into `{train.out_dir}/{variant}`.

    Reads the shards and tokenizer from `settings.tokenizer.out_dir`; the vocabulary size comes
    from the shard manifest.

    Args:
        settings: `pipeline.config.settings.Settings`.
        variant: A key of `settings.train.variants`.
        resume: Continue from the newest checkpoint of this variant.
        tracker: None (no MLflow), a `pipeline.tracking.Tracker` (opens the `train/<variant>`
            child run if none is active), or any object with `log_params`, `log_metrics`,
            `log_artifact` (e.g. the `pipeline.tracking` module).

    Returns:
        The final metrics dict (see `train`).
    """
    from pipeline.atomic import output_dir, partial_dir
    from pipeline.config.settings import variant_settings, variant_train_settings

    model_s, strategy_s = variant_settings(settings, variant)
    train_s = variant_train_settings(settings, variant)  # the variant's budget applied
    resolve_device(settings.train.device)  # a one-line error before any data is read
    data_dir = Path(settings.tokenizer.out_dir)
    vocab_size, tok_hash, token_bytes = _tokenizer_info(data_dir)

    def run(logger: Any) -> dict:
        # The run folder is locked and written beside the old one (`.VARIANT.partial`, kept
        # when the run fails or is killed so that --resume continues it) and swapped in at
        # the end: a failed or killed run never touches the previous run's outputs. Other
        # DDP ranks only read checkpoints there (rank 0 has staged it before the process
        # group's rendezvous lets them start).
        final = Path(settings.train.out_dir) / variant
        main = int(os.environ.get("RANK", "0")) == 0
        staged = (
            output_dir(final, owned=_run_ours, keep=lambda n: resume, partial=True, resume=resume)
            if main
            else contextlib.nullcontext(partial_dir(final))
        )
        with staged as run_dir:
            return train(
                model_s.to_config(vocab_size),
                strategy_s.to_config(),
                train_s,
                data_dir,
                run_dir,
                resume=resume,
                tracker=logger,
                token_bytes=token_bytes,
                tokenizer_hash=tok_hash,
                variant=variant,
            )

    if tracker is None:
        return run(None)
    from pipeline import tracking

    # A `Tracker` opens this stage's child run unless the caller already did; the module-level
    # helpers then log to the active run (and are no-ops without one, e.g. on ranks > 0).
    if isinstance(tracker, tracking.Tracker) and tracking.active_run_id() is None:
        if int(os.environ.get("RANK", "0")) != 0:
            return run(None)
        with tracker.stage("train", variant=variant):
            return run(tracking)
    return run(tracking if isinstance(tracker, tracking.Tracker) else tracker)


# What the train and eval stages write in a run folder (temps included); anything else there is
# the user's and is carried over.
_RUN_OURS = re.compile(
    r"^\.?(model\.pt|train_log\.csv|val_log\.csv|train_metrics\.json|metrics\.json|"
    r"eval_details\.json|samples\.json|ckpt)(\.tmp.*)?$"
)


def _run_ours(name: str) -> bool:
    return _RUN_OURS.match(name) is not None


def _tokenizer_info(data_dir: Path) -> tuple[int, str | None, np.ndarray | None]:
    """(vocab_size, tokenizer hash, token byte lengths) for the packed data in `data_dir`.

    With the tokenizer file present (`tokenizer.bpe`, else the first `tokenizer*`), its hash is
    what the loader checks the shards against, so shards from another tokenizer fail loudly;
    without it there is no BPB (validation loss only) and the manifest's hash is used.
    """
    from pipeline.data.shards import read_manifest
    from pipeline.data.tokenizer import Tokenizer, find_tokenizer

    manifest = read_manifest(data_dir)
    path = find_tokenizer(data_dir)
    if path is None:
        return int(manifest.vocab_size), manifest.tokenizer_hash, None
    tok = Tokenizer.load(path)
    vocab = max(int(manifest.vocab_size), int(tok.vocab_size))
    return vocab, tok.hash, np.asarray(tok.token_byte_lengths())
