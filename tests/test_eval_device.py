"""`eval` with train.device=cuda on a machine without CUDA: a one-line ValueError naming the
setting and the fix, before the model is read (as `train` does)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.train.device import resolve_device


def test_device_cuda_without_cuda_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for setting in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"train.device={setting} but .* no usable CUDA"):
            resolve_device(setting)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_eval_cli_says_it_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    for var in ("LRT_MLFLOW_PARENT_RUN_ID", "LRT_TRACKING__ENABLED"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"enabled": False}}))
    run = tmp_path / "runs" / "lrt"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"not read: the device is checked first")
    result = CliRunner().invoke(
        main, ["eval", "--variant", "lrt", "--set", "train.device=cuda"], catch_exceptions=False
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "ValueError: train.device=cuda but this machine has no usable CUDA" in result.output
