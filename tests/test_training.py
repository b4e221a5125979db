"""Training loop: grad accumulation, outputs, exact resume, Ctrl-C, DDP (2 gloo processes).

Tiny everything (depth 2, width 64, seq 32, vocab ~320) on packed shards built in a temp folder
from a slice of the running Python's standard library.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lrt.config import LRTConfig, StrategyConfig
from lrt.model import LRT
from pipeline.config.budget import grad_accum_steps
from pipeline.config.settings import TrainSettings
from pipeline.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_model
from pipeline.train.forward_backward import TrainStep, accumulate_gradients
from pipeline.train.loop import train
from pipeline.train.signals import TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]
SEQ = 32
VOCAB = 320
LRT_CFG = dict(depth=2, seq_len=SEQ, n_embd=64, n_head=2)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _settings(**kw) -> TrainSettings:
    base = dict(
        device="cpu",
        total_batch_tokens=4 * SEQ * 2,
        device_batch_size=4,
        max_steps=6,
        log_every=1,
        eval_every=3,
        eval_tokens=256,
        checkpoint_every=2,
        seed=7,
        warmdown_ratio=0.5,
    )
    return TrainSettings(**{**base, **kw})


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class _ByteTokenizer:
    """Byte-level stand-in (ids 0-255 = bytes, 256 = <|bos|>) used until pipeline.data.tokenizer
    exists; satisfies what `pipeline.data.packing.pack` needs."""

    bos_id = 256
    vocab_size = 257
    hash = hashlib.sha256(b"test-byte-tokenizer").hexdigest()

    def encode_batch(self, texts, **_):
        return [list(t.encode("utf-8")) for t in texts]

    def token_byte_lengths(self):
        return np.array([1] * 256 + [0], dtype=np.int32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Shards of ~150 KB of stdlib sources (BPE vocab 320 when pipeline.data.tokenizer is available,
    else bytes), 10% validation; token byte lengths saved as token_bytes.npy."""
    packing = pytest.importorskip("pipeline.data.packing", exc_type=ImportError)
    pytest.importorskip("pipeline.data.loader", exc_type=ImportError)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, size = [], 0
    for p in sorted(stdlib.glob("*.py")):
        text = p.read_text(errors="ignore")[:8000]
        docs.append(text)
        size += len(text)
        if size > 150_000:
            break
    try:
        from pipeline.data.tokenizer import Tokenizer

        tok = Tokenizer.train(docs, VOCAB)
    except ImportError:
        tok = _ByteTokenizer()
    out = tmp_path_factory.mktemp("tokens")
    packing.pack(docs, tok, out, shard_tokens=1 << 14, val_fraction=0.1, seed=0)
    np.save(out / "token_bytes.npy", np.asarray(tok.token_byte_lengths()))
    if hasattr(tok, "save"):  # the real tokenizer, where train_variant looks for it
        tok.save(out / "tokenizer.bpe")
    return out


def _token_bytes(data_dir: Path):
    return np.load(data_dir / "token_bytes.npy")


def _cfgs(pathway="shared", strategy="interleaved"):
    return LRTConfig(vocab_size=VOCAB, pathway=pathway, **LRT_CFG), StrategyConfig(name=strategy)


def _log(path: Path) -> list[dict[str, str]]:
    with (path / "train_log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------


def test_grad_accumulation_matches_full_batch() -> None:
    """Two half batches with accum=2 give the full batch's gradients and update (1e-5)."""
    cfg, strat = _cfgs()
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (4, SEQ), dtype=torch.int32)
    y = torch.randint(0, VOCAB, (4, SEQ), dtype=torch.int32)
    grads, params = [], []
    for batches, accum in (([(x, y)], 1), ([(x[:2], y[:2]), (x[2:], y[2:])], 2)):
        torch.manual_seed(1)
        model = LRT(cfg)
        model.init_weights()
        from lrt.optim import build_optimizer

        opt = build_optimizer(model)
        loss, passes = accumulate_gradients(
            TrainStep(model, strat), iter(batches), accum, device=torch.device("cpu")
        )
        assert len(passes) == 3 and torch.isfinite(loss)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-5, msg=n)
        torch.testing.assert_close(params[1][n], params[0][n], atol=1e-5, rtol=1e-5, msg=n)


def test_batch_geometry_errors() -> None:
    assert grad_accum_steps(1024, 4, 32, 2) == 4
    with pytest.raises(
        ValueError,
        match=r"total_batch_tokens=1000.*device_batch_size=4 x "
        r"seq_len=32 x world_size=2 = 256",
    ):
        grad_accum_steps(1000, 4, 32, 2)


def test_step_budget_from_max_steps_or_tokens_per_param() -> None:
    from pipeline.config.budget import plan_steps

    per_param = TrainSettings(max_steps=None, tokens_per_param=20, total_batch_tokens=524288)
    # 20 x 1e6 tokens / 524,288 per step = 38.15 steps, rounded
    assert plan_steps(per_param, 1e6) == 38
    assert plan_steps(per_param, 1.0) == 1  # at least one step
    assert plan_steps(TrainSettings(max_steps=7, tokens_per_param=20), 1e6) == 7


class _Recorder:
    """Stands in for pipeline.tracking (log_params / log_metrics / log_artifact)."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.metrics: list[tuple[int | None, dict]] = []
        self.artifacts: list[str] = []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(Path(path).name)


def test_train_writes_outputs(data_dir: Path, tmp_path: Path) -> None:
    cfg, strat = _cfgs()
    out = tmp_path / "lrt"
    rec = _Recorder()
    m = train(
        cfg,
        strat,
        _settings(),
        data_dir,
        out,
        token_bytes=_token_bytes(data_dir),
        progress=False,
        tracker=rec,
    )
    assert rec.params["model.pathway"] == "shared" and rec.params["grad_accum"] == 2
    # derived fields never reuse the stage's `model.*` keys (MLflow refuses changed values)
    assert "model.n_kv_head" not in rec.params
    assert rec.params["resolved.model.n_kv_head"] == cfg.n_kv_head
    steps = [st for st, mm in rec.metrics if "train/loss" in mm]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "val/bpb_merged" in rec.metrics[2][1] and "final/val_bpb" in rec.metrics[-1][1]
    assert {"train_log.csv", "val_log.csv", "train_metrics.json"} <= set(rec.artifacts)
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"pass0_loss", "pass1_loss", "pass2_loss", "val_bpb", "val_bpb_merged", "mfu"} <= set(
        rows[0]
    )
    assert rows[2]["val_bpb"] and not rows[1]["val_bpb"]  # eval every 3 steps
    assert float(rows[-1]["tokens"]) == 6 * 256 and float(rows[-1]["effective_flops"]) > 0
    assert 0 < m["val_bpb"] < 20 and m["tokens"] == 6 * 256 and m["step"] == 6
    assert json.loads((out / "train_metrics.json").read_text())["val_bpb"] == m["val_bpb"]
    with (out / "val_log.csv").open() as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["3", "6"]
    model, strategy, state = load_model(out / "model.pt")
    assert strategy == strat and state["step"] == 6
    assert [s for s, _ in list_checkpoints(out / "ckpt")] == [2, 4, 6]
    ckpt = load_checkpoint(out / "ckpt" / "step_00000006.pt")
    assert set(ckpt["config"]) == {"model", "strategy", "run"}


def test_resume_is_exact(data_dir: Path, tmp_path: Path) -> None:
    """Interrupted at step 3 (as by Ctrl-C) and resumed == uninterrupted, bit for bit on CPU."""
    cfg, strat = _cfgs()
    s = _settings(checkpoint_every=0)
    ref = train(cfg, strat, s, data_dir, tmp_path / "ref", progress=False)

    def interrupt(step, row):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as exc:
        train(cfg, strat, s, data_dir, tmp_path / "run", progress=False, on_step=interrupt)
    assert exc.value.code == 128 + signal.SIGINT and "--resume" in str(exc.value)
    assert exc.value.checkpoint.name == "step_00000003.pt"
    assert [int(r["step"]) for r in _log(tmp_path / "run")] == [1, 2, 3]
    got = train(cfg, strat, s, data_dir, tmp_path / "run", resume=True, progress=False)
    a, b = _log(tmp_path / "ref"), _log(tmp_path / "run")
    cols = ["step", "loss", "pass0_loss", "pass1_loss", "pass2_loss", "val_loss", "lr"]
    assert [[r[c] for c in cols] for r in a] == [[r[c] for c in cols] for r in b]
    assert got["loss"] == ref["loss"] and got["val_loss"] == ref["val_loss"]
    ma, _, _ = load_model(tmp_path / "ref" / "model.pt")
    mb, _, _ = load_model(tmp_path / "run" / "model.pt")
    for (n, p), q in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(p, q), n


def test_resume_errors(data_dir: Path, tmp_path: Path) -> None:
    cfg, strat = _cfgs()
    small = LRTConfig(vocab_size=100, **LRT_CFG)
    with pytest.raises(ValueError, match="vocabulary of .* ids but the model has vocab_size=100"):
        train(small, strat, _settings(), data_dir, tmp_path / "small", progress=False)
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        train(cfg, strat, _settings(), data_dir, tmp_path / "none", resume=True, progress=False)
    train(cfg, strat, _settings(max_steps=2), data_dir, tmp_path / "r", progress=False)
    other = LRTConfig(vocab_size=VOCAB, pathway="layerwise", **LRT_CFG)
    with pytest.raises(CheckpointError, match="pathway: checkpoint='shared' current='layerwise'"):
        train(
            other,
            strat,
            _settings(max_steps=2),
            data_dir,
            tmp_path / "r",
            resume=True,
            progress=False,
        )


_SCRIPT = """
import sys, time
from pathlib import Path
import torch
from lrt.config import LRTConfig, StrategyConfig
from pipeline.config.settings import TrainSettings
from pipeline.train.loop import train
torch.set_num_threads(1)
data, out, marker = map(Path, sys.argv[1:4])
def on_step(step, row):
    if step == 2:
        marker.write_text("ready")
    time.sleep(0.05)
train(LRTConfig(vocab_size={vocab}, pathway="none", **{cfg}), StrategyConfig(name="none"),
      TrainSettings(**{settings}), data, out, progress=False, on_step=on_step)
"""


def test_sigint_checkpoints_and_resumes(data_dir: Path, tmp_path: Path) -> None:
    settings = dict(
        device="cpu",
        total_batch_tokens=4 * SEQ,
        device_batch_size=4,
        max_steps=400,
        log_every=1,
        eval_every=0,
        eval_tokens=128,
        seed=1,
    )
    script = _SCRIPT.format(vocab=VOCAB, cfg=LRT_CFG, settings=settings)
    out, marker = tmp_path / "base", tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir), str(out), str(marker)],
        cwd=REPO,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "--resume" in err and "checkpoint written" in err
    ((step, path),) = list_checkpoints(out / "ckpt")
    assert 2 <= step < 400
    rows = _log(out)
    assert int(rows[-1]["step"]) == step
    # Resume in-process for a few more steps (a shorter budget would change the LR schedule,
    # so stop again via on_step).
    cfg = LRTConfig(vocab_size=VOCAB, pathway="none", **LRT_CFG)

    def stop(s, row):
        if s == step + 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(
            cfg,
            StrategyConfig(),
            TrainSettings(**settings),
            data_dir,
            out,
            resume=True,
            progress=False,
            on_step=stop,
        )
    assert [int(r["step"]) for r in _log(out)] == list(range(1, step + 4))


_DDP_SCRIPT = """
import os
import sys
from pathlib import Path
import torch
from lrt.config import LRTConfig, StrategyConfig
from pipeline.config.settings import TrainSettings
from pipeline.train.loop import train
torch.set_num_threads(1)
data, out = map(Path, sys.argv[1:3])
cfg = LRTConfig(vocab_size={vocab}, pathway="shared", **{cfg})
strategy = StrategyConfig(name="interleaved")
lines = []  # one file per rank: their stdout would interleave
try:  # 3 sequences per step cannot be split over 2 ranks
    train(cfg, strategy, TrainSettings(**{bad}), data, out / "bad", progress=False)
except ValueError as e:
    lines.append(f"BAD {{e}}")
m = train(cfg, strategy, TrainSettings(**{settings}), data, out / "ddp", progress=False)
lines.append(f"RESULT {{m['world_size']}} {{m['grad_accum']}} {{m['step']}}")
(out / f"rank{{os.environ['RANK']}}.txt").write_text("\\n".join(lines))
"""


@pytest.mark.slow
def test_ddp_two_gloo_processes(data_dir: Path, tmp_path: Path) -> None:
    """torchrun with 2 gloo ranks: a clear error for a batch that does not split, then a run
    that finishes on both ranks with one checkpoint (per-rank loader/RNG states) from rank 0."""
    settings = dict(
        device="cpu",
        total_batch_tokens=2 * 2 * SEQ * 2,
        device_batch_size=2,
        max_steps=3,
        log_every=1,
        eval_every=0,
        eval_tokens=256,
        checkpoint_every=2,
        seed=3,
    )
    bad = dict(device="cpu", total_batch_tokens=3 * SEQ, device_batch_size=1, max_steps=1)
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT.format(vocab=VOCAB, cfg=LRT_CFG, settings=settings, bad=bad))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(data_dir),
            str(tmp_path),
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):
        bad_line, result = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert bad_line.startswith("BAD train.total_batch_tokens=96 is not divisible by")
        assert "world_size=2 = 64" in bad_line
        assert result == "RESULT 2 2 3"  # finished: world 2, accum 2, 3 steps
    out = tmp_path / "ddp"
    ckpt = load_checkpoint(out / "ckpt" / "step_00000003.pt")
    assert len(ckpt["loader"]) == 2 and len(ckpt["rng"]) == 2  # one state per rank
    assert [st["rank"] for st in ckpt["loader"]] == [0, 1]
    assert ckpt["config"]["run"]["world_size"] == 2
    assert [int(r["step"]) for r in _log(out)] == [1, 2, 3]  # rank 0 alone wrote the log
    assert (out / "model.pt").is_file()


def test_train_variant_from_settings(data_dir: Path, tmp_path: Path) -> None:
    from pipeline.config.settings import load_settings
    from pipeline.train.loop import train_variant

    overrides = [f"model.{k}={v}" for k, v in LRT_CFG.items()] + [
        f"tokenizer.out_dir={data_dir}",
        f"train.out_dir={tmp_path / 'runs'}",
        "train.device=cpu",
        "train.max_steps=2",
        "train.device_batch_size=2",
        f"train.total_batch_tokens={2 * SEQ}",
        "train.eval_tokens=128",
    ]
    settings = load_settings(None, overrides)
    m = train_variant(settings, "lrt")
    assert m["variant"] == "lrt" and m["step"] == 2
    assert m["config"]["model"]["pathway"] == "shared"
    assert m["config"]["train"]["max_steps"] == 2
    if (data_dir / "tokenizer.bpe").exists():
        assert 0 < m["val_bpb"] < 20
    saved = json.loads((tmp_path / "runs" / "lrt" / "train_metrics.json").read_text())
    assert saved["config"]["strategy"]["name"] == "interleaved"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_compile_and_resume(data_dir: Path, tmp_path: Path) -> None:
    """CUDA path: bf16 autocast, torch.compile, MFU on a known GPU, and resume from a CUDA
    checkpoint (losses close, not bit-exact: GPU kernels may be non-deterministic)."""
    cfg, strat = _cfgs()
    s = _settings(device="cuda", compile=True, checkpoint_every=0)
    ref = train(cfg, strat, s, data_dir, tmp_path / "ref", token_bytes=_token_bytes(data_dir),
                progress=False)  # fmt: skip
    assert ref["dtype"] == "bfloat16" and ref["device"].startswith("cuda")
    assert 0 < ref["val_bpb"] < 20
    if any(k in torch.cuda.get_device_name() for k in ("H100", "H200", "A100")):
        assert ref["mfu"] is not None and 0 < ref["mfu"] < 1

    def interrupt(step, row):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(cfg, strat, s, data_dir, tmp_path / "run", progress=False, on_step=interrupt)
    got = train(cfg, strat, s, data_dir, tmp_path / "run", resume=True, progress=False)
    assert got["loss"] == pytest.approx(ref["loss"], rel=0.05)


# ---------------------------------------------------------------------------------------------
# Guards: non-finite steps, models too big, other data


def _poison_from(monkeypatch: pytest.MonkeyPatch, first: int, last: int = 10**9) -> None:
    """Forward calls number `first`..`last` (0-based, one per micro-batch) return NaN loss:
    a fault injected into the model, not into the guard under test."""
    real = TrainStep.forward
    calls = {"n": 0}

    def forward(self, idx, targets):
        loss, passes = real(self, idx, targets)
        n, calls["n"] = calls["n"], calls["n"] + 1
        return (loss * float("nan"), passes) if first <= n <= last else (loss, passes)

    monkeypatch.setattr(TrainStep, "forward", forward)


def test_non_finite_loss_stops_with_the_last_good_checkpoint_intact(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.train.signals import NonFiniteError

    cfg, strat = _cfgs()
    _poison_from(monkeypatch, first=6)  # 2 micro-batches per step: step 4 is the first bad one
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan.* at step 4/6") as info:
        train(cfg, strat, _settings(checkpoint_every=1), data_dir, out, progress=False)
    assert "step_00000003.pt is intact" in str(info.value)
    assert "train.nonfinite_skips" in str(info.value)
    assert [s for s, _ in list_checkpoints(out / "ckpt")] == [1, 2, 3]
    state = load_checkpoint(out / "ckpt" / "step_00000003.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (out / "model.pt").exists()


def test_non_finite_steps_can_be_skipped_and_counted(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, strat = _cfgs()
    _poison_from(monkeypatch, first=6, last=7)  # one bad step
    m = train(cfg, strat, _settings(nonfinite_skips=1, checkpoint_every=0), data_dir,
              tmp_path / "run", progress=False)  # fmt: skip
    assert m["nonfinite_skipped"] == 1 and m["step"] == 6
    model, _, _ = load_model(tmp_path / "run" / "model.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_model_too_big_for_the_device_is_refused_before_allocation(
    data_dir: Path, tmp_path: Path
) -> None:
    from pipeline.train.device import device_memory

    cfg = LRTConfig(vocab_size=VOCAB, depth=48, n_embd=8192, n_head=64, seq_len=SEQ)
    strat = StrategyConfig()
    assert device_memory(torch.device("cpu")) < 16 * 48 * 12 * 8192**2  # really does not fit
    with pytest.raises(
        ValueError, match=r"needs about [\d,.]+ GiB to train .* reduce model\.depth"
    ):
        train(cfg, strat, _settings(), data_dir, tmp_path / "big", progress=False)
    with pytest.raises(ValueError, match=r"more than the 0\.0 GiB of train\.max_memory_gb"):
        train(*_cfgs(), _settings(max_memory_gb=1e-6), data_dir, tmp_path / "s", progress=False)
    assert not (tmp_path / "big").exists() and not (tmp_path / "s").exists()


def test_resume_and_load_refuse_other_data_unless_allowed(data_dir: Path, tmp_path: Path) -> None:
    from pipeline.data.packing import pack
    from pipeline.train.checkpoint import ProvenanceError

    cfg, strat = _cfgs()
    out = tmp_path / "run"
    train(cfg, strat, _settings(max_steps=2, checkpoint_every=1), data_dir, out, progress=False)
    # The same documents re-split (another val_fraction): another shard set, same tokenizer.
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = [p.read_text(errors="ignore")[:8000] for p in sorted(stdlib.glob("*.py"))[:30]]
    from pipeline.data.tokenizer import Tokenizer

    tok = Tokenizer.load(data_dir / "tokenizer.bpe")
    pack(docs, tok, other, shard_tokens=1 << 14, val_fraction=0.3, seed=0)
    with pytest.raises(ProvenanceError, match=r"shards_hash.*--set train\.allow_mismatch=true"):
        train(cfg, strat, _settings(max_steps=2), other, out, resume=True, progress=False)
    with pytest.raises(ProvenanceError, match="trained on other data"):
        load_model(out / "model.pt", data_dir=other)
    load_model(out / "model.pt", data_dir=data_dir)  # its own data: fine
    with pytest.warns(UserWarning, match="trained on other data"):
        load_model(out / "model.pt", data_dir=other, allow_mismatch=True)
    with pytest.warns(UserWarning, match="trained on other data"):
        train(cfg, strat, _settings(max_steps=2, allow_mismatch=True), other, out, resume=True,
              progress=False)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Progress lines, budget extension (issue 13)


def test_plain_progress_lines_when_not_a_terminal(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    cfg, strat = _cfgs()
    out = tmp_path / "run"
    train(cfg, strat, _settings(log_every=2), data_dir, out, token_bytes=_token_bytes(data_dir))
    lines = capsys.readouterr().out.splitlines()
    pattern = re.compile(
        r"^\[train\] run step (\d+)/6 loss (\d+\.\d{4}) tok/s [\d,]+ eta \d+:\d\d:\d\d"
        r"( val_bpb (\d+\.\d{4}))?$"
    )
    matches = [pattern.match(line) for line in lines if line.startswith("[train] run step")]
    assert matches and all(matches), lines
    rows = _log(out)  # the same rows as train_log.csv, independently written
    assert [int(m.group(1)) for m in matches] == [int(r["step"]) for r in rows]
    assert [m.group(2) for m in matches] == [f"{float(r['loss']):.4f}" for r in rows]
    assert matches[-1].group(4) == f"{float(rows[-1]['val_bpb']):.4f}"


def test_resume_with_a_larger_budget_extends_a_finished_run(data_dir: Path, tmp_path: Path):
    cfg, strat = _cfgs()
    out = tmp_path / "run"
    first = train(cfg, strat, _settings(max_steps=4, checkpoint_every=0), data_dir, out,
                  progress=False)  # fmt: skip
    assert first["step"] == 4
    with pytest.raises(CheckpointError, match=r"step 4, past the 3 steps .* train\.max_steps"):
        train(cfg, strat, _settings(max_steps=3), data_dir, out, resume=True, progress=False)
    more = train(cfg, strat, _settings(max_steps=6, checkpoint_every=0), data_dir, out,
                 resume=True, progress=False)  # fmt: skip
    assert more["step"] == more["total_steps"] == 6
    assert [int(r["step"]) for r in _log(out)][-3:] == [4, 5, 6]


# ---------------------------------------------------------------------------------------------
# nanochat's optimizer recipe, wired from train.*


def test_train_settings_defaults_are_the_lrt_recipe() -> None:
    """Every recipe default of TrainSettings is lrt.optim.OptimizerRecipe's (nanochat's)."""
    from lrt.optim import OptimizerRecipe
    from pipeline.train.recipe import recipe_from_settings

    assert recipe_from_settings(TrainSettings()) == OptimizerRecipe()
    legacy = OptimizerRecipe.legacy()
    ts = TrainSettings(
        embedding_lr=legacy.embedding_lr,
        scalar_lr=legacy.scalar_lr,
        weight_decay=legacy.weight_decay,
        muon_variant="newton_schulz",
        variance_reduction=False,
        cautious_wd=False,
        reference_batch_tokens=None,
        weight_decay_reference_depth=None,
        warmdown_ratio=legacy.warmdown_ratio,
        schedule_weight_decay=False,
        grad_clip=legacy.grad_clip,
    )
    # every knob reaches the recipe (x0_betas is the one the settings do not expose)
    assert recipe_from_settings(ts) == dataclasses.replace(legacy, x0_betas=(0.96, 0.95))


def _record_steps(monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict], list[float]]:
    """Record, at each optimizer step, the Muon group's lr / weight decay / momentum and the
    AdamW embedding lr (the real optimizer steps afterwards), and every clip's max_norm."""
    from lrt.optim import MuonAdamW

    steps: list[dict] = []
    clips: list[float] = []
    real_step, real_clip = MuonAdamW.step, torch.nn.utils.clip_grad_norm_

    def step(self, closure=None):
        groups = {g["name"]: g for g in self.param_groups}
        m = groups["matrix"]
        steps.append(
            dict(
                lr=m["lr"],
                wd=m["weight_decay"],
                momentum=m["momentum"],
                variant=m["variant"],
                emb_lr=groups["embedding"]["lr"],
            )
        )
        return real_step(self, closure)

    def clip(params, max_norm, *args, **kwargs):
        clips.append(float(max_norm))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(MuonAdamW, "step", step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    return steps, clips


def test_training_follows_the_recipe_schedules_and_scalings(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hand-computed: batch 256 tokens at reference 64 -> every lr x2; weight decay 0.2 x
    (1/2)^2 at depth 2 = 0.05, linear to 0 over 4 steps; warm-down 0.5 of 4 steps; momentum
    0.85 + 0.1 k/300; no gradient clip by default; the log's lr is Muon's scaled lr."""
    steps, clips = _record_steps(monkeypatch)
    cfg, strat = _cfgs("none", "none")
    ts = _settings(
        max_steps=4,
        checkpoint_every=0,
        eval_every=0,
        weight_decay=0.2,
        weight_decay_reference_depth=1,
        reference_batch_tokens=64,
        matrix_lr=0.02,
        embedding_lr=0.3,
        warmdown_ratio=0.5,
    )
    train(cfg, strat, ts, data_dir, tmp_path / "b", progress=False)
    lr_mult = [1.0, 1.0, 1.0, 0.5]  # warm-down over the last round(0.5 * 4) = 2 steps
    assert [s["lr"] for s in steps] == pytest.approx([0.02 * 2 * m for m in lr_mult])
    assert [s["wd"] for s in steps] == pytest.approx([0.05 * (1 - k / 4) for k in range(4)])
    assert [s["momentum"] for s in steps] == pytest.approx([0.85 + 0.1 * k / 300 for k in range(4)])
    s_emb = (64 / 768) ** -0.5  # nanochat's width scaling of the AdamW lrs
    assert [s["emb_lr"] for s in steps] == pytest.approx([0.3 * s_emb * 2 * m for m in lr_mult])
    assert {s["variant"] for s in steps} == {"polar_express"}
    assert clips == [math.inf] * 4
    logged = [float(r["lr"]) for r in _log(tmp_path / "b")]
    assert logged == pytest.approx([0.04, 0.04, 0.04, 0.02])  # each row: the lr its step used

    steps.clear(), clips.clear()
    ts = _settings(
        max_steps=1,
        checkpoint_every=0,
        eval_every=0,
        grad_clip=0.5,
        muon_variant="newton_schulz",
        schedule_weight_decay=False,
    )
    train(cfg, strat, ts, data_dir, tmp_path / "c", progress=False)
    assert clips == [0.5] and steps[0]["variant"] == "newton_schulz"
    # weight decay 0.2 x (12/2)^2 at depth 2 (nanochat's reference depth 12), unscheduled
    assert steps[0]["wd"] == pytest.approx(0.2 * 36)


def test_train_variant_uses_the_variants_own_budget(data_dir: Path, tmp_path: Path) -> None:
    """A variant's train.max_steps (baseline_2x's kind of override) is the budget it trains."""
    from pipeline.config.settings import load_settings
    from pipeline.train.loop import train_variant

    overrides = [f"model.{k}={v}" for k, v in LRT_CFG.items()] + [
        f"tokenizer.out_dir={data_dir}",
        f"train.out_dir={tmp_path / 'runs'}",
        "train.device=cpu",
        "train.max_steps=1",
        "train.device_batch_size=2",
        f"train.total_batch_tokens={2 * SEQ}",
        "train.eval_tokens=64",
        "train.log_every=1",
        "train.variants={b: {model.pathway: none}, b2: {model.pathway: none, train.max_steps: 3}}",
    ]
    settings = load_settings(None, overrides)
    assert train_variant(settings, "b")["step"] == 1
    m = train_variant(settings, "b2")
    assert m["step"] == 3 and m["config"]["train"]["max_steps"] == 3
    assert len(_log(tmp_path / "runs" / "b2")) == 3
