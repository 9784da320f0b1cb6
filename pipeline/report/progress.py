"""One console line when each pipeline step starts and one when it ends.

Both local runners announce every node through absl logging, in this
process: BeamDagRunner ``node <id> is running.`` / ``node <id> is
finished.``, LocalDagRunner ``Component <id> is running.`` / ``... is
finished.``. :class:`StepWatcher` listens for those records; when a step
ends it reads the step's execution from ML Metadata for its wall time and
its key figure.

A long step does not look hung: while one runs, a heartbeat line
(``... running <node> for <s> s``, with the Trainer's latest step and loss
from :mod:`components.trainer.progress`) follows whenever the console has
been silent for ``heartbeat_s`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Callable, Iterator, Optional

from absl import logging as absl_logging

from components.trainer import progress as trainer_progress

#: Console silence, while a step runs, that brings a heartbeat line, in seconds:
#: polled every second, with a margin under the 30 s promised. A step that
#: runs Python in this process (the in-process join) can hold the heartbeat
#: thread back: 28 s gave gaps of 29.3 s, 25 s one of 32 s at a million items.
HEARTBEAT_S = 20.0
_EVENT = re.compile(r"^(?:node|Component) (\S+) is (running|finished)\.$")


class StepWatcher(logging.Handler):
    """Turns the runners' start/finish records into console lines.

    Args:
      say: writes one line to the console.
      describe: node id -> (seconds, state, key figure) of its latest
        execution, read once the step has finished.
      total: number of steps, for the ``[i/n]`` counter.
      heartbeat_s: console silence, while a step runs, that brings a
        heartbeat line.
    """

    def __init__(self, say: Callable[[str], None],
                 describe: Callable[[str], tuple[Optional[float], str, str]],
                 total: int, heartbeat_s: float = HEARTBEAT_S) -> None:
        super().__init__(level=logging.INFO)
        self._describe, self._total = describe, total
        self._print, self.heartbeat_s = say, heartbeat_s
        self._lock = threading.RLock()
        self._started: dict[str, float] = {}
        self._finished: list[str] = []
        self._last_line = time.monotonic()
        self._progress: Optional[tuple[float, str]] = None
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def _say(self, line: str) -> None:
        with self._lock:
            self._last_line = time.monotonic()
            self._print(line)

    def emit(self, record: logging.LogRecord) -> None:
        """Handles one absl record; every other record passes by."""
        message = record.getMessage()
        trained = trainer_progress.parse(message)
        if trained:
            self._progress = (time.time(), trained)
            return
        match = _EVENT.match(message)
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

    def start_heartbeat(self) -> None:
        """Starts the heartbeat thread (:func:`watching` does)."""
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="step-heartbeat",
                                      daemon=True)
        self._beat.start()

    def stop_heartbeat(self) -> None:
        """Stops the heartbeat thread."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_s / 4)):
            with self._lock:
                running = self.unfinished
                if running and time.monotonic() - self._last_line >= self.heartbeat_s:
                    self._say(self._heartbeat_line(running[-1]))

    def _heartbeat_line(self, node: str) -> str:
        started = self._started[node]
        line = f"{_clock()} ...    {node:<28} running for {time.time() - started:.0f} s"
        if self._progress is not None and self._progress[0] >= started:
            line += f": {self._progress[1]}"
        return line

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
    watcher.start_heartbeat()
    try:
        yield watcher
    finally:
        watcher.stop_heartbeat()
        absl_logging.get_absl_logger().removeHandler(watcher)
        absl_logging.set_verbosity(verbosity)
