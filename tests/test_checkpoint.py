"""Checkpoints: atomic writes, weights-only loading, strict keys/config checks, RNG round trip."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lrt.config import LRTConfig
from lrt.model import LRT
from lrt.optim import build_optimizer
from pipeline.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    check_config,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    load_model,
    load_state_strict,
    rng_state,
    save_checkpoint,
    save_model,
    set_rng_state,
)

REPO = Path(__file__).resolve().parents[1]
CFG = LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=2, pathway="shared")


def _model(cfg: LRTConfig = CFG) -> LRT:
    torch.manual_seed(0)
    m = LRT(cfg)
    m.init_weights()
    return m


def _train_state(step: int) -> dict:
    model = _model()
    opt = build_optimizer(model)
    idx = torch.randint(0, 97, (2, 16))
    model.forward_train(idx, idx).loss.backward()
    opt.step()
    return {
        "format_version": FORMAT_VERSION,
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "loader": [{"epoch": 0, "cursor": 17, "seed": 3, "mode": "bestfit"}],
        "rng": [rng_state()],
        "config": {"model": CFG.to_dict()},
        "progress": {"tokens": 64 * step, "elapsed_s": 1.5, "last_val": {"val_bpb": 2.0}},
    }


def test_round_trip_weights_only(tmp_path: Path) -> None:
    state = _train_state(5)
    path = save_checkpoint(tmp_path, state, 5)
    assert path.name == "step_00000005.pt"
    # The file itself loads under torch's weights-only unpickler.
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 5
    got = load_checkpoint(path)
    for k, v in state["model"].items():
        assert torch.equal(got["model"][k], v)
    model = _model()
    opt = build_optimizer(model)
    opt.load_state_dict(got["optimizer"])
    assert got["loader"] == state["loader"]
    assert got["progress"]["last_val"] == {"val_bpb": 2.0}


def test_keep_last_n_and_latest(tmp_path: Path) -> None:
    state = {
        "format_version": FORMAT_VERSION,
        "step": 0,
        "model": {},
        "optimizer": {},
        "loader": [],
        "rng": [],
        "config": {},
        "progress": {},
    }
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, {**state, "step": step}, step, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    path, got = load_latest(tmp_path)
    assert got["step"] == 40 and path.name == "step_00000040.pt"
    assert load_latest(tmp_path / "empty") is None
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, state, 50, keep=0)


def test_truncated_files_fall_back_to_last_good(tmp_path: Path) -> None:
    good = _train_state(1)
    save_checkpoint(tmp_path, good, 1)
    blob = (tmp_path / "step_00000001.pt").read_bytes()
    # A writer killed mid-write leaves a temp file (never a final name) ...
    (tmp_path / ".step_00000002.pt.tmpabc").write_bytes(blob[: len(blob) // 2])
    # ... and even a truncated final-named file (e.g. copied by hand) is skipped, not trusted.
    (tmp_path / "step_00000003.pt").write_bytes(blob[: len(blob) // 3])
    with pytest.warns(UserWarning, match="step_00000003.pt"):
        path, state = load_latest(tmp_path)
    assert path.name == "step_00000001.pt" and state["step"] == 1
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "step_00000003.pt")
    # The next save sweeps the stale temp file.
    save_checkpoint(tmp_path, good, 4, keep=5)
    assert not list(tmp_path.glob(".step_*"))


def test_kill_9_during_writes_never_corrupts_latest(tmp_path: Path) -> None:
    """A writer saving 4 MB checkpoints in a loop is SIGKILLed; the newest final file loads."""
    script = textwrap.dedent(f"""
        import torch
        from pipeline.train.checkpoint import save_checkpoint, FORMAT_VERSION
        big = torch.randn(1 << 20)
        for step in range(1, 10_000):
            state = {{"format_version": FORMAT_VERSION, "step": step, "model": {{"w": big + step}},
                     "optimizer": {{}}, "loader": [], "rng": [], "config": {{}}, "progress": {{}}}}
            save_checkpoint({str(tmp_path)!r}, state, step, keep=3)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.time() + 60
        while len(list_checkpoints(tmp_path)) < 3 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.137)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no final-named file may be corrupt
        path, state = load_latest(tmp_path)
    step = state["step"]
    assert torch.equal(state["model"]["w"][:4], (state["model"]["w"][:4] - step) + step)
    assert path.name == f"step_{step:08d}.pt"


@dataclass
class _NotPlain:
    x: int = 1


def test_non_plain_objects_are_rejected(tmp_path: Path) -> None:
    state = {
        "format_version": FORMAT_VERSION,
        "step": 1,
        "model": {},
        "optimizer": {},
        "loader": [],
        "rng": [],
        "config": {"bad": _NotPlain()},
        "progress": {},
    }
    path = save_checkpoint(tmp_path, state, 1)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(path)


def test_missing_top_level_keys_and_version(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, {"format_version": FORMAT_VERSION, "step": 1}, 1)
    with pytest.raises(CheckpointError, match="missing keys.*'model'"):
        load_checkpoint(path)
    state = _train_state(2)
    state["format_version"] = 99
    path = save_checkpoint(tmp_path, state, 2)
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(path)


def test_strict_keys_and_config_mismatch() -> None:
    model = _model()
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    del sd["lm_head.weight"]
    with pytest.raises(CheckpointError) as e:
        load_state_strict(model, sd)
    assert "missing keys ['lm_head.weight']" in str(e.value)
    assert "unexpected keys ['extra.weight']" in str(e.value)
    # Same keys, different shapes (another width) -> clear error too.
    other = _model(
        LRTConfig(vocab_size=97, depth=2, seq_len=16, n_embd=128, n_head=2, pathway="shared")
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        load_state_strict(model, other.state_dict())
    with pytest.raises(CheckpointError, match=r"depth: checkpoint=2 current=4"):
        check_config(CFG.to_dict(), {**CFG.to_dict(), "depth": 4}, "model")
    check_config({"loss_weights": (1.0, 2.0)}, {"loss_weights": [1.0, 2.0]}, "strategy")


def test_rng_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = rng_state()
    path = save_checkpoint(
        tmp_path,
        {
            "format_version": FORMAT_VERSION,
            "step": 1,
            "model": {},
            "optimizer": {},
            "loader": [],
            "rng": [state],
            "config": {},
            "progress": {},
        },
        1,
    )
    a = (torch.rand(3), np.random.normal(size=3), random.random())
    set_rng_state(load_checkpoint(path)["rng"][0])
    b = (torch.rand(3), np.random.normal(size=3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_save_and_load_model(tmp_path: Path) -> None:
    model = _model()
    path = save_model(
        tmp_path / "model.pt",
        model,
        model_config=CFG.to_dict(),
        strategy_config={"name": "interleaved", "subsets": 2},
        step=7,
    )
    loaded, strategy, state = load_model(path)
    assert strategy.name == "interleaved" and state["step"] == 7
    idx = torch.randint(0, 97, (2, 16))
    assert torch.equal(loaded.token_losses(idx, idx), model.token_losses(idx, idx))
