"""The Trainer's two input streams.

* **Main stream:** training pairs, shuffled with a seed and repeated, so
  batches follow the logs' (power-law) item distribution.
* **SSL stream:** catalog items drawn **uniformly with replacement** from the
  whole catalog, tail and never-seen items included: the catalog split is
  held as ragged id tensors and each batch gathers stateless-uniform random
  rows (seeded by (seed, batch index)).

Both read the joined (raw) Examples and apply the Transform graph to each
batch as it is read (:func:`transformed_decoder`): Transform analyzes but
does not write a transformed copy of every row, and the graph applied here
is the one the serving export runs. Variable-length id features arrive as
``tf.RaggedTensor`` [N, None] int64.
"""

from __future__ import annotations

from typing import Callable, Mapping

import tensorflow as tf
import tensorflow_transform as tft

from components import tfrecords
from transforms import features

#: Serialized Examples [N] -> features.
Decoder = Callable[[tf.Tensor], dict[str, tf.Tensor]]


def to_ragged(parsed: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Parsed features with every SparseTensor as a RaggedTensor [N, None]."""
    out = {}
    for key, value in parsed.items():
        if isinstance(value, tf.SparseTensor):
            out[key] = tf.RaggedTensor.from_sparse(value)
        else:
            out[key] = value
    return out


def transformed_decoder(tf_transform_output: tft.TFTransformOutput) -> Decoder:
    """Serialized joined Examples [N] -> their transformed features, ragged.

    Parses with the raw feature spec and applies the Transform graph (the
    ``item_bucket`` slice label is dropped: no model input).
    """
    raw_spec = tf_transform_output.raw_feature_spec()
    layer = tf_transform_output.transform_features_layer()

    @tf.autograph.experimental.do_not_convert     # straight-line code: nothing to convert
    def decode(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        out = to_ragged(layer(tf.io.parse_example(serialized, raw_spec)))
        out.pop(features.ITEM_BUCKET, None)
        return out

    return decode


def main_stream(split_dir: str, decode: Decoder, batch_size: int, seed: int,
                shuffle_buffer: int = 100_000, shard: tuple[int, int] = (1, 0)
                ) -> tf.data.Dataset:
    """Endless shuffled batches of training pairs, decoded by ``decode``.

    ``shard`` ``(n, i)``: this reader's share of the split when ``n`` readers
    (training workers) share it: every ``n``-th record from the ``i``-th, so
    the shards are equal whatever the files' sizes (a shard of whole files
    could be small or empty, and its records drawn more often).
    """
    n, i = shard
    records = tfrecords.split_dataset(split_dir)
    if n > 1:
        records = records.shard(n, i)
    return (records
            .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(batch_size, drop_remainder=True)
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE))


def load_catalog(split_dir: str, decode: Decoder, item_keys: list[str]
                 ) -> dict[str, tf.RaggedTensor]:
    """Every catalog item's ``item_keys`` features (decoded by ``decode``), as ragged tensors."""
    records = tfrecords.split_dataset(split_dir)
    parts: dict[str, list[tf.RaggedTensor]] = {k: [] for k in item_keys}
    for batch in records.batch(65536):
        parsed = decode(batch)
        for k in item_keys:
            parts[k].append(parsed[k])
    return {k: tf.concat(v, axis=0) for k, v in parts.items()}


def uniform_indices(n_items: int, batch_size: int, seed: int, batch_index: tf.Tensor
                    ) -> tf.Tensor:
    """[batch_size] catalog rows drawn uniformly with replacement."""
    key = tf.stack([tf.constant(seed, tf.int64) * 1000 + 5, tf.cast(batch_index, tf.int64)])
    return tf.random.stateless_uniform([batch_size], key, minval=0, maxval=n_items,
                                       dtype=tf.int64)


def ssl_stream(catalog: Mapping[str, tf.RaggedTensor], batch_size: int, seed: int
               ) -> tf.data.Dataset:
    """Endless batches of catalog items, each item equally likely."""
    n_items = int(next(iter(catalog.values())).nrows())
    if n_items == 0:
        raise ValueError("the catalog split is empty; the SSL stream needs catalog items.")

    @tf.autograph.experimental.do_not_convert
    def gather(batch_index: tf.Tensor) -> dict[str, tf.RaggedTensor]:
        rows = uniform_indices(n_items, batch_size, seed, batch_index)
        return {k: tf.gather(v, rows) for k, v in catalog.items()}

    return tf.data.Dataset.counter().map(gather)


def training_stream(main: tf.data.Dataset, ssl: tf.data.Dataset | None) -> tf.data.Dataset:
    """Zips the streams into ``(main, ssl)`` batches (``ssl`` empty without SSL).

    Without tf.data's autotuning: deleting its iterator after training would
    wait up to a minute (:func:`components.tfrecords.without_autotune`).
    """
    if ssl is None:
        stream = main.map(lambda m: (m, {}))
    else:
        stream = tf.data.Dataset.zip((main, ssl))
    return tfrecords.without_autotune(stream.prefetch(tf.data.AUTOTUNE))
