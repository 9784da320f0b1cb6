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
import operator
import zlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

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


class SummedCells(beam.DoFn):
    """``cells(element)``'s ``(key, value)`` pairs, summed in the worker before the shuffle.

    An item emits hundreds of cells (every feature pair's value pairs); adding
    them into a dict here costs a fraction of passing each one on to a
    combiner. Partial sums are flushed at ``max_keys`` keys and at the end of
    the bundle; a ``CombinePerKey`` downstream adds the partial sums.

    Args:
      cells: element -> iterable of ``(key, value)``.
      add: adds two values of a key (default ``+``, for floats).
      max_keys: keys held before a flush.
    """

    def __init__(self, cells: Any, add: Any = operator.add, max_keys: int = 200_000) -> None:
        super().__init__()
        self.cells, self.add, self.max_keys = cells, add, max_keys
        self.sums: dict[Any, Any] = {}

    def start_bundle(self) -> None:
        """Starts empty sums."""
        self.sums = {}

    def process(self, element: Any, window: Any = beam.DoFn.WindowParam
                ) -> Iterator[tuple[Any, Any]]:
        """Adds the element's cells; flushes the sums when they hold ``max_keys`` keys.

        Raises:
          ValueError: the element is not in the global window (the bundle's
            sums are emitted there).
        """
        if not isinstance(window, GlobalWindow):
            raise ValueError(f"SummedCells sums a bundle in the global window; got an element "
                             f"in {window}: apply it before any windowing.")
        sums, add = self.sums, self.add
        for key, value in self.cells(element):
            old = sums.get(key)
            sums[key] = value if old is None else add(old, value)
        if len(sums) >= self.max_keys:
            yield from sums.items()
            self.sums = {}

    def finish_bundle(self) -> Iterator[WindowedValue]:
        """Flushes the bundle's sums."""
        for kv in self.sums.items():
            yield GlobalWindows.windowed_value(kv)
        self.sums = {}


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
    """Per value, its item shares' sums; and what a pair's marginals lack of them.

    A pair ``(f, g)``'s marginals are over the items where both features
    have values, so they equal the features' own marginals except for the
    items where one side is empty. Keys: ``("v", f, value)`` for a feature's
    own table; ``("minus", f, g, value)`` for value shares of ``f`` on items
    where ``g`` is empty (to subtract); ``("filled", features)`` counting
    the items with exactly those features non-empty. An item thus emits per
    value, not per pair and value.
    """
    row, w = item
    if w <= 0:
        return
    filled = tuple(sorted(f for f, values in row.items() if values))
    yield ("filled", filled), (1.0, 0.0, 0.0, 0.0)
    empty = [f for f, values in row.items() if not values]
    for f in filled:
        values = row[f]
        share = _share(w, values)
        for v in values:
            yield ("v", f, v), share
            for g in empty:
                yield ("minus", f, g, v), share


def _add(values: Iterable[tuple[float, ...]]) -> tuple[float, float, float, float]:
    a = b = c = d = 0.0
    for v in values:
        a, b, c, d = a + v[0], b + v[1], c + v[2], d + v[3]
    return a, b, c, d


def _add_two(x: tuple[float, ...], y: tuple[float, ...]) -> tuple[float, float, float, float]:
    return x[0] + y[0], x[1] + y[1], x[2] + y[2], x[3] + y[3]


def _pair_side(f: str, g: str) -> tuple[str, tuple[str, str]]:
    """The count-of-counts table of ``f``'s side of pair ``{f, g}``."""
    return ("lefthist", (f, g)) if f < g else ("righthist", (g, f))


def _histogram_cells(kv: tuple[Any, Iterable[Any]], names: Sequence[str]
                     ) -> Iterator[tuple[Any, float]]:
    """One value's summed shares -> its count-of-counts cells.

    The value ``(f, v)`` counts once in ``f``'s table and once on ``f``'s
    side of every pair; where ``f``'s shares on items with ``g`` empty are
    subtracted, the pair's cell moves to the difference (or goes, when no
    item is left).
    """
    (f, _), grouped = kv
    total, minus = None, {}
    for tag, value in grouped:
        if tag == "v":
            total = value
        else:
            minus[value[0]] = value[1]
    if total is None:
        return
    key = tuple(_rounded(x) for x in total)
    yield ("vhist", f, key), 1.0
    for g in names:
        if g == f:
            continue
        if g in minus:
            rest = tuple(x - y for x, y in zip(total, minus[g]))
            if rest[1] < 0.5:                       # no item of this value has g
                continue
            yield (*_pair_side(f, g), tuple(_rounded(x) for x in rest)), 1.0
        else:
            yield (*_pair_side(f, g), key), 1.0


def _pair_items(kv: tuple[Any, tuple[float, ...]]) -> Iterator[tuple[Any, float]]:
    """Items with a set of non-empty features -> their count for every pair in the set."""
    (_, filled), sums_ = kv
    for pair in itertools.combinations(filled, 2):
        yield ("pairitems", pair), sums_[0]


@beam.ptransform_fn
def CountOfCounts(  # noqa: N802  pylint: disable=invalid-name
    prepared: beam.PCollection, names: Sequence[str],
) -> beam.PCollection:
    """Prepared items -> count-of-counts cells of every marginal, and pair item counts.

    Args:
      prepared: ``(row, weight)`` with every feature of ``names`` in ``row``.
      names: the features.
    """
    sums = (prepared
            | "Members" >> beam.ParDo(SummedCells(_members, add=_add_two))
            | "SumMembers" >> beam.CombinePerKey(_add))
    items = (sums | "Filled" >> beam.Filter(lambda kv: kv[0][0] == "filled")
             | "PairItems" >> beam.FlatMap(_pair_items))
    by_value = (sums | "NotFilled" >> beam.Filter(lambda kv: kv[0][0] != "filled")
                | "ByValue" >> beam.Map(lambda kv: (
                    (kv[0][1], kv[0][-1]),
                    ("v", kv[1]) if kv[0][0] == "v" else ("minus", (kv[0][2], kv[1]))))
                | "GroupByValue" >> beam.GroupByKey()
                | "HistogramCells" >> beam.FlatMap(_histogram_cells, names))
    return ((items, by_value) | "AllCells" >> beam.Flatten()
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
    values = (prepared | "ValueCells" >> beam.ParDo(SummedCells(_value_cells))
              | "SumValueCells" >> beam.CombinePerKey(sum))
    marginal = (values | "ByFeature" >> beam.Map(lambda kv: (kv[0][0], kv[1]))
                | "FeatureSums" >> beam.CombinePerKey(SumsFn())
                | "TagFeature" >> beam.Map(lambda kv: (("h", kv[0]), kv[1])))
    id_terms = (prepared | "IdTerms" >> beam.ParDo(SummedCells(_id_terms))
                | "SumIdTerms" >> beam.CombinePerKey(sum))
    joint = (prepared | "PairCells" >> beam.ParDo(SummedCells(_pair_cells))
             | "SumPairCells" >> beam.CombinePerKey(sum))
    outs = [marginal, id_terms,
            distinct | "TagDistinct" >> beam.Map(lambda kv: (("distinct", kv[0]), kv[1])),
            hashed | "TagHashed" >> beam.Map(lambda kv: (("hashed", kv[0]), kv[1])),
            prepared | "CountOfCounts" >> CountOfCounts(names)]
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
