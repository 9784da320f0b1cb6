"""Nearest-neighbour search over item embeddings: ScaNN and the brute-force oracle.

Scores are cosine similarities: embeddings are L2-normalized and searched by
dot product. Shapes: ``Q`` queries, ``N`` items, ``D`` dimensions.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """ScaNN settings: tree partitioning + asymmetric hashing + exact reordering.

    Attributes:
      k: neighbours returned per query.
      num_leaves: tree partitions (0: ``sqrt(N)``, ScaNN's rule of thumb).
      leaves_to_search: partitions searched per query (0: automatic: 10% of
        the leaves, at least 10, and enough leaves to hold about ``20 * k``
        items, which matters for small catalogs; then raised, up to every
        leaf, to nearly the fewest that meet the recall floor on the
        measured queries, see
        :func:`tune_leaves`; a number given here is kept as it is).
      dimensions_per_block: asymmetric-hashing block size (2 is ScaNN's default
        for high recall).
      anisotropic_threshold: anisotropic quantization threshold for dot product.
      reorder: candidates rescored exactly before taking the top ``k``.
      training_sample_size: points sampled to train the codebooks, and at
        least the tree (see ``tree_points_per_leaf``).
      tree_points_per_leaf: the tree's k-means trains on at least this many
        points a leaf (up to every item). With 100,000 points for a million
        items' 1,000 leaves (100 a leaf), four builds of one run's
        embeddings needed 112, 300, 112 and 425 leaves searched for the
        recall floor; with 400 a leaf, 100, 156, 187 and 100. On another
        run's embeddings: 193, 262, 312 against 287, 287, 312. Over both,
        a mean of 245 leaves against 204 and a narrower spread, for a build
        of 20 s instead of 14 s.
      recall_k: the recall floor is on the top ``recall_k`` of each answer
        (0: all ``k``): recall@10 by default, the head of the list a user
        sees and the usual measure of approximate search (ann-benchmarks'
        "10@10"). A list reranked whole needs ``recall_k = k`` (many more
        leaves searched on a catalog of rarely-seen items; see the README).
      min_recall: the index's recall@``recall_k`` against brute force must
        reach this. 0.96, a margin above 0.95: a thousand eval queries hold
        about half as many distinct query vectors, so recall moves in steps
        of about 0.01 between query samples.
      recall_queries: number of real queries used to measure recall.
    """

    k: int = 100
    num_leaves: int = 0
    leaves_to_search: int = 0
    dimensions_per_block: int = 2
    anisotropic_threshold: float = 0.2
    reorder: int = 500
    training_sample_size: int = 100_000
    tree_points_per_leaf: int = 400
    recall_k: int = 10
    min_recall: float = 0.96
    recall_queries: int = 1000

    def measured_k(self, n_items: int) -> int:
        """The k of the recall floor for a catalog of ``n_items``."""
        return max(1, min(self.recall_k or self.k, self.k, n_items))

    def partitioned(self, n_items: int) -> bool:
        """Whether the index is a tree of leaves (not for fewer than two items a leaf)."""
        leaves = self.leaves(n_items)[0]
        return n_items >= 2 * leaves and leaves > 1

    def tree_sample_size(self, n_items: int) -> int:
        """Points the tree's k-means trains on, for a catalog of ``n_items``."""
        return min(n_items, max(self.training_sample_size,
                                self.tree_points_per_leaf * self.leaves(n_items)[0]))

    def leaves(self, n_items: int) -> tuple[int, int]:
        """(num_leaves, leaves_to_search) for a catalog of ``n_items``."""
        leaves = self.num_leaves or max(1, int(math.sqrt(n_items)))
        cover = math.ceil(leaves * min(1.0, 20 * self.k / max(n_items, 1)))
        search = self.leaves_to_search or min(leaves, max(10, leaves // 10, cover))
        return leaves, min(search, leaves)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


#: Query-by-item scores held at once by :func:`brute_force` (256 MiB of float32).
SCORE_BLOCK = 1 << 26


def brute_force(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by cosine: ``(scores [Q, k], indices [Q, k])``, best first.

    Queries are scored in blocks of about :data:`SCORE_BLOCK` scores, so a
    million-item catalog needs a few hundred MiB, not [Q, N] at once.
    """
    items = normalize(items)
    queries = normalize(queries)
    k = min(k, items.shape[0])
    step = max(1, SCORE_BLOCK // max(items.shape[0], 1))
    out_scores, out_top = [], []
    for start in range(0, len(queries), step):
        scores = queries[start:start + step] @ items.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        out_scores.append(np.take_along_axis(scores, top, axis=1))
        out_top.append(top)
    if not out_top:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(out_scores), np.concatenate(out_top)


def score_recall(approx_scores: np.ndarray, exact_scores: np.ndarray, tol: float = 1e-5) -> float:
    """Recall by scores: share of exact top-k scores matched (robust to tied ids)."""
    hits = []
    for a, e in zip(approx_scores, exact_scores):
        threshold = e[-1] - tol
        hits.append(min(1.0, float(np.sum(a >= threshold)) / len(e)))
    return float(np.mean(hits)) if hits else 0.0


#: :func:`tune_leaves` stops bisecting when the last miss is within this share
#: of the leaves that meet the floor.
LEAVES_RESOLUTION = 1 / 16


def tune_leaves(searcher, queries: np.ndarray, exact_scores: np.ndarray, start: int,
                total: int, floor: float) -> tuple[int, float]:
    """Nearly the fewest leaves whose recall reaches ``floor``; and that recall.

    ``queries`` are normalized; ``exact_scores`` [Q, k] their brute-force top
    k. ``start`` is kept if it meets the floor; otherwise it is doubled
    until the floor is met, then the count is bisected between the last
    miss and the first hit until the two are within
    :data:`LEAVES_RESOLUTION` of the hit (about four more searches).
    Returns every leaf (``total``) and its recall when no fewer reach it.
    Embeddings spread evenly over the sphere (e.g. a catalog of mostly
    rarely-seen items after a short training) need more leaves for the same
    recall than clustered ones.
    """
    def recall_at(leaves: int) -> float:
        _, scores = searcher.search_batched(queries, final_num_neighbors=exact_scores.shape[1],
                                            leaves_to_search=leaves if total > 1 else None)
        return score_recall(np.asarray(scores), exact_scores)

    leaves = max(1, min(start, total))
    recall, miss = recall_at(leaves), None
    while recall < floor and leaves < total:
        miss, leaves = leaves, min(total, 2 * leaves)
        recall = recall_at(leaves)
    if miss is None or recall < floor:       # ``start`` is the least searched
        return leaves, recall
    while leaves - miss > max(1, int(leaves * LEAVES_RESOLUTION)):
        middle = (miss + leaves) // 2
        got = recall_at(middle)
        if got >= floor:
            leaves, recall = middle, got
        else:
            miss = middle
    return leaves, recall


def build_scann(items: np.ndarray, config: IndexConfig):
    """A ScaNN TF-ops searcher over normalized ``items`` [N, D]."""
    from scann import scann_ops

    n = items.shape[0]
    k = min(config.k, n)
    leaves, search = config.leaves(n)
    builder = scann_ops.builder(normalize(items), k, "dot_product")
    if config.partitioned(n):
        builder = builder.tree(num_leaves=leaves, num_leaves_to_search=search,
                               training_sample_size=config.tree_sample_size(n))
    builder = builder.score_ah(config.dimensions_per_block,
                               anisotropic_quantization_threshold=config.anisotropic_threshold,
                               training_sample_size=min(n, config.training_sample_size))
    return builder.reorder(max(k, min(config.reorder, n))).build()
