"""Mutual information between categorical item features: the estimator.

Plug-in (maximum-likelihood) estimates in nats over a weighted set of items.

* **Weights.** Each catalog item has weight ``w`` (1 for every item by
  default, matching the uniform SSL distribution; or its training frequency).
* **Multi-valued features.** An item with value sets ``A`` (feature i) and
  ``B`` (feature j) contributes ``w / (|A| |B|)`` to every pair ``(a, b)``;
  for one feature it contributes ``w / |A|`` to each ``a``. Single-valued
  features are the case ``|A| = 1``.
* **Missing values.** A pair (i, j) is estimated over the items where both
  are non-empty; a feature's entropy over the items where it is non-empty.
  MI is computed from one joint table and its own marginals, so
  ``0 <= MI <= min(H_i, H_j)`` holds for the pair's entropies.
* **Sums, not tables.** With ``T = sum c``, ``S = sum c log c`` over a
  table's cells, the entropy is ``log T - S / T``. Every quantity is a sum,
  so Beam combiners compute it without collecting any table in one place.
* **Normalized MI:** ``NMI = MI / max(H_i, H_j)`` (as scikit-learn's
  ``normalized_mutual_info_score(average_method="max")``): 0 for independent
  features, 1 only when each determines the other. The max (rather than a
  geometric or arithmetic mean) keeps a near-unique key such as the item id,
  which determines every feature, from looking correlated with everything:
  ``NMI(id, f) = H(f) / H(id)``, small for catalogs of many items.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class TableSums:
    """Sufficient sums of a weighted count table.

    Attributes:
      total: ``T``, sum of the cells.
      c_log_c: ``S``, sum of ``c log c`` over the cells.
    """

    total: float
    c_log_c: float

    def entropy(self) -> float:
        """Entropy (nats) of the normalized table; 0 for an empty table."""
        if self.total <= 0:
            return 0.0
        return max(0.0, math.log(self.total) - self.c_log_c / self.total)


def sums(cells: Iterable[float]) -> TableSums:
    """The :class:`TableSums` of some non-negative cells."""
    total, c_log_c = 0.0, 0.0
    for c in cells:
        if c > 0:
            total += c
            c_log_c += c * math.log(c)
    return TableSums(total, c_log_c)


def mutual_information(joint: TableSums, left: TableSums, right: TableSums) -> float:
    """``H(left) + H(right) - H(joint)``, clipped to ``[0, min(H_l, H_r)]``."""
    h_left, h_right = left.entropy(), right.entropy()
    mi = h_left + h_right - joint.entropy()
    return min(max(mi, 0.0), h_left, h_right)


def normalized(mi: float, h_i: float, h_j: float) -> float:
    """``MI / max(H_i, H_j)``; 0 when either entropy is 0."""
    if h_i <= 0 or h_j <= 0:
        return 0.0
    return min(1.0, mi / max(h_i, h_j))


def pair_cells(a: Sequence[bytes], b: Sequence[bytes], weight: float
               ) -> Iterable[tuple[tuple[bytes, bytes], float]]:
    """Cells one item adds to the joint table of a feature pair."""
    if not a or not b:
        return []
    share = weight / (len(a) * len(b))
    return [((x, y), share) for x in a for y in b]


def value_cells(a: Sequence[bytes], weight: float) -> Iterable[tuple[bytes, float]]:
    """Cells one item adds to a feature's value table."""
    if not a:
        return []
    return [(x, weight / len(a)) for x in a]


def exact_mi(items: Sequence[Mapping[str, Sequence[bytes]]], f: str, g: str,
             weights: Sequence[float] | None = None) -> tuple[float, float, float]:
    """In-memory reference: ``(MI, H_f, H_g)`` of one pair over the pair's items.

    For small inputs and tests; the Beam pipeline computes the same numbers
    with combiners.
    """
    joint: dict[tuple[bytes, bytes], float] = {}
    for k, item in enumerate(items):
        w = 1.0 if weights is None else weights[k]
        for cell, c in pair_cells(item.get(f, []), item.get(g, []), w):
            joint[cell] = joint.get(cell, 0.0) + c
    left: dict[bytes, float] = {}
    right: dict[bytes, float] = {}
    for (x, y), c in joint.items():
        left[x] = left.get(x, 0.0) + c
        right[y] = right.get(y, 0.0) + c
    lsum, rsum = sums(left.values()), sums(right.values())
    return mutual_information(sums(joint.values()), lsum, rsum), lsum.entropy(), rsum.entropy()


def cfm_groups(names: Sequence[str], nmi: Sequence[Sequence[float]], n_masked: int
               ) -> dict[str, list[str]]:
    """For each seed feature: the seed plus the ``n_masked - 1`` others with highest NMI.

    Ties are broken by feature order. ``n_masked`` counts the seed.
    """
    if not 1 <= n_masked < len(names):
        raise ValueError(f"n_masked must be in [1, {len(names) - 1}] for {len(names)} "
                         f"features, got {n_masked}.")
    groups = {}
    for s, seed in enumerate(names):
        others = sorted((j for j in range(len(names)) if j != s),
                        key=lambda j: (-nmi[s][j], j))
        groups[seed] = [seed] + [names[j] for j in others[: n_masked - 1]]
    return groups
