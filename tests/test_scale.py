"""The million-item benchmark's path (benchmarks/scale.py) on a small catalog.

The same command, generator, CLI and measurements as the million-item run,
on 1,500 items with short training; its Evaluator figure is checked against
NumPy's brute force over the whole catalog. Times are never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import common, scale
from components.evaluate.metrics import recall_at_k
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
from pipeline.report import records
from tests.test_pipeline_e2e import NAME, numpy_ranks
from transforms.spec import load_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HPARAMS = {"train_steps": 40, "steps_per_epoch": 20, "batch_size": 64, "ssl_batch_size": 64,
           "hidden_units": [32, 16], "embedding_dim": 8}


def test_longest_silence_counts_the_start_and_the_end():
    assert common.longest_silence(100.0, 200.0, [110.0, 150.0, 160.0]) == 40.0
    assert common.longest_silence(100.0, 200.0, [110.0, 130.0]) == 70.0    # the end
    assert common.longest_silence(100.0, 200.0, []) == 100.0


def test_step_figures_take_the_samples_inside_each_step():
    mib = 2 ** 20
    windows = {"A": (10.0, 20.0), "B": (20.5, 30.0), "C": (40.0, 40.2), "D": (1.0, 2.0)}
    rss = [(9.0, 900 * mib), (12.0, 100 * mib), (19.0, 300 * mib), (25.0, 200 * mib),
           (35.0, 999 * mib), (36.0, 700 * mib)]
    assert common.step_figures(windows, rss) == {
        "A_wall_s": 10.0, "A_peak_rss_mib": 300, "B_wall_s": 9.5, "B_peak_rss_mib": 200,
        "C_wall_s": 0.2, "C_peak_rss_mib": 700,     # between samples: the last one before
        "D_wall_s": 1.0, "D_peak_rss_mib": 0}       # before the first sample: none


@pytest.mark.slow
def test_the_scale_benchmark_runs_every_step_on_a_small_catalog(tmp_path):
    work = tmp_path / "scale"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "scale.py"), "--items", "1500",
           "--pairs", "15000", "--eval-percent", "10", "--stages", "pipeline",
           "--work", str(work), "--hparams", json.dumps(HPARAMS), "--results", str(tmp_path),
           # The million-item path of FeatureCorrelation: a hash sample of the catalog.
           "--pipeline-arg=--correlation-sample-items=1000"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-5000:] + done.stdout[-2000:]
    values = json.load(open(tmp_path / "scale.json"))
    assert json.load(open(work / "pipeline.json")).items() <= values.items()
    spec_path = str(work / "data" / "dataset.yaml")
    run_root = str(work / "run")
    steps = [c.id for c in create_pipeline(PipelineConfig(spec=load_spec(spec_path),
                                                          run_root=run_root)).components]
    assert values["steps"] == len(steps) == 18
    for step in steps:
        assert values[f"{step}_wall_s"] >= 0 and values[f"{step}_peak_rss_mib"] > 0, step
    assert values["items"] == 1500 and values["pairs"] == 15000
    assert values["peak_rss_mib"] >= max(values[f"{s}_peak_rss_mib"] for s in steps)
    # Exact over the whole catalog: TFMA's Recall@50 is NumPy's brute force.
    ranks = numpy_ranks(records.open_store(os.path.join(run_root, "metadata.sqlite")))
    assert values["evaluator_examples"] == len(ranks)
    assert values["evaluator_recall_at_50"] == pytest.approx(recall_at_k(ranks, 50),
                                                             abs=1.5 / len(ranks) + 1e-4)
    assert NAME == scale.PIPELINE_NAME
    store = records.open_store(os.path.join(run_root, "metadata.sqlite"))
    correlation = records.latest(store, NAME, "FeatureCorrelation")
    assert correlation.properties["correlation"]["sample_fraction"] == pytest.approx(1000 / 1500)
