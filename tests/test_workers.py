"""Training workers' cluster settings, the chief rule and the workers setting (no training)."""

import json

import pytest

from components.trainer import hparams, progress, workers
from pipeline import options
from transforms.spec import SpecError


def test_each_worker_gets_the_same_cluster_and_its_own_index():
    configs = [json.loads(c) for c in workers.tf_configs(3)]
    addresses = configs[0]["cluster"]["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert all(c["cluster"] == configs[0]["cluster"] for c in configs)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]


@pytest.mark.parametrize("config, chief, place", [
    (None, True, ("worker", 0, 1)),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}},
     True, ("worker", 0, 2)),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}},
     False, ("worker", 1, 2)),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     False, ("worker", 0, 2)),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     True, ("chief", 0, 2)),
])
def test_the_chief_is_the_chief_task_else_worker_0(monkeypatch, config, chief, place):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert workers.is_chief() is chief
    assert workers.task() == place
    assert workers.in_cluster() is (config is not None)


def test_a_job_survives_its_json_file(tmp_path):
    job = workers.Job(custom_config={"hparams": {"workers": 2}}, transform_dir="t",
                      train_dir="tr", catalog_dir="c", correlation_uri=None, log_dir="l",
                      export_dir="e")
    assert workers.Job.read(job.write(str(tmp_path / "job.json"))) == job


def test_workers_imply_the_multi_worker_strategy_and_global_batches():
    hp = hparams.from_dict({"workers": 2, "batch_size": 64, "ssl_batch_size": 32})
    assert hp.strategy == "multi_worker_mirrored"
    assert hparams.from_dict({}).workers == 1 and hparams.from_dict({}).strategy == "default"
    with pytest.raises(ValueError, match="needs strategy 'multi_worker_mirrored'"):
        hparams.from_dict({"workers": 2, "strategy": "mirrored"})
    with pytest.raises(ValueError, match=r"batch_size \(63\).*divide by workers \(2\)"):
        hparams.from_dict({"workers": 2, "batch_size": 63})
    with pytest.raises(ValueError, match="outside the allowed range"):
        hparams.from_dict({"workers": 0})


def test_trainer_workers_flag_and_hparams_must_agree():
    hp, _ = options.trainer_settings({}, None, workers=2)
    assert hp.workers == 2
    with pytest.raises(SpecError, match="--hparams sets workers 3 but --trainer-workers says 2"):
        options.trainer_settings({"workers": 3}, None, workers=2)


def test_a_worker_progress_record_is_found_after_its_log_prefix():
    line = ("I1204 09:48:01.560061 140090684799872 progress.py:37] "
            "Trainer progress: step 20 of 60, loss 4.2236\n")
    assert progress.find(line) == "step 20 of 60, loss 4.2236"
    assert progress.find("I1204 epoch 2/3 done") is None


@pytest.mark.parametrize("sizes", [[40], [10, 10, 10, 10], [33, 0, 7]])
def test_each_worker_reads_its_own_equal_shard_of_the_training_pairs(tmp_path, sizes):
    import tensorflow as tf

    from components.trainer import data

    records = [b"r%02d" % i for i in range(40)]
    start = 0
    for f, size in enumerate(sizes):        # files of any size, one of them empty
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{f}.gz"), "GZIP") as writer:
            for r in records[start:start + size]:
                writer.write(r)
        start += size

    def epoch(shard):
        stream = data.main_stream(str(tmp_path), lambda x: x, batch_size=1, seed=0,
                                  shard=shard)
        seen = [b.numpy()[0] for b in stream.take(200)]      # the stream repeats
        return set(seen)

    first, second = epoch((2, 0)), epoch((2, 1))
    assert not first & second                        # no pair read by both workers
    assert first | second == set(records)            # every pair read by one
    assert len(first) == len(second) == 20           # equal shards
    assert epoch((1, 0)) == set(records)


def test_a_child_process_ends_when_the_process_that_started_it_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    # The parent is killed at once, possibly before the child starts watching it.
    child = ("import sys, time; from components import worker_exit; "
             "worker_exit.exit_with_parent(int(sys.argv[1]), poll_s=0.05); time.sleep(600)")
    parent = (f"import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
              f"{child!r}, str(os.getpid())]); print(p.pid, flush=True); time.sleep(600)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            cwd=root)
    pid = int(proc.stdout.readline())
    assert psutil.pid_exists(pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60        # only stops a hang
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)
