"""A TF Serving-compatible endpoint: REST and gRPC PredictionService, one process.

REST (TF Serving's API, :mod:`serving.rest`) on an asyncio HTTP/1.x server
(:mod:`serving.http`: keep-alive, a listen backlog sized for load, limits
that refuse early); gRPC (:mod:`serving.grpc_service`) on a thread pool.
Both hand predictions to one :class:`Batcher`, which runs concurrent
requests as one signature call (TF Serving's batching options). New versions
pushed to a model's base folder are loaded, warmed up and swapped in without
a restart.

``python -m serving.server --model ssl4rec=runs/movielens-1m/serving/ssl4rec``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import threading
from concurrent import futures
from typing import Optional

import grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import http
from serving.batching import Batcher
from serving.grpc_service import PredictionService
from serving.models import ModelManager
from serving.rest import RestApi

# How often the interpreter lets another thread take the GIL (Python's default
# is 5 ms): the event loop, the batcher and gRPC threads take turns faster.
SWITCH_INTERVAL_S = 0.0005


@dataclasses.dataclass(frozen=True)
class Options:
    """Endpoint settings.

    Attributes:
      host: address to bind (loopback by default).
      rest_port: REST port (0: any free port).
      grpc_port: gRPC port (0: any free port).
      max_body_bytes: largest request body (REST 413 / gRPC message limit).
      max_batch: most examples in one request.
      max_json_depth: deepest JSON nesting accepted.
      read_timeout: seconds for a request to arrive after its first byte.
      backlog: listen backlog (the kernel caps it at ``net.core.somaxconn``).
      grpc_threads: gRPC worker threads.
      max_batch_size: most rows the batcher runs in one call.
      batch_timeout_micros: how long the batcher waits for a batch to fill.
      num_batch_threads: concurrent signature calls.
      poll_seconds: how often model folders are checked for new versions.
    """

    host: str = "127.0.0.1"
    rest_port: int = 8501
    grpc_port: int = 8500
    max_body_bytes: int = 4 << 20
    max_batch: int = 256
    max_json_depth: int = 32
    read_timeout: float = 10.0
    backlog: int = 4096
    grpc_threads: int = 16
    max_batch_size: int = 64
    batch_timeout_micros: int = 0
    num_batch_threads: int = 1
    poll_seconds: float = 2.0


class Server:
    """REST + gRPC servers sharing one :class:`ModelManager` and :class:`Batcher`."""

    def __init__(self, bases: dict[str, str], options: Optional[Options] = None,
                 **overrides: object) -> None:
        """Serves ``bases`` (name -> base folder) with ``options``, any field overridden."""
        options = dataclasses.replace(options or Options(), **overrides)
        self.options = options
        self.manager = ModelManager(bases, options.poll_seconds)
        self.batcher: Optional[Batcher] = None
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.grpc_threads),
            options=[("grpc.max_receive_message_length", options.max_body_bytes),
                     ("grpc.so_reuseport", 0)])
        self.grpc_port = self.grpc.add_insecure_port(f"{options.host}:{options.grpc_port}")
        self.rest_port = 0
        self._loop = asyncio.new_event_loop()
        self._thread: Optional[threading.Thread] = None
        self._http: Optional[asyncio.AbstractServer] = None

    def start(self) -> Server:
        """Loads the models and starts serving in background threads."""
        o = self.options
        self.manager.start()
        self.batcher = Batcher(o.max_batch_size, o.batch_timeout_micros, o.num_batch_threads)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.manager, self.batcher, o.max_batch), self.grpc)
        self.grpc.start()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="rest-loop")
        self._thread.start()
        api = RestApi(self.manager, self.batcher, o.max_batch, o.max_json_depth)
        limits = http.Limits(max_body_bytes=o.max_body_bytes, read_timeout=o.read_timeout)
        self._http = asyncio.run_coroutine_threadsafe(
            http.serve(api, o.host, o.rest_port, limits, o.backlog), self._loop).result()
        self.rest_port = self._http.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stops both servers, the batcher and the poller."""
        if self._http:
            self._loop.call_soon_threadsafe(self._http.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join()
        self.grpc.stop(grace=1).wait()
        if self.batcher:
            self.batcher.stop()
        self.manager.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=BASE_DIR")
    for field in dataclasses.fields(Options):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                            default=field.default)
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: ``python -m serving.server --model NAME=BASE_DIR ...``."""
    args = vars(_parser().parse_args(argv))
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    bases = dict(m.split("=", 1) for m in args.pop("model"))
    logging.basicConfig(level=logging.INFO)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    import scann  # noqa: F401  registers ScaNN's ops before any model loads

    server = Server(bases, Options(**args)).start()
    print(f"serving {sorted(bases)}: REST http://{server.options.host}:{server.rest_port} "
          f"gRPC {server.options.host}:{server.grpc_port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
