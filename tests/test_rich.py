"""The feature-rich benchmark: valid dataset, and its planted groups are recoverable."""

import dataclasses
import os
import pickle
import tempfile

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest

from components.correlation import beam_mi, report
from pipeline.datasets import rich, stats
from transforms.spec import load_spec


def _sums(frame, names):
    rows = [({f: [v.encode() for v in str(frame[f].iloc[k]).split("|") if v] for f in names},
             1.0) for k in range(len(frame))]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sums.pickle")
        with beam.Pipeline() as p:
            _ = (p | beam.Create(rows) | beam_mi.CorrelationSums(names, 10_000)
                 | beam.Map(lambda s: pickle.dump(s, open(path, "wb"))))
        with open(path, "rb") as f:
            return pickle.load(f)


def test_generated_dataset_matches_its_spec(tmp_path):
    spec = load_spec(rich.generate(rich.RichConfig(n_items=500, n_pairs=3000), str(tmp_path)))
    assert [f.name for f in spec.item_features] == ["item_id", *rich.FEATURES]
    assert len(rich.FEATURES) >= 12
    assert {f.name for f in spec.item_features if f.multivalued} == set(rich.MULTIVALUED)
    items = pd.read_csv(os.path.join(spec.catalog.base, "items.csv"), dtype=str)
    pairs = pd.read_csv(os.path.join(spec.logs.base, "span-1", "pairs.csv"), dtype=str)
    assert len(items) == 500 and len(pairs) == 3000
    assert set(pairs["item_id"]) <= set(items["item_id"])
    assert items["title"].nunique() > 0.6 * len(items)                 # near-unique
    counts = pairs["item_id"].value_counts()
    assert counts.iloc[0] > 10 * counts.median()                        # power law


def test_feature_correlation_recovers_the_planted_groups():
    frame, _ = rich.catalog(rich.RichConfig(n_items=3000), np.random.default_rng(1))
    sums = _sums(frame, list(rich.FEATURES))
    doc = report.assemble(sums, "item_id", list(rich.FEATURES), 3, "items", "ami")
    for members in rich.GROUPS.values():
        for f in members:
            siblings = set(members) - {f}
            assert set(doc["ranking"][f][:2]) == siblings, (f, doc["ranking"][f])
            assert set(doc["groups"][f][1:]) == siblings
    idx = {f: i for i, f in enumerate(doc["features"])}
    for f in ("title", "price", "item_id"):          # independent of every other feature
        assert max(abs(doc["ami"][idx[f]][j]) for j in range(len(idx)) if j != idx[f]) < 0.01
    # The plug-in NMI pairs the near-unique title with the id instead.
    plug_in = report.assemble(sums, "item_id", list(rich.FEATURES), 3, "items", "nmi")
    assert plug_in["ranking"]["title"][0] == "item_id"


def test_long_tail_features_grow_with_the_catalog_and_most_items_are_sparse(tmp_path):
    config = rich.RichConfig(n_items=20_000, n_pairs=200_000, long_tail=True)
    spec_path = rich.generate(config, str(tmp_path))
    spec = load_spec(spec_path)
    assert [f.name for f in spec.item_features][-2:] == list(rich.LONG_TAIL_FEATURES)
    items = pd.read_csv(os.path.join(spec.catalog.base, "items.csv"), dtype=str)
    pairs = pd.read_csv(os.path.join(spec.logs.base, "span-1", "pairs.csv"), dtype=str)
    creators = items["creator"].value_counts()
    tags = items["tags"].str.split("|").explode().value_counts()
    for sizes in (creators, tags):              # Zipf-sized: most values on 1-3 items
        assert (sizes <= 3).mean() > 0.6 and sizes.max() >= 100, sizes.describe()
    per_item = pairs["item_id"].value_counts().reindex(items["item_id"], fill_value=0)
    assert (per_item <= 5).mean() > 0.5
    # The statistics, recomputed by hand over the long-tail features only.
    got = stats.long_tail(items, pairs["item_id"], "item_id", ["creator", "tags"],
                          {"tags": "|"})
    sizes = np.concatenate([creators.to_numpy(), tags.to_numpy()])
    assert got["values_on_le3_items_share"] == pytest.approx(np.mean(sizes <= 3))
    assert got["items_le5_pairs_share"] == pytest.approx(np.mean(per_item.to_numpy() <= 5))
    assert stats.of_spec(spec_path)["items_le5_pairs_share"] == got["items_le5_pairs_share"]
    # A bigger catalog has more creators (the vocabulary grows with it).
    bigger, _ = rich.catalog(dataclasses.replace(config, n_items=80_000),
                             np.random.default_rng(0))
    assert bigger["creator"].nunique() > 3 * len(creators)


def test_value_sizes_sum_to_the_catalog_and_follow_the_power_law():
    rng = np.random.default_rng(3)
    sizes = rich.value_sizes(rng, 100_000, 2.0, 2000)
    assert sizes.sum() == 100_000 and sizes.min() >= 1 and sizes.max() <= 2000
    # P(s=1) / P(s=2) = 2^2 for the exponent 2 (up to sampling noise).
    ones, twos = np.sum(sizes == 1), np.sum(sizes == 2)
    assert ones / twos == pytest.approx(4.0, rel=0.15)


def test_feature_correlation_recovers_the_planted_groups_with_the_long_tail():
    config = rich.RichConfig(n_items=3000, long_tail=True, community_items=4)
    frame, _ = rich.catalog(config, np.random.default_rng(1))
    names = list(config.features)
    doc = report.assemble(_sums(frame, names), "item_id", names, 3, "items", "ami")
    for members in rich.GROUPS.values():
        for f in members:
            assert set(doc["ranking"][f][:2]) == set(members) - {f}, (f, doc["ranking"][f])
    # Both long-tail features express the communities (inside theme x origin clusters):
    # tags rank creator first, creator ranks tags among its three closest, and
    # they rank last the features no community expresses (audience is no part of it).
    assert doc["ranking"]["tags"][0] == "creator"
    assert "tags" in doc["ranking"]["creator"][:3]
    assert {"genre", "country"} <= set(doc["ranking"]["creator"][:4])
    unrelated = {"title", "price", "item_id", *rich.GROUPS["audience"]}
    for f in ("creator", "tags"):
        assert set(doc["ranking"][f][-4:]) <= unrelated, (f, doc["ranking"][f])
