"""pipeline.atomic: folder locks (holder named, dead holders taken over) and staged folder swaps
(old output intact on any failure, user files carried, half-done swaps rolled back)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import atomic
from pipeline.atomic import OutputLockedError, leftovers, locked, output_dir


def tree_hash(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (hidden files included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _ours(name: str) -> bool:
    return name.startswith("out_") or name == "manifest.json"


def _fill(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "out_0.bin").write_bytes(b"old0")
    (folder / "manifest.json").write_text("old")
    (folder / "notes.txt").write_text("the user's")


_HOLDER = """
import sys, time
from pipeline.atomic import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_second_writer_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "tokens"
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        match = rf"pid {child.pid} on .* since 20"
        with pytest.raises(OutputLockedError, match=match), locked(folder):
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The dead holder's lock file is still there with its record; the lock is free.
    assert str(child.pid) in (tmp_path / ".tokens.lock").read_text()
    with locked(folder):
        assert str(os.getpid()) in (tmp_path / ".tokens.lock").read_text()
        with locked(folder):  # re-entrant within one process
            pass


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_success_swaps_and_carries_user_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    folder = tmp_path / "tokens"
    _fill(folder)
    (folder / "out_9.bin").write_bytes(b"stale")
    with output_dir(folder, owned=_ours, keep=lambda n: n == "out_0.bin") as staging:
        assert staging.parent.name.startswith(".tokens.new-")
        assert sorted(p.name for p in staging.iterdir()) == ["notes.txt", "out_0.bin"]
        (staging / "out_1.bin").write_bytes(b"new1")
        (staging / "manifest.json").write_text("new")
    assert tree_hash(folder) == {
        "manifest.json": hashlib.sha256(b"new").hexdigest(),
        "notes.txt": hashlib.sha256(b"the user's").hexdigest(),
        "out_0.bin": hashlib.sha256(b"old0").hexdigest(),
        "out_1.bin": hashlib.sha256(b"new1").hexdigest(),
    }
    assert leftovers(folder) == []


def test_failure_leaves_the_old_folder_byte_identical(tmp_path: Path) -> None:
    folder = tmp_path / "tokens"
    _fill(folder)
    before = tree_hash(folder)
    with pytest.raises(RuntimeError, match="boom"), output_dir(folder, owned=_ours) as staging:
        (staging / "manifest.json").write_text("half")
        raise RuntimeError("boom")
    assert tree_hash(folder) == before
    assert leftovers(folder) == []


def test_half_done_two_rename_swap_is_rolled_back_and_leftovers_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "tokens"
    _fill(folder)
    before = tree_hash(folder)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls: list[str] = []

    def dying_rename(src: os.PathLike, dst: os.PathLike) -> None:
        calls.append(str(dst))
        if len(calls) == 2:  # the process "dies" between the two renames
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt), output_dir(folder, owned=_ours) as staging:
        (staging / "manifest.json").write_text("new")
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    assert not folder.exists()  # what a kill at that instant leaves
    assert any(p.name.startswith(".tokens.old-") for p in leftovers(folder))
    with output_dir(folder, owned=_ours) as staging:
        # Recovery ran first: the staging folder was seeded from the restored old output.
        assert (staging / "notes.txt").read_text() == "the user's"
        (staging / "manifest.json").write_text("newer")
    folder_files = tree_hash(folder)
    assert folder_files["notes.txt"] == before["notes.txt"]
    assert leftovers(folder) == []


def test_partial_staging_survives_failure_and_is_resumed(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    first = output_dir(folder, owned=lambda n: True, partial=True)
    with pytest.raises(RuntimeError), first as staging:
        (staging / "ckpt").mkdir()
        (staging / "ckpt" / "step_1.pt").write_bytes(b"1")
        raise RuntimeError("killed")
    assert not folder.exists()
    with output_dir(folder, owned=lambda n: True, partial=True, resume=True) as staging:
        assert (staging / "ckpt" / "step_1.pt").read_bytes() == b"1"
    assert (folder / "ckpt" / "step_1.pt").read_bytes() == b"1"
    with output_dir(folder, owned=lambda n: True, partial=True) as staging:  # fresh run
        assert list(staging.iterdir()) == []
    assert list(folder.iterdir()) == []


def test_a_symlinked_output_folder_stays_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "disk2" / "tokens"
    _fill(target)
    link = tmp_path / "tokens"
    link.symlink_to(target)
    with output_dir(link, owned=_ours) as staging:
        assert staging.parent.parent == target.parent  # staged beside the real folder
        (staging / "manifest.json").write_text("new")
    assert link.is_symlink() and (link / "manifest.json").read_text() == "new"
    assert (link / "notes.txt").read_text() == "the user's"
    assert leftovers(target) == []
