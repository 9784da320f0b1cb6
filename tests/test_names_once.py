"""Every artefact key, summary key, slice label and metric name is written once.

A lint over the product's and the benchmarks' sources (not the tests, which
spell names out as an independent check): each name below may appear as a
string literal at most once, in its definition; everywhere else uses the
constant or the function that builds it.
"""

import ast
import os

import pytest

from components.evaluate import config as eval_config
from components.evaluate import report as eval_report
from components.index import executor as index_executor
from components.ingest import executor as ingest_executor
from components.join import executor as join_executor
from transforms import features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("components", "pipeline", "serving", "transforms", "kubeflow", "benchmarks")

NAMES = {
    "artefact key": [index_executor.SCANN_MODEL_KEY, index_executor.BRUTE_FORCE_MODEL_KEY],
    "summary key": [ingest_executor.ROWS_OK, join_executor.REJECTED_UNKNOWN],
    "slice label": [eval_report.OVERALL, *map(eval_report.bucket_label, features.BUCKETS)],
    "gate metric": [eval_config.GATE_METRIC, f"{eval_report.OVERALL}_{eval_config.GATE_METRIC}"],
    "URL test": ["://"],
}


def _literals():
    """Every string constant (f-string parts included) of every source file: (text, where)."""
    found = []
    for folder in FOLDERS:
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(base, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str):
                        found.append((node.value, f"{os.path.relpath(path, ROOT)}:{node.lineno}"))
    return found


LITERALS = _literals()


@pytest.mark.parametrize("kind,name", [(k, n) for k, names in NAMES.items() for n in names])
def test_name_is_written_once(kind, name):
    places = [where for text, where in LITERALS if text == name]
    assert len(places) <= 1, f"{kind} {name!r} is written in {places}; use its constant"


def test_the_metric_ks_are_defined_once():
    places = []
    for folder in FOLDERS:
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(base, name), encoding="utf-8") as f:
                        tree = ast.parse(f.read())
                    places += [f"{base}/{name}" for node in ast.walk(tree)
                               if isinstance(node, ast.Assign)
                               and any(getattr(t, "id", None) == "KS" for t in node.targets)]
    assert len(places) == 1, places
