"""The quiet console: file-descriptor routing, progress lines, TensorBoard curves."""

import logging
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from pipeline.report import curves, progress

_CHILD = textwrap.dedent("""\
    import os, subprocess, sys, warnings
    from pipeline.report import console
    with console.Console(sys.argv[1], verbose=sys.argv[2] == "1") as out:
        out.say("progress line")
        print("python stdout")
        warnings.warn("a python warning")
        os.write(2, b"raw fd 2 line\\n")
        subprocess.run([sys.executable, "-c",
                        "import sys; sys.stderr.write('worker stderr\\\\n')"], check=True)
    print("after the block")
    """)


def _child(tmp_path, verbose):
    log = str(tmp_path / "logs" / "run.log")
    done = subprocess.run([sys.executable, "-c", _CHILD, log, "1" if verbose else "0"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert done.returncode == 0, done.stderr
    with open(log) as f:
        return done.stdout, done.stderr, f.read()


def test_console_routes_everything_but_progress_to_the_log(tmp_path):
    out, err, log = _child(tmp_path, verbose=False)
    assert out == "progress line\nafter the block\n"
    assert err == ""
    for line in ("python stdout", "a python warning", "raw fd 2 line", "worker stderr",
                 "[console] progress line"):
        assert line in log, line


def test_verbose_streams_the_log(tmp_path):
    out, err, log = _child(tmp_path, verbose=True)
    for line in ("progress line", "python stdout", "a python warning", "raw fd 2 line",
                 "worker stderr"):
        assert line in out and line in log, line
    assert out.count("progress line") == 1 and "after the block" in out and err == ""


def _record(message, *args):
    return logging.LogRecord("absl", logging.INFO, __file__, 1, message, args, None)


@pytest.mark.parametrize("start,end", [("node %s is running.", "node %s is finished."),
                                       ("Component %s is running.",
                                        "Component %s is finished.")])
def test_step_watcher_lines_for_both_runners(start, end):
    said = []
    watcher = progress.StepWatcher(said.append, lambda n: (1.25, "COMPLETE", f"{n} figure"),
                                   total=2)
    for message, node in ((start, "Transform"), ("unrelated %s", "Trainer"),
                          (end, "Transform"), (start, "Trainer")):
        watcher.emit(_record(message, node))
    assert len(said) == 3
    assert said[0].endswith("start  Transform") and said[2].endswith("start  Trainer")
    assert said[1].split()[2:] == ["Transform", "1.2", "s", "[1/2]", "COMPLETE", "Transform",
                                   "figure"]
    assert watcher.unfinished == ["Trainer"]


def test_curves_read_back_what_keras_wrote(tmp_path):
    run = str(tmp_path / "model_run")
    losses, accuracies = [3.0, 2.5, 2.25], [0.1, 0.2, 0.4]
    writer = tf.summary.create_file_writer(os.path.join(run, "train"))
    with writer.as_default():
        for step, (loss, acc) in enumerate(zip(losses, accuracies)):
            tf.summary.scalar("epoch_loss", loss, step=step)
            tf.summary.scalar("epoch_ssl_accuracy", acc, step=step)
    writer.close()
    got = curves.scalars(run)
    assert [v for _, v in got["epoch_loss"]] == pytest.approx(losses)
    assert [s for s, _ in got["epoch_ssl_accuracy"]] == [0, 1, 2]
    png = str(tmp_path / "curves.png")
    assert curves.plot(run, "t", png)
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 100
    assert not curves.plot(str(tmp_path / "empty"), "t", str(tmp_path / "none.png"))


def test_reason_finds_the_error_behind_a_beam_worker_failure():
    from pipeline.job import reason
    from transforms.tables import InputError

    wrapped = RuntimeError(
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
        "    raise rows.InputError(\ntransforms.tables.InputError: catalog item id 'i0' "
        "appears 2 times (a.csv:2, a.csv:9). [while running 'InputToRecord[catalog]/Dedupe']")
    assert reason(wrapped) == ("InputError", "catalog item id 'i0' appears 2 times "
                                             "(a.csv:2, a.csv:9).")
    assert reason(InputError("folder x does not exist\nmore")) == (
        "InputError", "folder x does not exist")


def test_watching_hears_absl_and_restores_its_verbosity():
    from absl import logging as absl_logging

    said = []
    before = absl_logging.get_verbosity()
    watcher = progress.StepWatcher(said.append, lambda n: (None, "-", ""), total=1)
    with progress.watching(watcher):
        absl_logging.info("Component %s is running.", "Pusher")
    absl_logging.info("Component %s is finished.", "Pusher")
    assert len(said) == 1 and said[0].endswith("start  Pusher")
    assert absl_logging.get_verbosity() == before


def test_a_long_step_gets_heartbeat_lines_with_the_trainers_progress():
    from components.trainer import progress as trainer_progress

    said = []
    watcher = progress.StepWatcher(said.append, lambda n: (1.0, "COMPLETE", ""), total=1,
                                   heartbeat_s=0.2)
    with progress.watching(watcher):
        assert said == []                             # nothing runs: no heartbeat
        watcher.emit(_record("node %s is running.", "Trainer"))
        reporter = trainer_progress.Reporter(10, every_s=3600.0)
        assert not reporter.due(5) and reporter.due(10)
        reporter.report(5, 1.25)                      # through absl, as run_fn does
        deadline = time.monotonic() + 30
        while not any("step 5 of 10, loss 1.2500" in line for line in said):
            assert time.monotonic() < deadline, said
            time.sleep(0.05)
        beat = next(line for line in said if "step 5 of 10" in line)
        assert re.search(r" \.\.\.    Trainer +running for \d+ s: step 5 of 10, loss 1\.2500$",
                         beat), beat
        watcher.emit(_record("node %s is finished.", "Trainer"))
        after = len(said)
        time.sleep(1.0)                               # nothing runs any more
        assert len(said) == after and said[-1].split()[1] == "done", said


def test_progress_records_round_trip():
    from components.trainer import progress as trainer_progress

    assert trainer_progress.parse("Trainer progress: step 7 of 9, loss 0.5000") == (
        "step 7 of 9, loss 0.5000")
    assert trainer_progress.parse("node Trainer is running.") is None
