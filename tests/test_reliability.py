"""Reliability and security: bad inputs, injected faults, and what may be loaded from disk.

Each test proves one row of docs/RELIABILITY.md; rows already proven by a component's own tests
are referenced there instead of repeated here. Faults are real: a full disk is RLIMIT_FSIZE in a
child process (writes fail with EFBIG), a crash is SIGKILL of a child process, a race is two
processes writing the same MLflow sqlite store at once.

Run: .venv/bin/python -m pytest tests/test_reliability.py -q
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
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
from pipeline.config.sections import SettingsError
from pipeline.config.settings import TrainSettings, load_settings
from pipeline.data.packing import pack
from pipeline.data.shards import ShardFormatError, read_manifest, read_shard
from pipeline.data.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerFormatError
from pipeline.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    load_model,
    save_checkpoint,
)
from pipeline.train.loop import train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
ENV.pop("LRT_MLFLOW_PARENT_RUN_ID", None)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, BOS = 256 (the packer's Python path)."""

    vocab_size = 257
    bos_id = 256
    hash = hashlib.sha256(b"reliability-byte-tokenizer").hexdigest()

    def encode_batch(self, texts, **_):
        return [list(t.encode("utf-8")) for t in texts]


BYTE_TOKENIZER_SRC = """
import hashlib
class ByteTokenizer:
    vocab_size, bos_id = 257, 256
    hash = hashlib.sha256(b"reliability-byte-tokenizer").hexdigest()
    def encode_batch(self, texts, **_):
        return [list(t.encode("utf-8")) for t in texts]
"""


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _run_child(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def real_tok() -> Tokenizer:
    docs = [f"doc {i}: the quick brown fox, naïve café {i * 7}\n" * 3 for i in range(60)]
    return Tokenizer.train(docs, vocab_size=300)


# =============================================================================================
# Bad inputs
# =============================================================================================


def test_special_token_text_in_documents_stays_ordinary(tmp_path: Path, real_tok: Tokenizer):
    """Text spelling `<|bos|>` etc. cannot inject control tokens into shards."""
    docs = [f"before {s} after" for s in SPECIAL_TOKENS] + ["<|bos|><|bos|>", "plain"]
    m = pack(docs, real_tok, tmp_path, val_fraction=0.0)
    header, tokens = read_shard(m.splits["train"][0].path)
    special_ids = set(real_tok.special_tokens.values())
    at = np.flatnonzero(np.isin(tokens, list(special_ids)))
    np.testing.assert_array_equal(at, header.doc_starts)  # only the BOS the packer prepends
    assert set(tokens[at].tolist()) == {real_tok.bos_id} and len(at) == len(docs)
    for d in docs:
        assert real_tok.decode(real_tok.encode(d)) == d


def test_tokenizer_file_invalid_utf8_missing_or_garbage(tmp_path: Path, real_tok: Tokenizer):
    bad = tmp_path / "bad.bpe"
    bad.write_bytes(b"lrt-bpe 1\n\xff\xfe\xfd\n")
    with pytest.raises(TokenizerFormatError, match=r"bad\.bpe.*not UTF-8"):
        Tokenizer.load(bad)
    with pytest.raises(FileNotFoundError, match=r"absent\.bpe"):
        Tokenizer.load(tmp_path / "absent.bpe")
    # Regression (found by rust_loader/bpe/tests/fuzz.rs): a huge count in the file aborted the
    # whole process with "capacity overflow" (a PanicException, not a ValueError).
    good = tmp_path / "good.bpe"
    real_tok.save(good)
    head = good.read_text().split("\n")[:2]
    for tail in ("specials 18446744073709551615", "specials 0\nranks 99999999999999999"):
        bad.write_text("\n".join([*head, tail, ""]))
        with pytest.raises(TokenizerFormatError, match=r"bad\.bpe"):
            Tokenizer.load(bad)


def test_shard_from_another_tokenizer_is_refused_by_training(tmp_path: Path):
    """The run's tokenizer hash is checked against every shard header before training."""
    pack(["some text here"] * 20, ByteTokenizer(), tmp_path / "tok", val_fraction=0.2, seed=1)
    other = hashlib.sha256(b"the run's tokenizer").hexdigest()
    from pipeline.data.shards import TokenizerMismatchError

    with pytest.raises(TokenizerMismatchError, match=rf"train_0000\.bin.*{other}"):
        train(
            LRTConfig(vocab_size=257, depth=1, seq_len=8, n_embd=32, n_head=1),
            StrategyConfig(),
            TrainSettings(device="cpu", total_batch_tokens=16, device_batch_size=2, max_steps=1),
            tmp_path / "tok",
            tmp_path / "run",
            tokenizer_hash=other,
            progress=False,
        )
    assert not (tmp_path / "run" / "ckpt").exists()


def test_invalid_values_are_rejected_with_the_key(tmp_path: Path):
    with pytest.raises(SettingsError, match=r"train\.matrix_lr"):
        load_settings(None, ["train.matrix_lr=-0.1"], env={})
    with pytest.raises(SettingsError, match="source_layer=4 is outside"):
        load_settings(None, ["model.depth=4", "model.source_layer=4"], env={})
    with pytest.raises(ValueError, match=r"source_layer=-3 is outside \[-2, 2\)"):
        LRTConfig(vocab_size=10, depth=2, source_layer=-3)
    # S > T: refused before any data is read (the data folder does not even exist).
    with pytest.raises(ValueError, match=r"strategy.subsets=40 is larger than model.seq_len=32"):
        train(
            LRTConfig(vocab_size=257, depth=1, seq_len=32, n_embd=32, n_head=1, pathway="shared"),
            StrategyConfig(name="interleaved", subsets=40),
            TrainSettings(device="cpu", total_batch_tokens=64, device_batch_size=2, max_steps=1),
            tmp_path / "no-data",
            tmp_path / "run",
            progress=False,
        )


def test_settings_refuse_more_subsets_than_positions():
    with pytest.raises(SettingsError, match="subsets"):
        load_settings(None, ["model.seq_len=16", "train.device_batch_size=16",
                             "train.total_batch_tokens=256", "strategy.subsets=17"], env={})  # fmt: skip


def test_unwritable_output_folder(tmp_path: Path, real_tok: Tokenizer):
    """An output folder that cannot be created (its parent is a file) or written (read-only)
    fails with OSError naming the path, and leaves nothing behind."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match="blocker"):
        pack(["abc"], ByteTokenizer(), blocker / "tokens")
    with pytest.raises(OSError, match="blocker"):
        real_tok.save(blocker / "tok.bpe")
    with pytest.raises(OSError, match="blocker"):
        save_checkpoint(blocker / "ckpt", {"x": torch.zeros(2)}, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
    if os.geteuid() == 0:
        return  # root ignores permission bits; the case above covers this machine
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="ro"):
            pack(["abc"], ByteTokenizer(), ro)
        with pytest.raises(PermissionError):
            save_checkpoint(ro, {"x": torch.zeros(2)}, 1)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


# =============================================================================================
# Faults: full disk, SIGKILL
# =============================================================================================

_DISK_FULL = (
    BYTE_TOKENIZER_SRC
    + """
import json, resource, signal, sys
from pathlib import Path
import torch
from pipeline.train.checkpoint import save_checkpoint
from pipeline.data.packing import pack
from pipeline.data.tokenizer import Tokenizer
root = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = None
    except OSError as e:
        out[name] = [type(e).__name__, e.errno, str(e)]
attempt("pack", lambda: pack([f"doc {i} " * 50 for i in range(400)], ByteTokenizer(),
                             root / "tokens", shard_tokens=4096, val_fraction=0.1))
attempt("checkpoint", lambda: save_checkpoint(root / "ckpt", {"w": torch.ones(4096)}, 2))
attempt("tokenizer", lambda: Tokenizer.load(root / "tok.bpe").save(root / "tok.bpe"))
print(json.dumps(out))
"""
)


def test_disk_full_while_writing_shards_checkpoints_tokenizer(tmp_path: Path):
    """Every writer fails with EFBIG naming the file, and the previous outputs stay intact."""
    pack(["old corpus"] * 10, ByteTokenizer(), tmp_path / "tokens", val_fraction=0.0)
    save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(3)}, 1)
    big = Tokenizer.train([f"w{i} x{i * 13} y{i * 7} " * 5 for i in range(400)], vocab_size=600)
    big.save(tmp_path / "tok.bpe")
    assert (tmp_path / "tok.bpe").stat().st_size > 2048
    before = {d: _snapshot(tmp_path / d) for d in ("tokens", "ckpt")}
    tok_before = (tmp_path / "tok.bpe").read_bytes()

    child = _run_child(_DISK_FULL, str(tmp_path))
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    for name, where in (("pack", "tokens"), ("checkpoint", "ckpt"), ("tokenizer", "tok.bpe")):
        assert result[name] is not None, f"{name}: the write did not fail"
        _, errno_, message = result[name]
        assert errno_ == 27 or "os error 27" in message, result[name]  # EFBIG
        assert where in message, f"{name}: error does not name the file: {message}"
    assert {d: _snapshot(tmp_path / d) for d in ("tokens", "ckpt")} == before  # no temp left
    assert (tmp_path / "tok.bpe").read_bytes() == tok_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tok.bpe", "tokens"]
    ((step, path),) = list_checkpoints(tmp_path / "ckpt")
    assert step == 1 and torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))


_PACK_SLOWLY = (
    BYTE_TOKENIZER_SRC
    + """
import sys, time
from pathlib import Path
from pipeline.data.packing import pack
out, marker = Path(sys.argv[1]), Path(sys.argv[2])
def docs():
    for i in range(10**7):
        if i == 5000:
            marker.write_text("first batch packed")
        if i > 5000:
            time.sleep(0.001)
        yield f"document {i} " + "lorem ipsum " * 20
pack(docs(), ByteTokenizer(), out, shard_tokens=4096, val_fraction=0.1)
"""
)


def test_kill9_during_tokenize_then_rerun(tmp_path: Path):
    """SIGKILL mid-pack leaves the previous pack readable and unchanged; the re-run completes,
    equals a clean pack byte for byte, and sweeps the killed run's temp files."""
    out, marker = tmp_path / "tokens", tmp_path / "marker"
    docs = [f"document {i} " + "lorem ipsum " * (i % 30) for i in range(300)]
    old = pack(docs[:50], ByteTokenizer(), out, shard_tokens=4096, val_fraction=0.1)
    before = _snapshot(out)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PACK_SLOWLY, str(out), str(marker)],
        cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    temps = sorted(p.name for p in out.glob("*.tmp"))
    assert len(temps) > 5, temps  # killed in the middle of writing shards
    assert {k: v for k, v in _snapshot(out).items() if not k.endswith(".tmp")} == before
    assert read_manifest(out).total_tokens == old.total_tokens
    for e in read_manifest(out).splits["train"]:
        read_shard(e.path)

    m = pack(docs, ByteTokenizer(), out, shard_tokens=4096, val_fraction=0.1)
    clean = pack(docs, ByteTokenizer(), tmp_path / "clean", shard_tokens=4096, val_fraction=0.1)
    assert list(out.glob("*.tmp")) == []
    assert _snapshot(out) == _snapshot(tmp_path / "clean")
    assert m.total_tokens == clean.total_tokens


SEQ = 32
RUN_CFG = dict(vocab_size=257, depth=2, seq_len=SEQ, n_embd=64, n_head=2, pathway="shared")
RUN_SETTINGS = dict(device="cpu", total_batch_tokens=4 * SEQ * 2, device_batch_size=4,
                    max_steps=6, log_every=1, eval_every=3, eval_tokens=256,
                    checkpoint_every=1, seed=7, warmdown_ratio=0.5)  # fmt: skip

_TRAIN_UNTIL_KILLED = """
import sys, time
from pathlib import Path
import torch
from lrt.config import LRTConfig, StrategyConfig
from pipeline.config.settings import TrainSettings
from pipeline.train.loop import train
torch.set_num_threads(1)
data, out, marker = map(Path, sys.argv[1:4])
def on_step(step, row):
    if step == 3:
        marker.write_text("3")
        time.sleep(30)   # SIGKILLed here, mid-run (kill -9 inside a checkpoint write:
                         # tests/test_checkpoint.py::test_kill_9_during_writes_never_corrupts_latest)
train(LRTConfig(**{cfg}), StrategyConfig(name="interleaved"), TrainSettings(**{settings}),
      data, out, progress=False, on_step=on_step)
"""


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = [p.read_text(errors="ignore")[:6000] for p in sorted(stdlib.glob("*.py"))[:25]]
    out = tmp_path_factory.mktemp("train_tokens")
    pack(docs, ByteTokenizer(), out, shard_tokens=1 << 14, val_fraction=0.1, seed=0)
    return out


def test_kill9_during_training_resumes_exactly(train_data: Path, tmp_path: Path):
    """SIGKILL mid-run, then `resume=True`: the losses, validation and final weights equal an
    uninterrupted run's exactly (CPU)."""
    import csv

    cfg, strat = LRTConfig(**RUN_CFG), StrategyConfig(name="interleaved")
    ref = train(cfg, strat, TrainSettings(**RUN_SETTINGS), train_data, tmp_path / "ref",
                progress=False)  # fmt: skip
    out, marker = tmp_path / "run", tmp_path / "marker"
    script = _TRAIN_UNTIL_KILLED.format(cfg=RUN_CFG, settings=RUN_SETTINGS)
    proc = subprocess.Popen([sys.executable, "-c", script, str(train_data), str(out), str(marker)],
                            cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 90
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert [s for s, _ in list_checkpoints(out / "ckpt")][-1] == 3
    assert not (out / "model.pt").exists()

    got = train(cfg, strat, TrainSettings(**RUN_SETTINGS), train_data, out, resume=True,
                progress=False)  # fmt: skip

    def log(p):
        with (p / "train_log.csv").open(newline="") as f:
            cols = ("step", "loss", "pass0_loss", "pass1_loss", "pass2_loss", "val_loss", "lr")
            return [[r[c] for c in cols] for r in csv.DictReader(f)]

    assert log(out) == log(tmp_path / "ref")
    assert (got["loss"], got["val_loss"]) == (ref["loss"], ref["val_loss"])
    ma, _, _ = load_model(tmp_path / "ref" / "model.pt")
    mb, _, _ = load_model(out / "model.pt")
    for (n, p), q in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    assert list((out / "ckpt").glob(".*tmp*")) == []


# =============================================================================================
# Security
# =============================================================================================


class _Payload:
    """Unpickling this calls open(marker, "w"): code execution if a loader used pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = {"model": {}, "optimizer": {}, "loader": [], "rng": [], "config": {}, "step": 1,
            "progress": {}, "hook": _Payload(marker)}  # fmt: skip
    path = tmp_path / "ckpt" / "step_00000001.pt"
    path.parent.mkdir()
    torch.save(evil, path)
    with pytest.raises(CheckpointError, match=r"step_00000001\.pt"):
        load_checkpoint(path)
    torch.save({"model": {}, "config": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        load_model(tmp_path / "model.pt")
    with pytest.warns(UserWarning, match=r"skipping .*step_00000001\.pt"):
        assert load_latest(path.parent) is None  # resume then fails: "no loadable checkpoint"
    assert not marker.exists()


def _python_sources() -> list[Path]:
    return [p for d in ("pipeline", "lrt", "stages") for p in sorted((REPO / d).rglob("*.py"))]


def test_nothing_is_loaded_with_pickle():
    """Static audit: every torch.load passes weights_only=True; no pickle/marshal/dill/shelve
    import, no numpy allow_pickle; the Rust parsers do not deserialize objects either."""
    bad = []
    for path in _python_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in {"pickle", "cPickle", "dill", "marshal", "shelve",
                                           "joblib", "cloudpickle"} for n in names):  # fmt: skip
                    bad.append(f"{where}: imports {names}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                kws = {k.arg: k.value for k in node.keywords}
                if node.func.attr == "load" and ast.unparse(node.func.value) == "torch":
                    flag = kws.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        bad.append(f"{where}: torch.load without weights_only=True")
                if "allow_pickle" in kws:
                    flag = kws["allow_pickle"]
                    if not (isinstance(flag, ast.Constant) and flag.value is False):
                        bad.append(f"{where}: allow_pickle")
                if node.func.attr in {"read_pickle", "to_pickle"}:
                    bad.append(f"{where}: {node.func.attr}")
    for path in sorted((REPO / "rust_loader").rglob("*.rs")):
        text = path.read_text()
        if "pickle" in text or "bincode" in text:
            bad.append(f"{path.relative_to(REPO)}: mentions pickle/bincode")
    assert bad == []


def test_manifest_cannot_point_outside_its_folder(tmp_path: Path):
    from pipeline.data.loader import DataLoader

    data = tmp_path / "tokens"
    pack(["abc def"] * 30, ByteTokenizer(), data, val_fraction=0.0)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((data / "train_0000.bin").read_bytes())
    manifest = json.loads((data / "manifest.json").read_text())
    for name in ("../secret.bin", str(secret), "sub/train_0000.bin", "..", "", 5):
        manifest["splits"]["train"][0]["file"] = name
        (data / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ShardFormatError, match=r"manifest\.json: shard file .* plain file"):
            read_manifest(data)
        with pytest.raises(ShardFormatError, match="plain file name"):
            DataLoader(data, "train", 2, 4)
    (data / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError
    with pytest.raises(ShardFormatError, match=r"manifest\.json"):
        read_manifest(data)


def test_config_paths_and_variant_names(tmp_path: Path):
    """Relative paths resolve under the project folder; a variant name cannot climb out of
    `train.out_dir` (it becomes a folder name)."""
    (tmp_path / "params.yaml").write_text("tokenizer:\n  out_dir: data/tokens\n")
    s = load_settings(tmp_path / "params.yaml", env={})
    assert Path(s.tokenizer.out_dir) == tmp_path.resolve() / "data" / "tokens"
    assert Path(s.train.out_dir).is_relative_to(tmp_path.resolve())
    for name in ("../evil", "a/b", "/abs", ".hidden", ""):
        with pytest.raises(SettingsError, match="variant name"):
            load_settings(None, [f"train.variants={{'{name}': {{}}}}"], env={})


_MLFLOW_WRITER = """
import sys
import mlflow
from pipeline.config.settings import TrackingSettings
from pipeline.tracking import Tracker
uri, artifacts, variant = sys.argv[1:4]
tracker = Tracker(TrackingSettings(uri=uri, artifact_location=artifacts, experiment="lrt"),
                  system_metrics=False)
with tracker.stage("train", variant=variant, params={"variant": variant}):
    for step in range(25):
        mlflow.log_metric("train/loss", 1.0 / (step + 1), step=step)
print(mlflow.last_active_run().info.run_id)
"""


@pytest.mark.parametrize(
    "fresh",
    [
        False,
        True,  # MLflow's schema migration races unless Tracker creates the store under a lock
    ],
    ids=["existing-store", "fresh-store"],
)  # fmt: skip
def test_two_processes_write_one_mlflow_sqlite_store(tmp_path: Path, fresh: bool):
    """Two experiments queued with `dvc queue start -j 2` log to one sqlite store at once."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    if not fresh:  # the usual case: an earlier stage created the store and the experiment
        from pipeline.config.settings import TrackingSettings
        from pipeline.tracking import Tracker

        tracker = Tracker(
            TrackingSettings(uri=uri, artifact_location=str(tmp_path / "art")), system_metrics=False
        )
        assert tracker.experiment_id
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MLFLOW_WRITER, uri, str(tmp_path / "art"), f"v{i}"],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    client = MlflowClient(tracking_uri=uri)
    for out, _ in results:
        run = client.get_run(out.strip().splitlines()[-1])
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == list(range(25))
    (experiment,) = [e for e in client.search_experiments() if e.name == "lrt"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params.get("variant") for r in runs if r.data.params) == ["v0", "v1"]


# =============================================================================================
# OSError fields from the Rust extension (errno, strerror, filename)
# =============================================================================================


def test_io_errors_carry_errno_strerror_and_filename(tmp_path: Path, real_tok: Tokenizer):
    """A missing shard, manifest or tokenizer file is FileNotFoundError with errno ENOENT, the
    path as `filename` and the OS text in `strerror`, as Python's own open() reports it; the
    message still names the file (and says what to do where it did before)."""
    import errno

    from pipeline.data.loader import DataLoader

    m = pack(["one doc", "another doc"], real_tok, tmp_path / "tokens", val_fraction=0.0)
    shard = m.splits["train"][0].path
    shard.unlink()
    cases = [
        (lambda: read_shard(shard), shard, "open"),
        (lambda: DataLoader(tmp_path / "tokens", "train", 1, 4), shard, "open"),
        (lambda: read_manifest(tmp_path / "nowhere"), tmp_path / "nowhere" / "manifest.json",
         "lrt-pipeline tokenize"),
        (lambda: Tokenizer.load(tmp_path / "absent.bpe"), tmp_path / "absent.bpe",
         "Tokenizer.save()"),
    ]  # fmt: skip
    for call, path, says in cases:
        with pytest.raises(FileNotFoundError) as info:
            call()
        e = info.value
        assert e.errno == errno.ENOENT, (e, e.errno)
        assert e.filename == str(path), (e, e.filename)
        assert isinstance(e.strerror, str) and e.strerror, e
        assert str(path) in str(e) and says in str(e), str(e)
    # The OS text comes from the OS, not from a hard-coded string.
    with pytest.raises(FileNotFoundError) as info:
        read_shard(shard)
    assert info.value.strerror.startswith(os.strerror(errno.ENOENT)), info.value.strerror


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: permission bits do not stop root, so EACCES cannot happen",
)
def test_unreadable_files_are_permission_error_with_eacces(tmp_path: Path, real_tok: Tokenizer):
    import errno

    m = pack(["one doc", "another doc"], real_tok, tmp_path / "tokens", val_fraction=0.0)
    shard = m.splits["train"][0].path
    tok_file = tmp_path / "tok.bpe"
    real_tok.save(tok_file)
    for path, call in (
        (shard, lambda: read_shard(shard)),
        (tok_file, lambda: Tokenizer.load(tok_file)),
    ):
        path.chmod(0)
        try:
            with pytest.raises(PermissionError) as info:
                call()
        finally:
            path.chmod(0o600)
        assert info.value.errno == errno.EACCES and info.value.filename == str(path), info.value
