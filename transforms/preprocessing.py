"""The Transform ``preprocessing_fn``: shared vocabularies with OOV buckets.

Each item feature gets ONE vocabulary, computed over the ``catalog`` rows
only (every item counted once, so tail and cold items' values are in it),
and applied to both its ``item_*`` and its ``query_*`` column. Context
features get vocabularies from the log rows. Values below the feature's
frequency threshold (or outside its top-k) and values never seen map to one
of ``num_oov_buckets`` ids after the vocabulary. Every output is a
variable-length int64 list of ids (a missing value or an empty list gives an
empty list), so single- and multi-valued features are pooled alike later.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf
import tensorflow_transform as tft

from transforms import features
from transforms.spec import SPEC_PARAMETER, DatasetSpec, Feature, spec_from_dict


def _rows_where(values: tf.SparseTensor, keep_row: tf.Tensor) -> tf.SparseTensor:
    """Keeps the values of rows where ``keep_row`` ([batch] bool) is true."""
    return tf.sparse.retain(values, tf.gather(keep_row, values.indices[:, 0]))


def _vocabulary(values: tf.SparseTensor, feature: Feature, filename: str) -> Any:
    threshold = feature.frequency_threshold if feature.frequency_threshold > 1 else None
    return tft.vocabulary(values, top_k=feature.top_k, frequency_threshold=threshold,
                          vocab_filename=filename)


def custom_config(spec: DatasetSpec) -> dict[str, Any]:
    """The Transform component's ``custom_config`` for ``spec``."""
    return {SPEC_PARAMETER: spec.to_dict()}


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> dict[str, Any]:
    """Maps raw joined features to vocabulary ids.

    Args:
      inputs: ``SparseTensor`` [batch, None] of bytes per categorical key of
        :func:`transforms.schema.joined_schema`, plus dense [batch, 1]
        bookkeeping features.
      custom_config: :func:`custom_config` of the dataset spec.

    Returns:
      ``SparseTensor`` [batch, None] int64 ids under the same keys, and the
      bookkeeping features unchanged.
    """
    spec = spec_from_dict(custom_config[SPEC_PARAMETER])
    is_catalog = tf.equal(tf.reshape(inputs[features.IS_CATALOG_ROW], [-1]), 1)
    oov = spec.num_oov_buckets
    outputs: dict[str, Any] = {}
    for feature in spec.item_features:
        item = inputs[features.item_key(feature.name)]
        vocab = _vocabulary(_rows_where(item, is_catalog), feature,
                            features.vocabulary_name(feature.name))
        outputs[features.item_key(feature.name)] = tft.apply_vocabulary(
            item, vocab, num_oov_buckets=oov)
        if feature.name in spec.query_item_features:
            outputs[features.query_key(feature.name)] = tft.apply_vocabulary(
                inputs[features.query_key(feature.name)], vocab, num_oov_buckets=oov)
    for feature in spec.context_features:
        key = features.context_key(feature.name)
        vocab = _vocabulary(_rows_where(inputs[key], tf.logical_not(is_catalog)), feature,
                            features.context_vocabulary_name(feature.name))
        outputs[key] = tft.apply_vocabulary(inputs[key], vocab, num_oov_buckets=oov)
    for key in (features.ITEM_TRAIN_COUNT, features.ITEM_BUCKET, features.IS_CATALOG_ROW):
        outputs[key] = inputs[key]
    return outputs
