"""The Beam job computing pairwise MI between item features with combiners.

Input: catalog rows ``{feature: [values]}`` plus a weight. Every statistic is
a ``CombinePerKey`` of cell weights (see :mod:`estimator`); no table is ever
collected in one worker. Two shortcuts keep catalog-scale costs bounded:

* **Item id.** Catalog ids are unique (ingestion enforces it), so the id
  determines every feature: ``MI(id, f) = H(f) - E_w[log |values_f|]``
  (``= H(f)`` for single-valued ``f``) and ``H(id)`` is the entropy of the
  item weights (``log N`` when items count once). These are computed from
  per-feature sums instead of an N-row joint table per pair.
* **High-cardinality features.** A feature with more than ``max_values``
  distinct values (e.g. title tokens) has its values hashed (CRC32) into
  ``max_values`` buckets before counting. Merging values can only lower MI
  and entropy (data-processing inequality), so the estimate is biased down
  for that feature; the artefact records which features were hashed.

For the adjusted MI, every marginal is also reduced to its count of counts
(``{(summed weight, items holding the value): number of values}``) plus the
number of items the table is over: the expected MI under random matching
depends on nothing else (:func:`estimator.expected_mutual_information`).
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam

from components.correlation import estimator

Row = Mapping[str, Sequence[bytes]]


class SumsFn(beam.CombineFn):
    """Combines cell weights into ``(T, sum c log c, n_cells)``."""

    def create_accumulator(self) -> tuple[float, float, int]:
        """An empty table."""
        return 0.0, 0.0, 0

    def add_input(self, acc: tuple[float, float, int], c: float) -> tuple[float, float, int]:
        """Adds one cell."""
        if c <= 0:
            return acc
        return acc[0] + c, acc[1] + c * math.log(c), acc[2] + 1

    def merge_accumulators(self, accs: Iterable[tuple[float, float, int]]
                           ) -> tuple[float, float, int]:
        """Adds partial sums."""
        t, s, n = 0.0, 0.0, 0
        for a in accs:
            t, s, n = t + a[0], s + a[1], n + a[2]
        return t, s, n

    def extract_output(self, acc: tuple[float, float, int]) -> tuple[float, float, int]:
        """Returns the sums."""
        return acc


def _hashed(values: Sequence[bytes], buckets: int | None) -> list[bytes]:
    if buckets is None:
        return list(dict.fromkeys(values))
    return list(dict.fromkeys(b"#%d" % (zlib.crc32(v) % buckets) for v in values))


def _prepared(item: tuple[Row, float], names: Sequence[str],
              hashed: Mapping[str, int]) -> tuple[dict[str, list[bytes]], float]:
    row, weight = item
    return {f: _hashed(row.get(f, []), hashed.get(f)) for f in names}, weight


def _value_cells(item: tuple[dict[str, list[bytes]], float]) -> Iterator[tuple[Any, float]]:
    row, w = item
    for f, values in row.items():
        for v, c in estimator.value_cells(values, w):
            yield (f, v), c


def _id_terms(item: tuple[dict[str, list[bytes]], float]) -> Iterator[tuple[Any, float]]:
    """Per feature: item weight W_f, sum w log w, sum w log|values| (non-empty items)."""
    row, w = item
    if w <= 0:
        return
    for f, values in row.items():
        if values:
            yield ("w", f), w
            yield ("wlogw", f), w * math.log(w)
            yield ("wlogn", f), w * math.log(len(values))
            yield ("items", f), 1.0
            yield ("idhist", f, (_rounded(w), 1.0, _rounded(w * w),
                                 _rounded(w * math.log(w)))), 1.0


def _rounded(c: float) -> float:
    """A summed weight rounded so that equal sums of fractions share one key."""
    return round(c, 9)


def _share(w: float, values: Sequence[bytes]) -> tuple[float, float, float, float]:
    """One item's ``(share, 1 item, share^2, share log share)`` for each of its values."""
    u = w / len(values)
    return u, 1.0, u * u, u * math.log(u)


def _members(item: tuple[dict[str, list[bytes]], float]) -> Iterator[tuple[Any, Any]]:
    """Per value, its item shares' sums: of each feature, and of each pair's sides.

    Keys: ``("v", f, value)`` for a feature's own table; ``("p", f, g, side,
    value)`` for the marginals of pair ``(f, g)`` over items where both have
    values, with ``("pairitems", (f, g))`` counting those items.
    """
    row, w = item
    if w <= 0:
        return
    for f, values in row.items():
        for v in values:
            yield ("v", f, v), _share(w, values)
    for f, g in itertools.combinations(sorted(row), 2):
        a, b = row[f], row[g]
        if a and b:
            yield ("pairitems", (f, g)), (1.0, 0.0, 0.0, 0.0)
            for v in a:
                yield ("p", f, g, 0, v), _share(w, a)
            for v in b:
                yield ("p", f, g, 1, v), _share(w, b)


def _add(values: Iterable[tuple[float, ...]]) -> tuple[float, ...]:
    out = (0.0, 0.0, 0.0, 0.0)
    for v in values:
        out = tuple(x + y for x, y in zip(out, v))
    return out


def _histogram_key(kv: tuple[Any, tuple[float, ...]]) -> tuple[Any, float]:
    """A value's summed shares -> the key of its count-of-counts cell."""
    key, sums_ = kv
    if key[0] == "pairitems":
        return key, sums_[0]
    table = ("vhist", key[1]) if key[0] == "v" else (
        ("lefthist", "righthist")[key[3]], (key[1], key[2]))
    return (*table, tuple(_rounded(x) for x in sums_)), 1.0


@beam.ptransform_fn
def CountOfCounts(  # noqa: N802  pylint: disable=invalid-name
    prepared: beam.PCollection,
) -> beam.PCollection:
    """Prepared items -> count-of-counts cells of every marginal, and pair item counts."""
    return (prepared
            | "Members" >> beam.FlatMap(_members)
            | "SumMembers" >> beam.CombinePerKey(_add)
            | "HistogramKey" >> beam.Map(_histogram_key)
            | "SumHistogram" >> beam.CombinePerKey(sum))


def _pair_cells(item: tuple[dict[str, list[bytes]], float]) -> Iterator[tuple[Any, float]]:
    row, w = item
    for f, g in itertools.combinations(sorted(row), 2):
        for (a, b), c in estimator.pair_cells(row[f], row[g], w):
            yield (f, g, a, b), c


@beam.ptransform_fn
def CorrelationSums(  # noqa: N802  pylint: disable=invalid-name
    items: beam.PCollection, names: Sequence[str], max_values: int
) -> beam.PCollection:
    """``(Row, weight)`` -> one list of ``(statistic key, value)`` for :func:`assemble`.

    Args:
      items: catalog rows with their weight.
      names: the non-id features to correlate.
      max_values: distinct values above which a feature is hashed.
    """
    distinct = (items
                | "ValuesPerFeature" >> beam.FlatMap(
                    lambda it: [(f, v) for f in names for v in set(it[0].get(f, []))])
                | "DistinctValues" >> beam.Distinct()
                | "FeatureOnly" >> beam.Map(lambda fv: fv[0])
                | "CountDistinct" >> beam.combiners.Count.PerElement())
    hashed = (distinct
              | "TooMany" >> beam.Filter(lambda kv: kv[1] > max_values)
              | "Buckets" >> beam.Map(lambda kv: (kv[0], max_values)))
    prepared = items | "Prepare" >> beam.Map(_prepared, names, beam.pvalue.AsDict(hashed))
    values = (prepared | "ValueCells" >> beam.FlatMap(_value_cells)
              | "SumValueCells" >> beam.CombinePerKey(sum))
    marginal = (values | "ByFeature" >> beam.Map(lambda kv: (kv[0][0], kv[1]))
                | "FeatureSums" >> beam.CombinePerKey(SumsFn())
                | "TagFeature" >> beam.Map(lambda kv: (("h", kv[0]), kv[1])))
    id_terms = (prepared | "IdTerms" >> beam.FlatMap(_id_terms)
                | "SumIdTerms" >> beam.CombinePerKey(sum))
    joint = (prepared | "PairCells" >> beam.FlatMap(_pair_cells)
             | "SumPairCells" >> beam.CombinePerKey(sum))
    outs = [marginal, id_terms,
            distinct | "TagDistinct" >> beam.Map(lambda kv: (("distinct", kv[0]), kv[1])),
            hashed | "TagHashed" >> beam.Map(lambda kv: (("hashed", kv[0]), kv[1])),
            prepared | "CountOfCounts" >> CountOfCounts()]
    for label, key_fn in (("joint", lambda k: (k[0], k[1])),
                          ("left", lambda k: (k[0], k[1], k[2])),
                          ("right", lambda k: (k[0], k[1], k[3]))):
        cells = joint
        if label != "joint":
            cells = (joint | f"{label}Key" >> beam.Map(lambda kv, fn=key_fn: (fn(kv[0]), kv[1]))
                     | f"{label}Sum" >> beam.CombinePerKey(sum))
        outs.append(cells
                    | f"{label}ByPair" >> beam.Map(lambda kv: ((kv[0][0], kv[0][1]), kv[1]))
                    | f"{label}Sums" >> beam.CombinePerKey(SumsFn())
                    | f"{label}Tag" >> beam.Map(lambda kv, t=label: ((t, kv[0]), kv[1])))
    return outs | "AllStats" >> beam.Flatten() | "OneList" >> beam.combiners.ToList()
