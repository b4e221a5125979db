"""One-call GPU measurement of the LRT pipeline: speed, memory and a small quality experiment.

Parent side (imports no torch): runs each section in a worker subprocess (its own process
group) with a timeout, merges what the worker wrote and rewrites results.json after every
section; `main` is the command line of `python -m pipeline.benchmarks.gpu`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.benchmarks.gpu.config import REPO
from pipeline.benchmarks.gpu.summary import loader_share, summarize

# name, cap seconds, minimum useful seconds, seconds to keep for it while earlier ones run.
# Issue 16's targets first (decode overhead, MFU and the interleaved step ratio, sequential BPB
# over two seeds; quality keeps 150 s however long the earlier ones take), then what is
# known from run 1 (eager steps, loader) and the CUDA-marked tests.
SECTIONS = [
    ("env", 40, 10, 0),
    ("decode", 150, 40, 0),
    ("train_compiled", 240, 60, 0),
    ("quality", 190, 60, 150),
    ("train_eager", 80, 30, 0),
    ("loader", 30, 10, 0),
    ("pytest", 90, 30, 0),
]


def _run_worker(name: str, args: list[str], timeout: float, log) -> dict[str, Any]:
    """Run one worker in its own process group; kill the group at the timeout."""
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pipeline.benchmarks.gpu", "--worker", name, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(f"  {name}| {line}")
            sys.stdout.flush()
            log.write(f"{name}| {line}")
            log.flush()
            tail.append(line)
            del tail[:-40]

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    status = "ok"
    try:
        rc = proc.wait(timeout=timeout)
        if rc != 0:
            status = f"exit {rc}"
    except subprocess.TimeoutExpired:
        status = "timeout"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its compile workers only
        proc.wait()
    th.join(timeout=5)
    return {"status": status, "wall_s": round(time.time() - t0, 1), "timeout_s": round(timeout),
            "log_tail": "".join(tail[-15:]) if status != "ok" else ""}  # fmt: skip


def parent_main(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = Path(a.parts or "/tmp/lrt_gpu_parts")
    parts.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    res: dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        "smoke": a.smoke,
        "budget_s": a.budget,
        "commit": os.environ.get("LRT_COMMIT", ""),
        "sections": {},
        "meta": {},
    }
    only = set(a.only.split(",")) if a.only else None

    def write() -> None:
        res["elapsed_s"] = round(time.time() - t_start, 1)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(out / "results.json")

    write()
    with open(out / "run.log", "a") as log:
        for i, (name, cap, min_s, _) in enumerate(SECTIONS):
            if only is not None and name not in only:
                continue
            remaining = a.budget - (time.time() - t_start)
            later = sum(r for n, _, _, r in SECTIONS[i + 1 :] if only is None or n in only)
            if a.smoke:  # CPU smoke: a slow shared machine, no reservations
                timeout = min(cap * 3, remaining)
            else:
                timeout = min(cap, remaining - later)
            if timeout < min_s:
                res["meta"][name] = {"status": "skipped", "remaining_s": round(remaining),
                                     "reserved_for_later_s": later}  # fmt: skip
                print(f"== {name}: skipped (remaining {remaining:.0f} s)", flush=True)
                write()
                continue
            print(f"== {name}: timeout {timeout:.0f} s (remaining {remaining:.0f} s)", flush=True)
            part = parts / f"{name}.json"
            part.unlink(missing_ok=True)
            args = ["--part", str(part), "--data", a.data, "--worker-budget",
                    str(max(10.0, timeout - 15))]  # fmt: skip
            if a.smoke:
                args += ["--smoke", "--threads", "1"]
            if a.quick_quality:
                args += ["--quick-quality"]
            try:
                meta = _run_worker(name, args, timeout, log)
            except Exception as exc:  # noqa: BLE001
                meta = {"status": f"launch error: {exc!r}"}
            try:
                res["sections"][name] = json.loads(part.read_text()) if part.exists() else {}
            except Exception as exc:  # noqa: BLE001
                res["sections"][name] = {"error": f"unreadable part: {exc!r}"}
            res["meta"][name] = meta
            if name == "loader":
                res["loader_share"] = loader_share(res)
            write()
        res["loader_share"] = loader_share(res)
        write()
        table = summarize(res)
        (out / "summary.txt").write_text(table + "\n")
        print("\n" + table, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench/results/out"))
    p.add_argument("--data", default=str(REPO / ".gpu_data"))
    p.add_argument("--budget", type=float, default=420.0, help="wall-clock seconds in all")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, CPU (tests the script)")
    p.add_argument("--only", default=None, help="comma-separated sections to run")
    p.add_argument("--parts", default=None, help="scratch folder for the workers' files")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-budget", type=float, default=100.0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--quick-quality", action="store_true", help="smaller, shorter quality run")
    a = p.parse_args(argv)
    if a.worker:
        from pipeline.benchmarks.gpu.worker import worker_main

        worker_main(a)
    else:
        parent_main(a)
