"""The study's protocol: datasets, regimes, step-budget rule, tuning grids, selection metric.

Every number the protocol fixes is here; the entry point's docstring
(``benchmarks/quality.py``) states the protocol in words.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

from components.evaluate.config import GATE_METRIC, KS, metric_name
from components.evaluate.metrics import RecallAtK
from components.evaluate.report import OVERALL
from components.trainer import hparams as hparams_lib
from transforms import features

COLD_ITEM_PERCENT = 10
ML1M, ML1M_COLD, SYNTHETIC = "ml1m", "ml1m_cold", "synthetic"


class Dataset(NamedTuple):
    """A pipeline run the study reads, and the CLI commands that prepare it.

    Attributes:
      root: the run root (``--run-root``).
      spec: the dataset spec's path.
      commands: ``python -m pipeline`` argument lists, run in order.
    """

    root: str
    spec: str
    commands: tuple[tuple[str, ...], ...]


DATASETS = {
    ML1M: Dataset("runs/movielens-1m", "data/movielens-1m/dataset.yaml", (
        ("movielens", "--out", "data/movielens-1m", "--cache", "data/cache"),
        ("run", "--dataset", "data/movielens-1m/dataset.yaml",
         "--run-root", "runs/movielens-1m", "--data-only"))),
    ML1M_COLD: Dataset("runs/movielens-1m-cold", "data/movielens-1m/dataset-cold.yaml", (
        ("run", "--dataset", "data/movielens-1m/dataset-cold.yaml",
         "--run-root", "runs/movielens-1m-cold", "--data-only"),)),
    SYNTHETIC: Dataset("runs/rich", "data/rich/dataset.yaml", (
        ("synthetic", "--rich", "--out", "data/rich", "--items", "20000", "--pairs", "400000"),
        ("run", "--dataset", "data/rich/dataset.yaml", "--run-root", "runs/rich",
         "--data-only"))),
}
#: The dataset whose spec, with COLD_ITEM_PERCENT of the items held out, is ML1M_COLD's.
COLD_SOURCE = {ML1M_COLD: ML1M}


class RegimeSpec(NamedTuple):
    """One data regime.

    Attributes:
      dataset: a key of :data:`DATASETS`.
      share: share of the training pairs kept (seeded, uniform).
      start_steps: the starting step budget.
      every: steps between validation checkpoints.
    """

    dataset: str
    share: float
    start_steps: int
    every: int


REGIMES = {
    "ml1m_full": RegimeSpec(ML1M, 1.0, 3000, 500),
    "ml1m_10pct": RegimeSpec(ML1M, 0.1, 1500, 250),
    "ml1m_cold_items": RegimeSpec(ML1M_COLD, 1.0, 3000, 500),
    "synthetic_full": RegimeSpec(SYNTHETIC, 1.0, 2000, 250),
    "synthetic_10pct": RegimeSpec(SYNTHETIC, 0.1, 500, 125),
}
#: ``QUALITY_SMOKE``'s starting budget and checkpoint interval, for every regime.
SMOKE_STEPS, SMOKE_EVERY = 500, 250


def smoke_regimes(regimes: Mapping[str, RegimeSpec] = REGIMES) -> dict[str, RegimeSpec]:
    """``regimes`` with the smoke run's short step budget (a check of the study's code)."""
    return {name: r._replace(start_steps=SMOKE_STEPS, every=SMOKE_EVERY)
            for name, r in regimes.items()}


#: A budget whose best checkpoint is its last, and whose seed-mean
#: validation score still rose by at least BUDGET_MIN_GAIN over the last
#: checkpoint interval, is retrained with BUDGET_FACTOR times the steps, at
#: most BUDGET_EXTENSIONS times.
BUDGET_FACTOR = 1.5
BUDGET_EXTENSIONS = 2
BUDGET_MIN_GAIN = 0.002
TUNING_REGIME = "ml1m_full"
TUNING_SEEDS = (0, 1)
BASELINE = "baseline"
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

#: The slices every score has: overall, then the positive item's bucket.
SLICES = (OVERALL, *features.BUCKETS)
#: The K of the Evaluator's gate metric (Recall@K), one of ``KS``.
GATE_K = next(k for k in KS if metric_name(RecallAtK.KIND, k) == GATE_METRIC)
#: What every choice of the study maximizes (seed-mean, on validation):
#: the Evaluator's gate metric on the overall slice.
SELECTION_METRIC = f"{OVERALL}_{GATE_METRIC}"
EXAMPLES = "examples"


def score_key(slice_name: str, metric: str) -> str:
    """Key of one slice's metric in a score (``tail_recall_at_50``, ``cold_examples``)."""
    return f"{slice_name}_{metric}"
