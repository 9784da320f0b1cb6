"""Schema of the joined examples, derived from the dataset spec.

Every categorical feature is a variable-length BYTES list (0..n values, so a
missing value is an empty list); catalog rows lack the ``query_*`` and
``context_*`` features. The bookkeeping features are fixed-length scalars.
"""

from __future__ import annotations

from tensorflow_metadata.proto.v0 import schema_pb2

from transforms import features
from transforms.spec import DatasetSpec


def raw_feature_keys(spec: DatasetSpec) -> list[str]:
    """Keys of the categorical features of the joined examples."""
    keys = [features.query_key(n) for n in spec.query_item_features]
    keys += [features.context_key(f.name) for f in spec.context_features]
    keys += [features.item_key(f.name) for f in spec.item_features]
    return keys


def joined_schema(spec: DatasetSpec) -> schema_pb2.Schema:
    """The schema Transform reads the joined examples with."""
    schema = schema_pb2.Schema()
    for key in raw_feature_keys(spec):
        schema.feature.add(name=key, type=schema_pb2.BYTES)
    for key, kind in ((features.ITEM_TRAIN_COUNT, schema_pb2.INT),
                      (features.IS_CATALOG_ROW, schema_pb2.INT),
                      (features.ITEM_BUCKET, schema_pb2.BYTES)):
        feature = schema.feature.add(name=key, type=kind)
        feature.shape.dim.add(size=1)
        feature.presence.min_fraction = 1.0
    return schema
