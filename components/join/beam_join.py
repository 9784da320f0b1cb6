"""Beam transforms of the join step: logs x catalog -> train/eval/catalog rows.

Input rows are ``dict[str, list[bytes]]``. A joined row travels as a
serialized partial ``tf.train.Example``: protocol buffers parse the
concatenation of two serialized messages as their merge, so the Example of
a log row is the bytes of its item's ``item_*`` part, its ``context_*``
part, its query item's ``query_*`` part and the ``item_train_count`` /
``item_bucket`` / ``is_catalog_row`` part, joined. Each catalog item's parts
are serialized once, not once per log row. Two strategies give identical
Examples:

``shuffle`` (any catalog size): three keyed shuffles (``CoGroupByKey``), so
no worker holds the catalog in memory:

1. logs by engaged item with the catalog: attaches ``item_*``;
2. the result by query item with the catalog: attaches ``query_*``;
3. every row by engaged item with its training count: attaches
   ``item_train_count`` and ``item_bucket`` (head / tail / cold).

``side_input`` (a catalog that fits in a worker's memory): the catalog ids,
the items' ``item_*`` parts (each ``query_*`` part is derived from its item
part where needed) and the per-item training counts are dict side inputs.
The log rows are read twice, never shuffled nor held between steps: once to
count the training rows per item (and the rows naming unknown items), then
again to join each row as it is read, with its item's count and bucket.

Both need one ranked list of ``(count, item id)`` over the items seen in
training for the head boundary (O(#seen items) memory in one worker).
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam

from components import tfrecords
from transforms import features, tables
from transforms.spec import DatasetSpec

Row = dict[str, list[bytes]]
Parts = tuple[bytes, bytes]
REJECT_TAG = "rejects"
UNKNOWN_TAG = "unknown"
SHUFFLE, SIDE_INPUT = "shuffle", "side_input"
#: Summary key: training log rows moved to eval because they hold a held-out item.
MOVED_COLD = "moved_to_eval_cold_items"
STRATEGIES = (SHUFFLE, SIDE_INPUT)


def _first(row: Row, column: str) -> bytes:
    return row[column][0]


def _unknown(spec: DatasetSpec, item_id: bytes, side: str, n_rows: int) -> tables.Reject:
    if spec.unknown_item == "error":
        raise tables.InputError(
            f"logs: {side} item id {item_id.decode(errors='replace')!r} is not in the catalog "
            f"({n_rows} log rows). Add the item to the catalog, or set "
            "on_bad_input.unknown_item: reject to count and drop such rows.")
    return tables.Reject(tables.UNKNOWN, f"{side}={item_id.decode(errors='replace')}",
                       "log rows name an item absent from the catalog", n_rows)


def catalog_parts(row: Row, spec: DatasetSpec) -> tuple[bytes, Parts]:
    """``(item id, (item_* part, query_* part))`` of one catalog row, serialized."""
    item = {features.item_key(f.name): row.get(f.name, []) for f in spec.item_features}
    query = {features.query_key(n): row.get(n, []) for n in spec.query_item_features}
    return _first(row, spec.item_id), (tfrecords.dict_to_example(item),
                                       tfrecords.dict_to_example(query))


def _context_part(log: Row, spec: DatasetSpec) -> bytes:
    if not spec.context_features:
        return b""
    return tfrecords.dict_to_example({features.context_key(f.name): log.get(f.name, [])
                           for f in spec.context_features})


def _catalog_match(group: tuple[bytes, dict[str, Iterable[Any]]], spec: DatasetSpec,
                   side: str) -> tuple[Optional[Parts], Iterable[Any], list[Any]]:
    """(catalog parts or None, the group's log rows, [tagged reject] if unmatched)."""
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
    """Join 1: adds ``item_*`` (and ``context_*``) to the log rows of one engaged item."""
    catalog, logs, rejects = _catalog_match(group, spec, "item")
    yield from rejects
    if catalog is None:
        return
    item_id = group[0]
    for split, log in logs:
        yield (_first(log, spec.query_item_column),
               (split, item_id, catalog[0] + _context_part(log, spec)))


def attach_query(group: tuple[bytes, dict[str, Iterable[Any]]], spec: DatasetSpec) -> Iterator[Any]:
    """Join 2: adds ``query_*`` to the rows of one query (seed) item."""
    catalog, logs, rejects = _catalog_match(group, spec, "query")
    yield from rejects
    if catalog is None:
        return
    for split, item_id, payload in logs:
        yield item_id, (split, payload + catalog[1])


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
    for split, payload in parts["rows"]:
        yield _finish(split, payload, count, bucket(count, item_id, boundary))


def _finish(split: str, payload: bytes, count: int, name: str) -> tuple[str, str, bytes]:
    """``(split, bucket, serialized Example)`` of a joined row and its item's count."""
    return split, name, payload + _count_part(count, name, split == features.CATALOG_SPLIT)


@functools.lru_cache(maxsize=4096)
def _count_part(count: int, name: str, is_catalog: bool) -> bytes:
    return tfrecords.dict_to_example({features.ITEM_TRAIN_COUNT: [count],
                           features.ITEM_BUCKET: [name.encode()],
                           features.IS_CATALOG_ROW: [int(is_catalog)]})


def known_train_item(split_row: tuple[str, Row], catalog: dict[bytes, Any],
                     spec: DatasetSpec) -> Iterator[Any]:
    """Counting pass of the side-input join over one log row.

    Yields the engaged item id of a training row whose engaged and query
    items are in the catalog; a row naming an unknown item (engaged first)
    goes to the ``unknown`` output as ``((side, item id), 1)``.
    """
    split, log = split_row
    for side, column in (("item", spec.item_column), ("query", spec.query_item_column)):
        item_id = _first(log, column)
        if item_id not in catalog:
            yield beam.pvalue.TaggedOutput(UNKNOWN_TAG, ((side, item_id), 1))
            return
    if split == features.TRAIN_SPLIT:
        yield _first(log, spec.item_column)


def query_part(item_part: bytes, spec: DatasetSpec) -> bytes:
    """The ``query_*`` part of an item, from its serialized ``item_*`` part.

    The features of :func:`catalog_parts`' second part with the same values:
    the query features' entries, renamed on the wire format.
    """
    return tfrecords.renamed_features(item_part, _query_keys(spec.query_item_features))


@functools.lru_cache(maxsize=16)
def _query_keys(names: tuple[str, ...]) -> dict[bytes, bytes]:
    return {features.item_key(n).encode(): features.query_key(n).encode() for n in names}


class _JoinRows(beam.DoFn):
    """Joining pass of the side-input join: one log row -> ``(split, bucket, Example)``.

    Side inputs: the items' ``item_*`` parts, the training counts and the head
    boundary. A row naming an unknown item yields nothing (the counting pass
    reports it). Query parts are derived per query item and kept in a
    bounded cache (queries follow the logs' power law).
    """

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec

    def setup(self) -> None:
        self.query_part = functools.lru_cache(maxsize=1 << 16)(
            functools.partial(query_part, spec=self.spec))

    def process(self, split_row: tuple[str, Row], item_parts: dict[bytes, bytes],
                counts: dict[bytes, int], boundary: Optional[tuple[int, bytes]]
                ) -> Iterator[tuple[str, str, bytes]]:
        split, log = split_row
        item_id = _first(log, self.spec.item_column)
        query_id = _first(log, self.spec.query_item_column)
        item, query = item_parts.get(item_id), item_parts.get(query_id)
        if item is None or query is None:
            return
        count = counts.get(item_id, 0)
        payload = item + _context_part(log, self.spec) + self.query_part(query)
        yield _finish(split, payload, count, bucket(count, item_id, boundary))


def lookup_bucket(keyed: tuple[bytes, tuple[str, bytes]], counts: dict[bytes, int],
                  boundary: Optional[tuple[int, bytes]]) -> tuple[str, str, bytes]:
    """Side-input form of :func:`attach_bucket` for one row."""
    item_id, (split, payload) = keyed
    count = counts.get(item_id, 0)
    return _finish(split, payload, count, bucket(count, item_id, boundary))


def _shuffle_join(catalog: beam.PCollection, logs: beam.PCollection, spec: DatasetSpec
                  ) -> tuple[beam.PCollection, beam.PCollection]:
    """Joins 1 and 2 as keyed shuffles: ``(item id, (split, payload))`` and rejects."""
    logs_by_item = logs | "LogsByItem" >> beam.Map(
        lambda sr: (_first(sr[1], spec.item_column), sr))
    with_item = ({"catalog": catalog, "logs": logs_by_item}
                 | "GroupByItem" >> beam.CoGroupByKey()
                 | "AttachItem" >> beam.FlatMap(attach_item, spec).with_outputs(
                     REJECT_TAG, main="rows"))
    with_query = ({"catalog": catalog, "logs": with_item.rows}
                  | "GroupByQuery" >> beam.CoGroupByKey()
                  | "AttachQuery" >> beam.FlatMap(attach_query, spec).with_outputs(
                      REJECT_TAG, main="rows"))
    rejects = (with_item[REJECT_TAG], with_query[REJECT_TAG]) | "Rejects" >> beam.Flatten()
    return with_query.rows, rejects


def held_out(item_id: bytes, percent: int) -> bool:
    """Whether ``item_id`` is among the ``percent``% of items held out of training.

    Decided by the SHA-256 of the id alone, so every run, worker and span
    agrees, independently of the log rows' own split hash.
    """
    if percent <= 0:
        return False
    return int.from_bytes(hashlib.sha256(item_id).digest()[:8], "big") % 100 < percent


def hold_out(split_row: tuple[str, Row], spec: DatasetSpec) -> tuple[str, Row]:
    """Moves a training row whose query or engaged item is held out to ``eval``."""
    split, row = split_row
    if split != features.TRAIN_SPLIT or spec.cold_item_percent <= 0:
        return split_row
    ids = (_first(row, spec.item_column), _first(row, spec.query_item_column))
    if any(held_out(i, spec.cold_item_percent) for i in ids):
        return features.EVAL_SPLIT, row
    return split_row


@beam.ptransform_fn
def HoldOutColdItems(  # noqa: N802  pylint: disable=invalid-name
    logs: beam.PCollection, spec: DatasetSpec
) -> tuple[beam.PCollection, beam.PCollection]:
    """``(split, row)`` -> the same rows with held-out items' training rows in ``eval``.

    Returns:
      ``(logs, moved)``: the re-split rows and ``[(MOVED_COLD, n)]``, the
      number of training rows moved (0 when ``split.cold_item_percent`` is 0).
    """
    if spec.cold_item_percent <= 0:                  # nothing to move: no step per row
        return logs, logs.pipeline | "NoneMoved" >> beam.Create([(MOVED_COLD, 0)])
    resplit = logs | "ReSplit" >> beam.Map(lambda sr: (sr[0], hold_out(sr, spec)))
    moved = (resplit
             | "Moved" >> beam.Map(lambda pair: int(pair[0] != pair[1][0]))
             | "CountMoved" >> beam.CombineGlobally(sum)
             | "Tag" >> beam.Map(lambda n: (MOVED_COLD, n)))
    return resplit | "Rows" >> beam.Map(lambda pair: pair[1]), moved


def _head_boundary(train_counts: beam.PCollection, spec: DatasetSpec) -> Any:
    return beam.pvalue.AsSingleton(
        train_counts
        | "CountIdPairs" >> beam.Map(lambda kv: (kv[1], kv[0]))
        | "AllCounts" >> beam.combiners.ToList()
        | "HeadBoundary" >> beam.Map(head_boundary, spec.head_fraction))


def _catalog_rows(catalog: beam.PCollection) -> beam.PCollection:
    return catalog | "CatalogRows" >> beam.MapTuple(
        lambda item_id, parts: (item_id, (features.CATALOG_SPLIT, parts[0])))


def _shuffle_strategy(catalog: beam.PCollection, logs: beam.PCollection, spec: DatasetSpec
                      ) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
    joined, rejects = _shuffle_join(catalog, logs, spec)
    train_counts = (joined
                    | "TrainOnly" >> beam.Filter(lambda kv: kv[1][0] == features.TRAIN_SPLIT)
                    | "TrainItem" >> beam.Map(lambda kv: kv[0])
                    | "CountPerItem" >> beam.combiners.Count.PerElement())
    all_rows = (joined, _catalog_rows(catalog)) | "AllRows" >> beam.Flatten()
    examples = ({"rows": all_rows, "count": train_counts}
                | "GroupWithCounts" >> beam.CoGroupByKey()
                | "AttachBucket" >> beam.FlatMap(attach_bucket, _head_boundary(train_counts, spec)))
    return examples, rejects, train_counts


def _side_input_strategy(catalog: beam.PCollection, counted_logs: beam.PCollection,
                         joined_logs: beam.PCollection, spec: DatasetSpec
                         ) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
    # Each side input is a dict in every worker: the counting pass only tests
    # membership (ids alone); the joining pass holds each item's item_* part
    # only (the query_* part is derived from it, see :class:`_JoinRows`).
    ids = beam.pvalue.AsDict(catalog | "CatalogIds" >> beam.Map(lambda kv: (kv[0], None)))
    known = counted_logs | "KnownTrainItems" >> beam.FlatMap(
        known_train_item, ids, spec).with_outputs(UNKNOWN_TAG, main="items")
    rejects = (known[UNKNOWN_TAG]
               | "CountUnknown" >> beam.CombinePerKey(sum)
               | "Rejects" >> beam.MapTuple(lambda key, n: _unknown(spec, key[1], key[0], n)))
    train_counts = known.items | "CountPerItem" >> beam.combiners.Count.PerElement()
    counts, boundary = beam.pvalue.AsDict(train_counts), _head_boundary(train_counts, spec)
    item_parts = beam.pvalue.AsDict(catalog | "ItemParts" >> beam.Map(lambda kv: (kv[0], kv[1][0])))
    joined = joined_logs | "JoinRows" >> beam.ParDo(
        _JoinRows(spec), item_parts, counts, boundary)
    catalog_rows = _catalog_rows(catalog) | "CatalogBuckets" >> beam.Map(
        lookup_bucket, counts, boundary)
    examples = (joined, catalog_rows) | "AllRows" >> beam.Flatten()
    return examples, rejects, train_counts


@beam.ptransform_fn
def JoinLogsWithCatalog(  # noqa: N802  pylint: disable=invalid-name
    pbegin: beam.pvalue.PBegin, catalog: beam.PTransform, logs: beam.PTransform,
    spec: DatasetSpec, strategy: str = SHUFFLE
) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection, beam.PCollection]:
    """Joins the catalog rows ``catalog`` reads with the log rows ``logs`` reads.

    The side-input strategy applies ``logs`` twice (it must read the same
    rows each time): the log rows are re-read rather than held between the
    count and the join that needs it.

    Args:
      pbegin: the pipeline.
      catalog: a source of catalog rows.
      logs: a source of ``(split, row)`` log rows. Rows of held-out items are
        moved here (:func:`HoldOutColdItems`).
      spec: the dataset spec.
      strategy: ``shuffle`` (any catalog size) or ``side_input`` (the
        catalog and per-item training counts held in each worker's memory).

    Returns:
      ``(examples, rejects, train_counts, moved)``: ``(split, bucket,
      serialized Example)`` for splits train/eval/catalog,
      :class:`tables.Reject` records, ``(item id, training count)`` and
      ``[(MOVED_COLD, n)]``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"join strategy must be one of {STRATEGIES}, got {strategy!r}.")
    parts = pbegin | "ReadCatalog" >> catalog | "CatalogParts" >> beam.Map(catalog_parts, spec)
    counted, moved = pbegin | "ReadLogs" >> logs | "HoldOutColdItems" >> HoldOutColdItems(spec)
    if strategy == SHUFFLE:
        return (*_shuffle_strategy(parts, counted, spec), moved)
    joined = pbegin | "ReadLogsAgain" >> logs
    if spec.cold_item_percent > 0:
        joined = joined | "HoldOutAgain" >> beam.Map(hold_out, spec)
    return (*_side_input_strategy(parts, counted, joined, spec), moved)
