"""The study's runs: training and test workers, the run cache, searches and step budgets.

A run is one (regime, variant, seed, settings, step budget). Runs train in a
pool of worker processes with the Trainer's own code
(:func:`components.trainer.run.train`) and are cached in a JSON file (key:
:meth:`Study.key`; by default ``benchmarks/results/quality_runs.json``, kept
in the repository), so a re-run continues, on this machine or another. A
run's weights stay in ``<work>/weights``: a run whose weights are gone when
its test scores are due is trained again first.
Each run's record: its validation scores by checkpoint step (``curve``), the
test scores at the checkpoint the step rule picks (added to that
checkpoint's entry), the regime's split sizes, steps and seconds.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from benchmarks.quality_study import protocol
from benchmarks.quality_study.data import Regime
from components.trainer import hparams as hparams_lib
from components.trainer.run import build_model, train, training_input

VALIDATION, TEST = "validation", "test"
#: (regime, variant, seed, settings, step budget or None: the regime's starting one).
Job = tuple[str, str, int, dict, Optional[int]]


class Checkpoints(tf_keras.callbacks.Callback):
    """Scores validation at the regime's checkpoint steps and saves the weights there.

    The test split is scored later, only at the checkpoint the step rule
    picks (:func:`test_one`).
    """

    def __init__(self, regime: Regime, every: int, weights_dir: str) -> None:
        super().__init__()
        self.regime, self.every, self.weights_dir, self.curve = regime, every, weights_dir, {}

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        step = (epoch + 1) * protocol.STEPS_PER_EPOCH
        if step % self.every == 0:
            self.curve[str(step)] = {VALIDATION: self.regime.validation.score(self.model)}
            os.makedirs(self.weights_dir, exist_ok=True)
            np.savez(os.path.join(self.weights_dir, f"{step}.npz"), *self.model.get_weights())


_WORKER_REGIMES: dict[str, Regime] = {}


def _worker_init() -> None:
    """One TF thread per worker: two single-threaded workers out-run one two-threaded."""
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _regime(work: str, name: str, spec: protocol.RegimeSpec) -> Regime:
    if name not in _WORKER_REGIMES:
        _WORKER_REGIMES.clear()          # one regime's data in memory at a time
        _WORKER_REGIMES[name] = Regime(name, spec, work)
    return _WORKER_REGIMES[name]


def _params(variant: str, seed: int, hp: dict, steps: int) -> hparams_lib.HParams:
    return hparams_lib.from_dict({"variant": variant, "seed": seed, "train_steps": steps,
                                  "steps_per_epoch": protocol.STEPS_PER_EPOCH, **hp})


def _weights_dir(work: str, key: str) -> str:
    return os.path.join(work, "weights", key.replace("/", "_"))


def _weights_file(work: str, key: str, step: str) -> str:
    return os.path.join(_weights_dir(work, key), f"{step}.npz")


def train_one(work: str, key: str, regime: str, spec: protocol.RegimeSpec, variant: str,
              seed: int, hp: dict, steps: int) -> dict:
    """One run in a worker process: its validation curve (weights saved per checkpoint)."""
    r = _regime(work, regime, spec)
    tf_keras.backend.clear_session()
    checkpoints = Checkpoints(r, spec.every, _weights_dir(work, key))
    start = time.perf_counter()
    log_dir = os.path.join(work, "logs", key.replace("/", "_"))
    train(r.spec, _params(variant, seed, hp, steps), r.transform_dir, r.train_dir,
          r.catalog_dir, log_dir, r.correlation, callbacks=[checkpoints])
    shutil.rmtree(log_dir, ignore_errors=True)
    return {"curve": checkpoints.curve, "sizes": r.sizes, "steps": steps,
            "seconds": round(time.perf_counter() - start, 1)}


def test_one(work: str, key: str, regime: str, spec: protocol.RegimeSpec, variant: str,
             seed: int, hp: dict, steps: int, step: str, validation: float) -> dict:
    """Test scores of a run's saved checkpoint ``step``, in a worker process.

    Raises:
      RuntimeError: the rebuilt model does not reproduce ``validation``, the
        selection metric recorded at that checkpoint (the weights were not
        restored).
    """
    r = _regime(work, regime, spec)
    tf_keras.backend.clear_session()
    params = _params(variant, seed, hp, steps)
    tft_out = tft.TFTransformOutput(r.transform_dir)
    _, sampling = training_input(r.spec, params, tft_out, r.train_dir, r.catalog_dir, 1)
    model = build_model(r.spec, params, tft_out, r.correlation, sampling)
    model.item_embedding({k: v[:2] for k, v in r.test.catalog.features.items()})
    model.query_embedding({k: v[:2] for k, v in r.test.queries.items()})
    saved = np.load(_weights_file(work, key, step))
    model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    check = r.validation.score(model)[protocol.SELECTION_METRIC]
    if abs(check - validation) > 1e-6:
        raise RuntimeError(f"restored weights of {key} at step {step} give validation "
                           f"{protocol.SELECTION_METRIC} {check}, not {validation}; expected "
                           "the weights saved at that checkpoint: delete the run's weights "
                           "and its entry in the run cache to retrain it.")
    return r.test.score(model)


class Study:
    """Runs (cached in ``runs_file``, trained by a pool of worker processes) and
    the choices made from them.

    Attributes:
      runs: run key -> run record (the cache).
      searches: every finished grid search, in order (see :meth:`search`).
    """

    def __init__(self, work: str, workers: int,
                 regimes: Mapping[str, protocol.RegimeSpec], runs_file: str) -> None:
        self.work, self.regimes, self.path = work, dict(regimes), runs_file
        self.runs: dict[str, dict] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.runs = json.load(f)
        self.searches: list[dict] = []
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"          # the workers' NumPy too
        self.pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)

    def steps(self, regime: str, steps: Optional[int]) -> int:
        """``steps``, or the regime's starting step budget when None."""
        return self.regimes[regime].start_steps if steps is None else steps

    def key(self, regime: str, variant: str, seed: int, hp: dict,
            steps: Optional[int] = None) -> str:
        """A run's cache key; the step budget is named only when it is not the regime's first."""
        extra = [] if self.steps(regime, steps) == self.regimes[regime].start_steps else [
            f"steps={steps}"]
        return "/".join([regime, variant, f"seed{seed}",
                         *(f"{k}={hp[k]:g}" if isinstance(hp[k], float) else f"{k}={hp[k]}"
                           for k in sorted(hp)), *extra])

    def _submit(self, fn: Callable[..., dict], job: Job, *args: object
                ) -> concurrent.futures.Future:
        regime, variant, seed, hp, steps = job
        return self.pool.submit(fn, self.work, self.key(*job), regime, self.regimes[regime],
                                variant, seed, hp, self.steps(regime, steps), *args)

    def run_many(self, jobs: list[Job]) -> None:
        """Trains every job not yet cached, in parallel; saves after each."""
        todo: dict[concurrent.futures.Future, tuple[str, Job]] = {}
        submitted = set()
        for job in jobs:
            key = self.key(*job)
            if key not in self.runs and key not in submitted:
                submitted.add(key)
                todo[self._submit(train_one, job)] = (key, job)
        for future in concurrent.futures.as_completed(todo):
            key, job = todo[future]
            self.runs[key] = run = future.result()
            self._save()
            last, budget = max(map(int, run["curve"])), self.steps(job[0], job[4])
            if last != budget:
                raise RuntimeError(f"{key}: its last checkpoint is step {last}, expected its "
                                   f"step budget {budget}; the budget must be a multiple of "
                                   "the regime's checkpoint interval and of STEPS_PER_EPOCH.")
            best = max(c[VALIDATION][protocol.SELECTION_METRIC] for c in run["curve"].values())
            print(f"[quality] {key}: best validation {protocol.SELECTION_METRIC} {best:.4f} "
                  f"({run['seconds']} s)", flush=True)

    def run(self, regime: str, variant: str, seed: int, hp: dict,
            steps: Optional[int] = None) -> dict:
        """The record of one run, trained first if it is not cached."""
        self.run_many([(regime, variant, seed, hp, steps)])
        return self.runs[self.key(regime, variant, seed, hp, steps)]

    def test_many(self, jobs: list[tuple[str, str, int, dict, int, str]]) -> None:
        """Scores the test split at each job's checkpoint (cached in the run's curve).

        The cache is saved after each score, so a stopped study keeps them.

        A job: (regime, variant, seed, settings, step budget, checkpoint step).
        """
        lost = [job[:5] for job in jobs if not os.path.exists(
            _weights_file(self.work, self.key(*job[:5]), job[5]))]
        for job in lost:
            print(f"[quality] {self.key(*job)}: its weights are gone; training it again",
                  flush=True)
            self.runs.pop(self.key(*job), None)
        self.run_many(lost)
        todo = {}
        for regime, variant, seed, hp, steps, step in jobs:
            job = (regime, variant, seed, hp, steps)
            point = self.runs[self.key(*job)]["curve"][step]
            if TEST not in point:
                todo[self._submit(test_one, job, step,
                                  point[VALIDATION][protocol.SELECTION_METRIC])] = point
        for future in concurrent.futures.as_completed(todo):
            todo[future][TEST] = future.result()
            self._save()

    def _save(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.runs, f, sort_keys=True, indent=1)
        os.replace(self.path + ".tmp", self.path)

    def curve(self, regime: str, variant: str, seeds: Sequence[int], hp: dict,
              steps: Optional[int] = None) -> dict[str, float]:
        """Seed-mean validation selection metric by checkpoint step, in step order."""
        curves = [self.run(regime, variant, s, hp, steps)["curve"] for s in seeds]
        return {step: float(np.mean([c[step][VALIDATION][protocol.SELECTION_METRIC]
                                     for c in curves])) for step in sorted(curves[0], key=int)}

    def budget(self, regime: str, variant: str, seeds: Sequence[int], hp: dict,
               steps: Optional[int] = None) -> tuple[str, float]:
        """The checkpoint with the best seed-mean validation score, and that score."""
        means = self.curve(regime, variant, seeds, hp, steps)
        step = max(means, key=lambda s: (means[s], -int(s)))
        return step, means[step]

    def search(self, regime: str, variant: str, name: str, fixed: dict) -> object:
        """The value of ``name`` with the best tuning score; extends a grid won at an end."""
        factor = protocol.GRIDS[name][1]
        grid = grid_values(name, fixed)
        extended = {"low": 0, "high": 0}
        while True:
            self.run_many([(regime, variant, seed, {**fixed, name: v}, None)
                           for v in grid for seed in protocol.TUNING_SEEDS])
            scores = [self.budget(regime, variant, protocol.TUNING_SEEDS,
                                  {**fixed, name: v})[1] for v in grid]
            i = int(np.argmax(scores))
            if factor and i == 0 and extended["low"] < protocol.MAX_EXTENSIONS:
                grid.insert(0, round(grid[0] / factor, 6))
                extended["low"] += 1
            elif (factor and i == len(grid) - 1 and extended["high"] < protocol.MAX_EXTENSIONS
                  and grid[-1] * factor < 0.95):
                grid.append(round(grid[-1] * factor, 6))
                extended["high"] += 1
            else:
                self.searches.append({"regime": regime, "variant": variant, "parameter": name,
                                      "grid": grid, "scores": [round(s, 5) for s in scores],
                                      "chosen": grid[i], "fixed": dict(fixed),
                                      "at_edge": i in (0, len(grid) - 1)})
                return grid[i]

    def _searches(self, regime: str, phase: dict[str, tuple[str, dict]]) -> dict[str, object]:
        """Runs several searches: their starting grids at once (the workers stay busy)."""
        self.run_many([job for v, (name, fixed) in phase.items()
                       for job in grid_jobs(regime, v, name, fixed)])
        return {v: self.search(regime, v, name, fixed) for v, (name, fixed) in phase.items()}

    def tune(self, regime: str, variants: list[str]) -> dict[str, dict]:
        """Every variant's settings, chosen on ``regime``'s own validation split.

        The baseline's temperature first (logQ ``LOGQ_CORRECTION``); then
        ``fd``'s dropout rate, ``mns``'s temperature and, at the baseline's
        temperature, each SSL variant's alpha (SSL temperature = main
        temperature); then the alpha of the SSL variants with extra negatives,
        at ``mns``'s temperature; then every SSL variant's SSL temperature at
        its alpha.
        """
        logq = {"logq_correction": protocol.LOGQ_CORRECTION}
        base = protocol.BASELINE
        main = {**logq, "temperature": self._searches(
            regime, {base: ("temperature", logq)})[base]}
        ssl_at = lambda hp: {**hp, "ssl_temperature": hp["temperature"]}  # noqa: E731
        first = {"fd": ("feature_dropout_rate", main),
                 protocol.NEGATIVES: ("temperature", logq),
                 **{v: ("alpha", ssl_at(main)) for v in protocol.SSL_VARIANTS
                    if v not in protocol.WITH_NEGATIVES}}
        combined = [v for v in variants if v in protocol.WITH_NEGATIVES]
        needed = [*variants, *([protocol.NEGATIVES] if combined else [])]
        first = {v: first[v] for v in needed if v in first}
        chosen = {v: dict(main) for v in needed}
        for v, value in self._searches(regime, first).items():
            chosen[v] = {**first[v][1], first[v][0]: value}
        if combined:
            negatives = {**logq, "temperature": chosen[protocol.NEGATIVES]["temperature"]}
            second = {v: ("alpha", ssl_at(negatives)) for v in combined}
            for v, value in self._searches(regime, second).items():
                chosen[v] = {**second[v][1], "alpha": value}
        ssl = {v: ("ssl_temperature", chosen[v]) for v in variants
               if v in protocol.SSL_VARIANTS}
        for v, value in self._searches(regime, ssl).items():
            chosen[v] = {**chosen[v], "ssl_temperature": value}
        return {v: chosen[v] for v in variants}

    def budgets(self, regimes: list[str], variants: list[str], seeds: list[int],
                chosen: dict) -> dict[tuple[str, str], tuple[int, str]]:
        """(steps trained, best checkpoint) per regime and variant, by one rule.

        ``chosen``: regime -> variant -> settings (:meth:`tune`).

        Every variant starts at its regime's step budget; one whose best
        seed-mean validation checkpoint is its last, and which gained at
        least BUDGET_MIN_GAIN over the last checkpoint interval, is retrained
        with BUDGET_FACTOR times the steps, at most BUDGET_EXTENSIONS times.
        """
        steps = {(r, v): self.regimes[r].start_steps for r in regimes for v in variants}
        best: dict[tuple[str, str], str] = {}
        pending = list(steps)
        for round_ in range(protocol.BUDGET_EXTENSIONS + 1):
            self.run_many([(r, v, s, chosen[r][v], steps[r, v]) for r, v in pending
                           for s in seeds])
            extend = []
            for r, v in pending:
                means = list(self.curve(r, v, seeds, chosen[r][v], steps[r, v]).values())
                best[r, v] = self.budget(r, v, seeds, chosen[r][v], steps[r, v])[0]
                rising = len(means) > 1 and means[-1] - means[-2] >= protocol.BUDGET_MIN_GAIN
                if (int(best[r, v]) == steps[r, v] and rising
                        and round_ < protocol.BUDGET_EXTENSIONS):
                    every = self.regimes[r].every
                    steps[r, v] = int(np.ceil(steps[r, v] * protocol.BUDGET_FACTOR / every)) * every
                    extend.append((r, v))
            pending = extend
        return {k: (steps[k], best[k]) for k in steps}

    def test_scores(self, regimes: list[str], variants: list[str], seeds: list[int],
                    chosen: dict, steps: dict[tuple[str, str], tuple[int, str]]
                    ) -> dict[str, dict]:
        """``regime/variant`` -> the chosen checkpoint, steps trained, and the test and
        validation scores there by seed (``chosen``: as :meth:`budgets`).

        Scores the test split where it is not cached yet.
        """
        self.test_many([(r, v, s, chosen[r][v], *steps[r, v]) for r in regimes
                        for v in variants for s in seeds])
        results = {}
        for r in regimes:
            for v in variants:
                trained, step = steps[r, v]
                points = [self.run(r, v, s, chosen[r][v], trained)["curve"][step]
                          for s in seeds]
                results[f"{r}/{v}"] = {"step": int(step), "trained": trained,
                                       "tests": [p[TEST] for p in points],
                                       "validations": [p[VALIDATION] for p in points]}
        return results


def grid_values(name: str, fixed: dict) -> list[float]:
    """The starting grid of parameter ``name`` (relative ones scaled by ``fixed``)."""
    scale = fixed[protocol.RELATIVE[name]] if name in protocol.RELATIVE else 1.0
    return [round(v * scale, 6) for v in protocol.GRIDS[name][0]]


def grid_jobs(regime: str, variant: str, name: str, fixed: dict) -> list[Job]:
    """The tuning runs of ``name``'s starting grid for ``variant`` on ``regime``."""
    return [(regime, variant, seed, {**fixed, name: v}, None)
            for v in grid_values(name, fixed) for seed in protocol.TUNING_SEEDS]
