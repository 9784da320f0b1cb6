"""Self-contained SavedModel export: raw features -> Transform -> tower -> embedding.

Signatures (every one returns ``{"embedding": float [N, D]}``):

* ``query_embedding`` / ``item_embedding``: plain named string tensors, one
  per raw feature (``query_<f>`` and ``context_<f>``, or ``item_<f>``),
  shape [N, M]; pad rows with ``""`` (ignored), which keeps JSON requests
  rectangular. Every feature is required; a row of "" is a missing value.
* ``query_embedding_examples`` / ``item_embedding_examples``: serialized
  ``tf.Example`` protos (raw features, as in the joined examples).
* ``serving_default`` = ``query_embedding``.

The Transform graph (vocabularies included) is embedded as the model's
assets, so the export keeps working once the Transform output is deleted.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf
import tensorflow_transform as tft

from components.trainer.model import TwoTowerSSL
from serving import signatures as sig
from transforms import features


def _empty_sparse(n: tf.Tensor, dtype: tf.DType) -> tf.SparseTensor:
    return tf.SparseTensor(indices=tf.zeros([0, 2], tf.int64),
                           values=tf.zeros([0], dtype),
                           dense_shape=tf.stack([tf.cast(n, tf.int64), 0]))


def _dense_to_sparse(values: tf.Tensor) -> tf.SparseTensor:
    ragged = tf.RaggedTensor.from_tensor(values)
    ragged = tf.ragged.boolean_mask(ragged, tf.not_equal(ragged, ""))
    return ragged.to_sparse()


class EmbeddingExport(tf.Module):
    """Wraps the trained model and the Transform layer for serving."""

    def __init__(self, model: TwoTowerSSL, tf_transform_output: tft.TFTransformOutput,
                 query_keys: Sequence[str], item_keys: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.tft_layer = tf_transform_output.transform_features_layer()
        self.raw_spec = tf_transform_output.raw_feature_spec()
        self.query_keys, self.item_keys = list(query_keys), list(item_keys)

    def transform(self, raw: Mapping[str, tf.SparseTensor], n: tf.Tensor) -> dict:
        """Transforms some raw features; absent ones are given empty values."""
        full = {}
        for key, spec in self.raw_spec.items():
            if key in raw:
                full[key] = raw[key]
            elif isinstance(spec, tf.io.VarLenFeature):
                full[key] = _empty_sparse(n, spec.dtype)
            else:
                full[key] = tf.zeros(tf.stack([n, 1]), spec.dtype)
        out = self.tft_layer(full)
        return {k: tf.RaggedTensor.from_sparse(v) if isinstance(v, tf.SparseTensor) else v
                for k, v in out.items()}

    def _parse(self, serialized: tf.Tensor, keys: Sequence[str]) -> dict:
        spec = {k: self.raw_spec[k] for k in keys}
        return tf.io.parse_example(serialized, spec)

    def query_from_dense(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Query embedding from named [N, M] string tensors."""
        n = tf.shape(next(iter(inputs.values())))[0]
        raw = {k: _dense_to_sparse(v) for k, v in inputs.items()}
        return {sig.EMBEDDING: self.model.query_embedding(self.transform(raw, n))}

    def item_from_dense(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Item embedding from named [N, M] string tensors."""
        n = tf.shape(next(iter(inputs.values())))[0]
        raw = {k: _dense_to_sparse(v) for k, v in inputs.items()}
        return {sig.EMBEDDING: self.model.item_embedding(self.transform(raw, n))}

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The concrete functions to save (see the module docstring).

        Traced without AutoGraph: the code has no tensor-dependent Python
        control flow, and converting it cost seconds per export.
        """
        def dense_spec(keys: Sequence[str]) -> dict[str, tf.TensorSpec]:
            return {k: tf.TensorSpec([None, None], tf.string, name=k) for k in keys}

        query_dense = tf.function(self.query_from_dense, autograph=False).get_concrete_function(
            dense_spec(self.query_keys))
        item_dense = tf.function(self.item_from_dense, autograph=False).get_concrete_function(
            dense_spec(self.item_keys))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=sig.EXAMPLES)],
                     autograph=False)
        def query_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            raw = self._parse(examples, self.query_keys)
            n = tf.shape(examples)[0]
            return {sig.EMBEDDING: self.model.query_embedding(self.transform(raw, n))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=sig.EXAMPLES)],
                     autograph=False)
        def item_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            raw = self._parse(examples, self.item_keys)
            n = tf.shape(examples)[0]
            return {sig.EMBEDDING: self.model.item_embedding(self.transform(raw, n))}

        return {sig.SERVING_DEFAULT: query_dense, sig.QUERY_EMBEDDING: query_dense,
                sig.ITEM_EMBEDDING: item_dense,
                sig.QUERY_EMBEDDING_EXAMPLES: query_examples.get_concrete_function(),
                sig.ITEM_EMBEDDING_EXAMPLES: item_examples.get_concrete_function()}


def raw_keys(model: TwoTowerSSL) -> tuple[list[str], list[str]]:
    """Raw feature keys of the query and item towers."""
    layout = model.layout
    query = [features.query_key(n) for n in layout.query_item_names]
    query += [features.context_key(n) for n in layout.context_names]
    return query, [features.item_key(n) for n in layout.item_names]


def export(model: TwoTowerSSL, tf_transform_output: tft.TFTransformOutput, path: str) -> None:
    """Saves the self-contained SavedModel to ``path``."""
    query_keys, item_keys = raw_keys(model)
    module = EmbeddingExport(model, tf_transform_output, query_keys, item_keys)
    tf.saved_model.save(module, path, signatures=module.signatures())
