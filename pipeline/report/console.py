"""The quiet console of ``python -m pipeline run``: progress lines here, detail in a log.

The :class:`serving.console.Console` the endpoint also uses: while it is
open, file descriptors 1 and 2 of this process point at the run's log file
(or, with ``verbose``, at a pipe copied to both the log and the terminal), so
TensorFlow's C++ logging, absl and Python ``logging``, Python warnings, Beam
worker subprocesses (they inherit the descriptors) and tracebacks land in
the log; :meth:`~serving.console.Console.say` reaches the terminal.
"""

from __future__ import annotations

import os
import time

from serving.console import Console

__all__ = ["Console", "log_path"]


def log_path(run_root: str) -> str:
    """``<run_root>/logs/run-<local time>.log``: one file per command."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.abspath(run_root), "logs", f"run-{stamp}.log")
