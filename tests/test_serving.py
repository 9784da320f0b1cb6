"""The endpoint over REST and gRPC on ephemeral ports, against a NumPy oracle."""

import base64
import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import weakref

import grpc
import numpy as np
import pytest
import scann  # noqa: F401  registers ScaNN's ops
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras
from tensorflow.core.protobuf import saved_model_pb2
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
from serving import batching
from serving import signatures as sig
from serving.models import LoadReport, ModelManager
from serving.server import Options, Server
from tests.conftest import catalog_row, serialize_example, tiny_spec, write_transform_graph

K = 5
N_ITEMS = 300


def _items():
    rng = np.random.default_rng(0)
    return [catalog_row(b"i%d" % k, [b"g%d" % g for g in rng.choice(8, 2, replace=False)],
                         [b"y%d" % rng.integers(5)]) for k in range(N_ITEMS)]


def export_models(root):
    """Exports the tiny retrieval models in TF Serving's layout under ``root``/serving.

    Returns the served bases (``tiny``: brute force, ``tiny_scann``: ScaNN's
    ops) with what the NumPy oracle needs: the query model, the catalog's
    item embeddings and ids, the query feature keys and the catalog rows.
    """
    spec = tiny_spec(str(root))
    rows = _items()
    tft_out = tft.TFTransformOutput(write_transform_graph(spec, rows))
    hp = hparams.from_dict({"variant": "baseline", "share_towers": False,
                            "hidden_units": [16, 8], "embedding_dim": 4})
    tf_keras.utils.set_random_seed(0)     # the untrained towers' weights, whatever ran before
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
    items = query_model.signatures[sig.ITEM_EMBEDDING_EXAMPLES](examples=tf.constant(
        [serialize_example(r, item_keys) for r in rows]))[sig.EMBEDDING].numpy()
    ids = np.array([r["item_item_id"][0].decode() for r in rows], dtype=object)
    bases = {"tiny": str(root / "serving" / "tiny"), "tiny_scann": str(root / "serving" / "scann")}
    index_export.save(index_export.RetrievalModule(query_model, ids, items, K,
                                                   exclude_key="query_item_id"),
                      os.path.join(bases["tiny"], "1"))
    # Every leaf searched and every item rescored: ScaNN's ops, exact results.
    searcher = search.build_scann(items, search.IndexConfig(
        k=K, num_leaves=4, leaves_to_search=4, reorder=N_ITEMS))
    index_export.save(index_export.RetrievalModule(query_model, ids, items, K, searcher,
                                                   exclude_key="query_item_id"),
                      os.path.join(bases["tiny_scann"], "1"))
    return {"query_model": query_model, "items": items, "ids": ids, "bases": bases,
            "query_keys": query_keys, "query_dir": query_dir, "rows": rows}


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    exported = export_models(tmp_path_factory.mktemp("serving"))
    # A generous read timeout: on a busy machine a client thread may wait for
    # the GIL between sending headers and body (the 408 test has its own server).
    server = Server(exported["bases"], Options(rest_port=0, grpc_port=0, max_batch=8,
                                               max_body_bytes=200_000, read_timeout=30.0,
                                               poll_seconds=0.2)).start()
    request.addfinalizer(server.stop)
    return {**exported, "server": server}


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


def _oracle(served, queries=QUERIES, keep=False):
    """NumPy top-K (scores, ids): cosine over the catalog, own item left out unless ``keep``."""
    width = max(len(q[k]) for q in queries for k in served["query_keys"])
    dense = {k: tf.constant([[*q[k], *[""] * (width - len(q[k]))] for q in queries])
             for k in served["query_keys"]}
    emb = served["query_model"].signatures[sig.QUERY_EMBEDDING](**dense)[sig.EMBEDDING].numpy()
    scores = search.normalize(emb) @ search.normalize(served["items"]).T
    if not keep:
        own = np.array([q["query_item_id"][0] for q in queries], dtype=object)
        scores[served["ids"][None, :] == own[:, None]] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(scores, top, axis=1), served["ids"][top]


def test_rest_row_and_columnar_match_numpy(served):
    exact_scores, exact_ids = _oracle(served)
    code, body = _post(served, "/v1/models/tiny:predict", {"instances": QUERIES})
    assert code == 200
    scores = np.array([p[sig.SCORES] for p in body["predictions"]])
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)
    assert body["predictions"][0][sig.ITEM_IDS][0] == exact_ids[0, 0]
    columnar = {k: [q[k] for q in QUERIES] for k in served["query_keys"]}
    code, body = _post(served, "/v1/models/tiny/versions/1:predict", {"inputs": columnar})
    assert code == 200
    np.testing.assert_allclose(np.array(body["outputs"][sig.SCORES]), exact_scores, rtol=1e-5,
                               atol=1e-6)
    code, body = _post(served, "/v1/models/tiny_scann:predict", {"instances": QUERIES})
    assert code == 200
    np.testing.assert_allclose(np.array([p[sig.SCORES] for p in body["predictions"]]),
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
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[sig.SCORES]), exact_scores,
                               rtol=1e-5, atol=1e-6)
    assert response.model_spec.version.value in _versions(served, "tiny")
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = "tiny"
    meta_request.metadata_field.append("signature_def")
    meta = stub.GetModelMetadata(meta_request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)
    assert {sig.SERVING_DEFAULT, sig.RETRIEVE_EXAMPLES} <= set(signatures.signature_def)
    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = "tiny"
    bad.inputs["nope"].CopyFrom(tf.make_tensor_proto(np.array([["x"]], dtype=object)))
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(bad, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _query_examples(served, queries=QUERIES):
    """Each query as a serialized tf.Example of its query features (no padding)."""
    return [tf.train.Example(features=tf.train.Features(feature={
        k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in q[k] if v]))
        for k in served["query_keys"]})).SerializeToString() for q in queries]


def test_b64_examples_over_rest_match_grpc_and_numpy(served):
    """TF Serving's {"b64": ...} binary strings reach the signature as the bytes sent."""
    examples = _query_examples(served)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{served['server'].grpc_port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = sig.RETRIEVE_EXAMPLES
    request.inputs[sig.EXAMPLES].CopyFrom(tf.make_tensor_proto(np.array(examples, dtype=object)))
    response = stub.Predict(request, timeout=30)
    grpc_scores = tf.make_ndarray(response.outputs[sig.SCORES])
    grpc_ids = tf.make_ndarray(response.outputs[sig.ITEM_IDS]).astype(str)
    exact_scores, exact_ids = _oracle(served)
    np.testing.assert_allclose(grpc_scores, exact_scores, rtol=1e-5, atol=1e-6)
    assert list(grpc_ids[:, 0]) == list(exact_ids[:, 0])

    b64 = [{"b64": base64.b64encode(e).decode()} for e in examples]
    named = [{sig.EXAMPLES: v} for v in b64]
    for body in [{"instances": b64}, {"instances": named}, {"inputs": {sig.EXAMPLES: b64}},
                 {"inputs": b64}]:
        code, reply = _post(served, "/v1/models/tiny:predict",
                            {"signature_name": sig.RETRIEVE_EXAMPLES, **body})
        assert code == 200, (body, reply)
        if "instances" in body:
            scores = np.array([p[sig.SCORES] for p in reply["predictions"]])
            ids = np.array([p[sig.ITEM_IDS] for p in reply["predictions"]])
        else:
            scores = np.array(reply["outputs"][sig.SCORES])
            ids = np.array(reply["outputs"][sig.ITEM_IDS])
        np.testing.assert_allclose(scores, grpc_scores, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(ids, grpc_ids)


@pytest.mark.parametrize("value, message", [
    ({"b64": "not base64!"}, "input 'examples': invalid base64 value: "),
    ({"b64": "abcde"}, "input 'examples': invalid base64 value: "),
    ({"b64": 5}, "input 'examples': expected a string (or {\"b64\": ...}), got dict"),
], ids=["bad-character", "bad-length", "not-a-string"])
def test_malformed_b64_gets_400_naming_the_input(served, value, message):
    code, reply = _post(served, "/v1/models/tiny:predict",
                        {"signature_name": sig.RETRIEVE_EXAMPLES,
                         "instances": [{sig.EXAMPLES: value}]})
    assert code == 400 and reply["error"].startswith(message), reply


def test_status_and_metadata(served):
    code, body = _get(served, "/v1/models/tiny")
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    code, body = _get(served, "/v1/models/tiny/metadata")
    assert code == 200
    assert sig.SERVING_DEFAULT in body["metadata"]["signature_def"]["signature_def"]


@pytest.mark.parametrize("path, body, raw, code, message", [
    ("/v1/models/tiny:predict", None, b"{not json", 400, "invalid JSON"),
    ("/v1/models/tiny:predict", {"rows": []}, None, 400, "missing 'instances' or 'inputs'"),
    ("/v1/models/tiny:predict", {"instances": [{"query_item_id": ["i1"]}]}, None, 400,
     "instance 0: expected inputs"),
    ("/v1/models/tiny:predict", {"instances": QUERIES * 5}, None, 400, "exceeds the limit of 8"),
    ("/v1/models/tiny:predict", {"instances": QUERIES, "signature_name": "nope"}, None, 400,
     "signature 'nope' not found"),
    ("/v1/models/tiny:predict", {"instances": [{**QUERIES[0], "query_genre": [["x"]]}]}, None,
     400, "expected a string"),
    ("/v1/models/tiny:predict", {"instances": [{**QUERIES[0], "query_genre": [1.5]}]}, None,
     400, "input 'query_genre': expected a string"),
    ("/v1/models/tiny:predict", None, b"[" * 100_000, 400, "JSON nesting deeper than"),
    ("/v1/models/tiny:predict", None, b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", 400,
     "JSON nesting deeper than the limit of 32"),
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


def test_model_manager_reports_each_version_loaded_or_failed_once(served, tmp_path):
    base = tmp_path / "model"
    shutil.copytree(os.path.join(served["bases"]["tiny"], "1"), base / "3")
    (base / "5" / "variables").mkdir(parents=True)          # complete-looking, unreadable
    (base / "5" / "saved_model.pb").write_bytes(b"not a SavedModel")
    (base / "5" / "variables" / "variables.index").write_bytes(b"")
    reports = []
    manager = ModelManager({"m": str(base)}, on_load=reports.append)
    manager.refresh()
    manager.refresh()                                        # nothing new: no report
    assert manager.get("m").versions() == [3]
    assert [(r.model, r.version, bool(r.error)) for r in reports] == \
        [("m", 3, False), ("m", 5, True)]
    assert isinstance(reports[0], LoadReport) and reports[0].seconds > 0
    assert reports[0].path == str(base / "3")
    assert reports[1].error.startswith("OSError: Cannot parse file")


@pytest.mark.parametrize("item_block", [index_export.ITEM_BLOCK, 7])
def test_evaluate_signature_top_k_and_own_item_excluded(served, tmp_path, monkeypatch,
                                                        item_block):
    """The Evaluator's signature: top-K ids over the catalog, scores (1 + cos) / 2.

    Also with the catalog scored in blocks of 7 items (a million-item catalog's path).
    """
    monkeypatch.setattr(index_export, "ITEM_BLOCK", item_block)
    module = index_export.RetrievalModule(served["query_model"], served["ids"],
                                          served["items"], K, exclude_key="query_item_id")
    index_export.save(module, str(tmp_path / "eval"))
    evaluate = tf.saved_model.load(str(tmp_path / "eval")).signatures[sig.EVALUATE]
    out = evaluate(examples=tf.constant(_query_examples(served)))
    dense = {k: tf.constant([[*q[k], *[""] * (2 - len(q[k]))] for q in QUERIES])
             for k in served["query_keys"]}
    emb = served["query_model"].signatures[sig.QUERY_EMBEDDING](**dense)[sig.EMBEDDING].numpy()
    scores = search.normalize(emb) @ search.normalize(served["items"]).T
    for row, q in enumerate(QUERIES):
        own = list(served["ids"]).index(q["query_item_id"][0])
        scores[row, own] = -np.inf
    top = np.sort(scores, axis=1)[:, ::-1][:, :K]
    np.testing.assert_allclose(out[sig.SCORES].numpy(), (top + 1) / 2, rtol=1e-5, atol=1e-6)
    classes = out[sig.CLASSES].numpy().astype(str)
    for row, q in enumerate(QUERIES):
        assert q["query_item_id"][0] not in classes[row]


def _versions(served, name):
    """The version numbers under a served model's base folder (tests may add some)."""
    return {int(v) for v in os.listdir(served["bases"][name]) if v.isdigit()}


def _connect(served):
    sock = socket.create_connection(("127.0.0.1", served["server"].rest_port), timeout=20)
    return sock


_READERS = weakref.WeakKeyDictionary()


def _read_response(sock):
    """(status, lower-cased headers, JSON body) of one response on a raw socket."""
    if sock not in _READERS:
        _READERS[sock] = sock.makefile("rb")
    reader = _READERS[sock]
    status = reader.readline()
    assert status, "connection closed before a response"
    headers = {}
    for line in iter(reader.readline, b"\r\n"):
        assert line, "connection closed inside the headers"
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.lower()] = value.strip()
    body = reader.read(int(headers["content-length"]))
    return int(status.split()[1]), headers, json.loads(body)


def _closed(sock):
    try:
        return (_READERS[sock] if sock in _READERS else sock.makefile("rb")).read(1) == b""
    except ConnectionResetError:
        return True


def _predict_request(body, version="HTTP/1.1", extra=""):
    data = json.dumps(body).encode()
    return (f"POST /v1/models/tiny:predict {version}\r\nHost: x\r\n{extra}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def _alive(served):
    assert _post(served, "/v1/models/tiny:predict", {"instances": QUERIES})[0] == 200


def test_content_length_over_the_limit_gets_413_without_the_body_being_read(served):
    with _connect(served) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 999999999\r\n\r\n{")
        code, headers, body = _read_response(sock)
        assert code == 413 and "over the limit of 200000 bytes" in body["error"]
        assert headers["connection"] == "close" and _closed(sock)
    _alive(served)


@pytest.fixture
def impatient(served):
    """A second endpoint on the same models with a 1 s read timeout."""
    server = Server(served["bases"], Options(rest_port=0, grpc_port=0, read_timeout=1.0,
                                             max_body_bytes=200_000)).start()
    yield {**served, "server": server}
    server.stop()


def test_lying_content_length_and_trickling_body_time_out_with_408(impatient):
    served = impatient
    with _connect(served) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 5000\r\n\r\n{")        # 1 of 5000 bytes, then nothing
        code, _, body = _read_response(sock)
        assert code == 408 and "not received within 1.0 s" in body["error"] and _closed(sock)
    with _connect(served) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 200\r\n\r\n")
        answer = []
        reader = threading.Thread(target=lambda: answer.append(_read_response(sock)))
        reader.start()
        for _ in range(40):                                    # one byte every 0.1 s
            if answer:
                break
            try:
                sock.sendall(b" ")
            except OSError:
                break
            time.sleep(0.1)
        reader.join(timeout=20)
        assert answer and answer[0][0] == 408, answer
    _alive(served)


def test_keep_alive_http_1_0_and_1_1(served):
    exact_scores, _ = _oracle(served, QUERIES[:1])
    with _connect(served) as sock:              # HTTP/1.0 asking for keep-alive: two answers
        for _ in range(2):
            sock.sendall(_predict_request({"instances": QUERIES[:1]}, "HTTP/1.0",
                                          "Connection: keep-alive\r\n"))
            code, headers, body = _read_response(sock)
            assert code == 200 and headers["connection"].lower() == "keep-alive"
            np.testing.assert_allclose(body["predictions"][0][sig.SCORES], exact_scores[0],
                                       rtol=1e-5, atol=1e-6)
    with _connect(served) as sock:              # HTTP/1.0 without it: answered, then closed
        sock.sendall(_predict_request({"instances": QUERIES[:1]}, "HTTP/1.0"))
        code, headers, _ = _read_response(sock)
        assert code == 200 and headers["connection"] == "close" and _closed(sock)
    with _connect(served) as sock:              # HTTP/1.1: two pipelined requests, in order
        sock.sendall(_predict_request({"instances": QUERIES[:1]}) +
                     _predict_request({"instances": QUERIES[:1], "signature_name": "nope"}))
        assert _read_response(sock)[0] == 200
        code, _, body = _read_response(sock)
        assert code == 400 and "signature 'nope' not found" in body["error"]


def test_malformed_and_oversized_heads_get_json_errors(served):
    for raw, code in [(b"GARBAGE\r\n\r\n", 400),
                      (b"POST /v1/models/tiny:predict HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
                       400),
                      (b"POST /v1/models/tiny:predict HTTP/1.1\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n", 411),
                      (b"GET /v1/models/tiny HTTP/1.1\r\nX: " + b"a" * 70_000, 431)]:
        with _connect(served) as sock:
            sock.sendall(raw)
            got, _, body = _read_response(sock)
            assert got == code and body["error"], (raw[:40], got, body)
    _alive(served)


def _catalog_queries(served):
    """Queries made of catalog items' own features (the item-to-item case)."""
    return [{"query_item_id": [r["item_item_id"][0].decode()],
             "query_genre": [g.decode() for g in r["item_genre"]],
             "query_year": [y.decode() for y in r["item_year"]], "context_device": ["mobile"]}
            for r in served["rows"]]


def _own_in_top(served):
    """Catalog queries whose own item is in the top K when it is kept (NumPy)."""
    queries = _catalog_queries(served)
    _, ids = _oracle(served, queries, keep=True)
    chosen = [q for q, row in zip(queries, ids) if q["query_item_id"][0] in row]
    assert chosen, "no catalog query has its own item in the top K; the fixture changed"
    return chosen[:8]


@pytest.mark.parametrize("model", ["tiny", "tiny_scann"])
def test_own_item_excluded_by_default_over_rest(served, model):
    queries = _own_in_top(served)
    for keep, signature in [(False, ""), (True, sig.KEEP_QUERY_ITEM)]:
        exact_scores, exact_ids = _oracle(served, queries, keep=keep)
        code, body = _post(served, f"/v1/models/{model}:predict",
                           {"instances": queries, "signature_name": signature})
        assert code == 200, body
        ids = np.array([p[sig.ITEM_IDS] for p in body["predictions"]])
        np.testing.assert_allclose(np.array([p[sig.SCORES] for p in body["predictions"]]),
                                   exact_scores, rtol=1e-4, atol=1e-5)
        own = [q["query_item_id"][0] for q in queries]
        assert all((o in row) == keep for o, row in zip(own, ids))
        assert (ids == exact_ids).mean() > 0.95     # ties aside, the same ids


@pytest.mark.parametrize("model", ["tiny", "tiny_scann"])
def test_own_item_excluded_by_default_over_grpc(served, model):
    queries = _own_in_top(served)
    width = max(len(q[k]) for q in queries for k in served["query_keys"])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{served['server'].grpc_port}"))
    for keep, signature in [(False, ""), (True, sig.KEEP_QUERY_ITEM)]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        for k in served["query_keys"]:
            rows = [[*q[k], *[""] * (width - len(q[k]))] for q in queries]
            request.inputs[k].CopyFrom(tf.make_tensor_proto(np.array(rows, dtype=object)))
        response = stub.Predict(request, timeout=30)
        exact_scores, _ = _oracle(served, queries, keep=keep)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[sig.SCORES]), exact_scores,
                                   rtol=1e-4, atol=1e-5)
        ids = tf.make_ndarray(response.outputs[sig.ITEM_IDS]).astype(str)
        own = [q["query_item_id"][0] for q in queries]
        assert all((o in row) == keep for o, row in zip(own, ids))


def test_grpc_wrong_dtype_and_unknown_signature(served):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{served['server'].grpc_port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    for k in served["query_keys"]:
        request.inputs[k].CopyFrom(tf.make_tensor_proto(np.array([["x"]], dtype=object)))
    wrong = predict_pb2.PredictRequest()
    wrong.CopyFrom(request)
    wrong.inputs["query_genre"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    unknown = predict_pb2.PredictRequest()
    unknown.CopyFrom(request)
    unknown.model_spec.signature_name = "nope"
    for bad, message in [(wrong, "input 'query_genre': expected string, got float32"),
                         (unknown, "signature 'nope' not found")]:
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(bad, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in e.value.details()
    assert stub.Predict(request, timeout=30).outputs[sig.SCORES].tensor_shape.dim[1].size == K


TABLE_OPS = {"HashTableV2", "MutableHashTableV2", "InitializeTableFromTextFileV2",
             "InitializeTableV2", "LookupTableImportV2"}


def _signature_reach(path):
    """(table ops reachable from the signatures, table ops anywhere, tracked resources)."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0]
    library = {f.signature.name: f for f in graph.graph_def.library.function}
    nodes = graph.object_graph_def.nodes
    signatures = next(c.node_id for c in nodes[0].children if c.local_name == "signatures")
    todo = []
    for child in nodes[signatures].children:
        node = nodes[child.node_id]
        todo += (list(node.function.concrete_functions) if node.HasField("function")
                 else [node.bare_concrete_function.concrete_function_name])
    seen, reached = set(), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        for node in library[name].node_def:
            reached.add(node.op)
            todo += [a.func.name for a in node.attr.values() if a.HasField("func")]
            todo += [f.name for a in node.attr.values() for f in a.list.func]
            if node.op in library:
                todo.append(node.op)
    everywhere = {n.op for f in library.values() for n in f.node_def}
    resources = sum(1 for n in nodes if n.HasField("resource"))
    return reached & TABLE_OPS, everywhere & TABLE_OPS, resources


def test_vocabulary_tables_are_initialized_once_at_load(served, caplog):
    """Tables are tracked resources of the SavedModel, initialized at load, not per call."""
    for path in [served["query_dir"], os.path.join(served["bases"]["tiny"], "1")]:
        in_signatures, anywhere, resources = _signature_reach(path)
        assert "InitializeTableFromTextFileV2" in anywhere and resources >= 4
        assert not in_signatures, f"signatures of {path} create or fill tables: {in_signatures}"
    with caplog.at_level(logging.WARNING):
        model = tf.saved_model.load(os.path.join(served["bases"]["tiny"], "1"))
        dense = {k: tf.constant([["i1"]]) for k in served["query_keys"]}
        for _ in range(2):
            model.signatures[sig.SERVING_DEFAULT](**dense)
    assert not [r for r in caplog.records if "re-initialized" in r.getMessage()]


def test_concurrent_requests_of_different_widths_batch_to_the_numpy_answers(served):
    queries = _catalog_queries(served)[:24]
    for i, q in enumerate(queries):                 # rows of 1 to 3 genre values
        q["query_genre"] = (q["query_genre"] * 3)[:1 + i % 3]
    exact_scores, _ = _oracle(served, queries)
    got = {}

    def ask(i):
        got[i] = _post(served, "/v1/models/tiny:predict", {"instances": [queries[i]]})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(queries)):
        assert got[i][0] == 200
        np.testing.assert_allclose(got[i][1]["predictions"][0][sig.SCORES], exact_scores[i],
                                   rtol=1e-5, atol=1e-6)


def test_batcher_runs_queued_requests_together_and_isolates_a_bad_one(tmp_path):
    calls = []

    def double(x):
        tf.debugging.assert_non_negative(x, message="negative input")
        return {"y": 2.0 * x}

    module = tf.Module()
    module.double = tf.function(double, input_signature=[tf.TensorSpec([None, None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "double"),
                        signatures={sig.SERVING_DEFAULT: module.double})
    fn = tf.saved_model.load(str(tmp_path / "double")).signatures[sig.SERVING_DEFAULT]

    def runner(f, inputs):
        calls.append(len(inputs["x"]))
        return batching.run_signature(f, inputs)

    batcher = batching.Batcher(max_batch_size=8, batch_timeout_micros=2_000_000,
                               runner=runner)
    try:
        owner = object()
        rows = [np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0], [5.0, 6.0]], np.float32),
                np.array([[-1.0, 0.0]], np.float32), np.array([[7.0, 8.0]], np.float32)]
        results = [batcher.submit(fn, owner, {"x": r}) for r in rows]
        for r, future in zip(rows, results):
            if r.min() < 0:
                with pytest.raises(tf.errors.InvalidArgumentError, match="negative input"):
                    future.result(timeout=60)
            else:
                np.testing.assert_array_equal(future.result(timeout=60)["y"], 2 * r)
    finally:
        batcher.stop()
    assert calls[0] == 5 and sorted(calls[1:]) == [1, 1, 1, 2]   # one batch, then singly


def test_brute_force_in_query_blocks_equals_one_block(monkeypatch):
    """The NumPy oracle scores queries in blocks; the answer is the same as at once."""
    rng = np.random.default_rng(0)
    queries, items = rng.normal(size=(23, 8)), rng.normal(size=(50, 8))
    whole = search.brute_force(queries, items, 5)
    monkeypatch.setattr(search, "SCORE_BLOCK", 3 * 50)       # 3 queries a block
    blocks = search.brute_force(queries, items, 5)
    exact = search.normalize(queries) @ search.normalize(items).T
    np.testing.assert_allclose(blocks[0], np.sort(exact, axis=1)[:, ::-1][:, :5], rtol=1e-6)
    np.testing.assert_array_equal(blocks[1], whole[1])
