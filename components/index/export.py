"""Retrieval SavedModels: raw query features -> query tower -> top-K item ids.

Two variants over the same query tower (the Trainer's export, embedded):

* ``scann``: ScaNN's TF ops over the serialized index (needs ``import scann``
  before loading; saved with the ``Scann`` op namespace allowed);
* ``brute_force``: a matmul with the item matrix and ``tf.math.top_k``, only
  standard ops, so stock TF Serving loads it.

Signatures: ``serving_default`` takes the query tower's named string tensors
(``[N, M]``, ``""`` padding), ``retrieve_examples`` serialized ``tf.Example``;
both return ``item_ids`` (string [N, K], best first) and ``scores`` (cosine,
float [N, K]).

The brute-force variant also has ``evaluate`` for TFMA: serialized
``tf.Example`` in, ``classes`` (top-K ids over the whole catalog) and
``scores`` mapped from cosine into [0, 1] (``(1 + cos) / 2``, the range TFMA
expects of confidence scores) out; the query's own item is excluded when
the query carries its item id (item-to-item retrieval).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tensorflow as tf

from components.index import search

SCANN_NAMESPACE = "Scann"


class RetrievalModule(tf.Module):
    """Query tower + index; see the module docstring."""

    def __init__(self, query_model: Any, item_ids: np.ndarray, items: np.ndarray, k: int,
                 searcher: Optional[Any] = None, exclude_key: Optional[str] = None) -> None:
        super().__init__()
        self.exclude_key = exclude_key
        self.query_model = query_model
        self.item_ids = tf.constant(item_ids.astype(object).astype(bytes))
        self.k = int(min(k, len(item_ids)))
        if searcher is None:
            self.items = tf.constant(search.normalize(items))
            self.scann = None
        else:
            self.items = None
            self.scann = searcher.serialize_to_module()

    def _top_k(self, embedding: tf.Tensor) -> dict[str, tf.Tensor]:
        query = tf.math.l2_normalize(embedding, axis=-1)
        if self.scann is None:
            scores, indices = tf.math.top_k(tf.matmul(query, self.items, transpose_b=True),
                                            k=self.k)
        else:
            from scann.scann_ops.py import scann_ops

            handle = self.scann.recreate_handle()
            indices, scores = scann_ops.scann_search_batched(handle, query, self.k, -1, -1,
                                                             False)
        return {"item_ids": tf.gather(self.item_ids, indices), "scores": scores}

    def signatures(self) -> dict[str, Any]:
        """``serving_default`` (named tensors) and ``retrieve_examples``."""
        dense = self.query_model.signatures["query_embedding"]
        specs = dense.structured_input_signature[1]

        def from_dense(**inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._top_k(dense(**inputs)["embedding"])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def from_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            embedding = self.query_model.signatures["query_embedding_examples"](
                examples=examples)["embedding"]
            return self._top_k(embedding)

        dense_fn = tf.function(from_dense).get_concrete_function(**specs)
        out = {"serving_default": dense_fn,
               "retrieve_examples": from_examples.get_concrete_function()}
        if self.scann is None:
            evaluate = tf.function(self._evaluate, input_signature=[
                tf.TensorSpec([None], tf.string, name="examples")])
            out["evaluate"] = evaluate.get_concrete_function()
        return out

    def _evaluate(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        embedding = self.query_model.signatures["query_embedding_examples"](
            examples=examples)["embedding"]
        scores = tf.matmul(tf.math.l2_normalize(embedding, axis=-1), self.items,
                           transpose_b=True)
        if self.exclude_key:
            own = tf.io.parse_example(examples, {self.exclude_key: tf.io.VarLenFeature(
                tf.string)})[self.exclude_key]
            own = tf.sparse.to_dense(own, default_value="")[:, :1]
            own = tf.pad(own, [[0, 0], [0, 1 - tf.shape(own)[1]]])
            scores = tf.where(tf.equal(self.item_ids[None, :], own),
                              tf.constant(-2.0, scores.dtype), scores)
        top = tf.math.top_k(scores, k=self.k)
        return {"classes": tf.gather(self.item_ids, top.indices),
                "scores": tf.clip_by_value((top.values + 1.0) / 2.0, 0.0, 1.0)}


def save(module: RetrievalModule, path: str) -> None:
    """Saves the module; ScaNN's op namespace is allowed when it is used."""
    options = tf.saved_model.SaveOptions(
        namespace_whitelist=[SCANN_NAMESPACE] if module.scann is not None else None)
    tf.saved_model.save(module, path, signatures=module.signatures(), options=options)
