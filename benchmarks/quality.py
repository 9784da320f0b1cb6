"""Quality study: the Trainer's variants, each tuned on each of seven data regimes.

Reuses finished pipeline runs (joined examples, Transform graph and
FeatureCorrelation artefact) and trains with the Trainer's own code
(``components.trainer.run.train``), one model after another in each of
``--workers`` processes. Missing runs are prepared first with the project's
CLI (``benchmarks/quality_study/protocol.py: DATASETS``). The study's code
is the package ``benchmarks/quality_study``; every number of the protocol
is in its ``protocol`` module.

Protocol (also written to the results page):

* **Regimes**, run one after another (each tuned, budgeted and tested
  before the next): ``rich_full`` and ``rich_10pct`` (the long-tail rich
  catalog, ``pipeline/datasets/rich.py`` with ``long_tail``: 200,000 items
  whose ``creator`` and ``tags`` vocabularies grow with the catalog, 10% of
  the items held out as cold test items), ``ml1m_cold_items`` (MovieLens-1M
  with 10% of the catalog held out by a hash of the id), ``ml1m_full``,
  ``ml1m_10pct`` (a fixed uniform 10% of the training pairs),
  ``synthetic_full`` and ``synthetic_10pct`` (the feature-rich benchmark
  without the long tail).
* **Validation**, carved out of each regime's training pairs (seeded,
  after sorting the joined rows): every row of 5% of the items (uniform
  over items; validation's cold slice) and 10% of the other rows (its
  overall slice); at most 30,000 validation rows are scored. Validation's
  cold items never train, so their rows in the test split count as cold
  there too. The pipeline's eval split is the test
  split and chooses nothing.
* **Step budget** (one rule for every variant): each run trains its
  regime's step budget and is scored on validation at fixed checkpoints; a
  setting's score is the best, over checkpoints, of the seed-mean
  validation Recall@50 (the Evaluator's gate metric, overall), and the
  reported test numbers are those of that checkpoint. A variant whose best
  checkpoint is its last, and whose validation Recall@50 still rose by at
  least 0.002 over the last checkpoint interval, is retrained with 1.5x
  the steps (at most twice), so no variant is reported while it was still
  improving.
* **Tuning**, on each regime's own validation split (seeds 0 and 1,
  choices on their mean), logQ correction on for every variant: the
  baseline's temperature; ``fd``'s feature-dropout rate; ``mns``'s
  temperature; every SSL variant's SSL weight alpha (at SSL temperature =
  main temperature; the main temperature is the baseline's, or ``mns``'s
  for ``mns_cfm`` and ``mns_so``), then its SSL temperature at that alpha.
  A grid whose best value is at an end is extended (up to
  ``MAX_EXTENSIONS`` times per side).
* **Test**: every variant x 3 seeds, scored as the Evaluator scores: brute
  force over the whole catalog (the query's own item excluded), Recall@K
  and MAP@K (K = 10, 50), overall and by the positive item's bucket
  (head / tail / cold), with the product's metric code
  (``components/evaluate/metrics.py``; ``quality_study/scoring.py``).
* **Default variant**: the rule of ``quality_study/report.py:
  default_rule``, on validation scores only (cold-item validation
  Recall@50 at most 10% below the baseline's on ``ml1m_cold_items`` and
  ``rich_full``; then the best mean overall validation gain).

Finished runs are cached in ``--runs-file`` (by default
``benchmarks/results/quality_runs.json``, committed with the results: the
raw record behind every number, and a re-run continues from it); their
weights in ``<work>/weights``.

Environment: ``QUALITY_SMOKE=1`` checks this script end to end in minutes
instead of hours: every regime starts at 500 steps with a checkpoint every
250 (``protocol.smoke_regimes``); the protocol is otherwise unchanged. Its
numbers mean nothing, and it writes ``benchmarks/results/quality.*`` like
a real run: it keeps its runs in ``<work>/runs.json``; give it its own
``--work`` folder and restore the results
files afterwards (``git checkout benchmarks/results/quality.*``).

Run from the repository root: ``python benchmarks/quality.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from benchmarks.common import latest_artifact, write_results  # noqa: E402
from benchmarks.quality_study import protocol, report  # noqa: E402
from benchmarks.quality_study.data import prepare  # noqa: E402
from benchmarks.quality_study.runner import Study  # noqa: E402
from components.correlation import report as correlation_report  # noqa: E402
from pipeline import nodes  # noqa: E402
from pipeline.datasets import stats  # noqa: E402

SMOKE_ENV = "QUALITY_SMOKE"
#: The run cache of the real study, committed with its results.
RUNS_FILE = "benchmarks/results/quality_runs.json"
#: The variants the study trains by default: the baselines, the paper's
#: methods and the combined ones (the ablations of ``cfm`` on request).
STUDIED = ("baseline", "fd", "so", "mns", "rfm", "cfm", "mns_cfm", "mns_so")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/quality-study")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(STUDIED))
    parser.add_argument("--regimes", default=",".join(protocol.REGIMES))
    parser.add_argument("--runs-file", default=None,
                        help=f"the run cache (default {RUNS_FILE}; with {SMOKE_ENV}, "
                             "<work>/runs.json)")
    parser.add_argument("--workers", type=int, default=2,
                        help="training processes (one TF thread each)")
    return parser.parse_args()


def _cfm_groups() -> dict[str, object]:
    """How FeatureCorrelation grouped MovieLens-1M's features (the page names the groups)."""
    correlation = correlation_report.read(latest_artifact(
        protocol.DATASETS[protocol.ML1M].root, nodes.CORRELATION, "correlation"))
    return {"cfm_grouping_measure": correlation.get("measure", "nmi"),
            "cfm_groups_ml1m": "; ".join(f"{seed}: {'+'.join(group)}"
                                         for seed, group in correlation["groups"].items())}


def _long_tail() -> dict[str, float]:
    """The long-tail statistics of the rich generator's catalog and of MovieLens-1M."""
    out = {}
    for prefix, name in (("generator", protocol.RICH), ("movielens", protocol.ML1M)):
        for key, value in stats.of_spec(protocol.DATASETS[name].spec).items():
            out[f"{prefix}_{key}"] = round(value, 4)
    return out


def main() -> None:
    """Prepares the data; per regime tunes, fixes step budgets and tests; writes results."""
    args = _args()
    smoke = bool(os.environ.get(SMOKE_ENV))
    table = protocol.smoke_regimes() if smoke else protocol.REGIMES
    runs_file = args.runs_file or (os.path.join(args.work, "runs.json") if smoke else RUNS_FILE)
    variants = [v for v in args.variants.split(",") if v]
    regimes = [r for r in args.regimes.split(",") if r]
    # The page names MovieLens-1M's CFM groups and both catalogs' long-tail statistics.
    for dataset in sorted({table[r].dataset for r in regimes} | {protocol.ML1M, protocol.RICH}):
        prepare(dataset)
    os.makedirs(args.work, exist_ok=True)
    study = Study(args.work, args.workers, table, runs_file)
    seeds = list(range(args.seeds))
    chosen, results = {}, {}
    for regime in regimes:
        chosen[regime] = study.tune(regime, variants)
        steps = study.budgets([regime], variants, seeds, chosen)
        results.update(study.test_scores([regime], variants, seeds, chosen, steps))
    sizes = {r: study.run(r, variants[0], 0, chosen[r][variants[0]])["sizes"] for r in regimes}
    values = report.flatten(results, chosen, study.searches, variants,
                            {r: table[r] for r in regimes}, seeds, sizes)
    values.update(_cfm_groups())
    values.update(_long_tail())
    values.update(report.default_rule(values, variants, regimes))
    write_results(report.NAME, values, report.markdown)
    report.chart(values, variants, regimes)


if __name__ == "__main__":
    main()
