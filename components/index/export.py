"""Retrieval SavedModels: raw query features -> query tower -> top-K item ids.

Two variants over the same query tower (the Trainer's export, embedded):

* ``scann``: ScaNN's TF ops over the serialized index (needs ``import scann``
  before loading; saved with the ``Scann`` op namespace allowed);
* ``brute_force``: a matmul with the item matrix and ``tf.math.top_k``, only
  standard ops, so stock TF Serving loads it.

Signatures: ``serving_default`` takes the query tower's named string tensors
(``[N, M]``, ``""`` padding), ``retrieve_examples`` serialized ``tf.Example``;
both return ``item_ids`` (string [N, K], best first) and ``scores`` (cosine,
float [N, K]). When the query carries its item id (``exclude_key``, the
item-to-item case), both leave the query's own item out of the answer (the
index is searched for ``K + 1`` and the own id dropped); the
``keep_query_item`` and ``retrieve_examples_keep_query_item`` signatures
answer the same queries with the own item kept.

The brute-force variant also has ``evaluate`` for TFMA: serialized
``tf.Example`` in, ``classes`` (top-K ids over the whole catalog) and
``scores`` mapped from cosine into [0, 1] (``(1 + cos) / 2``, the range TFMA
expects of confidence scores) out; the query's own item is excluded when
the query carries its item id (item-to-item retrieval).

Brute force stays exact at any catalog size and bounded in memory: the
catalog is scored in blocks of :data:`ITEM_BLOCK` items, each block's top
``k`` kept, and the top ``k`` of those taken (the top ``k`` of the whole
catalog is among them). The item matrix and ids are variables, so they are
saved once beside the graph, not inside it.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tensorflow as tf

from components.index import search
from serving import signatures as sig

SCANN_NAMESPACE = "Scann"
#: Items scored at once by brute force ([queries, ITEM_BLOCK] scores).
ITEM_BLOCK = 1 << 16


def _first(values: tf.Tensor) -> tf.Tensor:
    """The first value of each row of a [N, M] string tensor ("" when M is 0)."""
    head = values[:, :1]
    return tf.pad(head, [[0, 0], [0, 1 - tf.shape(head)[1]]])[:, 0]


class RetrievalModule(tf.Module):
    """Query tower + index; see the module docstring."""

    def __init__(self, query_model: Any, item_ids: np.ndarray, items: np.ndarray, k: int,
                 searcher: Optional[Any] = None, exclude_key: Optional[str] = None,
                 leaves_to_search: int = -1) -> None:
        super().__init__()
        self.leaves_to_search = int(leaves_to_search)     # -1: the searcher's own setting
        self.exclude_key = exclude_key
        self.query_model = query_model
        self.item_ids = tf.Variable(item_ids.astype(object).astype(bytes), trainable=False,
                                    name="item_ids")
        self.n_items = len(item_ids)
        self.k = int(min(k, len(item_ids) - (1 if exclude_key else 0)))
        if searcher is None:
            self.items = tf.Variable(search.normalize(items), trainable=False, name="items")
            self.scann = None
        else:
            self.items = None
            self.scann = searcher.serialize_to_module()

    def _exact(self, query: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Brute-force (scores [N, k], indices [N, k]) by blocks of items (module docstring)."""
        scores, indices = [], []
        for start in range(0, self.n_items, ITEM_BLOCK):
            block = self.items[start:start + ITEM_BLOCK]
            top = tf.math.top_k(tf.matmul(query, block, transpose_b=True),
                                k=min(k, min(ITEM_BLOCK, self.n_items - start)))
            scores.append(top.values)
            indices.append(top.indices + start)
        if len(scores) == 1:
            return scores[0], indices[0]
        top = tf.math.top_k(tf.concat(scores, axis=1), k=k)
        return top.values, tf.gather(tf.concat(indices, axis=1), top.indices, batch_dims=1)

    def _search(self, query: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """(cosine scores [N, k], item indices [N, k]) of normalized queries, best first."""
        if self.scann is None:
            return self._exact(query, k)
        from scann.scann_ops.py import scann_ops

        handle = self.scann.recreate_handle()
        indices, scores = scann_ops.scann_search_batched(handle, query, k, -1,
                                                         self.leaves_to_search, False)
        return scores, indices

    def _top_k(self, embedding: tf.Tensor, own: Optional[tf.Tensor] = None
               ) -> dict[str, tf.Tensor]:
        """Top ``k`` items; with ``own`` (ids [N]) each row's own id is left out."""
        query = tf.math.l2_normalize(embedding, axis=-1)
        if own is None:
            scores, indices = self._search(query, self.k)
        else:
            scores, indices = self._search(query, self.k + 1)
            hit = tf.equal(tf.gather(self.item_ids, indices), own[:, None])
            top = tf.math.top_k(tf.where(hit, tf.constant(-np.inf, scores.dtype), scores),
                                k=self.k)
            scores, indices = top.values, tf.gather(indices, top.indices, batch_dims=1)
        return {sig.ITEM_IDS: tf.gather(self.item_ids, indices), sig.SCORES: scores}

    def _own_from_examples(self, examples: tf.Tensor) -> tf.Tensor:
        own = tf.io.parse_example(examples, {self.exclude_key: tf.io.VarLenFeature(
            tf.string)})[self.exclude_key]
        return _first(tf.sparse.to_dense(own, default_value=""))

    def signatures(self) -> dict[str, Any]:
        """``serving_default`` (named tensors) and ``retrieve_examples``, and the rest.

        Traced without AutoGraph: the functions have no tensor-dependent
        Python control flow.

        With ``exclude_key`` both leave the query's own item out, and
        ``keep_query_item`` / ``retrieve_examples_keep_query_item`` keep it.
        """
        dense = self.query_model.signatures[sig.QUERY_EMBEDDING]
        specs = dense.structured_input_signature[1]
        to_examples = self.query_model.signatures[sig.QUERY_EMBEDDING_EXAMPLES]
        examples_spec = [tf.TensorSpec([None], tf.string, name=sig.EXAMPLES)]

        def signature_pair(exclude: bool) -> tuple[Any, Any]:
            def from_dense(**inputs: tf.Tensor) -> dict[str, tf.Tensor]:
                own = _first(inputs[self.exclude_key]) if exclude else None
                return self._top_k(dense(**inputs)[sig.EMBEDDING], own)

            def from_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
                own = self._own_from_examples(examples) if exclude else None
                return self._top_k(to_examples(examples=examples)[sig.EMBEDDING], own)

            return (tf.function(from_dense, autograph=False).get_concrete_function(**specs),
                    tf.function(from_examples, input_signature=examples_spec,
                                autograph=False).get_concrete_function())

        dense_fn, examples_fn = signature_pair(bool(self.exclude_key))
        out = {sig.SERVING_DEFAULT: dense_fn, sig.RETRIEVE_EXAMPLES: examples_fn}
        if self.exclude_key:
            keep_dense, keep_examples = signature_pair(False)
            out[sig.KEEP_QUERY_ITEM] = keep_dense
            out[sig.RETRIEVE_EXAMPLES_KEEP_QUERY_ITEM] = keep_examples
        if self.scann is None:
            evaluate = tf.function(self._evaluate, input_signature=examples_spec,
                                   autograph=False)
            out[sig.EVALUATE] = evaluate.get_concrete_function()
        return out

    def _evaluate(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        embedding = self.query_model.signatures[sig.QUERY_EMBEDDING_EXAMPLES](
            examples=examples)[sig.EMBEDDING]
        own = self._own_from_examples(examples) if self.exclude_key else None
        top = self._top_k(embedding, own)
        return {sig.CLASSES: top[sig.ITEM_IDS],
                sig.SCORES: tf.clip_by_value((top[sig.SCORES] + 1.0) / 2.0, 0.0, 1.0)}


def save(module: RetrievalModule, path: str) -> None:
    """Saves the module; ScaNN's op namespace is allowed when it is used."""
    options = tf.saved_model.SaveOptions(
        namespace_whitelist=[SCANN_NAMESPACE] if module.scann is not None else None)
    tf.saved_model.save(module, path, signatures=module.signatures(), options=options)
