"""Scale-out, run for real on loopback: Beam's portable runner and multi-worker training.

The data are the end-to-end test's (synthetic, 1,000 items, 3,000 pairs).
The data half runs once on the DirectRunner; the portable runner's whole run
(``tests/conftest.py: portable_run``, also the console test's) must write the
same data-half artefacts. Training runs in 2 worker processes
(MultiWorkerMirroredStrategy over loopback, started by the Trainer's own
code) and its Recall@50, computed here with NumPy, must fall within the
spread of single-process runs over seeds. A worker that dies or fails ends
the step with its error; nothing waits for it.
"""

import contextlib
import json
import os
import re
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from benchmarks import scaleout
from components.trainer import hparams, run, workers
from pipeline import worker_pools
from pipeline.datasets import synthetic
from tests.conftest import SCALEOUT_DATA
from transforms import features
from transforms.spec import load_spec

pytestmark = pytest.mark.slow

HPARAMS = {"variant": "cfm", "train_steps": 60, "steps_per_epoch": 20, "batch_size": 64,
           "ssl_batch_size": 64, "hidden_units": [32, 16], "embedding_dim": 8,
           "share_towers": False, "learning_rate": 0.1}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(spec path, run root of the DirectRunner's data half)."""
    root = tmp_path_factory.mktemp("scaleout")
    spec_path = synthetic.generate(synthetic.SyntheticConfig(**SCALEOUT_DATA),
                                   str(root / "data"))
    direct = str(root / "direct")
    scaleout.data_half(spec_path, direct, "in-memory")
    return spec_path, direct


def test_the_portable_runner_writes_what_the_direct_runner_writes(data, portable_run):
    done, _, portable = portable_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The steps ran in SDK worker processes started by the pool, which is gone.
    logs = os.listdir(os.path.join(portable, "logs"))
    with open(os.path.join(portable, "logs", next(
            f for f in logs if f.endswith("-beam-workers.log")))) as f:
        pool_log = f.read()
    # At least one SDK worker per Beam step: 2 ExampleGens, 2 StatisticsGens,
    # JoinExamples, Transform, FeatureCorrelation, IndexBuilder, Evaluator.
    assert pool_log.count("Starting worker with command") >= 9
    port = re.search(worker_pools.POOL_STARTED + r" localhost:(\d+)", pool_log).group(1)
    alive = [p for p in psutil.process_iter(["cmdline"])
             if f"--service_port={port}" in (p.info["cmdline"] or [])]
    assert alive == [], "the worker pool outlived the run"
    a, b = scaleout.artefacts(data[1]), scaleout.artefacts(portable)
    assert len(a["rows_train"]) + len(a["rows_eval"]) == 3000 and len(a["rows_catalog"]) == 1000
    assert scaleout.differences(a, b) == []


def _job(data, out, **overrides):
    spec_path, direct = data
    hp = hparams.from_dict({**HPARAMS, **overrides})
    return scaleout.job(spec_path, direct, str(out), hp)


def _recall(data, job):
    spec_path, direct = data
    dirs = scaleout.outputs(direct)
    return scaleout.recall_at_50(job.export_dir, dirs["eval"], dirs[features.CATALOG_SPLIT],
                                 load_spec(spec_path).item_id)


def test_two_workers_train_one_model_as_good_as_one_worker(data, tmp_path):
    single = []
    try:
        for seed in SEEDS:
            job = _job(data, tmp_path / f"one-{seed}", seed=seed)
            run.train_and_export(job)
            single.append(_recall(data, job))
    finally:
        tf_config.disable_op_determinism()    # run.train enables it for the process
    job = _job(data, tmp_path / "two", seed=0, workers=2)
    workers.run_local(2, job)
    two = _recall(data, job)

    # One export (the chief's), TensorBoard logs from the chief only, one log per worker.
    assert sorted(os.listdir(tmp_path / "two")) == ["model", "model_run"]
    assert tf.io.gfile.exists(os.path.join(job.export_dir, "saved_model.pb"))
    run_dir = job.log_dir
    assert sorted(os.listdir(run_dir)) == ["train", workers.LOG_DIR]
    assert sorted(os.listdir(os.path.join(run_dir, workers.LOG_DIR))) == [
        "job.json", "worker-0.log", "worker-1.log"]
    with open(os.path.join(run_dir, workers.LOG_DIR, "worker-1.log")) as f:
        log1 = f.read()
    assert "Trainer progress: step 60 of 60" in log1     # worker 1 trained every step too
    # Within the single-process seed spread, widened by one standard deviation.
    spread = np.std(single, ddof=1)
    assert min(single) - spread <= two <= max(single) + spread, (two, single)
    assert max(single) > 0.2      # the models learned something (chance: 50/1000)


def test_a_worker_killed_mid_run_fails_the_step_with_its_error(data, tmp_path):
    job = _job(data, tmp_path / "killed", train_steps=100000, steps_per_epoch=50, workers=2)
    log1 = os.path.join(job.log_dir, workers.LOG_DIR, "worker-1.log")
    outcome = {}

    def train():
        try:
            workers.run_local(2, job)
        except workers.WorkerFailedError as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600      # only stops a hang
    while "Trainer progress" not in _read(log1):
        assert time.monotonic() < deadline and thread.is_alive(), _read(log1)[-3000:]
        time.sleep(0.1)
    _workers(job)[1].send_signal(signal.SIGKILL)
    thread.join(timeout=300)                # only stops a hang
    assert not thread.is_alive(), "the step waited for a dead worker"
    assert outcome["error"].startswith("training worker 1 of 2 was killed by SIGKILL")
    assert log1 in outcome["error"]
    assert not tf.io.gfile.exists(os.path.join(job.export_dir, "saved_model.pb"))
    assert _workers(job) == {}           # worker 0 was stopped too


def test_a_failing_worker_fails_the_step_with_its_own_error(data, tmp_path):
    job = _job(data, tmp_path / "bad", workers=2)
    job = workers.Job(**{**job.__dict__, "train_dir": str(tmp_path / "missing")})
    with pytest.raises(workers.WorkerFailedError) as raised:
        workers.run_local(2, job)
    message = str(raised.value)
    assert "exited with code 1" in message
    assert f"no examples in {tmp_path / 'missing'}" in message


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _workers(job):
    """{TF_CONFIG task index: process} of ``job``'s live workers (found by their job file)."""
    job_file = os.path.join(job.log_dir, workers.LOG_DIR, "job.json")
    found = {}
    for proc in psutil.process_iter(["cmdline", "status"]):
        if job_file in (proc.info["cmdline"] or []) and proc.info["status"] != "zombie":
            with contextlib.suppress(psutil.Error):
                found[json.loads(proc.environ()["TF_CONFIG"])["task"]["index"]] = proc
    return found
