"""Import and export nanochat / authors'-fork checkpoints as pipeline runs.

nanochat (and the authors' LRT fork) save a checkpoint folder holding `model_<step:06d>.pt`
(the model's state dict, nanochat key names) and `meta_<step:06d>.json` (key `model_config`:
the `GPTConfig` fields). `import_nanochat` turns one into `runs/<variant>/model.pt` in the
format of `pipeline.train.checkpoint.save_model`, so `eval`, `generate` and `report` run on a nanochat
base model or an authors' checkpoint; `export_nanochat` writes a run's model back in nanochat's
layout. The weights are mapped by `lrt.interop` (same outputs, see there).

    lrt-pipeline import-nanochat ~/.cache/nanochat/base_checkpoints/d20 --variant nanochat-d20
    lrt-pipeline export-nanochat --variant lrt out/nanochat_lrt

The tokenizer is not part of a checkpoint: evaluating an imported model on this pipeline's
data only makes sense with the tokenizer it was trained with (nanochat's, vocab 32768).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_write_text
from pipeline.train.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_model,
    save_model,
)

_MODEL_RE = re.compile(r"^model_(\d{6,})\.pt$")


def nanochat_steps(checkpoint_dir: str | Path) -> list[int]:
    """Steps that have a `model_<step>.pt` in a nanochat checkpoint folder, ascending."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"nanochat checkpoint folder {folder} does not exist")
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _MODEL_RE.match(p.name)))


def read_nanochat(
    checkpoint_dir: str | Path, step: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """(state_dict, model_config, step) of a nanochat checkpoint (default: its last step).

    Raises:
        FileNotFoundError: no folder, no model_*.pt, or the step's meta_*.json is missing.
        CheckpointError: the meta file has no `model_config`.
    """
    folder = Path(checkpoint_dir)
    steps = nanochat_steps(folder)
    if not steps:
        raise FileNotFoundError(
            f"{folder} holds no nanochat model_<step>.pt; point at a base_checkpoints/<tag> folder"
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"{folder} has no model_{step:06d}.pt; steps present: {steps}")
    meta_path = folder / f"meta_{step:06d}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing (nanochat writes it beside the model)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if "model_config" not in meta:
        raise CheckpointError(f"{meta_path} has no 'model_config'; not a nanochat meta file")
    config = dict(meta["model_config"])
    if "window_pattern" not in config:  # nanochat's own loader patches old checkpoints so
        config["window_pattern"] = "L"
    state = torch.load(folder / f"model_{step:06d}.pt", map_location="cpu", weights_only=True)
    return state, config, step


def import_nanochat(
    checkpoint_dir: str | Path,
    variant: str,
    *,
    step: int | None = None,
    runs_dir: str | Path = "runs",
) -> Path:
    """Write `runs_dir/<variant>/model.pt` from a nanochat checkpoint; returns its path.

    The run's strategy is the one the checkpoint trained with (`lrt.interop.nanochat_strategy`:
    interleaved S = interleaved_num_passes for the fork's LRT, else none)."""
    from lrt.interop import from_nanochat, nanochat_strategy

    state, config, step = read_nanochat(checkpoint_dir, step)
    model = from_nanochat(state, config)
    strategy = nanochat_strategy(config)
    out = Path(runs_dir) / variant / "model.pt"
    progress = {"source": "nanochat", "nanochat_dir": str(Path(checkpoint_dir).resolve())}
    return save_model(
        out,
        model,
        model_config=model.config.to_dict(),
        strategy_config=asdict(strategy),
        step=step,
        progress=progress,
    )


def export_nanochat(
    variant: str, out_dir: str | Path, *, runs_dir: str | Path = "runs"
) -> tuple[Path, Path]:
    """Write `runs_dir/<variant>/model.pt` as nanochat's `model_<step>.pt` + `meta_<step>.json`
    in out_dir; returns both paths. Only models nanochat can express (baseline, official arm)."""
    from lrt.interop import to_nanochat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # provenance: not checked for an export
        model, strategy, state = load_model(Path(runs_dir) / variant / "model.pt")
    sd, config = to_nanochat(model, strategy)
    step = int(state.get("step", 0))
    out = Path(out_dir)
    model_path = atomic_torch_save(sd, out / f"model_{step:06d}.pt")
    meta = {"step": step, "model_config": config, "source": f"lrt-pipeline run {variant}"}
    meta_path = atomic_write_text(out / f"meta_{step:06d}.json", json.dumps(meta, indent=2))
    return model_path, meta_path
