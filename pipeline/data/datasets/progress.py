"""One progress display for a parallel download: shards done/total, MB/s, ETA.

On a TTY it is one tqdm bar over shards (MB/s and the byte count in its postfix, refreshed by a
ticker thread); otherwise plain lines on the stream, at most one per `interval_s` plus the last:

    download: 12/80 shards, 1.2 GB this run, 95.3 MB/s, ETA 1m12s

MB/s counts only bytes transferred in this run (present, reused and cached shards add to
"done" but not to the rate); the ETA is remaining shards x mean shard size / rate.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from pipeline.data.datasets.planning import format_bytes, format_duration

__all__ = ["Progress"]


class Progress:
    """Thread-safe counters plus the display. Workers call `start_shard` / `add_bytes` /
    `finish_shard`; `poll` registers a callable giving a shard's bytes so far (a `.part` size)
    for transfers that report no bytes themselves."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval_s: float = 10.0,
        expected_shard_bytes: float | None = None,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s
        self.expected_shard_bytes = expected_shard_bytes
        self._lock = threading.Lock()
        self._done = 0
        self._done_bytes = 0  # sizes of finished shards (for the mean shard size)
        self._transferred = 0  # bytes moved over the network by finished shards
        self._live: dict[int, int] = {}  # shard -> bytes counted by add_bytes
        self._polls: dict[int, Callable[[], int]] = {}
        self._start = time.monotonic()
        self._last_line = -float("inf")
        self._stop = threading.Event()
        self._bar = None
        self._ticker: threading.Thread | None = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="shard", file=self.stream, dynamic_ncols=True)
        # The ticker refreshes MB/s during long transfers (bar postfix, or a plain line per
        # interval), so a slow shard does not look like a hang.
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    # -- counters ------------------------------------------------------------------------------

    def start_shard(self, index: int, poll: Callable[[], int] | None = None) -> None:
        with self._lock:
            self._live[index] = 0
            if poll is not None:
                self._polls[index] = poll

    def add_bytes(self, index: int, n: int) -> None:
        with self._lock:
            self._live[index] = self._live.get(index, 0) + n

    def finish_shard(self, index: int, size: int, *, transferred: int | None = None) -> None:
        """Shard `index` is in place (`size` bytes); `transferred` = bytes it moved over the
        network in this run (default: what was counted or polled; 0 for present shards)."""
        with self._lock:
            counted = self._live.pop(index, 0)
            poll = self._polls.pop(index, None)
            if transferred is None:
                transferred = counted
                if poll is not None:
                    transferred = max(counted, _safe(poll))
            self._done += 1
            self._done_bytes += size
            self._transferred += transferred
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(self._rate_text(), refresh=False)
        else:
            self._maybe_line(force=self._done == self.total)

    # -- display -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, float]:
        """done, total, transferred bytes, rate (bytes/s), eta (s)."""
        with self._lock:
            live = sum(self._live.values())
            live += sum(_safe(p) for i, p in self._polls.items() if self._live.get(i, 0) == 0)
            transferred = self._transferred + live
            done, done_bytes = self._done, self._done_bytes
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = transferred / elapsed
        mean = done_bytes / done if done else (self.expected_shard_bytes or 0.0)
        remaining = max(self.total - done, 0) * mean - live
        eta = 0.0 if done >= self.total else (remaining / rate if rate > 0 else float("inf"))
        return {
            "done": done,
            "total": self.total,
            "transferred": transferred,
            "rate": rate,
            "eta": max(eta, 0.0),
        }

    def line(self) -> str:
        s = self.snapshot()
        return (
            f"download: {s['done']}/{s['total']} shards, {format_bytes(s['transferred'])} this "
            f"run, {s['rate'] / 1e6:.1f} MB/s, ETA {format_duration(s['eta'])}"
        )

    def _rate_text(self) -> str:
        s = self.snapshot()
        return f"{format_bytes(s['transferred'])}, {s['rate'] / 1e6:.1f} MB/s"

    def _maybe_line(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_line >= self.interval_s:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(
            0.5 if self._bar is not None else max(min(self.interval_s, 5.0), 0.05)
        ):
            if self._bar is not None:
                self._bar.set_postfix_str(self._rate_text())
            else:
                self._maybe_line()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._bar is not None:
            self._bar.close()


def _safe(poll: Callable[[], int]) -> int:
    try:
        return int(poll())
    except OSError:
        return 0
