"""`Part`: one worker's results file, rewritten atomically after every entry (the parent
merges it into results.json, so a worker killed at its timeout keeps what it measured)."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any


class Part:
    """Results of one worker, rewritten atomically after every entry."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)
        print(f"[{key}] {json.dumps(value, default=str)[:400]}", flush=True)

    def error(self, key: str, exc: BaseException) -> None:
        self.put(
            key, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        )
