"""Shared helpers for benchmarks: process-tree peak memory, machine facts, output."""

from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

import psutil

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> dict[str, object]:
    """Facts about the machine a benchmark ran on."""
    return {
        "machine_cpus": os.cpu_count(),
        "machine_memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "machine_platform": platform.platform(),
        "machine_python": platform.python_version(),
    }


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: Sequence[str], env: dict[str, str], log_path: str) -> tuple[float, float]:
    """Runs ``cmd``; returns (wall seconds, peak RSS of its process tree in MiB)."""
    wall, peak, _ = run_measured_peak(cmd, env, log_path)
    return wall, peak


def run_measured_peak(cmd: Sequence[str], env: dict[str, str], log_path: str
                      ) -> tuple[float, float, float]:
    """Runs ``cmd``; returns (wall seconds, peak RSS in MiB, Unix time of the peak).

    RSS is sampled every 0.2 s and summed over the process and all its
    descendants (Beam's worker processes included).
    """
    peak = [0, 0.0]
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    rss = _tree_rss(ps)
                    if rss > peak[0]:
                        peak[:] = [rss, time.time()]
                except psutil.Error:
                    pass
                time.sleep(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        stop.set()
        thread.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with {code}; see {log_path}")
    return wall, peak[0] / 2**20, peak[1]


def latest_artifact(run_root: str, node: str, key: str) -> str:
    """Folder of the newest ``<node>/<key>`` artefact of a local pipeline run."""
    paths = sorted(glob.glob(os.path.join(run_root, "pipeline_root", node, key, "*")),
                   key=lambda p: int(os.path.basename(p)))
    if not paths:
        raise SystemExit(f"no {node}/{key} under {run_root}; run the pipeline first")
    return paths[-1]


def write_results(name: str, values: dict[str, object],
                  markdown: Callable[[dict[str, object]], str], folder: str = RESULTS) -> None:
    """Writes ``<folder>/<name>.json`` (flat keys) and ``<folder>/<name>.md``.

    ``markdown`` renders the values (with ``command`` and machine facts added).
    ``folder`` is ``benchmarks/results`` unless a test writes elsewhere.
    """
    os.makedirs(folder, exist_ok=True)
    values = {"command": " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
              **machine(), **values}
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write(markdown(values))
