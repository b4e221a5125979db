"""Which invocation a stage runs in and what it changed: git, DVC's process, params.yaml.

`pipeline.tracking` names and groups its MLflow runs with these:

- `describe_changes`: params.yaml entries that differ from the committed file, `--set`
  arguments and `LRT_*` settings in the environment (the parent run's name and `lrt.changes`);
- `git_commit`: HEAD's commit, "-dirty" with uncommitted changes (the `lrt.git_commit` tag);
- `current_invocation`: under `dvc repro` / `dvc exp run`, the ancestor `dvc` process (its pid and
  start time, read from `/proc` or psutil) that the stage processes of one invocation share;
- `flatten_params`: nested params as the dotted, MLflow-limited strings that tracking logs and
  `describe_changes` compares.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def describe_changes(project_dir: str | Path, argv: list[str] | None = None) -> list[str]:
    """What this invocation changed, as `key=value` strings: params.yaml entries that differ
    from the committed one (what `dvc exp run -S` does), then `--set` arguments of the command
    line, then LRT_* settings in the environment.

    >>> describe_changes("/nonexistent", ["lrt-pipeline", "run", "--set", "train.max_steps=9"])
    ['train.max_steps=9']
    """
    project_dir = Path(project_dir)
    changes: list[str] = []
    params = project_dir / "params.yaml"
    if params.is_file():
        try:
            import yaml

            committed = subprocess.run(
                ["git", "show", "HEAD:params.yaml"],
                cwd=project_dir,
                capture_output=True,
                text=True,
                timeout=10,
            )
            if committed.returncode == 0:
                old = flatten_params(yaml.safe_load(committed.stdout) or {})
                new = flatten_params(yaml.safe_load(params.read_text()) or {})
                changes += [f"{k}={v}" for k, v in new.items() if old.get(k) != v]
                changes += [f"{k} removed" for k in old if k not in new]
        except (OSError, subprocess.SubprocessError, ValueError, ImportError):
            pass  # not a git checkout, or an unreadable file: nothing to compare
    args = sys.argv if argv is None else argv
    for i, arg in enumerate(args):
        if arg == "--set" and i + 1 < len(args):
            changes.append(args[i + 1])
        elif arg.startswith("--set="):
            changes.append(arg.removeprefix("--set="))
    for key, value in sorted(os.environ.items()):
        if key.startswith("LRT_") and "__" in key:
            changes.append(f"{key.removeprefix('LRT_').lower().replace('__', '.')}={value}")
    return list(dict.fromkeys(changes))


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name[:250]] = str(value)[:6000]  # MLflow's key and value limits
    return out


def git_commit(project_dir: Path) -> str | None:
    """HEAD's commit, suffixed "-dirty" with uncommitted changes; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def current_invocation(name: str) -> tuple[str | None, str]:
    """(key, run name) of the DVC process running this stage, or (None, name) outside DVC.

    Stages of one `dvc repro` are separate processes with no shared id, but they share the
    ancestor `dvc` process; its pid plus start time identify the invocation."""
    if not os.environ.get("DVC_STAGE"):
        return None, name
    for pid in _ancestors():
        cmdline = _cmdline(pid)
        at = _dvc_arg(cmdline)
        if at is not None:
            label = " ".join(["dvc", *cmdline[at + 1 : at + 4]])
            exp = os.environ.get("DVC_EXP_NAME")
            run_name = f"{label} {exp}" if exp else f"{label} {time.strftime('%Y-%m-%d %H:%M:%S')}"
            return f"dvc:{pid}:{_start_time(pid)}", run_name
    return None, f"dvc {os.environ['DVC_STAGE']}"


def _dvc_arg(cmdline: list[str]) -> int | None:
    """Index of the argument that starts dvc (`dvc ...`, `python .../bin/dvc ...`,
    `python -m dvc ...`), or None."""
    for i, arg in enumerate(cmdline[:3]):
        if Path(arg).name in ("dvc", "dvc.exe"):
            return i
        if arg == "-m" and cmdline[i + 1 : i + 2] == ["dvc"]:
            return i + 1
    return None


def _ancestors() -> Iterator[int]:
    pid = os.getppid()
    for _ in range(16):
        if pid <= 1:
            return
        yield pid
        pid = _ppid(pid)


def _proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> list[str]:
    raw = _proc(pid, "cmdline")
    if raw:
        return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
    try:
        import psutil

        return psutil.Process(pid).cmdline()
    except Exception:  # no /proc and no psutil: not identifiable
        return []


def _stat_fields(pid: int) -> list[str]:
    raw = _proc(pid, "stat").decode(errors="replace")
    return raw[raw.rfind(")") + 2 :].split() if raw else []  # fields after "(comm)"


def _ppid(pid: int) -> int:
    fields = _stat_fields(pid)
    if fields:
        return int(fields[1])
    try:
        import psutil

        return psutil.Process(pid).ppid()
    except Exception:
        return 0


def _start_time(pid: int) -> str:
    fields = _stat_fields(pid)
    if fields:
        return fields[19]  # starttime, clock ticks since boot
    try:
        import psutil

        return str(psutil.Process(pid).create_time())
    except Exception:
        return "0"
