"""Shared helpers for benchmarks: process-tree memory, step times, machine facts, output."""

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

from pipeline.config import PipelineConfig

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The pipeline name of local runs (ML Metadata's context).
PIPELINE_NAME = PipelineConfig.pipeline_name


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


def run_watched(cmd: list[str], log_path: str, env: dict[str, str]) -> dict[str, object]:
    """Runs ``cmd``; returns its wall time, RSS samples and console line times.

    Returns ``{"wall_s", "start", "rss": [(unix time, bytes)], "lines":
    [unix time of each console line]}``; raises if the command fails.
    """
    samples: list[tuple[float, int]] = []
    lines: list[float] = []
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.time(), _tree_rss(ps)))
                time.sleep(0.5)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        for line in proc.stdout:
            lines.append(time.time())
            log.write(f"{time.strftime('%H:%M:%S')} {line}")
            log.flush()
        code = proc.wait()
        stop.set()
        thread.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {code}; see {log_path}")
    return {"wall_s": time.time() - start, "start": start, "rss": samples, "lines": lines}


def longest_silence(start: float, end: float, lines: list[float]) -> float:
    """The longest gap between two console lines (the start and end count as lines)."""
    times = [start, *sorted(lines), end]
    return max(b - a for a, b in zip(times, times[1:]))


def step_windows(run_root: str, spec_path: str, config_kwargs: dict | None = None
                 ) -> dict[str, tuple[float, float]]:
    """(start, end) Unix seconds of each step's latest run, from ML Metadata.

    A step that was cached in the latest run (a resumed run) keeps the times
    of the execution that did its work.
    """
    from ml_metadata.proto import metadata_store_pb2

    from pipeline.pipeline import create_pipeline
    from pipeline.report import records
    from transforms.spec import load_spec

    store = records.open_store(os.path.join(run_root, "metadata.sqlite"))
    config = PipelineConfig(spec=load_spec(spec_path), run_root=run_root, **(config_kwargs or {}))
    out = {}
    for node in create_pipeline(config).components:
        done = [e for e in records.executions(store, PIPELINE_NAME, node.id)
                if e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
        if done:
            out[node.id] = (done[-1].create_time_since_epoch / 1000,
                            done[-1].last_update_time_since_epoch / 1000)
    return out


def step_figures(windows: dict[str, tuple[float, float]], rss: list[tuple[float, int]]
                 ) -> dict[str, float]:
    """``<Step>_wall_s`` and ``<Step>_peak_rss_mib``.

    The peak is the largest sample in the step's window; a step shorter than
    the sampling interval gets the last sample before it started.
    """
    out: dict[str, float] = {}
    for node, (start, end) in windows.items():
        inside = [b for t, b in rss if start <= t <= end]
        before = [b for t, b in rss if t < start]
        if not inside and before:
            inside = before[-1:]
        out[f"{node}_wall_s"] = round(end - start, 1)
        out[f"{node}_peak_rss_mib"] = round(max(inside) / 2**20) if inside else 0
    return out
