"""FeatureCorrelation wall time and peak memory at several catalog sizes.

For each size, writes a synthetic catalog split in the joined layout, then
runs the component's executor in a child process with DirectRunner
multi-processing and samples the process tree's RSS. Growth is reported as
ratios against the smallest size, measured in the same run. Run from the
repository root: ``python benchmarks/correlation.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import run_measured, write_results  # noqa: E402
from components import tfrecords  # noqa: E402
from pipeline.config import LOCAL_BEAM_ARGS  # noqa: E402
from pipeline.datasets import synthetic  # noqa: E402
from transforms import features  # noqa: E402

SPEC_FEATURES = ["category", "subcategory", "brand", "tags", "price"]


def _write_catalog(n_items: int, folder: str) -> None:
    config = synthetic.SyntheticConfig(n_items=n_items, n_pairs=1, seed=0)
    items = synthetic.catalog(config, np.random.default_rng(0))
    split = features.split_dir(folder, features.CATALOG_SPLIT)
    os.makedirs(split, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    columns = {c: items[c].to_numpy() for c in ["item_id", *SPEC_FEATURES]}
    with tf.io.TFRecordWriter(os.path.join(split, "data.gz"), options) as writer:
        for k in range(n_items):
            row = {features.item_key(c): [v.encode() for v in str(columns[c][k]).split("|") if v]
                   for c in columns}
            row[features.ITEM_TRAIN_COUNT] = [1]
            writer.write(tfrecords.dict_to_example(row))


def _child(examples_uri: str, out_uri: str) -> None:
    """Runs the executor once (in the measured child process)."""
    from tfx.types import standard_artifacts

    from components.correlation import executor
    from components.correlation.component import FeatureCorrelations
    from transforms.spec import SPEC_PARAMETER, parse_spec, spec_to_json

    spec = parse_spec({"name": "bench", "catalog": {
        "path": "c", "id": "item_id", "features": [
            {"name": f, "multivalued": f == "tags"} for f in SPEC_FEATURES]},
        "logs": {"path": "l", "query_item": "seed_item_id", "item": "item_id"}}, "/")
    examples = standard_artifacts.Examples()
    examples.uri = examples_uri
    examples.split_names = '["catalog"]'
    out = FeatureCorrelations()
    out.uri = out_uri
    executor.Executor(executor.Executor.Context(beam_pipeline_args=list(LOCAL_BEAM_ARGS))).Do(
        {"examples": [examples]}, {"correlation": [out]},
        {SPEC_PARAMETER: spec_to_json(spec), "weighting": "items",
         "max_values": 10_000, "measure": "ami"})


def _accuracy() -> dict[str, float]:
    """Error of the exact AMI and of permutation-null estimates vs scikit-learn."""
    from sklearn.metrics import adjusted_mutual_info_score, mutual_info_score
    from sklearn.metrics.cluster import entropy

    from components.correlation import estimator

    rng = np.random.default_rng(0)
    n = 2000
    a = rng.integers(0, 200, n)
    cases = {"dependent": (a, np.where(rng.random(n) < 0.25, a, rng.integers(0, 200, n))),
             "independent": (rng.integers(0, n // 2, n), rng.integers(0, n // 2, n))}
    out: dict[str, float] = {}
    for name, (x, y) in cases.items():
        oracle = adjusted_mutual_info_score(x, y)
        hist = [{}, {}]
        for side, values in zip(hist, (x, y)):
            for c in np.unique(values, return_counts=True)[1]:
                key = (float(c), float(c), float(c), 0.0)
                side[key] = side.get(key, 0) + 1
        mi, h_x, h_y = mutual_info_score(x, y), entropy(x), entropy(y)
        exact = estimator.adjusted(mi, estimator.expected_mutual_information(
            hist[0], hist[1], n, n), h_x, h_y)
        out[f"accuracy_{name}_ami_exact_abs_error"] = abs(exact - oracle)
        out[f"accuracy_{name}_plug_in_nmi"] = mi / max(h_x, h_y)
        for k in (1, 10):
            errors = []
            for _ in range(20):
                null = np.mean([mutual_info_score(x, rng.permutation(y)) for _ in range(k)])
                errors.append(abs(estimator.adjusted(mi, null, h_x, h_y) - oracle))
            out[f"accuracy_{name}_permutation_{k}_mean_abs_error"] = float(np.mean(errors))
    return {k: float(f"{v:.2g}") for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="bench-corr-")
    values: dict[str, object] = {}
    try:
        for n in sizes:
            data = os.path.join(work, f"catalog-{n}")
            _write_catalog(n, data)
            out = os.path.join(work, f"out-{n}")
            wall, peak = run_measured(
                [sys.executable, __file__, "--child", data, out],
                dict(os.environ, TF_USE_LEGACY_KERAS="1"), os.path.join(work, f"{n}.log"))
            values[f"items_{n}_wall_s"] = round(wall, 1)
            values[f"items_{n}_peak_rss_mib"] = round(peak)
            values[f"items_{n}_items_per_s"] = round(n / wall)
            with open(os.path.join(out, "correlation.json")) as f:
                doc = json.load(f)
            values[f"items_{n}_group_subcategory"] = ",".join(doc["groups"]["subcategory"])
            values[f"items_{n}_measure"] = doc["measure"]
            values[f"items_{n}_matrices_s"] = _matrices_seconds(out)
        base = sizes[0]
        for n in sizes[1:]:
            values[f"ratio_wall_{n}_vs_{base}"] = round(
                values[f"items_{n}_wall_s"] / values[f"items_{base}_wall_s"], 2)
            values[f"ratio_peak_rss_{n}_vs_{base}"] = round(
                values[f"items_{n}_peak_rss_mib"] / values[f"items_{base}_peak_rss_mib"], 2)
            values[f"ratio_items_{n}_vs_{base}"] = n / base
    finally:
        shutil.rmtree(work, ignore_errors=True)
    values.update(_accuracy())
    write_results("correlation", values, lambda v: _markdown(v, sizes))


def _matrices_seconds(out: str) -> float:
    """Seconds the executor spent on the MI, EMI, NMI and AMI matrices."""
    with open(os.path.join(out, "correlation.json")) as f:
        return round(float(json.load(f)["timing"]["matrices_s"]), 2)


def _markdown(values: dict[str, object], sizes: list[int]) -> str:
    lines = ["# FeatureCorrelation: wall time and peak memory", "",
             f"Command: `{values['command']}`; {values['machine_cpus']} CPUs. Synthetic catalog "
             "(6 features incl. id, one multi-valued), each item counted once, DirectRunner "
             "multi-processing; peak memory = summed RSS of the executor process and its "
             "Beam workers.", "",
             "| items | wall (s) | peak RSS (MiB) | items/s |", "|---|---|---|---|"]
    for n in sizes:
        lines.append(f"| {n} | {values[f'items_{n}_wall_s']} | "
                     f"{values[f'items_{n}_peak_rss_mib']} | {values[f'items_{n}_items_per_s']} |")
    base = sizes[0]
    for n in sizes[1:]:
        lines.append("")
        lines.append(f"Growth {base} -> {n} items ({n // base}x): wall x"
                     f"{values[f'ratio_wall_{n}_vs_{base}']}, peak memory x"
                     f"{values[f'ratio_peak_rss_{n}_vs_{base}']}.")
    last = sizes[-1]
    lines += ["", f"Grouping measure: {values[f'items_{last}_measure']}. Computing the MI, "
              f"expected MI, NMI and AMI matrices from the sums took "
              f"{values[f'items_{last}_matrices_s']} s of the {last}-item run.", "",
              "Accuracy against scikit-learn's `adjusted_mutual_info_score` (2,000 items; "
              "mean absolute error over 20 repeats for the permutation estimates):", "",
              "| pair | plug-in NMI | exact AMI | 1 permutation | 10 permutations |",
              "|---|---|---|---|---|"]
    for case in ("dependent", "independent"):
        lines.append(f"| {case} | {values[f'accuracy_{case}_plug_in_nmi']} | "
                     f"{values[f'accuracy_{case}_ami_exact_abs_error']} | "
                     f"{values[f'accuracy_{case}_permutation_1_mean_abs_error']} | "
                     f"{values[f'accuracy_{case}_permutation_10_mean_abs_error']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
