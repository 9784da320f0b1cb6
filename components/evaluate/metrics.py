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

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

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
      ks: every K of the evaluation (default ``(top_k,)``). Metrics given the
        same ``ks`` share one pass over each ranked list for all of them.
    """

    KIND = ""

    def __init__(self, top_k: int, name: Optional[str] = None,
                 prediction_class_key: str = sig.CLASSES,
                 ks: Optional[Sequence[int]] = None) -> None:
        ks = tuple(sorted({int(k) for k in ks})) if ks else (int(top_k),)
        if top_k not in ks:
            raise ValueError(f"{self.KIND}@{top_k}: top_k must be one of ks {ks}.")
        super().__init__(_computations, top_k=top_k, name=name or f"{self.KIND}@{top_k}",
                         prediction_class_key=prediction_class_key, kind=self.KIND, ks=ks)


class RecallAtK(_RankedListMetric):
    """Recall@K (TFMA metric); see the module docstring."""

    KIND = "recall"


class MeanAveragePrecisionAtK(_RankedListMetric):
    """MAP@K (TFMA metric); see the module docstring."""

    KIND = MAP_NAME


metric_types.register_metric(RecallAtK)
metric_types.register_metric(MeanAveragePrecisionAtK)


def _computations(top_k: int, name: str, kind: str, ks: Sequence[int],
                  prediction_class_key: str = sig.CLASSES,
                  eval_config: Any = None, model_names: Optional[List[str]] = None,
                  output_names: Optional[List[str]] = None,
                  example_weighted: bool = False, **_: Any
                  ) -> metric_types.MetricComputations:
    """The sums of :class:`_TopKSums` at every K of ``ks``, and this metric's ratio of two.

    Recall@K and MAP@K at every K of ``ks`` ask for the same sums
    computation (equal keys and combiner), which TFMA runs once per slice
    for all of them: one pass over each ranked list.
    """
    ks = tuple(ks)
    offset = 4 * ks.index(top_k)
    computations: metric_types.MetricComputations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            sums = metric_types.MetricKey(
                name=f"_top_{'_'.join(map(str, ks))}_{prediction_class_key}_sums",
                model_name=model_name, output_name=output_name,
                example_weighted=example_weighted)
            key = metric_types.MetricKey(name=name, model_name=model_name,
                                         output_name=output_name,
                                         example_weighted=example_weighted)
            numerator, denominator = _SUMS[kind]
            computations.append(metric_types.MetricComputation(
                keys=[sums], preprocessors=None,
                combiner=_TopKSums(sums, ks, prediction_class_key, example_weighted)))
            computations.append(metric_types.DerivedMetricComputation(
                keys=[key], result=_ratio(sums, key, (offset + numerator, offset + denominator))))
    return computations


#: Metric kind -> (numerator, denominator) positions in one K's block of :class:`_TopKSums`.
_SUMS = {RecallAtK.KIND: (0, 1), MeanAveragePrecisionAtK.KIND: (2, 3)}


def _ratio(sums: metric_types.MetricKey, key: metric_types.MetricKey,
           which: tuple[int, int]) -> Callable[[Dict[metric_types.MetricKey, Any]],
                                               Dict[metric_types.MetricKey, float]]:
    def ratio(metrics: Dict[metric_types.MetricKey, Any]) -> Dict[metric_types.MetricKey, float]:
        numerator, denominator = metrics[sums][which[0]], metrics[sums][which[1]]
        return {key: numerator / denominator if denominator else float("nan")}
    return ratio


def _wanted(positives: Iterable[Any]) -> tuple[set, int]:
    """The positives as a set matching ids given as bytes or str, and how many distinct."""
    plain = {_plain(p) for p in positives}
    return plain | {p.encode() for p in plain if isinstance(p, str)}, len(plain)


class _TopKSums(beam.CombineFn):
    """Weighted sums over examples with a positive, from each ranked list's hits in the top K.

    For each K of ``ks`` in turn, a block ``[hits, positives, sum of AP@K,
    examples]``: Recall@K is the block's first over its second, MAP@K its
    third over its fourth (:data:`_SUMS`).
    """

    def __init__(self, key: metric_types.MetricKey, ks: Sequence[int], class_key: str,
                 example_weighted: bool) -> None:
        self._key = key
        self._ks = tuple(ks)
        self._class_key = class_key
        self._example_weighted = example_weighted

    def create_accumulator(self) -> list[float]:
        return [0.0] * (4 * len(self._ks))

    def add_input(self, acc: list[float], element: metric_types.StandardMetricInputs
                  ) -> list[float]:
        labels = element.get_labels(self._key.model_name, self._key.output_name)
        if labels is None:
            return acc
        wanted, n_positives = _wanted(np.asarray(labels).reshape(-1).tolist())
        if not n_positives:
            return acc
        predictions = element.get_predictions(self._key.model_name, self._key.output_name)
        if not isinstance(predictions, dict) or self._class_key not in predictions:
            raise ValueError(f"Recall@K and MAP@K need a {self._class_key!r} prediction "
                             f"(ranked item ids); got {type(predictions).__name__}.")
        weight = 1.0
        if self._example_weighted:
            weights = element.get_example_weights(self._key.model_name, self._key.output_name)
            weight = float(np.asarray(weights).reshape(-1)[0]) if weights is not None else 1.0
        classes = np.asarray(predictions[self._class_key]).reshape(-1)[:self._ks[-1]].tolist()
        # Hit positions (0-based) in the longest list; each K reads its prefix.
        hit_at = [i for i, c in enumerate(classes) if c in wanted]
        for block, k in enumerate(self._ks):
            hits, precision_sum = 0, 0.0
            for i in hit_at:
                if i >= k:
                    break
                hits += 1
                precision_sum += hits / (i + 1)
            at = 4 * block
            acc[at] += weight * hits
            acc[at + 1] += weight * n_positives
            acc[at + 2] += weight * precision_sum / min(k, n_positives)
            acc[at + 3] += weight
        return acc

    def merge_accumulators(self, accumulators: Iterable[list[float]]) -> list[float]:
        total = self.create_accumulator()
        for acc in accumulators:
            for i, value in enumerate(acc):
                total[i] += value
        return total

    def extract_output(self, acc: list[float]) -> Dict[metric_types.MetricKey, list[float]]:
        return {self._key: acc}
