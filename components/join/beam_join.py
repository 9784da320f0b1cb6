"""Row-level parts of the join step: logs x catalog -> train/eval/catalog rows.

Input rows are ``dict[str, list[bytes]]``. A joined row travels as a
serialized partial ``tf.train.Example``: protocol buffers parse the
concatenation of two serialized messages as their merge, so the Example of
a log row is the bytes of its item's ``item_*`` part, its ``context_*``
part, its query item's ``query_*`` part and the ``item_train_count`` /
``item_bucket`` / ``is_catalog_row`` part, joined. Each catalog item's parts
are serialized once, not once per log row. The two strategies that use
these parts are in :mod:`components.join.strategies`.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam

from components import tfrecords
from transforms import features, tables
from transforms.spec import DatasetSpec

Row = dict[str, list[bytes]]
Parts = tuple[bytes, bytes]
REJECT_TAG = "rejects"
UNKNOWN_TAG = "unknown"
MOVED_TAG = "moved"
WRITTEN_TAG = "written"
SHUFFLE, SIDE_INPUT = "shuffle", "side_input"
#: Summary key: training log rows moved to eval because they hold a held-out item.
MOVED_COLD = "moved_to_eval_cold_items"
STRATEGIES = (SHUFFLE, SIDE_INPUT)


class LogSource(NamedTuple):
    """The log rows: parts (files, or any unit one worker reads whole) and their reader.

    Attributes:
      parts: the parts.
      read: ``part -> (split, row)`` pairs; the same rows every time (the
        side-input join reads each part twice).
    """

    parts: Sequence[Any]
    read: Callable[[Any], Iterable[tuple[str, Row]]]


class ShardSink(NamedTuple):
    """Where the side-input join writes the joined log rows of each part itself.

    Attributes:
      prefixes: split -> file prefix; part ``i`` of ``n`` goes to
        :func:`tfrecords.shard_name` ``(prefix, i, n)``.
      tmp_dir: folder for shards being written.
    """

    prefixes: dict[str, str]
    tmp_dir: str


class Joined(NamedTuple):
    """What :func:`~components.join.strategies.JoinLogsWithCatalog` returns.

    Attributes:
      examples: ``(split, bucket, serialized Example)`` of splits train, eval
        and catalog (the catalog's alone when a :class:`ShardSink` wrote the rest).
      rejects: :class:`tables.Reject` records.
      train_counts: ``(item id, training count)``.
      moved: ``[(MOVED_COLD, n)]``.
      written: ``((split, bucket), rows)`` a :class:`ShardSink` received, by part.
    """

    examples: beam.PCollection
    rejects: beam.PCollection
    train_counts: beam.PCollection
    moved: beam.PCollection
    written: beam.PCollection


def first(row: Row, column: str) -> bytes:
    """The first value of ``column`` in ``row`` (an id column)."""
    return row[column][0]


def unknown(spec: DatasetSpec, item_id: bytes, side: str, n_rows: int) -> tables.Reject:
    """The reject of ``n_rows`` log rows naming unknown ``item_id``; raises under ``error``."""
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
    return first(row, spec.item_id), (tfrecords.dict_to_example(item),
                                       tfrecords.dict_to_example(query))


def context_part(log: Row, spec: DatasetSpec) -> bytes:
    """The ``context_*`` part of a log row, serialized (empty without context features)."""
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
    return None, [], [beam.pvalue.TaggedOutput(REJECT_TAG, unknown(spec, key, side, n_rows))]


def attach_item(group: tuple[bytes, dict[str, Iterable[Any]]], spec: DatasetSpec) -> Iterator[Any]:
    """Join 1: adds ``item_*`` (and ``context_*``) to the log rows of one engaged item."""
    catalog, logs, rejects = _catalog_match(group, spec, "item")
    yield from rejects
    if catalog is None:
        return
    item_id = group[0]
    for split, log in logs:
        yield (first(log, spec.query_item_column),
               (split, item_id, catalog[0] + context_part(log, spec)))


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
        yield finish(split, payload, count, bucket(count, item_id, boundary))


def finish(split: str, payload: bytes, count: int, name: str) -> tuple[str, str, bytes]:
    """``(split, bucket, serialized Example)`` of a joined row and its item's count."""
    return split, name, payload + _count_part(count, name, split == features.CATALOG_SPLIT)


@functools.lru_cache(maxsize=4096)
def _count_part(count: int, name: str, is_catalog: bool) -> bytes:
    return tfrecords.dict_to_example({features.ITEM_TRAIN_COUNT: [count],
                           features.ITEM_BUCKET: [name.encode()],
                           features.IS_CATALOG_ROW: [int(is_catalog)]})


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
    ids = (first(row, spec.item_column), first(row, spec.query_item_column))
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


