"""A quiet console for ``python -m pipeline run``: progress lines here, detail in a log.

While a :class:`Console` is open, file descriptors 1 and 2 of this process
point at the run's log file (or, with ``verbose``, at a pipe copied to both
the log and the terminal). Everything written there lands in the log:
TensorFlow's C++ logging, absl and Python ``logging``, Python warnings, Beam
worker subprocesses (they inherit the descriptors), tracebacks. The console
itself writes to a saved duplicate of the original standard output.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional, TextIO


class Console:
    """Routes this process's output to ``log_path``; :meth:`say` reaches the terminal.

    Args:
      log_path: the log file (created with its folder; appended to).
      verbose: also stream the log to the terminal.
    """

    def __init__(self, log_path: str, verbose: bool = False) -> None:
        self.log_path = os.path.abspath(log_path)
        self.verbose = verbose
        self._terminal: Optional[TextIO] = None
        self._saved: tuple[int, int] = (-1, -1)
        self._tee: Optional[threading.Thread] = None
        self._pipe_write = -1

    def __enter__(self) -> Console:
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self._terminal = os.fdopen(os.dup(1), "w", buffering=1)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        target = log_fd
        if self.verbose:
            read_end, self._pipe_write = os.pipe()
            self._tee = threading.Thread(target=_tee, args=(read_end, log_fd, self._saved[0]),
                                         name="console-tee", daemon=True)
            self._tee.start()
            target = self._pipe_write
        os.dup2(target, 1)
        os.dup2(target, 2)
        if not self.verbose:
            os.close(log_fd)
        return self

    def say(self, line: str = "") -> None:
        """Writes one line to the terminal and to the log."""
        assert self._terminal is not None, "Console.say outside its `with` block"
        if self.verbose:    # the pipe reaches both
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return
        sys.stderr.write("".join(f"[console] {part}\n" for part in line.split("\n")))
        sys.stderr.flush()
        self._terminal.write(line + "\n")
        self._terminal.flush()

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        if self._tee is not None:
            os.close(self._pipe_write)
            self._tee.join(timeout=5)
        for fd in self._saved:
            os.close(fd)
        if self._terminal is not None:
            self._terminal.close()


def _tee(read_end: int, log_fd: int, terminal_fd: int) -> None:
    """Copies the pipe to the log and the terminal until every writer closed it."""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            os.write(log_fd, chunk)
            os.write(terminal_fd, chunk)
    os.close(log_fd)


def log_path(run_root: str) -> str:
    """``<run_root>/logs/run-<local time>.log``: one file per command."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.abspath(run_root), "logs", f"run-{stamp}.log")
