"""A TF Serving-compatible endpoint: REST and gRPC PredictionService, one process.

REST (TF Serving's API):

* ``GET  /v1/models/<name>[/versions/<n>]``: version status;
* ``GET  /v1/models/<name>[/versions/<n>]/metadata``: signature defs;
* ``POST /v1/models/<name>[/versions/<n>]:predict``: row (``instances``) or
  columnar (``inputs``) requests.

gRPC: ``tensorflow.serving.PredictionService`` ``Predict`` and
``GetModelMetadata`` (the ``tensorflow-serving-api`` protos).

Binds to loopback by default; limits the request body and the batch size;
a bad request gets ``400 {"error": ...}``, an unknown model or version
``404``; no request crashes the server. New versions pushed to a model's
base folder are picked up without a restart.

``python -m serving.server --model ssl4rec=runs/movielens-1m/serving/ssl4rec``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import codec
from serving.models import ModelManager, NotFoundError, Version

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?P<rest>/metadata|:predict)?$")


def _run(version: Version, signature_name: str, inputs: dict[str, tf.Tensor]
         ) -> dict[str, Any]:
    fn = version.signature(signature_name)
    return {k: v.numpy() for k, v in fn(**inputs).items()}


def _status(name: str, versions: list[int]) -> dict[str, Any]:
    return {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}} for v in reversed(versions)]}


def _metadata(name: str, version: Version) -> dict[str, Any]:
    from google.protobuf import json_format

    defs = {k: json_format.MessageToDict(v) for k, v in version.signature_defs.items()}
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version.number)},
            "metadata": {"signature_def": {"signature_def": defs}}}


class RestHandler(BaseHTTPRequestHandler):
    """TF Serving's REST API over a :class:`ModelManager`."""

    manager: ModelManager
    max_body_bytes: int
    max_batch: int
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        """Routes access logs to logging (debug level)."""
        logging.debug("rest: " + fmt, *args)

    def _reply(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> Optional[re.Match]:
        match = _PATH.match(self.path)
        if not match:
            self._reply(404, {"error": f"Malformed request: {self.command} {self.path}"})
        return match

    def _version(self, match: re.Match) -> tuple[str, Version]:
        name = match.group("name")
        number = match.group("version")
        return name, self.manager.get(name).get(int(number) if number else None)

    def do_GET(self) -> None:  # noqa: N802
        """Model status and metadata."""
        match = self._route()
        if not match:
            return
        try:
            if match.group("rest") == "/metadata":
                name, version = self._version(match)
                self._reply(200, _metadata(name, version))
            elif match.group("rest") is None:
                name = match.group("name")
                model = self.manager.get(name)
                versions = model.versions()
                if match.group("version"):
                    versions = [self._version(match)[1].number]
                if not versions:
                    raise NotFoundError(f"Servable not found for request: Latest({name})")
                self._reply(200, _status(name, versions))
            else:
                self._reply(400, {"error": "use POST for :predict"})
        except NotFoundError as e:
            self._reply(404, {"error": str(e)})

    def _discard(self, length: int) -> None:
        """Reads and drops an oversized body (bounded), so the client sees the 400."""
        remaining = min(max(length, 0), 16 * self.max_body_bytes)
        while remaining > 0:
            chunk = self.rfile.read(min(1 << 16, remaining))
            if not chunk:
                break
            remaining -= len(chunk)

    def do_POST(self) -> None:  # noqa: N802
        """Predict."""
        match = self._route()
        if not match:
            return
        if match.group("rest") != ":predict":
            self._reply(400, {"error": "only :predict accepts POST"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > self.max_body_bytes:
            self._discard(length)
            self.close_connection = True
            self._reply(400, {"error": f"request body of {length} bytes is outside the limit "
                                       f"of {self.max_body_bytes} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"null")
            name, version = self._version(match)
            signature = body.get("signature_name", "") if isinstance(body, dict) else ""
            fn = version.signature(signature)
            inputs, rows = codec.parse(body, fn.structured_input_signature[1], self.max_batch)
            self._reply(200, codec.format_response(_run(version, signature, inputs), rows))
        except NotFoundError as e:
            self._reply(404, {"error": str(e)})
        except (codec.BadRequestError, KeyError, json.JSONDecodeError) as e:
            self._reply(400, {"error": str(e).strip('"')})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            self._reply(400, {"error": f"{type(e).__name__}: {e}".splitlines()[0]})


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """gRPC Predict and GetModelMetadata."""

    def __init__(self, manager: ModelManager, max_batch: int) -> None:
        self.manager, self.max_batch = manager, max_batch

    def _version(self, spec: model_pb2.ModelSpec, context: grpc.ServicerContext) -> Version:
        try:
            number = spec.version.value if spec.HasField("version") else None
            return self.manager.get(spec.name).get(number)
        except NotFoundError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            raise

    def Predict(self, request: predict_pb2.PredictRequest,  # noqa: N802
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        """Runs a signature on TensorProto inputs."""
        version = self._version(request.model_spec, context)
        try:
            fn = version.signature(request.model_spec.signature_name)
            specs = fn.structured_input_signature[1]
            if set(request.inputs) != set(specs):
                raise codec.BadRequestError(f"expected inputs {sorted(specs)}, got "
                                            f"{sorted(request.inputs)}")
            inputs = {k: tf.constant(tf.make_ndarray(v), dtype=specs[k].dtype)
                      for k, v in request.inputs.items()}
            if any(int(t.shape[0]) > self.max_batch for t in inputs.values() if t.shape.rank):
                raise codec.BadRequestError(f"batch exceeds the limit of {self.max_batch}")
            outputs = _run(version, request.model_spec.signature_name, inputs)
        except (codec.BadRequestError, KeyError, ValueError, TypeError,
                tf.errors.InvalidArgumentError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e).splitlines()[0])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version.number
        response.model_spec.signature_name = request.model_spec.signature_name or \
            "serving_default"
        for k, v in outputs.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,  # noqa: N802
                         context: grpc.ServicerContext
                         ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """Signature defs of a version, as TF Serving returns them."""
        version = self._version(request.model_spec, context)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for k, v in version.signature_defs.items():
            signatures.signature_def[k].CopyFrom(v)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version.number
        response.metadata["signature_def"].Pack(signatures)
        return response


class Server:
    """REST + gRPC servers sharing one :class:`ModelManager`."""

    def __init__(self, bases: dict[str, str], host: str = "127.0.0.1", rest_port: int = 8501,
                 grpc_port: int = 8500, max_body_bytes: int = 4 << 20, max_batch: int = 256,
                 poll_seconds: float = 2.0, threads: int = 8) -> None:
        self.manager = ModelManager(bases, poll_seconds)
        handler = type("Handler", (RestHandler,), {
            "manager": self.manager, "max_body_bytes": max_body_bytes, "max_batch": max_batch})
        self.http = ThreadingHTTPServer((host, rest_port), handler)
        self.http.daemon_threads = True
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=[
            ("grpc.max_receive_message_length", max_body_bytes)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.manager, max_batch), self.grpc)
        self.grpc_port = self.grpc.add_insecure_port(f"{host}:{grpc_port}")
        self.rest_port = self.http.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def start(self) -> Server:
        """Loads the models and starts serving in background threads."""
        self.manager.start()
        self.grpc.start()
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops both servers and the poller."""
        self.http.shutdown()
        self.http.server_close()
        self.grpc.stop(grace=1).wait()
        self.manager.stop()


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: ``python -m serving.server --model NAME=BASE_DIR ...``."""
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=BASE_DIR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=8500)
    parser.add_argument("--max-body-bytes", type=int, default=4 << 20)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    bases = dict(m.split("=", 1) for m in args.model)
    logging.basicConfig(level=logging.INFO)
    import scann  # noqa: F401  registers ScaNN's ops before any model loads

    server = Server(bases, args.host, args.rest_port, args.grpc_port, args.max_body_bytes,
                    args.max_batch, args.poll_seconds).start()
    print(f"serving {sorted(bases)}: REST http://{args.host}:{server.rest_port} "
          f"gRPC {args.host}:{server.grpc_port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
