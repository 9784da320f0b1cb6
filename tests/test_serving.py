"""The endpoint over REST and gRPC on ephemeral ports, against a NumPy oracle."""

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import scann  # noqa: F401  registers ScaNN's ops
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.index import export as index_export
from components.index import search
from components.trainer import export, hparams
from components.trainer.model import TwoTowerSSL
from components.trainer.run import feature_layout
from serving.server import Server
from tests.conftest import tiny_spec
from tests.test_preprocessing import _catalog_row
from tests.test_trainer_export import _serialize, _transform_dir

K = 5
N_ITEMS = 300


def _items():
    rng = np.random.default_rng(0)
    return [_catalog_row(b"i%d" % k, [b"g%d" % g for g in rng.choice(8, 2, replace=False)],
                         [b"y%d" % rng.integers(5)]) for k in range(N_ITEMS)]


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("serving")
    spec = tiny_spec(str(root))
    rows = _items()
    tft_out = tft.TFTransformOutput(_transform_dir(spec, rows))
    hp = hparams.from_dict({"variant": "baseline", "share_towers": False,
                            "hidden_units": [16, 8], "embedding_dim": 4})
    model = TwoTowerSSL(feature_layout(spec, tft_out), hp)
    query_keys, item_keys = export.raw_keys(model)
    module = export.EmbeddingExport(model, tft_out, query_keys, item_keys)
    model.item_embedding(module.transform(
        {k: tf.sparse.from_dense(tf.constant([[b"x"]])) for k in item_keys}, tf.constant(1)))
    model.query_embedding(module.transform(
        {k: tf.sparse.from_dense(tf.constant([[b"x"]])) for k in query_keys}, tf.constant(1)))
    query_dir = str(root / "query_model")
    export.export(model, tft_out, query_dir)
    query_model = tf.saved_model.load(query_dir)
    items = query_model.signatures["item_embedding_examples"](examples=tf.constant(
        [_serialize(r, item_keys) for r in rows]))["embedding"].numpy()
    ids = np.array([r["item_item_id"][0].decode() for r in rows], dtype=object)
    bases = {"tiny": str(root / "serving" / "tiny"), "tiny_scann": str(root / "serving" / "scann")}
    index_export.save(index_export.RetrievalModule(query_model, ids, items, K),
                      os.path.join(bases["tiny"], "1"))
    # Every leaf searched and every item rescored: ScaNN's ops, exact results.
    searcher = search.build_scann(items, search.IndexConfig(
        k=K, num_leaves=4, leaves_to_search=4, reorder=N_ITEMS))
    index_export.save(index_export.RetrievalModule(query_model, ids, items, K, searcher),
                      os.path.join(bases["tiny_scann"], "1"))
    server = Server(bases, rest_port=0, grpc_port=0, max_batch=8, max_body_bytes=20_000,
                    poll_seconds=0.2).start()
    request.addfinalizer(server.stop)
    return {"server": server, "query_model": query_model, "items": items, "ids": ids,
            "bases": bases, "query_keys": query_keys}


def _post(served, path, body, raw=None):
    url = f"http://127.0.0.1:{served['server'].rest_port}{path}"
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(served, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{served['server'].rest_port}{path}",
                                    timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


QUERIES = [{"query_item_id": ["i1"], "query_genre": ["g1", "g2"], "query_year": ["y1"],
            "context_device": ["mobile"]},
           {"query_item_id": ["i7"], "query_genre": ["g3"], "query_year": [""],
            "context_device": ["tablet"]}]


def _oracle(served):
    dense = {k: tf.constant([[*q[k], *[""] * (2 - len(q[k]))] for q in QUERIES])
             for k in served["query_keys"]}
    emb = served["query_model"].signatures["query_embedding"](**dense)["embedding"].numpy()
    return search.brute_force(emb, served["items"], K)


def test_rest_row_and_columnar_match_numpy(served):
    exact_scores, exact_idx = _oracle(served)
    code, body = _post(served, "/v1/models/tiny:predict", {"instances": QUERIES})
    assert code == 200
    scores = np.array([p["scores"] for p in body["predictions"]])
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)
    assert body["predictions"][0]["item_ids"][0] == served["ids"][exact_idx[0, 0]]
    columnar = {k: [q[k] for q in QUERIES] for k in served["query_keys"]}
    code, body = _post(served, "/v1/models/tiny/versions/1:predict", {"inputs": columnar})
    assert code == 200
    np.testing.assert_allclose(np.array(body["outputs"]["scores"]), exact_scores, rtol=1e-5,
                               atol=1e-6)
    code, body = _post(served, "/v1/models/tiny_scann:predict", {"instances": QUERIES})
    assert code == 200
    np.testing.assert_allclose(np.array([p["scores"] for p in body["predictions"]]),
                               exact_scores, rtol=1e-4, atol=1e-5)


def test_grpc_predict_and_metadata_match_numpy(served):
    exact_scores, _ = _oracle(served)
    channel = grpc.insecure_channel(f"127.0.0.1:{served['server'].grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    for k in served["query_keys"]:
        rows = [[*q[k], *[""] * (2 - len(q[k]))] for q in QUERIES]
        request.inputs[k].CopyFrom(tf.make_tensor_proto(np.array(rows, dtype=object)))
    response = stub.Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), exact_scores,
                               rtol=1e-5, atol=1e-6)
    assert response.model_spec.version.value == 1
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = "tiny"
    meta_request.metadata_field.append("signature_def")
    meta = stub.GetModelMetadata(meta_request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "retrieve_examples"} <= set(signatures.signature_def)
    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = "tiny"
    bad.inputs["nope"].CopyFrom(tf.make_tensor_proto(np.array([["x"]], dtype=object)))
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(bad, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_and_metadata(served):
    code, body = _get(served, "/v1/models/tiny")
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    code, body = _get(served, "/v1/models/tiny/metadata")
    assert code == 200
    assert "serving_default" in body["metadata"]["signature_def"]["signature_def"]


@pytest.mark.parametrize("path, body, raw, code, message", [
    ("/v1/models/tiny:predict", None, b"{not json", 400, "Expecting property name"),
    ("/v1/models/tiny:predict", {"rows": []}, None, 400, "missing 'instances' or 'inputs'"),
    ("/v1/models/tiny:predict", {"instances": [{"query_item_id": ["i1"]}]}, None, 400,
     "instance 0: expected inputs"),
    ("/v1/models/tiny:predict", {"instances": QUERIES * 5}, None, 400, "exceeds the limit of 8"),
    ("/v1/models/tiny:predict", {"instances": QUERIES, "signature_name": "nope"}, None, 400,
     "signature 'nope' not found"),
    ("/v1/models/tiny:predict", {"instances": [{**QUERIES[0], "query_genre": [["x"]]}]}, None,
     400, "expected a list of strings"),
    ("/v1/models/tiny:predict", None, b"x" * 30_000, 400, "outside the limit"),
    ("/v1/models/ghost:predict", {"instances": QUERIES}, None, 404, "Servable not found"),
    ("/v1/models/tiny/versions/9:predict", {"instances": QUERIES}, None, 404,
     "Specific(tiny, 9)"),
])
def test_bad_requests_get_tf_serving_errors(served, path, body, raw, code, message):
    got, reply = _post(served, path, body, raw)
    assert got == code and message in reply["error"], reply
    assert _post(served, "/v1/models/tiny:predict", {"instances": QUERIES})[0] == 200


def test_version_swap_under_live_requests_loses_none(served):
    errors, done, answers = [], threading.Event(), []

    def client():
        while not done.is_set():
            code, body = _post(served, "/v1/models/tiny:predict", {"instances": QUERIES[:1]})
            answers.append(code)
            if code != 200:
                errors.append(body)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    base = served["bases"]["tiny"]
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, "tmp-2"))
    os.rename(os.path.join(base, "tmp-2"), os.path.join(base, "2"))
    deadline = time.time() + 60
    while _get(served, "/v1/models/tiny")[1]["model_version_status"][0]["version"] != "2":
        assert time.time() < deadline, "version 2 was never served"
        time.sleep(0.2)
    time.sleep(1.0)
    done.set()
    for t in threads:
        t.join()
    assert not errors and len(answers) > 20
    assert _get(served, "/v1/models/tiny/versions/1")[0] == 200   # previous kept addressable


def test_evaluate_signature_top_k_and_own_item_excluded(served, tmp_path):
    """The Evaluator's signature: top-K ids over the catalog, scores (1 + cos) / 2."""
    module = index_export.RetrievalModule(served["query_model"], served["ids"],
                                          served["items"], K, exclude_key="query_item_id")
    index_export.save(module, str(tmp_path / "eval"))
    evaluate = tf.saved_model.load(str(tmp_path / "eval")).signatures["evaluate"]
    examples = []
    for q in QUERIES:
        feats = {k: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v.encode() for v in q[k] if v])) for k in served["query_keys"]}
        examples.append(tf.train.Example(features=tf.train.Features(
            feature=feats)).SerializeToString())
    out = evaluate(examples=tf.constant(examples))
    dense = {k: tf.constant([[*q[k], *[""] * (2 - len(q[k]))] for q in QUERIES])
             for k in served["query_keys"]}
    emb = served["query_model"].signatures["query_embedding"](**dense)["embedding"].numpy()
    scores = search.normalize(emb) @ search.normalize(served["items"]).T
    for row, q in enumerate(QUERIES):
        own = list(served["ids"]).index(q["query_item_id"][0])
        scores[row, own] = -np.inf
    top = np.sort(scores, axis=1)[:, ::-1][:, :K]
    np.testing.assert_allclose(out["scores"].numpy(), (top + 1) / 2, rtol=1e-5, atol=1e-6)
    classes = out["classes"].numpy().astype(str)
    for row, q in enumerate(QUERIES):
        assert q["query_item_id"][0] not in classes[row]
