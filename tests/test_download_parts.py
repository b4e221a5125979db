"""`lrt-pipeline download --part I/N` on one shared raw folder, then a plain `download`, against
the local fixture shard server (pipeline.benchmarks.download.ShardServer); and the locks between
parts and a plain download."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from pipeline.benchmarks.download import ShardServer
from pipeline.cli import main
from pipeline.config.settings import DataSettings

VAL = 9  # a small pinned validation shard (the default would be fineweb-edu's 1822)

pytestmark = pytest.mark.skipif(
    "workers" not in DataSettings.model_fields,
    reason="DataSettings has no issue-18 fields yet (data.workers, data.val_shard)",
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ShardServer]:
    with ShardServer() as s:
        for i in (0, 1, 2, VAL):
            path = tmp_path / f"src_{i}.parquet"
            pl.DataFrame({"text": [f"shard {i} doc {j}" for j in range(3 + i)]}).write_parquet(path)
            s.files[f"shard_{i:05d}.parquet"] = path.read_bytes()
        yield s


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ShardServer) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("LRT_MLFLOW_PARENT_RUN_ID", "LRT_TRACKING__ENABLED"):
        monkeypatch.delenv(var, raising=False)
    data = {
        "source": "fineweb-edu",
        "base_url": f"{server.url}/data",
        "num_shards": 3,
        "val_shard": VAL,
        "workers": 1,
        "retries": 0,
        "timeout_s": 5,
    }
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"tracking": {"enabled": False}, "data": data})
    )
    return tmp_path


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """`pipeline.atomic.locked(folder)` held by another process (the lock is re-entrant within
    one process, so this one could not be refused by itself)."""
    code = (
        "import sys\nfrom pipeline.atomic import locked\n"
        f"with locked({str(folder)!r}):\n    print('held', flush=True)\n    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate("", timeout=30)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_parts_then_plain_download_writes_one_manifest(project: Path, server: ShardServer) -> None:
    raw = project / "data" / "raw"
    one = invoke("download", "--part", "1/2")
    assert one.exit_code == 0, one.output
    assert "part 1/2" in one.output
    assert sorted(server.names()) == [
        "shard_00000.parquet",
        "shard_00002.parquet",
        "shard_00009.parquet",
    ]
    assert not (raw / "manifest.json").exists()  # a part writes shards only
    assert sorted(p.name for p in raw.iterdir()) == [
        "shard_00000.parquet",
        "shard_00002.parquet",
        "shard_00009.parquet",
    ]
    two = invoke("download", "--part", "2/2")
    assert two.exit_code == 0, two.output
    assert server.names().count("shard_00001.parquet") == 1

    server.requests.clear()
    plain = invoke("download")
    assert plain.exit_code == 0, plain.output
    assert server.names() == []  # every shard came from the parts
    manifest = json.loads((raw / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == [
        f"shard_{i:05d}.parquet" for i in (0, 1, 2, VAL)
    ]
    assert [f["split"] for f in manifest["files"]] == ["train"] * 3 + ["val"]
    assert [f["documents"] for f in manifest["files"]] == [3, 4, 5, 3 + VAL]
    assert manifest["validation_shard"] == VAL and manifest["part"] is None


def test_a_part_is_refused_while_a_plain_download_holds_the_folder(project: Path) -> None:
    raw = project / "data" / "raw"
    with locked(raw):  # what a running plain download holds
        result = invoke("download", "--part", "1/2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "OutputLockedError" in result.output and "is being written by" in result.output


def test_a_plain_download_is_refused_while_a_part_runs(project: Path, server: ShardServer) -> None:
    raw = project / "data" / "raw"
    with locked(raw.parent / "raw.part2of2"):  # what a running `download --part 2/2` holds
        result = invoke("download")
        again = invoke("download", "--part", "2/2")  # the same part twice
    assert result.exit_code == 1 and "OutputLockedError" in result.output, result.output
    assert again.exit_code == 1 and "OutputLockedError" in again.output, again.output
    assert not (raw / "manifest.json").exists()
    assert invoke("download").exit_code == 0  # once the part is gone


def test_part_of_an_unsharded_source_is_a_clean_error(project: Path) -> None:
    result = invoke("download", "--part", "1/2", "--set", "data.source=builtin")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "splits sharded sources" in result.output and "drop --part" in result.output
