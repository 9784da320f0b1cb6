"""The two join strategies (shuffle, side input) and the size switch between them."""

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from components.ingest import executor as ingest_executor
from components.join import beam_join, strategies
from components.join import executor as join_executor
from tests.conftest import log_source, tiny_spec


def _random_case(seed: int) -> tuple[list, list]:
    """200 catalog items (some features empty or multi-valued), 3000 log rows.

    About 2% of the log rows name an engaged or query item absent from the
    catalog, so both strategies must also agree on the rejects.
    """
    rng = np.random.default_rng(seed)
    catalog = []
    for i in range(200):
        genres = [f"g{g}".encode() for g in rng.choice(6, size=rng.integers(0, 3), replace=False)]
        year = [] if i % 17 == 0 else [str(1950 + i % 60).encode()]
        catalog.append({"item_id": [f"i{i}".encode()], "genre": genres, "year": year})
    # Zipf-like popularity over 230 ids, so ids 200..229 are unknown; many items unseen.
    ids = np.minimum(rng.zipf(1.3, size=(3000, 2)) - 1, 229)
    logs = [("eval" if rng.random() < 0.1 else "train",
             {"seed": [f"i{q}".encode()], "item": [f"i{e}".encode()],
              "device": [rng.choice([b"m", b"d", b"t"])], "user": [b"u"]})
            for q, e in ids]
    return catalog, logs


def _canonical(line: str) -> tuple:
    split, bucket, payload = json.loads(line)
    feature = tf.train.Example.FromString(bytes.fromhex(payload)).features.feature
    values = {}
    for key in sorted(feature):
        kind = feature[key].WhichOneof("kind")
        values[key] = (kind, list(getattr(feature[key], kind).value))
    return split, bucket, repr(values)


def _run(spec, catalog, logs, strategy, out_dir):
    """Runs the join; returns (canonical examples, rejects, counts), each sorted."""
    with beam.Pipeline() as p:
        examples, rejects, counts, moved, _ = (p | strategies.JoinLogsWithCatalog(
            beam.Create(catalog), log_source(logs), spec, strategy))
        for name, pcoll, fn in [
                ("examples", examples, lambda e: json.dumps([e[0], e[1], e[2].hex()])),
                ("rejects", rejects, lambda r: json.dumps([r.kind, r.location, r.n_rows])),
                ("counts", counts, lambda c: json.dumps([c[0].decode(), c[1]])),
                ("moved", moved, json.dumps)]:
            _ = (pcoll | f"Json[{name}]" >> beam.Map(fn)
                 | f"Write[{name}]" >> beam.io.WriteToText(os.path.join(out_dir, name)))

    def lines(name):
        return sorted(line for f in glob.glob(os.path.join(out_dir, f"{name}*"))
                      for line in open(f).read().splitlines())
    return (sorted(map(_canonical, lines("examples"))), lines("rejects"), lines("counts"),
            lines("moved"))


@pytest.mark.parametrize("seed,cold_percent", [(0, 0), (1, 0), (2, 20)])
def test_strategies_give_identical_examples_rejects_and_counts(tiny_root, tmp_path, seed,
                                                               cold_percent):
    spec = tiny_spec(tiny_root, head_fraction=0.2, split__cold_item_percent=cold_percent)
    catalog, logs = _random_case(seed)
    shuffle = _run(spec, catalog, logs, beam_join.SHUFFLE, str(tmp_path / "shuffle"))
    side = _run(spec, catalog, logs, beam_join.SIDE_INPUT, str(tmp_path / "side"))
    examples, rejects, counts, moved = shuffle
    # Independent count of what the join must produce: every catalog row once,
    # every log row whose both items are known, one reject per unknown (side, id).
    known = {r["item_id"][0] for r in catalog}
    held = {i for _, r in logs for i in (r["item"][0], r["seed"][0])
            if beam_join.held_out(i, cold_percent)}
    logs = [("eval" if s == "train" and {r["item"][0], r["seed"][0]} & held else s, r)
            for s, r in logs]
    kept = [(s, r) for s, r in logs if r["item"][0] in known and r["seed"][0] in known]
    unknown = ({("item", r["item"][0]) for _, r in logs if r["item"][0] not in known}
               | {("query", r["seed"][0]) for _, r in logs
                  if r["item"][0] in known and r["seed"][0] not in known})
    assert len(examples) == len(catalog) + len(kept)
    assert len(rejects) == len(unknown) > 0
    assert len(counts) == len({r["item"][0] for s, r in kept if s == "train"})
    assert {b for _, b, _ in examples} == {"head", "tail", "cold"}
    assert (json.loads(moved[0])[1] > 0) == (cold_percent > 0)
    assert side == shuffle


@pytest.mark.parametrize("strategy", beam_join.STRATEGIES)
def test_unknown_item_error_names_the_id_and_count(tiny_root, strategy):
    spec = tiny_spec(tiny_root, on_bad_input__unknown_item="error")
    logs = [("train", {"seed": [b"a"], "item": [b"zz"], "device": [b"m"], "user": [b"u"]})] * 3
    with pytest.raises(Exception, match=r"item id 'zz' is not in the catalog \(3 log rows\)"):
        with beam.Pipeline() as p:
            _ = p | strategies.JoinLogsWithCatalog(
                beam.Create([{"item_id": [b"a"]}]), log_source(logs), spec, strategy)


def test_unknown_strategy_is_refused(tiny_root):
    with pytest.raises(ValueError, match="join strategy must be one of"):
        with beam.Pipeline() as p:
            _ = p | strategies.JoinLogsWithCatalog(
                beam.Create([]), log_source([]), tiny_spec(tiny_root), "broadcast")


def _catalog_artifact(n_rows):
    artifact = standard_artifacts.Examples()
    if n_rows is not None:
        artifact.set_int_custom_property(ingest_executor.ROWS_OK, n_rows)
    return artifact


@pytest.mark.parametrize("max_items,expected", [
    (1000, beam_join.SIDE_INPUT),   # threshold exactly at the catalog size
    (999, beam_join.SHUFFLE),       # just below: the catalog no longer fits
    (1001, beam_join.SIDE_INPUT),   # just above
    (0, beam_join.SHUFFLE),         # 0 always shuffles
])
def test_size_switch_at_its_boundary(max_items, expected):
    assert join_executor.choose_strategy(_catalog_artifact(1000), max_items) == expected


def test_catalog_without_a_row_count_is_shuffled():
    assert join_executor.choose_strategy(_catalog_artifact(None), 10**9) == beam_join.SHUFFLE


def test_pipeline_config_wires_the_threshold_into_the_join(tiny_root, tmp_path):
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import data_components

    config = PipelineConfig(spec=tiny_spec(tiny_root), run_root=str(tmp_path),
                            join_side_input_max_items=123)
    join = {c.id: c for c in data_components(config)}["JoinExamples"]
    assert join.exec_properties[join_executor.SIDE_INPUT_MAX_ITEMS_KEY] == 123
    with pytest.raises(ValueError, match="join_side_input_max_items must be >= 0, got -5"):
        PipelineConfig(spec=tiny_spec(tiny_root), run_root=str(tmp_path),
                       join_side_input_max_items=-5)


def test_a_join_that_loses_rows_is_refused():
    summary = {"train": 80, "eval": 15, "catalog": 10, "rejected_unknown_item": 5,
               "moved_to_eval_cold_items": 3}
    logs = [_catalog_artifact(60), _catalog_artifact(40)]        # two spans, 100 log rows
    join_executor.check_complete(summary, _catalog_artifact(10), logs)
    join_executor.check_complete(summary, _catalog_artifact(None), [_catalog_artifact(None)])
    with pytest.raises(RuntimeError, match="accounted for 9 of the 10 catalog rows"):
        join_executor.check_complete(dict(summary, catalog=9), _catalog_artifact(10), logs)
    with pytest.raises(RuntimeError, match="accounted for 99 of the 100 log rows"):
        join_executor.check_complete(dict(summary, eval=14), _catalog_artifact(10), logs)


def _split_records(examples, split):
    """The split's Examples, each serialized deterministically, sorted."""
    folder = os.path.join(examples.uri, f"Split-{split}")
    return sorted(tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
                  for f in glob.glob(os.path.join(folder, "*"))
                  for r in tf.data.TFRecordDataset(f, compression_type="GZIP"))


def test_executor_strategies_write_identical_splits_and_summaries(tiny_root, tmp_path):
    """The side-input join's workers write the log splits themselves: same output as shuffle."""
    from tests.test_ingest_executor import _ingest
    from tests.test_join_executor import _join

    spec = tiny_spec(tiny_root, head_fraction=0.2, split__cold_item_percent=10)
    catalog, logs = _random_case(3)
    lines = ["item_id,genre,year"] + [
        f"{r['item_id'][0].decode()},{'|'.join(g.decode() for g in r['genre'])},"
        f"{b''.join(r['year']).decode()}" for r in catalog]
    with open(os.path.join(spec.catalog.base, "items.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for part in range(3):                          # three log files: three parts per split
        rows = [f"u{i % 50},{r['seed'][0].decode()},{r['item'][0].decode()},"
                f"{r['device'][0].decode()}" for i, (_, r) in enumerate(logs) if i % 3 == part]
        path = os.path.join(spec.logs.base, "span-6", f"p{part}.csv")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("user,seed,item,device\n" + "\n".join(rows) + "\n")
    ingested = _ingest(spec, "logs", "span-6/*.csv", tmp_path / "logs")
    side = _join(spec, tmp_path / "side", ingested, side_input_max_items=10**6)
    shuffle = _join(spec, tmp_path / "shuffle", ingested, side_input_max_items=0)
    assert side.get_string_custom_property(join_executor.STRATEGY_PROPERTY) == "side_input"
    assert shuffle.get_string_custom_property(join_executor.STRATEGY_PROPERTY) == "shuffle"
    for split in ("train", "eval", "catalog"):
        assert _split_records(side, split) == _split_records(shuffle, split)
    summary = join_executor.read_summary(side.uri)
    assert summary == join_executor.read_summary(shuffle.uri)
    assert len(_split_records(side, "train")) == summary["train"] > 0
    assert summary["rejected_unknown_item"] > 0 and summary["moved_to_eval_cold_items"] > 0
    assert summary["train"] + summary["eval"] + summary["rejected_unknown_item"] == len(logs)
    n_ingested = sum(len(glob.glob(os.path.join(ingested.uri, f"Split-{s}", "*")))
                     for s in ("train", "eval"))
    # One shard per part (ingested file) and split: rows move from train to eval.
    assert len(glob.glob(os.path.join(side.uri, "Split-train", "*"))) == n_ingested == 6
    assert not os.path.exists(os.path.join(side.uri, ".tmp"))
