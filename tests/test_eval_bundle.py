"""The eval-bundle source against a real HTTP server on 127.0.0.1 (http.server in a thread).

The server serves a fixture bundle built here at runtime (tiny synthetic CORE tasks in nanochat's
layout: `eval_bundle/core.yaml`, `eval_meta_data.csv`, `eval_data/*.jsonl`); one route drops the
connection halfway through the first transfer (the download must resume with Range), another
serves bytes that do not match the expected hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_fixture import BundleServer as _Server
from bundle_fixture import make_bundle

from pipeline.data.http import DownloadError
from pipeline.evaluation.bundle import (
    STATUS_FILE,
    EvalBundleError,
    bundle_status,
    core_status,
    fetch_bundle,
    prepare_bundle,
)
from pipeline.evaluation.core_tasks import load_items, load_tasks


@pytest.fixture(scope="module")
def payload() -> bytes:
    return make_bundle()


@pytest.fixture()
def server(payload: bytes) -> Iterator[_Server]:
    srv = _Server(payload)
    yield srv
    srv.close()


def test_download_extract_and_load_tasks(server: _Server, payload: bytes, tmp_path: Path) -> None:
    out = tmp_path / "data" / "eval_bundle"
    sha = hashlib.sha256(payload).hexdigest()
    status = fetch_bundle(out, f"{server.url}/eval_bundle.zip", sha256=sha, backoff_s=0)
    assert status["available"] and status["sha256"] == sha and status["tasks"] == 2
    assert bundle_status(out) == status
    tasks = {t.name: t for t in load_tasks(out)}
    assert set(tasks) == {"tiny_mc", "tiny_lm"}
    assert tasks["tiny_mc"].random_baseline == 25.0 and tasks["tiny_mc"].shots == 1
    assert tasks["tiny_mc"].delimiter == "\nAnswer: "
    assert len(load_items(tasks["tiny_lm"])) == 400
    # nothing half-done is left beside the bundle (the stage's lock file stays, as every stage's)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        ".eval_bundle.lock",
        "eval_bundle",
        "eval_bundle.zip",
    ]
    assert core_status(out, len(tasks))["available"]

    # a second run reuses the verified archive: no request
    before = len(server.requests)
    fetch_bundle(out, f"{server.url}/eval_bundle.zip", sha256=sha, backoff_s=0)
    assert len(server.requests) == before


def test_resumes_after_a_dropped_connection(
    server: _Server, payload: bytes, tmp_path: Path
) -> None:
    out = tmp_path / "eval_bundle"
    sha = hashlib.sha256(payload).hexdigest()
    status = fetch_bundle(out, f"{server.url}/flaky.zip", sha256=sha, backoff_s=0)
    assert status["available"] and status["sha256"] == sha
    assert server.requests[0] == ("/flaky.zip", None)
    # the retry asked only for the bytes the first transfer did not deliver
    path, rng = server.requests[1]
    offset = int(rng.removeprefix("bytes=").rstrip("-"))
    assert path == "/flaky.zip" and 0 < offset < len(payload)
    assert len(load_tasks(out)) == 2


def test_hash_mismatch_is_a_clear_error(server: _Server, payload: bytes, tmp_path: Path) -> None:
    out = tmp_path / "eval_bundle"
    good = fetch_bundle(out, f"{server.url}/eval_bundle.zip", backoff_s=0)  # an old bundle
    (out.with_name("eval_bundle.zip")).unlink()
    sha = hashlib.sha256(payload).hexdigest()
    with pytest.raises(EvalBundleError, match=r"sha256 [0-9a-f]{64} != expected .*deleted"):
        prepare_bundle(out, f"{server.url}/corrupt.zip", sha256=sha, backoff_s=0)
    # the bad archive is gone and the old bundle untouched
    assert not out.with_name("eval_bundle.zip").exists()
    assert bundle_status(out) == good


def test_corrupt_archive_without_a_hash_fails_its_crc(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(EvalBundleError, match="CRC|not a zip"):
        fetch_bundle(tmp_path / "b", f"{server.url}/corrupt.zip", backoff_s=0)


def test_unreachable_server_writes_an_unavailable_status(server: _Server, tmp_path: Path) -> None:
    out = tmp_path / "eval_bundle"
    status = prepare_bundle(out, f"{server.url}/missing.zip", retries=0, backoff_s=0)
    assert status["available"] is False and "HTTP 404" in status["reason"]
    assert "dvc repro -f -s eval_bundle" in status["message"]
    assert [p.name for p in out.iterdir()] == [STATUS_FILE]
    assert load_tasks(out) == []
    said = core_status(out, 0)
    assert not said["available"] and said["message"].startswith("CORE skipped: eval bundle")
    assert "with network" in said["message"]
    with pytest.raises(DownloadError):  # fetch_bundle itself does raise
        fetch_bundle(tmp_path / "other", f"{server.url}/missing.zip", retries=0, backoff_s=0)


def test_core_status_without_a_bundle_says_how_to_get_it(tmp_path: Path) -> None:
    said = core_status(tmp_path / "nowhere", 0)
    assert not said["available"]
    assert "python -m stages.eval_bundle" in said["message"]
    assert "eval.core_dir" in said["message"]


def test_stage_offline_succeeds_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m stages.eval_bundle` with no server: exit 0, a status that says why and what
    to run (the demo must not fail offline)."""
    from pipeline.steps import stage_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LRT_TRACKING__ENABLED", "false")
    monkeypatch.setenv("LRT_EVAL_BUNDLE_URL", "http://127.0.0.1:9/eval_bundle.zip")  # refused
    import pipeline.data.http

    monkeypatch.setattr(pipeline.data.http.time, "sleep", lambda s: None)  # no backoff waits
    assert stage_main("eval_bundle", []) == 0
    status = bundle_status(tmp_path / "data" / "eval_bundle")
    assert status is not None and status["available"] is False
    out = capsys.readouterr().out
    assert "CORE skipped: eval bundle unavailable" in out and "with network" in out
    assert stage_main("eval_bundle", ["extra"]) == 2


def test_faults_keep_the_previous_bundle(server: _Server, tmp_path: Path) -> None:
    """A good bundle survives an unreachable URL (it is not replaced by "offline"), a failed
    extraction, and a killed run's leftovers are removed by the next run."""
    out = tmp_path / "data" / "eval_bundle"
    prepare_bundle(out, f"{server.url}/eval_bundle.zip", backoff_s=0)
    (out / "NOTES.md").write_text("mine")  # a user's file: never removed

    def tree() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    before = tree()
    status = prepare_bundle(out, "http://127.0.0.1:9/none.zip", retries=0, backoff_s=0)
    assert status["available"] and tree() == before
    leftover = out.parent / ".eval_bundle.new-1-dead" / "eval_bundle"
    leftover.mkdir(parents=True)
    prepare_bundle(out, f"{server.url}/eval_bundle.zip", backoff_s=0)
    assert not leftover.parent.exists() and (out / "NOTES.md").read_text() == "mine"
