"""Save/reload round trip of the export, self-contained after Transform is deleted."""

import os
import shutil

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow.python.framework import config as tf_config

from components.trainer import export, hparams, run
from serving import signatures as sig
from tests.conftest import (
    catalog_row,
    log_row,
    serialize_example,
    tiny_spec,
    write_transform_graph,
)


def _dense(rows, key):
    width = max(1, max(len(r[key]) for r in rows))
    return tf.constant([[v.decode() for v in r[key]] + [""] * (width - len(r[key]))
                        for r in rows])


def _write_split(folder, rows):
    """Rows as a GZIP TFRecord split folder (bytes and int features), as JoinExamples writes."""
    os.makedirs(folder)
    with tf.io.TFRecordWriter(os.path.join(folder, "part-00000.gz"), "GZIP") as writer:
        for row in rows:
            ex = tf.train.Example()
            for key, values in row.items():
                feature = ex.features.feature[key]
                if values and isinstance(values[0], int):
                    feature.int64_list.value.extend(values)
                else:
                    feature.bytes_list.value.extend(values)
            writer.write(ex.SerializeToString())
    return folder


def test_export_round_trip_without_transform_output(tiny_root, tmp_path):
    """Trained as ``train_and_export`` does: one Transform output feeds training and export."""
    spec = tiny_spec(tiny_root)
    catalog = [catalog_row(b"a", [b"x", b"y"], [b"1990"]), catalog_row(b"b", [b"y"], [b"1995"]),
               catalog_row(b"c", [], [b"2000"])]
    logs = [log_row(b"a", b"b", [b"y"], [b"mobile"]), log_row(b"b", b"c", [b"x"], [b"desktop"]),
            log_row(b"c", b"a", [b"y", b"x"], [b"mobile"]), log_row(b"a", b"c", [], [b"mobile"])]
    transform_dir = write_transform_graph(spec, catalog + logs)
    train_dir = _write_split(str(tmp_path / "joined" / "train"), logs * 4)
    catalog_dir = _write_split(str(tmp_path / "joined" / "catalog"), catalog)
    tft_out = tft.TFTransformOutput(transform_dir)
    hp = hparams.from_dict({"variant": "so", "share_towers": False, "hidden_units": [8, 4],
                            "embedding_dim": 3, "batch_size": 4, "ssl_batch_size": 4,
                            "train_steps": 6, "steps_per_epoch": 3})
    try:
        model, _ = run.train(spec, hp, transform_dir, train_dir, catalog_dir,
                             str(tmp_path / "run"), tf_transform_output=tft_out)
    finally:
        tf_config.disable_op_determinism()    # run.train enables it for the process
    assert tft_out._transform_features_layer is not None      # training loaded it from tft_out
    probe = [log_row(b"b", b"a", [b"x", b"zz"], [b"mobile"]),
             log_row(b"zz", b"c", [], [b"tablet"])]
    query_keys, item_keys = export.raw_keys(model)
    module = export.EmbeddingExport(model, tft_out, query_keys, item_keys)
    assert module.tft_layer is tft_out.transform_features_layer()    # not loaded again
    raw = {k: tf.RaggedTensor.from_tensor(_dense(probe, k), padding="").to_sparse()
           for k in query_keys + item_keys}
    transformed = module.transform(raw, tf.constant(2))
    expected_q = model.query_embedding(transformed).numpy()
    expected_i = model.item_embedding(transformed).numpy()
    assert expected_q.shape == (2, 4) and not np.allclose(expected_q, expected_i)

    path = str(tmp_path / "model")
    export.export(model, tft_out, path)
    shutil.rmtree(transform_dir)                   # the export must not need it
    loaded = tf.saved_model.load(path)
    by_examples = loaded.signatures[sig.QUERY_EMBEDDING_EXAMPLES](
        examples=tf.constant([serialize_example(r, query_keys) for r in probe]))[sig.EMBEDDING]
    by_tensors = loaded.signatures[sig.QUERY_EMBEDDING](
        **{k: _dense(probe, k) for k in query_keys})[sig.EMBEDDING]
    items = loaded.signatures[sig.ITEM_EMBEDDING_EXAMPLES](
        examples=tf.constant([serialize_example(r, item_keys) for r in probe]))[sig.EMBEDDING]
    np.testing.assert_allclose(by_examples.numpy(), expected_q, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(by_tensors.numpy(), expected_q, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(items.numpy(), expected_i, rtol=1e-6, atol=1e-7)
    assert set(loaded.signatures) == {
        sig.SERVING_DEFAULT, sig.QUERY_EMBEDDING, sig.ITEM_EMBEDDING,
        sig.QUERY_EMBEDDING_EXAMPLES, sig.ITEM_EMBEDDING_EXAMPLES}
