"""Loaded models and their versions, swapped in without failing requests.

A served model is a base folder in TF Serving's layout: ``<base>/<version>/``
with a SavedModel in each numeric version folder. A poller loads a new
version completely and warms it up (one call of each signature on a
one-row input, so the first real request does not pay for graph
optimization), outside any lock, then swaps it in; requests that already
hold the previous version finish on it. The newest ``keep`` versions
stay addressable by ``/versions/<n>``. Each load, served or failed, is
reported once to an optional ``on_load`` callback as a :class:`LoadReport`
(the command prints one console line per report).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from typing import Any, Callable, Optional

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving import signatures as sig


class NotFoundError(LookupError):
    """No such model or version (served as 404)."""


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """How loading one version went.

    Attributes:
      model: the served model's name.
      version: the version folder's number.
      path: the version folder.
      seconds: wall time of the load and its warm-up (until it could be served).
      error: why it failed to load (first line of the error), or ``""`` once served.
    """

    model: str
    version: int
    path: str
    seconds: float
    error: str = ""


OnLoad = Callable[[LoadReport], None]


@dataclasses.dataclass
class Version:
    """One loaded SavedModel version.

    Attributes:
      number: the version folder's number.
      path: the folder.
      model: the loaded SavedModel.
      signature_defs: signature name -> SignatureDef proto (for metadata).
    """

    number: int
    path: str
    model: Any
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]

    def signature(self, name: str) -> Any:
        """The concrete function of signature ``name``."""
        name = name or sig.SERVING_DEFAULT
        if name not in self.model.signatures:
            raise KeyError(f"signature '{name}' not found; available: "
                           f"{sorted(self.model.signatures)}")
        return self.model.signatures[name]


def _dummy(spec: tf.TensorSpec) -> tf.Tensor:
    shape = [d or 1 for d in spec.shape.as_list()]
    return tf.fill(shape, "") if spec.dtype == tf.string else tf.zeros(shape, spec.dtype)


def warm_up(version: Version) -> None:
    """Calls each signature once on a one-row input of empty strings / zeros."""
    for name, fn in version.model.signatures.items():
        try:
            fn(**{k: _dummy(s) for k, s in fn.structured_input_signature[1].items()})
        except (tf.errors.OpError, ValueError, TypeError) as e:
            logging.warning("version %d: warm-up of signature %s failed: %s", version.number,
                            name, str(e).splitlines()[0])


def _signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    defs = proto.meta_graphs[0].signature_def
    return {k: v for k, v in defs.items() if not k.startswith("__")}


def version_folders(base: str) -> list[int]:
    """Complete version folders under ``base`` (a SavedModel with its variables)."""
    if not tf.io.gfile.isdir(base):
        return []
    out = []
    for name in tf.io.gfile.listdir(base):
        name = name.rstrip("/")
        path = os.path.join(base, name)
        if name.isdigit() and tf.io.gfile.exists(os.path.join(path, "saved_model.pb")) and \
                tf.io.gfile.exists(os.path.join(path, "variables", "variables.index")):
            out.append(int(name))
    return sorted(out)


class ServedModel:
    """The loaded versions of one model name.

    Args:
      name: the served name.
      base: the base folder holding ``<version>/`` SavedModels.
      keep: how many of the newest versions stay loaded.
      on_load: called once per version after it was swapped in or failed to load.
    """

    def __init__(self, name: str, base: str, keep: int = 2,
                 on_load: Optional[OnLoad] = None) -> None:
        self.name, self.base, self.keep = name, base, keep
        self.on_load = on_load
        self._versions: dict[int, Version] = {}
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    def refresh(self) -> list[int]:
        """Loads versions newer than the loaded ones; returns the loaded version numbers."""
        with self._lock:
            loaded = set(self._versions)
        wanted = [v for v in version_folders(self.base)[-self.keep:]
                  if v not in loaded and v not in self._failed]
        for number in wanted:
            path = os.path.join(self.base, str(number))
            start = time.perf_counter()
            try:
                version = Version(number, path, tf.saved_model.load(path), _signature_defs(path))
                warm_up(version)
            except Exception as e:  # noqa: BLE001  a bad version must not stop serving
                logging.exception("model %s: version %d at %s failed to load", self.name,
                                  number, path)
                self._failed.add(number)
                self._report(number, path, start, f"{type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0]}")
                continue
            with self._lock:
                self._versions[number] = version
                for old in sorted(self._versions)[:-self.keep]:
                    del self._versions[old]
            logging.info("model %s: serving version %d", self.name, number)
            self._report(number, path, start, "")
        with self._lock:
            return sorted(self._versions)

    def _report(self, number: int, path: str, start: float, error: str) -> None:
        if self.on_load is not None:
            self.on_load(LoadReport(self.name, number, path, time.perf_counter() - start,
                                    error))

    def get(self, number: Optional[int] = None) -> Version:
        """The newest version, or version ``number``."""
        with self._lock:
            if not self._versions:
                raise NotFoundError(f"Servable not found for request: Latest({self.name})")
            if number is None:
                return self._versions[max(self._versions)]
            if number not in self._versions:
                raise NotFoundError(f"Servable not found for request: "
                                    f"Specific({self.name}, {number})")
            return self._versions[number]

    def versions(self) -> list[int]:
        """Loaded version numbers."""
        with self._lock:
            return sorted(self._versions)


class ModelManager:
    """Every served model, plus a poller thread that picks up new versions.

    Args:
      bases: served name -> base folder.
      poll_seconds: how often the base folders are checked for new versions.
      on_load: called once per version loaded (or failed), from the thread loading it.
    """

    def __init__(self, bases: dict[str, str], poll_seconds: float = 2.0,
                 on_load: Optional[OnLoad] = None) -> None:
        self.models = {name: ServedModel(name, base, on_load=on_load)
                       for name, base in bases.items()}
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def refresh(self) -> None:
        """Loads new versions of every model now.

        The objects a load leaves behind are then frozen out of the garbage
        collector's reach (``gc.freeze``): the interpreter holds millions of
        TensorFlow objects, and a full collection walking them all would
        stall every request for tens of milliseconds.
        """
        before = {name: model.versions() for name, model in self.models.items()}
        for model in self.models.values():
            model.refresh()
        if any(model.versions() != before[name] for name, model in self.models.items()):
            gc.freeze()

    def get(self, name: str) -> ServedModel:
        """The served model called ``name``."""
        if name not in self.models:
            raise NotFoundError(f"Servable not found for request: Latest({name})")
        return self.models[name]

    def start(self) -> None:
        """Loads what is there, then polls for new versions in the background."""
        self.refresh()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="model-poller")
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def stop(self) -> None:
        """Stops the poller."""
        self._stop.set()
        if self._thread:
            self._thread.join()
