"""Retrieval metrics: MAP@K for TFMA, and NumPy references for every metric.

Each evaluation example is one (query, positive items) pair. The model's
``evaluate`` signature returns ``classes`` (the top-K item ids over the whole
catalog, best first) and ``scores``; the label is the set of positive ids.

* Recall@K (:class:`RecallAtK`): positives found in the top K over all
  positives, micro-averaged over examples (one positive per example: the
  hit rate). TFMA's stock ``SetMatchRecall(top_k=K)`` defines the same
  quantity, but in TFMA 0.47.1 its per-slice values disagree with a hand
  calculation (the overall value agrees), so the project ships its own.
* MAP@K (:class:`MeanAveragePrecisionAtK`): per example
  ``AP@K = sum_{i<=K, class_i positive} precision@i / min(K, |positives|)``,
  averaged over examples with at least one positive (weighted by example
  weight if the metric spec asks for it). With one positive at 1-based rank
  r this is ``1/r`` if ``r <= K`` else 0.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types

from serving import signatures as sig

MAP_NAME = "map"


def average_precision_at_k(classes: np.ndarray, positives: Iterable[Any], k: int) -> float:
    """AP@K of one ranked list ``classes`` against the set ``positives``."""
    positives = {_plain(p) for p in positives}
    if not positives:
        return float("nan")
    hits, total = 0, 0.0
    for i, c in enumerate(list(classes)[:k]):
        if _plain(c) in positives:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(positives))


def _plain(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def positive_ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """0-based rank of each row's positive column among that row's scores.

    ``scores`` [Q, N], ``positive`` [Q] column indices. Ties rank the
    positive after every equal-scored item (pessimistic).
    """
    own = scores[np.arange(len(positive)), positive][:, None]
    return np.sum(scores >= own, axis=1) - 1


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of examples whose single positive is in the top ``k``."""
    return float(np.mean(ranks < k)) if len(ranks) else float("nan")


def map_at_k(ranks: np.ndarray, k: int) -> float:
    """MAP@K with one positive per example: mean of ``1/rank`` inside the top ``k``."""
    if not len(ranks):
        return float("nan")
    return float(np.mean(np.where(ranks < k, 1.0 / (ranks + 1), 0.0)))


class _RankedListMetric(metric_types.Metric):
    """A metric of set-valued labels against ranked ``classes`` predictions.

    Args:
      top_k: K.
      name: metric name (default ``<kind>@<K>``).
      prediction_class_key: key of the ranked ids in the prediction dict.
    """

    KIND = ""

    def __init__(self, top_k: int, name: Optional[str] = None,
                 prediction_class_key: str = sig.CLASSES) -> None:
        super().__init__(_computations, top_k=top_k, name=name or f"{self.KIND}@{top_k}",
                         prediction_class_key=prediction_class_key, kind=self.KIND)


class RecallAtK(_RankedListMetric):
    """Recall@K (TFMA metric); see the module docstring."""

    KIND = "recall"


class MeanAveragePrecisionAtK(_RankedListMetric):
    """MAP@K (TFMA metric); see the module docstring."""

    KIND = MAP_NAME


metric_types.register_metric(RecallAtK)
metric_types.register_metric(MeanAveragePrecisionAtK)


def _computations(top_k: int, name: str, kind: str, prediction_class_key: str = sig.CLASSES,
                  eval_config: Any = None, model_names: Optional[List[str]] = None,
                  output_names: Optional[List[str]] = None,
                  example_weighted: bool = False, **_: Any
                  ) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name,
                                         output_name=output_name,
                                         example_weighted=example_weighted)
            computations.append(metric_types.MetricComputation(
                keys=[key], preprocessors=None,
                combiner=_TopKCombiner(key, kind, top_k, prediction_class_key,
                                       example_weighted)))
    return computations


class _TopKCombiner(beam.CombineFn):
    """Sums weighted numerators (AP@K, or hits) and denominators (examples, or positives)."""

    def __init__(self, key: metric_types.MetricKey, kind: str, top_k: int, class_key: str,
                 example_weighted: bool) -> None:
        self._key = key
        self._kind = kind
        self._top_k = top_k
        self._class_key = class_key
        self._example_weighted = example_weighted

    def create_accumulator(self) -> list[float]:
        return [0.0, 0.0]

    def add_input(self, acc: list[float], element: metric_types.StandardMetricInputs
                  ) -> list[float]:
        labels = element.get_labels(self._key.model_name, self._key.output_name)
        predictions = element.get_predictions(self._key.model_name, self._key.output_name)
        if not isinstance(predictions, dict) or self._class_key not in predictions:
            raise ValueError(f"{self._key.name}: predictions need a {self._class_key!r} "
                             f"entry (ranked item ids); got {type(predictions).__name__}.")
        positives = [] if labels is None else np.asarray(labels).reshape(-1).tolist()
        if not positives:
            return acc
        weight = 1.0
        if self._example_weighted:
            weights = element.get_example_weights(self._key.model_name, self._key.output_name)
            weight = float(np.asarray(weights).reshape(-1)[0]) if weights is not None else 1.0
        classes = np.asarray(predictions[self._class_key]).reshape(-1)
        if self._kind == MAP_NAME:
            acc[0] += weight * average_precision_at_k(classes, positives, self._top_k)
            acc[1] += weight
        else:
            wanted = {_plain(p) for p in positives}
            acc[0] += weight * len(wanted & {_plain(c) for c in classes[: self._top_k]})
            acc[1] += weight * len(wanted)
        return acc

    def merge_accumulators(self, accumulators: Iterable[list[float]]) -> list[float]:
        total = [0.0, 0.0]
        for acc in accumulators:
            total[0] += acc[0]
            total[1] += acc[1]
        return total

    def extract_output(self, acc: list[float]) -> Dict[metric_types.MetricKey, float]:
        return {self._key: acc[0] / acc[1] if acc[1] else float("nan")}

