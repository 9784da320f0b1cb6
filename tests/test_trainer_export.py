"""Save/reload round trip of the export, self-contained after Transform is deleted."""

import shutil

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from components.trainer import export, hparams
from components.trainer.model import TwoTowerSSL
from components.trainer.run import feature_layout
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


def test_export_round_trip_without_transform_output(tiny_root, tmp_path):
    spec = tiny_spec(tiny_root)
    rows = [catalog_row(b"a", [b"x", b"y"], [b"1990"]), catalog_row(b"b", [b"y"], [b"1995"]),
            log_row(b"a", b"b", [b"y"], [b"mobile"])]
    transform_dir = write_transform_graph(spec, rows)
    tft_out = tft.TFTransformOutput(transform_dir)
    hp = hparams.from_dict({"variant": "baseline", "share_towers": False,
                            "hidden_units": [8, 4], "embedding_dim": 3})
    model = TwoTowerSSL(feature_layout(spec, tft_out), hp)
    probe = [log_row(b"b", b"a", [b"x", b"zz"], [b"mobile"]),
             log_row(b"zz", b"c", [], [b"tablet"])]
    query_keys, item_keys = export.raw_keys(model)
    module = export.EmbeddingExport(model, tft_out, query_keys, item_keys)
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
