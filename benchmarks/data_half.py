"""Wall time and peak memory of the pipeline's data half, before/after.

Cases: MovieLens-1M and a synthetic catalog of ``--items`` items with
``--pairs`` log rows. Each case is a fresh, uncached run of
``python -m pipeline run`` with the default DirectRunner flags (one process
per core); per-step seconds come from ML Metadata. Run from the repository
root: ``python benchmarks/data_half.py``.

The ``before_*`` keys are carried over from the results file: on the first
rerun of a file without them, its case keys become the ``before_*`` keys.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    PIPELINE_NAME,
    RESULTS,
    run_measured_peak,
    step_windows,
    write_results,
)
from components.join import executor as join_executor  # noqa: E402
from pipeline import nodes, preflight  # noqa: E402
from pipeline.config import local_beam_args  # noqa: E402
from pipeline.report import records  # noqa: E402
from transforms import features  # noqa: E402
from transforms.spec import load_spec  # noqa: E402


def _case(label: str, spec_path: str, work: str, beam_args: tuple[str, ...] = ()
          ) -> dict[str, object]:
    run_root = os.path.join(work, label)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    cmd = [sys.executable, "-m", "pipeline", "run", "--dataset", spec_path,
           "--run-root", run_root, "--data-only", *[f"--beam-arg={a}" for a in beam_args]]
    wall, peak, peak_at = run_measured_peak(cmd, env, os.path.join(work, f"{label}.log"))
    store = records.open_store(os.path.join(run_root, "metadata.sqlite"))
    join = records.latest(store, PIPELINE_NAME, nodes.JOIN)
    summary = join_executor.read_summary(join.outputs[join_executor.EXAMPLES_KEY][0])
    rows = summary[features.TRAIN_SPLIT] + summary[features.EVAL_SPLIT]
    values: dict[str, object] = {
        f"{label}_wall_s": round(wall, 1),
        f"{label}_peak_rss_mib": round(peak),
        f"{label}_catalog_items": summary["catalog"],
        f"{label}_log_pairs": rows,
        f"{label}_pairs_per_s": round(rows / wall),
        f"{label}_join_strategy": join.properties["examples"].get(
            join_executor.STRATEGY_PROPERTY, "shuffle"),
    }
    times = step_windows(run_root, spec_path)
    for node, (start, end) in times.items():
        values[f"{label}_step_{node}_s"] = round(end - start, 1)
    values[f"{label}_peak_rss_step"] = next(
        (node for node, (start, end) in times.items() if start <= peak_at <= end), "none")
    flags = beam_args or local_beam_args(preflight.input_bytes(load_spec(spec_path)))
    values[f"{label}_beam_mode"] = ("in_memory" if "--direct_running_mode=in_memory" in flags
                                    else "multi_processing")
    return values


CASES = ("movielens", "synthetic")
BEFORE = "before_"


def _cell(values: dict[str, object], key: str) -> str:
    return str(values.get(key, ""))


def _markdown(values: dict[str, object]) -> str:
    cols = [(BEFORE + c, f"{c} before") for c in CASES] + [(c, f"{c} after") for c in CASES]
    cols.sort(key=lambda c: CASES.index(c[0].removeprefix(BEFORE)))
    lines = ["# Data half: wall time and peak memory, before/after", "",
             f"Command: `{values['command']}`; machine: {values['machine_cpus']} CPUs, "
             f"{values['machine_memory_gib']} GiB; 1-minute load average at the start / end: "
             f"{values['machine_load_start']} / {values['machine_load_end']} (2 would mean "
             "both CPUs busy with this benchmark alone). Fresh uncached runs of the data half "
             "(ingest, validation, join, Transform, FeatureCorrelation) with the default local "
             "Beam flags: before, DirectRunner multi-processing; after, the same for inputs "
             "above 32 MiB and one process for smaller ones (`pipeline/config.py`, row "
             "'Beam mode'), and JoinExamples in one process on every size "
             "(`JOIN_BEAM_ARGS`). No other job ran. Peak memory is the summed RSS of "
             "the pipeline process and its Beam workers, sampled every 0.2 s; 'peak "
             "during' is the step running at that moment. Goals on 2 cores: "
             "MovieLens-1M <= 90 s; 1M items / 500k pairs <= 600 s at <= 8 GiB.", "",
             f"*Before*: {values.get('before_note', '')}", "",
             "| | " + " | ".join(name for _, name in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for metric, label in [("catalog_items", "items"), ("log_pairs", "pairs"),
                          ("wall_s", "wall (s)"), ("peak_rss_mib", "peak RSS (MiB)"),
                          ("peak_rss_step", "peak during"), ("beam_mode", "Beam mode"),
                          ("pairs_per_s", "pairs/s"), ("join_strategy", "join strategy")]:
        lines.append(f"| {label} | " + " | ".join(
            _cell(values, f"{c}_{metric}") for c, _ in cols) + " |")
    steps = sorted({k.split("_step_")[1][:-2] for k in values if "_step_" in k})
    for step in steps:
        lines.append(f"| {step} (s) | " + " | ".join(
            _cell(values, f"{c}_step_{step}_s") for c, _ in cols) + " |")
    for case in CASES:
        sizes = [(values.get(f"{p}{case}_catalog_items"), values.get(f"{p}{case}_log_pairs"))
                 for p in (BEFORE, "")]
        if f"{case}_wall_s" in values and sizes[0] == sizes[1]:
            lines += ["", f"{case}: wall-time ratio after / before "
                      f"{values[f'{case}_wall_s'] / values[f'{BEFORE}{case}_wall_s']:.2f}."]
    return "\n".join(lines) + "\n"


def _before() -> dict[str, object]:
    """``before_*`` values of the results file (its case keys if it has none)."""
    path = os.path.join(RESULTS, "data_half.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        old = json.load(f)
    kept = {k: v for k, v in old.items() if k.startswith(BEFORE)}
    if kept:
        for case in CASES:                  # "before" predates the choice by input size
            kept.setdefault(f"{BEFORE}{case}_beam_mode", "multi_processing")
        return kept
    kept = {BEFORE + k: v for k, v in old.items() if k.startswith(CASES)
            and not k.startswith("synthetic_in_memory")}
    kept.update({f"{BEFORE}{c}_join_strategy": "shuffle" for c in CASES})
    kept["before_note"] = ("the results file this run replaced (see its git history), "
                           "carried over, not rerun.")
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=500_000)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--beam-arg", action="append", default=[], metavar="FLAG",
                        help="extra Beam flag for every case (repeatable)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-data-half-")
    from pipeline.datasets import movielens, synthetic
    values: dict[str, object] = {**_before(), "machine_load_start": round(os.getloadavg()[0], 1)}
    ml_spec = movielens.prepare(os.path.join(work, "ml-data"), "data/cache")
    values.update(_case("movielens", ml_spec, work, tuple(args.beam_arg)))
    syn_spec = synthetic.generate(synthetic.SyntheticConfig(
        n_items=args.items, n_pairs=args.pairs, seed=0), os.path.join(work, "syn-data"))
    values.update(_case("synthetic", syn_spec, work, tuple(args.beam_arg)))
    values["machine_load_end"] = round(os.getloadavg()[0], 1)
    write_results("data_half", values, _markdown)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
