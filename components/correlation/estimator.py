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
* **Adjusted MI (the default grouping measure).** The plug-in MI of two
  features with many values and few items per value is large even when they
  are independent: a sparse joint table looks deterministic. The adjusted MI
  subtracts the MI expected by chance, ``EMI``, under the permutation model
  (fixed marginals, items matched at random: hypergeometric cell counts,
  Vinh et al. 2010), and normalizes like scikit-learn's
  ``adjusted_mutual_info_score`` (``average_method="arithmetic"``):
  ``AMI = (MI - EMI) / ((H_i + H_j) / 2 - EMI)``. It is 0 in expectation
  for independent features whatever their cardinality and 1 when each
  determines the other. ``EMI`` depends on the marginals only through the
  histogram of their cell counts ("count of counts"), so a catalog of
  millions of items costs as many terms as there are distinct counts, not
  values. A unique key (the item id) has ``MI = EMI = H(f)`` with every
  single-valued feature ``f``: its AMI is 0, computed, not special-cased.
  Multi-valued pairs (cells of weight ``1 / (|A||B|)``) and frequency
  weighting: the number of items holding both values is still
  hypergeometric, and a cell's expected ``c log c`` is exact for one item
  and a second-order expansion in the shares' spread for more
  (:func:`expected_mutual_information`): exact for single-valued,
  unit-weight features and for the id.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import special

#: Dependence measures the CFM grouping can use (see the module docstring).
MEASURES = ("ami", "nmi")


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


def _log_pmf(n: np.ndarray, a: np.ndarray, b: np.ndarray, total: float) -> np.ndarray:
    """Log hypergeometric probability of cell count ``n`` given marginals ``a``, ``b``."""
    return (special.gammaln(a + 1) + special.gammaln(b + 1) + special.gammaln(total - a + 1)
            + special.gammaln(total - b + 1) - special.gammaln(total + 1)
            - special.gammaln(n + 1) - special.gammaln(a - n + 1)
            - special.gammaln(b - n + 1) - special.gammaln(total - a - b + n + 1))


#: A marginal's count of counts: ``{(weight, items, sum of squared shares,
#: sum of share * log share): number of values}``, where a value's share in
#: one item is that item's weight over its number of values.
Marginal = Mapping[tuple[float, float, float, float], float]


def _c_log_c(n: np.ndarray, scale: float, left: tuple[float, ...], right: np.ndarray
             ) -> np.ndarray:
    """``E[c log c | n]`` of a cell that ``n`` items hold, ``c = scale * sum u_i v_i``.

    ``u`` (``v``) is drawn from the left (right) value's item shares; exact for
    ``n = 1``, a second-order (delta method) expansion for ``n >= 2``, exact
    when all shares are equal.
    """
    a, n_a, q_a, r_a = left
    b, n_b, q_b, r_b = right
    mu_u, mu_v = a / n_a, b / n_b
    one = scale * (mu_v * r_a / n_a + mu_u * r_b / n_b + mu_u * mu_v * math.log(scale))
    mean = n * scale * mu_u * mu_v
    spread = (q_a / n_a) * (q_b / n_b) - (mu_u * mu_v) ** 2
    many = mean * np.log(np.maximum(mean, 1e-300)) + scale * spread / (2 * mu_u * mu_v)
    return np.where(n == 1, one, many)


def expected_mutual_information(left: Marginal, right: Marginal, items: float,
                                total: float) -> float:
    """``EMI`` (nats) of a weighted joint table under random matching of items.

    Args:
      left: the left marginal's count of counts (:data:`Marginal`).
      right: the same for the right marginal.
      items: ``N``, the number of items the table is over (the permutation unit).
      total: ``T``, the table's summed weight (``N`` with unit weights).

    Returns:
      ``H_left + H_right - E[H_joint]``. The number ``n`` of items holding
      both values is hypergeometric given the values' item counts and ``N``;
      a cell's weight is the sum of the product of the two values' shares
      in those items (times ``N / T``). With single-valued, unit-weight
      features this is exactly the EMI of Vinh et al. (2010) and
      scikit-learn. The ``n`` range is cut 12 standard deviations from the
      mean (the dropped mass is below 1e-30).
    """
    if items <= 0 or total <= 0 or not left or not right:
        return 0.0
    keys = sorted(right)
    right_arr = np.array(keys, dtype=np.float64).T
    n_b, m_b = right_arr[1], np.array([right[k] for k in keys], dtype=np.float64)
    scale = items / total
    expected_s = 0.0
    for key, m_a in left.items():
        n_a = np.full_like(n_b, float(key[1]))
        mean = n_a * n_b / items
        sd = np.sqrt(np.maximum(mean * (1 - n_a / items) * (items - n_b) / max(items - 1, 1), 0))
        lo = np.maximum(np.maximum(n_a + n_b - items, 1), np.floor(mean - 12 * sd - 2))
        hi = np.minimum(np.minimum(n_a, n_b), np.ceil(mean + 12 * sd + 2))
        lengths = np.maximum(hi - lo + 1, 0).astype(np.int64)
        owner = np.repeat(np.arange(len(keys)), lengths)
        n = lo[owner] + (np.arange(lengths.sum()) - (np.cumsum(lengths) - lengths)[owner])
        p = np.exp(_log_pmf(n, n_a[owner], n_b[owner], items))
        terms = p * _c_log_c(n, scale, key, right_arr[:, owner])
        expected_s += m_a * float(np.dot(np.bincount(owner, terms, minlength=len(keys)), m_b))
    h_left, h_right = (math.log(total) - sum(m * k[0] * math.log(k[0]) for k, m in side.items()
                                             if k[0] > 0) / total for side in (left, right))
    return h_left + h_right - (math.log(total) - expected_s / total)


def adjusted(mi: float, emi: float, h_i: float, h_j: float) -> float:
    """``(MI - EMI) / ((H_i + H_j) / 2 - EMI)``; 0 when either entropy is 0.

    As scikit-learn's ``adjusted_mutual_info_score`` (arithmetic mean),
    including its guard against a vanishing denominator.
    """
    if h_i <= 0 or h_j <= 0:
        return 0.0
    denominator = (h_i + h_j) / 2 - emi
    eps = np.finfo(np.float64).eps
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    value = (mi - emi) / denominator
    return 0.0 if abs(value) < 1e-9 else float(value)


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


def paper_group_size(k: int) -> int:
    """The paper's CFM masked-set size for ``k`` features: the seed plus ``floor(k / 2)``.

    Capped at ``k - 1`` so that the kept view is never empty.
    """
    return max(1, min(1 + k // 2, k - 1))


def cfm_groups(names: Sequence[str], dependence: Sequence[Sequence[float]], n_masked: int
               ) -> dict[str, list[str]]:
    """For each seed feature: the seed plus the ``n_masked - 1`` most dependent others.

    Ties are broken by feature order. ``n_masked`` counts the seed.
    ``dependence`` is the grouping measure's matrix (AMI or NMI).
    """
    if not 1 <= n_masked < len(names):
        raise ValueError(f"n_masked must be in [1, {len(names) - 1}] for {len(names)} "
                         f"features, got {n_masked}.")
    groups = {}
    for s, seed in enumerate(names):
        others = sorted((j for j in range(len(names)) if j != s),
                        key=lambda j: (-dependence[s][j], j))
        groups[seed] = [seed] + [names[j] for j in others[: n_masked - 1]]
    return groups
