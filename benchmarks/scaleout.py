"""Scale-out, run for real on loopback: 2 training workers vs 1; portable Beam vs direct.

1. Writes a synthetic dataset and runs the data half twice through the CLI:
   ``--beam-preset in-memory`` (the DirectRunner) and ``--beam-preset
   portable-local`` (PortableRunner, external SDK worker processes); times
   both and compares what they wrote (rows per split, vocabularies,
   correlation matrices).
2. Trains the same variant on that data with 1 worker and with 2 worker
   processes (``hparams.workers``, MultiWorkerMirroredStrategy on loopback),
   ``--seeds`` seeds each, alternating; reports examples/s after the first
   epoch and the exported model's Recall@50 on the eval split (brute force
   over the catalog, own item left out).

Writes ``benchmarks/results/scaleout.{json,md}``. Run from the repository
root: ``python benchmarks/scaleout.py``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from components import tfrecords  # noqa: E402
from components.trainer import component as trainer_component  # noqa: E402
from components.trainer import hparams as hparams_lib  # noqa: E402
from components.trainer import workers  # noqa: E402
from transforms import features  # noqa: E402
from transforms.spec import load_spec  # noqa: E402

NAME = "scaleout"
PIPELINE = "ssl4rec"


def data_half(spec_path: str, run_root: str, preset: str) -> float:
    """Runs the data half with ``--beam-preset preset``; its wall seconds."""
    cmd = [sys.executable, "-m", "pipeline", "run", "--dataset", spec_path, "--run-root",
           run_root, "--runner", "local", "--data-only", "--beam-preset", preset]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0")
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def outputs(run_root: str) -> dict[str, str]:
    """Folders of the data half's outputs: transform, train, eval, catalog, correlation."""
    from pipeline.report import records

    store = records.open_store(os.path.join(run_root, "metadata.sqlite"))
    join = records.latest(store, PIPELINE, "JoinExamples").outputs["examples"][0]
    return {"transform": records.latest(store, PIPELINE, "Transform").outputs[
                "transform_graph"][0],
            "correlation": records.latest(store, PIPELINE, "FeatureCorrelation").outputs[
                "correlation"][0],
            **{split: os.path.join(join, f"Split-{split}")
               for split in ("train", "eval", features.CATALOG_SPLIT)}}


def _canonical(serialized: bytes) -> str:
    """A tf.Example as sorted JSON (proto bytes may order map entries differently)."""
    row = tfrecords.example_to_dict(serialized)
    return json.dumps({k: [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]
                       for k, values in sorted(row.items())})


def artefacts(run_root: str) -> dict[str, Any]:
    """What the data half wrote, comparable across runners.

    Rows per split (the joined rows, parsed and sorted), every vocabulary file's lines and
    the correlation matrices.
    """
    from components.correlation import report as correlation_report

    dirs = outputs(run_root)
    out: dict[str, Any] = {}
    for split in ("train", "eval", features.CATALOG_SPLIT):
        out[f"rows_{split}"] = sorted(_canonical(r.numpy())
                                      for r in tfrecords.split_dataset(dirs[split]))
    assets = os.path.join(dirs["transform"], "transform_fn", "assets")
    for path in sorted(glob.glob(os.path.join(assets, "*"))):
        with open(path, "rb") as f:
            out[f"vocabulary_{os.path.basename(path)}"] = f.read().splitlines()
    doc = correlation_report.read(dirs["correlation"])
    out["correlation_features"] = doc["features"]
    for key in ("mi", "nmi", "ami"):
        out[f"correlation_{key}"] = np.asarray(doc[key])
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ (matrices up to 1e-9)."""
    diff = sorted(set(a) ^ set(b))
    for key in sorted(set(a) & set(b)):
        if isinstance(a[key], np.ndarray):
            if a[key].shape != b[key].shape or not np.allclose(a[key], b[key], atol=1e-9):
                diff.append(key)
        elif a[key] != b[key]:
            diff.append(key)
    return diff


def job(spec_path: str, run_root: str, out: str, hp: hparams_lib.HParams) -> workers.Job:
    """A Trainer job on ``run_root``'s data half, writing under ``out``."""
    dirs = outputs(run_root)
    return workers.Job(
        custom_config=trainer_component.custom_config(load_spec(spec_path), hp),
        transform_dir=dirs["transform"], train_dir=dirs["train"],
        catalog_dir=dirs[features.CATALOG_SPLIT], correlation_uri=dirs["correlation"],
        log_dir=os.path.join(out, "model_run"), export_dir=os.path.join(out, "model"))


def train(train_job: workers.Job, n_workers: int) -> float:
    """Trains ``train_job`` with ``n_workers`` worker processes (1 too, so both
    pay the same start-up); its examples/s after the first epoch."""
    from components.trainer import run

    workers.run_local(n_workers, train_job)
    with open(os.path.join(train_job.log_dir, workers.LOG_DIR, "worker-0.log")) as f:
        found = re.findall(re.escape(run.THROUGHPUT_RECORD) + r" ([\d.]+)", f.read())
    return float(found[-1])


def recall_at_50(export_dir: str, eval_dir: str, catalog_dir: str, item_id: str) -> float:
    """Recall@50 of an exported model on the eval split: brute force over the
    catalog with NumPy, each query's own item left out, ranked as the
    Evaluator ranks (ties pessimistic)."""
    import tensorflow as tf

    from components.evaluate.metrics import positive_ranks, recall_at_k
    from components.index import search
    from serving import signatures as sig

    id_key, query_id_key = features.item_key(item_id), features.query_key(item_id)
    model = tf.saved_model.load(export_dir)
    items = [r.numpy() for r in tfrecords.split_dataset(catalog_dir)]
    ids = [tfrecords.example_to_dict(r, [id_key])[id_key][0] for r in items]
    column = {item: i for i, item in enumerate(ids)}
    rows = [r.numpy() for r in tfrecords.split_dataset(eval_dir)]
    parsed = [tfrecords.example_to_dict(r, [id_key, query_id_key]) for r in rows]
    positive = np.array([column[p[id_key][0]] for p in parsed])
    own = np.array([column[p[query_id_key][0]] for p in parsed])
    item_vecs = model.signatures[sig.ITEM_EMBEDDING_EXAMPLES](
        examples=tf.constant(items))[sig.EMBEDDING].numpy()
    queries = model.signatures[sig.QUERY_EMBEDDING_EXAMPLES](
        examples=tf.constant(rows))[sig.EMBEDDING].numpy()
    scores = search.normalize(queries) @ search.normalize(item_vecs).T
    scores[np.arange(len(own)), own] = -np.inf
    return recall_at_k(positive_ranks(scores, positive), 50)


HPARAMS = {"variant": "cfm", "train_steps": 300, "steps_per_epoch": 50, "batch_size": 64,
           "ssl_batch_size": 64, "hidden_units": [32, 16], "embedding_dim": 16,
           "share_towers": False, "learning_rate": 0.1}


def main(argv: list[str]) -> int:
    """Runs the benchmark; writes ``benchmarks/results/scaleout.{json,md}``."""
    from benchmarks.common import write_results
    from pipeline import worker_pools
    from pipeline.datasets import synthetic

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="scaleout-")
    spec_path = synthetic.generate(synthetic.SyntheticConfig(
        n_items=args.items, n_pairs=args.pairs, spans=1, seed=0), os.path.join(work, "data"))
    result: dict[str, Any] = {"items": args.items, "pairs": args.pairs}
    direct, portable = os.path.join(work, "direct"), os.path.join(work, "portable")
    for root in (direct, portable):
        shutil.rmtree(root, ignore_errors=True)
    result["direct_data_half_wall_s"] = round(data_half(spec_path, direct, "in-memory"), 1)
    result["portable_data_half_wall_s"] = round(
        data_half(spec_path, portable, worker_pools.PORTABLE_LOCAL), 1)
    diff = differences(artefacts(direct), artefacts(portable))
    result["portable_artefacts_equal"] = not diff
    result["portable_artefacts_differing"] = ",".join(diff)

    item_id = load_spec(spec_path).item_id
    dirs = outputs(direct)
    rates: dict[int, list[float]] = {1: [], 2: []}
    recalls: dict[int, list[float]] = {1: [], 2: []}
    for seed in range(args.seeds):
        for n in (1, 2):                          # alternating: a slow spell hits both
            hp = hparams_lib.from_dict({**HPARAMS, "seed": seed, "workers": n})
            out = os.path.join(work, f"train-{n}-{seed}")
            shutil.rmtree(out, ignore_errors=True)
            train_job = job(spec_path, direct, out, hp)
            rates[n].append(train(train_job, n))
            recalls[n].append(recall_at_50(train_job.export_dir, dirs["eval"],
                                           dirs[features.CATALOG_SPLIT], item_id))
    for n, name in ((1, "one"), (2, "two")):
        result[f"{name}_worker_examples_per_s"] = round(float(np.mean(rates[n])), 1)
        result[f"{name}_worker_recall_at_50"] = round(float(np.mean(recalls[n])), 4)
        result[f"{name}_worker_recall_at_50_std"] = round(float(np.std(recalls[n], ddof=1)), 4)
        result[f"{name}_worker_recall_at_50_by_seed"] = ",".join(f"{r:.4f}" for r in recalls[n])
    result["two_worker_examples_per_s_ratio_vs_one"] = round(
        result["two_worker_examples_per_s"] / result["one_worker_examples_per_s"], 3)
    result["train_hparams"] = json.dumps(HPARAMS)
    write_results(NAME, result, _markdown)
    print(json.dumps(result, indent=1))
    return 0


def _training_table(r: dict[str, Any]) -> str:
    rows = ["| workers | examples/s after epoch 1 | Recall@50 (mean ± std over seeds) | by seed |",
            "|---|---|---|---|"]
    for n, name in ((1, "one"), (2, "two")):
        rows.append(f"| {n} | {r[f'{name}_worker_examples_per_s']} "
                    f"| {r[f'{name}_worker_recall_at_50']} "
                    f"± {r[f'{name}_worker_recall_at_50_std']} "
                    f"| {r[f'{name}_worker_recall_at_50_by_seed']} |")
    return "\n".join(rows)


def _markdown(r: dict[str, Any]) -> str:
    return f"""# Scale-out on loopback

`{r['command']}`; synthetic data, {r['items']} items, {r['pairs']} pairs;
{r['machine_cpus']} cores. Both paths really ran here; only Flink, Spark and
Dataflow themselves (their job servers) did not.

## Beam: portable runner with external SDK workers vs the DirectRunner

| data half | wall s |
|---|---|
| DirectRunner, in memory | {r['direct_data_half_wall_s']} |
| PortableRunner, embedded job service, EXTERNAL worker pool | {r['portable_data_half_wall_s']} |

Artefacts equal (joined rows of every split, every vocabulary, the MI / NMI /
AMI matrices): **{r['portable_artefacts_equal']}**. The portable runner
starts one SDK worker process per Beam step (each imports TensorFlow) and
moves every element over the Fn API's gRPC data plane, which is its extra
time at this size.

## Training: 2 worker processes (MultiWorkerMirroredStrategy) vs 1

Same global batch, same steps (`{r['train_hparams']}`), seeds alternating.

{_training_table(r)}

Two workers on a {r['machine_cpus']}-core machine split each global batch in
two; every step they all-gather each other's positives, extra negatives and
second views (so each softmax is over the global batch's candidates, as in
one process), send those gradients back, and all-reduce the weight
gradients, all over loopback gRPC. At this model size (a few milliseconds of
compute per step) the collectives cost far more than the halved batch saves
(ratio {r['two_worker_examples_per_s_ratio_vs_one']}): multi-worker training
pays off with workers on separate machines and steps that take longer than
their communication. The point of the run is that the cluster path works
and learns the same model: its Recall@50 is within the single-process seed
spread.
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
