"""A training run's state: everything one rank builds from the configs (model, optimizer, data
loader, logs, accounting), its start (fresh, or resumed from the newest checkpoint) and the
compile / DDP wrapping. The step loop (`pipeline.train.optimizer_step`) and the evaluation and
checkpoint outputs (`pipeline.train.outputs`) work on these attributes; `pipeline.train.loop`
puts the three together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lrt.config import LRTConfig, StrategyConfig
from pipeline.config.budget import grad_accum_steps, plan_steps
from pipeline.train.checkpoint import (
    CheckpointError,
    check_config,
    check_provenance,
    data_provenance,
    list_checkpoints,
    load_latest,
    load_state_strict,
    set_rng_state,
)
from pipeline.train.device import init_distributed, peak_flops, resolve_device, resolve_dtype
from pipeline.train.forward_backward import TrainStep
from pipeline.train.logs import CsvLog, say
from pipeline.train.memory import check_memory
from pipeline.train.recipe import model_accounting, n_passes, recipe_from_settings

# LRTConfig fields whose settings default is None (derived from depth / n_head / seq_len).
RESOLVED_MODEL_FIELDS = ("n_embd", "n_head", "n_kv_head", "rope_len")
# Which mode also gets a validation BPB column, per training strategy (LRT variants only).
STRATEGY_EVAL_MODE = {"interleaved": "merged", "multi_refine": "refine"}


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with tuples as lists (weights-only safe and JSON-able)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class RunState:
    """One rank's run state: model, optimizer, data, logs and the step counter, built from the
    configs; `restore` (fresh or resume), `wrap` (compile / DDP) and the tracker's `params`."""

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
                say(f"{self.variant}: resumed from {path} at step {self.step}/{self.total_steps}")
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
