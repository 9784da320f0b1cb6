"""The CLI's console on a real run: progress lines only; the detail is in the log.

The run (``tests/conftest.py: portable_run``) is ``python -m pipeline run`` as
a subprocess with BeamDagRunner and every Beam step on Beam's portable
runner, whose SDK workers are separate processes: their output, like
TensorFlow's, must reach the logs, not the console.
"""

import csv
import glob
import os
import re
import subprocess
import sys

import pytest

from components.trainer import hparams, workers
from pipeline.config import PipelineConfig
from pipeline.datasets import synthetic
from pipeline.report import summary
from tests.conftest import PORTABLE_HPARAMS
from transforms.spec import load_spec

pytestmark = pytest.mark.slow

# TensorFlow's C++ logging ("2026-01-01 10:00:00.123456: I tensorflow/...",
# "I0000 00:00:...") and Python's warnings / tracebacks / logging.
TF_CPP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |[IWEF]\d{4} \d\d:\d\d:\d\d)")
NOISE = re.compile(r"Warning:|Traceback|Exception ignored|^(WARNING|INFO|ERROR):|^\s+File \"")


def _cli(spec_path, run_root, *extra):
    cmd = [sys.executable, "-m", "pipeline", "run", "--dataset", spec_path, "--run-root",
           run_root, *extra]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)


def _tf_startup_lines():
    """The bodies (after the time stamp) of TF's C++ lines when TF starts here."""
    done = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.constant(1) + 1"],
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"), capture_output=True,
                          text=True, timeout=300, check=True)
    return [_digitless(TF_CPP.sub("", line).split("] ", 1)[-1])
            for line in done.stderr.splitlines() if TF_CPP.search(line)]


def _digitless(text):
    """``text`` with every number as N (some TF lines carry per-process figures)."""
    return re.sub(r"\d+", "N", text)


def _assert_quiet(lines):
    for line in lines:
        assert not TF_CPP.search(line), f"TensorFlow C++ log line on the console: {line}"
        assert not NOISE.search(line), f"warning or traceback on the console: {line}"


def test_console_shows_progress_and_the_log_holds_the_detail(portable_run):
    done, spec_path, run_root = portable_run
    data = os.path.dirname(spec_path)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""
    _assert_quiet(lines)

    log_path = lines[0].split()[1]
    assert lines[0].startswith("Log: ") and log_path.startswith(run_root)
    config = PipelineConfig(spec=load_spec(spec_path), run_root=run_root,
                            hparams=hparams.from_dict(PORTABLE_HPARAMS))
    nodes = summary.node_ids(config)
    for node in nodes:
        assert sum(re.search(rf" start  {node}$", line) is not None for line in lines) == 1, node
        assert sum(re.search(rf" done   {node} ", line) is not None for line in lines) == 1, node

    # Key figures, checked against the inputs and the serving folder.
    with open(os.path.join(data, "logs", "span-1", "pairs.csv")) as f:
        n_pairs = sum(1 for _ in csv.reader(f)) - 1
    ingest = next(line for line in lines if " done   LogsExampleGen " in line)
    assert f" {n_pairs} rows, 0 rejected" in ingest
    pushed = os.listdir(os.path.join(run_root, "serving", "ssl4rec"))
    push = next(line for line in lines if " done   Pusher_ssl4rec " in line)
    assert push.endswith(f"pushed version {pushed[0]}")
    assert re.search(r" done   Trainer .* loss \d+\.\d{4} after 20 steps$", done.stdout,
                     re.MULTILINE)
    # The Trainer step trained with its 2 worker processes (--trainer-workers 2).
    model_run = glob.glob(os.path.join(run_root, "pipeline_root", "Trainer", "model_run", "*"))
    assert sorted(os.listdir(os.path.join(model_run[0], workers.LOG_DIR))) == [
        "job.json", "worker-0.log", "worker-1.log"]
    assert "Step times (ML Metadata):" in done.stdout
    assert f"results page: {os.path.join(run_root, 'results', 'index.html')}" in done.stdout

    with open(log_path) as f:
        log = f.read()
    # Whatever C++ lines TensorFlow prints on this machine when it starts (they
    # depend on the CPU and TF_ENABLE_ONEDNN_OPTS; some CPUs print none) reach
    # the log, not the console.
    for line in _tf_startup_lines():
        assert line in _digitless(log), line
    for node in nodes:
        assert (f"node {node} is running." in log and f"node {node} is finished." in log), node
    assert "[console] " + lines[-1] in log


def test_a_failing_step_is_named_with_its_reason_and_the_log(tmp_path):
    data, run_root = str(tmp_path / "data"), str(tmp_path / "run")
    spec_path = synthetic.generate(
        synthetic.SyntheticConfig(n_items=50, n_pairs=200, spans=1, seed=1), data)
    with open(os.path.join(data, "catalog", "items.csv")) as f:
        duplicate = f.read().splitlines()[1]
    with open(os.path.join(data, "catalog", "items.csv"), "a") as f:
        f.write(duplicate + "\n")
    done = _cli(spec_path, run_root, "--data-only")
    lines = done.stdout.splitlines()
    assert done.returncode != 0, done.stdout + done.stderr
    _assert_quiet(lines)
    failed = next(line for line in lines if line.startswith("FAILED"))
    assert failed.startswith("FAILED in step CatalogExampleGen: ")
    assert "appears 2 times" in done.stdout
    log_path = lines[0].split()[1]
    assert lines[-1] == f"Full detail: {log_path}"
    with open(log_path) as f:
        assert "Traceback (most recent call last)" in f.read()
