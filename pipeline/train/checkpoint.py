"""Atomic, weights-only checkpoints for training runs.

A checkpoint is one `torch.save` file holding only tensors and plain containers (dicts, lists,
tuples, str, int, float, bool, None), so it always loads with `torch.load(weights_only=True)`:
configs are stored as dicts, RNG states as tensors/lists. Files are written to a temp file in the
same folder, fsynced, then `os.replace`d onto their final name, so a crash or `kill -9` at any
point leaves either the previous set of checkpoints or the new one, never a half-written file
under a final name. Temp files (`.step_*.tmp*`) are ignored and swept on the next save.

Layout of a run's checkpoint folder::

    runs/<variant>/ckpt/step_00000100.pt
    runs/<variant>/ckpt/step_00000200.pt   # the newest loadable one is "latest"

Example:
    >>> state = {"format_version": FORMAT_VERSION, "step": 3, "model": {}}   # doctest: +SKIP
    >>> save_checkpoint("runs/demo/ckpt", state, step=3, keep=2)              # doctest: +SKIP
    >>> path, state = load_latest("runs/demo/ckpt")                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import random
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_write_bytes

FORMAT_VERSION = 1
CKPT_RE = re.compile(r"^step_(\d{8,})\.pt$")
# Top-level keys of a training checkpoint (written by pipeline.train.outputs).
TRAIN_KEYS = frozenset(
    {"format_version", "step", "model", "optimizer", "loader", "rng", "config", "progress"}
)
# Top-level keys of a final model file (runs/<variant>/model.pt).
MODEL_KEYS = frozenset({"format_version", "step", "model", "config", "progress"})


class CheckpointError(ValueError):
    """A checkpoint is unreadable, incomplete, or belongs to a different configuration."""


# ---------------------------------------------------------------------------------------------
# Atomic file writes


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` to `path` atomically (serialised in memory, then one fsynced write)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# RNG state as weights-only-safe values


def rng_state() -> dict[str, Any]:
    """Capture torch (CPU + CUDA), numpy and python RNG states as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(int(v) for v in pyst["state"]), pyst["gauss_next"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------------
# Checkpoint folder


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every final-named checkpoint in `ckpt_dir`, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    ckpt_dir: str | Path, state: Mapping[str, Any], step: int, *, keep: int = 3
) -> Path:
    """Atomically write `state` as `ckpt_dir/step_XXXXXXXX.pt` and keep only the newest `keep`.

    Args:
        ckpt_dir: Folder of the run's checkpoints (created if missing).
        state: Tensors and plain containers only (checked by a weights-only reload in tests).
        step: Optimizer steps completed; names the file.
        keep: How many checkpoints to keep (>= 1); older ones are deleted after the write.

    Returns:
        The path written.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    ckpt_dir = Path(ckpt_dir)
    path = atomic_torch_save(dict(state), checkpoint_path(ckpt_dir, step))
    for _, old in list_checkpoints(ckpt_dir)[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
    # Leftovers of writers killed mid-write (ours are gone by now).
    for tmp in ckpt_dir.glob(".step_*.tmp*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def load_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    required_keys: Iterable[str] = TRAIN_KEYS,
) -> dict[str, Any]:
    """Load one checkpoint with `torch.load(weights_only=True)` and check its top-level keys.

    Raises:
        FileNotFoundError: `path` does not exist.
        CheckpointError: The file is truncated/corrupt, holds non-plain objects, misses keys or
            has an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError/... here
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "it is corrupt or was not written by this pipeline"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds {type(state).__name__}, expected a dict")
    missing = sorted(set(required_keys) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing keys {missing}")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {state.get('format_version')!r}, "
            f"this pipeline reads {FORMAT_VERSION}"
        )
    return state


def load_latest(
    ckpt_dir: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint in `ckpt_dir` that loads; unreadable newer ones are skipped with a warning.

    Returns:
        (path, state), or None when the folder holds no loadable checkpoint.
    """
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_checkpoint(path, map_location=map_location)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
    return None


# ---------------------------------------------------------------------------------------------
# Strict checks


def check_config(saved: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
    """Raise `CheckpointError` naming every field where a saved config differs from the current one."""
    diffs = []
    for key in sorted(set(saved) | set(expected)):
        a, b = saved.get(key, "<absent>"), expected.get(key, "<absent>")
        if isinstance(a, tuple | list) and isinstance(b, tuple | list):
            a, b = list(a), list(b)
        if a != b:
            diffs.append(f"{key}: checkpoint={a!r} current={b!r}")
    if diffs:
        raise CheckpointError(
            f"checkpoint {what} config differs from the current one: "
            + "; ".join(diffs)
            + ". Use the settings the run was started with, or start a fresh run without --resume."
        )


def load_state_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """`module.load_state_dict(strict=True)` with an error that lists missing/unexpected keys."""
    own = set(module.state_dict())
    got = set(state_dict)
    missing, unexpected = sorted(own - got), sorted(got - own)
    if missing or unexpected:
        raise CheckpointError(
            f"model state does not match {type(module).__name__}: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"model state does not fit {type(module).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Provenance: which tokenizer and shard set a model was trained on


class ProvenanceError(CheckpointError):
    """A model or checkpoint is used with a tokenizer or data other than its own."""


ALLOW_MISMATCH = "--set train.allow_mismatch=true"
_EXPECTED: contextvars.ContextVar[tuple[str | None, bool]] = contextvars.ContextVar(
    "_EXPECTED", default=(None, False)
)


@contextlib.contextmanager
def expect_data(data_dir: str | Path, *, allow_mismatch: bool = False):
    """Within the block, `load_model` checks models against `data_dir` (a stage sets this
    from its settings, so evaluation code needs no argument for it)."""
    token = _EXPECTED.set((str(data_dir), bool(allow_mismatch)))
    try:
        yield
    finally:
        _EXPECTED.reset(token)


def data_provenance(data_dir: str | Path, tokenizer_hash: str | None = None) -> dict[str, Any]:
    """What a model trained on `data_dir` records: the tokenizer hash (`tokenizer_hash`, else
    the manifest's), the shard-set hash and the folder."""
    from pipeline.data.shards import shard_set_hash  # lazy: needs the extension

    path = Path(data_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the shard manifest ({e})") from e
    if tokenizer_hash is None:
        from pipeline.data.tokenizer import Tokenizer, find_tokenizer  # lazy: needs the extension

        tok_file = find_tokenizer(data_dir)
        tokenizer_hash = Tokenizer.load(tok_file).hash if tok_file else None
    return {
        "tokenizer_hash": tokenizer_hash or manifest.get("tokenizer_hash"),
        "shards_hash": shard_set_hash(manifest),
        "data_dir": str(Path(data_dir).absolute()),
    }


def check_provenance(
    saved: Mapping[str, Any] | None, current: Mapping[str, Any], path: Path, *, allow: bool
) -> bool:
    """Raise `ProvenanceError` when `saved` (from a model or checkpoint) names another
    tokenizer or shard set than `current`; only warn when `allow`. Files written before
    provenance was recorded pass with a warning. Returns True when the data is the same."""
    if not saved:
        warnings.warn(f"{path} records no tokenizer/data provenance; not checked", stacklevel=3)
        return True
    diffs = [
        f"{key}: model={str(saved.get(key))[:16]} current={str(current.get(key))[:16]}"
        for key in ("tokenizer_hash", "shards_hash")
        if saved.get(key) != current.get(key)
    ]
    if not diffs:
        return True
    msg = (
        f"{path} was trained on other data than {current.get('data_dir')} ("
        + "; ".join(diffs)
        + f"; trained on {saved.get('data_dir')}). Re-train on the current data, point "
        f"tokenizer.out_dir at the model's data, or pass {ALLOW_MISMATCH} to use it anyway"
    )
    if not allow:
        raise ProvenanceError(msg)
    warnings.warn(msg, stacklevel=3)
    return False


# ---------------------------------------------------------------------------------------------
# Final model files (runs/<variant>/model.pt), read by evaluation


def save_model(
    path: str | Path,
    model: torch.nn.Module,
    *,
    model_config: Mapping[str, Any],
    strategy_config: Mapping[str, Any],
    step: int,
    progress: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a final model file: weights + configs as dicts, loadable weights-only.

    `provenance` (`data_provenance`) records the tokenizer and shard set it was trained on;
    `load_model` checks it."""
    state = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": {"model": dict(model_config), "strategy": dict(strategy_config)},
        "progress": dict(progress or {}),
    }
    if provenance is not None:
        state["provenance"] = dict(provenance)
    return atomic_torch_save(state, path)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    allow_mismatch: bool | None = None,
):
    """Rebuild the model saved by `save_model`, refusing one trained on other data.

    The tokenizer and shard set recorded in the file (`data_provenance`) must equal those of
    `data_dir` (default: the folder set by `expect_data`, else the folder the model was
    trained on, when it still exists). `allow_mismatch` (default: the `expect_data` value,
    else False) turns the refusal into a warning.

    Returns:
        (model, strategy_config, state) with the model on `device` in eval mode.

    Raises:
        ProvenanceError: the data differs and mismatches are not allowed.

    Example:
        >>> model, strategy, state = load_model("runs/lrt/model.pt")   # doctest: +SKIP
    """
    from lrt import LRT, LRTConfig, StrategyConfig

    state = load_checkpoint(path, map_location="cpu", required_keys=MODEL_KEYS)
    expected_dir, expected_allow = _EXPECTED.get()
    saved = state.get("provenance")
    folder = data_dir or expected_dir or (saved or {}).get("data_dir")
    if folder is not None and (Path(folder) / "manifest.json").is_file():
        allow = expected_allow if allow_mismatch is None else allow_mismatch
        check_provenance(saved, data_provenance(folder), Path(path), allow=bool(allow))
    cfg = LRTConfig(**state["config"]["model"])
    strategy = StrategyConfig(**state["config"]["strategy"])
    with torch.device("meta"):
        model = LRT(cfg)
    model.to_empty(device=device)
    model.init_weights()  # buffers (rotary tables) are not in every state dict
    load_state_strict(model, state["model"])
    model.eval()
    return model, strategy, state


# The files a run folder's stages write (train: model, logs, checkpoints; eval: metrics,
# details, samples), their temporaries included: what a restaged run folder may replace or
# remove (pipeline.atomic `owned=`); anything else in the folder is the user's and is kept.
_RUN_OURS = re.compile(
    r"^\.?(model\.pt|train_log\.csv|val_log\.csv|train_metrics\.json|metrics\.json|"
    r"eval_details\.json|samples\.json|ckpt)(\.tmp.*)?$"
)


def run_file_ours(name: str) -> bool:
    """Whether `name` in runs/VARIANT/ is a file the train or eval stage writes."""
    return _RUN_OURS.match(name) is not None
