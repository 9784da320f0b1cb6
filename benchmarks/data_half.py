"""Wall time and peak memory of the pipeline's data half.

Cases: MovieLens-1M and a synthetic catalog of ``--items`` items with
``--pairs`` log rows. Each case is a fresh, uncached run of
``python -m pipeline run`` with the default DirectRunner flags (one process
per core); per-step seconds come from ML Metadata. Run from the repository
root: ``python benchmarks/data_half.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import RESULTS, run_measured, write_results  # noqa: E402
from components.join import executor as join_executor  # noqa: E402
from pipeline import records  # noqa: E402
from pipeline.config import IN_MEMORY_BEAM_ARGS, PipelineConfig  # noqa: E402
from pipeline.pipeline import create_pipeline  # noqa: E402
from transforms.spec import load_spec  # noqa: E402

NAME = "ssl4rec"


def _step_seconds(run_root: str, spec_path: str) -> dict[str, float]:
    store = records.open_store(os.path.join(run_root, "metadata.sqlite"))
    config = PipelineConfig(spec=load_spec(spec_path), run_root=run_root)
    out = {}
    for node in create_pipeline(config).components:
        done = [e for e in records.executions(store, NAME, node.id)
                if e.last_known_state in records.DONE_STATES]
        if done:
            e = done[-1]
            out[node.id] = (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000
    return out


def _case(label: str, spec_path: str, work: str, beam_args: tuple[str, ...] = ()
          ) -> dict[str, object]:
    run_root = os.path.join(work, label)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    cmd = [sys.executable, "-m", "pipeline", "run", "--dataset", spec_path,
           "--run-root", run_root, "--data-only", *[f"--beam-arg={a}" for a in beam_args]]
    wall, peak = run_measured(cmd, env, os.path.join(work, f"{label}.log"))
    store = records.open_store(os.path.join(run_root, "metadata.sqlite"))
    join = records.latest(store, NAME, "JoinExamples")
    summary = join_executor.read_summary(join.outputs["examples"][0])
    rows = summary["train"] + summary["eval"]
    values: dict[str, object] = {
        f"{label}_wall_s": round(wall, 1),
        f"{label}_peak_rss_mib": round(peak),
        f"{label}_catalog_items": summary["catalog"],
        f"{label}_log_pairs": rows,
        f"{label}_pairs_per_s": round(rows / wall),
    }
    for node, seconds in _step_seconds(run_root, spec_path).items():
        values[f"{label}_step_{node}_s"] = round(seconds, 1)
    return values


def _markdown(values: dict[str, object], labels: list[str]) -> str:
    lines = ["# Data half: wall time and peak memory", "",
             f"Command: `{values['command']}`; machine: {values['machine_cpus']} CPUs, "
             f"{values['machine_memory_gib']} GiB. Fresh uncached runs of the data half "
             "(ingest, validation, join, Transform, FeatureCorrelation), DirectRunner "
             "multi-processing unless the case says in-memory. Peak memory is the summed "
             "RSS of the pipeline process and its Beam workers.", "",
             "| case | items | pairs | wall (s) | peak RSS (MiB) | pairs/s |",
             "|---|---|---|---|---|---|"]
    for label in labels:
        lines.append(f"| {label} | {values[f'{label}_catalog_items']} | "
                     f"{values[f'{label}_log_pairs']} | {values[f'{label}_wall_s']} | "
                     f"{values[f'{label}_peak_rss_mib']} | {values[f'{label}_pairs_per_s']} |")
    lines += ["", "Seconds per step:", "", "| step | " + " | ".join(labels) + " |",
              "|---|" + "---|" * len(labels)]
    steps = sorted({k.split("_step_")[1][:-2] for k in values if "_step_" in k})
    for step in steps:
        cells = [str(values.get(f"{label}_step_{step}_s", "")) for label in labels]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if "ratio_wall_in_memory_vs_multi_processing" in values:
        lines += ["", "DirectRunner in-memory (one process) vs multi-processing (one worker per "
                  "core) on the synthetic case, wall-time ratio: "
                  f"{values['ratio_wall_in_memory_vs_multi_processing']}."]
    if "ratio_wall_synthetic_vs_movielens" in values:
        lines += ["", f"Wall-time ratio synthetic / MovieLens: "
                  f"{values['ratio_wall_synthetic_vs_movielens']}; per pair: "
                  f"{values['ratio_s_per_pair_synthetic_vs_movielens']}."]
    return "\n".join(lines) + "\n"


def _previous() -> dict[str, object]:
    path = os.path.join(RESULTS, "data_half.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        values = json.load(f)
    return {k: v for k, v in values.items()
            if k != "command" and not k.startswith("machine_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=500_000)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--skip-in-memory", action="store_true",
                        help="skip the DirectRunner in-memory run of the synthetic case")
    parser.add_argument("--in-memory-only", action="store_true",
                        help="add only the in-memory case to the existing results")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-data-half-")
    from pipeline.datasets import movielens, synthetic
    ml_spec = (None if args.in_memory_only else
               movielens.prepare(os.path.join(work, "ml-data"), "data/cache"))
    syn_spec = synthetic.generate(synthetic.SyntheticConfig(
        n_items=args.items, n_pairs=args.pairs, seed=0), os.path.join(work, "syn-data"))
    values: dict[str, object] = {}
    if args.in_memory_only:
        values = _previous()
        if "synthetic_wall_s" not in values:
            raise SystemExit("run without --in-memory-only first (needs the synthetic case)")
    else:
        values.update(_case("movielens", ml_spec, work))
        values.update(_case("synthetic", syn_spec, work))
    if not args.skip_in_memory:
        values.update(_case("synthetic_in_memory", syn_spec, work, IN_MEMORY_BEAM_ARGS))
        values["ratio_wall_in_memory_vs_multi_processing"] = round(
            values["synthetic_in_memory_wall_s"] / values["synthetic_wall_s"], 2)
    values["ratio_wall_synthetic_vs_movielens"] = round(
        values["synthetic_wall_s"] / values["movielens_wall_s"], 2)
    values["ratio_s_per_pair_synthetic_vs_movielens"] = round(
        (values["synthetic_wall_s"] / values["synthetic_log_pairs"])
        / (values["movielens_wall_s"] / values["movielens_log_pairs"]), 2)
    labels = ["movielens", "synthetic"] + (
        ["synthetic_in_memory"] if "synthetic_in_memory_wall_s" in values else [])
    write_results("data_half", values, lambda v: _markdown(v, labels))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
