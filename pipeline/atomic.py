"""Whole-folder outputs: a stage locks its output folder, writes a fresh copy beside it, and
swaps that in only after success.

    with output_dir("data/tokens", owned=is_ours) as staging:
        ... write every output file into `staging` ...
    # success: data/tokens is now the new folder; on any error (or kill -9) it is the old one

Guarantees (docs/RELIABILITY.md, tests/test_atomic.py, tests/test_faults.py):

* **Lock.** `locked(folder)` takes an exclusive `flock` on `PARENT/.NAME.lock` (beside the
  folder, so it survives the swap) and records the holder (pid, host, start time, command).
  A second writer fails at once with `OutputLockedError` naming the holder. The kernel drops
  a `flock` when its process dies, so a dead holder's lock is taken over without any guess
  about pids (a `kill -9`ed run never blocks the next one). `flock` is per host on network
  file systems that do not forward it; the pid and host in the message still tell who holds it.
* **Staging.** The new output is written into `PARENT/.NAME.new-TAG/NAME`. Files of the old
  folder that the stage did not write (`owned(name)` is false: a user's notes, a pretrained
  tokenizer) are hard-linked into it first, so they are never removed; `keep(name)` carries
  the stage's own files it wants to keep (e.g. other machines' parts). Files are never
  modified in place (every writer replaces by rename), so sharing inodes is safe.
* **Swap.** Linux `renameat2(RENAME_EXCHANGE)` exchanges the two folders in one atomic step;
  then the old copy (now under the staging name) is deleted. Where the call or the file
  system lacks it (macOS, some FUSE/NFS mounts: ENOSYS/EINVAL), two renames are used:
  `NAME -> .NAME.old-TAG`, `staging -> NAME`. A crash between them leaves no `NAME` but an
  `.old-` copy, which the next `output_dir` on that folder renames back before anything else
  (recovery never deletes data: it rolls back to the previous output).
* **Symlinks.** A folder that is a symlink (tokens on another disk) is resolved first: the
  staging folder, the lock and the swap are beside its target, and the link keeps working.
* **Leftovers** of killed runs are recognisable by name (`.NAME.new-*`, `.NAME.old-*`,
  `.NAME.partial`) and removed by the next run on that folder, under the lock. They hold only
  what the stage wrote plus hard links of the carried files, so removing them loses nothing.

DVC removes a stage's `outs` before running its command (its cache keeps the old version), so
under `dvc repro` the "previous output" is DVC's; these guarantees are for `lrt-pipeline
STAGE` and for everything DVC does not own (user files, other variants, parts).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["OutputLockedError", "leftovers", "locked", "output_dir", "partial_dir", "swap_dirs"]


class OutputLockedError(RuntimeError):
    """Another live process is writing this output folder."""


# ---------------------------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------------------------

_HELD: dict[str, int] = {}  # lock path -> fd, for re-entry within one process


def _lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (holder unknown)"
    return (
        f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
        f"({info.get('command', '?')})"
    )


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of `folder` (re-entrant within one process).

    Raises:
        OutputLockedError: a live process holds it; the message names it (pid, host, start).
    """
    folder = Path(os.path.realpath(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = _lock_path(folder)
    key = str(path)
    if key in _HELD:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputLockedError(
            f"{folder} is being written by {_holder_text(path)}; wait for it to finish or "
            f"stop it (lock file {path})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv)[:200],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


# ---------------------------------------------------------------------------------------------
# Swap
# ---------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _renameat2 = _libc.renameat2
        _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        _renameat2.argtypes += [ctypes.c_uint]
        _renameat2.restype = ctypes.c_int


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# One file, atomically (every stage's small outputs: JSON, CSV, reports, checkpoints)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a fsynced temp file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            # `write`/`fsync` errors (a full disk: ENOSPC, EFBIG) carry no file name.
            raise type(e)(
                e.errno, f"{e.strerror}; {path} was left unchanged (is the disk full?)", str(path)
            ) from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text version of `atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(x: Any) -> Any:
    """NaN/inf -> None, recursively (dict keys as str): what strict JSON readers accept."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): finite_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_json(v) for v in x]
    return x


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as strict JSON (`finite_json`, indent 2, trailing newline), written atomically."""
    return atomic_write_text(path, json.dumps(finite_json(obj), indent=2) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths; False when the platform or file system cannot."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}", str(b))


def swap_dirs(staging: Path, folder: Path, *, old: Path) -> None:
    """Put `staging` at `folder`; the previous `folder` (if any) ends at `old` (not deleted).

    One atomic exchange where supported, else two renames (recovered by `_recover`)."""
    if not folder.exists():
        os.rename(staging, folder)
    elif _exchange(staging, folder):
        os.rename(staging, old)
    else:
        os.rename(folder, old)
        os.rename(staging, folder)
    _fsync_dir(folder.parent)


# ---------------------------------------------------------------------------------------------
# Staged output folders
# ---------------------------------------------------------------------------------------------


def leftovers(folder: str | Path) -> list[Path]:
    """Temp folders a killed run left beside `folder` (`.NAME.new-*`, `.old-*`, `.partial`)."""
    folder = Path(os.path.realpath(folder))
    if not folder.parent.is_dir():
        return []
    prefix = f".{folder.name}."
    return sorted(
        p
        for p in folder.parent.iterdir()
        if p.name.startswith(prefix)
        and (p.name[len(prefix) :].startswith(("new-", "old-")) or p.name == prefix + "partial")
    )


def _recover(folder: Path) -> None:
    """Undo a two-rename swap that died half way: the previous output comes back."""
    if folder.exists():
        return
    olds = [p for p in leftovers(folder) if p.name.startswith(f".{folder.name}.old-")]
    if olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        log.warning("restoring %s from %s (a previous run died while swapping)", folder, newest)
        os.rename(newest, folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link `src` (file or folder) to `dst`; copies where links are impossible."""
    if src.is_dir() and not src.is_symlink():
        dst.mkdir()
        for child in src.iterdir():
            _link_tree(child, dst / child.name)
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _stage_name(folder: Path, tag: str) -> Path:
    return folder.parent / f".{folder.name}.{tag}" / folder.name


def partial_dir(folder: str | Path) -> Path:
    """Where `output_dir(folder, partial=True)` stages (other DDP ranks read checkpoints
    there; they write nothing)."""
    return _stage_name(Path(os.path.realpath(folder)), "partial")


@contextlib.contextmanager
def output_dir(
    folder: str | Path,
    *,
    owned: Callable[[str], bool],
    keep: Callable[[str], bool] = lambda name: False,
    partial: bool = False,
    resume: bool = False,
) -> Iterator[Path]:
    """Lock `folder`, yield a fresh staging folder, and swap it in when the block succeeds.

    Args:
        folder: The output folder (need not exist yet).
        owned: True for names the stage writes; every other entry of the old folder is the
            user's and is carried into the staging folder (hard link).
        keep: Names the stage wrote that the new output keeps (carried too).
        partial: Stage into the fixed `.NAME.partial` (a training run: it survives a crash and
            `resume=True` continues in it); otherwise a fresh `.NAME.new-PID-HEX`.
        resume: With `partial`, reuse a leftover partial folder as it is.

    Yields:
        The staging folder (empty except for carried files, or the reused partial).
    """
    folder = Path(os.path.realpath(folder))
    with locked(folder):
        _recover(folder)
        reuse = _stage_name(folder, "partial") if partial and resume else None
        for path in leftovers(folder):
            if reuse is None or path != reuse.parent:
                _remove(path)
        if reuse is not None and reuse.is_dir():
            staging = reuse
        else:
            tag = "partial" if partial else f"new-{os.getpid()}-{secrets.token_hex(4)}"
            staging = _stage_name(folder, tag)
            staging.mkdir(parents=True)
            if folder.is_dir():
                for entry in folder.iterdir():
                    if not owned(entry.name) or keep(entry.name):
                        _link_tree(entry, staging / entry.name)
        try:
            yield staging
        except BaseException:
            if not partial:  # a training run's partial folder is what --resume continues
                shutil.rmtree(staging.parent, ignore_errors=True)
            raise
        old = folder.parent / f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        swap_dirs(staging, folder, old=old)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(staging.parent, ignore_errors=True)
