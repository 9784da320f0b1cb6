"""The ingest executor run directly on bad inputs: clear errors, counted rejects."""

import json
import os

import pytest
import tensorflow as tf
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.ingest import executor
from components.ingest.component import ContractExampleGen
from tests.conftest import tiny_spec, write
from transforms import tables


def _ingest(spec, table, pattern, out_dir):
    component = ContractExampleGen(spec, table)
    props = dict(component.exec_properties)
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(props["input_config"], input_config)
    input_config.splits[0].pattern = pattern
    props["input_config"] = proto_utils.proto_to_json(input_config)
    examples = standard_artifacts.Examples()
    examples.uri = str(out_dir)
    executor.Executor().Do({}, {"examples": [examples]}, props)
    return examples


def _count_records(examples, split):
    pattern = os.path.join(examples.uri, f"Split-{split}", "*")
    return sum(sum(1 for _ in tf.data.TFRecordDataset(f, compression_type="GZIP"))
               for f in tf.io.gfile.glob(pattern))


def test_logs_are_split_and_rejects_reported(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root)
    write(os.path.join(spec.logs.base, "span-2", "p.csv"), """\
        user,seed,item,device
        u1,a,b,mobile
        u1,a
        u2,a,c,mobile
        """)
    examples = _ingest(spec, tables.LOGS, "span-2/*.csv", tmp_path / "out")
    assert examples.get_int_custom_property(executor.ROWS_OK) == 2
    assert examples.get_int_custom_property(tables.MALFORMED) == 1
    assert _count_records(examples, "train") + _count_records(examples, "eval") == 2
    report = tf.io.gfile.glob(str(tmp_path / "out" / "report" / "rejects*.tsv"))
    lines = [line for f in report for line in open(f).read().splitlines()]
    assert lines == [f"malformed_row\t{spec.logs.base}/span-2/p.csv:3\t1\t"
                     "expected 4 fields as in the header, got 2"]


def test_empty_span_fails_and_names_it(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root)
    write(os.path.join(spec.logs.base, "span-3", "p.csv"), "user,seed,item,device\n")
    with pytest.raises(tables.InputError, match="has no valid row"):
        _ingest(spec, tables.LOGS, "span-3/*.csv", tmp_path / "out")


def test_missing_file_fails(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root)
    with pytest.raises(tables.InputError, match=r"no logs file matches .*span-9/\*\.csv"):
        _ingest(spec, tables.LOGS, "span-9/*.csv", tmp_path / "out")


def test_duplicate_catalog_id_is_an_error_naming_both_rows(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root)
    write(os.path.join(spec.catalog.base, "more.csv"), "item_id,genre,year\nb,q,2001\n")
    with pytest.raises(Exception, match=r"catalog item id 'b' appears 2 times \(.*items.csv:3, "
                                        r".*more.csv:2\)"):
        _ingest(spec, tables.CATALOG, "*.csv", tmp_path / "out")


def test_duplicate_catalog_id_keep_first_is_counted(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root, on_bad_input__duplicate_item="keep_first")
    write(os.path.join(spec.catalog.base, "more.csv"), "item_id,genre,year\nb,q,2001\n")
    examples = _ingest(spec, tables.CATALOG, "*.csv", tmp_path / "out")
    assert examples.get_int_custom_property(executor.ROWS_OK) == 4
    assert examples.get_int_custom_property(tables.DUPLICATE) == 1
    split = os.path.join(examples.uri, "Split-catalog")
    years = []
    for name in tf.io.gfile.listdir(split):
        for record in tf.data.TFRecordDataset(os.path.join(split, name), "GZIP"):
            ex = tf.train.Example.FromString(record.numpy())
            if ex.features.feature["item_id"].bytes_list.value == [b"b"]:
                years += list(ex.features.feature["year"].bytes_list.value)
    assert years == [b"1995"]          # the first definition (items.csv) is kept
    assert json.loads(open(os.path.join(examples.uri, "report", "counts.json")).read()) == {
        "duplicate_item": 1, "rows_ok": 4}


def _records(examples, split):
    """The split's Examples, each serialized deterministically (map order fixed), sorted."""
    pattern = os.path.join(examples.uri, f"Split-{split}", "*")
    return sorted(tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
                  for f in tf.io.gfile.glob(pattern)
                  for r in tf.data.TFRecordDataset(f, compression_type="GZIP"))


def _user(record):
    return tf.train.Example.FromString(record).features.feature["user"].bytes_list.value[0]


@pytest.mark.parametrize("split", [{"eval_percent": 10, "key": "user"}, {"eval_percent": 30}],
                         ids=["by_user", "by_row"])
def test_logs_split_as_tfx_example_gen_splits_them(tiny_root, tmp_path, split):
    """Shards written while reading hold exactly ExampleGen's own split of the rows."""
    spec = tiny_spec(tiny_root, split=split)
    for part in range(2):
        rows = "".join(f"u{part}-{i % 97},s{part}-{i},{'bc'[i % 2]},{['mobile', ''][i % 3 == 0]}\n"
                       for i in range(600))
        write(os.path.join(spec.logs.base, "span-4", f"p{part}.csv"),
              "user,seed,item,device\n" + rows)
    examples = _ingest(spec, tables.LOGS, "span-4/*.csv", tmp_path / "out")
    # ExampleGen's own path: TFX's split of the records the input transform returns.
    stock = standard_artifacts.Examples()
    stock.uri = str(tmp_path / "stock")
    stock.split_names = '["train", "eval"]'
    props = dict(ContractExampleGen(spec, tables.LOGS).exec_properties)
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(props["input_config"], input_config)
    input_config.splits[0].pattern = "span-4/*.csv"
    props["input_config"] = proto_utils.proto_to_json(input_config)
    props[executor.REPORT_DIR_KEY] = str(tmp_path / "stock" / "report")
    executor.Executor()._write_records(props, [stock])
    train, evaluation = _records(examples, "train"), _records(examples, "eval")
    assert train == _records(stock, "train") and evaluation == _records(stock, "eval")
    assert len(train) + len(evaluation) == 1200
    if "key" in split:     # hand check: a user's rows share one split, ~10% of users in eval
        eval_users, train_users = {_user(r) for r in evaluation}, {_user(r) for r in train}
        assert not eval_users & train_users
        assert 0 < len(eval_users) < 0.3 * (len(eval_users) + len(train_users))
    else:                  # by row: ~30% of the rows in eval
        assert 0.2 * 1200 < len(evaluation) < 0.4 * 1200
    shards = sorted(os.listdir(tmp_path / "out" / "Split-train"))
    assert shards == ["data_tfrecord-00000-of-00002.gz", "data_tfrecord-00001-of-00002.gz"]
    assert not os.path.exists(tmp_path / "out" / ".tmp")


def test_failed_log_ingest_leaves_no_temporary_shards(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root, on_bad_input__malformed_row="error")
    write(os.path.join(spec.logs.base, "span-5", "p.csv"),
          "user,seed,item,device\nu1,a,b,mobile\nu2,a\n")
    with pytest.raises(Exception, match=r"p.csv:3: expected 4 fields"):
        _ingest(spec, tables.LOGS, "span-5/*.csv", tmp_path / "out")
    assert not os.path.exists(tmp_path / "out" / ".tmp")
    assert not tf.io.gfile.glob(str(tmp_path / "out" / "Split-*" / "*"))


def test_shards_per_file_by_size():
    assert executor.shards_per_file([10, 4096, 4097, 1], 4096) == [
        (0, 1, 5), (1, 1, 5), (2, 2, 5), (4, 1, 5)]


def test_a_large_log_file_is_dealt_to_several_balanced_shards(tiny_root, tmp_path, monkeypatch):
    """Each split of a file gets one shard per SHARD_BYTES read, its rows dealt evenly."""
    spec = tiny_spec(tiny_root, split={"eval_percent": 30})
    rows = "".join(f"u{i},s{i},b,mobile\n" for i in range(900))
    path = write(os.path.join(spec.logs.base, "span-7", "p.csv"), "user,seed,item,device\n" + rows)
    monkeypatch.setattr(executor, "SHARD_BYTES", 4096)
    n_shards = -(-os.path.getsize(path) // 4096)
    assert n_shards >= 3
    examples = _ingest(spec, tables.LOGS, "span-7/*.csv", tmp_path / "out")
    total = 0
    for split in ("train", "eval"):
        files = sorted(tf.io.gfile.glob(os.path.join(examples.uri, f"Split-{split}", "*")))
        assert [os.path.basename(f) for f in files] == [
            f"data_tfrecord-{j:05d}-of-{n_shards:05d}.gz" for j in range(n_shards)]
        sizes = [sum(1 for _ in tf.data.TFRecordDataset(f, compression_type="GZIP"))
                 for f in files]
        assert max(sizes) - min(sizes) <= 1
        total += sum(sizes)
    assert total == 900
