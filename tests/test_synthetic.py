"""The synthetic generator: deterministic, power-law, planted correlations."""

import filecmp

import numpy as np
import pandas as pd
from sklearn.metrics import mutual_info_score

from pipeline.datasets import synthetic
from transforms.spec import load_spec


def test_same_seed_same_bytes_and_valid_spec(tmp_path):
    config = synthetic.SyntheticConfig(n_items=200, n_pairs=2000, spans=2, seed=3)
    spec_a = synthetic.generate(config, str(tmp_path / "a"))
    synthetic.generate(config, str(tmp_path / "b"))
    for rel in ("catalog/items.csv", "logs/span-1/pairs.csv", "logs/span-2/pairs.csv"):
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False)
    spec = load_spec(spec_a)
    assert spec.train_spans == 2 and [f.name for f in spec.context_features] == ["device"]


def test_logs_follow_a_power_law_and_leave_items_unseen():
    config = synthetic.SyntheticConfig(n_items=5000, n_pairs=50000, seed=1)
    rng = np.random.default_rng(config.seed)
    items = synthetic.catalog(config, rng)
    logs = synthetic.logs(config, items, rng)
    counts = logs["item_id"].value_counts().to_numpy()
    top = counts[: len(items) // 10].sum() / counts.sum()
    assert top > 0.5                                   # top 10% of items: most traffic
    assert logs["item_id"].nunique() < len(items)      # cold items exist
    same = (items.set_index("item_id").loc[logs["seed_item_id"], "category"].to_numpy()
            == items.set_index("item_id").loc[logs["item_id"], "category"].to_numpy())
    assert abs(same.mean() - (0.7 + 0.3 / config.categories())) < 0.02


def test_planted_correlations():
    config = synthetic.SyntheticConfig(n_items=20000, n_pairs=10, seed=2)
    items = synthetic.catalog(config, np.random.default_rng(config.seed))
    mi = lambda a, b: mutual_info_score(items[a], items[b])  # noqa: E731
    entropy = lambda a: mutual_info_score(items[a], items[a])  # noqa: E731
    # subcategory determines category: MI = H(category).
    assert np.isclose(mi("category", "subcategory"), entropy("category"))
    assert mi("category", "brand") > 0.5 * entropy("category")
    assert mi("price", "category") < 0.01               # planted independent
    assert pd.Series(items["tags"].str.count(r"\|") + 1).between(1, 3).all()
