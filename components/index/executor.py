"""IndexBuilder executor: embed the catalog (Beam), build ScaNN, check recall, export."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.utils import shared
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components import tfrecords
from components.index import export, search
from serving import signatures as sig
from transforms import features
from transforms.spec import SPEC_PARAMETER, spec_from_json

MODEL_KEY = "model"
EXAMPLES_KEY = "examples"
SCANN_MODEL_KEY = "scann_model"
BRUTE_FORCE_MODEL_KEY = "brute_force_model"
INDEX_CONFIG_KEY = "index_config"
SERVING_DIR = "Format-Serving"
EMBEDDINGS_DIR = "embeddings"
EMBEDDING_FEATURE = "embedding"       # of the item-embedding records in EMBEDDINGS_DIR


#: Custom property of the ScaNN model: how many eval queries measured its recall
#: (0: unmeasured, and then no ``recall_at_<k>`` property is written).
RECALL_QUERIES_PROPERTY = "recall_queries"
#: Custom property of the ScaNN model: leaves its export searches per query.
LEAVES_PROPERTY = "leaves_to_search"


class RecallTooLowError(ValueError):
    """The ScaNN index misses too many true neighbours."""


class RecallUnmeasuredError(ValueError):
    """There were no eval queries to measure the index's recall against its floor."""


def check_recall(measured: float | None, config: search.IndexConfig, n_queries: int,
                 k: int) -> None:
    """Raises unless ``measured`` (recall@``k``) reaches ``config.min_recall``.

    ``measured`` is None when no query measured it: unmeasured is not
    perfect, so that fails too, unless the floor is 0 (no floor asked for).
    """
    if measured is None:
        if config.min_recall > 0:
            raise RecallUnmeasuredError(
                f"no eval queries to measure ScaNN's recall@{k} against brute force "
                f"(the eval split is empty), so the floor min_recall {config.min_recall} "
                "cannot be checked; give the spec's split an eval_percent > 0 (or set "
                "index_config.min_recall to 0 to build the index unchecked).")
        return
    if measured < config.min_recall:
        raise RecallTooLowError(
            f"ScaNN recall@{k} against brute force is {measured:.4f} < "
            f"min_recall {config.min_recall} on {n_queries} eval queries; raise "
            "index_config.leaves_to_search (0 searches more leaves until the floor is met) "
            "or reorder (or lower min_recall).")


#: The Trainer's SavedModel, loaded once per process: the executor and the
#: Beam workers that run in its process (one-process runs) share one load; a
#: worker process loads its own.
_MODELS = shared.Shared()


def load_model(model_dir: str) -> Any:
    """The SavedModel in ``model_dir``, shared within this process while it is held."""
    return _MODELS.acquire(lambda: tf.saved_model.load(model_dir), tag=model_dir)


class EmbedItems(beam.DoFn):
    """Embeds batches of serialized raw catalog rows with the item tower."""

    def __init__(self, model_dir: str, id_key: str) -> None:
        self.model_dir, self.id_key = model_dir, id_key

    def setup(self) -> None:
        """Takes the process's SavedModel (:func:`load_model`)."""
        self.model = load_model(self.model_dir)
        self.fn = self.model.signatures[sig.ITEM_EMBEDDING_EXAMPLES]

    def process(self, batch: list[bytes]) -> Iterator[bytes]:
        """Yields one tf.Example (``id``, ``embedding``) per item."""
        vectors = self.fn(examples=tf.constant(batch))[sig.EMBEDDING].numpy()
        for serialized, vector in zip(batch, vectors):
            row = tfrecords.example_to_dict(serialized, [self.id_key])
            yield tfrecords.dict_to_example({"id": row[self.id_key][:1],
                                             EMBEDDING_FEATURE: vector.tolist()})


def read_embeddings(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N], embeddings [N, D]) written by :class:`EmbedItems`, sorted by id.

    Parsed in blocks of records by TensorFlow (a record at a time in Python
    took minutes for a million items).
    """
    spec = {"id": tf.io.FixedLenFeature([], tf.string),
            EMBEDDING_FEATURE: tf.io.VarLenFeature(tf.float32)}
    ids, vectors = [], []
    for block in tfrecords.split_dataset(folder).batch(65536):
        parsed = tf.io.parse_example(block, spec)
        ids.extend(i.decode() for i in parsed["id"].numpy())
        vectors.append(tf.sparse.to_dense(parsed[EMBEDDING_FEATURE]).numpy())
    if not ids:
        raise ValueError(f"no item embeddings in {folder}")
    order = np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable")
    return np.asarray(ids, dtype=object)[order], np.concatenate(vectors)[order]


def _query_sample(eval_dir: str, n: int) -> list[bytes]:
    return [r.numpy() for r in tfrecords.split_dataset(eval_dir, required=False).take(n)]


class Executor(base_beam_executor.BaseBeamExecutor):
    """See :class:`components.index.component.IndexBuilder`."""

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:  # noqa: N802
        """Embeds, builds, measures recall, exports both retrieval models."""
        spec = spec_from_json(exec_properties[SPEC_PARAMETER])
        config = search.IndexConfig(**json.loads(exec_properties[INDEX_CONFIG_KEY]))
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        model_dir = os.path.join(model.uri, SERVING_DIR)
        examples = input_dict[EXAMPLES_KEY]
        catalog_dir = artifact_utils.get_split_uri(examples, features.CATALOG_SPLIT)
        scann_out = artifact_utils.get_single_instance(output_dict[SCANN_MODEL_KEY])
        embeddings_dir = os.path.join(scann_out.uri, EMBEDDINGS_DIR)
        query_model = load_model(model_dir)       # held: in-process workers reuse it
        with self._make_beam_pipeline() as pipeline:
            _ = (pipeline
                 | "Read" >> tfrecords.ReadRecords(tfrecords.split_files(catalog_dir))
                 | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
                 | "Embed" >> beam.ParDo(EmbedItems(model_dir, features.item_key(spec.item_id)))
                 | "Write" >> beam.io.WriteToTFRecord(os.path.join(embeddings_dir, "part"),
                                                      file_name_suffix=".gz"))
        ids, items = read_embeddings(embeddings_dir)
        queries = _query_sample(artifact_utils.get_split_uri(examples, features.EVAL_SPLIT),
                                config.recall_queries)
        searcher = search.build_scann(items, config)
        measured, leaves = measure_recall(query_model, searcher, items, queries, config)
        recall_k = config.measured_k(len(items))
        logging.info("ScaNN recall@%d vs brute force on %d queries: %s (%d of %d leaves "
                     "searched)", recall_k, len(queries),
                     "unmeasured" if measured is None else f"{measured:.4f}", leaves,
                     config.leaves(len(items))[0])
        if measured is not None:
            scann_out.set_float_custom_property(f"recall_at_{recall_k}", measured)
        scann_out.set_int_custom_property(RECALL_QUERIES_PROPERTY, len(queries))
        scann_out.set_int_custom_property("items", len(ids))
        scann_out.set_int_custom_property(LEAVES_PROPERTY, leaves)
        check_recall(measured, config, len(queries), recall_k)
        exclude = (features.query_key(spec.item_id)
                   if spec.item_id in spec.query_item_features else None)
        export.save(export.RetrievalModule(query_model, ids, items, config.k, searcher,
                                           exclude_key=exclude, leaves_to_search=leaves),
                    os.path.join(scann_out.uri, SERVING_DIR))
        brute = artifact_utils.get_single_instance(output_dict[BRUTE_FORCE_MODEL_KEY])
        export.save(export.RetrievalModule(query_model, ids, items, config.k,
                                           exclude_key=exclude),
                    os.path.join(brute.uri, SERVING_DIR))


def measure_recall(query_model: Any, searcher: Any, items: np.ndarray, queries: list[bytes],
                   config: search.IndexConfig) -> tuple[float | None, int]:
    """ScaNN's recall@``config.measured_k`` against brute force, by scores, on real eval queries.

    Returns ``(recall, leaves searched)`` (-1 for an index without leaves:
    a catalog too small for a tree). With automatic ``leaves_to_search``
    the leaves are raised to nearly the fewest that meet
    ``config.min_recall`` (:func:`search.tune_leaves`). The recall is None without queries:
    nothing was measured.
    """
    total, start = config.leaves(len(items)) if config.partitioned(len(items)) else (1, 1)
    if not queries:
        return None, start if total > 1 else -1
    fn = query_model.signatures[sig.QUERY_EMBEDDING_EXAMPLES]
    embedded = fn(examples=tf.constant(queries))[sig.EMBEDDING].numpy()
    exact_scores, _ = search.brute_force(embedded, items, config.measured_k(len(items)))
    floor = config.min_recall if config.leaves_to_search == 0 else 0.0
    leaves, recall = search.tune_leaves(searcher, search.normalize(embedded), exact_scores,
                                        start, total, floor)
    return recall, leaves if total > 1 else -1
