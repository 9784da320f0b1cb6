"""One console line when each pipeline step starts and one when it ends.

Both local runners announce every node through absl logging, in this
process: BeamDagRunner ``node <id> is running.`` / ``node <id> is
finished.``, LocalDagRunner ``Component <id> is running.`` / ``... is
finished.``. :class:`StepWatcher` listens for those records; when a step
ends it reads the step's execution from ML Metadata for its wall time and
its key figure.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Callable, Iterator, Optional

from absl import logging as absl_logging

_EVENT = re.compile(r"^(?:node|Component) (\S+) is (running|finished)\.$")


class StepWatcher(logging.Handler):
    """Turns the runners' start/finish records into console lines.

    Args:
      say: writes one line to the console.
      describe: node id -> (seconds, state, key figure) of its latest
        execution, read once the step has finished.
      total: number of steps, for the ``[i/n]`` counter.
    """

    def __init__(self, say: Callable[[str], None],
                 describe: Callable[[str], tuple[Optional[float], str, str]],
                 total: int) -> None:
        super().__init__(level=logging.INFO)
        self._say, self._describe, self._total = say, describe, total
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._finished: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Handles one absl record; every other record passes by."""
        match = _EVENT.match(record.getMessage())
        if not match:
            return
        node, what = match.groups()
        with self._lock:
            if what == "running":
                self._started[node] = time.time()
                self._say(f"{_clock()} start  {node}")
            else:
                self._finished.append(node)
                self._say(self._end_line(node))

    def _end_line(self, node: str) -> str:
        seconds, state, figure = self._describe(node)
        if seconds is None:
            seconds = time.time() - self._started.get(node, time.time())
        count = f"[{len(self._finished)}/{self._total}]"
        return (f"{_clock()} done   {node:<28} {seconds:7.1f} s  {count:>7} {state:<8} "
                f"{figure}").rstrip()

    @property
    def unfinished(self) -> list[str]:
        """Steps that started and did not finish (the failed one, on a failure)."""
        return [n for n in self._started if n not in self._finished]


def _clock() -> str:
    return time.strftime("%H:%M:%S")


@contextlib.contextmanager
def watching(watcher: StepWatcher) -> Iterator[StepWatcher]:
    """Attaches ``watcher`` to absl's logger for the ``with`` block.

    absl's verbosity is raised to INFO so the runners' records are emitted
    (into the log file, which thereby holds every step's detail).
    """
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_logger().addHandler(watcher)
    try:
        yield watcher
    finally:
        absl_logging.get_absl_logger().removeHandler(watcher)
        absl_logging.set_verbosity(verbosity)
