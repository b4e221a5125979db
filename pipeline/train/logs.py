"""What a training run prints and logs: the append-only CSV logs (`train_log.csv`,
`val_log.csv`), the plain progress line, the tqdm postfix, MLflow metric names and stderr
messages."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_text


class CsvLog:
    """Append-only CSV with a header fixed by the first row; `truncate_after` for resume."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path, self.fields = path, fields

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (they are recomputed on resume)."""
        if not self.path.is_file():
            return
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)

    def append(self, row: Mapping[str, Any]) -> None:
        new = not self.path.is_file()
        if not new and self.path.stat().st_nlink > 1:
            # A hard link shared with the previous run folder (pipeline.atomic carries files
            # by link): appending in place would change that folder too; own a copy first.
            atomic_write_text(self.path, self.path.read_text(encoding="utf-8"))
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _cell(row.get(k)) for k in self.fields})


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) >= 1e6 else f"{v:.8g}"
    return v


def progress_line(run: Any, row: Mapping[str, Any]) -> None:
    """`[train] lrt step 40/100 loss 3.2101 tok/s 51,200 eta 0:00:12 val_bpb 1.93` (stdout).

    `run` is the `pipeline.train.loop._Run` (its variant, total_steps and elapsed are read)."""
    step, total = int(row["step"]), run.total_steps
    rate = row["step"] / run.elapsed if run.elapsed > 0 else 0.0  # steps per training second
    eta = int((total - step) / rate) if rate > 0 else None
    parts = [
        f"[train] {run.variant} step {step}/{total}",
        f"loss {row['loss']:.4f}",
        f"tok/s {row['tokens_per_s']:,.0f}",
        f"eta {_hms(eta) if eta is not None else '?'}",
    ]
    if row.get("val_bpb") is not None:
        parts.append(f"val_bpb {row['val_bpb']:.4f}")
    print(" ".join(parts), flush=True)


def _hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def say(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


def postfix(row: Mapping[str, Any]) -> dict[str, str]:
    post = {"loss": f"{row['loss']:.4f}", "tok/s": f"{row['tokens_per_s']:,.0f}"}
    if row.get("mfu") is not None:
        post["mfu"] = f"{100 * row['mfu']:.1f}%"
    if "val_bpb" in row:
        post["val_bpb"] = f"{row['val_bpb']:.4f}"
    return post


def metric_names(row: Mapping[str, Any]) -> dict[str, float]:
    """CSV row -> MLflow metric names: `train/loss`, `train/pass0_loss`, `val/bpb`, ..."""
    out = {}
    for k, v in row.items():
        if k == "step" or v is None:
            continue
        out[f"val/{k.removeprefix('val_')}" if k.startswith("val_") else f"train/{k}"] = v
    return out
