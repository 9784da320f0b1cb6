"""Beam transforms of the join step: logs x catalog -> train/eval/catalog rows.

Rows travel as ``dict[str, list[bytes]]``. The join is three keyed
shuffles (``CoGroupByKey``), so no side holds the catalog in memory:

1. logs by engaged item with the catalog: attaches ``item_*``;
2. the result by query item with the catalog: attaches ``query_*``;
3. every row by engaged item with its training count: attaches
   ``item_train_count`` and ``item_bucket`` (head / tail / cold).

The head boundary needs one ranked list of ``(count, item id)`` over the
items seen in training (O(#seen items) memory in one worker).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import tensorflow as tf

from components.ingest import rows
from transforms import features
from transforms.spec import DatasetSpec

Row = dict[str, list[bytes]]
REJECT_TAG = "rejects"


def example_to_row(serialized: bytes) -> Row:
    """Parses a serialized tf.Example with BYTES features into a dict."""
    example = tf.train.Example.FromString(serialized)
    return {k: list(v.bytes_list.value) for k, v in example.features.feature.items()}


def row_to_example(row: dict[str, Any]) -> bytes:
    """Serializes a joined row; ints go to int64 lists, the rest to bytes."""
    example = tf.train.Example()
    for key in sorted(row):
        values = row[key]
        feature = example.features.feature[key]
        if values and isinstance(values[0], int):
            feature.int64_list.value.extend(values)
        else:
            feature.bytes_list.value.extend(values)
    return example.SerializeToString()


def _first(row: Row, column: str) -> bytes:
    return row[column][0]


def _unknown(spec: DatasetSpec, item_id: bytes, side: str, n_rows: int) -> rows.Reject:
    if spec.unknown_item == "error":
        raise rows.InputError(
            f"logs: {side} item id {item_id.decode(errors='replace')!r} is not in the catalog "
            f"({n_rows} log rows). Add the item to the catalog, or set "
            "on_bad_input.unknown_item: reject to count and drop such rows.")
    return rows.Reject(rows.UNKNOWN, f"{side}={item_id.decode(errors='replace')}",
                       "log rows name an item absent from the catalog", n_rows)


def _catalog_match(group: tuple[bytes, dict[str, Iterable[Any]]], spec: DatasetSpec,
                   side: str) -> tuple[Optional[Row], Iterable[Any], list[Any]]:
    """(catalog row or None, the group's log rows, [tagged reject] if unmatched)."""
    key, parts = group
    catalog = list(parts["catalog"])
    logs = parts["logs"]
    if catalog:
        return catalog[0], logs, []
    n_rows = sum(1 for _ in logs)
    if not n_rows:
        return None, [], []
    return None, [], [beam.pvalue.TaggedOutput(REJECT_TAG, _unknown(spec, key, side, n_rows))]


def attach_item(group: tuple[bytes, dict[str, Iterable[Any]]], spec: DatasetSpec) -> Iterator[Any]:
    """Join 1: adds ``item_*`` to the log rows of one engaged item."""
    catalog, logs, rejects = _catalog_match(group, spec, "item")
    yield from rejects
    if catalog is None:
        return
    item = {features.item_key(f.name): catalog.get(f.name, []) for f in spec.item_features}
    for split, log in logs:
        joined = dict(item)
        for f in spec.context_features:
            joined[features.context_key(f.name)] = log.get(f.name, [])
        yield _first(log, spec.query_item_column), (split, joined)


def attach_query(group: tuple[bytes, dict[str, Iterable[Any]]], spec: DatasetSpec) -> Iterator[Any]:
    """Join 2: adds ``query_*`` to the rows of one query (seed) item."""
    catalog, logs, rejects = _catalog_match(group, spec, "query")
    yield from rejects
    if catalog is None:
        return
    query = {features.query_key(n): catalog.get(n, []) for n in spec.query_item_features}
    item_id_key = features.item_key(spec.item_id)
    for split, joined in logs:
        out = dict(joined)
        out.update(query)
        yield _first(out, item_id_key), (split, out)


def head_boundary(counts: list[tuple[int, bytes]], fraction: float) -> Optional[tuple[int, bytes]]:
    """The last head item's ``(count, id)`` in the (-count, id) ranking.

    The head is the ``ceil(fraction * n)`` most frequent of the ``n`` items
    seen in training, ties broken by item id; None when nothing was seen.
    """
    if not counts:
        return None
    ranked = sorted(counts, key=lambda c: (-c[0], c[1]))
    return ranked[math.ceil(fraction * len(ranked)) - 1]


def bucket(count: int, item_id: bytes, boundary: Optional[tuple[int, bytes]]) -> str:
    """``cold`` if unseen in training, ``head`` if ranked up to the boundary, else ``tail``."""
    if count == 0 or boundary is None:
        return features.COLD
    if (-count, item_id) <= (-boundary[0], boundary[1]):
        return features.HEAD
    return features.TAIL


def attach_bucket(group: tuple[bytes, dict[str, Iterable[Any]]],
                  boundary: Optional[tuple[int, bytes]]) -> Iterator[tuple[str, str, bytes]]:
    """Join 3: adds the training count and bucket to every row of one item."""
    item_id, parts = group
    count = sum(parts["count"])
    name = bucket(count, item_id, boundary).encode()
    for split, row in parts["rows"]:
        out = dict(row)
        out[features.ITEM_TRAIN_COUNT] = [count]
        out[features.ITEM_BUCKET] = [name]
        out[features.IS_CATALOG_ROW] = [int(split == features.CATALOG_SPLIT)]
        yield split, name.decode(), row_to_example(out)


def catalog_row(row: Row, spec: DatasetSpec) -> tuple[bytes, tuple[str, Row]]:
    """A catalog row keyed by item id, in the joined (``item_*``) layout."""
    joined = {features.item_key(f.name): row.get(f.name, []) for f in spec.item_features}
    return _first(row, spec.item_id), (features.CATALOG_SPLIT, joined)


@beam.ptransform_fn
def JoinLogsWithCatalog(  # noqa: N802  pylint: disable=invalid-name
    pcolls: dict[str, beam.PCollection], spec: DatasetSpec
) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
    """Joins ``{'logs': (split, row), 'catalog': row}``.

    Returns:
      ``(examples, rejects, train_counts)``: ``(split, bucket, serialized
      Example)``
      for splits train/eval/catalog, :class:`rows.Reject` records, and
      ``(item id, training count)``.
    """
    catalog = pcolls["catalog"] | "CatalogById" >> beam.Map(lambda r: (_first(r, spec.item_id), r))
    logs_by_item = pcolls["logs"] | "LogsByItem" >> beam.Map(
        lambda sr: (_first(sr[1], spec.item_column), sr))
    with_item = ({"catalog": catalog, "logs": logs_by_item}
                 | "GroupByItem" >> beam.CoGroupByKey()
                 | "AttachItem" >> beam.FlatMap(attach_item, spec).with_outputs(
                     REJECT_TAG, main="rows"))
    with_query = ({"catalog": catalog, "logs": with_item.rows}
                  | "GroupByQuery" >> beam.CoGroupByKey()
                  | "AttachQuery" >> beam.FlatMap(attach_query, spec).with_outputs(
                      REJECT_TAG, main="rows"))
    train_counts = (with_query.rows
                    | "TrainOnly" >> beam.Filter(lambda kv: kv[1][0] == features.TRAIN_SPLIT)
                    | "TrainItem" >> beam.Map(lambda kv: kv[0])
                    | "CountPerItem" >> beam.combiners.Count.PerElement())
    boundary = (train_counts
                | "CountIdPairs" >> beam.Map(lambda kv: (kv[1], kv[0]))
                | "AllCounts" >> beam.combiners.ToList()
                | "HeadBoundary" >> beam.Map(head_boundary, spec.head_fraction))
    catalog_rows = pcolls["catalog"] | "CatalogRows" >> beam.Map(catalog_row, spec)
    all_rows = (with_query.rows, catalog_rows) | "AllRows" >> beam.Flatten()
    examples = ({"rows": all_rows, "count": train_counts}
                | "GroupWithCounts" >> beam.CoGroupByKey()
                | "AttachBucket" >> beam.FlatMap(
                    attach_bucket, beam.pvalue.AsSingleton(boundary)))
    rejects = (with_item[REJECT_TAG], with_query[REJECT_TAG]) | "Rejects" >> beam.Flatten()
    return examples, rejects, train_counts
