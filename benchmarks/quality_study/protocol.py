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
RICH, RICH_COLD = "rich", "rich_cold"
#: The long-tail catalog's size (``pipeline/datasets/rich.py``, ``long_tail``).
RICH_ITEMS, RICH_PAIRS = 200_000, 1_000_000


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
    RICH: Dataset("runs/rich-long-tail", "data/rich-long-tail/dataset.yaml", (
        ("synthetic", "--rich", "--long-tail", "--out", "data/rich-long-tail",
         "--items", str(RICH_ITEMS), "--pairs", str(RICH_PAIRS)),)),
    RICH_COLD: Dataset("runs/rich-long-tail-cold", "data/rich-long-tail/dataset-cold.yaml", (
        ("run", "--dataset", "data/rich-long-tail/dataset-cold.yaml",
         "--run-root", "runs/rich-long-tail-cold", "--data-only"),)),
}
#: The dataset whose spec, with COLD_ITEM_PERCENT of the items held out, is the key's.
COLD_SOURCE = {ML1M_COLD: ML1M, RICH_COLD: RICH}


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


#: In the order the study runs them: each regime is tuned, budgeted and
#: tested before the next starts (the run cache keeps every finished run).
#: A starting budget is where the baseline's validation curve flattens, so
#: that tuning compares converged models: ``rich_full``'s baseline
#: (temperature 0.05, 2 seeds, 8,000 steps) scored Recall@50 0.383, 0.450,
#: 0.459, 0.465, 0.450, 0.485, 0.487, 0.485 at every 1,000 steps; at 2,000
#: steps it was still rising by 0.03 per 500. ``rich_10pct``'s peaks early
#: and then overfits: 0.347, 0.380, 0.379, 0.356, 0.316 at every 250 steps.
REGIMES = {
    "rich_full": RegimeSpec(RICH_COLD, 1.0, 6000, 1500),
    "ml1m_cold_items": RegimeSpec(ML1M_COLD, 1.0, 3000, 500),
    "rich_10pct": RegimeSpec(RICH_COLD, 0.1, 750, 125),
    "ml1m_full": RegimeSpec(ML1M, 1.0, 3000, 500),
    "ml1m_10pct": RegimeSpec(ML1M, 0.1, 1500, 250),
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
TUNING_SEEDS = (0, 1)
BASELINE = "baseline"
#: The main loss's logQ correction, for every variant: standard practice for
#: in-batch negatives (it won on ``ml1m_full``'s validation in the study's
#: earlier protocol, which also searched it).
LOGQ_CORRECTION = True
SSL_VARIANTS = tuple(v for v, f in hparams_lib.VARIANTS.items() if f.ssl_loss)
#: Variants whose main loss has the uniform extra negatives: their main
#: temperature is ``mns``'s, chosen on the same regime.
NEGATIVES = "mns"
WITH_NEGATIVES = tuple(v for v, f in hparams_lib.VARIANTS.items()
                       if f.extra_negatives and v != NEGATIVES)
#: parameter -> (starting grid, factor of one extension step). The SSL
#: temperature's grid is relative: times the chosen main temperature. The
#: starting grids are centred on the earlier protocol's choices.
GRIDS = {"temperature": ((0.025, 0.05, 0.1), 2.0),
         "alpha": ((0.03, 0.1, 0.3), 3.0),
         "ssl_temperature": ((0.5, 1.0, 2.0), 2.0),
         "feature_dropout_rate": ((0.0125, 0.025, 0.05), 2.0)}
RELATIVE = {"ssl_temperature": "temperature"}
#: Extensions of a grid per side. Three: on ``rich_full`` two were not enough
#: for ``mns``'s temperature (0.1 -> 0.00625, validation Recall@50 still
#: rising at the low end; 0.003125 then scored below 0.00625), and a
#: baseline tuned at the edge of its grid is not a fair one.
MAX_EXTENSIONS = 3
VALIDATION_SHARE = 0.1
#: Percent of the items of a regime's training rows held out of training
#: with all their rows, as validation's cold slice (uniform over items).
VALIDATION_COLD_ITEM_PERCENT = 5
#: At most this many validation rows are scored (a seeded uniform draw).
VALIDATION_MAX_PAIRS = 30_000
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
#: The default-variant rule: the best mean overall validation gain over the
#: baseline (Recall@K of the gate) across the regimes, among the variants
#: whose cold-slice validation Recall@K is at most COLD_MAX_LOSS below the
#: baseline's on every regime of COLD_GUARD_REGIMES.
COLD_GUARD_REGIMES = ("ml1m_cold_items", "rich_full")
COLD_MAX_LOSS = 0.10


def score_key(slice_name: str, metric: str) -> str:
    """Key of one slice's metric in a score (``tail_recall_at_50``, ``cold_examples``)."""
    return f"{slice_name}_{metric}"
