"""A TF Serving-compatible endpoint: REST and gRPC PredictionService, one process.

REST (TF Serving's API, :mod:`serving.rest`) on an asyncio HTTP/1.x server
(:mod:`serving.http`: keep-alive, a listen backlog sized for load, limits
that refuse early); gRPC (:mod:`serving.grpc_service`) on a thread pool.
Both hand predictions to one :class:`Batcher`, which runs concurrent
requests as one signature call (TF Serving's batching options). New versions
pushed to a model's base folder are loaded, warmed up and swapped in without
a restart.

``python -m serving.server --model ssl4rec=runs/movielens-1m/serving/ssl4rec``

The command keeps a quiet console (:mod:`serving.console`): standard error
gets the log file's path, then one line per model version loaded (name,
version, seconds to load and warm up; a version that fails to load gets a
``FAILED`` line instead, and a model with no version yet one line saying
so); standard output gets one line once both servers listen::

    serving ['ssl4rec']: REST http://127.0.0.1:8501 gRPC 127.0.0.1:8500

(scripts and benchmarks read that line; with port 0 it holds the ports
picked). Versions pushed later get their line when they are swapped in.
Everything else (TensorFlow's C++ logging, absl and Python logging, Python
warnings, tracebacks) goes to the log, ``<--log-dir>/serve-<local time>-<pid>.log``;
``--verbose`` copies the log to standard error as it is written.
``--log-dir`` defaults to ``logs`` in the working directory, not beside the
model folders: those may be remote (``gs://``) or read-only, and the
pipeline lists its serving folder's entries as the served models.
A failure to start prints its reason and the log's path, exit code 1.
SIGINT (Ctrl-C) and SIGTERM (how Kubernetes stops a pod) stop both servers
and exit 0, whatever signal state the parent process left blocked or
ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import traceback
from concurrent import futures
from typing import TYPE_CHECKING, Optional

import grpc

from serving import console

if TYPE_CHECKING:   # imported when used: TensorFlow must load after the console opened
    from serving.batching import Batcher
    from serving.models import LoadReport, ModelManager, OnLoad

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
                 on_load: Optional[OnLoad] = None, **overrides: object) -> None:
        """Serves ``bases`` (name -> base folder) with ``options``, any field overridden.

        ``on_load`` gets a :class:`serving.models.LoadReport` for each version
        loaded or failed, now and when new versions are pushed.
        """
        from serving.models import ModelManager

        options = dataclasses.replace(options or Options(), **overrides)
        self.options = options
        self.manager: ModelManager = ModelManager(bases, options.poll_seconds, on_load)
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
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        from serving import http
        from serving.batching import Batcher
        from serving.grpc_service import PredictionService
        from serving.rest import RestApi

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
    parser.add_argument("--log-dir", default="logs",
                        help="folder of the log file (default: %(default)s, in the working "
                             "directory)")
    parser.add_argument("--verbose", action="store_true",
                        help="stream the full log (TensorFlow, absl, warnings) to stderr too")
    return parser


def _bases(parser: argparse.ArgumentParser, models: list[str]) -> dict[str, str]:
    bases = {}
    for model in models:
        name, _, base = model.partition("=")
        if not name or not base:
            parser.error(f"--model: expected NAME=BASE_DIR, got {model!r}")
        if name in bases:
            parser.error(f"--model: {name!r} given twice; each name serves one base folder")
        bases[name] = base
    return bases


def load_line(report: LoadReport) -> str:
    """The console line of one version loaded (or failed)."""
    stamp = time.strftime("%H:%M:%S")
    if report.error:
        return (f"{stamp} FAILED {report.model} version {report.version}: {report.error} "
                f"(not served; {report.path})")
    return f"{stamp} loaded {report.model} version {report.version} in {report.seconds:.1f} s"


#: The signals that stop the endpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM.

    Both are unblocked and handled here: a child inherits its parent's
    blocked signals and ignored ones (a test runner's thread, a shell's
    background job, ``nohup``-like wrappers), and an endpoint that cannot be
    stopped cleanly is killed with its requests in flight.
    """
    stop = threading.Event()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    for number in STOP_SIGNALS:
        signal.signal(number, lambda *_: stop.set())
    return stop


def _serve(out: console.Console, bases: dict[str, str], options: Options) -> int:
    """Starts the endpoint and serves until interrupted; returns the exit code."""
    out.say(f"Log: {out.log_path}" + ("" if out.verbose else " (--verbose streams it)"))
    logging.basicConfig(level=logging.INFO)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    server, stop = None, _stop_on_signals()
    try:
        import scann  # noqa: F401  registers ScaNN's ops before any model loads

        server = Server(bases, options, on_load=lambda report: out.say(load_line(report)))
        server.start()
        for name, model in server.manager.models.items():
            if not model.versions():
                out.say(f"{time.strftime('%H:%M:%S')} {name}: no version under {model.base} "
                        f"yet (checked every {options.poll_seconds:g} s)")
        out.say(f"serving {sorted(bases)}: REST http://{options.host}:{server.rest_port} "
                f"gRPC {options.host}:{server.grpc_port}", stream=console.STDOUT)
        stop.wait()
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # noqa: BLE001  reported with the log's path, then exit 1
        traceback.print_exc()
        out.say(f"FAILED to start: {type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[0]}")
        out.say(f"Full detail: {out.log_path}")
        return 1
    finally:
        if server is not None:
            server.stop()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: ``python -m serving.server --model NAME=BASE_DIR ...``; the exit code."""
    parser = _parser()
    args = vars(parser.parse_args(argv))
    bases = _bases(parser, args.pop("model"))
    verbose, log_dir = args.pop("verbose"), args.pop("log_dir")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    path = console.log_file(log_dir, "serve")
    try:
        with console.Console(path, verbose=verbose, stream=console.STDERR) as out:
            return _serve(out, bases, Options(**args))
    except OSError as e:    # only opening the log raises here: _serve reports its own errors
        print(f"error: cannot write the log {path}: {e}; choose a folder with --log-dir",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
