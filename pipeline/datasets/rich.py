"""A feature-rich synthetic benchmark: latent factors, noisy features, power-law logs.

The model (all draws from one seeded generator):

* **Latent factors.** Each item has a hidden class on four factors:
  ``theme`` (8 classes), ``origin`` (6), ``era`` (10) and ``audience`` (5),
  drawn uniformly and independently.
* **Features (14, plus the id).** Each factor is expressed by three noisy
  features; with probability ``noise`` (per feature, below) a feature's
  value is drawn from its whole range instead of from the item's class:

  ========== ============================================================
  factor     features
  ========== ============================================================
  theme      ``genre`` (the class, noise 0.15), ``subgenre`` (one of 4 per
             class, 0.15), ``keywords`` (multi-valued: 1-4 of the class's
             12 keywords, each global with probability 0.3)
  origin     ``country`` (0.15), ``language`` (0.25), ``studio`` (one of 6
             per class, 0.2)
  era        ``decade`` (0.1), ``year`` (one of 10 per class, 0.1),
             ``format`` (class // 3, 0.3)
  audience   ``rating`` (0.2), ``audience_tags`` (multi-valued: 1-3 of the
             class's 6 tags, each global with probability 0.3), ``runtime``
             (0.35)
  none       ``title`` (a near-unique token pair, independent of all) and
             ``price`` (10 buckets, independent of all)
  ========== ============================================================

  So the dependence structure is four groups of three features, a
  near-unique feature and a noise feature; the id is unique.
* **Long tail (``long_tail=True``), as in the paper's app and Wikipedia
  catalogs.** Each latent cluster (below) splits into *communities* of
  about ``community_items`` items (``max(1, n_items // (community_items *
  240))`` per cluster), so at large sizes there are more communities than
  the low-cardinality features can name. Two features whose vocabularies
  grow with the catalog express the community:

  ========== ============================================================
  feature    distribution
  ========== ============================================================
  ``creator`` single-valued, like a developer / author: value sizes
             (items per value) drawn from a discrete power law
             ``P(s) ~ s^-value_size_exponent`` on ``1..n_items // 50``, so
             most values hold 1-3 items and a few hold thousands; items
             ordered by (cluster, community, random) are cut into
             consecutive runs of those sizes, so a small value lies inside
             one community and a large one spans neighbouring ones; with
             probability 0.1 an item takes the value of a random item.
  ``tags``   multi-valued (1-5 per item): five passes of the same draw,
             each in its own random order within communities; an item
             keeps its first 1-5 passes' values (noise 0.2 each).
  ========== ============================================================

  Engagement then follows communities instead of clusters, and popularity
  is steeper where needed so that most items have at most 5 training pairs
  (:func:`pipeline.datasets.stats.long_tail` measures both shares).
* **Popularity.** Items follow a Zipf law over a random ranking, so most
  items are rarely or never seen in the logs.
* **Engagement.** As :func:`pipeline.datasets.synthetic.logs`: seeds by
  popularity; the next item, with probability ``same_cluster``, is drawn
  (by popularity) from the seed's *latent* cluster (its theme, origin and
  era // 2 classes: 240 clusters), else from the whole catalog. Clusters
  are never written out: a tail item can be placed only through the
  features that express its factors, which is what SSL on item features
  should help with.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

from pipeline.datasets import synthetic

FACTORS = {"theme": 8, "origin": 6, "era": 10, "audience": 5}
#: The planted groups of dependent features (by factor).
GROUPS = {"theme": ("genre", "subgenre", "keywords"),
          "origin": ("country", "language", "studio"),
          "era": ("decade", "year", "format"),
          "audience": ("rating", "audience_tags", "runtime")}
MULTIVALUED = ("keywords", "audience_tags")
INDEPENDENT = ("title", "price")
FEATURES = (*[f for group in GROUPS.values() for f in group], *INDEPENDENT)
#: The long-tail features, both expressing the (latent) community.
LONG_TAIL_FEATURES = ("creator", "tags")
#: Latent clusters: theme x origin x era // 2.
N_CLUSTERS = 8 * 6 * 5

SPEC_YAML = """\
# Feature-rich latent-factor benchmark (written by pipeline.datasets.rich).
name: rich
catalog:
  path: catalog
  pattern: "*.csv"
  id: item_id
  features:
{features}
logs:
  path: logs
  pattern: "span-{{SPAN}}/*.csv"
  query_item: seed_item_id
  item: item_id
  train_spans: 1
split: {{eval_percent: 10, key: user_id}}
vocabulary: {{frequency_threshold: 1, num_oov_buckets: 1}}
on_bad_input: {{malformed_row: reject, unknown_item: reject, duplicate_item: error}}
"""


@dataclasses.dataclass(frozen=True)
class RichConfig:
    """Size of the benchmark.

    Attributes:
      n_items: catalog size.
      n_pairs: log rows.
      zipf_exponent: popularity exponent.
      same_cluster: probability the next item shares the seed's latent cluster
        (with ``long_tail``: its community).
      seed: random seed; equal seeds give identical files.
      long_tail: add the communities and the ``creator`` and ``tags``
        features whose vocabularies grow with the catalog (module docstring).
      community_items: items per community (``long_tail``).
      value_size_exponent: power-law exponent of the items per ``creator`` /
        ``tags`` value (``long_tail``).
    """

    n_items: int = 20_000
    n_pairs: int = 400_000
    zipf_exponent: float = 1.1
    same_cluster: float = 0.8
    seed: int = 0
    long_tail: bool = False
    community_items: int = 32
    value_size_exponent: float = 2.0

    @property
    def features(self) -> tuple[str, ...]:
        """The catalog's features besides the id, in column order."""
        return (*FEATURES, *LONG_TAIL_FEATURES) if self.long_tail else FEATURES

    @property
    def multivalued(self) -> tuple[str, ...]:
        """The multi-valued features."""
        return (*MULTIVALUED, "tags") if self.long_tail else MULTIVALUED


def _noisy(rng: np.random.Generator, values: np.ndarray, size: int, noise: float
           ) -> np.ndarray:
    """``values``, each replaced by a uniform draw from ``range(size)`` with prob. ``noise``."""
    return np.where(rng.random(len(values)) < noise, rng.integers(0, size, len(values)), values)


def _multi(rng: np.random.Generator, cls: np.ndarray, per_class: int, max_values: int,
           global_share: float, prefix: str) -> list[str]:
    """Multi-valued cells: 1..max_values values from the class's pool (or global)."""
    n, pool = len(cls), per_class * (int(cls.max()) + 1)
    counts = rng.integers(1, max_values + 1, n)
    cols = []
    for t in range(max_values):
        own = cls * per_class + rng.integers(0, per_class, n)
        value = _noisy(rng, own, pool, global_share)
        cols.append(np.where(t < counts, np.char.add(prefix, value.astype(str)), ""))
    return ["|".join(dict.fromkeys(v for v in row if v)) for row in zip(*cols)]


def catalog(config: RichConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """The catalog (one row per item) and each item's latent cluster (or community)."""
    n = config.n_items
    z = {name: rng.integers(0, size, n) for name, size in FACTORS.items()}

    def coded(prefix: str, values: np.ndarray) -> np.ndarray:
        return np.char.add(prefix, values.astype(str))

    frame = pd.DataFrame({
        "item_id": coded("i", np.arange(n)),
        "genre": coded("g", _noisy(rng, z["theme"], 8, 0.15)),
        "subgenre": coded("s", _noisy(rng, z["theme"] * 4 + rng.integers(0, 4, n), 32, 0.15)),
        "keywords": _multi(rng, z["theme"], 12, 4, 0.3, "k"),
        "country": coded("c", _noisy(rng, z["origin"], 6, 0.15)),
        "language": coded("l", _noisy(rng, z["origin"], 6, 0.25)),
        "studio": coded("st", _noisy(rng, z["origin"] * 6 + rng.integers(0, 6, n), 36, 0.2)),
        "decade": coded("d", _noisy(rng, z["era"], 10, 0.1)),
        "year": coded("y", _noisy(rng, z["era"] * 10 + rng.integers(0, 10, n), 100, 0.1)),
        "format": coded("f", _noisy(rng, z["era"] // 3, 4, 0.3)),
        "rating": coded("r", _noisy(rng, z["audience"], 5, 0.2)),
        "audience_tags": _multi(rng, z["audience"], 6, 3, 0.3, "a"),
        "runtime": coded("rt", _noisy(rng, z["audience"], 5, 0.35)),
        "title": np.char.add(coded("w", rng.integers(0, 3 * n, n)),
                             coded("_", rng.integers(0, 3, n))),
        "price": coded("p", rng.integers(0, 10, n)),
    })
    cluster = (z["theme"] * 6 + z["origin"]) * 5 + z["era"] // 2
    if not config.long_tail:
        return frame, cluster
    per_cluster = max(1, n // (config.community_items * N_CLUSTERS))
    community = cluster * per_cluster + rng.integers(0, per_cluster, n)
    max_size = max(1, n // 50)
    frame["creator"] = np.char.add("cr", _runs(rng, community, config.value_size_exponent,
                                                max_size, 0.1).astype(str))
    passes = [np.char.add(f"t{t}_", _runs(rng, community, config.value_size_exponent,
                                           max_size, 0.2).astype(str)) for t in range(5)]
    keep = rng.integers(1, 6, n)
    frame["tags"] = ["|".join(row[:k]) for row, k in zip(zip(*passes), keep)]
    return frame, community


def value_sizes(rng: np.random.Generator, total: int, exponent: float, max_size: int
                ) -> np.ndarray:
    """Items per value, from ``P(s) ~ s^-exponent`` on ``1..max_size``, summing to ``total``."""
    support = np.arange(1, max_size + 1)
    p = support ** -exponent
    p /= p.sum()
    mean = float(support @ p)
    sizes = rng.choice(support, size=int(total / mean * 1.2) + 16, p=p)
    cut = int(np.searchsorted(np.cumsum(sizes), total))
    sizes = sizes[: cut + 1].copy()
    sizes[-1] -= int(sizes.sum()) - total
    return sizes[sizes > 0]


def _runs(rng: np.random.Generator, community: np.ndarray, exponent: float, max_size: int,
          noise: float) -> np.ndarray:
    """Value index per item: runs of power-law sizes over items sorted by community.

    With probability ``noise`` an item takes the value of a uniformly drawn item.
    """
    n = len(community)
    order = np.lexsort((rng.random(n), community))
    sizes = value_sizes(rng, n, exponent, max_size)
    values = np.empty(n, dtype=np.int64)
    values[order] = np.repeat(rng.permutation(len(sizes)), sizes)
    noisy = rng.random(n) < noise
    values[noisy] = values[rng.integers(0, n, int(noisy.sum()))]
    return values


def generate(config: RichConfig, out_dir: str) -> str:
    """Writes ``catalog/items.csv``, ``logs/span-1/pairs*.csv`` and ``dataset.yaml``.

    Returns:
      The path of the written spec.
    """
    rng = np.random.default_rng(config.seed)
    items, cluster = catalog(config, rng)
    engagement = synthetic.SyntheticConfig(
        n_items=config.n_items, n_pairs=config.n_pairs, zipf_exponent=config.zipf_exponent,
        same_category=config.same_cluster, seed=config.seed)
    hidden = items[["item_id"]].assign(category=cluster)
    pairs = synthetic.logs(engagement, hidden, rng).drop(columns=["device"])
    synthetic.write_shards(items, os.path.join(out_dir, "catalog"), "items", 250_000)
    synthetic.write_shards(pairs, os.path.join(out_dir, "logs", "span-1"), "pairs", 250_000)
    multi = ', multivalued: true, separator: "|"'
    lines = [f"    - {{name: {f}{multi if f in config.multivalued else ''}}}"
             for f in config.features]
    spec_path = os.path.join(out_dir, "dataset.yaml")
    with open(spec_path, "w", encoding="utf-8") as f:
        f.write(SPEC_YAML.format(features="\n".join(lines)))
    return spec_path
