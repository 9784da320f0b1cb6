"""The join step on a hand-built case: features, counts, buckets, rejects."""

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from components.join import beam_join, strategies
from tests.conftest import log_source, tiny_spec
from transforms import features, tables


def test_head_boundary_ranks_by_count_then_id():
    counts = [(5, b"a"), (1, b"b"), (5, b"c"), (2, b"d"), (1, b"e")]
    # ceil(0.1 * 5) = 1 head item: the most frequent, tie broken by id -> a.
    assert beam_join.head_boundary(counts, 0.1) == (5, b"a")
    # ceil(0.5 * 5) = 3 head items: a, c, d.
    boundary = beam_join.head_boundary(counts, 0.5)
    assert boundary == (2, b"d")
    got = {i: beam_join.bucket(n, i, boundary) for n, i in counts}
    assert got == {b"a": "head", b"c": "head", b"d": "head", b"b": "tail", b"e": "tail"}
    assert beam_join.bucket(0, b"z", boundary) == "cold"
    assert beam_join.head_boundary([], 0.1) is None


def _log(seed, item, device=b"m"):
    return {"seed": [seed], "item": [item], "device": [device], "user": [b"u"]}


def _catalog(item_id, genre, year):
    return {"item_id": [item_id], "genre": genre, "year": year}


def _decode(element):
    split, bucket, payload = element
    example = tf.train.Example.FromString(payload)
    f = example.features.feature
    get = lambda k: list(f[k].bytes_list.value) if k in f else None  # noqa: E731
    count = f[features.ITEM_TRAIN_COUNT].int64_list.value[0]
    return (split, bucket, get("query_item_id"), get("item_item_id"), get("query_genre"),
            get("item_genre"), get("context_device"), count,
            f[features.IS_CATALOG_ROW].int64_list.value[0])


def test_join_attaches_features_counts_and_buckets(tiny_root):
    spec = tiny_spec(tiny_root, head_fraction=0.5)
    catalog = [_catalog(b"a", [b"x", b"y"], [b"1990"]), _catalog(b"b", [b"y"], [b"1995"]),
               _catalog(b"c", [], [b"2000"]), _catalog(b"d", [b"z"], [])]
    logs = [("train", _log(b"a", b"b")), ("train", _log(b"c", b"b")),
            ("train", _log(b"b", b"c", b"d")), ("eval", _log(b"a", b"c")),
            ("eval", _log(b"b", b"d")), ("train", _log(b"q", b"a")),   # unknown query
            ("train", _log(b"a", b"zz")), ("eval", _log(b"b", b"zz"))]  # unknown item
    with beam.Pipeline() as p:
        examples, rejects, counts, _, _ = (p | strategies.JoinLogsWithCatalog(
            beam.Create(catalog), log_source(logs), spec))
        # Seen in training: b twice, c once -> 2 items, head = ceil(0.5*2) = 1 -> b.
        assert_that(examples | beam.Map(_decode), equal_to([
            ("train", "head", [b"a"], [b"b"], [b"x", b"y"], [b"y"], [b"m"], 2, 0),
            ("train", "head", [b"c"], [b"b"], [], [b"y"], [b"m"], 2, 0),
            ("train", "tail", [b"b"], [b"c"], [b"y"], [], [b"d"], 1, 0),
            ("eval", "tail", [b"a"], [b"c"], [b"x", b"y"], [], [b"m"], 1, 0),
            ("eval", "cold", [b"b"], [b"d"], [b"y"], [b"z"], [b"m"], 0, 0),
            ("catalog", "cold", None, [b"a"], None, [b"x", b"y"], None, 0, 1),
            ("catalog", "head", None, [b"b"], None, [b"y"], None, 2, 1),
            ("catalog", "tail", None, [b"c"], None, [], None, 1, 1),
            ("catalog", "cold", None, [b"d"], None, [b"z"], None, 0, 1),
        ]), label="examples")
        assert_that(rejects | beam.Map(lambda r: (r.kind, r.location, r.n_rows)), equal_to([
            (tables.UNKNOWN, "item=zz", 2), (tables.UNKNOWN, "query=q", 1)]), label="rejects")
        assert_that(counts, equal_to([(b"b", 2), (b"c", 1)]), label="counts")


def test_unknown_item_policy_error_names_the_id(tiny_root):
    spec = tiny_spec(tiny_root, on_bad_input__unknown_item="error")
    with pytest.raises(Exception, match=r"item id 'zz' is not in the catalog \(1 log rows\)"):
        with beam.Pipeline() as p:
            _ = p | strategies.JoinLogsWithCatalog(
                beam.Create([_catalog(b"a", [], [])]),
                log_source([("train", _log(b"a", b"zz"))]), spec)


def test_held_out_items_leave_training_and_are_counted(tiny_root):
    import hashlib

    spec = tiny_spec(tiny_root, split__cold_item_percent=30)
    ids = [b"i%d" % k for k in range(60)]
    logs = [("train" if k % 5 else "eval", _log(ids[k % 60], ids[(7 * k + 3) % 60]))
            for k in range(300)]

    def oracle_held(item_id):      # independent: the first 8 bytes of SHA-256 mod 100
        return int(hashlib.sha256(item_id).hexdigest()[:16], 16) % 100 < 30

    held = {i for i in ids if oracle_held(i)}
    assert 5 < len(held) < 35
    moved_expected = sum(s == "train" and (r["seed"][0] in held or r["item"][0] in held)
                         for s, r in logs)
    expected = [("eval" if s == "train" and (r["seed"][0] in held or r["item"][0] in held)
                 else s, r["seed"][0], r["item"][0]) for s, r in logs]
    with beam.Pipeline() as p:
        rows, moved = (p | beam.Create(logs)) | beam_join.HoldOutColdItems(spec)
        assert_that(rows | beam.Map(lambda sr: (sr[0], sr[1]["seed"][0], sr[1]["item"][0])),
                    equal_to(expected), label="rows")
        assert_that(moved, equal_to([(beam_join.MOVED_COLD, moved_expected)]), label="moved")
    assert moved_expected > 0
    # Without the option nothing moves.
    plain = tiny_spec(tiny_root)
    assert all(beam_join.hold_out(sr, plain) == sr for sr in logs)


def test_renamed_features_equals_a_parse_and_rename():
    """The wire-format rename gives the Example a parse, rename and serialize gives."""
    from components import tfrecords

    row = {"item_a": [b"x" * 300, b""], "item_b": [3, 2 ** 40], "item_c": [0.5],
           "item_empty": [], "item_dropped": [b"y"], "other": [b"z" * 20000]}
    keys = {b"item_a": b"query_a", b"item_b": b"query_b", b"item_c": b"query_c",
            b"item_empty": b"query_empty"}
    got = tfrecords.example_to_dict(tfrecords.renamed_features(
        tfrecords.dict_to_example(row), keys))
    assert got == {"query_a": [b"x" * 300, b""], "query_b": [3, 2 ** 40], "query_c": [0.5],
                   "query_empty": []}
    assert tfrecords.renamed_features(b"", keys) == b""
    with pytest.raises(ValueError, match="not a serialized"):
        tfrecords.renamed_features(b"\x12\x00", keys)


def test_rows_decoded_in_batches_equal_one_parse_a_record(tmp_path, monkeypatch):
    """The join reads log files in batches (tfx_bsl's decoder): the same rows."""
    from components import tfrecords

    rows = [{"user": [b"u1"], "item": [b"\xc3\xa9" * 200], "n": [3, 2 ** 40], "x": [0.5]},
            {"user": [b"u2"], "item": []},                      # an empty list stays []
            {"n": [7]},                                         # absent columns stay absent
            {"other": [b"z"]},                                  # no requested column at all
            {"user": [b"u3", b"u4"], "item": [b"i"], "x": [1.25, -2.0]}] * 3
    path = str(tmp_path / "rows.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for row in rows:
            writer.write(tfrecords.dict_to_example(row))
    columns = ("user", "item", "n", "x", "missing")
    expected = [tfrecords.example_to_dict(r, columns) for r in tfrecords.read_file(path)]
    for batch in (4, 1, 100):                   # batches that split the rows unevenly, too
        monkeypatch.setattr(tfrecords, "ROWS_BATCH", batch)
        assert list(tfrecords.read_rows(path, columns)) == expected
    assert expected[1] == {"user": [b"u2"], "item": []} and expected[3] == {}
    assert list(tfrecords.read_rows(path)) == [tfrecords.example_to_dict(r)
                                               for r in tfrecords.read_file(path)]
    # A feature with values of two kinds: the decoder refuses that batch, its
    # records are parsed one at a time, and the next batch is decoded again.
    mixed = [{"n": [1]}, {"n": [b"one"]}, {"n": [2]}, {"n": [3]}]
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for row in mixed:
            writer.write(tfrecords.dict_to_example(row))
    monkeypatch.setattr(tfrecords, "ROWS_BATCH", 2)
    assert list(tfrecords.read_rows(path, columns)) == mixed
