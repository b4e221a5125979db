"""Stopping a run: Ctrl-C / SIGTERM ask for a checkpoint at the end of the step, and the
exceptions a run ends with (interrupted after its checkpoint, or a non-finite loss/weights)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any


class NonFiniteError(FloatingPointError):
    """The loss or the gradient became NaN/inf; nothing was applied or saved after the last
    good step."""


class TrainingInterrupted(SystemExit):
    """Raised after Ctrl-C / SIGTERM once a checkpoint is written; exits with 128 + signal."""

    def __init__(self, code: int, message: str, checkpoint: Path | None) -> None:
        super().__init__(code)
        self.message = message
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message


class StopFlag:
    """First SIGINT/SIGTERM asks for a checkpoint at the end of the step; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n[train] {signal.Signals(signum).name} received: finishing this step, then "
            "writing a checkpoint (Ctrl-C again to abort without one)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class StopRequested(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
