"""pipeline.train.nanochat_io: a fake nanochat checkpoint folder in, a run's model.pt out, and back."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from lrt import LRT, LRTConfig
from lrt.interop import to_nanochat
from pipeline.cli.nanochat import export_nanochat_command, import_nanochat_command
from pipeline.train.checkpoint import load_model
from pipeline.train.nanochat_io import import_nanochat, read_nanochat

torch.set_num_threads(1)


def fake_checkpoint(folder, pathway="official", step=1200, seed=0):
    """A nanochat-layout folder (model_<step>.pt + meta_<step>.json) from a random model."""
    torch.manual_seed(seed)
    cfg = LRTConfig(
        vocab_size=97, depth=2, seq_len=16, n_embd=64, n_head=4, n_kv_head=2, pathway=pathway
    )
    model = LRT(cfg)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sd, config = to_nanochat(model)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, folder / f"model_{step:06d}.pt")
    meta = {"step": step, "model_config": config, "val_bpb": 1.0}
    (folder / f"meta_{step:06d}.json").write_text(json.dumps(meta))
    return model


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no provenance recorded for an imported model
        return load_model(path)


def test_import_then_load_gives_the_same_model(tmp_path):
    src = fake_checkpoint(tmp_path / "ckpt", step=5)
    fake_checkpoint(tmp_path / "ckpt", step=3, seed=9)  # an older step in the same folder
    path = import_nanochat(tmp_path / "ckpt", "imported", runs_dir=tmp_path / "runs")
    assert path == tmp_path / "runs" / "imported" / "model.pt"
    model, strategy, state = _load(path)
    assert state["step"] == 5  # the last step by default
    assert strategy.name == "interleaved" and strategy.subsets == 2
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    for mode in ("init", "sequential"):
        torch.testing.assert_close(model.logits(idx, mode), src.logits(idx, mode), rtol=0, atol=0)
    older, _, state3 = _load(import_nanochat(tmp_path / "ckpt", "old", step=3, runs_dir=tmp_path))
    assert state3["step"] == 3
    assert not torch.equal(older.wte.weight, model.wte.weight)


def test_cli_round_trip(tmp_path):
    fake_checkpoint(tmp_path / "ckpt", pathway="none", step=7)
    runner = CliRunner()
    runs = str(tmp_path / "runs")
    res = runner.invoke(
        import_nanochat_command, [str(tmp_path / "ckpt"), "--variant", "base", "--runs-dir", runs]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "export"
    res = runner.invoke(
        export_nanochat_command, ["--variant", "base", str(out), "--runs-dir", runs]
    )
    assert res.exit_code == 0, res.output
    sd, config, step = read_nanochat(out)
    sd0, config0, _ = read_nanochat(tmp_path / "ckpt")
    assert step == 7 and config == config0
    assert set(sd) == {k.removeprefix("_orig_mod.") for k in sd0}
    for k, v in sd.items():
        assert torch.equal(v, sd0[f"_orig_mod.{k}"])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no nanochat model_<step>.pt"):
        read_nanochat(tmp_path)
    fake_checkpoint(tmp_path, step=4)
    with pytest.raises(FileNotFoundError, match=r"no model_000009\.pt; steps present: \[4\]"):
        read_nanochat(tmp_path, 9)
    (tmp_path / "meta_000004.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta_000004\.json is missing"):
        read_nanochat(tmp_path)
