"""train.nproc_per_node: the train stage (and `lrt-pipeline train`) re-launch under torchrun.

Through the real entry points in subprocesses, on CPU (2 gloo ranks): `python -m stages.train`
(what `dvc repro` runs) and the CLI both come back with a run trained by world size 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from pipeline.config.sections import TrainSettings
from pipeline.train.launch import maybe_relaunch, relaunch_command, resolve_nproc, under_torchrun

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("lrt-pipeline")

PARAMS = {
    "data": {"source": "files", "paths": ["corpus"], "max_bytes": 120_000},
    "tokenizer": {"vocab_size": 300, "train_max_bytes": 40_000, "val_fraction": 0.1},
    "model": {"depth": 1, "n_embd": 64, "n_head": 1, "seq_len": 32, "window_pattern": "L"},
    "train": {
        "variants": {"lrt": {"model.pathway": "shared", "strategy.name": "interleaved"}},
        "device": "cpu",
        "total_batch_tokens": 256,  # 4 rows x 32 tokens x 2 ranks: one micro-batch per rank
        "device_batch_size": 4,
        "max_steps": 3,
        "log_every": 1,
        "eval_every": 0,
        "eval_tokens": 256,
    },
    "tracking": {"enabled": False},
}


def test_resolve_nproc_and_the_command() -> None:
    assert resolve_nproc(TrainSettings(nproc_per_node=4, device="cpu")) == 4
    assert resolve_nproc(TrainSettings(nproc_per_node="auto", device="cpu")) == 1
    cmd = relaunch_command(2, "stages.train", ["lrt"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and cmd[-3:] == ["-m", "stages.train", "lrt"]
    with pytest.raises(ValueError):
        TrainSettings(nproc_per_node=0)


def test_a_rank_never_relaunches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert under_torchrun()
    assert maybe_relaunch(TrainSettings(nproc_per_node=8, device="cpu"), "x", []) is None
    monkeypatch.delenv("LOCAL_RANK")
    assert maybe_relaunch(TrainSettings(nproc_per_node=1, device="cpu"), "x", []) is None


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CLI.exists():
        pytest.skip(f"{CLI} is not installed")
    root = tmp_path_factory.mktemp("launch")
    corpus = root / "corpus"
    corpus.mkdir()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]:
        (corpus / f"{path.stem}.txt").write_text(path.read_text(encoding="utf-8"))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for stage in ("download", "tokenize"):
        done = subprocess.run([str(CLI), stage], cwd=root, env=_env(), capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LRT_", "LOCAL_RANK"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["stage", "cli"])
def test_train_relaunches_under_torchrun(project: Path, entry: str) -> None:
    cmd = (
        [sys.executable, "-m", "stages.train", "lrt"]
        if entry == "stage"
        else [str(CLI), "train", "--variant", "lrt", "--set", "train.seed=5"]
    )
    done = subprocess.run(
        cmd,
        cwd=project,
        env=_env(LRT_TRAIN__NPROC_PER_NODE="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "re-launching under torchrun" in done.stderr
    metrics = json.loads((project / "runs/lrt/train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["grad_accum"] == 1 and metrics["step"] == 3
    if entry == "cli":  # the --set reached the ranks: the same command line was re-run
        assert metrics["config"]["train"]["seed"] == 5
