"""The feature-rich benchmark: valid dataset, and its planted groups are recoverable."""

import os
import pickle
import tempfile

import apache_beam as beam
import numpy as np
import pandas as pd

from components.correlation import beam_mi, report
from pipeline.datasets import rich
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
