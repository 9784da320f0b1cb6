"""Multi-worker training: N local worker processes on loopback, as on a cluster.

On a cluster each pod runs the Trainer's ``run_fn`` with ``TF_CONFIG`` set by
the orchestrator, and :func:`components.trainer.run.train_and_export` trains
under ``MultiWorkerMirroredStrategy``. On one machine, ``hparams.workers = N``
makes the Trainer step start N such worker processes itself
(:func:`run_local`): each gets a ``TF_CONFIG`` naming the N loopback
addresses and its own index, and runs the same function. Worker 0 is the
chief: only it writes the model, the exports and TensorBoard's logs; the
others write theirs to a scratch folder that is removed.

The step fails with the worker's own error (the tail of its log) as soon as
one worker exits with an error or is killed: the others, which would wait
for it in a collective op for ever, are stopped. Each worker's full output
is in ``<model_run>/workers/worker-<i>.log``; the chief's progress records
reach the pipeline's log and console.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from absl import logging as absl_logging

from components.trainer import progress

#: The module each worker process runs (``python -m ... <job.json> <parent pid>``).
WORKER_MODULE = "components.trainer.run"
LOG_DIR = "workers"
#: Lines of a failed worker's log quoted in the step's error.
ERROR_TAIL_LINES = 25


class WorkerFailedError(RuntimeError):
    """A training worker exited with an error or was killed."""


@dataclasses.dataclass(frozen=True)
class Job:
    """What every worker of one Trainer run needs (JSON-serialisable)."""

    custom_config: dict[str, Any]
    transform_dir: str
    train_dir: str
    catalog_dir: str
    correlation_uri: Optional[str]
    log_dir: str
    export_dir: str
    #: Folder for the non-chief workers' scratch saves (None: the system's temp folder).
    scratch_root: Optional[str] = None

    def write(self, path: str) -> str:
        """Writes the job as JSON to ``path``; returns ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f)
        return path

    @classmethod
    def read(cls, path: str) -> Job:
        """The job written by :meth:`write`."""
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))


def _tf_config() -> dict[str, Any]:
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def task() -> tuple[str, int, int]:
    """``(type, index, number of workers)`` of this process from ``TF_CONFIG``.

    Without ``TF_CONFIG``: ``("worker", 0, 1)``, a one-process run.
    """
    config = _tf_config()
    cluster, me = config.get("cluster") or {}, config.get("task") or {}
    total = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")) or 1
    return me.get("type", "worker"), int(me.get("index", 0)), total


def in_cluster() -> bool:
    """Whether this process is one worker of a multi-worker run (``TF_CONFIG`` set)."""
    return bool(os.environ.get("TF_CONFIG"))


def is_chief() -> bool:
    """Whether this process writes the model: the ``chief``, else worker 0."""
    kind, index, _ = task()
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in (_tf_config().get("cluster") or {})


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(n: int) -> list[str]:
    """The ``TF_CONFIG`` of each of ``n`` workers of a loopback cluster."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(n)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i in range(n)]


def _relay(path: str, stop: threading.Event, index: int) -> None:
    """Follows worker ``index``'s log; its progress records go to this process's log."""
    while not os.path.exists(path) and not stop.is_set():
        time.sleep(0.1)
    with open(path, encoding="utf-8", errors="replace") as f:
        line = ""
        while True:
            line += f.readline()
            if not line.endswith("\n"):              # nothing new, or a line half written
                if stop.is_set():
                    return
                time.sleep(0.2)
                continue
            record, line = progress.find(line), ""
            if record is not None and index == 0:
                progress.relay(record)


def _tail(path: str, lines: int = ERROR_TAIL_LINES) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def run_local(n: int, job: Job, poll_s: float = 0.2) -> None:
    """Trains ``job`` with ``n`` local worker processes; returns when all finished.

    Raises:
      WorkerFailedError: a worker exited with an error or was killed; names the
        worker, how it ended and the tail of its log. The other workers are
        stopped first.
    """
    log_dir = os.path.join(job.log_dir, LOG_DIR)
    os.makedirs(log_dir, exist_ok=True)
    scratch = os.path.join(log_dir, "scratch")
    job = dataclasses.replace(job, scratch_root=scratch)
    job_path = job.write(os.path.join(log_dir, "job.json"))
    threads = str(max(1, (os.cpu_count() or 1) // n))     # n workers share the cores
    logs = [os.path.join(log_dir, f"worker-{i}.log") for i in range(n)]
    stop = threading.Event()
    relays = [threading.Thread(target=_relay, args=(logs[0], stop, 0), daemon=True)]
    procs: list[subprocess.Popen] = []
    absl_logging.info("Trainer: starting %d workers on loopback; their logs: %s", n, log_dir)
    try:
        for i, config in enumerate(tf_configs(n)):
            env = dict(os.environ, TF_CONFIG=config, TF_USE_LEGACY_KERAS="1")
            env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
            with open(logs[i], "w", encoding="utf-8") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", WORKER_MODULE, job_path, str(os.getpid())], env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT))
        relays[0].start()
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]
                raise WorkerFailedError(
                    f"training worker {i} of {n} {_exit_reason(codes[i])}; the others were "
                    f"stopped. Its log ({logs[i]}) ends:\n{_tail(logs[i])}")
            if all(c == 0 for c in codes):
                break
            time.sleep(poll_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        stop.set()
        for t in relays:
            if t.is_alive():
                t.join(timeout=5)
        shutil.rmtree(scratch, ignore_errors=True)    # also after a worker was killed
    absl_logging.info("Trainer: %d workers finished", n)
