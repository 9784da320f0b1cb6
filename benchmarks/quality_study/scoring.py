"""A split's queries against the whole catalog: ranked and sliced with the product's code.

What the Evaluator measures, computed on a model in memory: cosine scores
over every catalog item (:func:`components.index.search.normalize`), the
query's own item left out when the query carries its item id (the
IndexBuilder's rule, matched by raw id as its exports match it), the
positive item's rank (:func:`components.evaluate.metrics.positive_ranks`:
ties rank the positive after every equal-scored item), and Recall@K and
MAP@K for ``KS`` (:func:`~components.evaluate.metrics.recall_at_k`,
:func:`~components.evaluate.metrics.map_at_k`), overall and by the
positive item's bucket.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from benchmarks.quality_study import protocol
from components import tfrecords
from components.evaluate.config import KS, metric_name
from components.evaluate.metrics import (
    MeanAveragePrecisionAtK,
    RecallAtK,
    map_at_k,
    positive_ranks,
    recall_at_k,
)
from components.evaluate.report import OVERALL
from components.index.search import SCORE_BLOCK, normalize
from components.trainer import data
from transforms import features
from transforms.spec import DatasetSpec

#: Metric kind -> its NumPy computation from the positives' ranks.
METRICS: dict[str, Callable[[np.ndarray, int], float]] = {
    RecallAtK.KIND: recall_at_k, MeanAveragePrecisionAtK.KIND: map_at_k}
EMBED_BATCH = 16384


def own_item_key(spec: DatasetSpec) -> Optional[str]:
    """The query's own-item key the IndexBuilder's exports exclude, or None.

    As ``components/index/executor.py`` decides it: the query's item id, when
    the query tower sees the item id (item-to-item retrieval).
    """
    return features.query_key(spec.item_id) if spec.item_id in spec.query_item_features else None


def _raw_rows(records: np.ndarray, columns: list[str]) -> list[dict[str, list[Any]]]:
    return [tfrecords.example_to_dict(r, columns) for r in records]


def _first(row: dict[str, list[Any]], key: Optional[str]) -> Any:
    """The first value of ``row[key]``, or None (no such key, or an empty list)."""
    values = row.get(key) if key else None
    return values[0] if values else None


class Catalog:
    """Every catalog item: transformed features, raw ids, and each id's column."""

    def __init__(self, records: np.ndarray, tft_out: tft.TFTransformOutput,
                 spec: DatasetSpec) -> None:
        self.features = data.transformed_decoder(tft_out)(tf.constant(list(records)))
        id_key = features.item_key(spec.item_id)
        self.ids = [_first(row, id_key) for row in _raw_rows(records, [id_key])]
        self.column = {item_id: i for i, item_id in enumerate(self.ids)}


def _embed(fn: Callable[[dict], tf.Tensor], batch: dict, n: int) -> np.ndarray:
    """``fn`` over ``batch`` (n rows) in slices, normalized [n, D]."""
    out = [fn({k: v[start:start + EMBED_BATCH] for k, v in batch.items()}).numpy()
           for start in range(0, n, EMBED_BATCH)]
    return normalize(np.concatenate(out))


def exclude_own(scores: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Sets each row's own item's score to -inf, in place; ``own`` [Q] columns, -1: none."""
    rows = np.flatnonzero(own >= 0)
    scores[rows, own[rows]] = -np.inf
    return scores


def slice_metrics(ranks: np.ndarray, bucket: np.ndarray,
                  overall: Optional[np.ndarray] = None) -> dict[str, float]:
    """Example counts, Recall@K and MAP@K by slice, from each example's 0-based positive rank.

    ``overall``: the rows of the overall slice (default: every row).
    """
    out: dict[str, float] = {}
    for name in protocol.SLICES:
        if name == OVERALL:
            mask = np.ones(len(ranks), bool) if overall is None else overall
        else:
            mask = bucket == name
        out[protocol.score_key(name, protocol.EXAMPLES)] = int(mask.sum())
        for k in KS:
            for kind, fn in METRICS.items():
                out[protocol.score_key(name, metric_name(kind, k))] = fn(ranks[mask], k)
    return out


class Evaluation:
    """Queries of one split and the catalog, parsed once, scored per model.

    Attributes:
      catalog: the :class:`Catalog`.
      queries: the queries' transformed features.
      positive: [Q] each query's positive item's catalog column.
      own: [Q] each query's own item's catalog column (-1: none or not excluded).
      bucket: [Q] the positive item's bucket (head / tail / cold; "" if absent);
        ``cold_items`` (raw ids, held out of training by the study) are cold.
      overall: [Q] the rows of the overall slice, or None (every row). With
        ``warm_overall``, the rows of items other than ``cold_items`` (for
        validation: the warm share of the pairs; the held-out items' rows
        are in its cold slice only).
    """

    def __init__(self, records: np.ndarray, catalog: Catalog, tft_out: tft.TFTransformOutput,
                 spec: DatasetSpec, cold_items: frozenset = frozenset(),
                 warm_overall: bool = False) -> None:
        self.catalog = catalog
        self.queries = data.transformed_decoder(tft_out)(tf.constant(list(records)))
        id_key, own_key = features.item_key(spec.item_id), own_item_key(spec)
        rows = _raw_rows(records, [k for k in (id_key, own_key, features.ITEM_BUCKET) if k])
        missing = [_first(r, id_key) for r in rows if _first(r, id_key) not in catalog.column]
        if missing:
            raise ValueError(f"{len(missing)} of {len(rows)} rows have a positive item that is "
                             f"not in the catalog (e.g. {missing[0]!r}); expected the joined "
                             "rows of one JoinExamples artefact: re-run the pipeline's data "
                             "half.")
        self.positive = np.array([catalog.column[_first(r, id_key)] for r in rows], np.int64)
        self.own = np.array([catalog.column.get(_first(r, own_key), -1) for r in rows], np.int64)
        self.bucket = np.array([(_first(r, features.ITEM_BUCKET) or b"").decode() for r in rows],
                               dtype=object)
        held_out = np.array([_first(r, id_key) in cold_items for r in rows], bool)
        self.bucket[held_out] = features.COLD
        self.overall = ~held_out if warm_overall else None

    def ranks(self, model: Any) -> np.ndarray:
        """[Q] 0-based rank of each query's positive among the catalog, own item left out."""
        items = _embed(model.item_embedding, self.catalog.features, len(self.catalog.ids))
        queries = _embed(model.query_embedding, self.queries, len(self.positive))
        ranks = np.empty(len(self.positive), np.int64)
        step = max(1, SCORE_BLOCK // len(items))    # as the index's brute force: bounded memory
        for start in range(0, len(queries), step):
            part = slice(start, start + step)
            scores = exclude_own(queries[part] @ items.T, self.own[part])
            ranks[part] = positive_ranks(scores, self.positive[part])
        return ranks

    def score(self, model: Any) -> dict[str, float]:
        """:func:`slice_metrics` of ``model`` (with ``item_embedding`` / ``query_embedding``)."""
        return slice_metrics(self.ranks(model), self.bucket, self.overall)
