"""Training throughput of every Trainer variant, as a ratio to the baseline.

Runs in ONE process on a finished pipeline run (MovieLens-1M by default):
each variant trains for ``--steps`` steps after a warm-up epoch (input
shuffle buffer, tracing), and examples/s counts main-task pairs per second
of the measured epochs. SSL variants also encode ``ssl_batch_size`` catalog
items twice per step; that cost is what the ratio shows. Run from the
repository root after ``make run``: ``python benchmarks/train_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402

from benchmarks.common import latest_artifact, write_results  # noqa: E402
from components.correlation import report as correlation_report  # noqa: E402
from components.trainer import hparams as hparams_lib  # noqa: E402
from components.trainer.run import build_model, training_input  # noqa: E402
from pipeline import nodes  # noqa: E402
from transforms import features  # noqa: E402
from transforms.spec import load_spec  # noqa: E402


class _EpochTimer(tf_keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.times.append(time.perf_counter() - self.start)


def _measure(variant: str, args: argparse.Namespace, spec, dirs: dict, correlation) -> float:
    hp = hparams_lib.from_dict({"variant": variant, "batch_size": args.batch,
                                "ssl_batch_size": args.batch, "seed": 0})
    tf_keras.utils.set_random_seed(0)
    tft_out = tft.TFTransformOutput(dirs["transform"])
    stream, sampling = training_input(spec, hp, tft_out, dirs["train"], dirs["catalog"],
                                      shuffle_buffer=10_000)
    model = build_model(spec, hp, tft_out, correlation, sampling)
    timer = _EpochTimer()
    epochs = 1 + args.repeats
    model.fit(stream, epochs=epochs, steps_per_epoch=args.steps,
              verbose=0, callbacks=[timer])
    measured = timer.times[1:]
    return args.steps * args.batch * len(measured) / sum(measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-root", default="runs/movielens-1m")
    parser.add_argument("--dataset", default="data/movielens-1m/dataset.yaml")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    spec = load_spec(args.dataset)
    examples = latest_artifact(args.run_root, nodes.TRANSFORM, "transformed_examples")
    dirs = {"transform": latest_artifact(args.run_root, nodes.TRANSFORM, "transform_graph"),
            "train": features.split_dir(examples, features.TRAIN_SPLIT),
            "catalog": features.split_dir(examples, features.CATALOG_SPLIT)}
    correlation = correlation_report.read(
        latest_artifact(args.run_root, nodes.CORRELATION, "correlation"))
    values: dict[str, object] = {"batch_size": args.batch, "measured_steps": args.steps
                                 * args.repeats}
    for variant in hparams_lib.VARIANTS:
        values[f"{variant}_examples_per_s"] = round(_measure(variant, args, spec, dirs,
                                                             correlation))
    base = values["baseline_examples_per_s"]
    for variant in hparams_lib.VARIANTS:
        values[f"{variant}_throughput_ratio_vs_baseline"] = round(
            values[f"{variant}_examples_per_s"] / base, 3)
    write_results("train_throughput", values, _markdown)


def _markdown(values: dict[str, object]) -> str:
    lines = ["# Trainer throughput by variant (MovieLens-1M)", "",
             f"Command: `{values['command']}`; {values['machine_cpus']} CPUs. Main batch "
             f"{values['batch_size']} (SSL batch the same), {values['measured_steps']} measured "
             "steps per variant after a warm-up epoch, all in one process.", "",
             "| variant | examples/s | ratio vs baseline |", "|---|---|---|"]
    for variant in hparams_lib.VARIANTS:
        lines.append(f"| {variant} | {values[f'{variant}_examples_per_s']} | "
                     f"{values[f'{variant}_throughput_ratio_vs_baseline']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
