"""The whole pipeline on a million-item catalog, and what serving it costs.

Stages (each writes ``<work>/<stage>.json``, so an interrupted benchmark
resumes; ``--stages`` picks some):

* ``pipeline``: the long-tail feature-rich generator (``synthetic --rich
  --long-tail``) writes ``--items`` items and ``--pairs`` log pairs; then one
  fresh ``python -m pipeline run`` (the CLI and ``create_pipeline`` that
  MovieLens uses, every step, default settings) runs on it. Measured: wall
  time, peak RSS of the process tree (sampled every 0.5 s), each step's wall
  time (ML Metadata) and peak RSS (the samples inside the step's window), and
  the longest gap between two console lines. With ``--resume`` the run root
  is kept and finished steps are reused: ``pipeline_steps_s`` (the sum of
  the steps' times) then stands for the whole run, and ``pipeline_wall_s``
  is this invocation's.
* ``movielens``: a fresh ``make run``-style pipeline run on MovieLens-1M
  (``data/movielens-1m``, from ``make run``); the sum of its steps' wall
  times.
* ``trainer``: examples/s of the default variant on this run's data over
  examples/s on MovieLens-1M (the ``movielens`` stage's run), timed in one
  process in alternating rounds as ``benchmarks/train_throughput.py`` does,
  with the same generator at 4,000 items (the control: the same 17
  features, a catalog 250x smaller).
* ``search``: ScaNN (the IndexBuilder's settings) and brute force search the
  run's item embeddings for the same eval queries (after the IndexBuilder's
  ``recall_queries``): recall@10 against brute force (by scores) and q/s over
  brute force's, one query at a time and in batches of 100, searching the
  leaves the IndexBuilder's rule picks now (``search.tune_leaves`` on its
  queries, a fresh build: the headline keys), the run's export's, and the
  rule's starting count; then the two exported SavedModels, serialized
  query in, one at a time.
* ``endpoint``: ``python -m serving.server`` loads the pushed ScaNN export
  (load time and the server's RSS), then ``python -m benchmarks.load`` (its
  own process) sends single-query REST requests from 1, 8 and 32 clients.

Run from the repository root: ``python benchmarks/scale.py`` (about 45
minutes on 2 idle cores; the pipeline alone about 28 minutes and up to
15 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from benchmarks.common import (  # noqa: E402
    PIPELINE_NAME,
    RESULTS,
    latest_artifact,
    longest_silence,
    run_watched,
    step_figures,
    step_windows,
    write_results,
)

STAGES = ("pipeline", "movielens", "trainer", "search", "endpoint")
MOVIELENS_SPEC = os.path.join(ROOT, "data/movielens-1m/dataset.yaml")     # from make run


def _env() -> dict[str, str]:
    return dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0")


def dataset(work: str, items: int, pairs: int, eval_percent: int) -> str:
    """Writes (once) the long-tail rich catalog and logs; returns its spec path."""
    out = os.path.join(work, "data")
    spec = os.path.join(out, "dataset.yaml")
    if not os.path.exists(spec):
        from pipeline.datasets import rich
        written = rich.generate(rich.RichConfig(n_items=items, n_pairs=pairs, long_tail=True),
                                out + ".partial")
        _set_eval_percent(written, eval_percent)
        os.replace(out + ".partial", out)
    return spec


def _set_eval_percent(spec_path: str, percent: int) -> None:
    """The generated spec with its eval split at ``percent`` of the users."""
    with open(spec_path) as f:
        text, n = re.subn(r"eval_percent: \d+", f"eval_percent: {percent}", f.read())
    if n != 1:
        raise ValueError(f"{spec_path}: expected one eval_percent to set")
    with open(spec_path, "w") as f:
        f.write(text)


def stage_pipeline(args: argparse.Namespace) -> dict[str, object]:
    spec = dataset(args.work, args.items, args.pairs, args.eval_percent)
    run_root = os.path.join(args.work, "run")
    if not args.resume:
        shutil.rmtree(run_root, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "run", "--dataset", spec, "--run-root", run_root]
    if args.hparams:
        cmd += ["--hparams", args.hparams]
    cmd += args.pipeline_arg
    watched = run_watched(cmd, os.path.join(args.work, "pipeline.log"), _env())
    end = watched["start"] + watched["wall_s"]
    windows = step_windows(run_root, spec)
    values: dict[str, object] = {
        "items": args.items, "pairs": args.pairs, "eval_percent": args.eval_percent,
        "pipeline_resumed": bool(args.resume),
        "pipeline_wall_s": round(watched["wall_s"], 1),
        "pipeline_steps_s": round(sum(end - start for start, end in windows.values()), 1),
        "peak_rss_mib": round(max(b for _, b in watched["rss"]) / 2**20),
        "steps": len(windows),
        "console_max_silence_s": round(longest_silence(watched["start"], end,
                                                       watched["lines"]), 1)}
    values.update(step_figures(windows, watched["rss"]))
    values.update(_evaluator_figures(run_root))
    return values


def _evaluator_figures(run_root: str) -> dict[str, object]:
    """The run's Evaluator: overall Recall@50 and examples, and Recall@50 by item bucket."""
    from components.evaluate import config as eval_config
    from components.evaluate import report
    from pipeline import nodes
    from transforms import features

    metrics = report.metrics_by_slice(latest_artifact(run_root, nodes.EVALUATOR, "evaluation"))
    gate = eval_config.GATE_METRIC                    # recall_at_50
    out = {f"evaluator_{gate}": round(metrics[report.OVERALL][gate], 4),
           "evaluator_examples": int(metrics[report.OVERALL]["example_count"])}
    for bucket in features.BUCKETS:
        if got := metrics.get(report.bucket_label(bucket)):
            out[f"evaluator_{bucket}_{gate}"] = round(got[gate], 4)
    return out


def _trainer_dirs(run_root: str) -> dict[str, object]:
    from components.correlation import report as correlation_report
    from pipeline import nodes
    from transforms import features

    examples = latest_artifact(run_root, nodes.JOIN, "examples")
    return {"transform": latest_artifact(run_root, nodes.TRANSFORM, "transform_graph"),
            "train": features.split_dir(examples, features.TRAIN_SPLIT),
            "catalog": features.split_dir(examples, features.CATALOG_SPLIT),
            "correlation": correlation_report.read(
                latest_artifact(run_root, nodes.CORRELATION, "correlation"))}


def control_run(work: str) -> tuple[str, str]:
    """(spec, run root) of the generator at 4,000 items: its data half, run once."""
    out = os.path.join(work, "control")
    spec, run_root = os.path.join(out, "data", "dataset.yaml"), os.path.join(out, "run")
    if not os.path.exists(os.path.join(out, "done")):
        from pipeline.datasets import rich
        shutil.rmtree(out, ignore_errors=True)
        rich.generate(rich.RichConfig(n_items=4000, n_pairs=400_000, long_tail=True),
                      os.path.join(out, "data"))
        run_watched([sys.executable, "-m", "pipeline", "run", "--dataset", spec, "--run-root",
                     run_root, "--data-only"], os.path.join(out, "run.log"), _env())
        open(os.path.join(out, "done"), "w").close()
    return spec, run_root


def stage_trainer(args: argparse.Namespace) -> dict[str, object]:
    from benchmarks.train_throughput import _Variant
    from components.trainer import cost
    from components.trainer import hparams as hparams_lib
    from transforms.spec import load_spec

    variant = hparams_lib.DEFAULT_VARIANT
    cases = {"movielens": (MOVIELENS_SPEC, os.path.join(args.work, "movielens")),
             "small_catalog": control_run(args.work),
             "scale": (os.path.join(args.work, "data", "dataset.yaml"),
                       os.path.join(args.work, "run"))}
    options = argparse.Namespace(steps=100, batch=hparams_lib.HParams().batch_size)
    runs = {}
    for name, (spec, run_root) in cases.items():
        dirs = _trainer_dirs(run_root)
        runs[name] = _Variant(variant, options, load_spec(spec), dirs, dirs["correlation"])
    for _ in range(args.rounds):
        for run in runs.values():
            run.time(options.steps)
    step = {name: np.array(run.seconds_per_step) for name, run in runs.items()}
    macs = {name: cost.step_macs(run.model.layout, run.model.hparams) for name, run in runs.items()}
    values: dict[str, object] = {"trainer_variant": variant, "trainer_rounds": args.rounds,
                                 "trainer_steps_per_round": options.steps}
    for name in cases:
        values[f"trainer_{name}_examples_per_s"] = round(float(
            options.batch / np.median(step[name])))
    for base in ("movielens", "small_catalog"):
        values[f"trainer_examples_per_s_ratio_vs_{base}"] = round(float(
            np.median(step[base] / step["scale"])), 3)
        # The step's dense work (components/trainer/cost.py) at 1M over the base's.
        values[f"trainer_dense_work_ratio_vs_{base}"] = round(macs["scale"] / macs[base], 3)
    return values


def _timed(fn, queries: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """(queries/s, answers) of ``fn`` over ``queries`` in batches of ``batch``."""
    fn(queries[:batch])                                   # warm-up (tracing, caches)
    out, start = [], time.perf_counter()
    for i in range(0, len(queries), batch):
        out.append(fn(queries[i:i + batch]))
    return len(queries) / (time.perf_counter() - start), np.concatenate(out)


def stage_search(args: argparse.Namespace) -> dict[str, object]:
    """ScaNN against brute force on the run's item embeddings and real eval queries.

    The search alone (query embeddings in, top 10 out; brute force: TF's matmul
    and top_k over every item), then the two exported SavedModels end to end
    (serialized query in, ids out), one query at a time, as the endpoint calls them.
    """
    import scann  # noqa: F401  (registers ScaNN's ops before loading)
    import tensorflow as tf

    from components import tfrecords
    from components.index import executor as index_executor
    from components.index import search
    from pipeline import nodes
    from pipeline.report import records
    from serving import signatures as sig
    from transforms import features

    run_root = os.path.join(args.work, "run")
    examples = latest_artifact(run_root, nodes.JOIN, "examples")
    config = search.IndexConfig()
    split = tfrecords.split_dataset(features.split_dir(examples, features.EVAL_SPLIT))
    tuning = [r.numpy() for r in split.take(config.recall_queries)]     # the IndexBuilder's
    queries = [r.numpy() for r in split.skip(config.recall_queries).take(args.queries)]
    scann_dir = latest_artifact(run_root, nodes.INDEX, index_executor.SCANN_MODEL_KEY)
    _, items = index_executor.read_embeddings(os.path.join(scann_dir,
                                                           index_executor.EMBEDDINGS_DIR))
    query_model = tf.saved_model.load(os.path.join(
        latest_artifact(run_root, nodes.trainer("", first=True), "model"),
        index_executor.SERVING_DIR))
    embedded = search.normalize(query_model.signatures[sig.QUERY_EMBEDDING_EXAMPLES](
        examples=tf.constant(queries))[sig.EMBEDDING].numpy())
    start = time.perf_counter()
    searcher = search.build_scann(items, config)
    build_s = time.perf_counter() - start
    leaves, default_leaves = config.leaves(len(items))
    _, tuned = index_executor.measure_recall(query_model, searcher, items, tuning, config)
    matrix = tf.constant(search.normalize(items))

    @tf.function(input_signature=[tf.TensorSpec([None, items.shape[1]], tf.float32)])
    def brute(q: tf.Tensor) -> tf.Tensor:
        return tf.math.top_k(tf.matmul(q, matrix, transpose_b=True), k=10).values

    store = records.open_store(os.path.join(run_root, "metadata.sqlite"))
    exported = records.latest(store, PIPELINE_NAME, nodes.INDEX).properties[
        index_executor.SCANN_MODEL_KEY][index_executor.LEAVES_PROPERTY]
    values: dict[str, object] = {"search_queries": len(queries),
                                 "scann_build_s": round(build_s, 1), "scann_leaves": leaves,
                                 "scann_leaves_searched": tuned,
                                 "scann_exported_leaves_searched": exported,
                                 "scann_start_leaves_searched": default_leaves}
    for batch in (1, 100):
        brute_qps, exact = _timed(lambda q: brute(tf.constant(q)).numpy(), embedded, batch)
        suffix = "" if batch == 1 else f"_batch_{batch}"
        values[f"bruteforce_qps{suffix}"] = round(brute_qps, 1)
        for name, n in (("", tuned), ("_exported_leaves", exported),
                        ("_start_leaves", default_leaves)):
            scann_qps, found = _timed(
                lambda q, n=n: searcher.search_batched(q, final_num_neighbors=10,
                                                       leaves_to_search=n)[1].numpy(),
                embedded, batch)
            values.update({
                f"scann_recall_at_10{name}{suffix}": round(search.score_recall(found, exact),
                                                           4),
                f"scann_qps{name}{suffix}": round(scann_qps, 1),
                f"scann_qps_ratio_vs_bruteforce{name}{suffix}": round(scann_qps / brute_qps,
                                                                      1)})
    for key, name in ((index_executor.SCANN_MODEL_KEY, "scann"),
                      (index_executor.BRUTE_FORCE_MODEL_KEY, "bruteforce")):
        path = os.path.join(latest_artifact(run_root, nodes.INDEX, key),
                            index_executor.SERVING_DIR)
        fn = tf.saved_model.load(path).signatures[sig.RETRIEVE_EXAMPLES]
        qps, _ = _timed(lambda q, fn=fn: fn(examples=tf.constant(q))[sig.SCORES].numpy(),
                        np.array(queries, dtype=object), 1)
        values[f"served_{name}_model_qps"] = round(qps, 1)
    return values


def stage_endpoint(args: argparse.Namespace) -> dict[str, object]:
    from benchmarks import serving as serving_bench

    run_root = os.path.join(args.work, "run")
    base = os.path.join(run_root, "serving", serving_bench.EXPORTS["scann"])
    bodies = serving_bench._bodies(os.path.join(args.work, "data", "dataset.yaml"), 200)
    bodies_file = os.path.join(args.work, "bodies.jsonl")
    with open(bodies_file, "wb") as f:
        f.write(b"\n".join(bodies) + b"\n")
    log_path = os.path.join(args.work, "endpoint.log")
    cmd = [sys.executable, "-m", "serving.server", "--rest-port", "0", "--grpc-port", "0",
           "--log-dir", os.path.join(args.work, "endpoint-logs"),
           "--model", f"{serving_bench.EXPORTS['scann']}={base}"]
    start = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                env=_env())
    try:
        line = proc.stdout.readline()
        ready_s = time.perf_counter() - start
        if "REST http://" not in line:
            raise RuntimeError(f"server did not start: {line!r}; see {log_path}")
        url = line.split("REST ")[1].split()[0]
        rss = psutil.Process(proc.pid).memory_info().rss
        values: dict[str, object] = {
            "endpoint_start_to_ready_s": round(ready_s, 1),
            "endpoint_rss_mib": round(rss / 2**20),
            "endpoint_model_call_p50_ms": serving_bench.model_call_ms(
                serving_bench._latest(base), bodies)}
        for clients in serving_bench.CLIENTS:
            got = serving_bench.load(f"{url}/v1/models/{serving_bench.EXPORTS['scann']}:predict",
                                     bodies_file, clients, args.seconds, warmup=2.0)
            key = f"endpoint_clients_{clients}"
            values.update({f"{key}_p50_ms": got["p50_ms"], f"{key}_p99_ms": got["p99_ms"],
                           f"{key}_requests_per_s": got["requests_per_s"],
                           f"{key}_errors": got["errors"]})
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    with open(log_path) as f:
        loaded = re.search(r"loaded \S+ version \d+ in ([0-9.]+) s", f.read())
    values["endpoint_load_s"] = float(loaded.group(1)) if loaded else None
    return values


def stage_movielens(args: argparse.Namespace) -> dict[str, object]:
    spec = MOVIELENS_SPEC
    run_root = os.path.join(args.work, "movielens")
    shutil.rmtree(run_root, ignore_errors=True)
    watched = run_watched([sys.executable, "-m", "pipeline", "run", "--dataset", spec,
                           "--run-root", run_root, "--eval-slice", "genres"],
                          os.path.join(args.work, "movielens.log"), _env())
    windows = step_windows(run_root, spec)
    values: dict[str, object] = {
        "movielens_pipeline_steps_s": round(sum(end - start for start, end in windows.values()),
                                            1),
        "movielens_pipeline_wall_s": round(watched["wall_s"], 1)}
    values.update({f"movielens_{k}": v for k, v in step_figures(windows, watched["rss"]).items()
                   if k.endswith("_wall_s")})
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--eval-percent", type=int, default=2,
                        help="users held out for evaluation (the generator's default is 10)")
    parser.add_argument("--work", default=os.path.join(ROOT, "runs", "scale"))
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--results", default=RESULTS, help="where scale.{json,md} go")
    parser.add_argument("--resume", action="store_true",
                        help="pipeline stage: keep the run root, so finished steps are reused "
                             "(their times are those of the run that did them; their memory "
                             "is not sampled, 0)")
    parser.add_argument("--hparams", default="",
                        help="the pipeline stage's --hparams (default: the product's)")
    parser.add_argument("--pipeline-arg", action="append", default=[], metavar="FLAG",
                        help="a flag added to the pipeline stage's command (repeatable)")
    parser.add_argument("--rounds", type=int, default=7, help="trainer stage's timed rounds")
    parser.add_argument("--queries", type=int, default=1000, help="search stage's queries")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="endpoint stage's seconds per client count")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    values: dict[str, object] = {}
    for stage in STAGES:
        path = os.path.join(args.work, f"{stage}.json")
        if stage in args.stages.split(","):
            with open(path, "w") as f:
                json.dump(globals()[f"stage_{stage}"](args), f, indent=2, sort_keys=True)
        if os.path.exists(path):
            with open(path) as f:
                values.update(json.load(f))
    write_results("scale", values, _markdown, args.results)


#: (key, goal, "<=" or ">=") of the issue's targets on an idle 2-core machine.
TARGETS = (("pipeline_wall_s", 2700, "<="), ("peak_rss_mib", 16384, "<="),
           ("trainer_examples_per_s_ratio_vs_movielens", 0.8, ">="),
           ("scann_recall_at_10", 0.95, ">="), ("scann_qps_ratio_vs_bruteforce", 25, ">="),
           ("endpoint_clients_8_p99_ms", 20, "<="), ("console_max_silence_s", 30, "<="),
           ("movielens_pipeline_steps_s", 150, "<="))


def _met(value: object, goal: float, sense: str) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "not measured"
    return "met" if (value <= goal if sense == "<=" else value >= goal) else "**missed**"


def _target_rows(values: dict[str, object]) -> list[str]:
    """One row per target; a resumed run's wall is its steps' sum, its memory partial."""
    rows = []
    resumed = values.get("pipeline_resumed")
    for key, goal, sense in TARGETS:
        value, shown, note = values.get(key, ""), key, ""
        if resumed and key == "pipeline_wall_s":
            value, shown = values.get("pipeline_steps_s", ""), "pipeline_steps_s"
            note = " (resumed run: the sum of the steps' times, not one fresh run's wall)"
        elif resumed and key == "peak_rss_mib":
            note = " (resumed run: only the steps of the last invocation were sampled)"
        rows.append(f"| `{shown}` | {value} | {sense} {goal} | "
                    f"{_met(value, goal, sense)}{note} |")
    return rows


def _markdown(values: dict[str, object]) -> str:
    get = values.get
    lines = ["# The whole pipeline at a million items", "",
             f"Command: `{get('command')}`; machine: {get('machine_cpus')} CPUs, "
             f"{get('machine_memory_gib')} GiB, {get('machine_platform')}. Data: "
             f"`synthetic --rich --long-tail`, {get('items')} items, {get('pairs')} log "
             f"pairs, {get('eval_percent')}% of the users held out for evaluation. "
             + ("A run of `python -m pipeline run` with the product's defaults, resumed "
                "(`--resume`): each step's time is that of the execution that did its work; "
                if get("pipeline_resumed") else
                "One fresh run of `python -m pipeline run` with the product's defaults; ")
             + "step times from ML Metadata; memory is the summed RSS of the pipeline "
             "process and its Beam workers, sampled every 0.5 s (0: not sampled). Each stage "
             "writes its own figures; the command above is the last invocation, which "
             "merged them.", "",
             "| target | value | goal | |", "|---|---|---|---|", *_target_rows(values)]
    lines += ["", "| step | wall (s) | peak RSS (MiB) |", "|---|---|---|"]
    for key in sorted(k for k in values if k.endswith("_wall_s") and f"{k[:-7]}_peak_rss_mib"
                      in values and not k.startswith("movielens_")):
        step = key[:-7]
        lines.append(f"| {step} | {values[key]} | {values[f'{step}_peak_rss_mib']} |")
    rest = {k: v for k, v in values.items()
            if k.startswith(("trainer_", "scann_", "bruteforce_", "search_", "endpoint_",
                             "evaluator_", "movielens_"))}
    lines += ["", "| other figures | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in sorted(rest.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
