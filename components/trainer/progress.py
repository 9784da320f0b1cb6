"""The Trainer's progress records: written by ``run_fn``, read by the console.

A record ``Trainer progress: step <n> of <total>, loss <x>`` goes to absl's
log at most every :data:`EVERY_S` seconds while a model trains; the
pipeline's console (``pipeline.report.progress``) shows the latest one in its
heartbeat line of the running step.
"""

from __future__ import annotations

import re
import time
from typing import Optional

from absl import logging as absl_logging

EVERY_S = 10.0
_PREFIX = "Trainer progress:"
_FORMAT = _PREFIX + " step %d of %d, loss %.4f"
_BODY = r"(step \d+ of \d+, loss \S+)"
_RECORD = re.compile(rf"^{_PREFIX} {_BODY}$")
_IN_LINE = re.compile(rf"{_PREFIX} {_BODY}\s*$")


class Reporter:
    """Logs a progress record when ``every_s`` seconds passed since the last one."""

    def __init__(self, total_steps: int, every_s: float = EVERY_S) -> None:
        self.total, self.every_s = total_steps, every_s
        self._last = time.monotonic()

    def due(self, done: int) -> bool:
        """Whether a record is due after ``done`` steps (the last step's always is)."""
        return done == self.total or time.monotonic() - self._last >= self.every_s

    def report(self, done: int, loss: float) -> None:
        """Logs ``done`` steps trained and the last batch's ``loss``."""
        self._last = time.monotonic()
        absl_logging.info(_FORMAT, done, self.total, loss)


def parse(message: str) -> Optional[str]:
    """``step <n> of <total>, loss <x>`` of a progress record; None for any other message."""
    match = _RECORD.match(message)
    return match.group(1) if match else None


def find(line: str) -> Optional[str]:
    """``step <n> of <total>, loss <x>`` of a progress record anywhere in a log line.

    Finds the record after a training worker's log prefix; None for any other line.
    """
    match = _IN_LINE.search(line)
    return match.group(1) if match else None


def relay(record: str) -> None:
    """Logs a record another process wrote (:func:`find`'s result) as this process's own."""
    absl_logging.info("%s %s", _PREFIX, record)
