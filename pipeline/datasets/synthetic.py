"""Seeded synthetic logs and catalog with planted feature correlations.

Catalog features (per item ``i<k>``):

* ``category``: uniform over ``n_categories`` values;
* ``subcategory``: one of 4 per category, so it determines the category;
* ``brand``: with probability ``brand_loyalty`` one of 3 brands of the
  item's category, else uniform over all brands (correlated with category);
* ``tags``: 1-3 tags, each from the category's 5 tags with probability 0.7,
  else from a global pool (multi-valued, correlated with category);
* ``price``: one of 10 buckets, independent of everything.

Logs: seed items follow a Zipf law over a random popularity ranking (power
law, many items never appear); the next item is, with probability
``same_category``, drawn from the seed's category by the same law, else
from the whole catalog. Each row has a ``user_id`` and a ``device``
context column. Rows are spread over ``spans`` folders ``span-1..span-S``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

SPEC_YAML = """\
# Synthetic power-law logs (written by pipeline.datasets.synthetic).
name: synthetic
catalog:
  path: catalog
  pattern: "*.csv"
  id: item_id
  features:
    - {{name: category}}
    - {{name: subcategory}}
    - {{name: brand}}
    - {{name: tags, multivalued: true, separator: "|"}}
    - {{name: price}}
logs:
  path: logs
  pattern: "span-{{SPAN}}/*.csv"
  query_item: seed_item_id
  item: item_id
  context_features: [device]
  train_spans: {train_spans}
split: {{eval_percent: 10, key: user_id}}
vocabulary: {{frequency_threshold: 1, num_oov_buckets: 1}}
on_bad_input: {{malformed_row: reject, unknown_item: reject, duplicate_item: error}}
"""

DEVICES = np.array(["mobile", "desktop", "tablet"])


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic data.

    Attributes:
      n_items: catalog size.
      n_pairs: number of log rows.
      n_categories: distinct categories (0 picks ``max(5, n_items // 500)``).
      zipf_exponent: popularity exponent (``p(rank) ~ rank^-a``).
      same_category: probability the next item shares the seed's category.
      brand_loyalty: probability an item's brand is one of its category's.
      spans: number of log span folders.
      shard_rows: rows per CSV file (files are read in parallel).
      seed: random seed; equal seeds give byte-identical files.
    """

    n_items: int = 1000
    n_pairs: int = 20000
    n_categories: int = 0
    zipf_exponent: float = 1.1
    same_category: float = 0.7
    brand_loyalty: float = 0.8
    spans: int = 1
    shard_rows: int = 250_000
    seed: int = 0

    def categories(self) -> int:
        """Number of categories actually used."""
        return self.n_categories or max(5, self.n_items // 500)


def catalog(config: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    """The item catalog as a DataFrame (one row per item)."""
    n, c = config.n_items, config.categories()
    category = rng.integers(0, c, n)
    sub = category * 4 + rng.integers(0, 4, n)
    own_brand = category * 3 + rng.integers(0, 3, n)
    brand = np.where(rng.random(n) < config.brand_loyalty, own_brand, rng.integers(0, 3 * c, n))
    n_tags = rng.integers(1, 4, n)
    tag_cols = []
    for t in range(3):
        own = category * 5 + rng.integers(0, 5, n)
        tag = np.where(rng.random(n) < 0.7, own, rng.integers(0, 5 * c, n))
        tag_cols.append(np.where(t < n_tags, np.char.add("t", tag.astype(str)), ""))
    tags = ["|".join(dict.fromkeys(v for v in row if v)) for row in zip(*tag_cols)]
    return pd.DataFrame({
        "item_id": np.char.add("i", np.arange(n).astype(str)),
        "category": np.char.add("c", category.astype(str)),
        "subcategory": np.char.add("s", sub.astype(str)),
        "brand": np.char.add("b", brand.astype(str)),
        "tags": tags,
        "price": np.char.add("p", rng.integers(0, 10, n).astype(str)),
    })


def _zipf_cdf(size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def logs(config: SyntheticConfig, items: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Power-law (seed, next) pairs over ``items``."""
    n, m = len(items), config.n_pairs
    by_rank = rng.permutation(n)  # by_rank[r] = item index with popularity rank r
    cdf = _zipf_cdf(n, config.zipf_exponent)
    seeds = by_rank[np.searchsorted(cdf, rng.random(m))]
    nexts = by_rank[np.searchsorted(cdf, rng.random(m))]
    category = items["category"].to_numpy()
    same = rng.random(m) < config.same_category
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[by_rank] = np.arange(n)
    # Group items (by popularity within category) and same-category rows by
    # category with sorts, so the loop below costs O(items + rows) in all.
    item_order = np.lexsort((rank_of, category))
    item_cats = category[item_order]
    rows_same = np.flatnonzero(same)
    row_cats = category[seeds[rows_same]]
    rows_same = rows_same[np.argsort(row_cats, kind="stable")]
    row_cats = np.sort(row_cats, kind="stable")
    for cat in np.unique(category):
        lo, hi = np.searchsorted(item_cats, cat, "left"), np.searchsorted(item_cats, cat, "right")
        members = item_order[lo:hi]
        r_lo, r_hi = np.searchsorted(row_cats, cat, "left"), np.searchsorted(row_cats, cat, "right")
        rows = rows_same[r_lo:r_hi]
        local = _zipf_cdf(len(members), config.zipf_exponent)
        nexts[rows] = members[np.searchsorted(local, rng.random(len(rows)))]
    n_users = max(10, m // 20)
    users = rng.integers(0, n_users, m)
    device_of_user = DEVICES[rng.integers(0, len(DEVICES), n_users)]
    ids = items["item_id"].to_numpy()
    return pd.DataFrame({
        "user_id": np.char.add("u", users.astype(str)),
        "seed_item_id": ids[seeds],
        "item_id": ids[nexts],
        "device": device_of_user[users],
    })


def write_shards(frame: pd.DataFrame, folder: str, stem: str, shard_rows: int) -> None:
    """Writes ``frame`` as ``<stem>.csv`` (or numbered shards of ``shard_rows`` rows)."""
    os.makedirs(folder, exist_ok=True)
    n_shards = max(1, -(-len(frame) // shard_rows))
    for k in range(n_shards):
        name = f"{stem}.csv" if n_shards == 1 else f"{stem}-{k:05d}-of-{n_shards:05d}.csv"
        frame.iloc[k * shard_rows:(k + 1) * shard_rows].to_csv(
            os.path.join(folder, name), index=False)


def generate(config: SyntheticConfig, out_dir: str) -> str:
    """Writes ``catalog/items*.csv``, ``logs/span-*/pairs*.csv`` and ``dataset.yaml``.

    Returns:
      The path of the written spec.
    """
    rng = np.random.default_rng(config.seed)
    items = catalog(config, rng)
    pairs = logs(config, items, rng)
    write_shards(items, os.path.join(out_dir, "catalog"), "items", config.shard_rows)
    bounds = np.linspace(0, len(pairs), config.spans + 1).astype(int)
    for span in range(config.spans):
        write_shards(pairs.iloc[bounds[span]:bounds[span + 1]],
                      os.path.join(out_dir, "logs", f"span-{span + 1}"), "pairs",
                      config.shard_rows)
    spec_path = os.path.join(out_dir, "dataset.yaml")
    with open(spec_path, "w", encoding="utf-8") as f:
        f.write(SPEC_YAML.format(train_spans=config.spans))
    return spec_path
