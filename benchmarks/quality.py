"""Quality study: every Trainer variant, tuned alike, on five data regimes.

Reuses finished pipeline runs (joined examples, Transform graph and
FeatureCorrelation artefact) and trains with the Trainer's own code
(``components.trainer.run.train``), one model after another in this
process. Missing runs are prepared first with the project's CLI (see
``DATASETS``).

Protocol (also written to the results page):

* **Regimes**: ``ml1m_full`` (MovieLens-1M, all training pairs),
  ``ml1m_10pct`` (a fixed uniform 10% of them), ``ml1m_cold_items``
  (MovieLens-1M with 10% of the catalog held out by a hash of the id: all
  their pairs are in the test split, none in training), ``synthetic_full``
  and ``synthetic_10pct`` (the feature-rich benchmark,
  ``pipeline/datasets/rich.py``).
* **Validation**: 10% of each regime's training pairs (seeded), carved out
  of training; every model trains on the rest. The pipeline's eval split is
  the test split and chooses nothing.
* **Step budget** (one rule for every variant): each run trains its
  regime's step budget and is scored on validation at fixed checkpoints; a
  setting's score is the best, over checkpoints, of the seed-mean
  validation Recall@50, and the reported test numbers are those of that
  checkpoint. In the test regimes a variant whose best checkpoint is its
  last, and whose validation Recall@50 still rose by at least 0.002 over
  the last checkpoint interval, is retrained with 1.5x the steps (at most
  twice), so no variant is reported while it was still improving.
* **Tuning** (on ``ml1m_full``, seeds 0 and 1, choices on their mean):
  the baseline's temperature, with and without logQ correction; the
  winner's temperature and logQ apply to the main loss of every variant.
  Then per variant: ``fd`` its feature-dropout rate; ``mns`` its
  temperature; every SSL variant (the ablations of ``cfm`` included) its
  SSL weight alpha (at SSL temperature = main temperature), then its SSL
  temperature at that alpha. A grid whose best value is at an end is extended (up to
  ``MAX_EXTENSIONS`` times per side). Other regimes reuse these settings
  and choose only their step budget, on their own validation.
* **Test**: every variant x 3 seeds, brute force over the whole catalog
  (the query's own item excluded), Recall@K and MAP@K (K = 10, 50),
  overall and by the positive item's bucket (head / tail / cold).

Finished runs are cached in ``<work>/runs-joined.json``: a re-run continues.
(``runs.json`` holds the runs of the committed results, made when the study
read Transform's materialized rows in their written order; the joined rows,
sorted before the seeded split, give other validation and share partitions.)
Run from the repository root: ``python benchmarks/quality.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import RESULTS, latest_artifact, write_results  # noqa: E402
from components.correlation import report as correlation_report  # noqa: E402
from components.evaluate.metrics import map_at_k, positive_ranks, recall_at_k  # noqa: E402
from components.index.search import normalize  # noqa: E402
from components.trainer import data  # noqa: E402
from components.trainer import hparams as hparams_lib  # noqa: E402
from components.trainer.run import build_model, train, training_input  # noqa: E402
from pipeline import nodes  # noqa: E402
from transforms import features  # noqa: E402
from transforms.spec import load_spec  # noqa: E402

KS = (10, 50)
SLICES = ("overall", "head", "tail", "cold")
#: name -> (run root, dataset spec, commands that prepare them).
DATASETS = {
    "ml1m": ("runs/movielens-1m", "data/movielens-1m/dataset.yaml",
             [["movielens", "--out", "data/movielens-1m", "--cache", "data/cache"],
              ["run", "--dataset", "data/movielens-1m/dataset.yaml",
               "--run-root", "runs/movielens-1m", "--data-only"]]),
    "ml1m_cold": ("runs/movielens-1m-cold", "data/movielens-1m/dataset-cold.yaml",
                  [["run", "--dataset", "data/movielens-1m/dataset-cold.yaml",
                    "--run-root", "runs/movielens-1m-cold", "--data-only"]]),
    "synthetic": ("runs/rich", "data/rich/dataset.yaml",
                  [["synthetic", "--rich", "--out", "data/rich", "--items", "20000",
                    "--pairs", "400000"],
                   ["run", "--dataset", "data/rich/dataset.yaml", "--run-root", "runs/rich",
                    "--data-only"]]),
}
COLD_ITEM_PERCENT = 10
#: regime -> (dataset, share of the training pairs, starting step budget,
#: steps between checkpoints).
REGIMES = {
    "ml1m_full": ("ml1m", 1.0, 3000, 500),
    "ml1m_10pct": ("ml1m", 0.1, 1500, 250),
    "ml1m_cold_items": ("ml1m_cold", 1.0, 3000, 500),
    "synthetic_full": ("synthetic", 1.0, 2000, 250),
    "synthetic_10pct": ("synthetic", 0.1, 500, 125),
}
if os.environ.get("QUALITY_SMOKE"):                  # a quick check of this script itself
    REGIMES = {name: (d, share, 500, 250) for name, (d, share, _, _) in REGIMES.items()}
#: A budget whose best checkpoint is its last, and whose seed-mean
#: validation Recall@50 still rose by at least BUDGET_MIN_GAIN over the last
#: checkpoint interval, is retrained with BUDGET_FACTOR times the steps, at
#: most BUDGET_EXTENSIONS times.
BUDGET_FACTOR = 1.5
BUDGET_EXTENSIONS = 2
BUDGET_MIN_GAIN = 0.002
TUNING_REGIME = "ml1m_full"
TUNING_SEEDS = (0, 1)
SSL_VARIANTS = tuple(v for v, f in hparams_lib.VARIANTS.items() if f.ssl_loss)
#: parameter -> (starting grid, factor of one extension step). The SSL
#: temperature's grid is relative: times the chosen main temperature.
GRIDS = {"temperature": ((0.05, 0.1, 0.2), 2.0),
         "alpha": ((0.03, 0.1, 0.3), 3.0),
         "ssl_temperature": ((0.5, 1.0, 2.0), 2.0),
         "feature_dropout_rate": ((0.05, 0.1, 0.2), 2.0)}
RELATIVE = {"ssl_temperature": "temperature"}
MAX_EXTENSIONS = 2
VALIDATION_SHARE = 0.1
SPLIT_SEED = 1234
STEPS_PER_EPOCH = 125


def prepare(name: str) -> None:
    """Runs the CLI commands that produce dataset ``name``'s pipeline run, if missing."""
    root, dataset, commands = DATASETS[name]
    if os.path.exists(os.path.join(root, "metadata.sqlite")):
        return
    if name == "ml1m_cold" and not os.path.exists(dataset):
        prepare_cold_spec(DATASETS["ml1m"][1], dataset)
    for command in commands:
        print(f"[quality] preparing {name}: python -m pipeline {' '.join(command)}", flush=True)
        subprocess.run([sys.executable, "-m", "pipeline", *command], check=True)


def prepare_cold_spec(source: str, target: str) -> None:
    """MovieLens-1M's spec with ``COLD_ITEM_PERCENT`` of the items held out as cold."""
    if not os.path.exists(source):
        subprocess.run([sys.executable, "-m", "pipeline", *DATASETS["ml1m"][2][0]], check=True)
    doc = yaml.safe_load(open(source))
    doc["name"] = doc["name"] + "-cold"
    doc.setdefault("split", {})["cold_item_percent"] = COLD_ITEM_PERCENT
    with open(target, "w") as f:
        f.write(f"# {os.path.basename(source)} with {COLD_ITEM_PERCENT}% of the items held "
                "out as cold (written by benchmarks/quality.py).\n")
        yaml.safe_dump(doc, f, sort_keys=False)


def _records(split_dir: str) -> np.ndarray:
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir, "*")))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(65536)
    return np.concatenate([b.numpy() for b in ds]).astype(object)


def _write(records: np.ndarray, folder: str) -> str:
    if os.path.isdir(folder):
        return folder
    tmp = f"{folder}.partial-{os.getpid()}"       # workers may race to write it
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tf.io.TFRecordWriter(os.path.join(tmp, "part-00000.gz"), "GZIP") as w:
        for r in records:
            w.write(r)
    try:
        os.rename(tmp, folder)
    except OSError:                                 # another worker finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _parse(records: np.ndarray, tft_out: tft.TFTransformOutput
           ) -> tuple[dict[str, tf.Tensor], np.ndarray]:
    """Transformed features (ragged ids) and each row's item bucket."""
    serialized = tf.constant(list(records))
    parsed = data.transformed_decoder(tft_out)(serialized)
    bucket_spec = {features.ITEM_BUCKET: tft_out.raw_feature_spec()[features.ITEM_BUCKET]}
    bucket = data.to_ragged(tf.io.parse_example(serialized, bucket_spec))[features.ITEM_BUCKET]
    if isinstance(bucket, tf.RaggedTensor):
        bucket = bucket.to_tensor(default_value=b"")
    return parsed, np.array([b.decode() for b in tf.reshape(bucket, [-1]).numpy()])


def _id_index(batch: dict, key: str) -> np.ndarray:
    value = batch[key]
    if isinstance(value, tf.RaggedTensor):
        value = value.to_tensor(default_value=-1)
    return value.numpy().reshape(len(value), -1)[:, 0]


class Evaluation:
    """Queries of one split and the catalog, parsed once, scored per model."""

    def __init__(self, records: np.ndarray, catalog: dict, catalog_ids: np.ndarray,
                 tft_out: tft.TFTransformOutput, spec) -> None:
        self.catalog = catalog
        self.queries, self.bucket = _parse(records, tft_out)
        column = {int(v): i for i, v in enumerate(catalog_ids)}
        self.positive = np.array([column[int(v)] for v in
                                  _id_index(self.queries, features.item_key(spec.item_id))])
        query_key = features.query_key(spec.item_id)
        self.own = (np.array([column.get(int(v), -1) for v in
                              _id_index(self.queries, query_key)])
                    if query_key in self.queries else None)
        self.n_items = len(catalog_ids)

    @staticmethod
    def _embed(fn, batch: dict, n: int, size: int = 16384) -> np.ndarray:
        out = []
        for start in range(0, n, size):
            out.append(fn({k: v[start:start + size] for k, v in batch.items()}).numpy())
        return normalize(np.concatenate(out))

    def score(self, model) -> dict[str, float]:
        items = self._embed(model.item_embedding, self.catalog, self.n_items)
        queries = self._embed(model.query_embedding, self.queries, len(self.positive))
        ranks = np.empty(len(self.positive), np.int64)
        for start in range(0, len(queries), 8192):
            scores = queries[start:start + 8192] @ items.T
            rows = np.arange(len(scores))
            if self.own is not None:
                own = self.own[start:start + 8192]
                scores[rows[own >= 0], own[own >= 0]] = -np.inf
            ranks[start:start + 8192] = positive_ranks(scores, self.positive[start:start + 8192])
        out = {}
        for name in SLICES:
            mask = np.ones(len(ranks), bool) if name == "overall" else self.bucket == name
            out[f"{name}_examples"] = int(mask.sum())
            for k in KS:
                out[f"{name}_recall_at_{k}"] = recall_at_k(ranks[mask], k)
                out[f"{name}_map_at_{k}"] = map_at_k(ranks[mask], k)
        return out


class Regime:
    """One regime's training folder and its validation and test evaluations."""

    def __init__(self, name: str, work: str) -> None:
        dataset, share, self.max_steps, self.every = REGIMES[name]
        root, spec_path, _ = DATASETS[dataset]
        self.name, self.spec = name, load_spec(spec_path)
        examples = latest_artifact(root, nodes.JOIN, "examples")
        self.transform_dir = latest_artifact(root, nodes.TRANSFORM, "transform_graph")
        self.catalog_dir = features.split_dir(examples, features.CATALOG_SPLIT)
        self.correlation = correlation_report.read(
            latest_artifact(root, nodes.CORRELATION, "correlation"))
        # Sorted, so the seeded split below does not depend on the order the
        # pipeline's workers wrote the rows in.
        train_records = np.sort(_records(features.split_dir(examples, features.TRAIN_SPLIT)))
        rng = np.random.default_rng(SPLIT_SEED)
        keep = np.ones(len(train_records), bool)
        if share < 1:
            keep[:] = False
            keep[rng.permutation(len(train_records))[: int(round(share * len(keep)))]] = True
        kept = train_records[keep]
        is_val = np.zeros(len(kept), bool)
        is_val[rng.permutation(len(kept))[: int(round(VALIDATION_SHARE * len(kept)))]] = True
        self.sizes = {"train": int((~is_val).sum()), "validation": int(is_val.sum())}
        self.train_dir = _write(kept[~is_val], os.path.join(work, f"{name}-train-joined"))
        tft_out = tft.TFTransformOutput(self.transform_dir)
        catalog, _ = _parse(_records(self.catalog_dir), tft_out)
        ids = _id_index(catalog, features.item_key(self.spec.item_id))
        self.validation = Evaluation(kept[is_val], catalog, ids, tft_out, self.spec)
        self.test = Evaluation(_records(features.split_dir(examples, features.EVAL_SPLIT)),
                               catalog, ids, tft_out, self.spec)
        self.sizes["test"] = len(self.test.positive)


class Checkpoints(tf_keras.callbacks.Callback):
    """Scores validation at the regime's checkpoint steps and saves the weights there.

    The test split is scored later, only at the checkpoint the step rule picks
    (:func:`_test_one`).
    """

    def __init__(self, regime: Regime, weights_dir: str) -> None:
        super().__init__()
        self.regime, self.weights_dir, self.curve = regime, weights_dir, {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        step = (epoch + 1) * STEPS_PER_EPOCH
        if step % self.regime.every == 0:
            self.curve[str(step)] = {"validation": self.regime.validation.score(self.model)}
            os.makedirs(self.weights_dir, exist_ok=True)
            np.savez(os.path.join(self.weights_dir, f"{step}.npz"), *self.model.get_weights())


RUNS_FILE = "runs-joined.json"


def _key(regime: str, variant: str, seed: int, hp: dict, steps: int | None = None) -> str:
    """A run's cache key; the step budget is named only when it is not the regime's first."""
    extra = [] if steps in (None, REGIMES[regime][2]) else [f"steps={steps}"]
    return "/".join([regime, variant, f"seed{seed}",
                     *(f"{k}={hp[k]:g}" if isinstance(hp[k], float) else f"{k}={hp[k]}"
                       for k in sorted(hp)), *extra])


def _steps(regime: str, steps: int | None) -> int:
    return REGIMES[regime][2] if steps is None else steps


_WORKER_REGIMES: dict[str, Regime] = {}


def _worker_init() -> None:
    """One TF thread per worker: two single-threaded workers out-run one two-threaded."""
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _regime(work: str, name: str) -> Regime:
    if name not in _WORKER_REGIMES:
        _WORKER_REGIMES.clear()          # one regime's data in memory at a time
        _WORKER_REGIMES[name] = Regime(name, work)
    return _WORKER_REGIMES[name]


def _params(regime: Regime, variant: str, seed: int, hp: dict,
            steps: int | None = None) -> hparams_lib.HParams:
    return hparams_lib.from_dict({"variant": variant, "seed": seed,
                                  "train_steps": _steps(regime.name, steps),
                                  "steps_per_epoch": STEPS_PER_EPOCH, **hp})


def _weights_dir(work: str, key: str) -> str:
    return os.path.join(work, "weights", key.replace("/", "_"))


def _train_one(work: str, regime: str, variant: str, seed: int, hp: dict,
               steps: int | None = None) -> dict:
    """One run in a worker process: its validation curve (weights saved per checkpoint)."""
    r = _regime(work, regime)
    tf_keras.backend.clear_session()
    key = _key(regime, variant, seed, hp, steps)
    checkpoints = Checkpoints(r, _weights_dir(work, key))
    start = time.perf_counter()
    log_dir = os.path.join(work, "logs", key.replace("/", "_"))
    train(r.spec, _params(r, variant, seed, hp, steps), r.transform_dir, r.train_dir, r.catalog_dir,
          log_dir, r.correlation, callbacks=[checkpoints])
    shutil.rmtree(log_dir, ignore_errors=True)
    return {"curve": checkpoints.curve, "sizes": r.sizes, "steps": _steps(regime, steps),
            "seconds": round(time.perf_counter() - start, 1)}


def _test_one(work: str, regime: str, variant: str, seed: int, hp: dict, steps: int | None,
              step: str, validation_recall: float) -> dict:
    """Test metrics of a run's saved checkpoint, in a worker process.

    The rebuilt model must reproduce the validation Recall@50 recorded at
    that checkpoint, which checks that the weights were restored.
    """
    r = _regime(work, regime)
    tf_keras.backend.clear_session()
    params = _params(r, variant, seed, hp, steps)
    tft_out = tft.TFTransformOutput(r.transform_dir)
    _, sampling = training_input(r.spec, params, tft_out, r.train_dir, r.catalog_dir, 1)
    model = build_model(r.spec, params, tft_out, r.correlation, sampling)
    model.item_embedding({k: v[:2] for k, v in r.test.catalog.items()})
    model.query_embedding({k: v[:2] for k, v in r.test.queries.items()})
    saved = np.load(os.path.join(_weights_dir(work, _key(regime, variant, seed, hp, steps)),
                                 f"{step}.npz"))
    model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    check = r.validation.score(model)["overall_recall_at_50"]
    if abs(check - validation_recall) > 1e-6:
        raise RuntimeError(f"restored weights of {regime}/{variant}/seed{seed} at step {step} "
                           f"give validation Recall@50 {check}, not {validation_recall}")
    return r.test.score(model)


class Study:
    """Runs (cached in ``RUNS_FILE``, trained by a pool of worker processes) and
    the choices made from them."""

    def __init__(self, work: str, workers: int) -> None:
        import concurrent.futures
        import multiprocessing

        self.work = work
        self.path = os.path.join(work, RUNS_FILE)
        self.runs = json.load(open(self.path)) if os.path.exists(self.path) else {}
        self.searches: list[dict] = []
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"          # the workers' NumPy too
        self.pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)

    def run_many(self, jobs: list[tuple]) -> None:
        """Trains every job not yet cached, in parallel; saves after each."""
        import concurrent.futures

        todo = {}
        for job in jobs:
            key = _key(*job)
            if key not in self.runs and key not in todo:
                todo[key] = self.pool.submit(_train_one, self.work, *job)
        jobs_by_key = {_key(*job): job for job in jobs}
        for future in concurrent.futures.as_completed(todo.values()):
            key = next(k for k, f in todo.items() if f is future)
            job = jobs_by_key[key]
            self.runs[key] = future.result()
            self._save()
            best = max(c["validation"]["overall_recall_at_50"]
                       for c in self.runs[key]["curve"].values())
            if max(map(int, self.runs[key]["curve"])) != _steps(job[0], (*job, None)[4]):
                raise RuntimeError(f"{key}: its last checkpoint is not its step budget")
            print(f"[quality] {key}: best validation recall@50 {best:.4f} "
                  f"({self.runs[key]['seconds']} s)", flush=True)

    def run(self, regime: str, variant: str, seed: int, hp: dict,
            steps: int | None = None) -> dict:
        self.run_many([(regime, variant, seed, hp, steps)])
        return self.runs[_key(regime, variant, seed, hp, steps)]

    def test_many(self, jobs: list[tuple[str, str, int, dict, int, str]]) -> None:
        """Scores the test split at each job's checkpoint (cached in the run's curve)."""
        import concurrent.futures

        todo = {}
        for regime, variant, seed, hp, steps, step in jobs:
            point = self.runs[_key(regime, variant, seed, hp, steps)]["curve"][step]
            if "test" not in point:
                todo[self.pool.submit(
                    _test_one, self.work, regime, variant, seed, hp, steps, step,
                    point["validation"]["overall_recall_at_50"])] = point
        for future in concurrent.futures.as_completed(todo):
            todo[future]["test"] = future.result()
        if todo:
            self._save()

    def _save(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.runs, f, sort_keys=True)
        os.replace(self.path + ".tmp", self.path)

    def curve(self, regime: str, variant: str, seeds, hp: dict,
              steps: int | None = None) -> dict[str, float]:
        """Seed-mean validation Recall@50 by checkpoint step, in step order."""
        curves = [self.run(regime, variant, s, hp, steps)["curve"] for s in seeds]
        return {step: float(np.mean([c[step]["validation"]["overall_recall_at_50"]
                                     for c in curves])) for step in sorted(curves[0], key=int)}

    def budget(self, regime: str, variant: str, seeds, hp: dict,
               steps: int | None = None) -> tuple[str, float]:
        """The checkpoint with the best seed-mean validation Recall@50, and that mean."""
        means = self.curve(regime, variant, seeds, hp, steps)
        step = max(means, key=lambda s: (means[s], -int(s)))
        return step, means[step]

    def search(self, variant: str, name: str, fixed: dict) -> object:
        """The value of ``name`` with the best tuning score; extends a grid won at an end."""
        factor = GRIDS[name][1]
        grid = self._grid(name, fixed)
        extended = {"low": 0, "high": 0}
        while True:
            self.run_many([(TUNING_REGIME, variant, seed, {**fixed, name: v})
                           for v in grid for seed in TUNING_SEEDS])
            scores = [self.budget(TUNING_REGIME, variant, TUNING_SEEDS, {**fixed, name: v})[1]
                      for v in grid]
            i = int(np.argmax(scores))
            if factor and i == 0 and extended["low"] < MAX_EXTENSIONS:
                grid.insert(0, round(grid[0] / factor, 6))
                extended["low"] += 1
            elif (factor and i == len(grid) - 1 and extended["high"] < MAX_EXTENSIONS
                  and grid[-1] * factor < 0.95):
                grid.append(round(grid[-1] * factor, 6))
                extended["high"] += 1
            else:
                label = name if "logq_correction" not in fixed or name != "temperature" else (
                    f"{name} (logQ {'on' if fixed['logq_correction'] else 'off'})")
                self.searches.append({"variant": variant, "parameter": label, "grid": grid,
                                      "scores": [round(s, 5) for s in scores],
                                      "chosen": grid[i], "fixed": dict(fixed),
                                      "at_edge": i in (0, len(grid) - 1)})
                return grid[i]

    @staticmethod
    def _grid(name: str, fixed: dict) -> list[float]:
        scale = fixed[RELATIVE[name]] if name in RELATIVE else 1.0
        return [round(v * scale, 6) for v in GRIDS[name][0]]

    def _grid_jobs(self, variant: str, name: str, fixed: dict) -> list:
        return [(TUNING_REGIME, variant, seed, {**fixed, name: v})
                for v in self._grid(name, fixed) for seed in TUNING_SEEDS]

    def tune(self, variants: list[str]) -> dict[str, dict]:
        """Every variant's settings, chosen on the tuning regime's validation split.

        Each phase first trains the starting grids of all its searches at once
        (so the workers stay busy), then runs the searches, which extend them.
        """
        on, off = {"logq_correction": True}, {"logq_correction": False}
        self.run_many(self._grid_jobs("baseline", "temperature", on)
                      + self._grid_jobs("baseline", "temperature", off))
        tau_on = self.search("baseline", "temperature", on)
        tau_off = self.search("baseline", "temperature", off)
        score_on = self.budget(TUNING_REGIME, "baseline", TUNING_SEEDS,
                               {**on, "temperature": tau_on})[1]
        score_off = self.budget(TUNING_REGIME, "baseline", TUNING_SEEDS,
                                {**off, "temperature": tau_off})[1]
        main = ({**on, "temperature": tau_on} if score_on >= score_off else
                {**off, "temperature": tau_off})
        ssl_fixed = {**main, "ssl_temperature": main["temperature"]}
        first = {"fd": ("feature_dropout_rate", main),
                 "mns": ("temperature", {"logq_correction": main["logq_correction"]}),
                 **{v: ("alpha", ssl_fixed) for v in SSL_VARIANTS}}
        first = {v: first[v] for v in variants if v in first}
        self.run_many([job for v, (name, fixed) in first.items()
                       for job in self._grid_jobs(v, name, fixed)])
        chosen = {v: dict(main) for v in variants}
        for v, (name, fixed) in first.items():
            chosen[v] = {**fixed, **main, name: self.search(v, name, fixed)}
        # Then every SSL variant's SSL temperature, at its own alpha.
        ssl = [v for v in variants if v in SSL_VARIANTS]
        self.run_many([job for v in ssl for job in self._grid_jobs(v, "ssl_temperature",
                                                                   chosen[v])])
        for v in ssl:
            chosen[v]["ssl_temperature"] = self.search(v, "ssl_temperature", chosen[v])
        return chosen

    def budgets(self, regimes: list[str], variants: list[str], seeds: list[int],
                chosen: dict) -> dict[tuple[str, str], tuple[int, str]]:
        """(steps trained, best checkpoint) per regime and variant, by one rule.

        Every variant starts at its regime's step budget; one whose best
        seed-mean validation checkpoint is its last, and which gained at
        least BUDGET_MIN_GAIN over the last checkpoint interval, is retrained
        with BUDGET_FACTOR times the steps, at most BUDGET_EXTENSIONS times.
        """
        steps = {(r, v): REGIMES[r][2] for r in regimes for v in variants}
        best: dict[tuple[str, str], str] = {}
        pending = list(steps)
        for round_ in range(BUDGET_EXTENSIONS + 1):
            self.run_many([(r, v, s, chosen[v], steps[r, v]) for r, v in pending
                           for s in seeds])
            extend = []
            for r, v in pending:
                means = list(self.curve(r, v, seeds, chosen[v], steps[r, v]).values())
                best[r, v] = self.budget(r, v, seeds, chosen[v], steps[r, v])[0]
                rising = len(means) > 1 and means[-1] - means[-2] >= BUDGET_MIN_GAIN
                if int(best[r, v]) == steps[r, v] and rising and round_ < BUDGET_EXTENSIONS:
                    every = REGIMES[r][3]
                    steps[r, v] = int(np.ceil(steps[r, v] * BUDGET_FACTOR / every)) * every
                    extend.append((r, v))
            pending = extend
        return {k: (steps[k], best[k]) for k in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/quality-study")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(hparams_lib.VARIANTS))
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--workers", type=int, default=2,
                        help="training processes (one TF thread each)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    regimes = [r for r in args.regimes.split(",") if r]
    for dataset in sorted({REGIMES[r][0] for r in regimes}):
        prepare(dataset)
    os.makedirs(args.work, exist_ok=True)
    study = Study(args.work, args.workers)
    chosen = study.tune(variants)
    seeds = list(range(args.seeds))
    steps = study.budgets(regimes, variants, seeds, chosen)
    study.test_many([(r, v, s, chosen[v], *steps[r, v]) for r in regimes for v in variants
                     for s in seeds])
    results: dict[str, dict] = {}
    for regime in regimes:
        for variant in variants:
            trained, step = steps[regime, variant]
            tests = [study.run(regime, variant, s, chosen[variant], trained)["curve"][step]["test"]
                     for s in seeds]
            results[f"{regime}/{variant}"] = {"step": int(step), "trained": trained,
                                              "tests": tests}
    sizes = {r: study.run(r, variants[0], 0, chosen[variants[0]])["sizes"] for r in regimes}
    values = _flatten(results, chosen, study.searches, variants, regimes, seeds, sizes)
    correlation = correlation_report.read(latest_artifact(
        DATASETS["ml1m"][0], nodes.CORRELATION, "correlation"))
    values["cfm_grouping_measure"] = correlation.get("measure", "nmi")
    values["cfm_groups_ml1m"] = "; ".join(f"{seed}: {'+'.join(group)}"
                                          for seed, group in correlation["groups"].items())
    write_results("quality", values, _markdown)
    _chart(values, variants, regimes)


def _flatten(results: dict, chosen: dict, searches: list, variants: list[str],
             regimes: list[str], seeds: list[int], sizes: dict) -> dict[str, object]:
    out: dict[str, object] = {"seeds": len(seeds), "validation_share": VALIDATION_SHARE,
                              "tuning_regime": TUNING_REGIME,
                              "tuning_seeds": len(TUNING_SEEDS),
                              "cold_item_percent": COLD_ITEM_PERCENT,
                              "budget_factor": BUDGET_FACTOR,
                              "budget_extensions": BUDGET_EXTENSIONS,
                              "budget_min_gain": BUDGET_MIN_GAIN}
    for regime in regimes:
        for name, size in sizes[regime].items():
            out[f"{regime}_{name}_pairs"] = size
        out[f"{regime}_max_steps"] = REGIMES[regime][2]
    for variant in variants:
        for k, v in chosen[variant].items():
            out[f"{variant}_chosen_{k}"] = v
    for regime in regimes:
        for variant in variants:
            cell = results[f"{regime}/{variant}"]
            out[f"{regime}_{variant}_train_steps"] = cell["step"]
            out[f"{regime}_{variant}_trained_steps"] = cell["trained"]
            for metric in cell["tests"][0]:
                if metric.endswith("_examples"):
                    continue
                xs = np.array([t[metric] for t in cell["tests"]], float)
                out[f"{regime}_{variant}_{metric}_mean"] = round(float(np.mean(xs)), 5)
                out[f"{regime}_{variant}_{metric}_std"] = round(float(np.std(xs, ddof=1)), 5)
        first = results[f"{regime}/{variants[0]}"]["tests"][0]
        for name in SLICES:
            out[f"{regime}_test_{name}_examples"] = first[f"{name}_examples"]
        if "baseline" in variants:
            for variant in variants:
                if variant == "baseline":
                    continue
                for name in SLICES:
                    for k in KS:
                        base = out[f"{regime}_baseline_{name}_recall_at_{k}_mean"]
                        mine = out[f"{regime}_{variant}_{name}_recall_at_{k}_mean"]
                        gain = f"{regime}_{variant}_vs_baseline_{name}_recall_at_{k}"
                        out[gain + "_relative_gain"] = round(mine / base - 1, 4) if base else None
    for i, s in enumerate(searches):
        prefix = f"search_{i:02d}"
        out[prefix + "_variant"] = s["variant"]
        out[prefix + "_parameter"] = s["parameter"]
        out[prefix + "_grid"] = s["grid"]
        out[prefix + "_validation_recall_at_50"] = s["scores"]
        out[prefix + "_chosen"] = s["chosen"]
        out[prefix + "_at_edge"] = s["at_edge"]
    return out


REGIME_TITLES = {
    "ml1m_full": "MovieLens-1M, full training data",
    "ml1m_10pct": "MovieLens-1M, 10% of the training data",
    "ml1m_cold_items": f"MovieLens-1M, {COLD_ITEM_PERCENT}% of the items held out (cold)",
    "synthetic_full": "Feature-rich synthetic benchmark, full training data",
    "synthetic_10pct": "Feature-rich synthetic benchmark, 10% of the training data",
}


def _markdown(values: dict[str, object]) -> str:
    regimes = [r for r in REGIMES if f"{r}_max_steps" in values]
    variants = [v for v in hparams_lib.VARIANTS
                if f"{regimes[0]}_{v}_overall_recall_at_50_mean" in values]
    measure = {"ami": "adjusted MI (chance-corrected)", "nmi": "plug-in NMI"}[
        values["cfm_grouping_measure"]]
    lines = [
        "# Quality: Trainer variants, tuned alike, on five regimes", "",
        f"Command: `{values['command']}`; {values['machine_cpus']} CPUs. Mean ± standard "
        f"deviation over {values['seeds']} seeds. Test = the pipeline's eval split, brute "
        "force over the whole catalog (the query's own item excluded). Slices follow the "
        "positive item's bucket (head = top 10% of items by training count, tail = the rest "
        "seen in training, cold = never in training).", "",
        "**Protocol.** Every model trains on its regime's training pairs minus a validation "
        f"share ({values['validation_share']:.0%}, seeded). Step budget, one rule for every "
        "variant: the checkpoint with the best seed-mean validation Recall@50. Settings are "
        f"chosen on `{values['tuning_regime']}`'s validation split, on the mean of "
        f"{values['tuning_seeds']} seeds: the baseline's temperature with and without logQ "
        "correction (the winner's temperature and logQ then apply to every variant's main "
        "loss); `fd`'s feature-dropout rate; `mns`'s temperature; for every SSL variant (the "
        "ablations of `cfm` included) its alpha (SSL temperature = main temperature), then "
        "its SSL temperature at that alpha. A grid won at an end is extended. The other "
        "regimes reuse these settings and choose only their step budget on their own "
        "validation split; a variant whose best checkpoint is its last and whose seed-mean "
        f"validation Recall@50 still rose by at least {values['budget_min_gain']} over the "
        f"last checkpoint interval is retrained with {values['budget_factor']}x the steps "
        f"(at most {values['budget_extensions']} times). "
        "Nothing is chosen on the test split.", "",
        f"CFM groups (MovieLens-1M) by **{measure}**: {values['cfm_groups_ml1m']}. `cfm` masks "
        "the seed + floor(k/2) features, `cfm_balanced` k // 2.", "",
        "## Chosen settings", "",
        "| variant | logQ | temperature | alpha | SSL temperature | feature-dropout rate |",
        "|---|---|---|---|---|---|"]
    for v in variants:
        cells = [values.get(f"{v}_chosen_{k}", "") for k in
                 ("logq_correction", "temperature", "alpha", "ssl_temperature",
                  "feature_dropout_rate")]
        lines.append(f"| {v} | " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    for regime in regimes:
        lines += [f"## {REGIME_TITLES[regime]} (`{regime}`)", "",
                  f"Training pairs {values[f'{regime}_train_pairs']}, validation "
                  f"{values[f'{regime}_validation_pairs']}, test {values[f'{regime}_test_pairs']}"
                  f"; starting budget {values[f'{regime}_max_steps']} steps. Steps: the "
                  "chosen checkpoint of the steps trained (\"(last)\": the best checkpoint is "
                  "the last one, with a gain over the one before below the extension "
                  "threshold, or after the last extension).", "",
                  "| method | steps | overall R@10 | overall R@50 | head R@50 | tail R@50 | "
                  "cold R@50 | vs baseline: overall / tail / cold R@50 |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in variants:
            steps = values[f"{regime}_{v}_train_steps"]
            trained = values[f"{regime}_{v}_trained_steps"]
            row = [f"{steps} of {trained}{' (last)' if steps == trained else ''}"]
            for name, k in (("overall", 10), ("overall", 50), ("head", 50), ("tail", 50),
                            ("cold", 50)):
                row.append(f"{values[f'{regime}_{v}_{name}_recall_at_{k}_mean']:.4f} ± "
                           f"{values[f'{regime}_{v}_{name}_recall_at_{k}_std']:.4f}")
            gains = [values.get(f"{regime}_{v}_vs_baseline_{s}_recall_at_50_relative_gain")
                     for s in ("overall", "tail", "cold")]
            row.append(" / ".join("" if v == "baseline" else
                                  ("n/a" if g is None else f"{g:+.1%}") for g in gains))
            lines.append(f"| {v} | " + " | ".join(row) + " |")
        lines += ["", "Test pairs by slice: " + ", ".join(
            f"{s} {values[f'{regime}_test_{s}_examples']}" for s in SLICES) + ".", ""]
    lines += ["## Validation searches (tuning regime, seed-mean Recall@50 at the best "
              "checkpoint)", "", "| variant | parameter | grid: score | chosen | at an end |",
              "|---|---|---|---|---|"]
    for key in sorted(k for k in values if k.startswith("search_") and k.endswith("_grid")):
        prefix = key[: -len("_grid")]
        pairs = ", ".join(f"{g:g}: {s:.4f}" for g, s in zip(
            values[key], values[prefix + "_validation_recall_at_50"]))
        lines.append(f"| {values[prefix + '_variant']} | {values[prefix + '_parameter']} | "
                     f"{pairs} | {values[prefix + '_chosen']} | "
                     f"{'yes' if values[prefix + '_at_edge'] else 'no'} |")
    lines += ["", "![Recall@50 by slice](quality.png)", ""]
    return "\n".join(lines)


def _chart(values: dict, variants: list[str], regimes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(regimes), 1, figsize=(12, 3.2 * len(regimes)))
    axes = np.atleast_1d(axes)
    width = 0.8 / len(variants)
    for ax, regime in zip(axes, regimes):
        for i, variant in enumerate(variants):
            means = [values[f"{regime}_{variant}_{s}_recall_at_50_mean"] for s in SLICES]
            stds = [values[f"{regime}_{variant}_{s}_recall_at_50_std"] for s in SLICES]
            ax.bar(np.arange(len(SLICES)) + i * width, means, width, yerr=stds, label=variant)
        ax.set_xticks(np.arange(len(SLICES)) + 0.4 - width / 2)
        ax.set_xticklabels(SLICES)
        ax.set_title(f"Recall@50, {regime}")
    axes[0].legend(fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "quality.png"), dpi=100)


if __name__ == "__main__":
    main()
