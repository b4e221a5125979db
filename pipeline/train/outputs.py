"""What a run writes as it goes: the periodic validation (`pipeline.evaluation.periodic`), the
resumable checkpoints and, at the end, `model.pt` and `train_metrics.json`. A mixin of
`pipeline.train.loop._Run`: it works on the attributes `pipeline.train.state.RunState` sets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.atomic import atomic_write_text
from pipeline.evaluation.periodic import periodic_bpb
from pipeline.train.checkpoint import rng_state, save_checkpoint, save_model
from pipeline.train.device import gather
from pipeline.train.signals import NonFiniteError


class Outputs:
    """`evaluate`, `checkpoint` and `finish` of a run (see `pipeline.train.loop._Run`)."""

    def evaluate(self) -> dict[str, float]:
        """Validation loss/BPB now; excluded from the tokens/s window."""
        self.last_val = periodic_bpb(
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
            "loader": gather(self.loader.state_dict(), self.info),
            "rng": gather(rng_state(), self.info),
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


def _dump(ts: Any) -> dict[str, Any]:
    return ts.model_dump(mode="json") if hasattr(ts, "model_dump") else dict(vars(ts))
