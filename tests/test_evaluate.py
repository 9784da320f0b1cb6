"""Evaluator: TFMA metrics equal hand calculations; slices; blessing gates pushing.

A real TFX pipeline (Importer -> LatestBlessedModelResolver -> Evaluator ->
Pusher, LocalDagRunner, SQLite ML Metadata) runs twice on hand-built eval
examples. Each run imports a SavedModel whose ``evaluate`` signature returns
a fixed ranking of 60 catalog items per query, so the rank of every positive
is known and the metrics follow by hand. Run 1 (good model) is blessed and
pushed; run 2 (a deliberately worse ranking) is neither.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from components.evaluate import report
from components.evaluate.config import EvalSettings
from components.evaluate.metrics import (
    MeanAveragePrecisionAtK,
    RecallAtK,
    average_precision_at_k,
    map_at_k,
    positive_ranks,
    recall_at_k,
)
from pipeline.config import PipelineConfig
from pipeline.pipeline import evaluation, pusher
from pipeline.report import records, results_page, summary
from serving import signatures as sig
from tests.conftest import tiny_spec
from transforms import features

N_ITEMS = 60
ITEMS = [f"i{k:02d}" for k in range(N_ITEMS)]
# (query item, positive item, bucket of the positive, genres of the positive,
#  1-based rank of the positive in the good model's ranking)
CASES = [
    ("i00", "i01", "head", ["x"], 1),
    ("i02", "i03", "head", ["x", "y"], 3),
    ("i04", "i05", "tail", ["y"], 12),
    ("i06", "i07", "tail", ["y"], 45),
    ("i08", "i09", "tail", ["z"], 60),
    ("i10", "i11", "cold", ["x"], 7),
]
WORSE_RANKS = [55, 58, 59, 60, 60, 54]


def _example(query: str, positive: str, bucket: str, genres: list[str]) -> bytes:
    def strings(values: list[str]) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))

    return tf.train.Example(features=tf.train.Features(feature={
        "query_item_id": strings([query]), "item_item_id": strings([positive]),
        "item_bucket": strings([bucket]), "item_genre": strings(genres)})).SerializeToString()


def _write_examples(folder: str) -> str:
    os.makedirs(features.split_dir(folder, features.EVAL_SPLIT), exist_ok=True)
    path = os.path.join(features.split_dir(folder, features.EVAL_SPLIT),
                        "data_tfrecord-00000-of-00001.gz")
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for query, positive, bucket, genres, _ in CASES:
            writer.write(_example(query, positive, bucket, genres))
    return folder


def _ranking(query: str, positive: str, rank: int) -> list[str]:
    others = [i for i in ITEMS if i not in (query, positive)]
    return others[: rank - 1] + [positive] + others[rank - 1:]


class _HandRanking(tf.Module):
    """``evaluate``: a fixed ranked list of item ids per query item."""

    def __init__(self, ranks: list[int]) -> None:
        super().__init__()
        lists = [_ranking(q, p, r)[: N_ITEMS - 1] for (q, p, _, _, _), r in zip(CASES, ranks)]
        self.classes = tf.constant(lists)
        self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant([c[0] for c in CASES]), tf.range(len(CASES), dtype=tf.int64)), -1)
        self.scores = tf.constant(np.linspace(1.0, 0.01, N_ITEMS - 1, dtype=np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def evaluate(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        query = tf.io.parse_example(examples, {"query_item_id": tf.io.FixedLenFeature(
            [], tf.string)})["query_item_id"]
        rows = self.table.lookup(query)
        n = tf.shape(rows)[0]
        return {sig.CLASSES: tf.gather(self.classes, rows),
                sig.SCORES: tf.tile(self.scores[None, :], [n, 1])}


def _save_model(folder: str, ranks: list[int]) -> str:
    """A Model artefact folder (the SavedModel in ``Format-Serving``, as Trainer writes)."""
    module = _HandRanking(ranks)
    tf.saved_model.save(module, os.path.join(folder, "Format-Serving"),
                        signatures={sig.EVALUATE: module.evaluate})
    return folder


def _hand_metrics(ranks: list[int], which: list[int]) -> dict[str, float]:
    ranks = np.array(ranks)[which]
    # With one positive, AP@K = 1/rank inside the top K; recall = share inside.
    return {"example_count": float(len(ranks)),
            "recall_at_10": float(np.mean(ranks <= 10)),
            "recall_at_50": float(np.mean(ranks <= 50)),
            "map_at_10": float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0))),
            "map_at_50": float(np.mean(np.where(ranks <= 50, 1.0 / ranks, 0.0)))}


def _run(config: PipelineConfig, examples_dir: str, model_dir: str) -> None:
    examples = tfx.dsl.Importer(
        source_uri=examples_dir, artifact_type=tfx.types.standard_artifacts.Examples,
        properties={"split_names": '["eval"]'}).with_id("ExamplesImporter")
    model = tfx.dsl.Importer(source_uri=model_dir,
                             artifact_type=tfx.types.standard_artifacts.Model
                             ).with_id("ModelImporter")
    resolver, evaluator = evaluation(config, examples.outputs["result"], model.outputs["result"])
    push = pusher(config, config.model_name, model.outputs["result"],
                  evaluator.outputs["blessing"])
    LocalDagRunner().run(tfx_pipeline.Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
        components=[examples, model, resolver, evaluator, push], enable_cache=False,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            config.metadata_path)))


def _summary(config: PipelineConfig) -> str:
    """The run summary, with the results page written as the CLI writes it."""
    run = summary.collect(config)
    return summary.render(run, page=results_page.write(run))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    config = PipelineConfig(spec=tiny_spec(str(root)), run_root=str(root / "run"),
                            eval_settings=EvalSettings(min_recall_at_50=0.5,
                                                       max_recall_drop=0.01,
                                                       slice_features=("genre",)))
    examples_dir = _write_examples(str(root / "examples"))
    out = {"config": config}
    for label, ranks in (("good", [c[4] for c in CASES]), ("worse", WORSE_RANKS)):
        _run(config, examples_dir, _save_model(str(root / label), ranks))
        store = records.open_store(config.metadata_path)
        evaluator = records.latest(store, config.pipeline_name, "Evaluator")
        push = records.latest(store, config.pipeline_name, f"Pusher_{config.model_name}")
        out[label] = {"evaluation": evaluator.outputs["evaluation"][0],
                      "blessed": evaluator.properties["blessing"].get("blessed"),
                      "pushed": push.properties["pushed_model"].get("pushed"),
                      "summary": _summary(config)}
    return out


def test_hand_ranks_match_the_reference_ap():
    for query, positive, _, _, rank in CASES:
        ap = average_precision_at_k(_ranking(query, positive, rank), [positive], 50)
        assert ap == pytest.approx(1.0 / rank if rank <= 50 else 0.0)


def test_tfma_metrics_equal_hand_calculation_by_slice(runs):
    metrics = report.metrics_by_slice(runs["good"]["evaluation"])
    ranks = [c[4] for c in CASES]
    expected_slices = {
        "overall": list(range(6)),
        "item_bucket=head": [0, 1], "item_bucket=tail": [2, 3, 4], "item_bucket=cold": [5],
        "item_genre=x": [0, 1, 5], "item_genre=y": [1, 2, 3], "item_genre=z": [4],
    }
    assert set(expected_slices) == set(metrics)
    for label, which in expected_slices.items():
        hand = _hand_metrics(ranks, which)
        for name, value in hand.items():
            assert metrics[label][name] == pytest.approx(value, abs=1e-6), (label, name)
    # Overall, written out: ranks 1, 3, 12, 45, 60, 7.
    assert metrics["overall"]["recall_at_10"] == pytest.approx(3 / 6)
    assert metrics["overall"]["map_at_50"] == pytest.approx(
        (1 + 1 / 3 + 1 / 12 + 1 / 45 + 1 / 7) / 6)


def test_good_model_blessed_and_pushed(runs):
    good = runs["good"]
    assert good["blessed"] == 1
    assert good["pushed"] == 1
    assert report.verdict(good["evaluation"]) == (True, [])
    pushed = os.path.join(runs["config"].serving_root, runs["config"].model_name)
    versions = os.listdir(pushed)
    assert len(versions) == 1
    assert os.path.exists(os.path.join(pushed, versions[0], "saved_model.pb"))


def test_worse_model_not_blessed_not_pushed(runs):
    worse = runs["worse"]
    assert worse["blessed"] == 0
    assert worse["pushed"] == 0
    blessed, failures = report.verdict(worse["evaluation"])
    assert not blessed
    text = " ".join(failures)
    assert "recall_at_50" in text and "floor" in text and "change" in text
    # Still only the good model's version in the serving folder.
    pushed = os.path.join(runs["config"].serving_root, runs["config"].model_name)
    assert len(os.listdir(pushed)) == 1
    assert "MODEL NOT BLESSED, NOTHING PUSHED" in worse["summary"]
    assert f"Pusher_{runs['config'].model_name}: not pushed" in worse["summary"]
    assert "recall_at_50" in worse["summary"]
    assert "MODEL NOT BLESSED" not in runs["good"]["summary"]


def test_results_page_written(runs):
    page = os.path.join(os.path.abspath(runs["config"].run_root), "results", report.PAGE)
    text = open(page).read()
    assert "NOT BLESSED" in text and "item_bucket=tail" in text
    assert os.path.getsize(os.path.join(os.path.dirname(page), report.CHART)) > 1000
    index = open(os.path.join(os.path.dirname(page), results_page.PAGE)).read()
    assert "MODEL NOT BLESSED, NOTHING PUSHED" in index and "not pushed" in index


def test_numpy_reference_metrics_by_hand():
    scores = np.array([[0.9, 0.1, 0.5, 0.3],    # positive col 2: rank 2 (0-based 1)
                       [0.2, 0.8, 0.8, 0.1],    # positive col 1 ties col 2: pessimistic
                       [0.1, 0.2, 0.3, 0.4]])   # positive col 0: last
    ranks = positive_ranks(scores, np.array([2, 1, 0]))
    assert ranks.tolist() == [1, 1, 3]
    assert recall_at_k(ranks, 2) == pytest.approx(2 / 3)
    assert map_at_k(ranks, 2) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert average_precision_at_k(["a", "b", "c", "d"], ["b", "d"], 4) == pytest.approx(
        (1 / 2 + 2 / 4) / 2)


def _tfma_value(metric, inputs):
    """``metric`` over ``inputs`` through its TFMA computations: combiner, then derived."""
    from tensorflow_model_analysis.metrics import metric_types

    combined, derived = metric.computations(model_names=[""], output_names=[""])
    acc = combined.combiner.create_accumulator()
    for labels, classes, weight in inputs:
        acc = combined.combiner.add_input(acc, metric_types.StandardMetricInputs(
            labels=np.array(labels, dtype=object), predictions={sig.CLASSES: np.array(
                [classes], dtype=object)}, example_weights=np.array([weight])))
    (value,) = derived.result(combined.combiner.extract_output(acc)).values()
    return value


# Ids as bytes (the model's output) against labels as str or bytes; one
# example without a positive counts for neither metric.
RANKED = [b"a", b"b", b"c", b"d", b"e"]
SEVERAL_POSITIVES = [(["b", "d"], RANKED, 1.0), ([b"e"], RANKED, 1.0), (["z"], RANKED, 1.0),
                     ([b"a", b"c", b"e"], RANKED, 1.0), ([], RANKED, 1.0)]


def test_tfma_metrics_with_several_positives_equal_the_numpy_reference():
    inputs = SEVERAL_POSITIVES
    lists = [[v.encode() if isinstance(v, str) else v for v in labels]
             for labels, _, _ in inputs if labels]
    for k in (2, 4):
        aps = [average_precision_at_k(RANKED, positives, k) for positives in lists]
        hits = sum(len(set(positives) & set(RANKED[:k])) for positives in lists)
        assert _tfma_value(MeanAveragePrecisionAtK(k), inputs) == pytest.approx(np.mean(aps))
        assert _tfma_value(RecallAtK(k), inputs) == pytest.approx(
            hits / sum(len(p) for p in lists))
        # The same K read from a pass shared with other Ks.
        shared = (1, k, 5)
        assert _tfma_value(MeanAveragePrecisionAtK(k, ks=shared), inputs) == pytest.approx(
            np.mean(aps))
        assert _tfma_value(RecallAtK(k, ks=shared), inputs) == pytest.approx(
            hits / sum(len(p) for p in lists))
    # Recall@4 by hand: b, d; none; none; a, c: 4 of 2 + 1 + 1 + 3 positives.
    assert _tfma_value(RecallAtK(4), inputs) == pytest.approx(4 / 7)
    # MAP@2 by hand, from a pass shared with K=4: (1/2) / 2; 0; 0; (1/1) / 2.
    assert _tfma_value(MeanAveragePrecisionAtK(2, ks=(4, 2)), inputs) == pytest.approx(
        (0.25 + 0 + 0 + 0.5) / 4)


def test_recall_and_map_at_every_k_share_one_combiner():
    combined = [c for metric in (RecallAtK(50), MeanAveragePrecisionAtK(50))
                for c in metric.computations(model_names=[""], output_names=[""])[:1]]
    assert combined[0] == combined[1] and len(set(combined)) == 1
    metrics = [kind(k, ks=(10, 50)) for kind in (RecallAtK, MeanAveragePrecisionAtK)
               for k in (10, 50)]
    assert len({m.computations(model_names=[""], output_names=[""])[0]
                for m in metrics}) == 1
    with pytest.raises(ValueError, match="top_k must be one of ks"):
        RecallAtK(20, ks=(10, 50))


def test_unknown_slice_feature_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\['colour'\].*genre"):
        PipelineConfig(spec=tiny_spec(str(tmp_path)), run_root=str(tmp_path / "r"),
                       eval_settings=EvalSettings(slice_features=("colour",)))
    with pytest.raises(ValueError, match="min_recall_at_50"):
        EvalSettings(min_recall_at_50=1.5)


def test_the_model_type_is_named_so_tfma_does_not_load_the_model_to_find_it(tmp_path):
    """TFMA tries a Keras load of an unnamed model; the named type is the one it would find."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.utils import model_util

    from components.evaluate.config import eval_config

    module = tf.Module()
    module.fn = tf.function(lambda x: {"y": x * 2.0},
                            input_signature=[tf.TensorSpec([None], tf.float32)])
    path = str(tmp_path / "plain")
    tf.saved_model.save(module, path, signatures={"evaluate": module.fn})
    spec = eval_config(tiny_spec(str(tmp_path)), EvalSettings()).model_specs[0]
    assert spec.model_type == tfma.TF_GENERIC
    assert model_util.get_model_type(
        tfma.ModelSpec(signature_name=spec.signature_name), path) == tfma.TF_GENERIC
