"""Beam's portable runner on one machine: the Fn API path of Flink, Spark and Dataflow.

The ``portable-local`` preset runs every Beam step through ``PortableRunner``
with an embedded job service (``--job_endpoint=embed``) and
``--environment_type=EXTERNAL``: the pipeline's DoFns are pickled and run in
separate SDK worker processes that a Beam worker pool
(``apache_beam.runners.worker.worker_pool_main``) starts on request, as a
cluster's workers do. :func:`started` starts that pool for the length of a
run and stops it, with its workers, afterwards.

The pool starts its workers as ``python`` from ``PATH``; the pool gets a
``PATH`` whose first entry is this interpreter's folder, so in a virtual
environment (where that folder's ``python`` is this interpreter, as with
``make install``) the workers run the same environment as the pipeline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

#: ``--beam-preset`` of local runs through the portable runner.
PORTABLE_LOCAL = "portable-local"
START_TIMEOUT_S = 120.0
#: First words of the pool log's first line, followed by the pool's address.
POOL_STARTED = "Beam worker pool at"
STOP_TIMEOUT_S = 10.0


class WorkerPoolError(RuntimeError):
    """The Beam worker pool did not start."""


def portable_args(address: str) -> tuple[str, ...]:
    """``beam_pipeline_args`` that run Beam steps on the worker pool at ``address``."""
    return ("--runner=PortableRunner", "--job_endpoint=embed",
            "--environment_type=EXTERNAL", f"--environment_config={address}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: str, lines: int = 20) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


@contextlib.contextmanager
def started(log_path: str) -> Iterator[str]:
    """A running worker pool for the block; yields its address (``localhost:<port>``).

    The pool's and its workers' output go to ``log_path``. On exit the pool's
    process group (the pool and every worker it started) is stopped.

    Raises:
      WorkerPoolError: the pool exited or did not listen within
        :data:`START_TIMEOUT_S` seconds; the message quotes its log.
    """
    port = _free_port()
    env = dict(os.environ, PATH=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    cmd = [sys.executable, "-m", __name__, f"--service_port={port}", f"--parent_pid={os.getpid()}"]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"{POOL_STARTED} localhost:{port}: {' '.join(cmd)}\n")
        log.flush()
        pool = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(port):
            if pool.poll() is not None:
                raise WorkerPoolError(f"the Beam worker pool exited with code {pool.returncode} "
                                      f"before listening; its log ({log_path}) ends:\n"
                                      + _tail(log_path))
            if time.monotonic() > deadline:
                raise WorkerPoolError(f"the Beam worker pool did not listen on port {port} "
                                      f"within {START_TIMEOUT_S:.0f} s; see {log_path}.")
            time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        _stop(pool)


def _stop(pool: subprocess.Popen) -> None:
    """Stops the pool's process group: SIGTERM, then SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pool.pid, sig)
        except ProcessLookupError:
            break
        try:
            pool.wait(timeout=STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pool.pid, signal.SIGKILL)     # workers that outlived the pool
    pool.wait()


def main(argv: list[str]) -> None:
    """``python -m pipeline.worker_pools --service_port=P --parent_pid=PID``: Beam's worker pool.

    It is Beam's own (``apache_beam.runners.worker.worker_pool_main``), ended
    when the process that started it (``PID``) is gone.
    """
    from apache_beam.runners.worker import worker_pool_main

    from components import worker_exit

    parent = next(a.split("=", 1)[1] for a in argv if a.startswith("--parent_pid="))
    worker_exit.exit_with_parent(int(parent), group=True)     # with the SDK workers it started
    worker_pool_main.main([a for a in argv if not a.startswith("--parent_pid=")])


if __name__ == "__main__":
    main(sys.argv)
