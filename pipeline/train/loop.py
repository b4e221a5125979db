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

The run's parts, one file each in `pipeline/train/`: `state` (what a rank builds; fresh start or
resume), `optimizer_step` (the optimizer step, its non-finite guard, the log row), `outputs`
(validation, checkpoints, final files), `step` (forward/backward with gradient accumulation),
`device` (process group, device, dtype), `recipe` (optimizer recipe, accounting), `memory`,
`logs`, `signals`; the step budget is `pipeline.config.budget`, the periodic validation
`pipeline.evaluation.periodic`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lrt.config import LRTConfig, StrategyConfig
from pipeline.train.checkpoint import run_file_ours
from pipeline.train.device import resolve_device
from pipeline.train.logs import metric_names, postfix, progress_line, say
from pipeline.train.optimizer_step import Stepping
from pipeline.train.outputs import Outputs
from pipeline.train.recipe import check_strategy_fits
from pipeline.train.signals import StopFlag, StopRequested, TrainingInterrupted
from pipeline.train.state import RunState

KEEP_CHECKPOINTS = 3


class _Run(Stepping, Outputs, RunState):
    """One rank's training run: model, optimizer, data, logs and the step counter.

    `train` drives it: `restore` (fresh or resume), `wrap` (compile / DDP), then `step` until
    the budget is spent, with `log`, `evaluate` and `checkpoint` at their cadences.
    """


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
    check_strategy_fits(model_cfg, strategy_cfg)
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
    stop = StopFlag()
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
                        _track(tracker, "log_metrics", metric_names(row), step=step)
                    if plain:
                        progress_line(run, row)
                    last_row = row
                else:
                    run.elapsed += time.perf_counter() - t0
                if ts.checkpoint_every and step % ts.checkpoint_every == 0 and not is_last:
                    run.checkpoint()
                if bar is not None:
                    bar.update(1)
                    if row:
                        bar.set_postfix(postfix(row), refresh=False)
                if on_step is not None:
                    on_step(step, row)
                signum = run.stop_signal(stop.signum)
                if signum and not is_last:
                    raise StopRequested(signum)
    except (KeyboardInterrupt, StopRequested) as exc:
        run.loader.close()
        if bar is not None:
            bar.close()
        if not at_boundary:
            if run.main:
                say(f"{run.variant}: aborted during step {run.step + 1}; no checkpoint written. "
                     f"Resume from the last checkpoint in {run.ckpt_dir} with --resume.")  # fmt: skip
            raise
        path = run.checkpoint()
        msg = (
            f"{run.variant}: interrupted at step {run.step}/{run.total_steps}; checkpoint written "
            f"to {path or run.ckpt_dir}. Resume with `lrt-pipeline train --variant {run.variant} "
            "--resume` (or train_variant(..., resume=True))."
        )
        if run.main:
            say(msg)
        signum = exc.signum if isinstance(exc, StopRequested) else signal.SIGINT
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


def _track(tracker: Any, method: str, *args: Any, **kwargs: Any) -> None:
    fn = getattr(tracker, method, None)
    if fn is not None:
        fn(*args, **kwargs)


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
            output_dir(
                final, owned=run_file_ours, keep=lambda n: resume, partial=True, resume=resume
            )
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
