"""Faults at the stage level, through the `lrt-pipeline` CLI in subprocesses.

Each stage (download, tokenize, train, eval-bundle) is attacked the way a user's bad day would: `kill -9`
at seeded random points, a full disk (`RLIMIT_FSIZE`: writes fail with EFBIG), a second
writer at the same time, corrupt inputs among good ones. After each, the stage's previous
output folder is byte-identical (every file hashed, hidden ones included) and a re-run equals
a clean run. Tiny configs (vocab 300, depth 1, width 64, 6 steps) keep the module near two
minutes on two cores; docs/RELIABILITY.md counts what these tests inject.
"""

from __future__ import annotations

import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from tests.bundle_fixture import BundleServer, make_bundle

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "lrt-pipeline"
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("LRT_")},
    "OMP_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
SEEDS = (0, 1, 2)
# Folder each stage writes, and the --set overrides that make a second run's output differ.
STAGES = {
    "download": ("data/raw", ["data.max_bytes=150000"]),
    "tokenize": ("data/tokens", ["tokenizer.vocab_size=320"]),
    # A part beside the full pack (the merged manifest goes stale), and a new tokenizer alone.
    "tokenize-part": ("data/tokens", []),
    "tokenize-tokenizer-only": ("data/tokens", ["tokenizer.vocab_size=320"]),
    "train": ("runs/lrt", ["train.seed=3"]),
    # nanochat's eval bundle from a local server; the second run's archive comes from another
    # URL (@A / @B: routes of the module's BundleServer, filled in by stage_args)
    "eval-bundle": ("data/eval_bundle", ["eval.bundle_url=@B"]),
}
COMMANDS = {
    "tokenize-part": ["tokenize", "--part", "1/2"],
    "tokenize-tokenizer-only": ["tokenize", "--tokenizer-only"],
    "train": ["train", "--variant", "lrt"],
}
# Files whose content holds timings (they differ between two identical runs).
TIMED = {"stats.json", "train_log.csv", "val_log.csv", "train_metrics.json"}

PARAMS = {
    "data": {"source": "files", "paths": ["corpus"], "max_bytes": 200_000},
    "tokenizer": {
        "vocab_size": 300,
        "train_max_bytes": 40_000,
        "shard_tokens": 4096,
        "val_fraction": 0.1,
    },
    "model": {"depth": 1, "n_embd": 64, "n_head": 1, "seq_len": 32},
    "train": {
        "variants": {"lrt": {"model.pathway": "shared", "strategy.name": "interleaved"}},
        "device": "cpu",
        "total_batch_tokens": 128,
        "device_batch_size": 4,
        "max_steps": 6,
        "log_every": 1,
        "eval_every": 0,
        "eval_tokens": 256,
        "checkpoint_every": 1,
    },
    "tracking": {"enabled": False},
}

pytestmark = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} is not installed")


def tree_hash(folder: Path, *, skip: set[str] = frozenset()) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (names in `skip` left out)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def content_hash(folder: Path) -> dict[str, str]:
    """`tree_hash` for comparing two projects: timed files left out, and checkpoints compared
    by step and weights (their bytes also hold timings and the project's absolute path)."""
    import torch

    out = tree_hash(folder, skip=TIMED)
    for name in out:
        if name.endswith(".pt"):
            state = torch.load(folder / name, weights_only=True)
            digest = hashlib.sha256(str(state["step"]).encode())
            for key, tensor in state["model"].items():
                digest.update(key.encode())
                digest.update(tensor.numpy().tobytes())
            out[name] = digest.hexdigest()
    return out


def leftovers(project: Path) -> list[str]:
    """Temp folders of killed runs (`.NAME.new-*`, `.NAME.old-*`) anywhere in the project."""
    return sorted(
        str(p.relative_to(project))
        for p in project.rglob(".*")
        if p.is_dir() and (".new-" in p.name or ".old-" in p.name)
    )


def cli(
    project: Path, *args: str, preexec=None, timeout: float = 240
) -> subprocess.CompletedProcess:
    cmd = [str(CLI), *args]
    return subprocess.run(
        cmd, cwd=project, env=ENV, capture_output=True, text=True, timeout=timeout,
        preexec_fn=preexec,
    )  # fmt: skip


BUNDLE_URLS: dict[str, str] = {}  # "@A"/"@B" -> URL, set by the `base` fixture


def stage_args(stage: str, overrides: list[str]) -> list[str]:
    overrides = [_bundle_url(o) for o in overrides]
    return [*COMMANDS.get(stage, [stage]), *[x for o in overrides for x in ("--set", o)]]


def _bundle_url(override: str) -> str:
    for key, url in BUNDLE_URLS.items():
        override = override.replace(key, url)
    return override


def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _make_project(root: Path) -> Path:
    root.mkdir()
    corpus = root / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:60]:
        (corpus / f"{path.stem}.txt").write_text(path.read_text(encoding="utf-8"))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


@pytest.fixture(scope="module")
def bundle_server():
    server = BundleServer(make_bundle())
    BUNDLE_URLS.update({"@A": f"{server.url}/a/eval_bundle.zip", "@B": f"{server.url}/b.zip"})
    yield server
    server.close()
    BUNDLE_URLS.clear()


@pytest.fixture(scope="module")
def base(tmp_path_factory, bundle_server) -> Path:
    """A project after download, tokenize, train and eval-bundle with params.yaml, plus a
    user's file in each output folder (they must survive everything)."""
    project = _make_project(tmp_path_factory.mktemp("faults") / "base")
    for stage, overrides in [
        ("download", []),
        ("tokenize", []),
        ("train", []),
        ("eval-bundle", ["eval.bundle_url=@A"]),
    ]:
        result = cli(project, *stage_args(stage, overrides))
        assert result.returncode == 0, result.stderr
    for folder, _ in STAGES.values():
        (project / folder / "NOTES.md").write_text("the user's notes")
    (project / "data/tokens/tokenizer_pretrained.bpe").write_text("a user's tokenizer")
    return project


@pytest.fixture(scope="module")
def clean(base: Path, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Each stage's output after a clean second run with its overrides (the reference a
    re-run after a fault must equal), and how long that run took."""
    refs: dict[str, dict[str, str]] = {}
    for stage, (folder, overrides) in STAGES.items():
        project = tmp_path_factory.mktemp("clean") / stage
        shutil.copytree(base, project)
        proc, locked_at = start_until_locked(project, stage, overrides)
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        refs[stage] = content_hash(project / folder)
        refs[stage]["__seconds__"] = str(time.perf_counter() - locked_at)
    return refs


def _lock_file(project: Path, stage: str) -> Path:
    folder = project / STAGES[stage][0]
    return folder.parent / f".{folder.name}.lock"


def start_until_locked(
    project: Path, stage: str, overrides: list[str]
) -> tuple[subprocess.Popen, float]:
    """Start the stage and return once it holds its output lock (imports done: the stage's
    own work begins), with the time it did."""
    lock = _lock_file(project, stage)
    proc = subprocess.Popen(
        [str(CLI), *stage_args(stage, overrides)], cwd=project, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if lock.is_file() and f'"pid": {proc.pid}' in lock.read_text():
            break
        time.sleep(0.01)
    return proc, time.perf_counter()


def _copy(base: Path, tmp_path: Path) -> Path:
    project = tmp_path / "p"
    shutil.copytree(base, project)
    return project


def _check_rerun_equals_clean(project: Path, stage: str, clean: dict) -> None:
    folder, overrides = STAGES[stage]
    result = cli(project, *stage_args(stage, overrides))
    assert result.returncode == 0, result.stderr
    ref = {k: v for k, v in clean[stage].items() if k != "__seconds__"}
    assert content_hash(project / folder) == ref
    assert leftovers(project) == []
    assert not (project / folder).with_name(f".{Path(folder).name}.partial").exists()
    _check_user_files(project)


def _check_user_files(project: Path) -> None:
    """The files a user put in the output folders are still there, unchanged."""
    for folder, _ in STAGES.values():
        assert (project / folder / "NOTES.md").read_text() == "the user's notes", folder
    # Matched `tokenizer.*` and was deleted by every tokenize before.
    assert (project / "data/tokens/tokenizer_pretrained.bpe").read_text() == "a user's tokenizer"


# ---------------------------------------------------------------------------------------------
# kill -9
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stage", list(STAGES))
def test_kill9_at_a_random_point_keeps_the_previous_output(
    base: Path, clean: dict, tmp_path: Path, stage: str, seed: int
) -> None:
    project = _copy(base, tmp_path)
    folder, overrides = STAGES[stage]
    before = tree_hash(project / folder)
    # A seeded point of the stage's own work (from taking its lock to its exit in a clean run).
    window = float(clean[stage]["__seconds__"])
    delay = random.Random(f"{stage}-{seed}").uniform(0.0, 1.0) * window
    proc, _ = start_until_locked(project, stage, overrides)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    rc = proc.wait(timeout=60)
    assert rc in (0, -signal.SIGKILL)
    # All or nothing: the previous output byte for byte, or (killed after its swap, or it
    # finished first) exactly the new one; never a mixture.
    after = tree_hash(project / folder)
    new = {k: v for k, v in clean[stage].items() if k != "__seconds__"}
    assert after == before or content_hash(project / folder) == new, f"killed at {delay:.2f}s"
    _check_rerun_equals_clean(project, stage, clean)


# ---------------------------------------------------------------------------------------------
# Disk full
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(STAGES))
def test_disk_full_keeps_the_previous_output(
    base: Path, clean: dict, tmp_path: Path, stage: str
) -> None:
    project = _copy(base, tmp_path)
    folder, overrides = STAGES[stage]
    before = tree_hash(project / folder)
    limit = 512 if stage == "tokenize-tokenizer-only" else 4096  # its files are small
    result = cli(project, *stage_args(stage, overrides), preexec=_limit_file_size(limit))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert "File too large" in lines[-1] or "Errno 27" in lines[-1], result.stderr
    assert tree_hash(project / folder) == before
    _check_rerun_equals_clean(project, stage, clean)


# ---------------------------------------------------------------------------------------------
# Two writers at once
# ---------------------------------------------------------------------------------------------


# (not eval-bundle: it holds its lock for milliseconds, after the download, so a second run
# cannot be started inside it reliably; the lock is the same pipeline.atomic.output_dir)
@pytest.mark.parametrize("stage", ["tokenize", "train"])
def test_a_second_writer_is_refused_naming_the_first(
    base: Path, clean: dict, tmp_path: Path, stage: str
) -> None:
    project = _copy(base, tmp_path)
    folder, overrides = STAGES[stage]
    first, _ = start_until_locked(project, stage, overrides)
    assert first.poll() is None, "the first run ended before the second started"
    first.send_signal(signal.SIGSTOP)  # hold it inside its run, whatever the machine's speed
    try:
        second = cli(project, *stage_args(stage, overrides))
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    assert second.returncode != 0
    assert f"is being written by pid {first.pid} on " in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    ref = {k: v for k, v in clean[stage].items() if k != "__seconds__"}
    assert content_hash(project / folder) == ref


# ---------------------------------------------------------------------------------------------
# Corrupt inputs among good ones
# ---------------------------------------------------------------------------------------------


def _corrupt_inputs(corpus: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (what the error must name, file bytes)."""
    import polars as pl

    good = corpus / "_good.parquet"
    pl.DataFrame({"text": ["fine document"] * 50}).write_parquet(good)
    data = good.read_bytes()
    good.unlink()
    ints = corpus / "_ints.parquet"
    pl.DataFrame({"text": [1, 2, 3]}).write_parquet(ints)
    int_bytes = ints.read_bytes()
    ints.unlink()
    return {
        "zz_truncated.parquet": ("zz_truncated.parquet", data[: len(data) // 2]),
        "zz_garbage.parquet": ("zz_garbage.parquet", b"PAR1 this is not parquet PAR1"),
        "zz_ints.parquet": ("not strings", int_bytes),
        "zz_plain.jsonl.zst": ("not a valid zstd stream", b'{"text": "not compressed"}\n'),
        "zz_latin1.txt": ("zz_latin1.txt: invalid UTF-8 at byte 6", b"caf\xc3\xa9 \xe9t\xe9"),
        "zz_latin1.jsonl": ("zz_latin1.jsonl:2: invalid UTF-8", b'{"text": "ok"}\n"\xe9"\n'),
    }


def test_corrupt_input_among_good_ones_fails_download_naming_the_file(
    base: Path, tmp_path: Path
) -> None:
    project = _copy(base, tmp_path)
    before = tree_hash(project / "data/raw")
    for name, (message, payload) in _corrupt_inputs(project / "corpus").items():
        bad = project / "corpus" / name
        bad.write_bytes(payload)
        # No cap: every file is read, so the bad one is reached whatever its position.
        result = cli(project, "download", "--set", "data.max_bytes=null")
        bad.unlink()
        assert result.returncode != 0, name
        last = result.stderr.strip().splitlines()[-1]
        assert "Traceback" not in result.stderr, result.stderr
        assert message in last and name in last, (name, last)
        assert tree_hash(project / "data/raw") == before, name
    assert leftovers(project) == []


def test_download_of_zero_documents_fails_at_download(base: Path, tmp_path: Path) -> None:
    project = _copy(base, tmp_path)
    before = tree_hash(project / "data/raw")
    empty = project / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    result = cli(project, "download", "--set", f"data.paths=[{empty}]")
    assert result.returncode != 0
    assert "0 documents" in result.stderr.strip().splitlines()[-1], result.stderr
    assert tree_hash(project / "data/raw") == before


EVAL_SETTINGS = [
    "eval.bpb_max_tokens=256",
    "eval.modes=[init]",
    "eval.core_dir=none",
    "eval.icl_enabled=false",
    "eval.samples_prompts=[a]",
    "eval.max_new_tokens=2",
]


@pytest.mark.slow
def test_eval_is_staged_and_refuses_a_model_of_other_data(base: Path, tmp_path: Path) -> None:
    import json

    import torch

    project = _copy(base, tmp_path)
    # Provenance: the model records the shard set that tokenize's stats.json names.
    stats = json.loads((project / "data/tokens/stats.json").read_text())
    recorded = torch.load(project / "runs/lrt/model.pt", weights_only=True)["provenance"]
    assert recorded["shards_hash"] == stats["shards_hash"]
    assert recorded["tokenizer_hash"] == stats["tokenizer_hash"]
    args = ["eval", "--variant", "lrt", *[x for o in EVAL_SETTINGS for x in ("--set", o)]]
    result = cli(project, *args)
    assert result.returncode == 0, result.stderr
    run = project / "runs/lrt"
    assert (run / "metrics.json").is_file() and (run / "NOTES.md").is_file()
    assert leftovers(project) == []
    # Re-tokenized with another vocabulary: the model is not evaluated with it.
    assert cli(project, *stage_args("tokenize", STAGES["tokenize"][1])).returncode == 0
    before = tree_hash(run)
    result = cli(project, *args)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "trained on other data" in last and "--set train.allow_mismatch=true" in last, last
    assert tree_hash(run) == before


def test_corrupt_raw_file_fails_tokenize_naming_it(base: Path, tmp_path: Path) -> None:
    """A raw parquet damaged after download (same size: the manifest's size check passes):
    tokenize names the file, and the previous pack stays byte-identical."""
    project = _copy(base, tmp_path)
    before = tree_hash(project / "data/tokens")
    raw = project / "data/raw/documents_00000.parquet"
    data = bytearray(raw.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    raw.write_bytes(data)
    result = cli(project, *stage_args("tokenize", STAGES["tokenize"][1]))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "documents_00000.parquet" in last, result.stderr
    assert tree_hash(project / "data/tokens") == before
    # A raw file whose size no longer matches the manifest is refused before any work.
    raw.write_bytes(bytes(data[:-10]))
    result = cli(project, *stage_args("tokenize", STAGES["tokenize"][1]))
    assert "has " in result.stderr and "re-run `lrt-pipeline download`" in result.stderr
    assert tree_hash(project / "data/tokens") == before
