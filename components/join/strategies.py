"""The join's two strategies, which give identical Examples.

``shuffle`` (any catalog size): three keyed shuffles (``CoGroupByKey``), so
no worker holds the catalog in memory:

1. logs by engaged item with the catalog: attaches ``item_*``;
2. the result by query item with the catalog: attaches ``query_*``;
3. every row by engaged item with its training count: attaches
   ``item_train_count`` and ``item_bucket`` (head / tail / cold).

``side_input`` (a catalog that fits in a worker's memory): the catalog ids,
the items' ``item_*`` parts (each ``query_*`` part is derived from its item
part where needed) and the per-item training counts are dict side inputs.
The log rows are read twice, never shuffled nor held between steps, and
never one Beam element a row: each part (file) of the logs is one element.
Its worker counts the training rows per item (and the rows naming unknown
items), then, after the counts are gathered, reads the part again and joins
each row as it is read, with its item's count and bucket. Given a
:class:`~components.join.beam_join.ShardSink`, that worker writes the
part's joined rows to its own shards (one per split) and only their
tallies leave it (MovieLens-1M's step: 25 s instead of 34 s when Beam
moved and wrote each row; a million items: 5.5 GiB instead of 14.7).

Both need one ranked list of ``(count, item id)`` over the items seen in
training for the head boundary (O(#seen items) memory in one worker).
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam

from components import tfrecords
from components.join.beam_join import (
    MOVED_COLD,
    MOVED_TAG,
    REJECT_TAG,
    SHUFFLE,
    SIDE_INPUT,
    STRATEGIES,
    UNKNOWN_TAG,
    WRITTEN_TAG,
    HoldOutColdItems,
    Joined,
    LogSource,
    Row,
    ShardSink,
    attach_bucket,
    attach_item,
    attach_query,
    bucket,
    catalog_parts,
    context_part,
    finish,
    first,
    head_boundary,
    hold_out,
    unknown,
)
from transforms import features
from transforms.spec import DatasetSpec


def train_item(split_row: tuple[str, Row], catalog: dict[bytes, Any], spec: DatasetSpec
               ) -> tuple[Optional[bytes], Optional[tuple[str, bytes]]]:
    """Counting pass of the side-input join over one log row.

    Returns ``(engaged item id, None)`` for a training row whose engaged and
    query items are in the catalog, ``(None, (side, item id))`` for a row
    naming an unknown item (engaged first), else ``(None, None)``.
    """
    split, log = split_row
    for side, column in (("item", spec.item_column), ("query", spec.query_item_column)):
        item_id = first(log, column)
        if item_id not in catalog:
            return None, (side, item_id)
    if split == features.TRAIN_SPLIT:
        return first(log, spec.item_column), None
    return None, None


class _CountPart(beam.DoFn):
    """Counting pass over one part of the logs (cold items held out first).

    Side input: the catalog ids. Yields ``(item id, training rows)``; on
    ``unknown``, ``((side, item id), rows)``; on ``moved``, the training rows
    moved to eval (one count for the part).
    """

    def __init__(self, spec: DatasetSpec, read: Callable[[Any], Iterable[tuple[str, Row]]]
                 ) -> None:
        self.spec, self.read = spec, read

    def process(self, part: tuple[int, int, Any], ids: dict[bytes, Any]) -> Iterator[Any]:
        items, missing_ids, moved = collections.Counter(), collections.Counter(), 0
        for split_row in self.read(part[2]):
            resplit = hold_out(split_row, self.spec)
            moved += resplit[0] != split_row[0]
            item, missing = train_item(resplit, ids, self.spec)
            if item is not None:
                items[item] += 1
            elif missing is not None:
                missing_ids[missing] += 1
        yield from items.items()
        for key, n in missing_ids.items():
            yield beam.pvalue.TaggedOutput(UNKNOWN_TAG, (key, n))
        yield beam.pvalue.TaggedOutput(MOVED_TAG, moved)


def query_part(item_part: bytes, spec: DatasetSpec) -> bytes:
    """The ``query_*`` part of an item, from its serialized ``item_*`` part.

    The features of :func:`catalog_parts`' second part with the same values:
    the query features' entries, renamed on the wire format.
    """
    return tfrecords.renamed_features(item_part, _query_keys(spec.query_item_features))


@functools.lru_cache(maxsize=16)
def _query_keys(names: tuple[str, ...]) -> dict[bytes, bytes]:
    return {features.item_key(n).encode(): features.query_key(n).encode() for n in names}


class _JoinPart(beam.DoFn):
    """Joining pass over one part of the logs: each row -> ``(split, bucket, Example)``.

    Side inputs: the items' ``item_*`` parts, the training counts and the head
    boundary. A row naming an unknown item yields nothing (the counting pass
    reports it). Query parts are derived per query item and kept in a
    bounded cache (queries follow the logs' power law). With a
    :class:`ShardSink` the rows are written to the part's shards and the
    tallies ``((split, bucket), rows)`` leave on ``written`` instead.
    """

    def __init__(self, spec: DatasetSpec, read: Callable[[Any], Iterable[tuple[str, Row]]],
                 sink: Optional[ShardSink]) -> None:
        self.spec, self.read, self.sink = spec, read, sink

    def setup(self) -> None:
        self.query_part = functools.lru_cache(maxsize=1 << 16)(
            functools.partial(query_part, spec=self.spec))

    def _rows(self, part: Any, item_parts: dict[bytes, bytes], counts: dict[bytes, int],
              boundary: Optional[tuple[int, bytes]]) -> Iterator[tuple[str, str, bytes]]:
        spec = self.spec
        for split_row in self.read(part):
            split, log = hold_out(split_row, spec)
            item_id, query_id = first(log, spec.item_column), first(log, spec.query_item_column)
            item, query = item_parts.get(item_id), item_parts.get(query_id)
            if item is None or query is None:
                continue
            count = counts.get(item_id, 0)
            payload = item + context_part(log, spec) + self.query_part(query)
            yield finish(split, payload, count, bucket(count, item_id, boundary))

    def process(self, part: tuple[int, int, Any], item_parts: dict[bytes, bytes],
                counts: dict[bytes, int], boundary: Optional[tuple[int, bytes]]
                ) -> Iterator[Any]:
        index, n_parts, data = part
        rows = self._rows(data, item_parts, counts, boundary)
        if self.sink is None:
            yield from rows
            return
        finals = {split: tfrecords.shard_name(prefix, index, n_parts)
                  for split, prefix in self.sink.prefixes.items()}
        tallies: collections.Counter = collections.Counter()
        with tfrecords.ShardWriters(finals, self.sink.tmp_dir) as shards:
            for split, name, example in rows:
                shards.write(split, example)
                tallies[split, name] += 1
        for key, n in tallies.items():
            yield beam.pvalue.TaggedOutput(WRITTEN_TAG, (key, n))


def lookup_bucket(keyed: tuple[bytes, tuple[str, bytes]], counts: dict[bytes, int],
                  boundary: Optional[tuple[int, bytes]]) -> tuple[str, str, bytes]:
    """Side-input form of :func:`attach_bucket` for one row."""
    item_id, (split, payload) = keyed
    count = counts.get(item_id, 0)
    return finish(split, payload, count, bucket(count, item_id, boundary))


def _shuffle_join(catalog: beam.PCollection, logs: beam.PCollection, spec: DatasetSpec
                  ) -> tuple[beam.PCollection, beam.PCollection]:
    """Joins 1 and 2 as keyed shuffles: ``(item id, (split, payload))`` and rejects."""
    logs_by_item = logs | "LogsByItem" >> beam.Map(
        lambda sr: (first(sr[1], spec.item_column), sr))
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


def _side_input_strategy(catalog: beam.PCollection, logs: LogSource, spec: DatasetSpec,
                         sink: Optional[ShardSink]) -> Joined:
    # Each side input is a dict in every worker: the counting pass only tests
    # membership (ids alone); the joining pass holds each item's item_* part
    # only (the query_* part is derived from it, see :class:`_JoinPart`).
    parts = (catalog.pipeline
             | "LogParts" >> beam.Create([(i, len(logs.parts), p)
                                          for i, p in enumerate(logs.parts)])
             | "SpreadParts" >> beam.Reshuffle())
    ids = beam.pvalue.AsDict(catalog | "CatalogIds" >> beam.Map(lambda kv: (kv[0], None)))
    counted = parts | "CountParts" >> beam.ParDo(_CountPart(spec, logs.read), ids).with_outputs(
        UNKNOWN_TAG, MOVED_TAG, main="items")
    rejects = (counted[UNKNOWN_TAG]
               | "CountUnknown" >> beam.CombinePerKey(sum)
               | "Rejects" >> beam.MapTuple(lambda key, n: unknown(spec, key[1], key[0], n)))
    moved = (counted[MOVED_TAG]
             | "CountMoved" >> beam.CombineGlobally(sum)
             | "TagMoved" >> beam.Map(lambda n: (MOVED_COLD, n)))
    train_counts = counted.items | "CountPerItem" >> beam.CombinePerKey(sum)
    counts, boundary = beam.pvalue.AsDict(train_counts), _head_boundary(train_counts, spec)
    item_parts = beam.pvalue.AsDict(catalog | "ItemParts" >> beam.Map(lambda kv: (kv[0], kv[1][0])))
    joined = parts | "JoinParts" >> beam.ParDo(
        _JoinPart(spec, logs.read, sink), item_parts, counts, boundary).with_outputs(
            WRITTEN_TAG, main="rows")
    catalog_rows = _catalog_rows(catalog) | "CatalogBuckets" >> beam.Map(
        lookup_bucket, counts, boundary)
    examples = (joined.rows, catalog_rows) | "AllRows" >> beam.Flatten()
    return Joined(examples, rejects, train_counts, moved, joined[WRITTEN_TAG])


@beam.ptransform_fn
def JoinLogsWithCatalog(  # noqa: N802  pylint: disable=invalid-name
    pbegin: beam.pvalue.PBegin, catalog: beam.PTransform, logs: LogSource,
    spec: DatasetSpec, strategy: str = SHUFFLE, sink: Optional[ShardSink] = None
) -> Joined:
    """Joins the catalog rows ``catalog`` reads with the log rows of ``logs``.

    Args:
      pbegin: the pipeline.
      catalog: a source of catalog rows.
      logs: the log rows' parts and reader. Rows of held-out items are
        moved to eval (:func:`hold_out`).
      spec: the dataset spec.
      strategy: ``shuffle`` (any catalog size) or ``side_input`` (the
        catalog and per-item training counts held in each worker's memory).
      sink: where the side-input join writes the joined log rows itself (the
        shuffle join ignores it: its rows leave in ``examples``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"join strategy must be one of {STRATEGIES}, got {strategy!r}.")
    parts = pbegin | "ReadCatalog" >> catalog | "CatalogParts" >> beam.Map(catalog_parts, spec)
    if strategy == SIDE_INPUT:
        return _side_input_strategy(parts, logs, spec, sink)
    rows = pbegin | "ReadLogs" >> tfrecords.ReadFiles(logs.parts, logs.read)
    counted, moved = rows | "HoldOutColdItems" >> HoldOutColdItems(spec)
    examples, rejects, train_counts = _shuffle_strategy(parts, counted, spec)
    return Joined(examples, rejects, train_counts, moved,
                  pbegin | "NothingWritten" >> beam.Create([]))
