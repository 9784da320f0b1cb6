"""The IndexBuilder executor run directly: its recall floor fails on too few hits and on none."""

import os

import numpy as np
import pytest
import scann  # noqa: F401  registers ScaNN's ops
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras
from tfx import types
from tfx.types import artifact_utils, standard_artifacts

from components.index import executor as index_executor
from components.index import search
from components.index.component import IndexBuilder
from components.trainer import export, hparams
from components.trainer.model import TwoTowerSSL
from components.trainer.run import feature_layout
from tests.conftest import catalog_row, log_row, serialize_example, tiny_spec, write_transform_graph
from transforms import features

N_ITEMS = 2000


def _joined(uri):
    examples = standard_artifacts.Examples()
    examples.uri = uri
    examples.split_names = artifact_utils.encode_split_names(
        [features.CATALOG_SPLIT, features.EVAL_SPLIT])
    return examples


def _write_split(examples, split, records):
    folder = artifact_utils.get_split_uri([examples], split)
    os.makedirs(folder)
    with tf.io.TFRecordWriter(os.path.join(folder, "part-0.gz"), "GZIP") as writer:
        for record in records:
            writer.write(record)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(spec, model artefact, joined examples artefact without an eval split yet)."""
    root = tmp_path_factory.mktemp("index")
    spec = tiny_spec(str(root))
    rng = np.random.default_rng(0)
    rows = [catalog_row(b"i%d" % k, [b"g%d" % g for g in rng.choice(40, 2, replace=False)],
                        [b"y%d" % rng.integers(30)]) for k in range(N_ITEMS)]
    tft_out = tft.TFTransformOutput(write_transform_graph(spec, rows))
    tf_keras.utils.set_random_seed(0)
    model = TwoTowerSSL(feature_layout(spec, tft_out), hparams.from_dict(
        {"variant": "baseline", "share_towers": False, "hidden_units": [16, 8],
         "embedding_dim": 4}))
    query_keys, item_keys = export.raw_keys(model)
    module = export.EmbeddingExport(model, tft_out, query_keys, item_keys)
    for keys, embed in ((item_keys, model.item_embedding), (query_keys, model.query_embedding)):
        embed(module.transform({k: tf.sparse.from_dense(tf.constant([[b"x"]])) for k in keys},
                               tf.constant(1)))
    trained_model = standard_artifacts.Model()
    trained_model.uri = str(root / "model")
    export.export(model, tft_out, os.path.join(trained_model.uri, index_executor.SERVING_DIR))
    examples = _joined(str(root / "joined"))
    _write_split(examples, features.CATALOG_SPLIT,
                 [serialize_example(r, item_keys) for r in rows])
    queries = [log_row(b"i%d" % k, b"i%d" % (k + 1), [b"g%d" % (k % 40)], [b"mobile"])
               for k in range(0, N_ITEMS, 10)]
    return spec, trained_model, examples, [serialize_example(q, query_keys) for q in queries]


def _build(tmp_path, trained, config, with_queries):
    spec, model, shared, queries = trained
    examples = _joined(str(tmp_path / "joined"))
    os.makedirs(examples.uri)
    os.symlink(artifact_utils.get_split_uri([shared], features.CATALOG_SPLIT),
               artifact_utils.get_split_uri([examples], features.CATALOG_SPLIT))
    _write_split(examples, features.EVAL_SPLIT, queries if with_queries else [])
    component = IndexBuilder(spec, types.Channel(type=standard_artifacts.Model),
                             types.Channel(type=standard_artifacts.Examples), config=config)
    outputs = {}
    for key in (index_executor.SCANN_MODEL_KEY, index_executor.BRUTE_FORCE_MODEL_KEY):
        outputs[key] = standard_artifacts.Model()
        outputs[key].uri = str(tmp_path / key)
    executor = index_executor.Executor(index_executor.Executor.Context(
        beam_pipeline_args=["--direct_running_mode=in_memory"], tmp_dir=str(tmp_path / "tmp"),
        unique_id="1"))
    executor.Do({index_executor.MODEL_KEY: [model], index_executor.EXAMPLES_KEY: [examples]},
                {k: [v] for k, v in outputs.items()}, dict(component.exec_properties))
    return outputs[index_executor.SCANN_MODEL_KEY]


def test_a_one_process_run_loads_the_trained_model_once(tmp_path, trained, monkeypatch):
    """The executor and its in-process Beam workers share one load of the Trainer's model."""
    model_dir = os.path.join(trained[1].uri, index_executor.SERVING_DIR)
    loads, real_load = [], tf.saved_model.load

    def counted(path, *args, **kwargs):
        loads.append(path)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(tf.saved_model, "load", counted)
    scann_model = _build(tmp_path, trained, search.IndexConfig(k=50, min_recall=0.0), True)
    assert scann_model.get_int_custom_property("items") == N_ITEMS      # the items were embedded
    assert loads.count(model_dir) <= 1


def test_a_recall_below_the_floor_fails_the_step(tmp_path, trained):
    # One leaf of 200 searched, quantized scores, no exact rescoring beyond k.
    poor = search.IndexConfig(k=50, num_leaves=200, leaves_to_search=1, reorder=50,
                              recall_k=50, min_recall=0.9)
    with pytest.raises(index_executor.RecallTooLowError,
                       match=r"ScaNN recall@50 against brute force is 0\.\d+ < min_recall 0\.9 "
                             r"on 200 eval queries"):
        _build(tmp_path, trained, poor, with_queries=True)


def test_no_eval_queries_is_unmeasured_not_perfect(tmp_path, trained):
    config = search.IndexConfig(k=50, recall_k=0, min_recall=0.9)
    with pytest.raises(index_executor.RecallUnmeasuredError,
                       match="no eval queries to measure ScaNN's recall@50"):
        _build(tmp_path / "floor", trained, config, with_queries=False)
    # Without a floor the index is built, and its recall is recorded as unmeasured.
    scann_model = _build(tmp_path / "nofloor", trained,
                         search.IndexConfig(k=50, min_recall=0.0), with_queries=False)
    assert scann_model.get_int_custom_property(index_executor.RECALL_QUERIES_PROPERTY) == 0
    assert not scann_model.has_custom_property("recall_at_50")
    assert os.path.exists(os.path.join(scann_model.uri, index_executor.SERVING_DIR,
                                       "saved_model.pb"))


def test_the_recall_floor_is_on_the_head_of_the_list_by_default():
    config = search.IndexConfig()
    assert (config.k, config.measured_k(10**6), config.measured_k(4)) == (100, 10, 4)
    assert search.IndexConfig(k=50, recall_k=0).measured_k(10**6) == 50
    assert search.IndexConfig(k=5, recall_k=10).measured_k(10**6) == 5


def test_the_tree_trains_on_at_least_400_points_a_leaf_up_to_every_item():
    config = search.IndexConfig()
    # 1,000,000 items: 1,000 leaves, 400,000 points; 200,000 items: 447 leaves,
    # 178,800 points; 50,000: 223 leaves, 89,200 > every item; 1,000,000 items
    # with 100 leaves: ScaNN's 100,000 stays the least.
    assert config.tree_sample_size(1_000_000) == 400_000
    assert config.tree_sample_size(200_000) == 178_800
    assert config.tree_sample_size(50_000) == 50_000
    assert search.IndexConfig(num_leaves=100).tree_sample_size(1_000_000) == 100_000


def test_automatic_leaves_are_nearly_the_fewest_that_meet_the_recall_floor():
    """Evenly spread embeddings: 10% of the leaves misses the floor; the tuned count meets it,
    and a count LEAVES_RESOLUTION below it does not (the doubling's bracket, then bisection).

    The recall of each setting is recomputed here against NumPy's brute force.
    """
    rng = np.random.default_rng(0)
    items = search.normalize(rng.normal(size=(20_000, 32)).astype(np.float32))
    queries = search.normalize(rng.normal(size=(200, 32)).astype(np.float32))
    config = search.IndexConfig(k=50, num_leaves=200, reorder=400, min_recall=0.9)
    total, start = config.leaves(len(items))
    searcher = search.build_scann(items, config)
    exact, _ = search.brute_force(queries, items, 50)

    def recall(leaves):
        _, scores = searcher.search_batched(queries, final_num_neighbors=50,
                                            leaves_to_search=leaves)
        return search.score_recall(np.asarray(scores), exact)

    leaves, got = search.tune_leaves(searcher, queries, exact, start, total, 0.9)
    assert recall(start) < 0.9 and start < leaves <= total
    assert got == pytest.approx(recall(leaves)) and got >= 0.9
    below = leaves - max(1, int(leaves * search.LEAVES_RESOLUTION))
    assert leaves == total or recall(below) < 0.9                # nearly the fewest
    # A start that meets the floor is kept: it is the least the index searches.
    assert recall(start) >= 0.5
    assert search.tune_leaves(searcher, queries, exact, start, total, 0.5) == (
        start, pytest.approx(recall(start)))
