"""Server-side batching of concurrent requests, in the manner of TF Serving's.

Requests for the same loaded version and signature, with inputs of the same
names, dtypes and trailing shapes, are concatenated along the batch axis and
run as one signature call; outputs are split back by rows. String inputs of
shape ``[N, None]`` are padded with ``""`` to a common width first (the
project's signatures ignore ``""``). The knobs are TF Serving's:
``max_batch_size`` (rows per call), ``batch_timeout_micros`` (how long a
worker waits for a batch to fill; 0 runs whatever is queued at once, so a
lone request never waits) and ``num_batch_threads`` (concurrent calls).
``max_enqueued`` bounds the queue: beyond it a request is refused at once
instead of waiting without limit.

A batch whose call fails is re-run request by request, so one bad request
fails alone.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from concurrent import futures
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

Outputs = dict[str, np.ndarray]


class OverloadedError(RuntimeError):
    """The batching queue is full (served as 503 / UNAVAILABLE)."""


@dataclasses.dataclass
class _Task:
    fn: Any
    owner: Any
    inputs: dict[str, np.ndarray]
    future: futures.Future
    rows: int = 0
    key: tuple = ()


def _key(owner: Any, fn: Any, inputs: dict[str, np.ndarray]) -> tuple:
    parts = []
    for name in sorted(inputs):
        a = inputs[name]
        tail = a.shape[1:] if not (a.dtype == object and a.ndim == 2) else ("pad",)
        parts.append((name, a.dtype.str, tail))
    return (id(owner), id(fn), tuple(parts))


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    if arrays[0].dtype == object and arrays[0].ndim == 2:
        width = max(a.shape[1] for a in arrays)
        arrays = [a if a.shape[1] == width else
                  np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=b"")
                  for a in arrays]
    return np.concatenate(arrays)


def run_signature(fn: Any, inputs: dict[str, np.ndarray]) -> Outputs:
    """Calls a concrete function on arrays (cast to its input dtypes)."""
    specs = fn.structured_input_signature[1]
    tensors = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
    return {k: v.numpy() for k, v in fn(**tensors).items()}


class Batcher:
    """Queues signature calls and runs them in batches on worker threads."""

    def __init__(self, max_batch_size: int = 64, batch_timeout_micros: int = 0,
                 num_batch_threads: int = 1, max_enqueued: int = 4096,
                 runner: Callable[[Any, dict[str, np.ndarray]], Outputs] = run_signature
                 ) -> None:
        self.max_batch_size, self.timeout = max_batch_size, batch_timeout_micros / 1e6
        self.max_enqueued, self._run = max_enqueued, runner
        self._queue: queue.Queue[Optional[_Task]] = queue.Queue()
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"batch-{i}")
                         for i in range(num_batch_threads)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Any, owner: Any, inputs: dict[str, np.ndarray]) -> futures.Future:
        """Enqueues a call of ``fn`` (a signature of the loaded version ``owner``).

        Returns a future of the outputs (numpy, batch-major, this request's
        rows only). Raises:
          OverloadedError: the queue already holds ``max_enqueued`` requests.
        """
        if self._queue.qsize() >= self.max_enqueued:
            raise OverloadedError(f"the batching queue is full ({self.max_enqueued} requests); "
                                  "retry later")
        rows = len(next(iter(inputs.values()))) if inputs else 0
        task = _Task(fn, owner, inputs, futures.Future(), rows, _key(owner, fn, inputs))
        self._queue.put(task)
        return task.future

    def _drain(self, rows: int) -> list[_Task]:
        """Queued tasks until the batch holds ``max_batch_size`` rows or time is up."""
        out: list[_Task] = []
        deadline = time.monotonic() + self.timeout
        while rows < self.max_batch_size:
            try:
                task = (self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                        if self.timeout else self._queue.get_nowait())
            except queue.Empty:
                break
            if task is None:
                self._queue.put(None)
                break
            out.append(task)
            rows += task.rows
        return out

    def _groups(self, tasks: list[_Task]) -> list[list[_Task]]:
        """Tasks that can share a call, in arrival order, at most ``max_batch_size`` rows."""
        groups: dict[tuple, list[list[_Task]]] = {}
        for task in tasks:
            runs = groups.setdefault(task.key, [[]])
            if runs[-1] and sum(t.rows for t in runs[-1]) + task.rows > self.max_batch_size:
                runs.append([])
            runs[-1].append(task)
        return [run for runs in groups.values() for run in runs]

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.put(None)
                return
            for group in self._groups([first, *self._drain(first.rows)]):
                self._execute(group)

    def _execute(self, batch: list[_Task]) -> None:
        if len(batch) > 1:
            try:
                inputs = {k: _concat([t.inputs[k] for t in batch]) for k in batch[0].inputs}
                outputs = self._run(batch[0].fn, inputs)
                total = sum(t.rows for t in batch)
                if all(v.ndim and len(v) == total for v in outputs.values()):
                    start = 0
                    for t in batch:
                        t.future.set_result({k: v[start:start + t.rows]
                                             for k, v in outputs.items()})
                        start += t.rows
                    return
            except Exception as e:  # noqa: BLE001  re-run alone: only the bad request fails
                logging.debug("batch of %d failed, re-running singly: %s", len(batch), e)
        for t in batch:
            try:
                t.future.set_result(self._run(t.fn, t.inputs))
            except Exception as e:  # noqa: BLE001  the caller turns it into an error reply
                t.future.set_exception(e)

    def stop(self) -> None:
        """Stops the workers after the queued requests."""
        self._queue.put(None)
        for t in self._threads:
            t.join()
