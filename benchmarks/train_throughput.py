"""Training throughput of every Trainer variant, as a ratio to the baseline.

Runs in ONE process on a finished pipeline run (MovieLens-1M by default).
Every variant's model is built and warmed up first (tracing, input shuffle
buffer); then ``--rounds`` rounds each time ``--steps`` training steps of
every variant in turn, so a slow spell of the machine hits all variants
alike. A variant's ratio is the mean over rounds of its step rate over the
baseline's in the same round (``..._median``: the median); examples/s
counts main-task pairs (median over rounds). SSL
variants also encode ``ssl_batch_size`` catalog items twice per step; that
cost is what the ratio shows. Run from the repository root after
``make run``: ``python benchmarks/train_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402

from benchmarks.common import latest_artifact, write_results  # noqa: E402
from components.correlation import report as correlation_report  # noqa: E402
from components.trainer import cost  # noqa: E402
from components.trainer import hparams as hparams_lib  # noqa: E402
from components.trainer.run import build_model, training_input  # noqa: E402
from pipeline import nodes  # noqa: E402
from transforms import features  # noqa: E402
from transforms.spec import load_spec  # noqa: E402


class _Variant:
    """A built, warmed-up model of one variant and an iterator over its input."""

    def __init__(self, variant: str, args: argparse.Namespace, spec, dirs: dict,
                 correlation) -> None:
        hp = hparams_lib.from_dict({"variant": variant, "batch_size": args.batch,
                                    "ssl_batch_size": args.batch, "seed": 0})
        tf_keras.utils.set_random_seed(0)
        tft_out = tft.TFTransformOutput(dirs["transform"])
        stream, sampling = training_input(spec, hp, tft_out, dirs["train"], dirs["catalog"],
                                          shuffle_buffer=10_000)
        self.model = build_model(spec, hp, tft_out, correlation, sampling)
        self.model.fit(stream, epochs=1, steps_per_epoch=args.steps, verbose=0)
        self.batches = iter(stream)
        self.step = self.model.make_train_function()
        self.seconds_per_step: list[float] = []

    def time(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            logs = self.step(self.batches)
        float(logs["loss"])                           # wait for the last step
        self.seconds_per_step.append((time.perf_counter() - start) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-root", default="runs/movielens-1m")
    parser.add_argument("--dataset", default="data/movielens-1m/dataset.yaml")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    spec = load_spec(args.dataset)
    examples = latest_artifact(args.run_root, nodes.JOIN, "examples")
    dirs = {"transform": latest_artifact(args.run_root, nodes.TRANSFORM, "transform_graph"),
            "train": features.split_dir(examples, features.TRAIN_SPLIT),
            "catalog": features.split_dir(examples, features.CATALOG_SPLIT)}
    correlation = correlation_report.read(
        latest_artifact(args.run_root, nodes.CORRELATION, "correlation"))
    values: dict[str, object] = {"batch_size": args.batch, "steps_per_round": args.steps,
                                 "rounds": args.rounds}
    runs = {v: _Variant(v, args, spec, dirs, correlation) for v in hparams_lib.VARIANTS}
    values["load_average_1m_start"] = round(os.getloadavg()[0], 2)
    for _ in range(args.rounds):
        for run in runs.values():
            run.time(args.steps)
    # The machine's load over the timed rounds, this process included (it
    # keeps about 1 to 2 threads busy): other jobs sharing the cores skew ratios.
    values["load_average_1m_end"], values["load_average_5m_end"] = (
        round(x, 2) for x in os.getloadavg()[:2])
    base = np.array(runs["baseline"].seconds_per_step)
    base_macs = cost.step_macs(runs["baseline"].model.layout, runs["baseline"].model.hparams)
    values["baseline_step_forward_macs"] = base_macs
    for variant, run in runs.items():
        mine = np.array(run.seconds_per_step)
        values[f"{variant}_dense_work_ratio_vs_baseline"] = round(
            cost.step_macs(run.model.layout, run.model.hparams) / base_macs, 3)
        values[f"{variant}_examples_per_s"] = round(float(args.batch / np.median(mine)))
        values[f"{variant}_throughput_ratio_vs_baseline"] = round(float(np.mean(base / mine)), 3)
        values[f"{variant}_step_cost_ratio_vs_baseline"] = round(float(np.mean(mine / base)), 3)
        values[f"{variant}_step_cost_ratio_vs_baseline_median"] = round(
            float(np.median(mine / base)), 3)
    write_results("train_throughput", values, _markdown)


def _markdown(values: dict[str, object]) -> str:
    lines = ["# Trainer throughput by variant (MovieLens-1M)", "",
             f"Command: `{values['command']}`; {values['machine_cpus']} CPUs. Main batch "
             f"{values['batch_size']} (SSL batch the same). All variants built and warmed up "
             f"in one process, then {values['rounds']} rounds of {values['steps_per_round']} "
             "steps of every variant in turn; ratios are means over rounds of the "
             "same-round ratio to the baseline (the step cost's median beside it). "
             "Load average (1 min) when the timed rounds "
             f"began: {values['load_average_1m_start']}; at their end: "
             f"{values['load_average_1m_end']} (5 min: {values['load_average_5m_end']}); "
             "the benchmark itself adds about 1 to 2 on the machine's "
             f"{values['machine_cpus']} CPUs.", "",
             "Dense work: the step's forward multiply-adds in the towers' layers and the "
             "logits (`components/trainer/cost.py`; baseline "
             f"{values['baseline_step_forward_macs'] / 1e6:.0f} M). SSL encodes two views of "
             "a catalog batch as large as the main batch, as the paper does, so the item "
             "tower embeds twice the rows: a CFM step does twice the baseline's dense work. "
             "In a profile of the steps' ops (the input pipeline aside), matrix products "
             "were about 60% of a CFM step and most of its extra time over the baseline's.",
             "",
             "| variant | examples/s | throughput vs baseline | step cost vs baseline "
             "| step cost, median | dense work vs baseline |",
             "|---|---|---|---|---|---|"]
    columns = ("examples_per_s", "throughput_ratio_vs_baseline", "step_cost_ratio_vs_baseline",
               "step_cost_ratio_vs_baseline_median", "dense_work_ratio_vs_baseline")
    for variant in hparams_lib.VARIANTS:
        lines.append(" | ".join(["", variant, *(str(values[f"{variant}_{c}"]) for c in columns),
                                 ""]).strip())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
