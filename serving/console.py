"""A quiet console for a long-running command: a few lines here, the detail in a log.

While a :class:`Console` is open, file descriptors 1 and 2 of this process
point at a log file (or, with ``verbose``, at a pipe copied to both the log
and the terminal). Everything written there lands in the log: TensorFlow's
C++ logging, absl and Python ``logging``, Python warnings, tracebacks,
subprocesses (they inherit the descriptors). :meth:`Console.say` writes to
saved duplicates of the original standard output and error, and a copy,
prefixed ``[console] ``, to the log.

Open the console before TensorFlow is imported: TensorFlow's first lines
are written when it loads.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional

STDOUT, STDERR = 1, 2


# Starts a console line sent through the verbose pipe, then the stream's digit.
_MARK = b"\0console"


class Console:
    """Routes this process's output to ``log_path``; :meth:`say` reaches the terminal.

    Args:
      log_path: the log file (created with its folder; appended to).
      verbose: also stream the log to the terminal (to ``stream``).
      stream: the original descriptor :meth:`say` writes to unless told
        otherwise, ``STDOUT`` or ``STDERR``.
    """

    def __init__(self, log_path: str, verbose: bool = False, stream: int = STDOUT) -> None:
        if stream not in (STDOUT, STDERR):
            raise ValueError(f"stream: expected {STDOUT} (stdout) or {STDERR} (stderr), "
                             f"got {stream!r}")
        self.log_path = os.path.abspath(log_path)
        self.verbose = verbose
        self.stream = stream
        self._log_fd = -1
        self._saved: tuple[int, int] = (-1, -1)
        self._tee: Optional[threading.Thread] = None
        self._pipe_write = -1
        self._lock = threading.Lock()

    def __enter__(self) -> Console:
        """Opens the log (an ``OSError`` here leaves the descriptors as they were)."""
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(STDOUT), os.dup(STDERR))
        target = self._log_fd
        if self.verbose:
            read_end, self._pipe_write = os.pipe()
            self._tee = threading.Thread(target=self._copy, args=(read_end,),
                                         name="console-tee", daemon=True)
            self._tee.start()
            target = self._pipe_write
        os.dup2(target, STDOUT)
        os.dup2(target, STDERR)
        return self

    def say(self, line: str = "", stream: Optional[int] = None) -> None:
        """Writes one line to the terminal (``stream``, default the console's) and the log.

        The log gets it prefixed ``[console] ``, after whatever was written
        before. Safe to call from any thread.
        """
        assert self._log_fd >= 0, "Console.say outside its `with` block"
        sys.stdout.flush()
        sys.stderr.flush()
        parts = [part.encode() for part in line.split("\n")]
        stream = stream or self.stream
        if self._tee is not None:   # through the pipe, in order; the tee routes it
            digit = str(stream).encode()
            _write_all(self._pipe_write, b"".join(_MARK + digit + p + b"\n" for p in parts))
            return
        with self._lock:
            _write_all(self._log_fd, b"".join(b"[console] " + p + b"\n" for p in parts))
            _write_all(self._saved[stream - 1], line.encode() + b"\n")

    def _copy(self, read_end: int) -> None:
        """Copies the pipe, whole lines, to the log and the terminal until it is closed."""
        partial = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, partial = (partial + chunk).split(b"\n")
                self._route(lines)
        self._route([partial] if partial else [])

    def _route(self, lines: list[bytes]) -> None:
        """Writes piped lines to the log and the terminal; :meth:`say`'s to their stream."""
        plain: list[bytes] = []
        for line in [*lines, None]:
            if line is not None and not line.startswith(_MARK):
                plain.append(line + b"\n")
                continue
            if plain:
                _write_all(self._log_fd, b"".join(plain))
                _write_all(self._saved[self.stream - 1], b"".join(plain))
                plain = []
            if line is not None:
                stream, text = int(line[len(_MARK):len(_MARK) + 1]), line[len(_MARK) + 1:]
                _write_all(self._log_fd, b"[console] " + text + b"\n")
                _write_all(self._saved[stream - 1], text + b"\n")

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], STDOUT)
        os.dup2(self._saved[1], STDERR)
        if self._tee is not None:
            os.close(self._pipe_write)
            self._tee.join(timeout=5)
            if self._tee.is_alive():    # a subprocess still holds the pipe: the copy goes on
                return
        for fd in (*self._saved, self._log_fd):
            os.close(fd)
        self._log_fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def log_file(log_dir: str, prefix: str) -> str:
    """``<log_dir>/<prefix>-<local time>-<process id>.log``: one file per command."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.abspath(log_dir), f"{prefix}-{stamp}-{os.getpid()}.log")
