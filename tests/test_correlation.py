"""MI statistics against independent oracles (scikit-learn, hand computation)."""

import itertools
import math
import os
import pickle
import tempfile

import apache_beam as beam
import matplotlib.text
import numpy as np
import pytest
from sklearn.metrics import (
    adjusted_mutual_info_score,
    mutual_info_score,
    normalized_mutual_info_score,
)

from components import tfrecords
from components.correlation import beam_mi, estimator, report


def _run(items, names, max_values=10_000, weights=None, n_masked=2, measure="ami"):
    weights = weights or [1.0] * len(items)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sums.pickle")
        with beam.Pipeline() as p:
            _ = (p | beam.Create(list(zip(items, weights)))
                 | beam_mi.CorrelationSums(names, max_values)
                 | beam.Map(lambda s: pickle.dump(s, open(path, "wb"))))
        with open(path, "rb") as f:
            sums = pickle.load(f)
    return report.assemble(sums, "id", names, n_masked, "items", measure)


def _random_items(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, n)
    b = np.where(rng.random(n) < 0.6, a, rng.integers(0, 6, n))      # correlated with a
    c = rng.integers(0, 4, n)                                         # independent
    items = [{"a": [b"a%d" % x], "b": [b"b%d" % y], "c": [b"c%d" % z], "d": [b"a%d" % x]}
             for x, y, z in zip(a, b, c)]
    return items, a, b, c


def test_single_valued_matches_sklearn():
    items, a, b, c = _random_items(3000, seed=0)
    doc = _run(items, ["a", "b", "c", "d"])
    idx = {f: i for i, f in enumerate(doc["features"])}
    mi, nmi = np.array(doc["mi"]), np.array(doc["nmi"])
    for (f, x), (g, y) in [(("a", a), ("b", b)), (("a", a), ("c", c)), (("b", b), ("c", c))]:
        assert mi[idx[f], idx[g]] == pytest.approx(mutual_info_score(x, y), abs=1e-9)
        assert nmi[idx[f], idx[g]] == pytest.approx(
            normalized_mutual_info_score(x, y, average_method="max"), abs=1e-9)
    assert doc["entropy"]["a"] == pytest.approx(mutual_info_score(a, a), abs=1e-9)
    # Invariants: symmetry, bounds, a duplicated feature has MI = its entropy.
    assert np.allclose(mi, mi.T) and np.allclose(nmi, nmi.T)
    h = np.array([doc["entropy"][f] for f in doc["features"]])
    assert (mi >= 0).all() and (mi <= np.minimum.outer(h, h) + 1e-9).all()
    assert mi[idx["a"], idx["d"]] == pytest.approx(doc["entropy"]["a"])
    assert nmi[idx["a"], idx["d"]] == pytest.approx(1.0)
    # The id determines everything: MI(id, f) = H(f), H(id) = log N.
    assert mi[0, idx["b"]] == pytest.approx(doc["entropy"]["b"])
    assert doc["entropy"]["id"] == pytest.approx(math.log(3000))


def _coded(values, prefix):
    return [[prefix + b"%d" % v] for v in values]


def test_adjusted_mi_matches_sklearn_on_single_valued_pairs():
    rng = np.random.default_rng(5)
    n = 1500
    low = rng.integers(0, 4, n)                                   # 4 values
    mid = np.where(rng.random(n) < 0.3, low * 10, rng.integers(0, 40, n))   # depends on low
    high = rng.integers(0, 700, n)                                # ~N/2 values, independent
    some = np.where(rng.random(n) < 0.5, high // 7, rng.integers(0, 100, n))  # depends on high
    columns = {"low": low, "mid": mid, "high": high, "some": some}
    items = [{f: [b"%d" % columns[f][k]] for f in columns} for k in range(n)]
    doc = _run(items, list(columns))
    idx = {f: i for i, f in enumerate(doc["features"])}
    ami = np.array(doc["ami"])
    for f in columns:
        for g in columns:
            if f < g:
                assert ami[idx[f], idx[g]] == pytest.approx(
                    adjusted_mutual_info_score(columns[f], columns[g]), abs=1e-9), (f, g)
    ids = np.arange(n)
    for f in columns:        # a unique key: MI = EMI = H(f), so AMI is 0 (sklearn: ~1e-12)
        assert doc["emi"][0][idx[f]] == pytest.approx(doc["mi"][0][idx[f]], rel=1e-9)
        assert ami[0, idx[f]] == pytest.approx(adjusted_mutual_info_score(ids, columns[f]),
                                               abs=1e-9)
        assert ami[0, idx[f]] == 0.0
    assert np.allclose(ami, ami.T) and np.allclose(np.diag(ami), 1.0)


def test_independent_high_cardinality_pair_scores_near_zero():
    rng = np.random.default_rng(6)
    n = 2000
    x, y = rng.integers(0, n // 2, n), rng.integers(0, n // 2, n)
    assert len(set(x)) > 800 and len(set(y)) > 800
    items = [{"x": [b"%d" % u], "y": [b"%d" % v]} for u, v in zip(x, y)]
    doc = _run(items, ["x", "y"], n_masked=1)
    assert doc["nmi"][1][2] > 0.5      # plug-in: a sparse table looks deterministic
    assert abs(doc["ami"][1][2]) <= 0.02
    assert doc["ami"][1][2] == pytest.approx(adjusted_mutual_info_score(x, y), abs=1e-9)


def test_planted_pair_ranks_first_among_high_cardinality_noise():
    rng = np.random.default_rng(7)
    n = 2000
    a = rng.integers(0, 200, n)
    b = np.where(rng.random(n) < 0.25, a, rng.integers(0, 200, n))    # 25% copies of a
    noise = {f"noise{k}": rng.integers(0, 1000 + 200 * k, n) for k in range(4)}
    columns = {**noise, "a": a, "b": b}
    items = [{f: [b"%d" % columns[f][k]] for f in columns} for k in range(n)]
    doc = _run(items, list(columns), n_masked=2)
    assert doc["ranking"]["a"][0] == "b" and doc["ranking"]["b"][0] == "a"
    assert doc["groups"]["a"] == ["a", "b"]
    # The plug-in NMI ranks b last, below the id and every noise feature.
    plug_in = _run(items, list(columns), n_masked=2, measure="nmi")
    assert plug_in["measure"] == "nmi" and plug_in["ranking"]["a"][-1] == "b"
    # The id is independent of everything (AMI 0): its group is itself plus
    # the first features in spec order, i.e. no feature is drawn in by it.
    assert all(doc["ami"][0][j] == 0.0 for j in range(1, len(doc["features"])))
    assert doc["groups"]["id"] == ["id", "noise0"]


def test_multivalued_expected_mi_matches_a_permutation_null():
    rng = np.random.default_rng(8)
    n = 600
    tags = [[b"t%d" % v for v in set(rng.integers(0, 40, rng.integers(1, 4)))] for _ in range(n)]
    kind = [[b"k%d" % rng.integers(0, 60)] for _ in range(n)]
    items = [{"tags": t, "kind": k} for t, k in zip(tags, kind)]
    doc = _run(items, ["tags", "kind"], n_masked=1)
    i, j = doc["features"].index("tags"), doc["features"].index("kind")
    null = []
    for _ in range(200):     # MI of the same pair with the items of one side shuffled
        order = rng.permutation(n)
        shuffled = [{"tags": tags[k], "kind": kind[order[k]]} for k in range(n)]
        null.append(estimator.exact_mi(shuffled, "tags", "kind")[0])
    mean, sem = np.mean(null), np.std(null) / np.sqrt(len(null))
    assert doc["mi"][i][j] == pytest.approx(estimator.exact_mi(items, "tags", "kind")[0])
    # The hypergeometric expectation over fractional counts is an approximation:
    # within 5% of the permutation mean (and of its Monte-Carlo error).
    assert abs(doc["emi"][i][j] - mean) <= 0.05 * mean + 4 * sem, (doc["emi"][i][j], mean, sem)
    assert abs(doc["ami"][i][j]) < 0.03


def test_independent_features_near_zero_on_large_samples():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 50_000), rng.integers(0, 5, 50_000)
    items = [{"x": [b"%d" % u], "y": [b"%d" % v]} for u, v in zip(x, y)]
    doc = _run(items, ["x", "y"], n_masked=1)
    assert doc["mi"][1][2] < 1e-3     # plug-in bias ~ (5-1)(5-1) / (2N) = 1.6e-4


def test_multivalued_hand_computed():
    # Item 1: tags {p, q}, kind k -> cells (p,k) 1/2, (q,k) 1/2.
    # Item 2: tags {p},    kind k -> (p,k) 1.   Item 3: tags {q}, kind m -> (q,m) 1.
    # Joint: (p,k)=1.5/3, (q,k)=0.5/3, (q,m)=1/3; marginals p=.5, q=.5; k=2/3, m=1/3.
    items = [{"tags": [b"p", b"q"], "kind": [b"k"]}, {"tags": [b"p"], "kind": [b"k"]},
             {"tags": [b"q"], "kind": [b"m"]}]
    joint = {("p", "k"): .5, ("q", "k"): 1 / 6, ("q", "m"): 1 / 3}
    pt, pk = {"p": .5, "q": .5}, {"k": 2 / 3, "m": 1 / 3}
    expected = sum(v * math.log(v / (pt[t] * pk[k])) for (t, k), v in joint.items())
    doc = _run(items, ["tags", "kind"], n_masked=1)
    i, j = doc["features"].index("tags"), doc["features"].index("kind")
    assert doc["mi"][i][j] == pytest.approx(expected, abs=1e-12)
    assert estimator.exact_mi(items, "tags", "kind")[0] == pytest.approx(expected, abs=1e-12)
    # MI(id, tags) = H(tags) - mean log|tags| = log 2 - (log 2)/3.
    assert doc["mi"][0][i] == pytest.approx(math.log(2) - math.log(2) / 3)


def test_train_frequency_weighting_equals_repeating_items():
    items, *_ = _random_items(200, seed=3)
    weights = [float(k % 3) for k in range(200)]
    repeated = [it for it, w in zip(items, weights) for _ in range(int(w))]
    doc_w = _run(items, ["a", "b", "c"], weights=weights)
    doc_r = _run(repeated, ["a", "b", "c"])
    assert np.allclose(np.array(doc_w["mi"])[1:, 1:], np.array(doc_r["mi"])[1:, 1:])


def test_hashing_high_cardinality_can_only_lower_mi():
    items, *_ = _random_items(2000, seed=4)
    exact = _run(items, ["a", "b"])
    hashed = _run(items, ["a", "b"], max_values=3)      # a and b have 6 values -> hashed
    assert hashed["support"]["a"]["hashed_into_buckets"] == 3
    assert hashed["mi"][1][2] <= exact["mi"][1][2] + 1e-12


def test_degenerate_features_are_reported_not_fatal():
    items = [{"a": [b"%d" % (k % 3)], "const": [b"x"], "empty": []} for k in range(30)]
    doc = _run(items, ["a", "const", "empty"])
    assert set(doc["degenerate"]) == {"const", "empty"}
    assert doc["mi"][1][2] == 0.0 and doc["mi"][1][3] == 0.0
    assert any("const is degenerate" in line for line in report.describe_groups(doc))


def test_heat_map_shows_the_grouping_measure(tmp_path):
    import matplotlib.image

    items, *_ = _random_items(300, seed=9)
    doc = _run(items, ["a", "b", "c"])
    report.write(doc, str(tmp_path))
    image = matplotlib.image.imread(str(tmp_path / report.PNG_FILE))
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert report.read(str(tmp_path))["measure"] == "ami"
    assert report.describe_groups(doc)[0] == "grouped by Adjusted MI (chance-corrected)"
    with pytest.raises(ValueError, match="measure must be one of"):
        report.assemble([], "id", ["a"], 1, "items", "pearson")


@pytest.mark.parametrize("n_features,measure", [(2, "ami"), (3, "nmi"), (14, "ami")])
def test_every_text_of_the_heat_map_is_inside_the_image(n_features, measure):
    """The title (and every label) lies inside the saved figure, whatever its width."""
    names = [f"feature_{i}" for i in range(n_features)]
    matrix = np.eye(n_features).tolist()
    doc = {"features": names, "measure": measure, measure: matrix, "weighting": "train_frequency"}
    fig = report.heatmap(doc)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    width, height = fig.bbox.width, fig.bbox.height
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    titles = [t.get_text().replace("\n", " ") for t in texts]
    assert (
        f"{report.MEASURE_TITLES[measure]} between item features (groups CFM; "
        "train_frequency weighting)") in titles
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, (
            text.get_text(), box, (width, height))


def test_cfm_groups_seed_plus_top_nmi():
    names = ["id", "a", "b", "c"]
    nmi = [[1, .1, .2, .3], [.1, 1, .9, .0], [.2, .9, 1, .5], [.3, .0, .5, 1]]
    groups = estimator.cfm_groups(names, nmi, 2)
    assert groups == {"id": ["id", "c"], "a": ["a", "b"], "b": ["b", "a"], "c": ["c", "b"]}
    assert estimator.cfm_groups(names, nmi, 3)["b"] == ["b", "a", "c"]
    with pytest.raises(ValueError, match="n_masked must be in"):
        estimator.cfm_groups(names, nmi, 4)


def test_feature_missing_from_catalog_examples_is_an_error(tmp_path):
    import tensorflow as tf

    from components.correlation import executor

    path = str(tmp_path / "part.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        w.write(tfrecords.dict_to_example({"item_item_id": [b"a"], "item_genre": [b"x"]}))
    executor.check_features_present(str(tmp_path), ["item_id", "genre"])
    with pytest.raises(executor.MissingFeatureError, match=r"no feature\(s\) \['item_year'\]"):
        executor.check_features_present(str(tmp_path), ["item_id", "genre", "year"])


def test_settings_are_validated_once_naming_the_setting():
    from components.correlation.settings import CorrelationSettings

    assert CorrelationSettings().measure == "ami"
    for kwargs, message in (({"weighting": "clicks"}, "weighting must be one of"),
                            ({"max_values": 1}, "max_values must be >= 2"),
                            ({"measure": "pearson"}, "measure must be one of"),
                            ({"sample_items": -1}, "sample_items must be >= 0")):
        with pytest.raises(ValueError, match=f"correlation {message}"):
            CorrelationSettings(**kwargs)


def test_item_sample_is_uniform_deterministic_and_off_for_small_catalogs():
    from components.correlation import executor

    assert executor.sample_fraction(200_000, 150_000) == 1.0
    assert executor.sample_fraction(0, 5_000_000) == 1.0
    assert executor.sample_fraction(200_000, 1_000_000) == 0.2
    ids = [b"item-%d" % i for i in range(20_000)]
    kept = [i for i in ids if executor.in_sample(i, 0.2)]
    # Binomial(20000, 0.2): mean 4000, sd about 57.
    assert abs(len(kept) - 4000) < 5 * 57
    assert kept == [i for i in ids if executor.in_sample(i, 0.2)]       # the same every run
    assert set(i for i in ids if executor.in_sample(i, 0.1)) <= set(kept)  # nested samples
    assert all(executor.in_sample(i, 1.0) for i in ids[:10])


def _count_of_counts(rows, names):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cells.pickle")
        with beam.Pipeline() as p:
            _ = (p | beam.Create(rows) | beam_mi.CountOfCounts(names)
                 | beam.combiners.ToList()
                 | beam.Map(lambda cells: pickle.dump(cells, open(path, "wb"))))
        with open(path, "rb") as f:
            return dict(pickle.load(f))


def _count_of_counts_by_definition(rows, names):
    """Each table's values' summed item shares, counted per distinct sum, item by item."""
    def rounded(sums):
        return tuple(round(x, 9) for x in sums)

    def table(pairs):                      # [(values, weight)] -> {value: summed shares}
        sums = {}
        for values, w in pairs:
            u = w / len(values)
            for v in values:
                old = sums.get(v, (0.0, 0.0, 0.0, 0.0))
                sums[v] = (old[0] + u, old[1] + 1, old[2] + u * u, old[3] + u * math.log(u))
        return sums

    out = {}

    def count(key, sums):
        for s in sums.values():
            cell = (*key, rounded(s))
            out[cell] = out.get(cell, 0.0) + 1.0

    for f in names:
        count(("vhist", f), table([(r[f], w) for r, w in rows if r[f]]))
    for f, g in itertools.combinations(sorted(names), 2):
        both = [(r, w) for r, w in rows if r[f] and r[g]]
        if both:
            out[("pairitems", (f, g))] = float(len(both))
        count(("lefthist", (f, g)), table([(r[f], w) for r, w in both]))
        count(("righthist", (f, g)), table([(r[g], w) for r, w in both]))
    return out


def test_count_of_counts_with_empty_cells_matches_the_definition():
    rng = np.random.default_rng(11)
    names = ["a", "b", "c", "d"]
    rows = []
    for _ in range(400):
        row = {}
        for f, (size, empty) in zip(names, [(5, 0.0), (8, 0.3), (4, 0.5), (30, 0.1)]):
            n = 0 if rng.random() < empty else int(rng.integers(1, 4))
            row[f] = sorted({b"%s%d" % (f.encode(), x) for x in rng.integers(0, size, n)})
        rows.append((row, float(rng.choice([1.0, 2.0, 0.5]))))
    got = _count_of_counts(rows, names)
    want = _count_of_counts_by_definition(rows, names)
    assert {k for k in want if k[0] == "righthist"}        # pairs with empty sides exist
    assert got == pytest.approx(want)


def test_summed_cells_refuse_windowed_input():
    with pytest.raises(Exception, match="global window"):
        with beam.Pipeline() as p:
            _ = (p | beam.Create([1, 2])
                 | beam.Map(lambda x: beam.window.TimestampedValue(x, x))
                 | beam.WindowInto(beam.window.FixedWindows(10))
                 | beam.ParDo(beam_mi.SummedCells(lambda x: [(x, 1.0)])))


def test_summed_cells_add_partial_sums_across_flushes():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sums.pickle")
        with beam.Pipeline() as p:
            _ = (p | beam.Create(list(range(20)))
                 | beam.ParDo(beam_mi.SummedCells(lambda x: [(x % 3, 1.0), ("all", x)],
                                                  max_keys=2))
                 | beam.CombinePerKey(sum) | beam.combiners.ToList()
                 | beam.Map(lambda kv: pickle.dump(dict(kv), open(path, "wb"))))
        with open(path, "rb") as f:
            got = pickle.load(f)
    assert got == {0: 7.0, 1: 7.0, 2: 6.0, "all": 190.0}
